"""The zoo speaks ROOT: a zoo network's synthetic jets as NanoAOD-like ntuples, a weaver preprocess.json
and the spec ``data`` block that maps them to the model's inputs.

One entry per jet in a TTree ``Events``:

* ``jet_mlp``: a flat ntuple. Its 16 high-level features are scalar branches ``Jet_hl_<feature>`` that
  ``data.inputs.input_1.branches`` stacks as they are (no preprocessing); a preprocess.json is written
  anyway: one flat group ``input_1``, median 0, norm factor 1, bounds that clip nothing.
* ``particlenet``: jagged ``PFCands_<var>`` (counts ``nPFCands``) and ``SV_<var>`` (counts ``nSV``)
  branches holding *raw* values: ``raw = feature / norm_factor + median`` with the medians and norm factors
  of :data:`PARTICLENET` (chosen like a real ParticleNet json), so that the preprocess.json under the
  ``cmssw`` convention gives back the features :func:`hepdeploy.model_zoo.particlenet.ak4_inputs` made.
  Neutral particles have no track: their track chi2 is stored as +Inf and their impact-parameter
  significances as NaN, with ``replace_inf_value`` equal to the median, so that cmssw (which replaces
  them before centring) gives the model's 0 where weaver (which clips Inf to a bound, NaN -> 0 after)
  gives the upper bound for the chi2 (and 0 for the NaN significances, the same as cmssw).

Both carry jet-level ``Jet_pt``/``Jet_eta`` and one-hot labels ``label_<class>``. The files hold the very
events of the ``.npz`` sets (same sizes and seeds), so the inputs read through the spec match them.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hepdeploy.errors import BadInputError
from hepdeploy.fsutil import atomic_write_text
from hepdeploy.model_zoo import particlenet
from hepdeploy.model_zoo.base import ZooNetwork
from hepdeploy.model_zoo.training import cached_data_file
from hepdeploy.ntuple import write_ntuple
from hepdeploy.weaver import HUGE

ROOT_TREE = "Events"
# Bump when the writing changes; cached ROOT files are keyed by it and by the layout tables themselves.
LAYOUT_VERSION = 1
LABEL_PREFIX = "label_"
JET_VARIABLES = {"jet_pt": "Jet_pt", "jet_eta": "Jet_eta"}
# Bounds that clip nothing (weaver's export_json writes these when a variable is not standardised).
OPEN = (-HUGE, HUGE)


@dataclass(frozen=True)
class Var:
    """One variable of a preprocess.json group and the branch (field of its collection) that stores it raw."""

    name: str  # the json's var_name (weaver style)
    field: str  # the branch is <collection>_<field>, or the field alone for jet-level scalars
    median: float = 0.0
    norm_factor: float = 1.0
    bounds: tuple[float, float] = (-5.0, 5.0)
    missing: float | None = None  # raw value (inf, nan) where the particle has no track; model feature 0 there

    def info(self) -> dict[str, float]:
        # replace_inf_value = median: cmssw maps a missing value to (median - median) * norm = 0.
        return {"median": self.median, "norm_factor": self.norm_factor,
                "replace_inf_value": self.median if self.missing is not None else 0.0,
                "lower_bound": self.bounds[0], "upper_bound": self.bounds[1], "pad": 0.0}

    def raw(self, feature: np.ndarray) -> np.ndarray:
        """The stored value whose ``(raw - median) * norm_factor`` is ``feature`` (to float32 rounding)."""
        return (np.asarray(feature, np.float64) / self.norm_factor + self.median).astype(np.float32)


@dataclass(frozen=True)
class Group:
    """One model input: its variables (channels, in order), where they are stored, its length rule."""

    name: str
    variables: tuple[Var, ...]
    collection: str | None = None  # PFCands, SV: jagged; None: one value per jet
    mask_of: str | None = None  # a mask made from the counts of that input's collection
    lengths: tuple[int, int] | None = None  # (min_length, max_length) of the particle axis
    no_track: int | None = None  # channel whose 0 marks a particle without a track (neutral)

    def branch(self, var: Var) -> str:
        return f"{self.collection}_{var.field}" if self.collection else var.field


@dataclass(frozen=True)
class RootLayout:
    network: str
    groups: tuple[Group, ...]
    use_preprocess: bool  # whether the spec maps the inputs through the preprocess.json


def _identity(name: str, field: str | None = None, bounds: tuple[float, float] = (-5.0, 5.0)) -> Var:
    return Var(name, field or name, bounds=bounds)


JET_MLP_FEATURES = ("mass", "nconst", "ncharged", "width", "tau1", "tau2", "tau3", "tau21", "tau32", "z1", "z3",
                    "zlogz", "e2", "c2", "d2", "girth2")  # jets.high_level_features, in order (scaled to O(1))
JET_MLP = RootLayout("jet_mlp", (
    Group("input_1", tuple(_identity(f"Jet_hl_{f}", bounds=OPEN) for f in JET_MLP_FEATURES)),
), use_preprocess=False)


def _particlenet_layout() -> RootLayout:
    dims = particlenet.NETWORK.dims
    # The .npz sets pad to N_PF and N_SV; reading pads every batch to at least that (min_length) and
    # never beyond what the model takes (max_length).
    pf_lengths = (particlenet.N_PF, int(dims["n_pf"].max))  # type: ignore[arg-type]
    sv_lengths = (particlenet.N_SV, int(dims["n_sv"].max))  # type: ignore[arg-type]
    pf_features = (  # particlenet.ak4_inputs' pf_features, channel by channel
        Var("pfcand_pt_log_nopuppi", "pt_log", 1.09, 0.5, (-10.0, 10.0)),
        Var("pfcand_e_log_nopuppi", "e_log", 1.42, 0.5, (-10.0, 10.0)),
        Var("pfcand_ptrel_log", "ptrel_log", -4.1, 0.7, (-20.0, 20.0)),
        Var("pfcand_erel_log", "erel_log", -4.1, 0.7, (-20.0, 20.0)),
        Var("pfcand_deltaR", "deltaR", 0.16, 4.0),
        _identity("pfcand_charge", "charge"),
        _identity("pfcand_isEl", "isEl"),
        _identity("pfcand_isMu", "isMu"),
        _identity("pfcand_isChargedHad", "isChargedHad"),
        _identity("pfcand_isNeutralHad", "isNeutralHad"),
        _identity("pfcand_isGamma", "isGamma"),
        _identity("pfcand_dxy", "dxy"),
        Var("pfcand_dxysig", "dxysig", missing=float("nan")),
        _identity("pfcand_dz", "dz"),
        Var("pfcand_dzsig", "dzsig", missing=float("nan")),
        Var("pfcand_VTX_ass", "VTX_ass", 0.0, 1 / 7),
        Var("pfcand_normchi2", "normchi2", 0.8, 1.0, (-20.0, 20.0), missing=float("inf")),
        _identity("pfcand_puppiw", "puppiw"),
        Var("pfcand_etarel", "etarel", 0.0, 10.0, OPEN),
        Var("pfcand_phirel", "phirel", 0.0, 10.0, OPEN),
    )
    sv_features = (  # particlenet.ak4_inputs' sv_features
        Var("sv_pt_log", "pt_log", 3.6, 0.6, (-10.0, 10.0)),
        Var("sv_mass", "mass", 1.2, 0.5, (-10.0, 10.0)),
        Var("sv_etarel", "etarel", 0.0, 10.0),
        Var("sv_phirel", "phirel", 0.0, 10.0),
        Var("sv_ntracks", "ntracks", 0.0, 0.2, (-20.0, 20.0)),
        Var("sv_normchi2", "normchi2", 0.0, 0.2, (-20.0, 20.0)),
        _identity("sv_dxy", "dxy"),
        _identity("sv_dxysig", "dxysig"),
        _identity("sv_d3d", "d3d"),
        _identity("sv_d3dsig", "d3dsig"),
        _identity("sv_costhetasvpv", "costhetasvpv"),
    )
    return RootLayout("particlenet", (
        Group("pf_points", (_identity("pfcand_etarel", "etarel", OPEN), _identity("pfcand_phirel", "phirel", OPEN)),
              "PFCands", lengths=pf_lengths),
        Group("pf_features", pf_features, "PFCands", lengths=pf_lengths, no_track=5),  # channel 5: the charge
        Group("pf_mask", (_identity("pfcand_mask", bounds=OPEN),), mask_of="pf_points", lengths=pf_lengths),
        Group("sv_points", (_identity("sv_etarel", "etarel", OPEN), _identity("sv_phirel", "phirel", OPEN)),
              "SV", lengths=sv_lengths),
        Group("sv_features", sv_features, "SV", lengths=sv_lengths),
        Group("sv_mask", (_identity("sv_mask", bounds=OPEN),), mask_of="sv_points", lengths=sv_lengths),
    ), use_preprocess=True)


LAYOUTS: dict[str, Callable[[], RootLayout]] = {"jet_mlp": lambda: JET_MLP, "particlenet": _particlenet_layout}


def root_networks() -> list[str]:
    """The zoo networks whose synthetic jets can be written as ROOT ntuples."""
    return sorted(LAYOUTS)


def root_layout(name: str) -> RootLayout:
    if name not in LAYOUTS:
        raise BadInputError(f"{name}: --root writes ROOT ntuples for {', '.join(root_networks())} only")
    return LAYOUTS[name]()


# --------------------------------------------------------------------------- the files


def label_branches(net: ZooNetwork) -> list[str]:
    return [f"{LABEL_PREFIX}{c}" for c in net.class_names]


def ntuple_branches(layout: RootLayout, net: ZooNetwork, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The branches of one ntuple from a data set's arrays (model inputs, ``labels``, jet variables):
    raw values per :class:`Var`, one collection record per jagged group (written as n<coll>, <coll>_<field>)."""
    import awkward as ak

    out: dict[str, Any] = {}
    collections: dict[str, dict[str, np.ndarray]] = {}
    counts: dict[str, np.ndarray] = {}
    masks = {g.mask_of: g.name for g in layout.groups if g.mask_of}
    for group in layout.groups:
        if group.mask_of is not None:
            continue
        tensor = np.asarray(arrays[group.name], np.float32)
        if group.collection is None:
            for channel, var in enumerate(group.variables):
                _put(out, group.branch(var), var.raw(tensor[:, channel]), group.name)
            continue
        mask = np.asarray(arrays[masks[group.name]])[:, 0, :] > 0 if group.name in masks else None
        if mask is None:  # a features group: the mask of the points group of its collection
            owner = next(g for g in layout.groups if g.collection == group.collection and g.name in masks)
            mask = np.asarray(arrays[masks[owner.name]])[:, 0, :] > 0
        n = mask.sum(axis=1)
        if not np.array_equal(mask, np.arange(mask.shape[1])[None, :] < n[:, None]):
            raise ValueError(f"{group.name}: particles are not the first entries of their rows")
        counts.setdefault(group.collection, n)
        fields = collections.setdefault(group.collection, {})
        no_track = tensor[:, group.no_track, :][mask] == 0 if group.no_track is not None else None
        for channel, var in enumerate(group.variables):
            feature = tensor[:, channel, :][mask]
            raw = var.raw(feature)
            if var.missing is not None and no_track is not None:
                if np.any(feature[no_track] != 0):
                    raise ValueError(f"{group.name}.{var.name}: particles without a track have a non-zero feature")
                raw[no_track] = np.float32(var.missing)
            _put(fields, var.field, raw, f"{group.name}.{var.name}")
    for name, fields in collections.items():
        out[name] = ak.zip({k: ak.unflatten(v, counts[name]) for k, v in fields.items()})
    for variable, branch in JET_VARIABLES.items():
        out[branch] = np.asarray(arrays[variable], np.float32)
    labels = np.asarray(arrays["labels"])
    for index, branch in enumerate(label_branches(net)):
        out[branch] = (labels == index).astype(np.int32)
    return out


def _put(target: dict[str, np.ndarray], key: str, raw: np.ndarray, where: str) -> None:
    """Store a raw column; a branch two groups share (etarel in the points and the features) must agree."""
    if key not in target:
        target[key] = raw
        return
    finite = np.isfinite(target[key])
    if not np.allclose(target[key][finite], raw[finite], rtol=1e-6, atol=1e-7):
        raise ValueError(f"{where}: disagrees with the values already stored in branch {key!r}")


def preprocess_json(layout: RootLayout, net: ZooNetwork) -> dict[str, Any]:
    """The preprocess.json, shaped as weaver-core's ``DataConfig.export_json`` writes it (with the
    min_length/max_length of dynamic lengths)."""
    out: dict[str, Any] = {"output_names": label_branches(net), "input_names": [g.name for g in layout.groups]}
    for group in layout.groups:
        block: dict[str, Any] = {"var_names": [v.name for v in group.variables],
                                 "var_infos": {v.name: v.info() for v in group.variables}}
        if group.lengths is not None:
            block["min_length"], block["max_length"] = group.lengths
        out[group.name] = block
    return out


def data_block(layout: RootLayout, net: ZooNetwork, stem: str, calibration_samples: int | None) -> dict[str, Any]:
    """The spec's ``data:`` for the ROOT files (paths relative to the spec)."""
    inputs: dict[str, Any] = {}
    for group in layout.groups:
        inputs[group.name] = {"mask_of": group.mask_of} if group.mask_of else {
            "branches": [group.branch(v) for v in group.variables]}
    data: dict[str, Any] = {
        "calibration": f"{stem}_calibration.root",
        "reference": f"{stem}_reference.root",
        "root_tree": ROOT_TREE,
        "labels": {"branches": label_branches(net)},
        "variables": {name: {"branch": branch} for name, branch in JET_VARIABLES.items()},
        "inputs": inputs,
    }
    if layout.use_preprocess:
        data["preprocess"] = {"file": f"{stem}_preprocess.json", "convention": "cmssw"}
    if calibration_samples is not None:
        data["calibration_samples"] = calibration_samples
    return data


@dataclass
class RootFiles:
    reference: Path
    calibration: Path
    preprocess: Path


def write_root_files(net: ZooNetwork, stem: str, out_dir: Path, sets: dict[str, tuple[int, int, Callable[[], dict]]],
                     cache_dir: Path | None = None) -> RootFiles:
    """``<stem>_reference.root``, ``<stem>_calibration.root`` and ``<stem>_preprocess.json`` in ``out_dir``.
    ``sets``: kind -> (events, seed, a function giving the set's arrays); the ntuples are cached in the
    zoo's data cache beside the .npz sets."""
    layout = root_layout(net.name)
    paths = {}
    for kind, (n, seed, arrays) in sets.items():
        paths[kind] = cached_data_file(
            net, kind, n, seed, cache_dir, Path(out_dir) / f"{stem}_{kind}.root",
            lambda path, arrays=arrays: write_ntuple(path, ROOT_TREE, ntuple_branches(layout, net, arrays())),
            recipe={"root_writer": LAYOUT_VERSION, "layout": repr(layout)})
    preprocess = Path(out_dir) / f"{stem}_preprocess.json"
    atomic_write_text(preprocess, json.dumps(preprocess_json(layout, net), indent=2) + "\n")
    return RootFiles(paths["reference"], paths["calibration"], preprocess)
