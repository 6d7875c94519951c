"""Throughput and latency versus simultaneous clients against a live Triton server, the SONIC way.

For each concurrency level N, N clients (asynchronous gRPC, one channel each) run in a closed loop:
each sends one *event* (``requests_per_event`` requests of ``batch_per_request`` rows, taken from the
golden inputs), waits for the answers, and sends the next. After a warm-up, events are counted for a
fixed duration. Reported per level: events/s, inferences/s (rows/s), requests/s and the event
latency's p50/p95/p99. Results go to a table, JSON and a PNG plot (events/s vs clients).

``run_perf(target, model, inputs, settings=...)`` takes the server as a
:class:`~hepdeploy.backend.triton.ServerTarget` (address, per-call timeout, shared memory, compression)
and the load as :class:`PerfSettings` (concurrency levels, seconds, the event, the engine).

``engine="perf_analyzer"`` runs NVIDIA's ``perf_analyzer`` binary instead (when installed), with
``--shape`` for every variable dim and ``--input-data`` holding real golden inputs, and parses its CSV.

``measure_inline`` runs the same batches through a local runner in the client process (N threads):
the "CPU-only" baseline of the SONIC papers.
"""
from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import math
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hepdeploy.backend.triton import (
    NUMPY_TO_TRITON,
    ServerTarget,
    TritonRunner,
    output_nbytes,
    triton_error_line,
)
from hepdeploy.backend.triton_shm import SharedMemoryRegions, layout
from hepdeploy.errors import (
    BadInputError,
    DataError,
    DependencyMissingError,
    ServerError,
)
from hepdeploy.fsutil import atomic_path, atomic_write_text, check_output_folder
from hepdeploy.lifetime import work_folder

log = logging.getLogger("hepdeploy.perf")

Engine = Literal["client", "perf_analyzer"]
MAX_DISTINCT_BATCHES = 8


@dataclass
class EventDefinition:
    """What one event is: ``requests_per_event`` requests of ``batch_per_request`` rows each."""

    batch_per_request: int = 1
    requests_per_event: int = 1

    def __post_init__(self) -> None:
        if self.batch_per_request < 1 or self.requests_per_event < 1:
            raise BadInputError("batch per request and requests per event must be >= 1")

    @classmethod
    def from_spec(cls, spec: Any | None, batch: int | None = None, requests_per_event: int | None = None) -> EventDefinition:
        perf = spec.triton.perf if spec is not None else None
        return cls(batch or (perf.batch_per_request if perf else 1),
                   requests_per_event or (perf.requests_per_event if perf else 1))


@dataclass
class PerfLevel:
    clients: int
    duration_s: float
    events: int
    requests: int
    inferences: int
    events_per_s: float
    inferences_per_s: float
    requests_per_s: float
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float
    latency_ms_mean: float
    # Where a request's time went (µs per request, from the server's statistics extension), as perf_analyzer
    # splits it: client (send, receive, network), queue, compute_input, compute_infer, compute_output.
    server: dict[str, float] | None = None


@dataclass
class PerfReport:
    model: str
    target: str
    engine: str
    event: EventDefinition
    levels: list[PerfLevel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    transport: str = "grpc"  # grpc, grpc+shm (system shared memory), grpc+gzip ...; "inline" for measure_inline

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.target, "engine": self.engine, "transport": self.transport,
                "event": asdict(self.event), "levels": [asdict(level) for level in self.levels], "notes": self.notes}

    def table(self) -> str:
        header = (f"{self.model} via {self.engine} over {self.transport} ({self.target}); "
                  f"event = {self.event.requests_per_event} request(s) x {self.event.batch_per_request} rows")
        rows = [f"{'clients':>7} {'events/s':>10} {'inferences/s':>13} {'requests/s':>11} {'p50 ms':>8} "
                f"{'p95 ms':>8} {'p99 ms':>8} {'events':>7}"]
        split = any(level.server for level in self.levels)
        if split:
            rows[0] += "  " + " ".join(f"{name:>9}" for name in BREAKDOWN_HEADERS)
        for level in self.levels:
            row = (f"{level.clients:>7d} {level.events_per_s:>10.1f} {level.inferences_per_s:>13.0f} "
                   f"{level.requests_per_s:>11.1f} {level.latency_ms_p50:>8.2f} {level.latency_ms_p95:>8.2f} "
                   f"{level.latency_ms_p99:>8.2f} {level.events:>7d}")
            if split and level.server:
                row += "  " + " ".join(_us(level.server.get(key)) for key in BREAKDOWN_KEYS)
            rows.append(row)
        legend = ["µs per request: client = send + receive + network; queue and compute from the server's "
                  "statistics"] if split else []
        return "\n".join([header, *rows, *legend, *(f"note: {n}" for n in self.notes)])


BREAKDOWN_KEYS = ("client_us", "queue_us", "compute_input_us", "compute_infer_us", "compute_output_us")
BREAKDOWN_HEADERS = ("client", "queue", "in", "infer", "out")


def _us(value: float | None) -> str:
    return f"{value:>9.1f}" if value is not None and math.isfinite(value) else f"{'-':>9}"


@dataclass(frozen=True)
class PerfSettings:
    """How the load is applied: the levels of simultaneous clients, the measured and warm-up seconds of each
    level, what one event is, and what drives the clients (asynchronous gRPC clients in this process, or
    NVIDIA's ``perf_analyzer`` binary, found on PATH unless ``perf_analyzer`` names it)."""

    concurrency: tuple[int, ...] = (1, 2, 4)
    duration_s: float = 5.0
    warmup_s: float = 1.0
    event: EventDefinition = field(default_factory=EventDefinition)
    engine: Engine = "client"
    perf_analyzer: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "concurrency", tuple(self.concurrency))
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise BadInputError("concurrency levels must be positive integers")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise BadInputError("duration must be > 0 s and warm-up >= 0 s")
        if self.engine not in ("client", "perf_analyzer"):
            raise BadInputError(f"engine {self.engine!r}: use client or perf_analyzer")


@dataclass
class ServedLoad:
    """The served model as the server describes it, and the distinct requests cut for it from the golden inputs."""

    model: str
    version: str
    batched: bool
    input_dtypes: dict[str, str]
    input_shapes: dict[str, list[int]]
    outputs: list[tuple[str, str, list[int]]]
    batches: list[dict[str, np.ndarray]]


@dataclass
class PreparedRequests:
    """The request inputs of every distinct batch (made once, reused by every client) and the requested
    outputs of each request slot in flight."""

    inputs: list[list[Any]]
    slot_outputs: list[list[Any]]


# --------------------------------------------------------------------------- inputs


def request_batches(inputs: Mapping[str, np.ndarray], batch: int, batched: bool = True,
                    count: int = MAX_DISTINCT_BATCHES) -> list[dict[str, np.ndarray]]:
    """Up to ``count`` distinct requests of ``batch`` rows cut (cyclically) from the golden inputs."""
    if not inputs:
        raise DataError("the golden set has no inputs")
    if not batched:
        return [{k: np.ascontiguousarray(v) for k, v in inputs.items()}]
    sizes = {int(np.asarray(v).shape[0]) for v in inputs.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise DataError(f"golden inputs disagree on their first dimension: {sorted(sizes)}")
    total = sizes.pop()
    batches = []
    for k in range(max(1, min(count, math.ceil(total / batch)))):
        rows = (np.arange(batch) + k * batch) % total
        batches.append({name: np.ascontiguousarray(np.asarray(v)[rows]) for name, v in inputs.items()})
    return batches


def _percentiles(latencies_s: Sequence[float]) -> tuple[float, float, float, float]:
    if not latencies_s:
        return (math.nan,) * 4  # type: ignore[return-value]
    ms = np.asarray(latencies_s) * 1e3
    return (float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(np.percentile(ms, 99)),
            float(ms.mean()))


def _level(clients: int, duration: float, latencies: list[float], event: EventDefinition) -> PerfLevel:
    events = len(latencies)
    requests = events * event.requests_per_event
    inferences = requests * event.batch_per_request
    p50, p95, p99, mean = _percentiles(latencies)
    return PerfLevel(clients, duration, events, requests, inferences, events / duration, inferences / duration,
                     requests / duration, p50, p95, p99, mean)


# --------------------------------------------------------------------------- server statistics


def server_statistics(url: str, model: str, version: str = "") -> dict[str, int] | None:
    """The model's cumulative inference statistics (Triton's statistics extension), or None if unavailable."""
    import tritonclient.grpc as grpcclient

    try:
        with grpcclient.InferenceServerClient(url) as client:
            response = client.get_inference_statistics(model_name=model, model_version=version)
    except Exception:  # a server without the extension, or an old one: the breakdown is simply absent
        log.debug("no inference statistics from %s for %s", url, model, exc_info=True)
        return None
    totals = {"requests": 0, "success_ns": 0, "queue_ns": 0, "compute_input_ns": 0, "compute_infer_ns": 0,
              "compute_output_ns": 0, "executions": 0, "inferences": 0}
    for stats in response.model_stats:
        inference = stats.inference_stats
        totals["requests"] += inference.success.count
        totals["success_ns"] += inference.success.ns
        totals["queue_ns"] += inference.queue.ns
        totals["compute_input_ns"] += inference.compute_input.ns
        totals["compute_infer_ns"] += inference.compute_infer.ns
        totals["compute_output_ns"] += inference.compute_output.ns
        totals["executions"] += stats.execution_count
        totals["inferences"] += stats.inference_count
    return totals


def server_breakdown(before: Mapping[str, int] | None, after: Mapping[str, int] | None,
                     client_latency_ms: float | None) -> dict[str, float] | None:
    """µs per request between two statistics snapshots; the client share is what the server did not spend."""
    if before is None or after is None:
        return None
    requests = after["requests"] - before["requests"]
    if requests <= 0:
        return None

    def per_request(key: str) -> float:
        return (after[key] - before[key]) / requests / 1e3

    server_us = per_request("success_ns")
    executions = after["executions"] - before["executions"]
    breakdown = {"requests": float(requests), "server_us": server_us, "queue_us": per_request("queue_ns"),
                 "compute_input_us": per_request("compute_input_ns"), "compute_infer_us": per_request("compute_infer_ns"),
                 "compute_output_us": per_request("compute_output_ns"),
                 "rows_per_execution": (after["inferences"] - before["inferences"]) / executions if executions else 0.0}
    breakdown["client_us"] = (max(client_latency_ms * 1e3 - server_us, 0.0)
                              if client_latency_ms is not None and math.isfinite(client_latency_ms) else math.nan)
    return breakdown


# --------------------------------------------------------------------------- async gRPC clients


def prepare_requests(served: ServedLoad, slots: int, regions: SharedMemoryRegions | None) -> PreparedRequests:
    """The request inputs of every distinct batch of ``served`` and the requested outputs of each of ``slots``
    requests in flight.

    With ``regions`` (shared memory) every batch's tensors are written once into one input region, as
    perf_analyzer does, and each slot gets its own part of the output region, sized for the largest
    batch; outputs whose size is not known before the answer come back in the answer."""
    import tritonclient.grpc.aio as grpc_aio

    batches, dtypes = served.batches, served.input_dtypes
    arrays = [(name, array.astype(dtypes[name], copy=False)) for batch in batches for name, array in batch.items()]
    offsets: list[int] = []
    region = None
    if regions is not None:
        offsets, total = layout([array.nbytes for _, array in arrays])
        region = regions.region("input", total)
        region.write([array for _, array in arrays], offsets)
    tensors = []
    for k, (name, array) in enumerate(arrays):
        tensor = grpc_aio.InferInput(name, list(array.shape), NUMPY_TO_TRITON[dtypes[name]])
        if region is not None:
            tensor.set_shared_memory(region.name, array.nbytes, offsets[k])
        else:
            tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    per_batch = len(batches[0]) if batches else 0
    prepared = [tensors[k:k + per_batch] for k in range(0, len(tensors), per_batch)] if per_batch else [[]]
    plain = [grpc_aio.InferRequestedOutput(name) for name, _, _ in served.outputs]
    # The batch dim of a batched model's outputs is the largest request's rows; other dynamic dims are unknown.
    rows = max((next(iter(b.values())).shape[0] for b in batches if b), default=0) if served.batched else 0
    sizes = [output_nbytes(dtype, shape, rows or None) for _, dtype, shape in served.outputs]
    if regions is None or not sizes or any(size is None for size in sizes):
        return PreparedRequests(prepared, [plain] * slots)
    slot_offsets, slot_size = layout(sizes)  # type: ignore[arg-type]
    outputs_region = regions.region("output", slot_size * slots)
    per_slot = []
    for slot in range(slots):
        requested = []
        for (name, _, _), size, offset in zip(served.outputs, sizes, slot_offsets):
            output = grpc_aio.InferRequestedOutput(name)
            output.set_shared_memory(outputs_region.name, size, slot * slot_size + offset)
            requested.append(output)
        per_slot.append(requested)
    return PreparedRequests(prepared, per_slot)


async def _measure_level_async(target: ServerTarget, served: ServedLoad, requests: PreparedRequests, clients: int,
                               settings: PerfSettings) -> PerfLevel:
    import tritonclient.grpc.aio as grpc_aio

    options = {"compression_algorithm": target.compression} if target.compression else {}
    connections = [grpc_aio.InferenceServerClient(target.url) for _ in range(clients)]
    event, model, timeout_s = settings.event, served.model, target.timeout_s
    warmup_s, duration_s = settings.warmup_s, settings.duration_s
    start = time.monotonic()
    measure_from = start + warmup_s
    measure_to = measure_from + duration_s
    latencies: list[float] = []

    async def one_client(index: int, connection: Any) -> None:
        turn = index
        while time.monotonic() < measure_to:
            sent = time.monotonic()
            calls = []
            for slot in range(event.requests_per_event):
                calls.append(connection.infer(model, requests.inputs[turn % len(requests.inputs)],
                                              model_version=served.version,
                                              outputs=requests.slot_outputs[index * event.requests_per_event + slot],
                                              client_timeout=timeout_s, **options))
                turn += 1
            await asyncio.gather(*calls)
            done = time.monotonic()
            if measure_from <= sent and done <= measure_to:
                latencies.append(done - sent)

    try:
        await asyncio.wait_for(asyncio.gather(*(one_client(i, c) for i, c in enumerate(connections))),
                               timeout=warmup_s + duration_s + timeout_s + 5)
    except asyncio.TimeoutError as error:
        raise ServerError(f"{model}: perf level with {clients} client(s) did not finish within "
                          f"{warmup_s + duration_s + timeout_s:.0f} s") from error
    except Exception as error:  # InferenceServerException, grpc errors
        raise ServerError(f"{model} at {target.url}: inference failed during perf with {clients} client(s): "
                          f"{triton_error_line(error)}") from error
    finally:
        for connection in connections:
            try:
                await connection.close()
            except Exception:  # a dead server's channel may fail to close
                log.debug("closing a perf client failed", exc_info=True)
    return _level(clients, duration_s, latencies, event)


def run_perf(target: ServerTarget, model: str, inputs: Mapping[str, np.ndarray], *, version: str = "",
             settings: PerfSettings | None = None, expected: Any = None,
             progress: Callable[[str], None] | None = None) -> PerfReport:
    """Measure ``model`` on the server ``target`` at every concurrency level of ``settings``; see the module docstring.

    Tensors travel as ``target`` says: through Triton's system shared memory (auto: for a server on a
    loopback address), registered once and reused by every request of every level, and with gRPC
    compression (gzip, deflate) for a remote server. ``expected``: the (inputs, outputs) tensor specs
    the served model must have."""
    settings = settings or PerfSettings()
    if target.protocol != "grpc":
        raise BadInputError("perf measures over gRPC (its asynchronous clients and perf_analyzer here speak gRPC)")
    served, event = probe_served(target, model, version, inputs, settings.event, expected)
    settings = replace(settings, event=event)
    report = PerfReport(model=model, target=target.url, engine=settings.engine, event=event,
                        transport=target.transport)
    with contextlib.ExitStack() as stack:
        regions = None
        if target.uses_shared_memory and settings.engine == "client":
            import tritonclient.grpc as grpc_client

            client = grpc_client.InferenceServerClient(target.url)
            stack.callback(client.close)
            regions = stack.enter_context(SharedMemoryRegions(client, target.timeout_s, grpc=True))
        for clients in settings.concurrency:
            if progress:
                progress(f"{model}: {clients} client(s), {settings.warmup_s:g} s warm-up + {settings.duration_s:g} s")
            level = _measure_level(target, served, clients, settings, regions)
            if level.events == 0:
                report.notes.append(f"{clients} client(s): no event completed inside the {settings.duration_s:g} s "
                                    "window")
            report.levels.append(level)
            log.info("%s: %d client(s): %.1f events/s, p50 %.2f ms", model, clients, level.events_per_s,
                     level.latency_ms_p50)
    return report


def probe_served(target: ServerTarget, model: str, version: str, inputs: Mapping[str, np.ndarray], event: EventDefinition,
           expected: Any) -> tuple[ServedLoad, EventDefinition]:
    """The served model from the server itself (names, dtypes, dims, max_batch_size, checked against
    ``expected``), its requests cut from ``inputs``, and the event as sent (an unbatched model takes its
    inputs whole)."""
    with TritonRunner(target, model, version, expected=expected) as probe:
        probe.check_metadata()
        batched = probe.max_batch_size > 0
        if batched and event.batch_per_request > probe.max_batch_size:
            raise BadInputError(f"{model}: {event.batch_per_request} rows per request exceed the served "
                                f"max_batch_size {probe.max_batch_size}")
        dtypes = {name: dtype for name, dtype, _ in probe.served_inputs}
        absent = [n for n in dtypes if n not in inputs]
        if absent:
            raise DataError(f"the golden set has no input(s) {', '.join(absent)} that {model} takes")
        batches = request_batches({n: inputs[n] for n in dtypes}, event.batch_per_request, batched)
        if not batched and event.batch_per_request != 1:
            event = EventDefinition(int(next(iter(batches[0].values())).shape[0]) if batches[0] else 1,
                                    event.requests_per_event)
        served = ServedLoad(model, version, batched, dtypes, {name: shape for name, _, shape in probe.served_inputs},
                            list(probe.served_outputs), batches)
    return served, event


def _measure_level(target: ServerTarget, served: ServedLoad, clients: int, settings: PerfSettings,
                   regions: SharedMemoryRegions | None) -> PerfLevel:
    """One concurrency level, by the settings' engine; the client engine adds the server's time split."""
    if settings.engine == "perf_analyzer":
        return _perf_analyzer_level(target, served, clients, settings)
    requests = prepare_requests(served, clients * settings.event.requests_per_event, regions)
    before = server_statistics(target.url, served.model, served.version)
    level = asyncio.run(_measure_level_async(target, served, requests, clients, settings))
    # The statistics span the warm-up too; a request's client share is only defined for one request per event.
    level.server = server_breakdown(before, server_statistics(target.url, served.model, served.version),
                                    level.latency_ms_mean if settings.event.requests_per_event == 1 else None)
    return level


# --------------------------------------------------------------------------- inline baseline


def measure_inline(run: Callable[[dict[str, np.ndarray]], Any], inputs: Mapping[str, np.ndarray], *,
                   concurrency: Sequence[int] = (1, 2, 4), duration_s: float = 5.0, warmup_s: float = 1.0,
                   event: EventDefinition | None = None, batched: bool = True, label: str = "inline") -> PerfReport:
    """The same events run in this process by ``run`` (e.g. an ONNX Runtime session), N threads at a time."""
    event = event or EventDefinition()
    batches = request_batches(inputs, event.batch_per_request, batched)
    report = PerfReport(model=label, target="in-process", engine="inline", event=event,
                        transport="inline")
    for clients in concurrency:
        latencies: list[float] = []
        lock = threading.Lock()
        errors: list[BaseException] = []
        start = time.monotonic()
        measure_from, measure_to = start + warmup_s, start + warmup_s + duration_s

        def worker(index: int) -> None:
            turn = index
            try:
                while time.monotonic() < measure_to:
                    sent = time.monotonic()
                    for _ in range(event.requests_per_event):
                        run(batches[turn % len(batches)])
                        turn += 1
                    done = time.monotonic()
                    if measure_from <= sent and done <= measure_to:
                        with lock:
                            latencies.append(done - sent)
            except BaseException as error:  # reported after join
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=warmup_s + duration_s + 120)
        if errors:
            raise errors[0]
        report.levels.append(_level(clients, duration_s, latencies, event))
    return report


# --------------------------------------------------------------------------- perf_analyzer


def find_perf_analyzer(explicit: str | None = None) -> str:
    path = explicit or shutil.which("perf_analyzer")
    if not path:
        raise DependencyMissingError("perf_analyzer is not installed (it ships in NVIDIA's tritonserver SDK container "
                                     "and the `perf-analyzer` wheel); use the default --engine client")
    return path


def perf_analyzer_input_data(batches: list[dict[str, np.ndarray]], batched: bool) -> dict[str, Any]:
    """perf_analyzer's --input-data JSON: one entry per sample (batched: rows, which -b groups per request)."""
    entries = []
    first = batches[0]
    rows = int(next(iter(first.values())).shape[0]) if batched else 1
    for row in range(min(rows, 64) if batched else 1):
        entry = {}
        for name, array in first.items():
            sample = array[row] if batched else array
            entry[name] = {"content": np.asarray(sample).reshape(-1).tolist(), "shape": list(np.shape(sample))}
        entries.append(entry)
    return {"data": entries}


def perf_analyzer_command(binary: str, target: ServerTarget, served: ServedLoad, clients: int, settings: PerfSettings,
                          input_data: Path, csv_path: Path) -> list[str]:
    """The perf_analyzer command line for one concurrency level: ``--shape`` for every variable dim (from the
    first request's sample), real data from ``input_data``, system shared memory as ``target`` says."""
    command = [binary, "-m", served.model, "-u", target.url, "-i", "grpc", "--input-data", str(input_data),
               "--concurrency-range", f"{clients}:{clients}", "--measurement-mode", "time_windows",
               "--measurement-interval", str(max(100, int(settings.duration_s * 1000))), "-f", str(csv_path)]
    if served.version:
        command += ["-x", served.version]
    if served.batched:
        command += ["-b", str(settings.event.batch_per_request)]
    sample = served.batches[0]
    for name, dims in served.input_shapes.items():
        variable = dims[1:] if served.batched else dims
        if any(d < 0 for d in variable):
            actual = list(np.shape(sample[name]))[1:] if served.batched else list(np.shape(sample[name]))
            command += ["--shape", f"{name}:{','.join(str(d) for d in actual)}"]
    if target.uses_shared_memory:
        command.append("--shared-memory=system")
    return command


def parse_perf_analyzer_csv(text: str, clients: int, duration_s: float, event: EventDefinition) -> PerfLevel:
    """One level from perf_analyzer's CSV (``Inferences/Second`` counts rows; latencies in microseconds)."""
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise DataError("perf_analyzer wrote no result rows")
    row = next((r for r in rows if str(r.get("Concurrency", "")).strip() == str(clients)), rows[-1])
    try:
        inferences_per_s = float(row["Inferences/Second"])
        latency = {k: float(row[f"p{k} latency"]) / 1e3 for k in (50, 95, 99)}
        mean = float(row.get("Avg latency") or "nan") / 1e3
    except (KeyError, ValueError) as error:
        raise DataError(f"perf_analyzer CSV lacks a column or value: {error}") from error
    requests_per_s = inferences_per_s / event.batch_per_request
    events_per_s = requests_per_s / event.requests_per_event
    events = int(round(events_per_s * duration_s))
    return PerfLevel(clients, duration_s, events, events * event.requests_per_event,
                     events * event.requests_per_event * event.batch_per_request, events_per_s, inferences_per_s,
                     requests_per_s, latency[50], latency[95], latency[99], mean)


def _perf_analyzer_level(target: ServerTarget, served: ServedLoad, clients: int, settings: PerfSettings) -> PerfLevel:
    executable = find_perf_analyzer(settings.perf_analyzer)
    with work_folder("pa") as folder_text:
        folder = Path(folder_text)
        data_path, csv_path = folder / "input.json", folder / "result.csv"
        data_path.write_text(json.dumps(perf_analyzer_input_data(served.batches, served.batched)), encoding="utf-8")
        command = perf_analyzer_command(executable, target, served, clients, settings, data_path, csv_path)
        log.info("running %s", " ".join(command))
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False,
                                  timeout=settings.duration_s * 10 + target.timeout_s + 60)
        except subprocess.TimeoutExpired as error:
            raise ServerError(f"perf_analyzer did not finish for {clients} client(s)") from error
        if done.returncode != 0 or not csv_path.is_file():
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ServerError(f"perf_analyzer failed (exit {done.returncode}): {last[0]}")
        return parse_perf_analyzer_csv(csv_path.read_text(encoding="utf-8"), clients, settings.duration_s,
                                       settings.event)


# --------------------------------------------------------------------------- outputs


def plot_levels(reports: Sequence[PerfReport], path: Path, title: str = "Throughput versus simultaneous clients") -> Path:
    """events/s versus clients, one line per report, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_output_folder(path)
    split = [level for report in reports[:1] for level in report.levels if level.server] if len(reports) == 1 else []
    if split:
        figure, (axis, parts) = plt.subplots(1, 2, figsize=(11.0, 4.4))
        _plot_breakdown(parts, split)
    else:
        figure, axis = plt.subplots(figsize=(6.4, 4.4))
    for report in reports:
        xs = [level.clients for level in report.levels]
        ys = [level.events_per_s for level in report.levels]
        label = report.model if "(" in report.model else f"{report.model} ({report.engine})"
        axis.plot(xs, ys, marker="o", label=label)
    axis.set_xscale("log", base=2)
    values = [level.events_per_s for report in reports for level in report.levels if level.events_per_s > 0]
    if values and max(values) / min(values) > 20:  # several models of very different cost on one plot
        axis.set_yscale("log")
    ticks = sorted({level.clients for report in reports for level in report.levels})
    axis.set_xticks(ticks, [str(t) for t in ticks])
    axis.set_xlabel("simultaneous clients")
    axis.set_ylabel("events / s")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    figure.tight_layout()
    with atomic_path(Path(path), suffix=".png.tmp") as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return Path(path)


def _plot_breakdown(axis: Any, levels: Sequence[PerfLevel]) -> None:
    """Stacked µs per request, per client count: where the served time goes."""
    positions = np.arange(len(levels))
    bottom = np.zeros(len(levels))
    for key, label in zip(BREAKDOWN_KEYS, BREAKDOWN_HEADERS, strict=True):
        values = np.array([level.server.get(key, math.nan) if level.server else math.nan for level in levels])
        values = np.nan_to_num(values, nan=0.0)
        axis.bar(positions, values, bottom=bottom, label=label)
        bottom += values
    axis.set_xticks(positions, [str(level.clients) for level in levels])
    axis.set_xlabel("simultaneous clients")
    axis.set_ylabel("µs per request")
    axis.set_title("where a request's time goes")
    axis.legend(fontsize=8, loc="best")


def write_perf_outputs(report: PerfReport, json_path: Path | None = None, plot_path: Path | None = None) -> list[Path]:
    written = []
    if json_path is not None:
        check_output_folder(json_path)
        atomic_write_text(Path(json_path), json.dumps(report.to_dict(), indent=2) + "\n")
        written.append(Path(json_path))
    if plot_path is not None:
        written.append(plot_levels([report], Path(plot_path), title=f"{report.model}: events/s versus clients"))
    return written
