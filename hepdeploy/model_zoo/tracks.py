"""Seeded tracking events for the interaction network: helices through cylindrical layers.

Charged particles from a beam spot (pT 0.8-10 GeV, |eta| < 1.5) follow helices in a
2 T solenoid and leave one smeared hit per barrel layer (with a small inefficiency);
noise hits are spread uniformly. Candidate edges join hits on adjacent layers that pass
a loose geometric preselection (|dphi| and a z0 compatibility cut, like a module map).
An edge is true when both hits belong to the same particle.

Node features x = (r/100 cm, phi/pi, z/100 cm); edge features = (dr, dphi, dz, dR)
scaled to O(1). Events are disjoint graphs, so several events concatenate into one
graph with offset indices (batching without a batch axis).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAYERS_CM = np.array([3.0, 5.0, 7.5, 10.5, 14.0, 18.0, 23.0, 29.0, 36.0, 44.0])
B_FIELD_T = 2.0
HALF_LENGTH_CM = 100.0
DPHI_CUT = 0.15
Z0_CUT_CM = 30.0
# What generate_events draws, in words: the interaction network's data_recipe. It enters the
# training cache key, so it stays here, to be changed together with the generator.
DATA_RECIPE = (
    "tracks.generate_events: 60-100 helices (pT 0.8-10 GeV, |eta|<1.5, 2 T) through 10 barrel layers, "
    "3% hit inefficiency, 10% noise hits, adjacent-layer edges with |dphi|<0.15 and |z0|<30 cm"
)


@dataclass
class TrackGraph:
    x: np.ndarray  # [n_hits, 3] float32
    edge_index: np.ndarray  # [2, n_edges] int64
    edge_attr: np.ndarray  # [n_edges, 4] float32
    y: np.ndarray  # [n_edges] int64 truth
    particle: np.ndarray  # [n_hits] int64 particle id (-1: noise)

    @property
    def n_hits(self) -> int:
        return len(self.x)

    @property
    def n_edges(self) -> int:
        return self.edge_index.shape[1]


def _wrap(phi: np.ndarray) -> np.ndarray:
    return (phi + np.pi) % (2 * np.pi) - np.pi


def generate_event(rng: np.random.Generator, n_particles: int, noise_fraction: float = 0.1) -> TrackGraph:
    n = n_particles
    pt = np.exp(rng.uniform(np.log(0.8), np.log(10.0), size=n))
    phi0 = rng.uniform(-np.pi, np.pi, size=n)
    eta = rng.uniform(-1.5, 1.5, size=n)
    charge = np.where(rng.uniform(size=n) < 0.5, -1.0, 1.0)
    z0 = rng.normal(0.0, 5.0, size=n)
    radius_cm = pt / (0.3 * B_FIELD_T) * 100.0
    r = LAYERS_CM[None, :]
    # Helix: phi(r) = phi0 - q asin(r / 2R); arc length s = 2R asin(r / 2R); z = z0 + s sinh(eta).
    bend = np.arcsin(np.clip(r / (2 * radius_cm[:, None]), -1, 1))
    phi = _wrap(phi0[:, None] - charge[:, None] * bend + rng.normal(0, 0.001, size=(n, len(LAYERS_CM))))
    z = z0[:, None] + 2 * radius_cm[:, None] * bend * np.sinh(eta)[:, None] + rng.normal(0, 0.05, size=phi.shape)
    seen = (np.abs(z) < HALF_LENGTH_CM) & (rng.uniform(size=phi.shape) < 0.97)
    layer = np.broadcast_to(np.arange(len(LAYERS_CM)), phi.shape)
    pid = np.broadcast_to(np.arange(n)[:, None], phi.shape)
    hit_r = np.broadcast_to(r, phi.shape)[seen]
    hit_phi, hit_z, hit_layer, hit_pid = phi[seen], z[seen], layer[seen], pid[seen]
    n_noise = int(noise_fraction * len(hit_r))
    noise_layer = rng.integers(0, len(LAYERS_CM), size=n_noise)
    hit_r = np.concatenate([hit_r, LAYERS_CM[noise_layer]])
    hit_phi = np.concatenate([hit_phi, rng.uniform(-np.pi, np.pi, size=n_noise)])
    hit_z = np.concatenate([hit_z, rng.uniform(-HALF_LENGTH_CM, HALF_LENGTH_CM, size=n_noise)])
    hit_layer = np.concatenate([hit_layer, noise_layer])
    hit_pid = np.concatenate([hit_pid, -np.ones(n_noise, dtype=np.int64)])
    # Hits in a shuffled order: nothing may depend on the ordering.
    order = rng.permutation(len(hit_r))
    hit_r, hit_phi, hit_z, hit_layer, hit_pid = (a[order] for a in (hit_r, hit_phi, hit_z, hit_layer, hit_pid))

    sources, targets = [], []
    for k in range(len(LAYERS_CM) - 1):
        inner = np.flatnonzero(hit_layer == k)
        outer = np.flatnonzero(hit_layer == k + 1)
        if len(inner) == 0 or len(outer) == 0:
            continue
        dphi = _wrap(hit_phi[outer][None, :] - hit_phi[inner][:, None])
        dr = hit_r[outer][None, :] - hit_r[inner][:, None]
        z0_est = hit_z[inner][:, None] - hit_r[inner][:, None] * (hit_z[outer][None, :] - hit_z[inner][:, None]) / dr
        ok = (np.abs(dphi) < DPHI_CUT) & (np.abs(z0_est) < Z0_CUT_CM)
        i, o = np.nonzero(ok)
        sources.append(inner[i])
        targets.append(outer[o])
    src = np.concatenate(sources) if sources else np.zeros(0, np.int64)
    dst = np.concatenate(targets) if targets else np.zeros(0, np.int64)
    truth = (hit_pid[src] == hit_pid[dst]) & (hit_pid[src] >= 0)
    d_r = (hit_r[dst] - hit_r[src]) / 10.0
    d_phi = _wrap(hit_phi[dst] - hit_phi[src]) / DPHI_CUT
    d_z = (hit_z[dst] - hit_z[src]) / 10.0
    d_big_r = np.hypot(d_phi * DPHI_CUT, (hit_z[dst] - hit_z[src]) / 100.0) * 10.0
    x = np.stack([hit_r / 100.0, hit_phi / np.pi, hit_z / 100.0], axis=1)
    return TrackGraph(
        x=x.astype(np.float32),
        edge_index=np.stack([src, dst]).astype(np.int64),
        edge_attr=np.stack([d_r, d_phi, d_z, d_big_r], axis=1).astype(np.float32),
        y=truth.astype(np.int64),
        particle=hit_pid.astype(np.int64),
    )


def generate_events(n_events: int, seed: int, particles: tuple[int, int] = (60, 100)) -> list[TrackGraph]:
    rng = np.random.default_rng(seed)
    return [generate_event(rng, int(rng.integers(particles[0], particles[1] + 1))) for _ in range(n_events)]


def merge(graphs: list[TrackGraph]) -> TrackGraph:
    """Concatenate disjoint event graphs into one (edge indices offset by the hits before)."""
    offsets = np.cumsum([0] + [g.n_hits for g in graphs[:-1]])
    return TrackGraph(
        x=np.concatenate([g.x for g in graphs]),
        edge_index=np.concatenate([g.edge_index + off for g, off in zip(graphs, offsets)], axis=1),
        edge_attr=np.concatenate([g.edge_attr for g in graphs]),
        y=np.concatenate([g.y for g in graphs]),
        particle=np.concatenate([np.where(g.particle >= 0, g.particle + 100000 * i, -1) for i, g in enumerate(graphs)]),
    )
