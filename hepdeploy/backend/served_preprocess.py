"""The interface of served preprocessing: what a client of a preprocessing ensemble sends.

A Triton ensemble ``<name>_ensemble`` (written by :mod:`hepdeploy.triton.ensemble`) takes the *raw*
per-particle values of a weaver ``preprocess.json``'s input groups and returns the model's outputs;
its first step, ``<name>_preprocess``, centres, scales, clips and pads them with
:mod:`hepdeploy.weaver`. For each group ``G`` that is not a mask:

* ``G_raw``: float32 ``[batch, C, n]``, the raw values of the group's C variables, event by event,
  padded with anything beyond each event's length (``[batch, C]`` for a flat group);
* ``G_length``: int32 ``[batch, 1]``, the particles of each event (a flat group has none).

Mask groups take no input: the server makes them from their owner's lengths. Which groups are masks
is :func:`hepdeploy.ntuple.mask_inputs`, the rule the inline path reads with: the spec's
``data.inputs.G.mask_of`` where the spec maps ``G``, else the json's mask groups. The server side
(writing the ensemble) and the client side (``validate --server`` sending ROOT events) both read the
interface here, so the two cannot drift apart.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hepdeploy.errors import BadInputError
from hepdeploy.ntuple import mask_inputs
from hepdeploy.spec import DataSpec, TensorSpec
from hepdeploy.weaver import PreprocessConfig

RAW_SUFFIX = "_raw"
LENGTH_SUFFIX = "_length"
CHANNELS_FIRST = "channels_first"


@dataclass(frozen=True)
class ServedGroup:
    """One json group as the served preprocessing handles it (``name`` is also the model input)."""

    name: str
    channels: int
    flat: bool
    mask_of: str | None = None  # a mask made from that group's lengths (no raw input of its own)
    fixed_length: int | None = None  # the model's fixed particle dim; None: the group's min/max rule
    layout: str = CHANNELS_FIRST  # of the model input: [batch, C, n] or (channels_last) [batch, n, C]

    @property
    def raw_name(self) -> str:
        return f"{self.name}{RAW_SUFFIX}"

    @property
    def length_name(self) -> str:
        return f"{self.name}{LENGTH_SUFFIX}"

    @property
    def is_mask(self) -> bool:
        return self.mask_of is not None

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "channels": self.channels, "flat": self.flat, "mask_of": self.mask_of,
                "length": self.fixed_length, "layout": self.layout}


@dataclass(frozen=True)
class ServedPreprocess:
    """Every group of the json, in its ``input_names`` order."""

    groups: tuple[ServedGroup, ...]

    @property
    def raw_groups(self) -> list[ServedGroup]:
        """The groups a client sends (every group that is not a mask)."""
        return [g for g in self.groups if not g.is_mask]

    def group(self, name: str) -> ServedGroup:
        return next(g for g in self.groups if g.name == name)

    def raw_input_specs(self) -> list[TensorSpec]:
        """The tensors a client sends, with their batch axis."""
        specs = []
        for group in self.raw_groups:
            if group.flat:
                specs.append(TensorSpec(name=group.raw_name, dtype="float32", shape=["batch", group.channels]))
            else:
                specs.append(TensorSpec(name=group.raw_name, dtype="float32",
                                        shape=["batch", group.channels, f"n_{group.name}"]))
                specs.append(TensorSpec(name=group.length_name, dtype="int32", shape=["batch", 1]))
        return specs


def served_preprocess(config: PreprocessConfig, inputs: Sequence[TensorSpec], data: DataSpec | None = None,
                      where: str = "preprocess.json") -> ServedPreprocess:
    """The served interface of ``config`` in front of a model with ``inputs``; BadInputError (one line)
    when the json's groups are not the model's inputs or do not fit them."""
    by_name = {t.name: t for t in inputs}
    groups = list(config.input_names)
    missing = [n for n in by_name if n not in config.groups]
    extra = [n for n in groups if n not in by_name]
    if missing or extra:
        parts = ([f"the model's input(s) {', '.join(missing)} have no group"] if missing else []) + (
            [f"group(s) {', '.join(extra)} are not model inputs"] if extra else [])
        raise BadInputError(f"{where}: its groups ({', '.join(groups)}) do not match the model's inputs "
                            f"({', '.join(by_name)}): {'; '.join(parts)}")
    owners = mask_inputs(data or DataSpec(), config)
    served = []
    for name in groups:
        group, tensor = config.groups[name], by_name[name]
        mapping = data.inputs.get(name) if data is not None else None
        layout = mapping.layout if mapping is not None else CHANNELS_FIRST
        if tensor.dtype != "float32":
            raise BadInputError(f"{where}: model input {name!r} is {tensor.dtype}; served preprocessing makes float32")
        if not tensor.shape or not isinstance(tensor.shape[0], str):
            raise BadInputError(f"{where}: model input {name!r} {list(tensor.shape)} has no batch axis; "
                                f"a preprocessing ensemble serves batched models")
        owner = owners.get(name)
        flat = group.flat and owner is None
        want_rank = 2 if flat else 3
        if len(tensor.shape) != want_rank:
            kind = "flat" if flat else "particle"
            raise BadInputError(f"{where}: group {name!r} is a {kind} group ([batch, C{'' if flat else ', n'}]) but the "
                                f"model input has shape {list(tensor.shape)}")
        channel_axis = 1 if flat or layout == CHANNELS_FIRST else 2
        channels = tensor.shape[channel_axis]
        if isinstance(channels, int) and channels != len(group.var_names):
            raise BadInputError(f"{where}: group {name!r} has {len(group.var_names)} variable(s) "
                                f"({', '.join(group.var_names)}) but model input {name!r} {list(tensor.shape)} "
                                f"has {channels} channel(s)")
        fixed = None
        if not flat:
            particle = tensor.shape[2 if layout == CHANNELS_FIRST else 1]
            fixed = particle if isinstance(particle, int) else None
        if owner is not None:
            if owner not in config.groups or owner == name or owner in owners or config.groups[owner].flat:
                raise BadInputError(f"{where}: mask {name!r} is made from {owner!r}, which is not another particle "
                                    f"group of the json")
            if len(group.var_names) != 1:
                raise BadInputError(f"{where}: mask group {name!r} has {len(group.var_names)} variables; a mask has one")
        elif not flat and fixed is not None and not ((group.min_length or 0) <= fixed <= group.max_length):  # type: ignore[operator]
            raise BadInputError(f"{where}: model input {name!r} has the fixed length {fixed}, outside the group's "
                                f"{group.min_length}..{group.max_length}")
        served.append(ServedGroup(name, len(group.var_names), flat, owner, fixed, layout))
    return ServedPreprocess(tuple(served))
