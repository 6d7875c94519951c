"""What ``hepdeploy profile`` writes: ``serving.yaml`` (a spec fragment, a ``# why`` comment on every number),
``serving-report.json``, ``serving.md`` and the plots (t(b), predicted against measured latency, the
multiplicity histograms with their cuts, clients against p99)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from hepdeploy.fsutil import atomic_path, atomic_write_text, check_output_dir
from hepdeploy.serving.batching import BatchingChoice
from hepdeploy.serving.confirm import ClientsPerInstance, Confirmation, KedaThreshold
from hepdeploy.serving.latency import LatencyCurve
from hepdeploy.serving.revalidate import ShapeCheck
from hepdeploy.serving.shapes import DimPlan, ShapeProfile
from hepdeploy.spec import DynamicBatching, InstanceGroup, TritonSpec

PLOTS = {"tb": "serving-tb.png", "latency": "serving-latency.png", "dims": "serving-dims.png",
         "clients": "serving-clients.png"}


@dataclass
class ProfileReport:
    """Everything the profile found, and why."""

    model: str
    data: str
    budget_s: float
    rate_per_s: float
    rows_per_request: int
    dims: dict[str, DimPlan]
    profiles: list[ShapeProfile]
    multiplicities: dict[str, np.ndarray]
    curve: LatencyCurve
    choice: BatchingChoice
    instances: int
    problems: list[str]
    why: dict[str, str]
    confirmation: Confirmation | None = None
    clients: ClientsPerInstance | None = None
    keda: KedaThreshold | None = None
    shape_checks: list[ShapeCheck] = field(default_factory=list)  # the model at the config's batch sizes
    notes: list[str] = field(default_factory=list)
    batch_dims: list[str] = field(default_factory=list)  # the batch axis' names in the spec
    search: dict[str, int] = field(default_factory=dict)  # choose_batching's bounds: max_rows_cap, instances_max, seed
    files: list[Path] = field(default_factory=list)

    def triton_spec(self, base: TritonSpec) -> TritonSpec:
        """``base`` with the chosen batching and instances."""
        kind = base.instance_group[0].kind if base.instance_group else "KIND_CPU"
        return base.model_copy(update={
            "max_batch_size": self.choice.max_batch_size,
            "dynamic_batching": DynamicBatching(preferred_batch_size=list(self.choice.preferred_batch_size),
                                                max_queue_delay_microseconds=self.choice.max_queue_delay_us),
            "instance_group": [InstanceGroup(count=self.instances, kind=kind)]})


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def serving_yaml(report: ProfileReport) -> str:
    """The spec fragment: ``triton:`` batching and instances, ``dims:`` from the data, each with its why."""
    choice, why = report.choice, report.why
    lines = [f"# hepdeploy profile: {report.model} on {Path(report.data).name}: p99 budget "
             f"{report.budget_s * 1e3:g} ms at {report.rate_per_s:g} events/s of {report.rows_per_request} rows",
             f"# t(b): {_one_line(report.curve.where)}",
             "triton:",
             f"  max_batch_size: {choice.max_batch_size}  # why: {_one_line(why.get('max_batch_size', ''))}",
             "  dynamic_batching:",
             f"    preferred_batch_size: {list(choice.preferred_batch_size)}  # why: "
             f"{_one_line(why.get('preferred_batch_size', ''))}",
             f"    max_queue_delay_microseconds: {choice.max_queue_delay_us}  # why: "
             f"{_one_line(why.get('max_queue_delay_microseconds', ''))}",
             "  instance_group:",
             f"  - count: {report.instances}  # why: {_one_line(why.get('instances', ''))}; "
             f"{_one_line(why.get('instances_allowed', ''))}",
             "    kind: KIND_CPU  # why: t(b) was measured on this machine's CPU"]
    dims = _batch_dims(report)
    if dims or report.dims:
        lines.append("dims:")
    for name, text in dims:
        lines.append(f"  {name}: {{min: 1, opt: {report.rows_per_request}, max: {choice.max_batch_size}}}  # why: {text}")
    for name, plan in report.dims.items():
        lines.append(f"  {name}: {{min: {plan.min}, opt: {plan.opt}, max: {plan.max}}}  # why: {_one_line(plan.why)}")
    return "\n".join(lines) + "\n"


def _batch_dims(report: ProfileReport) -> list[tuple[str, str]]:
    """The batch axis' named dim: a TensorRT profile up to max_batch_size, opt at one event."""
    names = sorted({name for name in report.batch_dims})
    text = (f"the batch axis: one event ({report.rows_per_request} rows) is the typical request, "
            f"max_batch_size ({report.choice.max_batch_size}) the largest batch the batcher forms")
    return [(name, text) for name in names]


def _plain(value: Any) -> Any:
    """JSON-able: dataclasses, spec models, arrays and numpy scalars; NaN as None."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if hasattr(value, "model_dump"):  # a spec model (DimRange)
        return _plain(value.model_dump(exclude_none=True))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def report_json(report: ProfileReport) -> dict[str, Any]:
    counts = {dim: {"events": int(len(v)), "max": int(np.max(v)) if len(v) else 0} for dim, v in
              report.multiplicities.items()}
    return _plain({
        "model": report.model, "data": report.data, "budget_s": report.budget_s, "rate_per_s": report.rate_per_s,
        "rows_per_request": report.rows_per_request, "dims": report.dims, "multiplicities": counts,
        "profiles": report.profiles, "t_of_b": report.curve.as_dict(), "search": report.search, "choice": report.choice,
        "instances": report.instances, "problems": report.problems, "why": report.why,
        "confirmation": report.confirmation.to_dict() if report.confirmation else None,
        "clients_per_instance": report.clients.to_dict() if report.clients else None,
        "keda": report.keda, "shape_checks": report.shape_checks, "notes": report.notes})


def serving_markdown(report: ProfileReport) -> str:
    choice = report.choice
    rows = [f"# Serving configuration for {report.model}", "",
            f"Data: `{report.data}`; p99 budget {report.budget_s * 1e3:g} ms per request of "
            f"{report.rows_per_request} rows at {report.rate_per_s:g} events/s.", "",
            "| number | value | why |", "|---|---|---|",
            f"| max_batch_size | {choice.max_batch_size} | {_one_line(report.why.get('max_batch_size', ''))} |",
            f"| preferred_batch_size | {list(choice.preferred_batch_size)} | "
            f"{_one_line(report.why.get('preferred_batch_size', ''))} |",
            f"| max_queue_delay_microseconds | {choice.max_queue_delay_us} | "
            f"{_one_line(report.why.get('max_queue_delay_microseconds', ''))} |",
            f"| instances | {report.instances} | {_one_line(report.why.get('instances', ''))} |",
            f"| rate | {report.rate_per_s:g} events/s | {_one_line(report.why.get('rate', ''))} |"]
    rows += [f"| dim {name} | {plan.min} / {plan.opt} / {plan.max} | {_one_line(plan.why)} |"
             for name, plan in report.dims.items()]
    rows += ["", f"t(b): {report.curve.where}; {_one_line(report.curve.why)}", ""]
    if report.shape_checks:
        rows += ["Validated at the config's batch sizes (against its own outputs at the validated chunk size): "
                 + "; ".join(check.line() for check in report.shape_checks), ""]
    rows += _confirmation_lines(report)
    if report.problems:
        rows += ["", "**Not publishable:**", *(f"- {p}" for p in report.problems)]
    if report.notes:
        rows += ["", *(f"- {n}" for n in report.notes)]
    rows += ["", *(f"![{key}]({name})" for key, name in PLOTS.items() if (key != "dims" or report.dims)
                   and (key != "clients" or report.clients) and (key != "latency" or report.confirmation))]
    return "\n".join(rows) + "\n"


def _confirmation_lines(report: ProfileReport) -> list[str]:
    lines = []
    c = report.confirmation
    if c is not None:
        lines += ["| latency | predicted | measured |", "|---|---|---|",
                  f"| p50 | {c.predicted_p50_s * 1e3:.2f} ms | {c.measured_p50_s * 1e3:.2f} ms |",
                  f"| p99 | {c.predicted_p99_s * 1e3:.2f} ms | {c.measured_p99_s * 1e3:.2f} ms |", "",
                  f"Open-loop Poisson load, {c.requests} requests measured; measured/predicted p99 = "
                  f"{c.p99_ratio:.2f}; p99 {'inside' if c.measured_p99_s <= report.budget_s else 'OUTSIDE'} the "
                  "budget.", ""]
    if report.clients is not None:
        k = report.clients
        lines.append(f"Clients one instance carries within {k.budget_s * 1e3:g} ms (each one event of "
                     f"{k.rows_per_event} rows): **{k.point}** ({k.low}..{k.high}, {k.interval}; per repeat "
                     f"{k.per_repeat}).")
    if report.keda is not None:
        lines += ["", f"SuperSONIC/KEDA threshold: {report.keda.threshold} ({_one_line(report.keda.why)}); "
                      f"`hepdeploy triton supersonic REPO -o values.yaml --server-load-threshold "
                      f"{report.keda.threshold} ...`"]
    return lines


def write_profile_outputs(report: ProfileReport, out_dir: Path) -> list[Path]:
    """serving.yaml (unless the choice does not fit), serving-report.json, serving.md and the plots."""
    out_dir = check_output_dir(Path(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if not report.problems:
        atomic_write_text(out_dir / "serving.yaml", serving_yaml(report))
        written.append(out_dir / "serving.yaml")
    atomic_write_text(out_dir / "serving-report.json", json.dumps(report_json(report), indent=2) + "\n")
    atomic_write_text(out_dir / "serving.md", serving_markdown(report))
    written += [out_dir / "serving-report.json", out_dir / "serving.md"]
    return written + write_plots(report, out_dir)


def write_plots(report: ProfileReport, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = {"tb": _plot_tb, "latency": _plot_latency, "dims": _plot_dims, "clients": _plot_clients}
    # A plot whose evidence was not gathered (no live server, no dynamic dim, sonic off) is not drawn.
    gathered = {"tb": True, "latency": report.confirmation is not None, "dims": bool(report.dims),
                "clients": report.clients is not None}
    written = []
    for key, draw in drawn.items():
        if not gathered[key]:
            continue
        figure = draw(plt, report)
        figure.tight_layout()
        with atomic_path(out_dir / PLOTS[key], suffix=".png.tmp") as tmp:
            figure.savefig(tmp, format="png", dpi=80)
        plt.close(figure)
        written.append(out_dir / PLOTS[key])
    return written


def _plot_tb(plt: Any, report: ProfileReport) -> Any:
    points = report.curve.points
    figure, axis = plt.subplots(figsize=(5.6, 3.8))
    batches = [p.batch for p in points]
    axis.plot(batches, [p.p50_s * 1e3 for p in points], marker="o", label="p50")
    axis.plot(batches, [p.p99_s * 1e3 for p in points], marker="s", label="p99")
    axis.axvline(report.choice.max_batch_size, color="gray", linestyle="--", label="max_batch_size")
    return _labelled(figure, axis, "batch (rows)", "t(b) ms", f"{report.model}: t(b)")


def _labelled(figure: Any, axis: Any, xlabel: str, ylabel: str, title: str) -> Any:
    """A line plot's axes labelled, gridded and with its legend; returns the figure."""
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=10)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    return figure


def _plot_latency(plt: Any, report: ProfileReport) -> Any:
    c = cast(Confirmation, report.confirmation)
    figure, axis = plt.subplots(figsize=(4.8, 3.6))
    positions = np.arange(2)
    axis.bar(positions - 0.2, [c.predicted_p50_s * 1e3, c.predicted_p99_s * 1e3], 0.4, label="predicted")
    axis.bar(positions + 0.2, [c.measured_p50_s * 1e3, c.measured_p99_s * 1e3], 0.4, label="measured")
    axis.axhline(report.budget_s * 1e3, color="red", linestyle="--", label="budget")
    axis.set_xticks(positions, ["p50", "p99"])
    return _labelled(figure, axis, "", "request latency ms", f"{report.model} at {report.rate_per_s:g} events/s")


def _plot_dims(plt: Any, report: ProfileReport) -> Any:
    names = list(report.dims)
    figure, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        counts, plan = report.multiplicities[name], report.dims[name]
        axis.hist(counts, bins=min(60, max(5, int(np.ptp(counts)) + 1)) if len(counts) else 5, color="C0")
        for value, label, style in ((plan.min, "min", ":"), (plan.opt, "opt", "-."), (plan.max, "max", "--")):
            axis.axvline(value, color="k", linestyle=style, label=f"{label} {value}")
        _labelled(figure, axis, name, "events", f"{name}: {plan.coverage:.2%} fit")
    return figure


def _plot_clients(plt: Any, report: ProfileReport) -> Any:
    k = cast(ClientsPerInstance, report.clients)
    figure, axis = plt.subplots(figsize=(5.6, 3.8))
    for index, levels in enumerate(k.levels):
        axis.plot([lv.clients for lv in levels], [lv.latency_ms_p99 for lv in levels], marker="o",
                  label=f"repeat {index + 1}", alpha=0.8)
    axis.axhline(k.budget_s * 1e3, color="red", linestyle="--", label="budget")
    return _labelled(figure, axis, "simultaneous clients (one event each)", "event p99 ms",
                     f"{k.model}: {k.point} clients ({k.low}..{k.high}) within the budget")
