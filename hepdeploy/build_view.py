"""What a running build shows: a live grid in a terminal, one line per finished step elsewhere.

The build tells a view four things (:class:`BuildEvents`): the steps it plans for a model, a step
started, a step's own count advanced (tune evaluation k of N), a step finished (its
:class:`~hepdeploy.steps.StepResult`). :class:`BuildProgress` keeps that state and renders it
(rows: models; columns: the kinds of step; a mark per step in each cell; elapsed time and ETA);
:class:`LiveView` puts it on a terminal with ``rich.live``, :class:`LineView` writes one line per
finished step (CI logs). Nothing here runs a step: the state can be fed and rendered without a
terminal.

The ETA comes from :class:`StepTimes`: each step's seconds in the earlier builds into the same
output folder (``step-times.json``, folded from each ``build-summary.json`` before a build
overwrites it); a step never timed there takes the mean of the same step in other models, else
a rough default per kind of step. The planned steps come from the spec (its variants), so the
number of steps, not only their times, is known before they run.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from hepdeploy.fsutil import atomic_write_text
from hepdeploy.steps import StepResult

TIMES_NAME = "step-times.json"
REPOSITORY_ROW = "(repository)"
# Seconds a step of each kind takes on two cores with the reduced budget, for an output folder that has
# seen no build yet (a zoo export that trains takes longer; the next build knows).
DEFAULT_SECONDS = {"zoo-export": 30.0, "convert": 5.0, "dim-bounds": 0.5, "reference": 5.0, "optimize": 5.0,
                   "compat": 0.5, "precheck": 2.0, "validate": 8.0, "tune": 90.0, "twin": 3.0, "serving": 90.0,
                   "publish": 2.0,
                   "reports": 5.0, "triton-check": 2.0, "serve-check": 30.0, "build": 1.0}
# The columns, in the order a model's build runs them; a few headers shortened so the grid fits 100 columns.
KINDS = tuple(DEFAULT_SECONDS)
HEADERS = {"zoo-export": "export", "dim-bounds": "dims", "triton-check": "check", "serve-check": "serve"}
MARKS = {"ok": "[green]✓[/green]", "failed": "[red]✗[/red]", "skipped": "[yellow]-[/yellow]",
         "rejected": "[magenta]⊘[/magenta]"}
PENDING, RUNNING = "[dim]·[/dim]", "[cyan]▸[/cyan]"
SHORT_REASON = 100
# Ok steps whose reason a user needs at a glance: what was published, which variant is the CPU twin, the
# serving numbers `triton: {serving: auto}` chose.
TELLING_OK_STEPS = ("publish", "twin", "serving")


def step_kind(step: str) -> str:
    """``validate:fp16`` -> ``validate``: the column a step is shown in."""
    return step.split(":", 1)[0]


def short_reason(result: StepResult, width: int = SHORT_REASON) -> str:
    """What a line or the final table says about a step: a verdict's outcome (PASS, FAIL, UNDECIDED: the
    reasons are in the reports), nothing more for an ok step (but what was published and the twin chosen),
    else the first ``width`` characters of why."""
    outcome = result.details.get("outcome") or result.details.get("tuning_verdict")
    if outcome and result.status in ("ok", "rejected") and step_kind(result.step) in ("validate", "tune"):
        return str(outcome)
    if result.status == "ok" and step_kind(result.step) not in TELLING_OK_STEPS:
        return ""
    reason = result.reason.splitlines()[0] if result.reason else ""
    if result.status == "ok":  # what was chosen, without the measurements behind it
        reason = reason.split(" (", 1)[0]
    return reason if len(reason) <= width else reason[: width - 1] + "…"


def step_line(model: str, result: StepResult) -> str:
    """``facile  validate:fp16  ok  PASS  3.1 s``: one finished step, for a log."""
    seconds = result.details.get("seconds")
    parts = [model, result.step, result.status, short_reason(result),
             f"{seconds:.1f} s" if isinstance(seconds, (int, float)) else ""]
    return "  ".join(part for part in parts if part)


def clock_text(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class StepTimes:
    """Seconds per model per step from earlier builds into one output folder (the latest time wins:
    caches warm up, so the last build is the best guess for the next)."""

    seconds: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_folder(cls, out_dir: Path, summary_name: str) -> StepTimes:
        """The times kept in ``out_dir``, with the last build's summary (about to be overwritten) folded in."""
        times = cls()
        kept = out_dir / TIMES_NAME
        for path, fold in ((kept, times._fold_times), (out_dir / summary_name, times._fold_summary)):
            try:
                fold(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError, AttributeError, KeyError):
                continue  # no earlier build, or a file cut short: the ETA falls back on the defaults
        return times

    def _fold_times(self, data: dict[str, Any]) -> None:
        for model, steps in data.get("seconds", {}).items():
            self.seconds.setdefault(model, {}).update({k: float(v) for k, v in steps.items()})

    def _fold_summary(self, summary: dict[str, Any]) -> None:
        rows = [(m["name"], m["steps"]) for m in summary.get("models", [])]
        rows.append((REPOSITORY_ROW, summary.get("repository_steps", [])))
        for model, steps in rows:  # a model the last build ran: its steps then, not those of older builds
            timed = {s["step"]: s.get("details", {}).get("seconds") for s in steps}
            self.seconds[model] = {k: float(v) for k, v in timed.items() if isinstance(v, (int, float))}

    def save(self, out_dir: Path) -> Path:
        return atomic_write_text(out_dir / TIMES_NAME, json.dumps({"seconds": self.seconds}, indent=1) + "\n")

    def recorded(self, model: str) -> list[str]:
        """The steps an earlier build of ``model`` ran (a tune step the spec alone cannot foresee)."""
        return list(self.seconds.get(model, {}))

    def estimate(self, model: str, step: str) -> float:
        """Seconds ``step`` of ``model`` should take."""
        if step in self.seconds.get(model, {}):
            return self.seconds[model][step]
        elsewhere = [steps[step] for steps in self.seconds.values() if step in steps]
        if elsewhere:
            return sum(elsewhere) / len(elsewhere)
        return DEFAULT_SECONDS.get(step_kind(step), 5.0)


class BuildEvents(Protocol):
    """What a build tells whoever shows it."""

    def plan(self, model: str, steps: list[str]) -> None: ...
    def started(self, model: str, step: str) -> None: ...
    def advanced(self, model: str, step: str, done: int, total: int) -> None: ...
    def finished(self, model: str, result: StepResult) -> None: ...


@dataclass
class ModelRow:
    planned: list[str] = field(default_factory=list)
    results: dict[str, StepResult] = field(default_factory=dict)
    running: str | None = None
    running_since: float = 0.0
    count: tuple[int, int] | None = None  # the running step's own progress: done of total


@dataclass
class BuildProgress:
    """The state of a build as its events arrive; :meth:`render` draws it (a rich renderable)."""

    times: StepTimes = field(default_factory=StepTimes)
    clock: Callable[[], float] = time.monotonic
    rows: dict[str, ModelRow] = field(default_factory=dict)
    start: float | None = None

    def __post_init__(self) -> None:
        self.start = self.clock() if self.start is None else self.start

    def plan(self, model: str, steps: list[str]) -> None:
        row = self.rows.setdefault(model, ModelRow())
        row.planned = list(dict.fromkeys([*steps, *self.times.recorded(model), *row.results]))

    def started(self, model: str, step: str) -> None:
        row = self.rows.setdefault(model, ModelRow())
        if step not in row.planned:
            row.planned.append(step)
        row.running, row.running_since, row.count = step, self.clock(), None

    def advanced(self, model: str, step: str, done: int, total: int) -> None:
        row = self.rows.setdefault(model, ModelRow())
        if row.running == step:
            row.count = (done, total)

    def finished(self, model: str, result: StepResult) -> None:
        row = self.rows.setdefault(model, ModelRow())
        if result.step not in row.planned:
            row.planned.append(result.step)
        row.results[result.step] = result
        if row.running == result.step:
            row.running, row.count = None, None

    def elapsed(self) -> float:
        return self.clock() - (self.start or 0.0)

    def remaining(self) -> float:
        """Seconds the steps not finished yet should take. Models are built one after the other: once a later
        one has begun, an earlier one's steps that did not run (it stopped early) are not waited for."""
        rows = list(self.rows.items())
        begun = [i for i, (_, row) in enumerate(rows) if row.results or row.running]
        total = 0.0
        for model, row in rows[begun[-1] if begun else 0:]:
            for step in row.planned:
                if step in row.results:
                    continue
                seconds = self.times.estimate(model, step)
                if step == row.running:
                    seconds = max(seconds - (self.clock() - row.running_since), 0.0)
                total += seconds
        return total

    def kinds(self) -> list[str]:
        seen = {step_kind(s) for row in list(self.rows.values()) for s in [*row.planned, *row.results]}
        return [k for k in KINDS if k in seen] + sorted(seen - set(KINDS))

    def cell(self, row: ModelRow, kind: str) -> str:
        marks = []
        for step in row.planned:
            if step_kind(step) != kind:
                continue
            result = row.results.get(step)
            marks.append(MARKS[result.status] if result else RUNNING if step == row.running else PENDING)
        return "".join(marks)

    def now_text(self) -> str:
        """``now: facile tune:int8-cpu 0:20 (3/20)``: the running step, its time so far and its own count."""
        running = []
        for model, row in list(self.rows.items()):
            if row.running is not None:
                text = f"{model} {row.running} {clock_text(self.clock() - row.running_since)}"
                running.append(text + (f" ({row.count[0]}/{row.count[1]})" if row.count is not None else ""))
        return "now: " + ("; ".join(running) or "-")

    def headline(self) -> str:
        basis = "from earlier builds" if self.times.seconds else "rough: no earlier build in this folder"
        return f"elapsed {clock_text(self.elapsed())}  ETA ~{clock_text(self.remaining())} ({basis})"

    def render(self) -> Any:  # a rich renderable: the headline above the grid
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        kinds = self.kinds()
        table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0))
        table.add_column("model", no_wrap=True)
        for kind in kinds:
            header = HEADERS.get(kind, kind)
            table.add_column(header, no_wrap=True, min_width=len(header))
        for model, row in list(self.rows.items()):  # rich redraws from its own thread
            table.add_row(model, *(self.cell(row, kind) for kind in kinds))
        return Group(Text(f"hepdeploy build  {self.headline()}", style="bold"), table,
                     Text(self.now_text(), overflow="ellipsis", no_wrap=True))


class LineView:
    """One line per finished step on ``stream``: what a CI log gets."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def plan(self, model: str, steps: list[str]) -> None:
        pass

    def started(self, model: str, step: str) -> None:
        pass

    def advanced(self, model: str, step: str, done: int, total: int) -> None:
        pass

    def finished(self, model: str, result: StepResult) -> None:
        print(step_line(model, result), file=self.stream, flush=True)

    def __enter__(self) -> LineView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class LiveView:
    """The build's grid, redrawn in place on a terminal (``rich.live``) while the build runs."""

    def __init__(self, progress: BuildProgress, console: Any = None) -> None:  # console: a rich Console
        from rich.console import Console

        self.progress = progress
        self.console = console if console is not None else Console(stderr=True)
        self._live: Any = None

    def __enter__(self) -> LiveView:
        from rich.live import Live

        self._live = Live(self, console=self.console, refresh_per_second=2, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def __rich__(self) -> Any:  # rich asks again at every refresh, so the clocks move between events
        return self.progress.render()

    def plan(self, model: str, steps: list[str]) -> None:
        self.progress.plan(model, steps)

    def started(self, model: str, step: str) -> None:
        self.progress.started(model, step)

    def advanced(self, model: str, step: str, done: int, total: int) -> None:
        self.progress.advanced(model, step, done, total)

    def finished(self, model: str, result: StepResult) -> None:
        self.progress.finished(model, result)
