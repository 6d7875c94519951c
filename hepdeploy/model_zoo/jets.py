"""One small seeded generator of jets with real substructure, shared by the jet taggers.

Each jet comes from a parton-level "kind" that fixes how many hard prongs it has
(1 for q/g/b/c, 2 for W/Z, 3 for t), its mass, its constituent multiplicity and
angular spread (gluons: more and wider), how its pT is shared, and for heavy flavour
the displaced secondary vertices (b: long flight, ~2 vertices in bb, c: shorter,
lighter) whose tracks carry large impact parameters, and a soft lepton for lepb.
The taggers see features derived from these constituents, so they learn structure,
not an injected label.

Everything is vectorized numpy over padded [n_jets, max_particles] arrays and
driven by ``numpy.random.default_rng(seed)``: same seed, identical arrays.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


@dataclass(frozen=True)
class JetKind:
    prongs: int
    mass: float  # GeV, resonance mass (0: QCD, mass from the shower spread)
    multiplicity: float  # mean number of constituents
    spread: float  # angular width of each prong
    softness: float  # Gamma shape of constituent pT shares: small = few hard particles
    n_sv: tuple[float, float]  # probability of >= 1 and of 2 secondary vertices
    flight: float  # mean 3D flight distance of the secondary vertex (cm)
    sv_mass: float  # typical secondary-vertex mass (GeV)
    displaced_fraction: float  # fraction of charged tracks from the secondary vertex
    lepton: float  # probability of a soft lepton among the constituents


KINDS: dict[str, JetKind] = {
    # hls4ml jet classes (boosted, fat jets)
    "g": JetKind(1, 0.0, 42, 0.07, 0.55, (0.06, 0.0), 0.0, 0.8, 0.0, 0.01),
    "q": JetKind(1, 0.0, 26, 0.045, 0.40, (0.05, 0.0), 0.0, 0.8, 0.0, 0.01),
    "W": JetKind(2, 80.4, 34, 0.035, 0.50, (0.10, 0.0), 0.1, 1.0, 0.05, 0.02),
    "Z": JetKind(2, 91.2, 36, 0.035, 0.50, (0.20, 0.02), 0.3, 1.5, 0.10, 0.03),
    "t": JetKind(3, 172.5, 50, 0.04, 0.50, (0.70, 0.05), 0.45, 2.5, 0.20, 0.10),
    # AK4 flavour classes
    "b": JetKind(1, 0.0, 22, 0.06, 0.45, (0.75, 0.05), 0.45, 2.8, 0.40, 0.05),
    "bb": JetKind(1, 0.0, 28, 0.09, 0.45, (0.85, 0.55), 0.40, 3.2, 0.50, 0.08),
    "lepb": JetKind(1, 0.0, 20, 0.06, 0.45, (0.70, 0.04), 0.45, 2.5, 0.40, 1.00),
    "c": JetKind(1, 0.0, 20, 0.06, 0.42, (0.45, 0.02), 0.15, 1.3, 0.20, 0.05),
    "uds": JetKind(1, 0.0, 18, 0.06, 0.40, (0.05, 0.0), 0.02, 0.8, 0.01, 0.01),
}

# Particle types (one-hot in the taggers' features).
CHARGED_HADRON, NEUTRAL_HADRON, PHOTON, ELECTRON, MUON = range(5)
MAX_SV = 5


@dataclass
class Jets:
    """Padded constituent and secondary-vertex arrays of n jets (masked entries are zero)."""

    label: np.ndarray  # [n] class index into the requested kinds
    pt: np.ndarray  # [n] jet pT (GeV)
    eta: np.ndarray  # [n]
    mass: np.ndarray  # [n] mass from the constituents
    mask: np.ndarray  # [n, P] bool
    part_pt: np.ndarray  # [n, P]
    part_deta: np.ndarray  # [n, P] relative to the pT-weighted axis
    part_dphi: np.ndarray  # [n, P]
    part_type: np.ndarray  # [n, P] int
    part_charge: np.ndarray  # [n, P]
    part_d0: np.ndarray  # [n, P] transverse impact parameter (cm), 0 for neutrals
    part_dz: np.ndarray  # [n, P]
    part_d0_err: np.ndarray  # [n, P]
    part_dz_err: np.ndarray  # [n, P]
    part_from_sv: np.ndarray  # [n, P] bool (truth)
    sv_mask: np.ndarray  # [n, MAX_SV] bool
    sv_pt: np.ndarray
    sv_deta: np.ndarray
    sv_dphi: np.ndarray
    sv_mass: np.ndarray
    sv_ntracks: np.ndarray
    sv_flight: np.ndarray  # 3D flight distance (cm)
    sv_flight_err: np.ndarray
    sv_chi2: np.ndarray
    n_pv: np.ndarray  # [n] pile-up vertices

    @property
    def n(self) -> int:
        return len(self.label)

    @property
    def multiplicity(self) -> np.ndarray:
        return self.mask.sum(axis=1)

    @property
    def n_sv(self) -> np.ndarray:
        return self.sv_mask.sum(axis=1)


class _Prongs(NamedTuple):
    """Each jet's prong pT shares and prong axes (eta, phi) relative to the jet axis: [n, 3] each."""

    share: np.ndarray
    eta: np.ndarray
    phi: np.ndarray


class _Constituents(NamedTuple):
    mask: np.ndarray
    part_pt: np.ndarray
    deta: np.ndarray
    dphi: np.ndarray
    part_type: np.ndarray
    charged: np.ndarray
    part_charge: np.ndarray


def generate_jets(
    n: int,
    seed: int,
    kinds: tuple[str, ...],
    max_particles: int = 64,
    pt_range: tuple[float, float] = (400.0, 600.0),
) -> Jets:
    """``n`` jets of the given kinds in equal proportions (label = index in ``kinds``).

    One random stream drives every step, in this order: labels and jet kinematics, prong axes,
    constituents, secondary vertices and impact parameters, pile-up (the same seed gives the same jets)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, len(kinds), size=n)
    params = [KINDS[k] for k in kinds]

    def per_jet(attr: str) -> np.ndarray:
        return np.array([getattr(k, attr) for k in params], dtype=np.float64)[label]

    jet_pt = rng.uniform(*pt_range, size=n)
    jet_eta = rng.uniform(-2.0, 2.0, size=n)
    prongs = per_jet("prongs").astype(int)
    axes = _prong_axes(rng, prongs, per_jet("mass"), jet_pt)
    parts = _constituents(rng, per_jet, prongs, axes, jet_pt, pt_range, max_particles)
    vertices = _vertices(rng, per_jet, parts, jet_pt)
    deta, dphi, mass = _recentred(parts, jet_eta)

    f = np.float32
    mask = parts.mask
    return Jets(
        label=label.astype(np.int64),
        pt=jet_pt.astype(f),
        eta=jet_eta.astype(f),
        mass=mass.astype(f),
        mask=mask,
        part_pt=parts.part_pt.astype(f),
        part_deta=deta.astype(f),
        part_dphi=dphi.astype(f),
        part_type=(parts.part_type * mask).astype(np.int64),
        part_charge=parts.part_charge.astype(f),
        part_d0=vertices["d0"].astype(f),
        part_dz=vertices["dz"].astype(f),
        part_d0_err=(vertices["d0_err"] * mask).astype(f),
        part_dz_err=(vertices["dz_err"] * mask).astype(f),
        part_from_sv=vertices["from_sv"],
        sv_mask=vertices["sv_mask"],
        **{name: vertices[name].astype(f) for name in ("sv_pt", "sv_deta", "sv_dphi", "sv_mass", "sv_ntracks",
                                                       "sv_flight", "sv_flight_err", "sv_chi2")},
        n_pv=rng.poisson(30, size=n).astype(f),
    )


def _prong_axes(rng: np.random.Generator, prongs: np.ndarray, res_mass: np.ndarray, jet_pt: np.ndarray) -> _Prongs:
    """Prong axes and pT shares. Two-body opening angle ~ 2 m / pT; the top splits into b + W(qq')."""
    n = len(prongs)
    share = np.zeros((n, 3))
    axis_eta = np.zeros((n, 3))
    axis_phi = np.zeros((n, 3))
    z = rng.uniform(0.25, 0.75, size=n)
    open_angle = res_mass / jet_pt / np.sqrt(z * (1 - z) + 1e-9)
    direction = rng.uniform(0, 2 * np.pi, size=n)
    two = prongs == 2
    share[two, 0], share[two, 1] = z[two], 1 - z[two]
    axis_eta[two, 0] = (1 - z[two]) * open_angle[two] * np.cos(direction[two])
    axis_phi[two, 0] = (1 - z[two]) * open_angle[two] * np.sin(direction[two])
    axis_eta[two, 1] = -z[two] * open_angle[two] * np.cos(direction[two])
    axis_phi[two, 1] = -z[two] * open_angle[two] * np.sin(direction[two])
    three = prongs == 3
    if three.any():
        m = three.sum()
        zb = rng.uniform(0.25, 0.45, size=m)  # b-quark share of the top
        zw = rng.uniform(0.3, 0.7, size=m)  # share inside the W
        angle_tb = 0.8 * 172.5 / jet_pt[three] / np.sqrt(zb * (1 - zb))
        angle_w = 80.4 / (jet_pt[three] * (1 - zb)) / np.sqrt(zw * (1 - zw))
        d1 = direction[three]
        d2 = d1 + rng.uniform(-1.2, 1.2, size=m) + np.pi / 2
        w_eta, w_phi = -zb * angle_tb * np.cos(d1), -zb * angle_tb * np.sin(d1)
        share[three] = np.stack([zb, (1 - zb) * zw, (1 - zb) * (1 - zw)], axis=1)
        axis_eta[three, 0] = (1 - zb) * angle_tb * np.cos(d1)
        axis_phi[three, 0] = (1 - zb) * angle_tb * np.sin(d1)
        axis_eta[three, 1] = w_eta + (1 - zw) * angle_w * np.cos(d2)
        axis_phi[three, 1] = w_phi + (1 - zw) * angle_w * np.sin(d2)
        axis_eta[three, 2] = w_eta - zw * angle_w * np.cos(d2)
        axis_phi[three, 2] = w_phi - zw * angle_w * np.sin(d2)
    one = prongs == 1
    share[one, 0] = 1.0
    return _Prongs(share, axis_eta, axis_phi)


def _constituents(rng: np.random.Generator, per_jet: Callable[[str], np.ndarray], prongs: np.ndarray, axes: _Prongs,
                  jet_pt: np.ndarray, pt_range: tuple[float, float], p: int) -> _Constituents:
    """The particles of every jet (``p`` slots, masked): momenta, angles, types and charges."""
    n = len(prongs)
    share = axes.share
    mean_mult = per_jet("multiplicity") * (jet_pt / np.mean(pt_range)) ** 0.25
    mult = np.clip(rng.poisson(mean_mult), 3, p)
    slot = np.arange(p)[None, :]
    mask = slot < mult[:, None]
    # Which prong each constituent belongs to (cumulative shares vs a uniform draw).
    u = rng.uniform(size=(n, p))
    prong_of = (u[:, :, None] > np.cumsum(share, axis=1)[:, None, :]).sum(axis=2).clip(0, 2)
    # Make sure every prong of a multi-prong jet has at least one particle (the first ones).
    prong_of[:, :3] = np.where(np.arange(3)[None, :] < prongs[:, None], np.arange(3)[None, :], prong_of[:, :3])
    weights = rng.gamma(per_jet("softness")[:, None], 1.0, size=(n, p)) * mask
    prong_share = np.take_along_axis(share, prong_of, axis=1)
    prong_total = np.zeros((n, 3))
    np.add.at(prong_total, (np.repeat(np.arange(n), p), prong_of.ravel()), weights.ravel())
    frac = weights / np.maximum(np.take_along_axis(prong_total, prong_of, axis=1), 1e-12) * prong_share
    frac = frac / np.maximum(frac.sum(axis=1, keepdims=True), 1e-12) * mask
    # Softer particles sit further from their prong axis (angular ordering).
    width = per_jet("spread")[:, None] * (1.0 + 0.6 / np.sqrt(np.maximum(frac * mult[:, None], 1e-3)))
    width = np.minimum(width, 0.3)
    deta = np.take_along_axis(axes.eta, prong_of, axis=1) + rng.normal(size=(n, p)) * width
    dphi = np.take_along_axis(axes.phi, prong_of, axis=1) + rng.normal(size=(n, p)) * width
    part_pt = frac * jet_pt[:, None]

    # Types: charged ~60%, photons ~25%, neutral hadrons ~15%; leptons replace the hardest charged.
    t = rng.uniform(size=(n, p))
    part_type = np.where(t < 0.62, CHARGED_HADRON, np.where(t < 0.87, PHOTON, NEUTRAL_HADRON))
    lepton = rng.uniform(size=n) < per_jet("lepton")
    lepton_slot = np.argmax(np.where(mask, part_pt, -1), axis=1)
    part_type[lepton, lepton_slot[lepton]] = np.where(rng.uniform(size=lepton.sum()) < 0.5, ELECTRON, MUON)
    charged = np.isin(part_type, (CHARGED_HADRON, ELECTRON, MUON)) & mask
    part_charge = np.where(charged, np.where(rng.uniform(size=(n, p)) < 0.5, -1.0, 1.0), 0.0)
    return _Constituents(mask, part_pt, deta, dphi, part_type, charged, part_charge)


def _vertices(rng: np.random.Generator, per_jet: Callable[[str], np.ndarray], parts: _Constituents,
              jet_pt: np.ndarray) -> dict[str, np.ndarray]:
    """Secondary vertices (``sv_*``), which tracks come from them, and the tracks' impact parameters."""
    n, p = parts.mask.shape
    charged, part_pt = parts.charged, parts.part_pt
    p_sv1, p_sv2 = per_jet("n_sv")[:, 0], per_jet("n_sv")[:, 1]
    n_sv = (rng.uniform(size=n) < p_sv1).astype(int) + (rng.uniform(size=n) < p_sv2).astype(int)
    n_sv = np.minimum(n_sv + (rng.uniform(size=n) < 0.03), MAX_SV)  # rare fakes/extra
    sv_mask = np.arange(MAX_SV)[None, :] < n_sv[:, None]
    flight_scale = np.maximum(per_jet("flight"), 0.01)
    sv_flight = rng.exponential(1.0, size=(n, MAX_SV)) * flight_scale[:, None] * sv_mask
    sv_flight_err = (0.01 + 0.05 * sv_flight) * sv_mask
    sv_mass = np.abs(rng.normal(per_jet("sv_mass")[:, None], 0.4, size=(n, MAX_SV))) * sv_mask
    sv_chi2 = rng.chisquare(3, size=(n, MAX_SV)) * sv_mask
    from_sv = charged & (rng.uniform(size=(n, p)) < per_jet("displaced_fraction")[:, None]) & (n_sv[:, None] > 0)
    which_sv = rng.integers(0, np.maximum(n_sv, 1)[:, None], size=(n, p))
    track_flight = np.take_along_axis(sv_flight, which_sv, axis=1)
    d0_err = 0.002 + 0.01 / np.sqrt(np.maximum(part_pt, 0.5))
    dz_err = 1.5 * d0_err
    d0 = np.where(from_sv, track_flight * rng.normal(0, 0.12, size=(n, p)), 0.0) + rng.normal(size=(n, p)) * d0_err
    dz = np.where(from_sv, track_flight * rng.normal(0, 0.15, size=(n, p)), 0.0) + rng.normal(size=(n, p)) * dz_err
    sv_ntracks = np.zeros((n, MAX_SV))
    for k in range(MAX_SV):
        sv_ntracks[:, k] = (from_sv & (which_sv == k)).sum(axis=1)
    # SV direction close to the jet axis (b-hadron direction), pT a fraction of the jet.
    sv_deta = rng.normal(0, 0.04, size=(n, MAX_SV)) * sv_mask
    sv_dphi = rng.normal(0, 0.04, size=(n, MAX_SV)) * sv_mask
    sv_pt = jet_pt[:, None] * rng.uniform(0.15, 0.6, size=(n, MAX_SV)) * sv_mask
    return {"d0": d0 * charged, "dz": dz * charged, "d0_err": d0_err, "dz_err": dz_err, "from_sv": from_sv,
            "sv_mask": sv_mask, "sv_pt": sv_pt, "sv_deta": sv_deta, "sv_dphi": sv_dphi, "sv_mass": sv_mass,
            "sv_ntracks": np.maximum(sv_ntracks, 2) * sv_mask, "sv_flight": sv_flight,
            "sv_flight_err": sv_flight_err, "sv_chi2": sv_chi2}


def _recentred(parts: _Constituents, jet_eta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The particles' angles re-centred on the pT-weighted axis, and the jet mass."""
    part_pt, mask = parts.part_pt, parts.mask
    c_eta = (part_pt * parts.deta).sum(1) / part_pt.sum(1)
    c_phi = (part_pt * parts.dphi).sum(1) / part_pt.sum(1)
    deta = (parts.deta - c_eta[:, None]) * mask
    dphi = (parts.dphi - c_phi[:, None]) * mask
    eta = jet_eta[:, None] + deta
    px, py = part_pt * np.cos(dphi), part_pt * np.sin(dphi)
    pz, e = part_pt * np.sinh(eta), part_pt * np.cosh(eta)
    m2 = e.sum(1) ** 2 - px.sum(1) ** 2 - py.sum(1) ** 2 - pz.sum(1) ** 2
    return deta, dphi, np.sqrt(np.maximum(m2, 0.0))


# --- derived representations ---------------------------------------------------------------------


def jet_variables(jets: Jets) -> dict[str, np.ndarray]:
    """The per-jet variables a tagger's physics checks are binned in: jet pT (GeV) and eta."""
    return {"jet_pt": jets.pt.astype(np.float32), "jet_eta": jets.eta.astype(np.float32)}


def high_level_features(jets: Jets) -> np.ndarray:
    """16 substructure features of the hls4ml jet data set, scaled to O(1): [n, 16]."""
    m = jets.mask
    pt = jets.part_pt.astype(np.float64)
    frac = pt / np.maximum(pt.sum(1, keepdims=True), 1e-9)
    dr = np.hypot(jets.part_deta, jets.part_dphi)
    mult = m.sum(1)
    sorted_frac = -np.sort(-frac, axis=1)

    # N-subjettiness with exclusive-kT-like axes: the hardest particles well separated.
    def tau(n_axes: int) -> np.ndarray:
        axes_eta, axes_phi = _hard_axes(jets, frac, n_axes)
        d = np.hypot(
            jets.part_deta[:, :, None] - axes_eta[:, None, :], jets.part_dphi[:, :, None] - axes_phi[:, None, :]
        )
        return (frac * d.min(axis=2) * m).sum(1)

    t1, t2, t3 = tau(1), tau(2), tau(3)
    width = (frac * dr).sum(1)
    # Energy correlation functions (beta = 1) for C2 and D2, from pair sums.
    def ecf2(rows: slice) -> np.ndarray:
        eta, phi, z = jets.part_deta[rows], jets.part_dphi[rows], frac[rows]
        pair = z[:, :, None] * z[:, None, :] * np.hypot(eta[:, :, None] - eta[:, None, :],
                                                        phi[:, :, None] - phi[:, None, :])
        return pair.sum((1, 2)) / 2

    e2 = _per_jet_chunks(ecf2, jets.n)
    e3 = _per_jet_chunks(lambda rows: _ecf3(jets.part_deta[rows], jets.part_dphi[rows], frac[rows]), jets.n)
    charged_mult = (m & (jets.part_charge != 0)).sum(1)
    zlogz = (frac * np.log(np.maximum(frac, 1e-9))).sum(1)
    features = np.stack(
        [
            jets.mass / 100.0,
            mult / 40.0,
            charged_mult / 25.0,
            width * 10.0,
            t1 * 10.0,
            t2 * 10.0,
            t3 * 10.0,
            t2 / np.maximum(t1, 1e-6),
            t3 / np.maximum(t2, 1e-6),
            sorted_frac[:, 0],
            sorted_frac[:, :3].sum(1),
            zlogz / -3.0,
            e2 * 10.0,
            e3 / np.maximum(e2**2, 1e-9),
            e3 / np.maximum(e2**3, 1e-9) / 50.0,
            (frac * dr**2).sum(1) * 100.0,
        ],
        axis=1,
    )
    return np.clip(features, -20, 20).astype(np.float32)


def _hard_axes(jets: Jets, frac: np.ndarray, n_axes: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy axes: the hardest particle, then the hardest ones at least 0.15 away from the chosen."""
    n, p = frac.shape
    axes_eta = np.zeros((n, n_axes))
    axes_phi = np.zeros((n, n_axes))
    available = jets.mask.copy()
    rows = np.arange(n)
    for k in range(n_axes):
        pick = np.argmax(np.where(available, frac, -1.0), axis=1)
        axes_eta[:, k] = jets.part_deta[rows, pick]
        axes_phi[:, k] = jets.part_dphi[rows, pick]
        d = np.hypot(jets.part_deta - axes_eta[:, k : k + 1], jets.part_dphi - axes_phi[:, k : k + 1])
        available &= d > 0.15
        # Fall back to the hardest remaining particle if nothing is far enough away.
        none_left = ~available.any(axis=1)
        available[none_left] = jets.mask[none_left]
    return axes_eta, axes_phi


# Jets per step of the pair and triple sums: n x 64 x 64 doubles for 80,000 jets would be 2.6 GB each.
FEATURE_CHUNK = 4096


def _per_jet_chunks(compute: Callable[[slice], np.ndarray], n: int) -> np.ndarray:
    """``compute`` over ``FEATURE_CHUNK`` jets at a time, concatenated (every value is per jet: the same
    numbers as one call over all jets, in bounded memory)."""
    return np.concatenate([compute(slice(start, start + FEATURE_CHUNK)) for start in range(0, n, FEATURE_CHUNK)])


def _ecf3(part_deta: np.ndarray, part_dphi: np.ndarray, frac: np.ndarray, top: int = 12) -> np.ndarray:
    """Three-point energy correlation over the hardest ``top`` particles (beta = 1)."""
    order = np.argsort(-frac, axis=1)[:, :top]
    z = np.take_along_axis(frac, order, axis=1)
    eta = np.take_along_axis(part_deta, order, axis=1)
    phi = np.take_along_axis(part_dphi, order, axis=1)
    d = np.hypot(eta[:, :, None] - eta[:, None, :], phi[:, :, None] - phi[:, None, :])
    triple = (
        z[:, :, None, None]
        * z[:, None, :, None]
        * z[:, None, None, :]
        * d[:, :, :, None]
        * d[:, :, None, :].transpose(0, 1, 3, 2)
        * d[:, None, :, :]
    )
    return triple.sum((1, 2, 3)) / 6


def jet_images(jets: Jets, pixels: int = 224, half_width: float = 1.0) -> np.ndarray:
    """Jet images [n, pixels, pixels, 3]: pixel = constituent pT / jet pT over +-1 in eta and phi."""
    n = jets.n
    scale = pixels / (2 * half_width)
    ix = np.floor((jets.part_deta + half_width) * scale).astype(np.int64)
    iy = np.floor((jets.part_dphi + half_width) * scale).astype(np.int64)
    inside = jets.mask & (ix >= 0) & (ix < pixels) & (iy >= 0) & (iy < pixels)
    frac = jets.part_pt / np.maximum(jets.part_pt.sum(1, keepdims=True), 1e-9)
    image = np.zeros((n, pixels, pixels), dtype=np.float32)
    rows = np.broadcast_to(np.arange(n)[:, None], ix.shape)
    np.add.at(image, (rows[inside], ix[inside], iy[inside]), frac[inside])
    return np.repeat(image[:, :, :, None], 3, axis=3)
