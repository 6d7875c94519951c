"""ROOT events as a client of a preprocessing ensemble sends them, and the inline path they are compared with.

:func:`read_raw_events` reads the events through the spec's ``data`` mapping (the same branches,
particle order and ``sort_by`` as :func:`hepdeploy.data.read_root_events`) but keeps the values raw:
``G_raw`` ``[events, C, width]`` (NaN and Inf as stored, zeros beyond each event) and ``G_length``
``[events, 1]`` per group that is not a mask (:mod:`hepdeploy.backend.served_preprocess`). Events
longer than the group's ``max_length`` are sent with up to twice that many particles, so the server's
own truncation is what is checked.

:func:`inline_reference` is what the ensemble must reproduce: the same events preprocessed inline
(:func:`hepdeploy.data.read_root_events` with the served convention) and run through the ONNX model
in ONNX Runtime, request by request. The served preprocessing pads each request to the longest event
*of that request* (clamped into the group's min/max); the inline tensors of a request are the
whole-file tensors cut to that same length, which are equal value for value (an event's row holds
its first ``min(count, max_length)`` values and then the pads either way), so the ONNX model sees the
very tensors the server hands it.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import replace
from pathlib import Path

import numpy as np

from hepdeploy.artifacts import read_artifact
from hepdeploy.backend.served_preprocess import (
    CHANNELS_FIRST,
    ServedGroup,
    ServedPreprocess,
    served_preprocess,
)
from hepdeploy.backend.sources import artifact_runner
from hepdeploy.data import read_root_events
from hepdeploy.environment import versions
from hepdeploy.errors import DataError
from hepdeploy.ntuple import (
    TensorPlan,
    load_preprocess,
    open_root,
    plan_inputs,
    preprocess_file,
    read_events,
)
from hepdeploy.spec import DataSpec, ModelSpec, TensorSpec
from hepdeploy.validate.reference import RAW_INPUTS, ReferenceSet, resolve_labels
from hepdeploy.weaver import IDENTITY, InputGroup, PreprocessConfig


def preprocess_path(spec: ModelSpec) -> Path:
    """The spec's preprocess.json (DataError when its data block names none)."""
    path = preprocess_file(spec.data)
    if path is None:
        raise DataError("the spec's data block names no preprocess.json (data.preprocess.file)")
    return path


def raw_width(group: InputGroup) -> int:
    """Particles sent per event at most: twice the group's max_length, so the server truncates."""
    return max(2 * int(group.max_length or 0), 1)


def read_raw_events(source: Path | str, inputs: list[TensorSpec], data: DataSpec, config: PreprocessConfig,
                    served: ServedPreprocess) -> dict[str, np.ndarray]:
    """``G_raw`` (float32) and ``G_length`` (int32, ``[events, 1]``) of every group a client sends."""
    plans = {p.name: p for p in plan_inputs(inputs, data, config)}
    raw_plans: list[TensorPlan] = []
    for group in served.raw_groups:
        plan, json_group = plans[group.name], config.groups[group.name]
        identity = tuple(replace(IDENTITY, pad=0.0) for _ in json_group.var_names)
        if group.flat:
            rule = InputGroup(group.name, json_group.var_names, identity)
        else:
            rule = InputGroup(group.name, json_group.var_names, identity, 0, raw_width(json_group))
        raw_plans.append(replace(plan, group=rule, convention="raw", length=None, layout=CHANNELS_FIRST, mask_of=None))
    counts: dict[str, np.ndarray] = {}
    events = read_events(open_root(source, data.root_tree), raw_plans, counts_out=counts)
    out: dict[str, np.ndarray] = {}
    for group in served.raw_groups:
        out[group.raw_name] = np.ascontiguousarray(events[group.name], dtype=np.float32)
        if not group.flat:  # the particles sent: at most the raw width
            sent = np.minimum(counts[group.name], out[group.raw_name].shape[-1])
            out[group.length_name] = sent.astype(np.int32).reshape(-1, 1)
    return out


def served_length(group: ServedGroup, served: ServedPreprocess, config: PreprocessConfig,
                  lengths: dict[str, np.ndarray]) -> int | None:
    """The particle length the server gives ``group`` for a request whose events have ``lengths``
    (``G_length`` arrays by group name); None for a flat group."""
    if group.flat:
        return None
    if group.fixed_length is not None:
        return group.fixed_length
    owner = served.group(group.mask_of) if group.mask_of is not None else group
    if owner.fixed_length is not None:
        return owner.fixed_length
    counts = np.minimum(lengths[owner.name].reshape(-1), np.iinfo(np.int32).max)
    return config.groups[owner.name].target_length(counts)


def inline_reference(source: Path | str, artifact: Path, spec: ModelSpec, convention: str, request_size: int,
                     notes: list[str] | None = None, *, config: PreprocessConfig | None = None,
                     served: ServedPreprocess | None = None) -> ReferenceSet:
    """The raw inputs (what the client sends) with the inline path's outputs, labels and variables.
    ``config``/``served``: the spec's preprocess.json and its served interface in front of ``artifact``,
    when the caller has them already (else read here)."""
    if request_size < 1:
        raise DataError(f"request size must be >= 1, got {request_size}")
    inputs = list(read_artifact(Path(artifact)).sidecar.inputs)
    json_path = preprocess_path(spec)
    if config is None or served is None:
        config = load_preprocess(json_path)
        served = served_preprocess(config, inputs, spec.data, where=str(json_path))
    bins = list(spec.validation.physics.bins)
    full = read_root_events(source, inputs, spec.data, convention=convention, extra_variables=bins)
    raw = read_raw_events(source, inputs, spec.data, config, served)
    total = int(next(iter(raw.values())).shape[0])
    lengths = {g.name: raw[g.length_name] for g in served.raw_groups if not g.flat}
    pieces = []
    with artifact_runner(Path(artifact)) as runner:
        for start in range(0, total, request_size):
            stop = min(start + request_size, total)
            request_lengths = {name: value[start:stop] for name, value in lengths.items()}
            feed = {}
            for group in served.groups:
                tensor = full[group.name][start:stop]
                length = served_length(group, served, config, request_lengths)
                if length is not None:
                    tensor = tensor[:, :, :length] if group.layout == CHANNELS_FIRST else tensor[:, :length, :]
                feed[group.name] = np.ascontiguousarray(tensor)
            pieces.append(runner.run(feed))
        described = runner.describe()
    outputs = {name: np.concatenate([p[name] for p in pieces], axis=0) for name in pieces[0]} if pieces else {}
    labels = resolve_labels(None, full, spec.data.label_array)
    variables = {n: np.asarray(full[n]) for n in dict.fromkeys([*spec.data.variable_names, *bins]) if n in full}
    provenance = {
        "framework": "onnx", "path": str(artifact), "runner": described, "data": str(source), "n_samples": total,
        "inputs": RAW_INPUTS,  # raw features: NaN/Inf are data the served preprocessing handles
        "inline_preprocessing": {"preprocess_json": str(json_path), "convention": convention,
                                 "request_size": request_size},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "versions": versions(),
    }
    if notes is not None:
        provenance["notes"] = list(notes)
    return ReferenceSet(raw, outputs, labels, provenance, variables).check(str(source))
