"""Do the training (weaver) and serving (CMSSW) preprocessing agree on these events?

Both conventions of a weaver ``preprocess.json`` (:mod:`hepdeploy.weaver`) run on the same raw ROOT
events; the report says, per input group, how many values differ and in which variables, and with a
model the effect on its outputs (max |d|, argmax agreement) and, with labels, on the physics metrics:
the validation's paired-bootstrap checks with weaver's scores as the candidate and CMSSW's as the
reference, each change with its interval. Differences are information: the caller decides whether one
is a failure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hepdeploy.backend.sources import artifact_runner
from hepdeploy.data import read_root_events
from hepdeploy.errors import DataError
from hepdeploy.ntuple import load_preprocess
from hepdeploy.spec import ColumnSource, DataSpec, ModelSpec, PhysicsSpec, PreprocessRef, TensorSpec
from hepdeploy.validate.physics import PhysicsResult, physics_checks
from hepdeploy.weaver import CONVENTIONS, PreprocessConfig

CHUNK = 4096


@dataclass
class GroupParity:
    name: str
    values: int
    differing: int
    variables: dict[str, int] = field(default_factory=dict)  # variable -> differing values

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.name, "values": self.values, "differing": self.differing, "variables": self.variables}


@dataclass
class OutputParity:
    name: str
    max_abs_diff: float
    argmax_agreement: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"output": self.name, "max_abs_diff": self.max_abs_diff, "argmax_agreement": self.argmax_agreement}


@dataclass
class ParityReport:
    events: int
    groups: list[GroupParity]
    outputs: list[OutputParity] = field(default_factory=list)
    physics: PhysicsResult | None = None  # weaver (candidate) against cmssw (reference), when labels exist

    @property
    def differs(self) -> bool:
        return any(g.differing for g in self.groups)

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "conventions": list(CONVENTIONS), "differs": self.differs,
                "groups": [g.as_dict() for g in self.groups], "outputs": [o.as_dict() for o in self.outputs],
                "physics": self.physics.to_dict() if self.physics is not None else None}

    def lines(self) -> list[str]:
        out = [f"{self.events} events, conventions cmssw vs weaver"]
        for group in self.groups:
            where = ", ".join(f"{name} ({n})" for name, n in group.variables.items())
            out.append(f"  {group.name}: {group.differing} of {group.values} values differ"
                       + (f" in {where}" if where else ""))
        for output in self.outputs:
            line = f"  output {output.name}: max |d| {output.max_abs_diff:.3g}"
            if output.argmax_agreement is not None:
                line += f", argmax agreement {output.argmax_agreement:.4%}"
            out.append(line)
        if self.physics is not None:
            out.append("  physics, cmssw -> weaver (paired bootstrap intervals):")
            out += [f"    {check.summary()}" for check in self.physics.checks]
            out += [f"    note: {note}" for note in self.physics.notes]
        return out


def group_tensors(config: PreprocessConfig) -> list[TensorSpec]:
    """One tensor per json input group: [batch, C, n_<group>] (or [batch, C] for a flat group)."""
    return [TensorSpec(name=name, shape=["batch", len(g.var_names)] + ([] if g.flat else [f"n_{name}"]))
            for name, g in config.groups.items()]


def check_parity(preprocess_json: Path, data: Path | str, tree: str | None = None, model: Path | None = None,
                 labels: ColumnSource | str | None = None, class_names: list[str] | None = None,
                 spec: ModelSpec | None = None) -> ParityReport:
    """Run both conventions on the raw events of ``data`` and compare them, and a model's outputs on them
    when ``model`` is given. Branches are the json's var_names and masks come from counts, unless ``spec``
    maps them (its ``data.inputs``, tree, labels and class names; its inputs' shapes and layouts)."""
    config = load_preprocess(Path(preprocess_json))
    ref = PreprocessRef(file=str(Path(preprocess_json).resolve()))
    if spec is not None:
        tensors = [t for t in spec.inputs if t.name in config.groups] if model is None else list(spec.inputs)
        mapping = spec.data.model_copy(update={
            "preprocess": ref, "root_tree": tree or spec.data.root_tree, "labels": labels or spec.data.labels,
            "variables": []})
        class_names = class_names or list(spec.validation.physics.class_names) or None
    else:
        tensors = group_tensors(config)
        mapping = DataSpec(root_tree=tree, preprocess=ref, labels=labels)
    runs = {c: read_root_events(data, tensors, mapping, convention=c, targets=c == "cmssw") for c in CONVENTIONS}
    cmssw, weaver = runs["cmssw"], runs["weaver"]
    groups = []
    for name, group in config.groups.items():
        differ = cmssw[name] != weaver[name]
        per_variable = differ.sum(axis=tuple(a for a in range(differ.ndim) if a != 1))
        groups.append(GroupParity(name, int(differ.size), int(differ.sum()),
                                  {v: int(n) for v, n in zip(group.var_names, per_variable) if n}))
    events = int(next(iter(cmssw.values())).shape[0])
    report = ParityReport(events, groups)
    if model is not None:
        runner = artifact_runner(model)
        expected = set(runner.input_names or [])
        if expected != set(config.input_names):
            raise DataError(f"{model}: its inputs ({', '.join(sorted(expected))}) are not the preprocess.json's "
                            f"groups ({', '.join(config.input_names)})")
        outputs = {c: runner.run_chunked({n: runs[c][n] for n in config.input_names}, CHUNK) for c in CONVENTIONS}
        for name, ref in outputs["cmssw"].items():
            report.outputs.append(_output_parity(name, ref, outputs["weaver"][name]))
        if mapping.label_array:
            physics = PhysicsSpec(class_names=class_names) if class_names else PhysicsSpec()
            report.physics = physics_checks(outputs["weaver"], outputs["cmssw"],
                                            {mapping.label_array: cmssw[mapping.label_array]}, physics)
    return report


def _output_parity(name: str, ref: np.ndarray, other: np.ndarray) -> OutputParity:
    result = OutputParity(name, float(np.max(np.abs(ref.astype(np.float64) - other))) if ref.size else 0.0)
    if ref.ndim == 2 and ref.shape[1] > 1:
        result.argmax_agreement = float(np.mean(ref.argmax(1) == other.argmax(1)))
    return result
