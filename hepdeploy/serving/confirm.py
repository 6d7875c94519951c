"""A chosen serving configuration confirmed against a live server, and the SONIC figure.

``confirm_against_server``: open-loop load (Poisson arrivals at the stated rate, seeded, each request one
event's rows) on the served model whose config is the chosen one; the measured p50/p99 of request latency
(from each request's *scheduled* arrival, so a client that falls behind cannot hide queueing) beside the
queue model's prediction.

``clients_per_instance``: closed-loop clients (:func:`hepdeploy.perf.run_perf`), each sending one event's
natural batch, one more client per level until the event latency's p99 leaves the budget; repeated, the
largest count inside the budget is a point (the median over repeats) and an interval (min..max over repeats).

``keda_queue_threshold``: the SuperSONIC/KEDA scaling metric (queue time per execution, in ms, as the
chart's default Prometheus query computes it) at that operating point: ``triton supersonic
--server-load-threshold`` writes it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hepdeploy.backend.triton import ServerTarget, triton_error_line
from hepdeploy.backend.triton_shm import SharedMemoryRegions
from hepdeploy.errors import BadInputError, ServerError
from hepdeploy.perf import (
    EventDefinition,
    PerfLevel,
    PerfSettings,
    PreparedRequests,
    ServedLoad,
    prepare_requests,
    probe_served,
    run_perf,
    server_breakdown,
    server_statistics,
)

log = logging.getLogger("hepdeploy.serving.confirm")

# Requests in flight that get their own output slot in shared memory; more share slots (their answers are
# not read, only timed).
MAX_OUTPUT_SLOTS = 64


@dataclass(frozen=True)
class OpenLoopLoad:
    """Poisson arrivals of ``rate_per_s`` requests of ``rows_per_request`` rows for ``seconds`` (after
    ``warmup_s`` not counted), arrival times drawn from ``seed``."""

    rate_per_s: float
    rows_per_request: int
    seconds: float = 10.0
    warmup_s: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0 or self.rows_per_request < 1 or not self.seconds > 0 or self.warmup_s < 0:
            raise BadInputError("open-loop load needs rate > 0, rows per request >= 1, seconds > 0, warm-up >= 0")

    def arrivals_s(self) -> np.ndarray:
        """Arrival times (s from the start) over warm-up + measured seconds: seeded exponential gaps."""
        rng = np.random.default_rng(self.seed)
        span = self.warmup_s + self.seconds
        gaps = rng.exponential(1.0 / self.rate_per_s, size=int(span * self.rate_per_s * 1.5) + 16)
        times = np.cumsum(gaps)
        return times[times < span]


@dataclass
class Confirmation:
    """Measured against predicted request latency at one configuration and rate."""

    model: str
    rate_per_s: float
    rows_per_request: int
    requests: int
    predicted_p50_s: float
    predicted_p99_s: float
    measured_p50_s: float
    measured_p99_s: float
    measured_mean_s: float
    max_send_lag_s: float  # how late the client sent a request after its scheduled arrival
    server: dict[str, float] | None = None  # perf's per-request time split (queue, compute ...)

    @property
    def p99_ratio(self) -> float:
        """measured p99 / predicted p99 (1 = exact)."""
        return self.measured_p99_s / self.predicted_p99_s if self.predicted_p99_s > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "p99_ratio": self.p99_ratio}


def confirm_against_server(target: ServerTarget, model: str, inputs: Mapping[str, np.ndarray], choice: Any,
                           load: OpenLoopLoad) -> Confirmation:
    """Open-loop load on ``model`` at ``target``; ``choice`` (a batching choice) gives the predicted
    p50/p99 the measurement is set beside. ``inputs``: rows the requests are cut from (cyclically)."""
    served, _ = probe_served(target, model, "", inputs, EventDefinition(load.rows_per_request), None)
    arrivals = load.arrivals_s()
    if not len(arrivals):
        raise BadInputError(f"rate {load.rate_per_s}/s over {load.seconds} s sends no request")
    with contextlib.ExitStack() as stack:
        regions = None
        if target.uses_shared_memory:
            import tritonclient.grpc as grpc_client

            client = grpc_client.InferenceServerClient(target.url)
            stack.callback(client.close)
            regions = stack.enter_context(SharedMemoryRegions(client, target.timeout_s, grpc=True))
        requests = prepare_requests(served, min(len(arrivals), MAX_OUTPUT_SLOTS), regions)
        before = server_statistics(target.url, model)
        latencies, lag = asyncio.run(_open_loop(target, served, requests, arrivals, load.warmup_s))
        after = server_statistics(target.url, model)
    measured = np.asarray(latencies)
    mean = float(measured.mean()) if len(measured) else math.nan
    result = Confirmation(
        model=model, rate_per_s=load.rate_per_s, rows_per_request=load.rows_per_request, requests=len(measured),
        predicted_p50_s=float(choice.predicted_p50_s), predicted_p99_s=float(choice.predicted_p99_s),
        measured_p50_s=float(np.percentile(measured, 50)) if len(measured) else math.nan,
        measured_p99_s=float(np.percentile(measured, 99)) if len(measured) else math.nan,
        measured_mean_s=mean, max_send_lag_s=lag, server=server_breakdown(before, after, mean * 1e3))
    log.info("%s at %.1f requests/s: p99 measured %.2f ms, predicted %.2f ms (%d requests)", model,
             load.rate_per_s, result.measured_p99_s * 1e3, result.predicted_p99_s * 1e3, result.requests)
    return result


async def _open_loop(target: ServerTarget, served: ServedLoad, requests: PreparedRequests, arrivals: np.ndarray,
                     warmup_s: float) -> tuple[list[float], float]:
    """Send one request at each arrival time without waiting for earlier answers; latencies of the requests
    that arrive after the warm-up, and the largest lag between a scheduled arrival and its send."""
    import tritonclient.grpc.aio as grpc_aio

    options = {"compression_algorithm": target.compression} if target.compression else {}
    connection = grpc_aio.InferenceServerClient(target.url)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    latencies: list[float] = []
    lag = 0.0

    async def one(index: int, due_s: float) -> None:
        nonlocal lag
        await asyncio.sleep(max(0.0, start + due_s - loop.time()))
        lag = max(lag, loop.time() - (start + due_s))
        await connection.infer(served.model, requests.inputs[index % len(requests.inputs)],
                               outputs=requests.slot_outputs[index % len(requests.slot_outputs)],
                               client_timeout=target.timeout_s, **options)
        if due_s >= warmup_s:
            latencies.append(loop.time() - (start + due_s))

    try:
        await asyncio.wait_for(asyncio.gather(*(one(k, float(t)) for k, t in enumerate(arrivals))),
                               timeout=float(arrivals[-1]) + target.timeout_s + 5)
    except asyncio.TimeoutError as error:
        raise ServerError(f"{served.model}: open-loop load did not finish within {target.timeout_s:.0f} s of its "
                          "last arrival") from error
    except Exception as error:  # InferenceServerException, grpc errors
        raise ServerError(f"{served.model} at {target.url}: inference failed under open-loop load: "
                          f"{triton_error_line(error)}") from error
    finally:
        with contextlib.suppress(Exception):  # a dead server's channel may fail to close
            await connection.close()
    return latencies, lag


# --------------------------------------------------------------------------- the SONIC figure


@dataclass(frozen=True)
class ClientsLoad:
    """Closed-loop clients, each sending one event of ``rows_per_event`` rows: ``repeats`` runs, each level
    ``seconds`` long after ``warmup_s``, at most ``max_clients``."""

    rows_per_event: int
    repeats: int = 3
    seconds: float = 3.0
    warmup_s: float = 0.5
    max_clients: int = 32

    def __post_init__(self) -> None:
        if self.rows_per_event < 1 or self.repeats < 3 or self.max_clients < 1 or not self.seconds > 0:
            raise BadInputError("clients per instance needs rows per event >= 1, >= 3 repeats, max clients >= 1, "
                                "seconds > 0")


@dataclass
class ClientsPerInstance:
    """The largest number of simultaneous clients whose event p99 stays inside the budget."""

    model: str
    budget_s: float
    rows_per_event: int
    point: int  # the median over repeats
    low: int
    high: int
    interval: str
    per_repeat: list[int]
    levels: list[list[PerfLevel]] = field(default_factory=list)  # per repeat, the levels measured

    def operating_level(self) -> PerfLevel | None:
        """A measured level at the point's client count (the last repeat that reached it)."""
        found = [level for run in self.levels for level in run if level.clients == self.point]
        return found[-1] if found else None

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "levels"},
                "levels": [[asdict(level) for level in run] for run in self.levels]}


def clients_per_instance(target: ServerTarget, model: str, event_inputs: Mapping[str, np.ndarray], budget_s: float,
                         load: ClientsLoad) -> ClientsPerInstance:
    """One more client per level until the event p99 exceeds ``budget_s``, ``load.repeats`` times; the
    served model should have one instance (that is what the figure counts)."""
    if not budget_s > 0:
        raise BadInputError(f"latency budget {budget_s} s: must be > 0")
    runs: list[list[PerfLevel]] = []
    largest: list[int] = []
    for repeat in range(load.repeats):
        levels: list[PerfLevel] = []
        within = 0
        for clients in range(1, load.max_clients + 1):
            settings = PerfSettings(concurrency=(clients,), duration_s=load.seconds, warmup_s=load.warmup_s,
                                    event=EventDefinition(load.rows_per_event))
            level = run_perf(target, model, event_inputs, settings=settings).levels[0]
            levels.append(level)
            if level.events == 0 or not level.latency_ms_p99 <= budget_s * 1e3:
                break
            within = clients
        log.info("%s repeat %d: %d client(s) inside %.1f ms", model, repeat + 1, within, budget_s * 1e3)
        runs.append(levels)
        largest.append(within)
    ordered = sorted(largest)
    return ClientsPerInstance(model=model, budget_s=budget_s, rows_per_event=load.rows_per_event,
                              point=ordered[len(ordered) // 2], low=ordered[0], high=ordered[-1],
                              interval=f"min..max over {load.repeats} repeats", per_repeat=largest, levels=runs)


@dataclass(frozen=True)
class KedaThreshold:
    """SuperSONIC's ``serverLoadThreshold`` for its default metric (queue µs per execution / 1000)."""

    threshold: int
    metric_ms: float
    why: str


def keda_queue_threshold(level: PerfLevel, rows_per_request: int) -> KedaThreshold:
    """The chart's default scaling metric at ``level`` (a measured operating point): queue time per batch
    execution in ms, from the server's statistics over that level; rounded up, at least 1 (the chart takes
    an integer)."""
    split = level.server
    if not split or not split.get("rows_per_execution"):
        raise ServerError(f"no server statistics for the level with {level.clients} client(s): the queue time "
                          "behind the threshold is unknown")
    requests_per_execution = split["rows_per_execution"] / rows_per_request
    metric_ms = split["queue_us"] * requests_per_execution / 1e3
    threshold = max(1, math.ceil(metric_ms))
    why = (f"queue time per execution at {level.clients} client(s) (the largest count inside the budget): "
           f"{split['queue_us']:.0f} µs per request x {requests_per_execution:.2f} requests per execution = "
           f"{metric_ms:.2f} ms; KEDA adds a server above {threshold} (the chart's integer, rounded up)")
    return KedaThreshold(threshold, metric_ms, why)
