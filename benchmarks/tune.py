"""`hepdeploy tune` on the zoo: which INT8 (int8-cpu) variant passes, at what speed on this CPU, at what cost.

Per network (trained zoo weights, the zoo's default reference sets, the zoo spec's int8-cpu options):
- ONNX Runtime's plain quantization: ``quantize_static`` with its defaults (QDQ, per-tensor, every op type
  it knows), no layer kept in FP32;
- hepdeploy's plain int8-cpu (u8 activations, s8 per-channel weights, edge layers in FP32; for ParticleNet
  the zoo's hand-written spec: Conv and Gemm only);
- the tuned int8-cpu (`hepdeploy tune`'s search: chosen on one half of the reference set, confirmed on
  the other half), or FP32 when that is the answer.
Each is validated on the full reference set (verdict PASS / FAIL / UNDECIDED) and timed against the FP32
graph in one process, one ONNX Runtime thread, alternating runs on the spec's typical batch (ratio of
medians). The tuned row also gives the layers kept in FP32, the calibration method, the verdict on the
tuning half, on the confirmation half and on an independent reference set of the same size generated
here with another seed (data neither the search nor its confirmation saw), the evaluations and the
search's wall time.

    .venv/bin/python benchmarks/tune.py --out benchmarks/results [--networks facile,jet_mlp]

Writes ``tune.md``, ``tune.json`` and ``tune.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def ort_plain(fp32: Path, calibration: dict[str, Any], output: Path) -> Path:
    """ONNX Runtime's quantize_static with its defaults, on the simplified FP32 graph."""
    from onnxruntime.quantization import quantize_static

    from hepdeploy.artifacts import read_artifact, write_artifact
    from hepdeploy.data import calibration_feeds
    from hepdeploy.optimize.modelopt_worker import feed_reader

    raw = output.with_name(output.stem + "_raw.onnx")
    inputs = read_artifact(fp32).sidecar.inputs
    quantize_static(str(fp32), str(raw), feed_reader(list(calibration_feeds(calibration, inputs, 64))))
    import onnx

    sidecar = read_artifact(fp32).sidecar.model_copy(deep=True)
    sidecar.variant.name, sidecar.variant.precision = "int8-cpu", "int8"
    return write_artifact(onnx.load(str(raw)), output, sidecar).path


def independent_set(name: str, spec: Any, events: int, seed: int) -> Any:
    """A reference set of ``events`` generated here with ``seed`` (not the zoo's reference seed)."""
    from hepdeploy.model_zoo import get_network
    from hepdeploy.validate.reference import make_reference

    network = get_network(name)
    count = events if network.inputs[0].has_batch_axis else network.reference_samples
    arrays = network.generate(count, seed=seed).arrays()
    return make_reference(spec, arrays, labels=spec.data.labels, spec=spec)


def independent(name: str, spec: Any, candidate: Path, events: int) -> str:
    """The candidate's verdict on a reference set neither the search nor its confirmation saw."""
    from hepdeploy.validate import validate_candidate

    reference = independent_set(name, spec, events, seed=987_654)
    return validate_candidate(candidate, reference, spec=spec, name="independent").outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--networks", default="facile,jet_mlp,deepjet,particlenet,interaction_network")
    args = parser.parse_args()

    from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
    from hepdeploy.convert import convert_from_spec
    from hepdeploy.model_zoo import export_network
    from hepdeploy.optimize import optimize_artifact, resolve_calibration
    from hepdeploy.optimize.modelopt_worker import ModelOptWorker
    from hepdeploy.tune import TuneData, Tuner, TuneSettings, throughput_ratio, timing_feed, write_tune_report
    from hepdeploy.validate import validate_candidate
    from hepdeploy.validate.reference import make_reference

    work = Path(tempfile.mkdtemp(prefix="hepdeploy-tune-bench-"))
    rows: list[dict[str, Any]] = []
    started_all = time.time()
    with ModelOptWorker() as modelopt:
        for name in args.networks.split(","):
            print(f"{name}: preparing", file=sys.stderr)
            export = export_network(name, work / name, budget="full")
            spec = export.spec
            source = convert_from_spec(spec, work / name / f"{name}.onnx").path
            reference = make_reference(spec, export.reference_path, labels=spec.data.labels, spec=spec)
            calibration = resolve_calibration(spec.resolve(spec.data.calibration) or export.reference_path,
                                              spec.inputs, spec)
            fp32 = work / name / f"{name}_fp32.onnx"
            optimize_artifact(source, "fp32", fp32, spec=spec)
            feed = timing_feed(reference, spec.inputs, spec)
            baseline = OnnxRuntimeRunner(fp32, intra_op_threads=1, inter_op_threads=1)
            variant = spec.variant("int8-cpu")

            def judged(path: Path, label: str) -> dict[str, Any]:
                report = validate_candidate(path, reference, spec=spec, name=label)
                return {"verdict": report.outcome, "speed": throughput_ratio(baseline, path, feed, seconds=2.0)}

            ort = ort_plain(fp32, calibration, work / name / f"{name}_ort_int8.onnx")
            plain = work / name / f"{name}_int8_cpu.onnx"
            optimize_artifact(fp32, variant, plain, calibration=calibration, spec=spec)
            print(f"{name}: tuning", file=sys.stderr)
            began = time.time()
            # A graph network's reference set (whole events of hits and edges) has no batch axis to halve:
            # its choice is confirmed on a second set, generated here with another seed.
            second = None if reference.batched else independent_set(name, spec, reference.n_samples, seed=4242)
            tuner = Tuner(source, variant, TuneData(reference, calibration, second), spec=spec,
                          work_dir=work / name / "tune", settings=TuneSettings(modelopt=modelopt))
            result = tuner.run()
            wall = time.time() - began
            write_tune_report(result, variant, args.out / "tune" / name)
            row = {"network": name, "reference_events": reference.n_samples, "groups": len(result.groups),
                   "ort_plain": judged(ort, "ort plain"), "plain": judged(plain, "int8-cpu"),
                   "evaluations": len([e for e in result.evaluations if e.phase == "search"]),
                   "bound": tuner.max_evaluations, "wall_s": wall, "outcome": result.outcome, "reason": result.reason,
                   "hand_spec": bool(variant.quantize_op_types)}
            best = result.best
            if best is not None and best.passed:
                row["tuned"] = {**judged(Path(best.path), "tuned"), "kept": best.kept,
                                "calibration_method": best.calibration_method, "modelled_cost": best.modelled_cost,
                                "tuning": best.outcome,
                                "confirmation": result.confirmation.outcome if result.confirmation else None,
                                "independent": independent(name, spec, Path(best.path), reference.n_samples)}
            else:
                row["tuned"] = {"verdict": "FP32", "speed": None, "kept": [], "tuning": None, "confirmation": None}
            baseline.close()
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    elapsed = time.time() - started_all

    def cell(entry: dict[str, Any]) -> str:
        if entry["verdict"] == "FP32":
            return "FP32 (no mix modelled faster passes)"
        speed = f"{entry['speed']:.2f}x" if entry.get("speed") else "-"
        return f"{entry['verdict']}, {speed}"

    lines = [
        f"Command: `.venv/bin/python benchmarks/tune.py --networks {args.networks}`, {time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {elapsed:.0f} s in all. Verdicts on "
        "the zoo's default reference sets; speed = int8-cpu / fp32 throughput in ONNX Runtime, one thread, "
        "alternating runs in one process on the spec's typical batch.",
        "",
        "| network | ORT plain quantize_static | hepdeploy int8-cpu | tuned int8-cpu (full set) | kept in FP32 | "
        "calibration | tuning half / confirmation half / independent set | evaluations (bound) | tune wall time |",
        "|---|---|---|---|---|---|---|---|---:|",
    ]
    for row in rows:
        plain_label = " (hand spec: Conv, Gemm)" if row["hand_spec"] else ""
        tuned = row["tuned"]
        kept = ", ".join(f"`{k}`" for k in tuned["kept"]) or "none"
        halves = " / ".join(str(tuned.get(k) or "-") for k in ("tuning", "confirmation", "independent"))
        lines.append(f"| {row['network']} | {cell(row['ort_plain'])} | {cell(row['plain'])}{plain_label} | "
                     f"{cell(tuned)} | {kept} of {row['groups']} | {tuned.get('calibration_method') or '-'} | "
                     f"{halves} | {row['evaluations']} ({row['bound']}) | {row['wall_s']:.0f} s |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (args.out / "tune.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    plot(rows, args.out / "tune.png")
    print("\n".join(lines))
    return 0


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"PASS": "tab:green", "FAIL": "tab:red", "UNDECIDED": "tab:orange"}
    figure, axis = plt.subplots(figsize=(7.5, 4))
    width = 0.27
    for k, (key, label) in enumerate((("ort_plain", "ORT plain"), ("plain", "hepdeploy int8-cpu"),
                                      ("tuned", "tuned"))):
        for i, row in enumerate(rows):
            entry = row[key]
            if entry.get("speed"):
                axis.bar(i + (k - 1) * width, entry["speed"], width, color=colours.get(entry["verdict"], "grey"),
                         edgecolor="black", hatch=("", "//", "..")[k], label=label if i == 0 else None)
    axis.axhline(1.0, color="black", lw=0.8)
    axis.set_xticks(range(len(rows)), [row["network"] for row in rows])
    axis.set_ylabel("int8-cpu / fp32 throughput")
    axis.set_title("INT8 on this CPU: green PASS, red FAIL, orange UNDECIDED")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
