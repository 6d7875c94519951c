"""``hepdeploy profile``: a serving configuration from the data and a latency budget, every number with its why.

The chain: the data's multiplicities give each dynamic dim's min/opt/max and K bucketed profiles
(:mod:`~hepdeploy.serving.shapes`); t(b) is measured (:mod:`~hepdeploy.serving.latency`) through the local
server's Python-backend twin when a server can run here (or through ``--server``), else in ONNX Runtime
inline; a deterministic queue model chooses the batching (:mod:`~hepdeploy.serving.batching`) within the
instances the cores and memory allow (:mod:`~hepdeploy.serving.instances`); the choice is checked against the
profiles and the data (:mod:`~hepdeploy.serving.consistency`); then the twin is published with the chosen
config, loaded, and confirmed by open-loop load at the rate, and the SONIC figure (clients one instance
carries within the budget) and KEDA's queue threshold are measured (:mod:`~hepdeploy.serving.confirm`).
:mod:`~hepdeploy.serving.report` writes ``serving.yaml``, ``serving-report.json``, ``serving.md`` and the plots.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
from hepdeploy.backend.triton import ServerTarget, TritonRunner
from hepdeploy.data import load_tensors, read_root_events
from hepdeploy.errors import BadInputError, DataError, DependencyMissingError, SpecError
from hepdeploy.lifetime import work_folder
from hepdeploy.ntuple import is_root_source
from hepdeploy.serving.batching import BatchingChoice, choose_batching
from hepdeploy.serving.confirm import (
    ClientsLoad,
    OpenLoopLoad,
    clients_per_instance,
    confirm_against_server,
    keda_queue_threshold,
)
from hepdeploy.serving.consistency import serving_problems
from hepdeploy.serving.instances import choose_instances, instance_memory_bytes
from hepdeploy.serving.latency import LatencyCurve, data_inputs_for, measure_latency_curve
from hepdeploy.serving.report import ProfileReport, write_profile_outputs
from hepdeploy.serving.revalidate import serving_batches, validate_at_batches
from hepdeploy.serving.shapes import DimPlan, ShapeProfile, bucket_profiles, dim_multiplicities, plan_dims
from hepdeploy.spec import CpuTwin, DynamicBatching, InstanceGroup, ModelSpec, TritonSpec
from hepdeploy.triton.repository import publish_python_twin
from hepdeploy.triton.server import TritonServer, bundled_platform_problem, bundled_server

log = logging.getLogger("hepdeploy.serving.profile")

# Rows of the data read to drive t(b) and the live load (requests cut from them cyclically).
DATA_ROWS = 4096
# The largest batch tried, in requests of one event: a batch past this waits for too many events.
MAX_REQUESTS_PER_BATCH = 4
# Requests the confirmation wants for its p99 (perf_analyzer's rule of thumb: the tail needs a thousand).
P99_REQUESTS = 1000
# What one more shape profile costs, in padded entries per event, as a share of a typical event's entries.
PROFILE_COST = 0.05


@dataclass(frozen=True)
class ProfileSettings:
    """What the profile aims at and how long it measures.

    ``budget_s``: the p99 latency budget of one request (one event's natural batch); ``rate_per_s``: events per
    second the server must carry (None: half of what one instance carries one event at a time); ``coverage``
    of the data's events that must fit the dims (the rest truncated or refused, as the spec's reading says); ``profiles``: K
    bucketed shape profiles; ``live``: start the local server (when none is given) to measure t(b) through
    it and confirm; ``sonic``: also measure the clients one instance carries."""

    budget_s: float = 0.1
    rate_per_s: float | None = None
    coverage: float = 0.999
    profiles: int = 2
    seed: int = 0
    live: bool = True
    sonic: bool = True
    tb_seconds: float = 8.0
    confirm_seconds: float | None = None  # None: long enough for 1,000 requests (a p99), 10 to 60 s
    clients: ClientsLoad | None = None  # None: the defaults at the event's rows

    def __post_init__(self) -> None:
        if not self.budget_s > 0 or (self.rate_per_s is not None and not self.rate_per_s > 0):
            raise BadInputError("the latency budget and the rate must be > 0")
        if not 0 < self.coverage <= 1 or self.profiles < 1:
            raise BadInputError(f"coverage {self.coverage} must lie in (0, 1] and profiles {self.profiles} >= 1")


@dataclass(frozen=True)
class ProfileRequest:
    """Profile ``model`` (an ONNX file) described by ``spec`` on ``data`` (.npz or ROOT through the spec's
    mapping) into ``out_dir``. ``server``: a running server that serves the model as ``served_model`` (its
    config is its own: the choice is compared, not applied); None: the bundled local server, when it runs."""

    spec: ModelSpec
    model: Path
    data: Path
    out_dir: Path
    settings: ProfileSettings = field(default_factory=ProfileSettings)
    server: ServerTarget | None = None
    served_model: str | None = None


def event_rows(spec: ModelSpec) -> tuple[int, str]:
    """Rows of one request: one event's natural batch, from the spec's ``triton.perf``."""
    rows = spec.triton.perf.batch_per_request
    return rows, (f"one event's natural batch: {rows} rows (triton.perf.batch_per_request)" if rows > 1 else
                  "one event = one row (triton.perf.batch_per_request unset)")


def data_inputs(spec: ModelSpec, data: Path, rows: int = DATA_ROWS) -> dict[str, np.ndarray]:
    """The model inputs of up to ``rows`` events of ``data`` (ROOT through the spec's mapping, padded)."""
    names = [t.name for t in spec.inputs]
    if is_root_source(data):
        arrays = read_root_events(data, list(spec.inputs), spec.data, targets=False)
    else:
        arrays = load_tensors(Path(data))
    absent = [n for n in names if n not in arrays]
    if absent:
        raise DataError(f"{data}: no input(s) {', '.join(absent)} that {spec.name} takes")
    return {n: np.ascontiguousarray(np.asarray(arrays[n])[:rows]) for n in names}


def profile_model(request: ProfileRequest) -> ProfileReport:
    """Profile, choose, check, confirm and write; see the module docstring. Raises SpecError (after writing
    the report) when the chosen configuration does not fit the shape profiles or the data."""
    settings, spec = request.settings, request.spec
    rows, rows_why = event_rows(spec)
    counts = dim_multiplicities(spec, request.data)
    plans = plan_dims(spec, counts, model=request.model, coverage=settings.coverage)
    profiles, profiles_why = _profiles(counts, plans, settings.profiles)
    inputs = data_inputs(spec, request.data)
    notes: list[str] = []
    with _measuring_server(request, notes) as live:
        curve = _measure_tb(request, inputs, rows, live)
        rate, choice, search, why = _choose(request, curve, inputs, rows)
        problems = serving_problems(choice.max_batch_size, choice.preferred_batch_size,
                                    _with_batch_range(spec, profiles), {**plans, _batch_dim(spec): (rows, rows)},
                                    batch_dim=_batch_dim(spec))
        shape_checks = [] if problems else validate_at_batches(
            {"profiled": request.model}, inputs, batches_of(spec, choice, rows), spec.validation.chunk_size,
            spec.validation.tolerances)
        problems += [f"not publishable at its shapes: {c.line()}" for c in shape_checks if not c.passed]
        report = ProfileReport(
            model=spec.triton.model_name or spec.name, data=str(request.data), budget_s=settings.budget_s,
            rate_per_s=rate, rows_per_request=rows, dims=plans, profiles=profiles, multiplicities=counts,
            curve=curve, choice=choice, instances=choice.instances, problems=problems,
            why={**choice.why, **why, "rows_per_request": rows_why, "profiles": profiles_why},
            notes=notes, batch_dims=[_batch_dim(spec)], search=search, shape_checks=shape_checks)
        if live is not None and not problems:
            _confirm(request, report, inputs, live)
    report.files = write_profile_outputs(report, request.out_dir)
    if problems:
        raise SpecError(f"{report.model}: the chosen configuration does not fit ({'; '.join(problems)}); "
                        f"nothing to publish (report: {request.out_dir / 'serving.md'})")
    return report


@dataclass
class _Live:
    """A server the profile measures through: where it is and how its models are published."""

    target: ServerTarget
    publish: Callable[[TritonSpec, str], str] | None  # (triton settings, name) -> served name; None: fixed
    served: str


@contextlib.contextmanager
def _measuring_server(request: ProfileRequest, notes: list[str]) -> Iterator[_Live | None]:
    """The given server, else the bundled local one on a temporary repository (started with the t(b) twin:
    no batching delay, batches up to the cap), else None (t(b) inline, nothing confirmed: said in ``notes``)."""
    spec = request.spec
    name = spec.triton.model_name or spec.name
    if request.server is not None:
        notes.append(f"t(b) and the confirmation go through {request.served_model or name} on {request.server.url}; "
                     "its config is the server's own (compare it with serving.yaml)")
        yield _Live(request.server, None, request.served_model or name)
        return
    problem = bundled_platform_problem() if request.settings.live else "not asked for (live off)"
    if problem is None:
        try:
            binary = bundled_server(install=True)
        except DependencyMissingError as error:
            problem = str(error).splitlines()[0]
    if problem is not None:
        notes.append(f"no local server ({problem}): t(b) measured inline in ONNX Runtime, the choice is not "
                     "confirmed against a server")
        yield None
        return
    with work_folder("profile") as folder:
        repo = Path(folder) / "repository"

        def publish(triton: TritonSpec, as_name: str) -> str:
            # A Python-backend twin runs on CPU instances, as many as its cpu_twin count says.
            count = triton.instance_group[0].count if triton.instance_group else 1
            twin_spec = spec.model_copy(update={"triton": triton.model_copy(update={
                "warmup": False, "cpu_twin": CpuTwin(count=count, threads=1)})})
            return publish_python_twin(repo, request.model, model_name=as_name, spec=twin_spec).name

        rows, _ = event_rows(spec)
        measured = publish(TritonSpec(max_batch_size=_rows_cap(spec, rows), dynamic_batching=DynamicBatching(
            max_queue_delay_microseconds=0), instance_group=[InstanceGroup(count=1, kind="KIND_CPU")]), f"{name}_tb")
        with TritonServer(repo, binary, load=[measured]) as server:
            notes.append("t(b) measured through the local Triton server's Python-backend twin (ONNX Runtime in "
                         "the Python backend, one instance, no batching delay)")
            yield _Live(ServerTarget(server.grpc_url, timeout_s=60.0), _loader(server, publish), measured)


def _loader(server: TritonServer, publish: Callable[[TritonSpec, str], str]) -> Callable[[TritonSpec, str], str]:
    def publish_and_load(triton: TritonSpec, name: str) -> str:
        served = publish(triton, name)
        loaded = server.load_model(served)
        if not loaded.loaded:
            raise SpecError(f"{served}: the local server refused the chosen config: {loaded.message}")
        return served

    return publish_and_load


def _measure_tb(request: ProfileRequest, inputs: dict[str, np.ndarray], rows: int, live: _Live | None) -> LatencyCurve:
    """t(b) at one event's rows times 1, 2, 4 ... up to the cap, through ``live``'s twin, else inline; a size
    past the first whose p50 alone exceeds the budget is not measured (no config within the budget uses it)."""
    spec, settings = request.spec, request.settings
    inputs_for = data_inputs_for(inputs, seed=settings.seed)
    with contextlib.ExitStack() as stack:
        if live is not None:
            runner = stack.enter_context(TritonRunner(live.target, live.served))
            where = f"through the Triton server: {live.served} on {live.target.url}"
        else:
            runner = stack.enter_context(OnnxRuntimeRunner(request.model, intra_op_threads=1))
            where = "ONNX Runtime inline, one thread (as one Python-backend instance)"
        points, why = [], ""
        for batch in (rows * k for k in _powers(_rows_cap(spec, rows) // rows)):
            measured = measure_latency_curve(runner.run, inputs_for, [batch], max_seconds=settings.tb_seconds)
            points += measured.points
            why = measured.why
            if measured.points[-1].p50_s > settings.budget_s:
                why += f"; larger sizes than {batch} not measured: t({batch}) alone exceeds the budget"
                break
    return LatencyCurve(points=points, where=where, why=why)


def _choose(request: ProfileRequest, curve: LatencyCurve, inputs: dict[str, np.ndarray],
            rows: int) -> tuple[float, BatchingChoice, dict[str, str], dict[str, int]]:
    """The rate, the batching choice within the instances this machine holds, why, and the search's bounds
    (with the curve and the rate they make the choice again: it is a pure function of them)."""
    settings, spec = request.settings, request.spec
    rate, rate_why = _rate(settings, curve, rows)
    cores = _cores()
    # One core stays with the server's front end, the Python-backend stubs' data movement and the clients.
    usable = max(1, cores - 1)
    allowed, instances_why = choose_instances(usable, _memory_bytes(),
                                              instance_memory_bytes(request.model, _largest(inputs, rows)),
                                              needed=usable)
    search = {"max_rows_cap": _rows_cap(spec, rows), "instances_max": allowed, "seed": settings.seed}
    choice = choose_batching(curve, rate, settings.budget_s, rows, **search)  # type: ignore[arg-type]
    return rate, choice, search, {"rate": rate_why, "instances_allowed": (
        f"at most {allowed}: {usable} of {cores} core(s) (one left to the server's front end and the clients); "
        f"memory: {instances_why.split('; ', 1)[-1]}")}


def _confirm(request: ProfileRequest, report: ProfileReport, inputs: dict[str, np.ndarray], live: _Live) -> None:
    """Publish the chosen config (the given server keeps its own), load it at the rate, then the SONIC figure
    on one instance and KEDA's threshold at its operating point."""
    settings, name = request.settings, report.model
    chosen = report.triton_spec(request.spec.triton)
    served = live.publish(chosen, name) if live.publish else live.served
    seconds = settings.confirm_seconds or min(max(10.0, P99_REQUESTS / report.rate_per_s), 60.0)
    load = OpenLoopLoad(report.rate_per_s, report.rows_per_request, seconds=seconds, seed=settings.seed)
    report.confirmation = confirm_against_server(live.target, served, inputs, report.choice, load)
    if not settings.sonic:
        report.notes.append("clients per instance not measured (sonic off)")
        return
    one = served
    if live.publish and report.instances > 1:
        one = live.publish(chosen.model_copy(update={"instance_group": [InstanceGroup(count=1, kind="KIND_CPU")]}),
                           f"{name}_one")
    clients = settings.clients or ClientsLoad(report.rows_per_request)
    report.clients = clients_per_instance(live.target, one, inputs, settings.budget_s, clients)
    level = report.clients.operating_level()
    if level is not None:
        report.keda = keda_queue_threshold(level, report.rows_per_request)
    else:
        report.notes.append("not even one client stays inside the budget: no KEDA threshold")


def _profiles(counts: dict[str, np.ndarray], plans: dict[str, DimPlan], k: int) -> tuple[list[ShapeProfile], str]:
    """K bucketed profiles over the dims; one more profile is worth PROFILE_COST of a typical event's entries
    in padding (an engine per profile costs build time and memory)."""
    if not counts:
        return [], "no dynamic dim besides the batch: one profile"
    first = next(iter(plans.values()))
    cost = PROFILE_COST * first.opt
    profiles = bucket_profiles(counts, k, cost, plans)
    return profiles, (f"{len(profiles)} profile(s) of at most {k}: the least padding plus {cost:g} padded "
                      f"entries per event per profile ({PROFILE_COST:.0%} of {first.dim}'s opt {first.opt})")


def batches_of(spec: ModelSpec, choice: BatchingChoice, rows: int) -> list[int]:
    """The batch sizes ``choice`` serves at: the batch profile's min, one request, the preferred sizes, the max."""
    return serving_batches(spec.dim_range(_batch_dim(spec)).min, rows, choice.preferred_batch_size,
                           choice.max_batch_size)


def _batch_dim(spec: ModelSpec) -> str:
    """The name of the batch axis (the inputs' first dim)."""
    names = [str(t.shape[0]) for t in spec.inputs if t.shape and isinstance(t.shape[0], str)]
    return names[0] if names else "batch"


def _with_batch_range(spec: ModelSpec, profiles: list[ShapeProfile]) -> list[ShapeProfile]:
    """Each profile with the spec's batch range (a TensorRT engine's), which max_batch_size must stay inside."""
    batch = spec.dims.get(_batch_dim(spec))
    if batch is None:
        return profiles
    return [replace(p, ranges={**p.ranges, _batch_dim(spec): batch}) for p in profiles]


def _rate(settings: ProfileSettings, curve: LatencyCurve, rows: int) -> tuple[float, str]:
    if settings.rate_per_s is not None:
        return settings.rate_per_s, f"{settings.rate_per_s:g} events/s, as asked (--rate)"
    one = float(curve.seconds(rows))
    rate = round(0.5 / one, 3 if one > 0.5 else 1)
    return rate, (f"{rate:g} events/s: half of what one instance carries one event at a time (1 / t({rows}) = "
                  f"{1 / one:.3g}/s), so batching has room to matter (give --rate for the real load)")


def _rows_cap(spec: ModelSpec, rows: int) -> int:
    """The largest batch tried: MAX_REQUESTS_PER_BATCH events, within the batch dim's max when the spec sets one."""
    cap = rows * MAX_REQUESTS_PER_BATCH
    batch = spec.dims.get(_batch_dim(spec))
    if batch is not None and batch.max is not None:
        cap = min(cap, max(rows, batch.max // rows * rows))
    return cap


def _powers(most: int) -> list[int]:
    values, k = [], 1
    while k <= max(most, 1):
        values.append(k)
        k *= 2
    if values[-1] != max(most, 1):
        values.append(max(most, 1))
    return values


def _largest(inputs: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Inputs of one full batch (the cap's worth of events' rows, cut cyclically)."""
    total = next(iter(inputs.values())).shape[0]
    index = np.arange(rows * MAX_REQUESTS_PER_BATCH) % total
    return {n: np.ascontiguousarray(v[index]) for n, v in inputs.items()}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _memory_bytes() -> int:
    """Physical memory available now (Linux: MemAvailable), else the total."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo", encoding="ascii") as handle:
            line = next(line for line in handle if line.startswith("MemAvailable:"))
            return int(line.split()[1]) * 1024
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def with_serving(spec: ModelSpec, report: ProfileReport) -> ModelSpec:
    """``spec`` with the profile's batching and instances in its triton block (``serving: auto`` resolved)."""
    return spec.model_copy(update={"triton": report.triton_spec(spec.triton).model_copy(update={"serving": None})})
