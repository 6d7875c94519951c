"""What a physics metric is to the physics checks: a :class:`PhysicsMetric` registry entry, and the
views of one model pair on one set of events that its kernel reads.

An entry holds

- its **kernel**: from a view and the spec, where the reference model's and the candidate's values
  are (a bootstrap :class:`~hepdeploy.validate.bootstrap.Kernel` and its row each), so the paired
  bootstrap resamples it like every other metric;
- its **scalar** definition: the same value computed directly on the view's arrays (the kernel
  reproduces it on the unweighted sample);
- its **direction**: higher is better, lower is better, or two-sided (a change either way counts),
  and whether the change (absolute or relative) or the candidate's own value is judged;
- its **floor**: why the view holds too few events to judge it ("" when it holds enough);
- its **allowance**: the :class:`~hepdeploy.spec.PhysicsSpec` field holding the allowed change
  (or the candidate's minimum, for a metric judged on its own value); a metric whose field the
  spec leaves None is not checked at all (an opt-in metric).

The per-task functions of :mod:`hepdeploy.validate.physics` build the views; every metric of the
registry (:mod:`hepdeploy.validate.metric_registry`) whose view kind matches is planned on them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hepdeploy.spec import PhysicsSpec
from hepdeploy.validate.bootstrap import Kernel

# How a check is judged: the allowed drop (higher is better), increase (lower is better) or absolute
# change (two-sided) relative to the reference, a floor on the candidate's own value ("level"), or
# not at all ("info").
Kind = Literal["drop", "increase", "abs", "level", "info"]
Direction = Literal["higher", "lower", "two-sided"]
# What is judged: candidate - reference, candidate / reference - 1, or the candidate's own value.
Judged = Literal["change", "relative_change", "value"]
# Which view a metric reads: one class of a classifier against the rest, a classifier's decisions,
# a graph network's edges, one regression target.
ViewKind = Literal["class", "decisions", "edges", "target"]
Who = Literal["reference", "candidate"]


@dataclass
class Subset:
    """The rows of all events or of one bin, and how many bootstrap units (events) they hold."""

    label: str | None
    rows: np.ndarray | None  # None: every row
    n_events: int

    def take(self, array: np.ndarray) -> np.ndarray:
        return array if self.rows is None else array[self.rows]


@dataclass(kw_only=True)
class _View:
    """What every view has: its subset of events, the number of rows of the whole set (kernels index
    into it), and the kernels already made for it (several metrics share one, e.g. AUC and efficiency)."""

    subset: Subset
    n_rows: int
    _kernels: dict[Any, Kernel] = field(default_factory=dict, init=False, repr=False)

    def shared(self, key: Any, make: Callable[[], Kernel]) -> Kernel:
        """The kernel ``key`` of this view, made on first use."""
        if key not in self._kernels:
            self._kernels[key] = make()
        return self._kernels[key]


@dataclass(kw_only=True)
class ScoresView(_View):
    """Both models' scores of one signal hypothesis on one subset: a class against the rest, or edges."""

    label: str  # "class 0", "b", "edges"
    reference: np.ndarray
    candidate: np.ndarray
    signal: np.ndarray

    def scores(self, who: Who) -> np.ndarray:
        return self.reference if who == "reference" else self.candidate

    @property
    def n_signal(self) -> int:
        return int(self.signal.sum())

    @property
    def n_background(self) -> int:
        return int(self.signal.size - self.signal.sum())


@dataclass(kw_only=True)
class DecisionsView(_View):
    """A classifier's decisions on one subset: whether both models pick the same class, and whether each is right."""

    agree: np.ndarray
    correct_reference: np.ndarray
    correct_candidate: np.ndarray

    def correct(self, who: Who) -> np.ndarray:
        return self.correct_reference if who == "reference" else self.correct_candidate


@dataclass(kw_only=True)
class TargetView(_View):
    """One regression target on one subset: each model's relative residual, and the candidate's
    relative to the reference ((candidate - reference) / |true|), on the rows where they are defined."""

    tag: str  # "" for a single target, "[k]" for target k of several
    reference: np.ndarray
    candidate: np.ndarray
    versus_reference: np.ndarray

    def residual(self, who: Who | Literal["versus_reference"]) -> np.ndarray:
        return {"reference": self.reference, "candidate": self.candidate,
                "versus_reference": self.versus_reference}[who]


View = ScoresView | DecisionsView | TargetView


@dataclass(frozen=True)
class KernelRow:
    """Where one model's value of a metric is: a kernel and the row of its output."""

    kernel: Kernel
    row: int


@dataclass(frozen=True)
class MetricKernels:
    """Where the reference model's and the candidate's values of a metric are (no reference: the
    metric is a value of the candidate alone, such as the agreement of the two models' decisions)."""

    reference: KernelRow | None
    candidate: KernelRow


# An entry's kernel function: (view, spec) -> where both models' values are.
KernelFunction = Callable[[Any, PhysicsSpec], MetricKernels]


def no_floor(view: Any, spec: PhysicsSpec) -> str:
    return ""


def statistical_floor(have: int, need: int, what: str) -> str:
    """"" when ``have`` reaches ``need``, else why the metric is not judged."""
    return "" if have >= need else f"not enough events (have {have} {what}, need {need})"


@dataclass(frozen=True)
class PhysicsMetric:
    """One physics metric, as the physics checks plan, compute and judge it (see the module docstring)."""

    name: str  # "auc": the metric's family; ``title`` names each check of it
    view: ViewKind
    kernel: KernelFunction
    scalar: Callable[[Any, Who, PhysicsSpec], float]
    title: Callable[[Any, PhysicsSpec], str]
    direction: Direction | None  # None: reported, never judged
    allowance: str | None = None  # the PhysicsSpec field of the allowed change (or minimum)
    judged: Judged = "change"
    floor: Callable[[Any, PhysicsSpec], str] = no_floor

    def __post_init__(self) -> None:
        if (self.direction is None) != (self.allowance is None):
            raise ValueError(f"physics metric {self.name!r}: a judged metric needs a direction and an allowance")
        if self.judged == "value" and self.direction not in (None, "higher"):
            raise ValueError(f"physics metric {self.name!r}: only a minimum of the candidate's own value is judged")
        if self.allowance is not None and self.allowance not in PhysicsSpec.model_fields:
            raise ValueError(f"physics metric {self.name!r}: allowance {self.allowance!r} is not a PhysicsSpec field")

    @property
    def kind(self) -> Kind:
        if self.direction is None:
            return "info"
        if self.judged == "value":
            return "level"
        return {"higher": "drop", "lower": "increase", "two-sided": "abs"}[self.direction]  # type: ignore[return-value]

    def limit(self, spec: PhysicsSpec) -> float | None:
        """The allowance ``spec`` sets (None for a metric that is only reported)."""
        value = None if self.allowance is None else getattr(spec, self.allowance)
        return None if value is None else float(value)

    def planned(self, spec: PhysicsSpec) -> bool:
        """Whether ``spec`` asks for this metric: reported metrics always, judged ones unless their
        allowance is left unset (None: an opt-in metric)."""
        return self.direction is None or self.limit(spec) is not None

    def rule(self, spec: PhysicsSpec) -> str:
        """What passing means, in words: "drop <= 0.01", "relative drop <= 0.1", ">= 0.95", "info"."""
        limit = self.limit(spec)
        if limit is None:
            return "info"
        if self.kind == "level":
            return f">= {limit:g}"
        relative = "relative " if self.judged == "relative_change" else ""
        words = {"drop": "drop", "increase": "increase", "abs": "|change|"}[self.kind]
        return f"{relative}{words} <= {limit:g}"
