"""Throughput and latency of each optimized variant on this CPU, next to the source framework.

For each network: export it from the zoo (trained weights from the zoo cache when there
are some, seeded ones otherwise: speed does not depend on the values), convert it, make
the fp32 / fp16 / int8-trt / int8-cpu variants with calibration data from the zoo's
generator, then time, in one process and one after another on the same input batch,

* the source model in its framework (PyTorch eager under ``torch.inference_mode`` or a
  ``tf.function`` over the Keras model),
* each variant in ONNX Runtime's CPU provider (all graph optimisations on).

Runners are timed round-robin (one call each per round), so load from other processes
hits them alike. Every runner gets the same thread count (``--threads``, default: the core count):
``torch.set_num_threads``, TensorFlow's intra-op pool, ORT ``intra_op_num_threads``
(inter-op 1). events/s = batch size / mean latency; p50/p99 are per-batch latencies.
The max |difference| to the FP32 ONNX output on the same batch is printed as a sanity check.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/variants.py --out benchmarks/results/variants.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# network -> (batch size, its dim sizes other than batch); the batches of the issue.
CASES: dict[str, dict[str, Any]] = {
    "facile": {"batch": 16000},
    "jet_mlp": {"batch": 1024},
    "particlenet": {"batch": 64},  # 50 PF candidates (+ SVs) per jet, as the zoo generates them
    "resnet50": {"batch": 8},
}
VARIANTS = ("fp32", "fp16", "int8-trt", "int8-cpu")


def time_interleaved(runs: dict[str, Callable[[], Any]], warmup: int, min_runs: int, min_seconds: float) -> dict[str, list[float]]:
    """Per-call latencies (s) of every runner, timed round-robin (one call each per round) so
    that load from other processes on a shared machine hits all runners alike: ``warmup``
    untimed calls each, then rounds until each has ``min_runs`` calls and ``min_seconds`` passed
    per runner on average."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    latencies: dict[str, list[float]] = {name: [] for name in runs}
    start = time.perf_counter()
    while (min(len(v) for v in latencies.values()) < min_runs
           or time.perf_counter() - start < min_seconds * len(runs)):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            latencies[name].append(time.perf_counter() - t0)
    return latencies


def summarize(latencies: list[float], batch: int) -> dict[str, float]:
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    mean = statistics.fmean(latencies)
    return {
        "runs": len(latencies),
        "events_per_s": batch / mean,
        "p50_ms": 1e3 * pct(0.50),
        "p99_ms": 1e3 * pct(0.99),
        "mean_ms": 1e3 * mean,
    }


def source_runner(net: Any, flavour: str, source_path: Path, inputs: dict[str, np.ndarray], threads: int) -> tuple[str, Callable[[], Any]]:
    names = [t.name for t in net.inputs]
    if flavour == "torch":
        import torch

        torch.set_num_threads(threads)
        model = net.load(flavour, source_path)
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in names]

        def run_torch() -> Any:
            with torch.inference_mode():
                return model(*tensors)

        return f"torch {torch.__version__}", run_torch
    import tensorflow as tf

    model = net.load(flavour, source_path)
    arguments = [tf.constant(inputs[n]) for n in names]
    call = tf.function(lambda *x: model(list(x) if len(x) > 1 else x[0], training=False), reduce_retracing=True)

    def run_keras() -> Any:
        return call(*arguments)

    return f"tensorflow {tf.__version__}", run_keras


def ort_runner(path: Path, inputs: dict[str, np.ndarray], threads: int) -> tuple[Any, Callable[[], Any]]:
    from hepdeploy.backend.onnxrt import create_session

    session = create_session(path, intra_op_threads=threads, inter_op_threads=1)
    feeds = {i.name: inputs[i.name] for i in session.get_inputs()}
    return session, lambda: session.run(None, feeds)


def benchmark_network(name: str, work: Path, threads: int, args: argparse.Namespace, log: logging.Logger) -> dict[str, Any]:
    from hepdeploy.convert import convert_from_spec
    from hepdeploy.model_zoo import export_network, get_network
    from hepdeploy.optimize import optimize_artifact

    net = get_network(name)
    flavour = net.default_flavour
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    export = export_network(name, folder, train=False, budget="reduced", cache_dir=args.cache)
    onnx_path = folder / f"{name}.onnx"
    if not onnx_path.is_file():
        convert_from_spec(export.spec, onnx_path)
    paths = {}
    for variant in VARIANTS:
        out = folder / f"{name}.{variant}.onnx"
        if not out.is_file():
            t0 = time.perf_counter()
            optimize_artifact(onnx_path, variant, out, spec=export.spec,
                              samples=min(args.calibration_samples, export.spec.data.calibration_samples))
            log.info("%s %s made in %.1f s", name, variant, time.perf_counter() - t0)
        paths[variant] = out

    batch = CASES[name]["batch"]
    inputs = net.generate(batch, seed=123).inputs
    inputs = {t.name: np.ascontiguousarray(inputs[t.name]).astype(t.dtype) for t in net.inputs}
    label, source_run = source_runner(net, flavour, export.source_path, inputs, threads)
    runs: dict[str, Callable[[], Any]] = {f"source ({label})": source_run}
    sessions = {}
    for variant in VARIANTS:
        sessions[variant], runs[f"ORT {variant}"] = ort_runner(paths[variant], inputs, threads)
    reference = runs["ORT fp32"]()[0]
    differences = {f"ORT {v}": float(np.abs(runs[f"ORT {v}"]()[0] - reference).max()) for v in VARIANTS}
    latencies = time_interleaved(runs, args.warmup, args.runs, args.seconds)
    rows: list[dict[str, Any]] = []
    for runner, values in latencies.items():
        row = {"runner": runner, **summarize(values, batch)}
        if runner in differences:
            row["max_abs_diff_vs_fp32"] = differences[runner]
        rows.append(row)
    fp32 = next(r for r in rows if r["runner"] == "ORT fp32")["events_per_s"]
    for row in rows:
        row["speedup_vs_ort_fp32"] = row["events_per_s"] / fp32
    return {"network": name, "batch": batch, "flavour": flavour, "trained_weights": export.trained,
            "input_shapes": {k: list(v.shape) for k, v in inputs.items()}, "rows": rows}


def print_table(results: list[dict[str, Any]]) -> None:
    header = f"{'network':<12} {'batch':>6} {'runner':<28} {'events/s':>12} {'p50 ms':>9} {'p99 ms':>9} {'x ORT fp32':>10} {'max|d| vs fp32':>15}"
    print(header)
    print("-" * len(header))
    for result in results:
        for row in result["rows"]:
            diff = row.get("max_abs_diff_vs_fp32")
            print(f"{result['network']:<12} {result['batch']:>6} {row['runner']:<28} {row['events_per_s']:>12,.0f} "
                  f"{row['p50_ms']:>9.2f} {row['p99_ms']:>9.2f} {row['speedup_vs_ort_fp32']:>10.2f} "
                  f"{'' if diff is None else f'{diff:.3g}':>15}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20, help="at least this many timed calls")
    parser.add_argument("--seconds", type=float, default=5.0, help="and at least this long")
    parser.add_argument("--calibration-samples", type=int, default=256)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hepdeploy-bench-variants",
                        help="where the exported models and variants are kept (reused when present)")
    parser.add_argument("--cache", type=Path, default=None, help="zoo training cache (trained weights if present)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/variants.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    log = logging.getLogger("benchmarks.variants")

    import onnxruntime

    results = []
    for name in args.networks:
        log.info("== %s", name)
        results.append(benchmark_network(name, args.work, args.threads, args, log))
    print_table(results)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from hepdeploy.fsutil import atomic_write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": cpu, "threads": args.threads, "onnxruntime": onnxruntime.__version__,
        "results": results,
    }, indent=2) + "\n")
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
