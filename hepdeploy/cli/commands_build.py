"""`hepdeploy build`: the whole chain from specs (or the embedded zoo set) to a model repository."""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

import click

from hepdeploy.cli.options import (
    budget_option,
    exporter_option,
    server_release_option,
    variant_option,
)
from hepdeploy.build_page import PAGE_NAME
from hepdeploy.build_view import BuildProgress, LineView, LiveView, StepTimes, short_reason
from hepdeploy.errors import BadInputError
from hepdeploy.pipeline import (
    DEFAULT_ZOO_SET,
    SUMMARY_NAME,
    BuildOptions,
    build,
    load_specs,
    zoo_build_spec,
)
from hepdeploy.preprocess_spec import spec_from_preprocess
from hepdeploy.variants import DEFAULT_VARIANTS

DEFAULT_OUT = Path("hepdeploy-out")


@click.command("build")
@click.argument("specs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", "--out", "out_dir", type=click.Path(path_type=Path), default=DEFAULT_OUT,
              show_default=True, help="Output folder: one folder per model, plus model_repository/.")
@click.option("--zoo", "zoo_names", multiple=True, help="Build these zoo networks (repeatable).")
@variant_option(multiple=True, help=f"Variants to make (default: each spec's list; {', '.join(DEFAULT_VARIANTS)}).")
@exporter_option
@click.option("--no-publish", is_flag=True, help="Stop after validation; write no model repository.")
@click.option("--serve-check", is_flag=True,
              help="Start a local Triton server on the new repository and validate what it serves.")
@click.option("--require-gpu", is_flag=True, help="Fail (exit 2) instead of skipping the TensorRT engine without a GPU.")
@server_release_option
@budget_option()
@click.option("--strict", is_flag=True,
              help="Fail (exit 1) when any variant fails validation, not only a variant the spec serves, or when "
                   "the spec's dims or the preprocess.json's min_length let through sizes the graph cannot run.")
@click.option("--preprocess", "preprocess_json", type=click.Path(path_type=Path, dir_okay=False),
              help="A weaver preprocess.json: every .onnx given instead of a SPEC is built with the spec this json "
                   "makes (its groups, lengths and class labels; the tensors from the model).")
def build_command(specs: tuple[Path, ...], out_dir: Path, zoo_names: tuple[str, ...], variants: tuple[str, ...],
                  exporter: str, no_publish: bool, serve_check: bool, require_gpu: bool,
                  server_release: str | None, budget: str, strict: bool, preprocess_json: Path | None) -> None:
    """Convert, optimize, validate and publish every SPEC.

    With no SPEC and no --zoo, builds the embedded default zoo set into ./hepdeploy-out/.
    Only variants that pass validation are published. A variant that fails is *rejected*
    (reported, not published); the build fails (exit 1) when a variant the spec serves
    (triton.variant, triton.cpu_twin.variant) fails, or any with --strict, when a step
    errors, or when the repository check finds a problem. Exit 0 otherwise.
    """
    models = [path for path in specs if path.suffix.lower() == ".onnx"]
    if models and preprocess_json is None:
        raise BadInputError(f"{models[0]}: an ONNX model is built from a spec; give a SPEC.yaml, or --preprocess "
                            "preprocess.json to make its spec")
    model_specs = load_specs([path for path in specs if path not in models])
    model_specs += [spec_from_preprocess(path, preprocess_json).spec for path in models]  # type: ignore[arg-type]
    names = list(zoo_names) or ([] if specs else list(DEFAULT_ZOO_SET))
    model_specs += [zoo_build_spec(name) for name in names]
    options = BuildOptions(out_dir=out_dir, exporter=exporter, variants=list(variants) or None,
                           publish=not no_publish, serve_check=serve_check, require_gpu=require_gpu,
                           server_release=server_release, budget=budget, strict=strict)
    with _build_view(out_dir, click.get_current_context().find_root().obj or {}) as view:
        report = build(model_specs, options, events=view)
    _print_report(report)
    sys.exit(1 if report.failed else 0)


def _build_view(out_dir: Path, settings: dict[str, Any]) -> Any:
    """What stderr shows while the build runs: the live grid in a terminal; elsewhere (a CI log) one line per
    finished step, and the INFO log lines only with -v; with -q nothing but warnings and errors."""
    from rich.console import Console

    verbosity = settings.get("verbosity", 0)
    if verbosity < 0:
        return contextlib.nullcontext()
    if verbosity == 0:  # the view says what the INFO lines said, step by step; warnings still show
        logging.getLogger("hepdeploy").setLevel(logging.WARNING)
    console = Console(stderr=True)
    if console.is_terminal and verbosity == 0:
        return LiveView(BuildProgress(StepTimes.from_folder(out_dir, SUMMARY_NAME)), console)
    return LineView(sys.stderr)


def _print_report(report) -> None:  # noqa: ANN001 - pipeline.BuildReport
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"hepdeploy build -> {report.out_dir}")
    for column in ("model", "step", "status", "detail"):
        table.add_column(column, overflow="fold")
    for model in report.models:
        for step in model.steps:
            # The verdicts' reasons are in the model's reports; here the outcome, and why a step was not ok.
            detail = short_reason(step) + (f" (traceback: {step.details['log']})" if "log" in step.details else "")
            table.add_row(model.name, step.step, _status(step.status), escape(detail))
    for step in report.repository_steps:
        table.add_row("(repository)", step.step, _status(step.status), escape(step.reason))
        for line in step.details.get("problems", []) + step.details.get("lines", []):
            table.add_row("", "", "", line)
    console = Console(width=160)
    console.print(table)
    console.print(f"artifacts and reports: {report.out_dir.resolve()}")
    if report.repository is not None:
        console.print(f"Triton model repository: {report.repository.resolve()}")
    console.print(f"summary: {(report.out_dir / 'build-summary.json').resolve()}")
    console.print(f"build page: {(report.out_dir / PAGE_NAME).resolve()}")
    if report.peak_rss_mib is not None:
        console.print(f"peak resident memory of a step: {report.peak_rss_mib / 1024:.2f} GiB (each step's in the summary)")
    if report.rejected:
        console.print(f"rejected by validation (made, not published): {', '.join(report.rejected)}")
    console.print("result: " + ("[red]FAILED[/red]" if report.failed else "[green]passed[/green]"))


def _status(status: str) -> str:
    return {"ok": "[green]ok[/green]", "failed": "[red]failed[/red]", "skipped": "[yellow]skipped[/yellow]",
            "rejected": "[magenta]rejected[/magenta]"}[status]


def register(group: click.Group) -> None:
    group.add_command(build_command)
