"""hepdeploy.tune: the fastest precision mix of a variant that passes the physics budget.

Post-training INT8 (or FP16) of a whole network can break the physics (FACILE's resolution, the
jet MLP's W efficiency) while most of its layers would be harmless in low precision. ``tune``
searches which layers to keep in high precision, judging every candidate with the same paired
intervals and PASS / FAIL / UNDECIDED rule as ``validate`` on the full reference set:

1. **Full variant.** Evaluated first; if it PASSES the search ends after one evaluation.
2. **Sensitivity.** The candidate groups are the graph's compute nodes a quantizer or AutoCast
   lowers (Conv, Gemm, MatMul, LSTM ..., each with the Q/DQ or casts around it). For each group,
   the variant with *only that group kept in high precision* is evaluated (Intel Neural
   Compressor's "basic" fallback): its harm is measured in the state the search moves from (the
   rest low precision, interactions included), and one layer that carries the damage shows as
   the one whose fallback removes it. Each group's share of FP32 run time comes from ONNX
   Runtime's profiler, so its cost is known too.
3. **Search.** Groups are ranked by harm removed per unit of FP32 time kept; the shortest prefix of
   that ranking whose fallback PASSES is found by bisection; then kept groups that prove harmless
   are lowered again one at a time (least useful first) while the candidate still PASSES.
4. **Answer.** The fastest PASSING candidate (never an UNDECIDED one). Speed: int8-cpu candidates
   are timed against FP32 in ONNX Runtime on this CPU (same process, same thread, alternating
   runs, ratio of medians). Without a GPU, fp16 and int8-trt candidates are ranked by a proxy: the
   share of FP32 run time that runs in low precision.

Harm is one number per candidate: the worst check's use of its allowance, from the far end of its
95 % interval (1.0 = at the allowance; a PASS has every check below 1). Evaluations are cached by
content hash (model, variant options, kept groups, calibration and reference data, validation
settings), so a rerun or a build after a tune costs no evaluation. At most ``2 L + 10``
evaluations for L groups by default.
"""
from __future__ import annotations

import hashlib
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
from hepdeploy.backend.onnxrt import OnnxRuntimeRunner, node_time_shares
from hepdeploy.errors import BadInputError, HepDeployError, first_line
from hepdeploy.fsutil import atomic_path, atomic_write_text, file_digest
from hepdeploy.optimize import optimize_artifact
from hepdeploy.optimize.graph import name_unnamed_nodes
from hepdeploy.optimize.int8 import edge_exclusions
from hepdeploy.optimize.modelopt_worker import ModelOptWorker
from hepdeploy.spec import ModelSpec, TensorSpec, VariantSpec
from hepdeploy.validate import validate_candidate
from hepdeploy.validate.reference import ReferenceSet
from hepdeploy.validate.report import VariantReport

log = logging.getLogger(__name__)

TUNABLE_VARIANTS = ("int8-cpu", "int8-trt", "fp16")
# The compute nodes worth a decision: each carries most of its layer's arithmetic and its own Q/DQ or casts.
GROUP_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "Einsum", "Attention")
TIMING_SECONDS = 0.6  # per candidate, alternating with FP32


def timing_feed(reference: ReferenceSet, inputs: list[TensorSpec], spec: ModelSpec | None) -> dict[str, np.ndarray]:
    """The batch speed is measured on, from the reference inputs: the spec's typical batch
    (``dims.batch.opt``, else up to 1024 rows) for a batched model, the model's fixed batch for one
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


@dataclass
class Group:
    """One decision: a compute node kept in high precision or lowered."""

    name: str
    op_type: str
    time_share: float  # of the FP32 model's run time, from ONNX Runtime's profiler
    harm_removed: float | None = None  # full variant's harm minus the harm with only this group kept


@dataclass
class Evaluation:
    """One candidate, validated on the full reference set."""

    kept: list[str]
    outcome: str  # PASS | FAIL | UNDECIDED | ERROR
    harm: float
    verdict: str
    speed: float | None  # int8-cpu: FP32 time / candidate time in ONNX Runtime here
    low_precision_share: float  # share of FP32 run time in low precision (the proxy without a GPU)
    phase: str
    cached: bool = False
    seconds: float = 0.0
    path: str | None = None

    @property
    def passed(self) -> bool:
        return self.outcome == "PASS"

    def rank_speed(self) -> float:
        return self.speed if self.speed is not None else self.low_precision_share


@dataclass
class TuneResult:
    variant: str
    groups: list[Group]
    evaluations: list[Evaluation] = field(default_factory=list)
    best: Evaluation | None = None
    speed_measure: str = ""
    stopped: str | None = None  # why the search ended early (budget, Ctrl-C)
    # The validation report of ``best`` when this search made it (not when it came from the cache).
    best_report: VariantReport | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return self.best is not None and self.best.passed

    def spec_fragment(self, variant: VariantSpec) -> dict[str, Any]:
        """The ``variants:`` entry that reproduces the answer (exact node names, as patterns)."""
        entry = variant.model_dump(exclude_defaults=True)
        kept = [f"^{re.escape(name)}$" for name in (self.best.kept if self.best else [])]
        key = "fp32_nodes" if variant.name == "fp16" else "exclude_nodes"
        entry[key] = [*entry.get(key, []), *kept]
        entry.pop("tune", None)
        return {"variants": [entry]}

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "passed": self.passed, "stopped": self.stopped,
                "speed_measure": self.speed_measure, "groups": [asdict(g) for g in self.groups],
                "best": asdict(self.best) if self.best else None,
                "evaluations": [asdict(e) for e in self.evaluations]}


def harm_of(report: VariantReport) -> float:
    """The worst check's use of its allowance (far end of its 95 % interval; 1.0 = at the allowance)."""
    if report.hard_failures:
        return math.inf
    if report.counts_physics():
        uses = []
        for check in report.physics.checks:
            if check.informational or check.limit is None:
                continue
            estimate = check.change if check.reference is not None else check.candidate
            use = _allowance_use(check.kind, float(check.limit), check.interval or (estimate, estimate))
            if use is not None:
                uses.append(use)
        if uses:
            return max(uses)
    # Numerical budget: the worst error in units of its tolerance.
    return max((c.max_abs_error / (c.atol + c.rtol) if (c.atol + c.rtol) > 0 else math.inf)
               for c in report.numerical) if report.numerical else 0.0


def _allowance_use(kind: str, limit: float, interval: tuple[float | None, float | None]) -> float | None:
    low, high = interval
    if low is None or high is None:
        return None
    if kind == "drop":
        return max(-low, 0.0) / limit if limit > 0 else math.inf
    if kind == "increase":
        return max(high, 0.0) / limit if limit > 0 else math.inf
    if kind == "level":  # e.g. argmax agreement >= 0.95: the budget is the distance from a perfect 1
        return (1.0 - low) / (1.0 - limit) if 0 < limit < 1 else (limit / low if low > 0 else math.inf)
    return max(abs(low), abs(high)) / limit if limit > 0 else math.inf


def candidate_groups(model_path: Path, variant: VariantSpec) -> list[tuple[str, str]]:
    """(name, op type) of the nodes the search decides on, in graph order: not those the variant keeps in
    high precision anyway (its op-type exclusions, and for INT8 the edge layers of ``keep_edges_fp32``)."""
    import onnx

    model = onnx.load(str(model_path))
    wanted = set(GROUP_OP_TYPES)
    if variant.name != "fp16" and variant.quantize_op_types:
        wanted &= set(variant.quantize_op_types)
    excluded = set(variant.exclude_op_types if variant.name != "fp16" else variant.fp32_op_types)
    always_kept = set(edge_exclusions(model, variant)) if variant.name != "fp16" else set()
    return [(node.name, node.op_type) for node in model.graph.node
            if node.op_type in wanted and node.op_type not in excluded and node.name and node.name not in always_kept]


class Tuner:
    """One search; see the module docstring. ``work_dir`` holds the evaluation cache."""

    def __init__(self, fp32_path: Path, variant: VariantSpec, reference: ReferenceSet, *,
                 calibration: dict[str, np.ndarray] | None, spec: ModelSpec | None, work_dir: Path,
                 policy: str | None = None, max_evaluations: int | None = None,
                 modelopt: ModelOptWorker | None = None, on_evaluation: Callable[[Evaluation, int, int], None] | None = None
                 ) -> None:
        if variant.name not in TUNABLE_VARIANTS:
            raise BadInputError(f"tune: variant {variant.name!r} has no precision to tune "
                                f"(use one of {', '.join(TUNABLE_VARIANTS)})")
        self.variant = variant
        self.reference = reference
        self.calibration = calibration
        self.spec = spec
        self.policy = policy
        self.work_dir = Path(work_dir)
        self.modelopt = modelopt
        self.on_evaluation = on_evaluation
        self.fp32_path = self._simplified_fp32(Path(fp32_path))
        names = candidate_groups(self.fp32_path, variant)
        if not names:
            raise BadInputError(f"tune: no {'/'.join(GROUP_OP_TYPES)} node that {variant.name} would lower: nothing "
                                "to keep or lower (its edge layers stay FP32 anyway)")
        fp32_inputs = read_artifact(self.fp32_path).sidecar.inputs
        self.timing_feed = timing_feed(reference, spec.inputs if spec is not None else fp32_inputs, spec)
        shares = node_time_shares(self.fp32_path, self.timing_feed)
        self.groups = [Group(name, op, shares.get(name, 0.0)) for name, op in names]
        self.max_evaluations = max_evaluations or default_max_evaluations(len(self.groups))
        self.result = TuneResult(variant.name, self.groups, speed_measure=(
            "int8-cpu/fp32 throughput in ONNX Runtime on this CPU (1 thread, same process, alternating runs)"
            if variant.name == "int8-cpu" else
            "no GPU here: ranked by the share of FP32 run time in low precision (ONNX Runtime profile)"))
        self._key_base = self._content_key()
        self._fp32_runner: Any = None
        self._seen: dict[frozenset[str], Evaluation] = {}
        self._reports: dict[str, VariantReport] = {}  # candidate path -> its report, for the answer's

    # -- inputs ------------------------------------------------------------------------------
    def _simplified_fp32(self, source: Path) -> Path:
        """The fp32 variant (simplified once, every node named): every candidate starts from it, so the
        names the search decides on are the names the quantizer sees; it is also the speed baseline."""
        import onnx

        self.work_dir.mkdir(parents=True, exist_ok=True)
        raw = self.work_dir / "fp32-simplified.onnx"
        optimize_artifact(source, "fp32", raw, spec=self.spec)
        artifact = read_artifact(raw)
        named = name_unnamed_nodes(onnx.load(str(raw)))
        return write_artifact(named, self.work_dir / "fp32.onnx", artifact.sidecar).path

    def _content_key(self) -> str:
        digest = hashlib.sha256()
        digest.update(file_digest(self.fp32_path, "sha256").encode())
        digest.update(self.variant.model_dump_json(exclude={"tune"}).encode())
        for arrays in (self.calibration or {}, self.reference.inputs):
            for name in sorted(arrays):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(arrays[name]).tobytes())
        for name in sorted(self.reference.outputs):
            digest.update(np.ascontiguousarray(self.reference.outputs[name]).tobytes())
        if self.spec is not None:
            digest.update(self.spec.validation.model_dump_json().encode())
        digest.update(str(self.policy).encode())
        return digest.hexdigest()

    # -- one evaluation ----------------------------------------------------------------------
    def _candidate_spec(self, kept: frozenset[str]) -> VariantSpec:
        patterns = [f"^{re.escape(name)}$" for name in sorted(kept)]
        if self.variant.name == "fp16":
            return self.variant.model_copy(update={"fp32_nodes": [*self.variant.fp32_nodes, *patterns]})
        return self.variant.model_copy(update={"exclude_nodes": [*self.variant.exclude_nodes, *patterns]})

    def evaluate(self, kept: frozenset[str], phase: str) -> Evaluation:
        """Make, validate and time the candidate keeping ``kept`` in high precision (cached)."""
        if kept in self._seen:  # asked again in this search (a bisection point the sensitivity made): free
            return self._seen[kept]
        if len(self.result.evaluations) >= self.max_evaluations:
            raise _BudgetSpent
        key = hashlib.sha256((self._key_base + "\n" + "\n".join(sorted(kept))).encode()).hexdigest()[:20]
        folder = self.work_dir / key
        record = folder / "evaluation.json"
        order = [g.name for g in self.groups]
        kept_list = sorted(kept, key=order.index)
        if record.is_file():
            evaluation = Evaluation(**{**json.loads(record.read_text(encoding="utf-8")), "phase": phase,
                                       "cached": True})
        else:
            evaluation = self._evaluate_fresh(kept, kept_list, folder, phase)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(record, json.dumps({k: v for k, v in asdict(evaluation).items()
                                                  if k not in ("phase", "cached")}, indent=2) + "\n")
        self.result.evaluations.append(evaluation)
        self._seen[kept] = evaluation
        if self.on_evaluation is not None:
            self.on_evaluation(evaluation, len(self.result.evaluations), self.max_evaluations)
        return evaluation

    def _evaluate_fresh(self, kept: frozenset[str], kept_list: list[str], folder: Path, phase: str) -> Evaluation:
        started = time.perf_counter()
        share = sum(g.time_share for g in self.groups if g.name not in kept)
        folder.mkdir(parents=True, exist_ok=True)
        candidate = folder / "candidate.onnx"
        try:
            optimize_artifact(self.fp32_path, self._candidate_spec(kept), candidate, calibration=self.calibration,
                              spec=self.spec, modelopt=self.modelopt)
            report = validate_candidate(candidate, self.reference, spec=self.spec, policy=self.policy,
                                        name=f"{self.variant.name} keeping {len(kept)}")
        except HepDeployError as error:  # a candidate the tools refuse is a point that does not pass
            return Evaluation(kept_list, "ERROR", math.inf, first_line(error), None, share, phase,
                              seconds=round(time.perf_counter() - started, 2))
        speed = self._speed(candidate) if self.variant.name == "int8-cpu" else None
        self._reports[str(candidate)] = report
        return Evaluation(kept_list, report.outcome, harm_of(report), report.verdict, speed, share, phase,
                          seconds=round(time.perf_counter() - started, 2), path=str(candidate))

    def _speed(self, candidate: Path) -> float:
        if self._fp32_runner is None:
            self._fp32_runner = OnnxRuntimeRunner(self.fp32_path, intra_op_threads=1, inter_op_threads=1)
        return throughput_ratio(self._fp32_runner, candidate, self.timing_feed)

    # -- the search ---------------------------------------------------------------------------
    def run(self) -> TuneResult:
        """Search; Ctrl-C or a spent budget end it with the best passing point so far."""
        try:
            self._search()
        except _BudgetSpent:
            self.result.stopped = f"the budget of {self.max_evaluations} evaluations is spent"
        except KeyboardInterrupt:
            self.result.stopped = "interrupted (Ctrl-C)"
        finally:
            if self._fp32_runner is not None:
                self._fp32_runner.close()
        passing = [e for e in self.result.evaluations if e.passed]
        if passing:
            self.result.best = max(passing, key=lambda e: (e.rank_speed(), -len(e.kept)))
            self.result.best_report = self._reports.get(self.result.best.path or "")
        elif self.result.evaluations:
            self.result.best = min(self.result.evaluations, key=lambda e: (e.harm, len(e.kept)))
        return self.result

    def _search(self) -> None:
        full = self.evaluate(frozenset(), "full")
        if full.passed:
            return
        names = [g.name for g in self.groups]
        for group in self.groups:
            single = self.evaluate(frozenset([group.name]), "sensitivity")
            group.harm_removed = full.harm - single.harm if math.isfinite(full.harm) else -single.harm
        ranking = sorted(self.groups, key=lambda g: (-(g.harm_removed or 0.0) / max(g.time_share, 1e-3),
                                                    names.index(g.name)))
        order = [g.name for g in ranking]
        # Every group kept is the FP32 model itself, which passes by definition but is no variant: the
        # bisection looks for the shortest prefix of the ranking below that which PASSES.
        low, high = 0, len(order)
        while high - low > 1:
            middle = (low + high) // 2
            if self.evaluate(frozenset(order[:middle]), "bisection").passed:
                high = middle
            else:
                low = middle
        if high == len(order):
            return  # only keeping every group passes: no mix
        kept = list(order[:high])
        # Re-lower the kept groups that prove harmless, the least useful first.
        for name in sorted(kept, key=lambda n: (next(g for g in self.groups if g.name == n).harm_removed or 0.0)):
            trial = frozenset(n for n in kept if n != name)
            if self.evaluate(trial, "re-lower").passed:
                kept.remove(name)


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
    """The best passing candidate at ``output`` with its sidecar, which records the search."""
    if result.best is None or not result.best.passed or result.best.path is None:
        raise BadInputError("tune: no passing candidate to write")
    artifact = read_artifact(Path(result.best.path))
    import onnx

    model = onnx.load(str(artifact.path))
    sidecar = artifact.sidecar.model_copy(deep=True)
    sidecar.steps.append(StepRecord(name="tune", tool="hepdeploy.tune", parameters={
        "kept_high_precision": result.best.kept, "groups": len(result.groups),
        "evaluations": [{"kept": e.kept, "outcome": e.outcome, "harm": e.harm, "speed": e.speed,
                         "low_precision_share": e.low_precision_share, "phase": e.phase}
                        for e in result.evaluations],
        "speed_measure": result.speed_measure, "spec_fragment": result.spec_fragment(variant),
    }))
    return write_artifact(model, Path(output), sidecar).path


def write_tune_report(result: TuneResult, variant: VariantSpec, folder: Path) -> list[Path]:
    """``tune.json``, the spec fragment (``tune.yaml``) and the speed-versus-harm plot with its Pareto front."""
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

    shown = [e for e in result.evaluations if math.isfinite(e.harm)]
    points = [(e.rank_speed(), e.harm) for e in shown]
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
    if result.best is not None and math.isfinite(result.best.harm):
        axis.scatter([result.best.rank_speed()], [result.best.harm], s=140, facecolors="none", edgecolors="k",
                     label=f"answer (kept {len(result.best.kept)})", zorder=4)
    axis.axhline(1.0, color="grey", lw=0.8, ls=":")
    axis.set_xlabel("int8-cpu / fp32 throughput" if result.variant == "int8-cpu"
                    else "share of FP32 time in low precision (proxy)")
    axis.set_ylabel("worst use of the allowance (1 = at the allowance)")
    axis.set_title(f"tune {result.variant}: {len(result.evaluations)} evaluations")
    axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)
    return path



def tune_variant(fp32_path: Path, variant: VariantSpec, reference: ReferenceSet, output: Path, report_dir: Path, *,
                 calibration: dict[str, np.ndarray] | None, spec: ModelSpec | None, policy: str | None = None,
                 max_evaluations: int | None = None, modelopt: ModelOptWorker | None = None,
                 on_evaluation: Callable[[Evaluation, int, int], None] | None = None) -> TuneResult:
    """Search (cache in ``report_dir/cache``), write the report, and the answer to ``output`` when one PASSES.

    An interrupted search writes its report (the points so far) but not ``output``."""
    tuner = Tuner(fp32_path, variant, reference, calibration=calibration, spec=spec, work_dir=report_dir / "cache",
                  policy=policy, max_evaluations=max_evaluations, modelopt=modelopt, on_evaluation=on_evaluation)
    result = tuner.run()
    write_tune_report(result, variant, report_dir)
    if result.passed and not (result.stopped or "").startswith("interrupted"):
        write_tuned(result, variant, output)
    return result


def describe(evaluation: Evaluation) -> str:
    """One line: what was kept, the outcome, the harm and the speed."""
    kept = ", ".join(evaluation.kept[:4]) + (f" (+{len(evaluation.kept) - 4})" if len(evaluation.kept) > 4 else "")
    speed = f"{evaluation.speed:.2f}x fp32" if evaluation.speed is not None else \
        f"{evaluation.low_precision_share:.0%} of fp32 time low precision"
    return (f"keep [{kept or 'nothing'}]: {evaluation.outcome}, worst use of an allowance {evaluation.harm:.2f}, "
            f"{speed}{' (cached)' if evaluation.cached else ''}")
