"""Whole-process `hepdeploy build` time, with the time of each step, per network.

Networks: a FACILE-shaped PyTorch MLP built from a factory spec (47 -> 200 -> 100 -> 50 -> 20 ->
10 -> 5 -> 1 with an input BatchNorm, 1024 calibration rows of HCAL-like channels; the model
Model Navigator's ``nav.torch.optimize`` took 35 s on here) and the zoo networks (trained models
taken from the zoo cache, exported once before timing so training is never timed). Each build is a
fresh ``hepdeploy build SPEC -o OUT --no-publish`` process (every check of the chain still runs),
repeated ``--repeats`` times; the median wall time is reported with the per-step median from each
build's ``build-summary.json``.

    .venv/bin/python benchmarks/build_time.py --out benchmarks/results [--repeats 3] [--networks mlp,facile]

Writes ``build_time.md`` and ``build_time.json`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
MLP_ROWS = 1024


def facile_mlp() -> Any:
    """The FACILE-shaped torch MLP (seeded weights: the benchmark times the build, not the training)."""
    import torch

    torch.manual_seed(0)
    widths = (47, 200, 100, 50, 20, 10, 5)
    layers: list[Any] = [torch.nn.BatchNorm1d(47)]
    for width_in, width_out in zip(widths, widths[1:]):
        layers += [torch.nn.Linear(width_in, width_out), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(widths[-1], 1))
    return torch.nn.Sequential(*layers)


def write_mlp_spec(folder: Path) -> Path:
    """The factory spec and its data (HCAL-like channels from the zoo's generator, no labels)."""
    import numpy as np

    from hepdeploy.model_zoo import hcal

    folder.mkdir(parents=True, exist_ok=True)
    calibration = hcal.generate_channels(MLP_ROWS, seed=1).features.astype(np.float32)
    reference = hcal.generate_channels(4096, seed=2).features.astype(np.float32)
    np.savez(folder / "calibration.npz", input=calibration)
    np.savez(folder / "reference.npz", input=reference)
    spec = f"""name: facile_mlp
source:
  framework: torch
  path: {HERE}
  factory: build_time:facile_mlp
inputs:
  - {{name: input, dtype: float32, shape: [batch, 47]}}
outputs:
  - {{name: output, dtype: float32, shape: [batch, 1]}}
dims:
  batch: {{min: 1, opt: 16000, max: 160000}}
data:
  calibration: calibration.npz
  reference: reference.npz
  calibration_samples: {MLP_ROWS}
variants: [fp32, int8-cpu, fp16, int8-trt]
"""
    path = folder / "facile_mlp.yaml"
    path.write_text(spec, encoding="utf-8")
    return path


def zoo_spec(name: str, folder: Path) -> Path:
    from hepdeploy.model_zoo import export_network

    return Path(export_network(name, folder / name, budget="full").spec_path)


def time_build(hepdeploy: Path, spec: Path, out: Path) -> dict[str, Any]:
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = subprocess.run([str(hepdeploy), "build", str(spec), "-o", str(out), "--no-publish"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - started
    summary = json.loads((out / "build-summary.json").read_text(encoding="utf-8"))
    steps = {s["step"]: s["details"].get("seconds", 0.0) for m in summary["models"] for s in m["steps"]}
    statuses = {s["step"]: s["status"] for m in summary["models"] for s in m["steps"]}
    exporter = next((s["details"].get("exporter") for m in summary["models"] for s in m["steps"]
                     if s["step"] == "convert"), None)
    return {"wall_s": wall, "exit": done.returncode, "steps": steps, "statuses": statuses, "exporter": exporter,
            "stderr_tail": done.stderr.strip().splitlines()[-3:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--repeats", type=int, default=3, help="builds of the MLP")
    parser.add_argument("--zoo-repeats", type=int, default=1, help="builds of each zoo network")
    parser.add_argument("--networks", default="mlp,facile,jet_mlp,deepjet,particlenet,interaction_network")
    args = parser.parse_args()
    hepdeploy = Path(sys.executable).with_name("hepdeploy")
    work = Path(tempfile.mkdtemp(prefix="hepdeploy-build-time-"))
    specs = {name: write_mlp_spec(work / "mlp") if name == "mlp" else zoo_spec(name, work / "zoo")
             for name in args.networks.split(",")}
    results: dict[str, Any] = {}
    started = time.time()
    for name, spec in specs.items():
        runs = []
        for k in range(args.repeats if name == "mlp" else args.zoo_repeats):
            run = time_build(hepdeploy, spec, work / "out" / f"{name}-{k}")
            print(f"{name} #{k}: {run['wall_s']:.1f} s, exit {run['exit']}", file=sys.stderr)
            runs.append(run)
        step_names = list(runs[0]["steps"])
        results[name] = {
            "wall_s": statistics.median(r["wall_s"] for r in runs),
            "walls": [round(r["wall_s"], 2) for r in runs],
            "exits": [r["exit"] for r in runs],
            "exporter": runs[0]["exporter"],
            "steps": {s: statistics.median(r["steps"].get(s, 0.0) for r in runs) for s in step_names},
            "statuses": runs[0]["statuses"],
        }
    elapsed = time.time() - started
    label = {"mlp": "FACILE-shaped torch MLP (factory spec)"}
    lines = [
        f"Command: `.venv/bin/python benchmarks/build_time.py --repeats {args.repeats} --zoo-repeats "
        f"{args.zoo_repeats} --networks {args.networks}`, {time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {elapsed:.0f} s in all. Median of "
        f"{args.repeats} (MLP) / {args.zoo_repeats} (zoo) whole `hepdeploy build --no-publish` processes; step "
        "columns in seconds (the exporter that ran in brackets); the rest of a build is process start and imports.",
        "",
        "| network | build (s) | convert | reference | fp32 | int8-cpu | fp16 | int8-trt | validation (all) | exit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        steps = result["steps"]
        validation = sum(v for s, v in steps.items() if s.startswith("validate") or s == "reports")
        cells = [f"{steps.get(s, 0.0):.1f}" for s in
                 ("convert", "reference", "optimize:fp32", "optimize:int8-cpu", "optimize:fp16", "optimize:int8-trt")]
        exporter = f" ({result['exporter']})" if result["exporter"] else ""
        lines.append(f"| {label.get(name, name)} | {result['wall_s']:.1f} | {cells[0]}{exporter} | "
                     f"{' | '.join(cells[1:])} | {validation:.1f} | {','.join(map(str, result['exits']))} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "build_time.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (args.out / "build_time.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
