"""Events/s versus simultaneous clients: FACILE and the jet MLP served by a real Triton server (tensors
through gRPC, and through system shared memory), next to the same ONNX model run inline in the client
process (the "CPU-only" baseline of the SONIC papers), with where the served time goes.

All modes are measured in one run, on the same machine, with the same events (the spec's
``triton.perf``: FACILE = one request of 16000 HCAL channels, jet MLP = one request of 16 jets).
Server: the one ``hepdeploy triton serve`` would use (tritonserver on PATH, else the bundled
nvidia-pytriton 2.51 server, which loads the Python-backend twins only: ONNX Runtime inside Triton's
Python backend), with ``--instances`` model instances of one ONNX Runtime thread each (default: one
per core, the CPU the inline mode's threads share). Inline: one ONNX Runtime session in this process,
N threads calling it, one ONNX Runtime thread per call.

    .venv/bin/python benchmarks/served.py --out benchmarks/results [--duration 4 --warmup 1]

Writes ``served.md`` (tables), ``served.json`` and ``served.png`` into ``--out``.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--clients", default="1,2,4,8,16")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per level")
    parser.add_argument("--models", default="facile,jet_mlp")
    parser.add_argument("--budget", default="reduced", choices=["reduced", "full"])
    parser.add_argument("--instances", type=int, default=os.cpu_count() or 1,
                        help="model instances on the server (one ONNX Runtime thread each)")
    args = parser.parse_args()

    from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
    from hepdeploy.backend.triton import ServerTarget
    from hepdeploy.backend.triton_shm import leaked_segments
    from hepdeploy.convert import convert_from_spec
    from hepdeploy.model_zoo import export_network
    from hepdeploy.perf import (
        BREAKDOWN_HEADERS,
        BREAKDOWN_KEYS,
        EventDefinition,
        PerfSettings,
        measure_inline,
        plot_levels,
        run_perf,
    )
    from hepdeploy.spec import CpuTwin
    from hepdeploy.triton.repository import publish_python_twin
    from hepdeploy.triton.server import TritonServer, find_tritonserver
    from hepdeploy.validate.reference import load_data_file

    clients = [int(c) for c in args.clients.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hepdeploy-served-"))
    repo = work / "model_repository"
    prepared = {}
    for name in args.models.split(","):
        export = export_network(name, work / name, budget=args.budget)
        artifact = convert_from_spec(export.spec, work / name / f"{name}.onnx")
        inputs = {t.name: load_data_file(export.reference_path)[t.name] for t in export.spec.inputs}
        # CMSSW's thread control for the CPU twin: one instance per thread, one ONNX Runtime thread each.
        served_spec = export.spec.model_copy(update={"triton": export.spec.triton.model_copy(
            update={"cpu_twin": CpuTwin(variant="fp32", threads=args.instances)})})
        publish_python_twin(repo, artifact.path, spec=served_spec, verify=False)
        prepared[name] = (export.spec, artifact, inputs)

    binary = find_tritonserver(repository=repo)
    reports = []
    started = time.time()
    load_before = os.getloadavg()[0]
    with TritonServer(repo, binary=binary) as server:
        errors = server.model_load_errors()
        if errors:
            print(f"models not loaded: {errors}", file=sys.stderr)
        for name, (spec, artifact, inputs) in prepared.items():
            event = EventDefinition.from_spec(spec)
            for memory, label in (("off", "gRPC"), ("on", "shared memory")):
                print(f"{name}: served ({label}), {clients} clients", file=sys.stderr)
                served = run_perf(ServerTarget(server.grpc_url, timeout_s=120, shared_memory=memory), f"{name}_py",
                                  inputs, settings=PerfSettings(tuple(clients), args.duration, args.warmup, event),
                                  expected=(spec.inputs, spec.outputs))
                served.model = f"{name} served ({label}, Triton python backend)"
                reports.append(served)
            print(f"{name}: inline, {clients} clients", file=sys.stderr)
            runner = OnnxRuntimeRunner(artifact.path, intra_op_threads=1)
            inline = measure_inline(runner.run, inputs, concurrency=clients, duration_s=args.duration,
                                    warmup_s=args.warmup, event=event, label=f"{name} inline (ONNX Runtime, 1 thread/call)")
            reports.append(inline)
    elapsed = time.time() - started
    load_after = os.getloadavg()[0]
    leaked = leaked_segments()

    lines = [
        f"Command: `.venv/bin/python benchmarks/served.py --out {args.out} --clients {args.clients} "
        f"--duration {args.duration:g} --warmup {args.warmup:g}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU; "
        f"server: {binary.describe()}; measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {elapsed:.0f} s; "
        f"1-min load average {load_before:.1f} before, {load_after:.1f} after (other processes share the cores); "
        f"{args.instances} model instance(s) x 1 ONNX Runtime thread; shared-memory segments left in /dev/shm "
        f"after the run: {len(leaked)}.",
        "",
        "| model | mode | event | " + " | ".join(f"{c} client{'s' if c > 1 else ''}" for c in clients) + " |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in clients) + " |",
    ]
    for report in reports:
        name, mode = report.model.split(" ", 1)
        event = f"{report.event.requests_per_event}x{report.event.batch_per_request} rows"
        cells = [f"{level.events_per_s:.4g} ev/s (p99 {level.latency_ms_p99:.3g} ms)" for level in report.levels]
        lines.append(f"| {name} | {mode} | {event} | " + " | ".join(cells) + " |")
    ratio_at = 4 if 4 in clients else clients[-1]
    position = clients.index(ratio_at)
    lines += ["", f"Served/inline throughput at {ratio_at} clients, and where a served request's time goes there "
              "(µs per request, from the server's statistics; client = send + receive + network):", "",
              "| model | mode | served/inline | " + " | ".join(BREAKDOWN_HEADERS) + " | rows per execution |",
              "| --- | --- | ---: | " + " | ".join("---:" for _ in BREAKDOWN_HEADERS) + " | ---: |"]
    for report in reports:
        name, mode = report.model.split(" ", 1)
        if report.engine == "inline":
            continue
        inline = next(r for r in reports if r.engine == "inline" and r.model.startswith(name + " "))
        level = report.levels[position]
        ratio = level.events_per_s / inline.levels[position].events_per_s
        split = level.server or {}
        cells = [f"{split[k]:.0f}" if isinstance(split.get(k), float) and split[k] == split[k] else "-"
                 for k in BREAKDOWN_KEYS]
        rows = split.get("rows_per_execution")
        lines.append(f"| {name} | {mode} | {ratio:.2f}x | " + " | ".join(cells) + f" | {rows:.0f} |" if rows else
                     f"| {name} | {mode} | {ratio:.2f}x | " + " | ".join(cells) + " | - |")
    table = "\n".join(lines) + "\n"
    (args.out / "served.md").write_text(table, encoding="utf-8")
    (args.out / "served.json").write_text(json.dumps([r.to_dict() for r in reports], indent=2) + "\n", encoding="utf-8")
    plot_levels(reports, args.out / "served.png", title="Events/s vs simultaneous clients (2-core CPU, no GPU)")
    print(table)
    for report in reports:
        print(report.table(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
