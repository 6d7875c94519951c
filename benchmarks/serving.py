"""Serving configurations from the data and a latency budget: the issue's acceptance runs, by hand.

For FACILE (one event = 16,000 HCAL channels) and ParticleNet (jagged, from the zoo's ROOT export) this runs
`hepdeploy profile` twice (do two runs choose the same configuration?) and prints, per model: the chosen
configuration, predicted against measured p50/p99 at the stated rate (open-loop Poisson load against the
local server's Python-backend twin), and the clients one instance carries within the budget with its
interval over repeated runs; for FACILE side by side with a hand-written config (``max_batch_size: 16000``,
no queue delay), measured the same way on the same server.

    .venv/bin/python benchmarks/serving.py --out benchmarks/results [--repeats 3]

Writes ``serving.md`` and ``serving.json`` into ``--out`` and each model's first profile (serving.yaml, the
report and its plots) into ``--out/serving/<model>/``. Budgets and rates: 100 ms per request on two shared
cores; FACILE at 15 events/s (one event takes ~10-25 ms through the twin, so one instance is ~15-40 % busy),
ParticleNet at 100 events/s of 20 jets (~4-10 ms each; give ``--rates particlenet=40`` on a CPU without VNNI,
where one event takes ~9 ms).
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

os.environ.setdefault("OMP_NUM_THREADS", "1")

BUDGET_MS = 100.0
RATES = {"facile": 15.0, "particlenet": 100.0}  # defaults; --rates sets them for a slower machine


def _spec_and_data(name: str, work: Path, cache: Path | None):  # noqa: ANN202
    from hepdeploy.model_zoo import ExportOptions, export_network
    from hepdeploy.spec import load_spec

    root = name == "particlenet"
    export = export_network(name, work / name, ExportOptions(budget="reduced", cache_dir=cache, root=root,
                                                             reference_samples=2000))
    if root:
        return load_spec(export.root_spec_path), export.root.reference
    return export.spec, Path(export.reference_path)


def _profile(name: str, spec, data: Path, out: Path, args: argparse.Namespace, sonic: bool):  # noqa: ANN001, ANN202
    from hepdeploy.convert import convert_from_spec
    from hepdeploy.serving.confirm import ClientsLoad
    from hepdeploy.serving.profile import ProfileRequest, ProfileSettings, event_rows, profile_model

    out.mkdir(parents=True, exist_ok=True)
    model = convert_from_spec(spec, out / f"{name}.onnx").path
    rows, _ = event_rows(spec)
    settings = ProfileSettings(budget_s=BUDGET_MS / 1e3, rate_per_s=args.rates.get(name, RATES[name]), sonic=sonic, tb_seconds=args.tb_seconds,
                               clients=ClientsLoad(rows, repeats=args.repeats, seconds=args.level_seconds))
    started = time.monotonic()
    report = profile_model(ProfileRequest(spec, model, data, out, settings))
    (out / f"{name}.onnx").unlink()
    (out / f"{name}.json").unlink(missing_ok=True)
    return report, time.monotonic() - started


def _hand_written(spec, data: Path, work: Path, args: argparse.Namespace):  # noqa: ANN001, ANN202
    """FACILE's twin with max_batch_size 16000 and no queue delay, its clients per instance."""
    from hepdeploy.backend.triton import ServerTarget
    from hepdeploy.convert import convert_from_spec
    from hepdeploy.data import load_tensors
    from hepdeploy.serving.confirm import ClientsLoad, clients_per_instance
    from hepdeploy.spec import CpuTwin, DynamicBatching, TritonSpec
    from hepdeploy.triton.repository import publish_python_twin
    from hepdeploy.triton.server import TritonServer, bundled_server

    model = convert_from_spec(spec, work / "facile_hand.onnx").path
    triton = TritonSpec(max_batch_size=16000, warmup=False, cpu_twin=CpuTwin(count=1, threads=1),
                        dynamic_batching=DynamicBatching(max_queue_delay_microseconds=0))
    name = publish_python_twin(work / "hand_repo", model, model_name="facile_hand",
                               spec=spec.model_copy(update={"triton": triton})).name
    inputs = {"input": load_tensors(data)["input"]}
    with TritonServer(work / "hand_repo", bundled_server()) as server:
        return clients_per_instance(ServerTarget(server.grpc_url, timeout_s=60), name, inputs, BUDGET_MS / 1e3,
                                    ClientsLoad(16000, repeats=args.repeats, seconds=args.level_seconds))


def _config(report) -> list:  # noqa: ANN001
    c = report.choice
    return [c.max_batch_size, list(c.preferred_batch_size), c.max_queue_delay_us, report.instances]


def _row(name: str, report, seconds: float, second) -> dict:  # noqa: ANN001
    c = report.confirmation
    k = report.clients
    return {"model": name, "rate_per_s": report.rate_per_s, "rows_per_request": report.rows_per_request,
            "config": _config(report), "config_second_run": _config(second), "same": _config(report) == _config(second),
            "predicted_ms": [c.predicted_p50_s * 1e3, c.predicted_p99_s * 1e3] if c else None,
            "measured_ms": [c.measured_p50_s * 1e3, c.measured_p99_s * 1e3] if c else None,
            "p99_ratio": c.p99_ratio if c else None, "requests": c.requests if c else None,
            "second_run_p99_ratio": second.confirmation.p99_ratio if second.confirmation else None,
            "clients": [k.point, k.low, k.high, k.per_repeat] if k else None,
            "keda_threshold": report.keda.threshold if report.keda else None, "seconds": seconds,
            "t_of_b_ms": {p.batch: [p.p50_s * 1e3, p.p99_s * 1e3, p.requests, p.stable] for p in report.curve.points}}


def _rates(text: str) -> dict[str, float]:
    return {name: float(rate) for name, rate in (item.split("=", 1) for item in text.split(",") if item)}


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _markdown(rows: list[dict], hand, load: str) -> str:  # noqa: ANN001
    lines = [f"# Serving configurations from the data (`benchmarks/serving.py`, {platform.node()}, "
             f"{os.cpu_count()} cores of {_cpu()}, load average at start {load})", "",
             f"p99 budget {BUDGET_MS:g} ms per request (one event's natural batch).", "",
             "| model | rate ev/s | config [max_batch, preferred, delay µs, instances] | same in run 2 | "
             "p50 pred / meas ms | p99 pred / meas ms | meas/pred p99 (run 2) | clients per instance |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pred, meas = r["predicted_ms"] or [float("nan")] * 2, r["measured_ms"] or [float("nan")] * 2
        clients = f"{r['clients'][0]} ({r['clients'][1]}..{r['clients'][2]})" if r["clients"] else "-"
        lines.append(f"| {r['model']} | {r['rate_per_s']:g} | {r['config']} | {r['same']} | {pred[0]:.1f} / {meas[0]:.1f} | "
                     f"{pred[1]:.1f} / {meas[1]:.1f} | {r['p99_ratio']:.2f} ({r['second_run_p99_ratio']:.2f}) | {clients} |")
    if hand is not None:
        lines += ["", f"FACILE, hand-written config (max_batch_size 16000, no queue delay): {hand.point} clients "
                      f"({hand.low}..{hand.high}, {hand.interval}; per repeat {hand.per_repeat})."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--level-seconds", type=float, default=2.0, help="measured seconds per client level")
    parser.add_argument("--tb-seconds", type=float, default=8.0, help="at most this long per t(b) size")
    parser.add_argument("--models", default="facile,particlenet")
    parser.add_argument("--cache", type=Path, default=None, help="zoo training cache")
    parser.add_argument("--rates", type=_rates, default={}, help="events/s per model, e.g. particlenet=40")
    args = parser.parse_args()
    load = f"{os.getloadavg()[0]:.1f}"
    rows, hand = [], None
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as folder:
        work = Path(folder)
        for name in args.models.split(","):
            spec, data = _spec_and_data(name, work, args.cache)
            first, seconds = _profile(name, spec, data, args.out / "serving" / name, args, sonic=True)
            second, _ = _profile(name, spec, data, work / f"{name}-second", args, sonic=False)
            rows.append(_row(name, first, seconds, second))
            print(json.dumps(rows[-1]), flush=True)
            if name == "facile":
                hand = _hand_written(spec, data, work, args)
                print(f"hand-written: {hand.point} ({hand.low}..{hand.high}) {hand.per_repeat}", flush=True)
    text = _markdown(rows, hand, load)
    (args.out / "serving.md").write_text(text, encoding="utf-8")
    payload = {"rows": rows, "hand_written": hand.to_dict() if hand else None, "load_average": load}
    (args.out / "serving.json").write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
