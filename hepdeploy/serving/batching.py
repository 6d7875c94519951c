"""Batching from a queue model: Triton's dynamic batcher simulated over Poisson arrivals and a measured t(b).

Requests of ``rows_per_request`` rows arrive as a Poisson process. An idle instance takes the queue's
requests up to ``max_batch_size`` rows (a request is never split). When a preferred size (or, without
preferred sizes, the max) cannot be formed from what is queued, it waits up to ``max_queue_delay`` after
the oldest queued request for more; a batch of b rows then takes t(b). The simulation is seeded, so a
prediction is a pure function of its arguments, and the search over configurations is deterministic: the
same t(b), rate and budget give the same choice on every machine.

t(b) is a plain function of the rows (then exact) or a measured LatencyCurve, whose spread between p50 and
p99 is drawn (seeded) for every batch. What the model leaves out, said once here: the time to move tensors to
and from the server.
"""
from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hepdeploy.errors import BadInputError

TimeOfRows = Callable[[int], float]

DEFAULT_REQUESTS = 20_000
# Queue delays tried, as fractions of the budget (0 is always tried): a delay near the budget leaves no
# time for the batch itself.
DELAY_FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)


@dataclass(frozen=True)
class BatchingConfig:
    """What a Triton config sets for batching and instances."""

    max_batch_size: int
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    instances: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.instances < 1 or self.max_queue_delay_us < 0:
            raise BadInputError(f"batching config {self}: max_batch_size and instances >= 1, delay >= 0")
        if any(p < 1 or p > self.max_batch_size for p in self.preferred_batch_size):
            raise BadInputError(f"preferred sizes {list(self.preferred_batch_size)} must lie in 1..max_batch_size "
                                f"{self.max_batch_size}")


@dataclass(frozen=True)
class Prediction:
    """Predicted request latency (queue + compute) and the instances' busy share."""

    p50_s: float
    p99_s: float
    utilisation: float


@dataclass
class BatchingChoice:
    """The chosen batching, its predicted latency at the rate, and why each number is what it is."""

    max_batch_size: int
    preferred_batch_size: list[int]
    max_queue_delay_us: int
    instances: int
    predicted_p50_s: float
    predicted_p99_s: float
    throughput_per_s: float  # requests per second the chosen config carries at most (t(b) at its largest batch)
    why: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> BatchingConfig:
        return BatchingConfig(self.max_batch_size, tuple(self.preferred_batch_size), self.max_queue_delay_us,
                              self.instances)


@dataclass(frozen=True)
class SearchGrid:
    """What the search tries: queue delays as fractions of the budget, and requests simulated per config."""

    delay_fractions: tuple[float, ...] = DELAY_FRACTIONS
    requests: int = DEFAULT_REQUESTS
    spread: bool = True  # draw t(b)'s measured spread when t(b) is a LatencyCurve


Z99 = 2.3263  # the standard normal's 99th percentile


@dataclass(frozen=True)
class ServiceTime:
    """t(b) as the simulation draws it: the median, and the spread of ln t (None: exactly the median).

    From a :class:`~hepdeploy.serving.latency.LatencyCurve` (anything with ``seconds(batch, quantile)``) the
    spread is log-normal through the measured p50 and p99, so the prediction's tail carries t(b)'s own tail;
    from a plain function of the rows, t(b) is exact."""

    median: TimeOfRows
    sigma: TimeOfRows | None = None

    @classmethod
    def of(cls, tb: TimeOfRows | ServiceTime, spread: bool = True) -> ServiceTime:
        if isinstance(tb, ServiceTime):
            return tb if spread else cls(tb.median)
        seconds = getattr(tb, "seconds", None)
        if seconds is None or not spread:
            return cls(functools.lru_cache(maxsize=None)(tb))
        return cls(functools.lru_cache(maxsize=None)(lambda b: seconds(b, "p50")),
                   functools.lru_cache(maxsize=None)(
                       lambda b: max(0.0, math.log(seconds(b, "p99") / seconds(b, "p50"))) / Z99))


def service_noise(seed: int, batches: int) -> np.ndarray:
    """The standard normal draws that spread each batch's t(b), seeded apart from the arrivals."""
    return np.random.default_rng([seed, 1]).standard_normal(batches)


def poisson_arrivals(rate_per_s: float, requests: int, seed: int) -> np.ndarray:
    """Arrival times (s) of ``requests`` requests of a Poisson process at ``rate_per_s``, seeded."""
    if rate_per_s <= 0 or requests < 1:
        raise BadInputError(f"rate {rate_per_s}/s and requests {requests} must be positive")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_per_s, size=requests)
    return np.cumsum(gaps)


def _per_request_count(tb: TimeOfRows, rows_per_request: int, most_requests: int) -> list[float]:
    """tb(k * rows) for k = 0..most_requests (index k)."""
    return [0.0, *(float(tb(k * rows_per_request)) for k in range(1, most_requests + 1))]


def _requests_to_send(queued: int, cap: int, preferred: Sequence[int], waited_out: bool) -> int:
    """How many of ``queued`` requests the batcher sends now: the max when it can, else the largest preferred
    size that fits, else everything once the delay is over (0: keep waiting)."""
    if queued >= cap:
        return cap
    fitting = [p for p in preferred if p <= queued]
    if fitting:
        return max(fitting)
    return queued if waited_out else 0


def simulate(service: ServiceTime, arrivals: np.ndarray, rows_per_request: int, config: BatchingConfig,
             noise: np.ndarray | None = None, give_up_above_s: float | None = None) -> tuple[np.ndarray, float]:
    """Each request's latency and the instances' busy share, by discrete events over ``arrivals``.

    The n-th batch takes its median t(b) times exp(sigma(b) * noise[n]) when the service has a spread. With
    ``give_up_above_s``, stops as soon as more than 1 % of all requests exceed it (their p99 then does too)
    and returns the latencies so far."""
    cap = config.max_batch_size // rows_per_request
    if cap < 1:
        raise BadInputError(f"max_batch_size {config.max_batch_size} is below one request's {rows_per_request} rows")
    preferred = sorted({p // rows_per_request for p in config.preferred_batch_size if p >= rows_per_request})
    times = _per_request_count(service.median, rows_per_request, cap)
    spread = _per_request_count(service.sigma, rows_per_request, cap) if service.sigma and noise is not None else None
    arrive = arrivals.tolist()
    total, delay = len(arrive), config.max_queue_delay_us * 1e-6
    done_at = np.empty(total)
    free = [0.0] * config.instances
    busy, head, batches = 0.0, 0, 0
    allowed_late = int(total * 0.01)
    while head < total:
        instance = min(range(config.instances), key=free.__getitem__)
        start = max(free[instance], arrive[head])
        queued = bisect.bisect_right(arrive, start, head) - head
        send = _requests_to_send(queued, cap, preferred, delay == 0.0)
        if send == 0:  # wait for the next preferred size (or the max), at most until the oldest's delay is out
            goal = min([p for p in preferred if p > queued] or [cap])
            reached = arrive[head + goal - 1] if head + goal - 1 < total else math.inf
            start = max(start, min(arrive[head] + delay, reached))
            queued = bisect.bisect_right(arrive, start, head) - head
            send = _requests_to_send(queued, cap, preferred, True)
        took = times[send] * math.exp(spread[send] * noise[batches % len(noise)]) if spread else times[send]
        done_at[head:head + send] = start + took
        free[instance] = start + took
        busy += took
        head += send
        batches += 1
        if give_up_above_s is not None and batches % 256 == 0 and \
                np.count_nonzero(done_at[:head] - arrivals[:head] > give_up_above_s) > allowed_late:
            break
    latencies = done_at[:head] - arrivals[:head]
    span = max(max(free) - float(arrivals[0]), 1e-12)
    return latencies, min(1.0, busy / (span * config.instances))


def predict_latency(curve_or_tb: TimeOfRows | ServiceTime, rate_per_s: float, rows_per_request: int,
                    config: BatchingConfig, *, seed: int = 0, requests: int = DEFAULT_REQUESTS,
                    spread: bool = True) -> tuple[float, float, float]:
    """Predicted (p50 s, p99 s, utilisation) of request latency at ``rate_per_s`` requests per second (a
    LatencyCurve's spread drawn when ``spread``, see :class:`ServiceTime`)."""
    arrivals = poisson_arrivals(rate_per_s, requests, seed)
    latencies, utilisation = simulate(ServiceTime.of(curve_or_tb, spread), arrivals, rows_per_request, config,
                                      service_noise(seed, requests))
    p50, p99 = np.percentile(latencies, [50, 99])
    return float(p50), float(p99), utilisation


def batch_candidates(rows_per_request: int, max_rows_cap: int) -> list[int]:
    """max_batch_size candidates: one request's rows times 1, 2, 4, ... up to the cap."""
    if rows_per_request < 1 or max_rows_cap < rows_per_request:
        raise BadInputError(f"max_rows_cap {max_rows_cap} must hold one request of {rows_per_request} rows")
    sizes, requests = [], 1
    while requests * rows_per_request <= max_rows_cap:
        sizes.append(requests * rows_per_request)
        requests *= 2
    return sizes


def _configs(sizes: Sequence[int], delays_us: Sequence[int], instances: int) -> list[BatchingConfig]:
    """Every config the search tries at one instance count: with no delay, preferred sizes change nothing
    worth having; with one, no preferred size (wait for the max) or one of the two sizes below the max."""
    configs = []
    for index, size in enumerate(sizes):
        configs.append(BatchingConfig(size, (), 0, instances))
        for delay in delays_us:
            for preferred in [(), *((p,) for p in sizes[max(0, index - 2):index])]:
                configs.append(BatchingConfig(size, preferred, delay, instances))
    return configs


def _capacity_per_s(tb: TimeOfRows, config: BatchingConfig, rows_per_request: int) -> float:
    """Requests per second the config carries at most: every instance always busy with full batches."""
    requests = config.max_batch_size // rows_per_request
    return config.instances * requests / float(tb(requests * rows_per_request))


def choose_batching(tb: TimeOfRows | ServiceTime, rate_per_s: float, budget_s: float, rows_per_request: int, *,
                    max_rows_cap: int, instances_max: int = 1, seed: int = 0,
                    grid: SearchGrid | None = None) -> BatchingChoice:
    """The cheapest configuration (fewest instances) whose predicted p99 is within ``budget_s`` at ``rate_per_s``,
    ties broken by the lowest p99, then the smallest delay, then the smallest max batch. Raises BadInputError
    when none is (the message says the best p99 found)."""
    grid = grid or SearchGrid()
    service = ServiceTime.of(tb, grid.spread)  # every config reads the same t(k rows): each once
    if budget_s <= 0 or instances_max < 1:
        raise BadInputError(f"budget {budget_s} s must be > 0 and instances_max {instances_max} >= 1")
    sizes = batch_candidates(rows_per_request, max_rows_cap)
    delays = sorted({max(1, round(budget_s * f * 1e6)) for f in grid.delay_fractions})
    arrivals = poisson_arrivals(rate_per_s, grid.requests, seed)  # the same arrivals for every config
    noise = service_noise(seed, grid.requests)
    best_seen = math.inf
    for instances in range(1, instances_max + 1):
        ranked = []
        for config in _configs(sizes, delays, instances):
            if _capacity_per_s(service.median, config, rows_per_request) <= rate_per_s:
                continue  # the queue would grow without bound
            latencies, utilisation = simulate(service, arrivals, rows_per_request, config, noise, budget_s)
            if len(latencies) < len(arrivals):
                continue
            p50, p99 = (float(v) for v in np.percentile(latencies, [50, 99]))
            best_seen = min(best_seen, p99)
            if p99 <= budget_s:
                key = (p99, config.max_queue_delay_us, config.max_batch_size, len(config.preferred_batch_size))
                ranked.append((key, config, p50, utilisation))
        if ranked:
            key, config, p50, utilisation = min(ranked, key=lambda item: item[0])
            return _choice(service, config, (p50, key[0], utilisation), rate_per_s, budget_s, rows_per_request,
                           considered=len(ranked))
    found = f"the best p99 found is {best_seen * 1e3:.3g} ms" if math.isfinite(best_seen) else \
        "every config's queue grows without bound or more than 1 % of its requests exceed the budget"
    found += f"; one request alone takes t({rows_per_request}) = {service.median(rows_per_request) * 1e3:.3g} ms"
    raise BadInputError(f"no batching config with up to {instances_max} instance(s) keeps p99 within "
                        f"{budget_s * 1e3:.3g} ms at {rate_per_s:.4g} requests/s of {rows_per_request} rows; {found}")


def _choice(service: ServiceTime, config: BatchingConfig, predicted: tuple[float, float, float], rate_per_s: float,
            budget_s: float, rows_per_request: int, considered: int) -> BatchingChoice:
    p50, p99, utilisation = predicted
    capacity = _capacity_per_s(service.median, config, rows_per_request)
    tb = service.median
    at = f"at {rate_per_s:.4g} requests/s of {rows_per_request} rows"
    fewer = "the fewest instances" if config.instances == 1 else \
        f"fewer than {config.instances} instances cannot keep p99 within {budget_s * 1e3:.3g} ms {at}"
    why = {
        "max_batch_size": f"{config.max_batch_size} rows ({_requests(config.max_batch_size // rows_per_request)}): of "
                          f"{considered} configs within the budget {at}, the lowest predicted p99 "
                          f"({p99 * 1e3:.3g} ms); t({config.max_batch_size}) = {tb(config.max_batch_size) * 1e3:.3g} ms",
        "preferred_batch_size": (f"{list(config.preferred_batch_size)}: sent without waiting once queued"
                                 if config.preferred_batch_size else
                                 "none: the batcher waits for max_batch_size or the queue delay"),
        "max_queue_delay_microseconds": f"{config.max_queue_delay_us} µs: "
                                        + ("no wait gave the lowest p99" if config.max_queue_delay_us == 0 else
                                           "waiting this long for fuller batches gave the lowest p99 on the delay grid"),
        "instances": f"{config.instances}: {fewer}; utilisation {utilisation:.0%}",
        "predicted": f"p50 {p50 * 1e3:.3g} ms, p99 {p99 * 1e3:.3g} ms (budget {budget_s * 1e3:.3g} ms) from a seeded "
                     "simulation of Triton's dynamic batcher over Poisson arrivals and t(b)"
                     + (", its measured spread drawn for every batch" if service.sigma else ""),
        "throughput_per_s": f"{capacity:.4g} requests/s at most: every instance busy with full batches",
    }
    return BatchingChoice(config.max_batch_size, list(config.preferred_batch_size), config.max_queue_delay_us,
                          config.instances, p50, p99, capacity, why)


def _requests(count: int) -> str:
    return f"{count} request" + ("" if count == 1 else "s")
