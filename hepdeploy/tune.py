"""hepdeploy.tune: the cheapest precision mix of a variant that passes the physics budget, confirmed.

Post-training INT8 (or FP16) of a whole network can break the physics (FACILE's resolution, the jet
MLP's W efficiency) while most of its layers would be harmless in low precision. ``tune`` searches
which layers to keep in FP32 (and, for INT8 whose spec leaves it open, which calibration method sets
the ranges), judging every candidate with the same paired intervals and PASS / FAIL / UNDECIDED rule
as ``validate``. Four rules make its answer the same on every machine and honest:

1. **Kept means FP32.** A layer is one compute node with what goes with it (``optimize.keep``); a kept
   layer runs in FP32 on FP32 inputs, with no Q/DQ pair between it and another kept layer. Keeping
   every layer gives the FP32 graph.
2. **No clock in the search.** Mixes are ranked by a cost modelled from the graph (MACs, tensor sizes,
   conversions between precisions) and a fixed table per serving target (``optimize.cost``), never by
   timing. The search does not assume that keeping more always harms less (it does not: signed errors
   of two layers can cancel): it evaluates mixes in order of modelled cost, cheapest first, so the first
   one that PASSES is the cheapest passing mix among those it could afford to evaluate (its bound: the
   evaluation budget, and kept sets of at most ``_max_kept`` layers). Where speed can be measured here
   (a variant the registry times: int8-cpu), up to ``MAX_TIES`` mixes modelled within ``TIE`` of that one (and not merely it with more
   kept) are evaluated too, and measured speed may reorder them when it differs by more than
   ``SPEED_NOISE``; elsewhere the model's order stands. For INT8
   whose spec leaves the calibration method open, the fully lowered variant is judged with each method
   first; the method that harms it least calibrates every mix after it. Layers the quantizer leaves in
   FP32 on its own (ModelOpt skips small GEMMs) are no decision and are not searched.
3. **Chosen on one half, confirmed on the other.** The search judges candidates on one half of the
   reference set (a seeded split) and the chosen mix is validated again on the other half, or on a
   second set when one is given. Picking the best of many candidates on one set flatters it there (the
   winner's curse); only a mix that PASSES on data it was not chosen on is an answer.
4. **FP32 is an answer.** When no mix is modelled faster than FP32, or none passes within the bound,
   the answer is FP32: a result, reported as such, not an error.

Evaluations are cached by content hash (model, variant options, kept layers, calibration method and
data, the half judged on, validation settings), so a rerun costs no evaluation.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hepdeploy.artifacts import StepRecord, read_artifact, write_artifact
from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
from hepdeploy.errors import BadInputError, DataError, HepDeployError, first_line
from hepdeploy.fsutil import atomic_path, atomic_write_text, file_digest
from hepdeploy.judgement import Judgement
from hepdeploy.optimize import optimize_artifact
from hepdeploy.optimize.cost import CostModel
from hepdeploy.optimize.graph import lowered_nodes, name_unnamed_nodes
from hepdeploy.optimize.int8 import edge_exclusions
from hepdeploy.optimize.keep import GROUP_OP_TYPES, PrecisionGroup, keep_in_fp32, nodes_matching, precision_groups
from hepdeploy.optimize.modelopt_worker import ModelOptWorker
from hepdeploy.spec import ModelSpec, TensorSpec, VariantSpec
from hepdeploy.validate import validate_candidate
from hepdeploy.validate.reference import ReferenceSet
from hepdeploy.validate.report import VariantReport, harm_of
from hepdeploy.variants import BASELINE, TUNABLE_VARIANTS, variant_kind

log = logging.getLogger(__name__)

# INT8 calibration methods tried, in this order after the variant's own, when the spec does not fix one.
CALIBRATION_METHODS = ("max", "percentile", "entropy")
TIE = 0.05  # mixes whose modelled costs differ by less than this fraction are ties
MAX_TIES = 3  # near ties evaluated after the first passing mix, where speed is measured here (int8-cpu)
SPEED_NOISE = 0.10  # measured speeds closer than this do not overturn the modelled order
TIMING_SECONDS = 0.6  # per candidate, alternating with FP32
MAX_ENUMERATED = 4096  # kept sets the search orders (all of them up to 12 layers)


def timing_feed(reference: ReferenceSet, inputs: list[TensorSpec], spec: ModelSpec | None) -> dict[str, np.ndarray]:
    """The batch speed is measured (and cost modelled) on, from the reference inputs: the spec's typical
    batch (``dims.batch.opt``, else up to 1024 rows) for a batched model, the model's fixed batch for one
    exported with a fixed batch (e.g. 1), the whole input for a graph-style model without a batch axis."""
    if all(t.has_batch_axis for t in inputs):
        opt = spec.dim_range("batch").opt if spec is not None else None
        rows = min(opt or 1024, next(iter(reference.inputs.values())).shape[0])
        return {name: np.ascontiguousarray(value[:rows]) for name, value in reference.inputs.items()}
    feed = {}
    for tensor in inputs:
        value = reference.inputs[tensor.name]
        fixed = tensor.shape[0] if tensor.shape and isinstance(tensor.shape[0], int) else None
        if fixed is not None and value.ndim == len(tensor.shape) and value.shape[0] > fixed:
            value = value[:fixed]  # rows of a fixed-batch model: one run's worth
        feed[tensor.name] = np.ascontiguousarray(value)
    return feed


def default_max_evaluations(groups: int) -> int:
    return 2 * groups + 10


@dataclass(frozen=True)
class TuneData:
    """What a search judges and calibrates on."""

    reference: ReferenceSet
    calibration: dict[str, np.ndarray] | None = None
    # A second set the answer is confirmed on; without it the search judges on one half of ``reference``
    # and confirms on the other.
    confirmation: ReferenceSet | None = None


@dataclass(frozen=True)
class TuneSettings:
    """How a search runs: what must pass, how many evaluations it may make, the ModelOpt worker it shares
    (a build's), and whom it tells about each evaluation (``on_evaluation(evaluation, done, budget)``)."""

    policy: str | None = None
    max_evaluations: int | None = None
    modelopt: ModelOptWorker | None = None
    on_evaluation: Callable[[Evaluation, int, int], None] | None = None


@dataclass
class Group:
    """One decision: a layer (a compute node and what goes with it) kept in FP32 or lowered."""

    name: str
    op_type: str
    nodes: list[str]
    cost_share: float  # of the FP32 graph's modelled cost


@dataclass
class Evaluation:
    """One candidate mix, validated on one half of the reference set (or the confirmation set)."""

    kept: list[str]
    calibration_method: str | None
    outcome: str  # PASS | FAIL | UNDECIDED | ERROR
    harm: float
    verdict: str
    modelled_cost: float  # of FP32's modelled cost (below 1: modelled faster)
    speed: float | None  # int8-cpu: FP32 time / candidate time in ONNX Runtime here (measured for the answer)
    phase: str  # search | confirm
    cached: bool = False
    seconds: float = 0.0
    path: str | None = None

    @property
    def passed(self) -> bool:
        return self.outcome == "PASS"


@dataclass
class TuneResult:
    variant: str
    groups: list[Group]
    target: str = ""
    cost_source: str = ""
    evaluations: list[Evaluation] = field(default_factory=list)
    candidates: int = 0  # mixes modelled faster than FP32 (the search's list)
    best: Evaluation | None = None  # chosen on the tuning half
    confirmation: Evaluation | None = None  # the chosen mix on data it was not chosen on
    reason: str = ""  # why the answer is what it is, in one line
    stopped: str | None = None  # why the search ended early (budget, Ctrl-C)
    split: str = ""  # what the search judged on and what confirmed
    # The validation reports of ``best`` (tuning half) and of its confirmation, when this search made them.
    best_report: VariantReport | None = field(default=None, repr=False)
    confirmation_report: VariantReport | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        """A mix was chosen and PASSES on the data it was not chosen on."""
        return self.best is not None and self.best.passed and self.confirmation is not None \
            and self.confirmation.passed

    @property
    def answer_is_fp32(self) -> bool:
        """Nothing modelled faster than FP32 passes within the search's bound."""
        return self.best is None or not self.best.passed

    @property
    def outcome(self) -> str:
        """PASS (confirmed), FP32 (the answer is the FP32 graph), or the confirmation's outcome."""
        if self.passed:
            return "PASS"
        if self.answer_is_fp32:
            return "FP32"
        return self.confirmation.outcome if self.confirmation is not None else "UNCONFIRMED"

    def spec_fragment(self, variant: VariantSpec) -> dict[str, Any]:
        """The ``variants:`` entry that reproduces the answer (exact node names, as patterns)."""
        entry = variant.model_dump(exclude_defaults=True)
        best = self.best if self.best is not None and self.best.passed else None
        kept = [f"^{re.escape(name)}$" for name in (best.kept if best else [])]
        entry["keep_nodes"] = [*entry.get("keep_nodes", []), *kept]
        if best is not None and best.calibration_method not in (None, variant.calibration_method):
            entry["calibration_method"] = best.calibration_method
        entry.pop("tune", None)
        return {"variants": [entry]}

    def to_dict(self) -> dict[str, Any]:
        return _finite({"variant": self.variant, "outcome": self.outcome, "passed": self.passed,
                        "reason": self.reason, "stopped": self.stopped, "target": self.target,
                        "cost_model": self.cost_source, "split": self.split, "candidates": self.candidates,
                        "groups": [asdict(g) for g in self.groups],
                        "best": asdict(self.best) if self.best else None,
                        "confirmation": asdict(self.confirmation) if self.confirmation else None,
                        "evaluations": [asdict(e) for e in self.evaluations]})


def _finite(value: Any) -> Any:
    """JSON that strict readers take: an infinite harm is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def decision_groups(model: Any, variant: VariantSpec) -> tuple[list[PrecisionGroup], list[PrecisionGroup]]:
    """(the layers the search decides on, the layers the variant keeps in FP32 anyway), in graph order.

    Kept anyway: layers whose compute node the variant keeps by name or op type (``keep_nodes``,
    ``keep_op_types``), does not quantize (``quantize_op_types``), or keeps as an edge (``keep_edges_fp32``),
    each where the variant has that option."""
    groups = precision_groups(model)
    kind = variant_kind(variant.name)
    always = set(nodes_matching(model, variant.keep_nodes, variant.keep_op_types))
    if kind.applies("keep_edges_fp32"):
        always |= set(edge_exclusions(model, variant))
    only = variant.quantize_op_types if kind.applies("quantize_op_types") else []
    decided, kept = [], []
    for group in groups:
        lowered = not only or group.op_type in only
        (decided if lowered and group.name not in always else kept).append(group)
    return decided, kept


class Tuner:
    """One search; see the module docstring. ``work_dir`` holds the evaluation cache."""

    def __init__(self, fp32_path: Path, variant: VariantSpec, data: TuneData, *, spec: ModelSpec | None,
                 work_dir: Path, settings: TuneSettings | None = None) -> None:
        self.kind = variant_kind(variant.name)
        if not self.kind.tunable:
            raise BadInputError(f"tune: variant {variant.name!r} has no precision to tune "
                                f"(use one of {', '.join(TUNABLE_VARIANTS)})")
        settings = settings or TuneSettings()
        reference, confirmation = data.reference, data.confirmation
        self.variant = variant
        self.calibration = data.calibration
        self.spec = spec
        self.policy = settings.policy
        self.judgement = Judgement(policy=settings.policy)  # a bad policy is refused here, before any evaluation
        self.work_dir = Path(work_dir)
        self.modelopt = settings.modelopt
        self.on_evaluation = settings.on_evaluation
        seed = spec.data.seed if spec is not None else 0
        if confirmation is not None:
            self.tuning, self.confirming = reference, confirmation
            split = "the search judged on the whole reference set; the answer is confirmed on the second set given"
        else:
            self.tuning, self.confirming = reference.split(seed)
            split = (f"the search judged on one half of the reference set ({self.tuning.n_samples} samples, seeded "
                     f"split, seed {seed}); the answer is confirmed on the other half ({self.confirming.n_samples})")
        self.fp32_path = self._simplified_fp32(Path(fp32_path))
        import onnx

        model = onnx.load(str(self.fp32_path))
        decided, always = decision_groups(model, variant)
        if not decided:
            raise BadInputError(f"tune: no {'/'.join(GROUP_OP_TYPES)} node that {variant.name} would lower: nothing "
                                "to keep or lower (its edge layers stay FP32 anyway)")
        kind = self.kind
        inputs = spec.inputs if spec is not None else read_artifact(self.fp32_path).sidecar.inputs
        for where, given in (("reference set", reference), ("confirmation set", confirmation)):
            lacking = [t.name for t in inputs if given is not None and t.name not in given.inputs]
            if lacking and given is not None:
                raise DataError(f"{given.provenance.get('file') or where}: has no input {', '.join(lacking)} of the "
                                f"model (it has {', '.join(given.inputs)}): a reference set of another model?")
        self.timing_feed = timing_feed(self.tuning, inputs, spec)
        self.cost = CostModel(model, self.timing_feed, [*decided, *always], target=kind.target,
                              low_precision=kind.precision, batched=all(t.has_batch_axis for t in inputs),
                              always_kept=[g.name for g in always])
        self.groups = [Group(g.name, g.op_type, list(g.nodes), self.cost.share(g.name)) for g in decided]
        self.methods = self._methods()
        self.method = self.methods[0]  # the calibration method mixes are made with (chosen on the full mix)
        self.max_evaluations = settings.max_evaluations or default_max_evaluations(len(self.groups))
        self.result = TuneResult(variant.name, self.groups, target=self.cost.target,
                                 cost_source=self.cost.table.source, split=split)
        self._key_base = self._content_key()
        self._reference_keys = {"search": self._reference_key(self.tuning),
                                "confirm": self._reference_key(self.confirming)}
        self._fp32_runner: Any = None
        self._seen: dict[tuple[frozenset[str], str | None], Evaluation] = {}
        self._reports: dict[str, VariantReport] = {}  # candidate path -> its report, for the answer's

    def _methods(self) -> list[str | None]:
        """A calibrated variant (INT8): its calibration method, then the others unless the spec fixed one;
        FP16: none."""
        if not self.kind.applies("calibration_method"):
            return [None]
        own = "max" if self.variant.calibration_method == "minmax" else self.variant.calibration_method
        if "calibration_method" in self.variant.model_fields_set:
            return [own]
        return [own, *(m for m in CALIBRATION_METHODS if m != own)]

    # -- inputs ------------------------------------------------------------------------------
    def _simplified_fp32(self, source: Path) -> Path:
        """The fp32 variant (simplified once, every node named): every candidate starts from it, so the
        names the search decides on are the names the quantizer sees; it is also the speed baseline."""
        import onnx

        self.work_dir.mkdir(parents=True, exist_ok=True)
        raw = self.work_dir / "fp32-simplified.onnx"
        optimize_artifact(source, BASELINE, raw, spec=self.spec)
        artifact = read_artifact(raw)
        named = name_unnamed_nodes(onnx.load(str(raw)))
        return write_artifact(named, self.work_dir / "fp32.onnx", artifact.sidecar).path

    def _content_key(self) -> str:
        digest = hashlib.sha256()
        digest.update(file_digest(self.fp32_path, "sha256").encode())
        digest.update(self.variant.model_dump_json(exclude={"tune", "calibration_method"}).encode())
        calibration = self.calibration or {}
        for name in sorted(calibration):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(calibration[name]).tobytes())
        if self.spec is not None:
            digest.update(self.spec.validation.model_dump_json().encode())
        digest.update(str(self.policy).encode())
        return digest.hexdigest()

    @staticmethod
    def _reference_key(reference: ReferenceSet) -> str:
        digest = hashlib.sha256()
        for group in (reference.inputs, reference.outputs, reference.labels, reference.variables):
            for name in sorted(group):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(group[name]).tobytes())
        return digest.hexdigest()

    # -- candidates ----------------------------------------------------------------------------
    def _max_kept(self) -> int:
        """The largest kept set the search orders: every one while there are at most MAX_ENUMERATED."""
        total, size = 0, 0
        while size <= len(self.groups):
            total += math.comb(len(self.groups), size)
            if total > MAX_ENUMERATED:
                return max(size - 1, 1)
            size += 1
        return len(self.groups)

    def candidates(self) -> list[tuple[float, frozenset[str]]]:
        """(modelled cost relative to FP32, kept layers) of every mix keeping at least one layer that is
        modelled faster than FP32, cheapest first; ties go to fewer kept layers, then to graph order."""
        names = [g.name for g in self.groups]
        listed = []
        for size in range(1, self._max_kept() + 1):
            for kept in itertools.combinations(names, size):
                relative = round(self.cost.relative(kept), 9)  # sums in another order agree to here
                if relative < 1.0:
                    listed.append((relative, len(kept), [names.index(n) for n in kept], frozenset(kept)))
        listed.sort(key=lambda entry: (entry[0], entry[1], entry[2]))
        return [(relative, kept) for relative, _, _, kept in listed]

    # -- one evaluation ----------------------------------------------------------------------
    def _candidate_spec(self, kept: frozenset[str], method: str | None) -> VariantSpec:
        candidate = keep_in_fp32(self.variant, kept)
        return candidate if method is None else candidate.model_copy(update={"calibration_method": method})

    def evaluate(self, kept: frozenset[str], method: str | None) -> Evaluation:
        """Make the candidate keeping ``kept`` in FP32, calibrated by ``method``, and validate it on the
        tuning set (cached by content)."""
        if (kept, method) in self._seen:
            return self._seen[(kept, method)]
        if len(self._seen) >= self.max_evaluations:
            raise _BudgetSpent
        order = [g.name for g in self.groups]
        kept_list = sorted(kept, key=order.index)
        key = hashlib.sha256("\n".join([self._key_base, self._reference_keys["search"], str(method), *kept_list])
                             .encode()).hexdigest()[:20]
        folder = self.work_dir / key
        record = folder / "evaluation.json"
        if record.is_file():
            stored = json.loads(record.read_text(encoding="utf-8"))
            stored["harm"] = math.inf if stored.get("harm") is None else stored["harm"]
            evaluation = Evaluation(**{**stored, "phase": "search", "cached": True})
        else:
            evaluation = self._evaluate_fresh(kept, kept_list, method, folder)
            atomic_write_text(record, json.dumps(_finite({k: v for k, v in asdict(evaluation).items()
                                                          if k not in ("phase", "cached")}), indent=2) + "\n")
        self.result.evaluations.append(evaluation)
        self._seen[(kept, method)] = evaluation
        if self.on_evaluation is not None:
            self.on_evaluation(evaluation, len(self.result.evaluations), self.max_evaluations)
        return evaluation

    def _evaluate_fresh(self, kept: frozenset[str], kept_list: list[str], method: str | None,
                        folder: Path) -> Evaluation:
        started = time.perf_counter()
        relative = self.cost.relative(kept)
        folder.mkdir(parents=True, exist_ok=True)
        candidate = folder / "candidate.onnx"
        try:
            optimize_artifact(self.fp32_path, self._candidate_spec(kept, method), candidate,
                              calibration=self.calibration, spec=self.spec, modelopt=self.modelopt)
            label = f"{self.variant.name} keeping {len(kept)}" + (f", {method}" if method else "")
            report = validate_candidate(candidate, self.tuning, spec=self.spec, judgement=self.judgement, name=label)
        except HepDeployError as error:  # a candidate the tools refuse is a point that does not pass
            return Evaluation(kept_list, method, "ERROR", math.inf, first_line(error), relative, None, "search",
                              seconds=round(time.perf_counter() - started, 2))
        self._reports[f"search:{candidate}"] = report
        return Evaluation(kept_list, method, report.outcome, harm_of(report), report.verdict, relative, None,
                          "search", seconds=round(time.perf_counter() - started, 2), path=str(candidate))

    def _speed(self, evaluation: Evaluation) -> float | None:
        """Measured FP32 / candidate throughput, where this machine can measure it (a variant the registry times)."""
        if self.kind.speed != "timed" or evaluation.path is None:
            return None
        if evaluation.speed is None:
            if self._fp32_runner is None:
                self._fp32_runner = OnnxRuntimeRunner(self.fp32_path, intra_op_threads=1, inter_op_threads=1)
            evaluation.speed = throughput_ratio(self._fp32_runner, Path(evaluation.path), self.timing_feed)
        return evaluation.speed

    # -- the search ---------------------------------------------------------------------------
    def run(self) -> TuneResult:
        """Search, choose, confirm; Ctrl-C or a spent budget end the search with what it found so far."""
        try:
            self._search()
        except _BudgetSpent:
            self.result.stopped = f"the budget of {self.max_evaluations} evaluations is spent"
        except KeyboardInterrupt:
            self.result.stopped = "interrupted (Ctrl-C)"
        try:
            self._choose()
            if self.result.best is not None and self.result.best.passed \
                    and not (self.result.stopped or "").startswith("interrupted"):
                self._confirm()
        except KeyboardInterrupt:
            self.result.stopped = "interrupted (Ctrl-C)"
        finally:
            if self._fp32_runner is not None:
                self._fp32_runner.close()
        self.result.reason = self._reason()
        return self.result

    def _search(self) -> None:
        if self.cost.relative(()) >= 1.0:
            return  # not even the fully lowered variant is modelled faster than FP32
        fulls = []
        for method in self.methods:  # the next method only while none passes
            fulls.append(self.evaluate(frozenset(), method))
            if fulls[-1].passed:
                break
        chosen = min(fulls, key=lambda e: (not e.passed, e.harm, self.methods.index(e.calibration_method)))
        self.method = chosen.calibration_method
        self._drop_layers_left_fp32(chosen, fulls)
        listed = self.candidates()
        self.result.candidates = len(listed) + 1
        if chosen.passed:
            return  # the cheapest mix of all passes; every other one keeps more
        first: Evaluation | None = None
        ties = 0
        for relative, kept in listed:
            if first is not None:
                if ties >= self._max_ties() or relative > first.modelled_cost * (1 + TIE):
                    break
                if kept >= frozenset(first.kept):
                    continue  # the passing mix with more kept: modelled slower, not a different choice
                ties += 1
            evaluation = self.evaluate(kept, self.method)
            if evaluation.passed and first is None:
                first = evaluation

    def _max_ties(self) -> int:
        """Near ties are worth evaluating only where measured speed can order them (a variant timed here)."""
        return MAX_TIES if self.kind.speed == "timed" else 0

    def _drop_layers_left_fp32(self, full: Evaluation, fulls: list[Evaluation]) -> None:
        """INT8: layers the quantizer left in FP32 in the fully lowered graph are no decision (keeping
        them changes nothing); they are costed as FP32 and not searched."""
        if self.kind.precision != "int8" or full.path is None:
            return
        import onnx

        lowered = set(lowered_nodes(onnx.load(full.path), GROUP_OP_TYPES))
        left = {g.name for g in self.groups if g.name not in lowered}
        if not left or len(left) == len(self.groups):
            return
        self.groups[:] = [g for g in self.groups if g.name not in left]
        self.cost.always_kept = self.cost.always_kept | left
        for evaluation in fulls:
            evaluation.modelled_cost = self.cost.relative(())
        log.info("tune %s: %d layer(s) the quantizer leaves in FP32 anyway are not searched: %s", self.variant.name,
                 len(left), ", ".join(sorted(left)))

    def _choose(self) -> None:
        """The cheapest passing mix by the model; a near tie is reordered by measured speed only when
        the measurement differs by more than SPEED_NOISE. Without a passing mix: the closest miss."""
        searched = [e for e in self.result.evaluations if e.phase == "search"]
        order = {g.name: i for i, g in enumerate(self.groups)}
        methods = {m: i for i, m in enumerate(self.methods)}

        def modelled(e: Evaluation) -> tuple[Any, ...]:
            return (round(e.modelled_cost, 9), len(e.kept), [order[n] for n in e.kept],
                    methods.get(e.calibration_method, 0))

        passing = sorted((e for e in searched if e.passed), key=modelled)
        if not passing:
            self.result.best = min(searched, key=lambda e: (e.harm, e.modelled_cost)) if searched else None
            return
        best = passing[0]
        ties = [e for e in passing[1:] if e.modelled_cost <= best.modelled_cost * (1 + TIE)]
        if ties and self._speed(best) is not None:
            for tie in ties:
                speed = self._speed(tie)
                if speed is not None and best.speed is not None and speed > best.speed * (1 + SPEED_NOISE):
                    best = tie
        self._speed(best)
        self.result.best = best
        self.result.best_report = self._report_of(best, self.tuning)

    def _confirm(self) -> None:
        """The chosen candidate file itself, validated on the confirmation set (cached beside it)."""
        best = self.result.best
        assert best is not None and best.path is not None
        record = Path(best.path).with_name(f"confirmation-{self._reference_keys['confirm'][:20]}.json")
        if record.is_file():
            stored = json.loads(record.read_text(encoding="utf-8"))
            stored["harm"] = math.inf if stored.get("harm") is None else stored["harm"]
            confirmation = Evaluation(**{**stored, "phase": "confirm", "cached": True})
        else:
            started = time.perf_counter()
            report = validate_candidate(Path(best.path), self.confirming, spec=self.spec, judgement=self.judgement,
                                        name=f"{self.variant.name} keeping {len(best.kept)} (confirmation)")
            self._reports[f"confirm:{best.path}"] = report
            confirmation = Evaluation(list(best.kept), best.calibration_method, report.outcome, harm_of(report),
                                      report.verdict, best.modelled_cost, best.speed, "confirm",
                                      seconds=round(time.perf_counter() - started, 2), path=best.path)
            atomic_write_text(record, json.dumps(_finite({k: v for k, v in asdict(confirmation).items()
                                                          if k not in ("phase", "cached")}), indent=2) + "\n")
        confirmation.speed = best.speed
        self.result.evaluations.append(confirmation)
        if self.on_evaluation is not None:
            self.on_evaluation(confirmation, len(self.result.evaluations), self.max_evaluations)
        self.result.confirmation = confirmation
        self.result.confirmation_report = self._report_of(confirmation, self.confirming)

    def _report_of(self, evaluation: Evaluation, reference: ReferenceSet) -> VariantReport | None:
        """The validation report of an evaluation: this search's, or made again for one from the cache."""
        report = self._reports.get(f"{evaluation.phase}:{evaluation.path}")
        if report is None and evaluation.path is not None and Path(evaluation.path).is_file():
            report = validate_candidate(Path(evaluation.path), reference, spec=self.spec, judgement=self.judgement,
                                        name=f"{self.variant.name} keeping {len(evaluation.kept)}")
        return report

    def _reason(self) -> str:
        result = self.result
        if result.passed:
            return (f"{describe(result.best)}; confirmed on data it was not chosen on: "  # type: ignore[arg-type]
                    f"{result.confirmation.outcome}")  # type: ignore[union-attr]
        if not result.answer_is_fp32:
            assert result.confirmation is not None or result.stopped
            if result.confirmation is None:
                return f"chosen {describe(result.best)}, not confirmed: {result.stopped}"  # type: ignore[arg-type]
            return (f"chosen on the tuning half: {describe(result.best)}; not confirmed on the other half: "  # type: ignore[arg-type]
                    f"{result.confirmation.verdict}")
        full = self.cost.relative(())
        if result.candidates == 0:
            return (f"FP32: no mix of {self.variant.name} is modelled faster than FP32 on "
                    f"{self.cost.target} (fully lowered: {full:.2f}x FP32's modelled cost)")
        closest = f"; closest: {describe(result.best)}" if result.best is not None else ""
        bound = f" ({result.stopped})" if result.stopped else ""
        return (f"FP32: no mix of {self.variant.name} modelled faster than FP32 passes within the "
                f"search's bound{bound}{closest}")


def throughput_ratio(baseline: Any, candidate: Path, feed: dict[str, np.ndarray],
                     seconds: float = TIMING_SECONDS) -> float:
    """Baseline time / candidate time on ``feed``: medians of alternating runs, one ONNX Runtime thread each
    (``baseline`` is an open runner, reused across candidates)."""
    low = OnnxRuntimeRunner(candidate, intra_op_threads=1, inter_op_threads=1)
    try:
        for runner in (baseline, low):
            runner.run(feed)  # warm-up
        baseline_times: list[float] = []
        low_times: list[float] = []
        spent = time.perf_counter()
        while len(low_times) < 5 or (time.perf_counter() - spent < seconds and len(low_times) < 200):
            for runner, times in ((baseline, baseline_times), (low, low_times)):
                began = time.perf_counter()
                runner.run(feed)
                times.append(time.perf_counter() - began)
    finally:
        low.close()
    return statistics.median(baseline_times) / statistics.median(low_times)


class _BudgetSpent(Exception):
    pass


def write_tuned(result: TuneResult, variant: VariantSpec, output: Path) -> Path:
    """The confirmed answer at ``output`` with its sidecar, which records the search."""
    if not result.passed or result.best is None or result.best.path is None:
        raise BadInputError("tune: no confirmed passing candidate to write")
    artifact = read_artifact(Path(result.best.path))
    import onnx

    model = onnx.load(str(artifact.path))
    sidecar = artifact.sidecar.model_copy(deep=True)
    sidecar.steps.append(StepRecord(name="tune", tool="hepdeploy.tune", parameters=_finite({
        "kept_high_precision": result.best.kept, "calibration_method": result.best.calibration_method,
        "groups": len(result.groups), "target": result.target, "cost_model": result.cost_source,
        "modelled_cost": result.best.modelled_cost, "speed": result.best.speed, "split": result.split,
        "tuning_verdict": result.best.verdict,
        "confirmation_verdict": result.confirmation.verdict if result.confirmation else None,
        "evaluations": [{"kept": e.kept, "calibration_method": e.calibration_method, "outcome": e.outcome,
                         "harm": e.harm, "modelled_cost": e.modelled_cost, "phase": e.phase}
                        for e in result.evaluations],
        "spec_fragment": result.spec_fragment(variant),
    })))
    return write_artifact(model, Path(output), sidecar).path


def write_tune_report(result: TuneResult, variant: VariantSpec, folder: Path) -> list[Path]:
    """``tune.json``, the spec fragment (``tune.yaml``) and the cost-versus-harm plot with its Pareto front."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_text(folder / "tune.json", json.dumps(result.to_dict(), indent=2, default=str) + "\n"),
               atomic_write_text(folder / "tune.yaml", yaml.safe_dump(result.spec_fragment(variant), sort_keys=False))]
    written.append(plot_pareto(result, folder / "pareto.png"))
    return written


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both speed (higher) and harm (lower)."""
    front = []
    for i, (speed, harm) in enumerate(points):
        if not any((s >= speed and h <= harm) and (s > speed or h < harm) for s, h in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(result: TuneResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [e for e in result.evaluations if math.isfinite(e.harm) and e.phase == "search"]
    points = [(1.0 / e.modelled_cost if e.modelled_cost > 0 else 0.0, e.harm) for e in shown]
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    colours = {"PASS": "tab:green", "FAIL": "tab:red", "UNDECIDED": "tab:orange"}
    for outcome, colour in colours.items():
        xs = [p[0] for p, e in zip(points, shown) if e.outcome == outcome]
        ys = [p[1] for p, e in zip(points, shown) if e.outcome == outcome]
        if xs:
            axis.scatter(xs, ys, c=colour, label=outcome, s=28, zorder=3)
    front = pareto_front(points)
    if front:
        axis.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=1, label="Pareto front")
    if result.best is not None and math.isfinite(result.best.harm) and result.best.modelled_cost > 0:
        label = f"chosen (kept {len(result.best.kept)}; confirmation: {result.outcome})"
        axis.scatter([1.0 / result.best.modelled_cost], [result.best.harm], s=140, facecolors="none",
                     edgecolors="k", label=label, zorder=4)
    axis.axhline(1.0, color="grey", lw=0.8, ls=":")
    axis.set_xlabel(f"modelled speed-up over FP32 ({result.target} cost table)")
    axis.set_ylabel("worst use of the allowance (1 = at the allowance)")
    axis.set_title(f"tune {result.variant}: {len(shown)} mixes judged on the tuning half")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)
    return path


def tune_variant(fp32_path: Path, variant: VariantSpec, data: TuneData, output: Path, report_dir: Path, *,
                 spec: ModelSpec | None, settings: TuneSettings | None = None) -> TuneResult:
    """Search (cache in ``report_dir/cache``), write the report, and the confirmed answer to ``output``.

    An interrupted search writes its report (the points so far) but not ``output``."""
    tuner = Tuner(fp32_path, variant, data, spec=spec, work_dir=report_dir / "cache", settings=settings)
    result = tuner.run()
    write_tune_report(result, variant, report_dir)
    if result.passed and not (result.stopped or "").startswith("interrupted"):
        write_tuned(result, variant, output)
    return result


def describe(evaluation: Evaluation) -> str:
    """One line: what was kept, the calibration, the outcome, the harm, the modelled cost and the speed."""
    kept = ", ".join(evaluation.kept[:4]) + (f" (+{len(evaluation.kept) - 4})" if len(evaluation.kept) > 4 else "")
    method = f" ({evaluation.calibration_method} calibration)" if evaluation.calibration_method else ""
    speed = f", measured {evaluation.speed:.2f}x fp32" if evaluation.speed is not None else ""
    harm = f"{evaluation.harm:.2f}" if math.isfinite(evaluation.harm) else "inf"
    return (f"keep [{kept or 'nothing'}]{method}: {evaluation.outcome}, worst use of an allowance {harm}, "
            f"modelled cost {evaluation.modelled_cost:.2f}x fp32{speed}{' (cached)' if evaluation.cached else ''}")
