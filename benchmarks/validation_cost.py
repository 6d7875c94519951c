"""What physics verdicts cost and how well they resolve: the zoo networks' variants validated on
independent reference sets of the default size.

For every network: the trained zoo model (cached), its fp16/int8-cpu/int8-trt variants, and
``--sets`` independent reference sets (seeded generator draws) of ``--size`` events (default: the
zoo's own reference size). Per set and variant: the verdict, the validation time with the bootstrap
and without it (``replicas: 0``), and the interval half-width of every default metric next to its
allowance (inclusive and the worst bin). Printed as Markdown tables; the raw numbers go to JSON.

    .venv/bin/python benchmarks/validation_cost.py --out benchmarks/results/validation_cost.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

DEFAULT_NETWORKS = ("facile", "jet_mlp", "particlenet", "deepjet", "interaction_network")
VARIANTS = ("fp16", "int8-cpu", "int8-trt")
SET_SEED = 50_000  # independent of the zoo's own training/reference/calibration seeds


def _allowances(spec: Any) -> dict[str, float]:
    physics = spec.validation.physics
    return {"auc": physics.max_auc_drop, "signal_efficiency": physics.max_signal_efficiency_drop,
            "argmax_agreement": 1.0 - physics.min_argmax_agreement, "bias": physics.max_bias_change,
            "resolution": physics.max_resolution_change, "edge_auc": physics.max_auc_drop,
            "edge_efficiency": physics.max_signal_efficiency_drop, "edge_purity": physics.max_signal_efficiency_drop}


def _family(metric: str) -> str:
    return metric.split("@")[0].split("[")[0]


def benchmark_network(name: str, work: Path, sets: int, size: int | None, log: logging.Logger) -> dict[str, Any]:
    from hepdeploy.convert import convert_from_spec
    from hepdeploy.model_zoo import export_network, get_network
    from hepdeploy.optimize import optimize_artifact
    from hepdeploy.validate import make_reference, validate_candidate

    net = get_network(name)
    folder = work / name
    exported = export_network(name, folder, budget="full")
    spec = exported.spec
    fp32 = convert_from_spec(spec, folder / f"{name}.onnx").path
    variants = {}
    for variant in VARIANTS:
        output = folder / f"{name}_{variant}.onnx"
        optimize_artifact(fp32, spec.variant(variant), output, calibration=exported.calibration_path, spec=spec)
        variants[variant] = output
    size = size or net.reference_samples
    off = spec.model_copy(update={"validation": spec.validation.model_copy(update={"physics": spec.validation.physics
                          .model_copy(update={"bootstrap": spec.validation.physics.bootstrap.model_copy(
                              update={"replicas": 0})})})})
    allowances = _allowances(spec)
    runs = []
    for k in range(sets):
        started = time.perf_counter()
        data = net.generate(size, SET_SEED + k)
        generated = time.perf_counter() - started
        started = time.perf_counter()
        reference = make_reference(spec, data.arrays(), spec=spec)
        referenced = time.perf_counter() - started
        for variant, path in variants.items():
            started = time.perf_counter()
            report = validate_candidate(path, reference, spec=spec, name=variant)
            with_bootstrap = time.perf_counter() - started
            started = time.perf_counter()
            validate_candidate(path, reference, spec=off, name=variant)
            without = time.perf_counter() - started
            widths: dict[str, dict[str, float]] = defaultdict(dict)
            for check in report.physics.checks:
                if check.informational or check.half_width is None:
                    continue
                where = "inclusive" if check.bin is None else "worst bin"
                family = _family(check.metric)
                widths[family][where] = max(widths[family].get(where, 0.0), check.half_width)
            runs.append({
                "set": k, "variant": variant, "outcome": report.outcome, "verdict": report.verdict,
                "events": reference.n_samples if reference.batched else int(len(next(iter(reference.labels.values())))),
                "generate_s": round(generated, 2), "reference_s": round(referenced, 2),
                "validate_s": round(with_bootstrap, 2), "validate_without_bootstrap_s": round(without, 2),
                "half_widths": widths,
            })
            log.info("%s set %d %s: %s (%.1f s, %.1f s without the bootstrap)", name, k, variant, report.outcome,
                     with_bootstrap, without)
    return {"network": name, "size": size, "allowances": allowances, "runs": runs}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| network | reference set | variant | verdicts on the independent sets | validation s (bootstrap / none) |",
             "|---|---|---|---|---|"]
    for result in results:
        by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for run in result["runs"]:
            by_variant[run["variant"]].append(run)
        for variant, runs in by_variant.items():
            verdicts = ", ".join(r["outcome"] for r in runs)
            seconds = f"{sum(r['validate_s'] for r in runs) / len(runs):.1f} / " \
                      f"{sum(r['validate_without_bootstrap_s'] for r in runs) / len(runs):.1f}"
            lines.append(f"| {result['network']} | {runs[0]['events']:,} | {variant} | {verdicts} | {seconds} |")
    lines += ["", "| network | variant | metric | allowance | half-width, all events | half-width, worst bin |",
              "|---|---|---|---|---|---|"]
    for result in results:
        worst: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        for run in result["runs"]:
            for family, widths in run["half_widths"].items():
                for where, value in widths.items():
                    key = (run["variant"], family)
                    worst[key][where] = max(worst[key].get(where, 0.0), value)
        for (variant, family), widths in worst.items():
            allowance = result["allowances"].get(family, float("nan"))
            lines.append(f"| {result['network']} | {variant} | {family} | {allowance:g} | "
                         f"{widths.get('inclusive', float('nan')):.4f} | {widths.get('worst bin', float('nan')):.4f} |")
    timing = ["", "| network | events | generate s | reference s |", "|---|---|---|---|"]
    for result in results:
        runs = result["runs"]
        timing.append(f"| {result['network']} | {runs[0]['events']:,} | "
                      f"{sum(r['generate_s'] for r in runs) / len(runs):.1f} | "
                      f"{sum(r['reference_s'] for r in runs) / len(runs):.1f} |")
    return "\n".join(lines + timing)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", default=list(DEFAULT_NETWORKS))
    parser.add_argument("--sets", type=int, default=4, help="independent reference sets per network")
    parser.add_argument("--size", type=int, help="events per set (default: the zoo's reference size)")
    parser.add_argument("--out", type=Path, help="write the raw results as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    log = logging.getLogger("validation_cost")
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="hepdeploy-validation-cost-") as folder:
        results = [benchmark_network(name, Path(folder), args.sets, args.size, log) for name in args.networks]
    print(markdown(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
