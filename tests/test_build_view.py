"""The build's view: the live grid rendered from a stream of step events, the CI line per step, and the
ETA from the step times of earlier builds (hepdeploy.build_view)."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from hepdeploy.build_view import TIMES_NAME, BuildProgress, LineView, StepTimes, step_line
from hepdeploy.steps import StepResult


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _done(step: str, status: str = "ok", seconds: float = 1.0, **details: object) -> StepResult:
    reason = "why " * 40 if status != "ok" else ""
    return StepResult(step, status, reason, details={"seconds": seconds, **details})  # type: ignore[arg-type]


def _text(progress: BuildProgress) -> str:
    console = Console(record=True, force_terminal=True, width=140)
    console.print(progress.render())
    return console.export_text()


def test_the_grid_has_models_as_rows_steps_as_columns_a_mark_per_step_and_the_eta() -> None:
    times = StepTimes({"facile": {"convert": 4.0, "optimize:fp32": 2.0, "optimize:int8-cpu": 3.0,
                                  "validate:fp32": 5.0, "validate:int8-cpu": 6.0, "tune:int8-cpu": 60.0},
                       "jet_mlp": {"convert": 10.0}})
    clock = FakeClock()
    progress = BuildProgress(times, clock)
    progress.plan("facile", ["convert", "optimize:fp32", "optimize:int8-cpu", "validate:fp32", "validate:int8-cpu"])
    progress.plan("jet_mlp", ["convert", "optimize:fp32"])
    for step, status in (("convert", "ok"), ("optimize:fp32", "ok"), ("optimize:int8-cpu", "ok"),
                         ("validate:fp32", "ok"), ("validate:int8-cpu", "rejected")):
        progress.started("facile", step)
        progress.finished("facile", _done(step, status, outcome="PASS" if status == "ok" else "FAIL"))
    progress.started("facile", "tune:int8-cpu")  # planned: the last build of facile tuned int8-cpu
    clock.now += 20.0
    progress.advanced("facile", "tune:int8-cpu", 3, 20)
    text = _text(progress)
    header = next(line for line in text.splitlines() if line.startswith("model"))
    assert header.split() == ["model", "convert", "optimize", "validate", "tune"]
    facile = next(line for line in text.splitlines() if line.startswith("facile"))
    assert facile.split() == ["facile", "✓", "✓✓", "✓⊘", "▸"]
    assert "now: facile tune:int8-cpu 0:20 (3/20)" in text
    jet = next(line for line in text.splitlines() if line.startswith("jet_mlp"))
    assert jet.split() == ["jet_mlp", "·", "·"]
    # Left: tune 60 - 20 s, jet_mlp's convert 10 s (timed before), its optimize:fp32 2 s (facile's time).
    assert "elapsed 0:20  ETA ~0:52 (from earlier builds)" in text
    progress.finished("facile", _done("tune:int8-cpu", seconds=21.0, tuning_verdict="PASS"))
    assert "(3/20)" not in _text(progress)


def test_without_earlier_builds_the_eta_counts_the_planned_steps_at_rough_defaults() -> None:
    progress = BuildProgress(StepTimes(), FakeClock())
    progress.plan("facile", ["convert", "optimize:fp32", "optimize:fp16"])
    few = progress.remaining()
    progress.plan("facile", ["convert", "optimize:fp32", "optimize:fp16", "optimize:int8-cpu"])
    assert progress.remaining() > few > 0
    assert "rough: no earlier build in this folder" in _text(progress)


def test_a_model_that_stopped_early_is_not_waited_for() -> None:
    progress = BuildProgress(StepTimes(), FakeClock())
    progress.plan("first", ["convert", "optimize:fp32"])
    progress.plan("second", ["convert"])
    progress.finished("first", _done("convert", "failed"))
    progress.started("second", "convert")
    assert progress.remaining() == StepTimes().estimate("second", "convert")


def test_the_ci_line_says_model_step_status_outcome_and_time(tmp_path: Path) -> None:
    assert step_line("facile", _done("validate:fp16", seconds=3.14, outcome="PASS")) == \
        "facile  validate:fp16  ok  PASS  3.1 s"
    assert step_line("facile", _done("convert", seconds=0.5)) == "facile  convert  ok  0.5 s"
    failed = step_line("facile", _done("optimize:int8-cpu", "failed", seconds=0.0))
    assert failed.startswith("facile  optimize:int8-cpu  failed  why why") and "…" in failed
    stream = (tmp_path / "log.txt").open("w")
    view = LineView(stream)
    view.plan("facile", ["convert"])
    view.started("facile", "convert")
    view.advanced("facile", "convert", 1, 2)
    view.finished("facile", _done("convert"))
    stream.close()
    assert (tmp_path / "log.txt").read_text() == "facile  convert  ok  1.0 s\n"


def test_step_times_fold_the_last_summary_over_the_kept_times(tmp_path: Path) -> None:
    (tmp_path / TIMES_NAME).write_text(json.dumps({"seconds": {"old": {"convert": 9.0},
                                                               "facile": {"tune:fp16": 80.0}}}))
    summary = {"models": [{"name": "facile", "steps": [{"step": "convert", "details": {"seconds": 2.5}}]}],
               "repository_steps": [{"step": "triton-check", "details": {"seconds": 1.5}}]}
    (tmp_path / "build-summary.json").write_text(json.dumps(summary))
    times = StepTimes.from_folder(tmp_path, "build-summary.json")
    # facile's last build did not tune: its older tune time is forgotten; a model not in it is kept.
    assert times.seconds == {"old": {"convert": 9.0}, "facile": {"convert": 2.5},
                             "(repository)": {"triton-check": 1.5}}
    assert times.estimate("new", "convert") == (9.0 + 2.5) / 2
    times.save(tmp_path)
    (tmp_path / "build-summary.json").write_text("{cut sho")  # a build killed mid-write
    assert StepTimes.from_folder(tmp_path, "build-summary.json").seconds == times.seconds
    assert StepTimes.from_folder(tmp_path / "none", "build-summary.json").seconds == {}
