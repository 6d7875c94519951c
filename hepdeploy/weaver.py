"""weaver-style input preprocessing (a ``preprocess.json``), in the two conventions found in the field.

A ``preprocess.json`` (written by weaver-core's ``DataConfig.export_json`` and read by CMSSW's
RecoBTag/FeatureTools ``deep_helpers``) lists the model's ``input_names``; each input group has
``var_names``, ``var_infos`` (per variable ``median``, ``norm_factor``, ``replace_inf_value``,
``lower_bound``, ``upper_bound``, optional ``pad``) and either ``var_length`` or
``min_length``/``max_length``. A group with neither is flat: one value per variable and event.

The two conventions differ only on values that are not ordinary numbers:

* ``cmssw`` (deep_helpers ``center_norm_pad``): NaN, +-Inf and |x| > 1e32 become ``replace_inf_value``
  *before* centring; then ``(x - median) * norm_factor`` is clipped to the bounds.
* ``weaver`` (weaver-core ``_finalize_inputs``): ``(x - median) * norm_factor`` clipped to the bounds,
  padded, and NaN set to 0 afterwards (``numpy.nan_to_num``); an Inf is clipped to a bound.

Worked example, ``median 1, norm_factor 0.5, replace_inf_value 0, bounds [-5, 5]``: x = NaN gives
-0.5 (cmssw) and 0 (weaver); x = +Inf gives -0.5 (cmssw) and 5 (weaver); x = 3 gives 1 in both.

Lengths: ``var_length`` pads or truncates every event to that length; with ``min_length``/``max_length``
a batch is padded to its longest event clamped into ``[min_length, max_length]`` (longer events are
truncated, in their stored order). Padding uses each variable's ``pad`` (0 when absent), as is.

This module needs only numpy and the standard library: the Triton preprocessing model carries a copy
of this very file, so the served preprocessing is the code that validation ran inline.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CONVENTIONS = ("cmssw", "weaver")
# CMSSW's catch_infs treats |x| beyond this as infinite.
HUGE = 1e32


class PreprocessFormatError(ValueError):
    """A preprocess.json that does not follow weaver's format."""


@dataclass(frozen=True)
class VarInfo:
    median: float = 0.0
    norm_factor: float = 1.0
    replace_inf_value: float = 0.0
    lower_bound: float = -HUGE
    upper_bound: float = HUGE
    pad: float = 0.0


IDENTITY = VarInfo(lower_bound=-math.inf, upper_bound=math.inf)


@dataclass(frozen=True)
class InputGroup:
    """One model input: its variables (channels, in order) and the length rule of its particle axis."""

    name: str
    var_names: tuple[str, ...]
    var_infos: tuple[VarInfo, ...]
    min_length: int | None = None  # both None: a flat group, [events, variables]
    max_length: int | None = None

    @property
    def flat(self) -> bool:
        return self.max_length is None

    def target_length(self, counts: np.ndarray) -> int:
        """The padded length of a batch: its longest event clamped into [min_length, max_length]."""
        if self.max_length is None:
            raise PreprocessFormatError(f"{self.name}: a flat group has no particle axis")
        longest = int(np.max(counts)) if len(counts) else 0
        return int(min(max(longest, self.min_length or 0), self.max_length))


@dataclass(frozen=True)
class PreprocessConfig:
    input_names: tuple[str, ...]
    groups: dict[str, InputGroup]
    output_names: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Any) -> PreprocessConfig:
        if not isinstance(data, dict) or not isinstance(data.get("input_names"), list):
            raise PreprocessFormatError("not a weaver preprocess.json (no 'input_names' list)")
        groups = {}
        for name in data["input_names"]:
            block = data.get(name)
            if not isinstance(block, dict):
                raise PreprocessFormatError(f"input {name!r} is listed in input_names but has no block")
            groups[name] = _group(name, block)
        return cls(tuple(data["input_names"]), groups, tuple(data.get("output_names") or ()))


def _group(name: str, block: dict[str, Any]) -> InputGroup:
    var_names = block.get("var_names")
    if not isinstance(var_names, list) or not var_names or not all(isinstance(v, str) for v in var_names):
        raise PreprocessFormatError(f"{name}: 'var_names' must be a non-empty list of names")
    infos_block = block.get("var_infos") or {}
    infos = []
    for var in var_names:
        info = infos_block.get(var)
        if not isinstance(info, dict):
            raise PreprocessFormatError(f"{name}: no var_infos entry for {var!r}")
        try:
            infos.append(VarInfo(
                median=float(info.get("median", 0.0)), norm_factor=float(info.get("norm_factor", 1.0)),
                replace_inf_value=float(info.get("replace_inf_value", 0.0)),
                lower_bound=float(info.get("lower_bound", -HUGE)), upper_bound=float(info.get("upper_bound", HUGE)),
                pad=float(info.get("pad", 0.0))))
        except (TypeError, ValueError) as error:
            raise PreprocessFormatError(f"{name}.{var}: a value is not a number ({error})") from error
        if infos[-1].lower_bound > infos[-1].upper_bound:
            raise PreprocessFormatError(f"{name}.{var}: lower_bound is above upper_bound")
    if "var_length" in block:
        low = high = _length(block["var_length"], name, "var_length")
    elif "min_length" in block or "max_length" in block:
        low = _length(block.get("min_length", 0), name, "min_length")
        high = _length(block.get("max_length"), name, "max_length")
        if low > high:
            raise PreprocessFormatError(f"{name}: min_length {low} is above max_length {high}")
    else:
        low = high = None
    return InputGroup(name, tuple(var_names), tuple(infos), low, high)


def _length(value: Any, group: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PreprocessFormatError(f"{group}: {key} must be a non-negative integer, got {value!r}")
    return value


def mask_owners(config: PreprocessConfig) -> dict[str, str]:
    """Mask groups and the group whose counts make them: a group of one variable named like ``*mask*``
    belongs to the first other particle group with the same length rule (weaver builds masks as
    ``ak.ones_like`` of a particle variable; no ntuple stores them)."""
    owners = {}
    for name, group in config.groups.items():
        if len(group.var_names) != 1 or "mask" not in group.var_names[0].lower() or group.flat:
            continue
        for other_name, other in config.groups.items():
            if other_name != name and "mask" not in " ".join(other.var_names).lower() and not other.flat and (
                    other.min_length, other.max_length) == (group.min_length, group.max_length):
                owners[name] = other_name
                break
    return owners


def load_config(path: str | Path) -> PreprocessConfig:
    """Read a preprocess.json (PreprocessFormatError or OSError on a bad file)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PreprocessFormatError(f"not valid JSON (line {error.lineno})") from error
    return PreprocessConfig.from_dict(data)


def transform(values: np.ndarray, info: VarInfo, convention: str) -> np.ndarray:
    """Centre, scale and clip one variable's values (float32), NaN/Inf handled by ``convention``;
    ``raw`` passes values through."""
    x = np.asarray(values, dtype=np.float32)
    if convention == "raw":
        return x
    if convention == "cmssw":
        bad = ~np.isfinite(x) | (np.abs(x) > HUGE)
        x = np.where(bad, np.float32(info.replace_inf_value), x)
    elif convention != "weaver":
        raise PreprocessFormatError(f"unknown convention {convention!r} (one of {', '.join(CONVENTIONS)})")
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = (x - np.float32(info.median)) * np.float32(info.norm_factor)
        return np.clip(scaled, np.float32(info.lower_bound), np.float32(info.upper_bound)).astype(np.float32)


def finish(tensor: np.ndarray, convention: str) -> np.ndarray:
    """The last step of a convention on a padded tensor: weaver sets NaN to 0 (numpy.nan_to_num)."""
    return np.nan_to_num(tensor, copy=False) if convention == "weaver" else tensor


def pad_particles(columns: list[np.ndarray], counts: np.ndarray, length: int, pads: list[float]) -> np.ndarray:
    """``[events, len(columns), length]`` from the flat per-particle values of each column (events one
    after another, ``counts[i]`` values for event i): the first ``length`` values of an event, then pads."""
    counts = np.asarray(counts, dtype=np.int64)
    n = len(counts)
    out = np.empty((n, len(columns), length), dtype=np.float32)
    for channel, pad in enumerate(pads):
        out[:, channel, :] = np.float32(pad)
    if n == 0 or length == 0:
        return out
    event = np.repeat(np.arange(n), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(int(counts.sum())) - np.repeat(starts, counts)
    keep = position < length
    # One flat index per kept particle (channel 0), shifted by a row per channel: 1-D scatters are cheap.
    target = event[keep] * (len(columns) * length) + position[keep]
    flat = out.reshape(-1)
    for channel, values in enumerate(columns):
        flat[target + channel * length] = np.asarray(values, dtype=np.float32)[keep]
    return out


def group_tensor(group: InputGroup, columns: list[np.ndarray], counts: np.ndarray | None, convention: str,
                 length: int | None = None) -> np.ndarray:
    """One input's tensor: ``[events, C, length]`` for a particle group (``length`` defaults to the group's
    rule on ``counts``), ``[events, C]`` for a flat one (``counts`` None)."""
    if len(columns) != len(group.var_names):
        raise PreprocessFormatError(f"{group.name}: {len(columns)} columns for {len(group.var_names)} variables")
    values = [transform(c, info, convention) for c, info in zip(columns, group.var_infos)]
    if counts is None:
        stacked = np.stack(values, axis=1) if values else np.empty((0, 0), np.float32)
        return finish(stacked, convention)
    if length is None:
        length = group.target_length(counts)
    tensor = pad_particles(values, counts, length, [info.pad for info in group.var_infos])
    return finish(tensor, convention)


def columns_from_padded(raw: np.ndarray, counts: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The flat per-particle columns of a raw ``[events, C, n]`` array whose event i holds ``counts[i]``
    particles (the rest of its row is ignored): what a client sends to the served preprocessing."""
    raw = np.asarray(raw)
    counts = np.clip(np.asarray(counts, dtype=np.int64).reshape(-1), 0, raw.shape[-1])
    keep = np.arange(raw.shape[-1])[None, :] < counts[:, None]
    return [raw[:, c, :][keep] for c in range(raw.shape[1])], counts
