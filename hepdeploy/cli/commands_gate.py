"""`hepdeploy gate`: may version N+1 of a model replace version N, the one published?

Exit 0 every judged check passes, 1 a check fails, 2 bad input (or no version N without
``--first-version``), 3 a check is undecided. A thin layer over :mod:`hepdeploy.gate.run`.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from hepdeploy.cli.options import parse_pairs
from hepdeploy.fsutil import check_output_dir
from hepdeploy.gate.outcome import EXIT_FAIL, EXIT_PASS, EXIT_UNDECIDED, GateResult
from hepdeploy.gate.reports import annotations, spec_key_lines, write_gate_reports
from hepdeploy.gate.run import Against, ChangedGate, GateRequest, run_changed, run_gate
from hepdeploy.spec import ModelSpec, load_spec

log = logging.getLogger(__name__)


def _per_model(items: tuple[str, ...], option: str) -> dict[str, str] | str | None:
    """``--data FILE`` (every model) or ``--data NAME=FILE`` (repeatable, per model)."""
    if not items:
        return None
    if len(items) == 1 and "=" not in items[0]:
        return items[0]
    return parse_pairs(items, option, "NAME=FILE")


def _spec_pair(path: str) -> tuple[ModelSpec, Path]:
    return load_spec(Path(path)), Path(path)


@click.command("gate")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--against", metavar="REPO/NAME[@VERSION|@latest]",
              help="The published model the candidate must be at least as good as (default: its newest version).")
@click.option("--spec", "specs", multiple=True, metavar="[NAME=]SPEC.yaml",
              help="The candidate's spec: its gate allowances, validation and variants (NAME=SPEC per model with "
                   "--changed-since).")
@click.option("--data", "datas", multiple=True, metavar="[NAME=]FILE",
              help="Labelled reference events (.npz or ROOT through the spec's data block); NAME=FILE per model.")
@click.option("--labels", metavar="NAME", help="The labels' array in the data (default: the spec's data.labels).")
@click.option("--report-dir", type=click.Path(path_type=Path), default=Path("gate-report"), show_default=True,
              help="gate.json, JUnit XML, Markdown, OpenMetrics, Code Quality and HTML go here.")
@click.option("--allow-overwrite", metavar="REASON", help="Accept changed files in published versions (recorded).")
@click.option("--allow-interface-change", metavar="REASON", help="Accept a change of the served interface (recorded).")
@click.option("--first-version", is_flag=True, help="The candidate is the model's first version: no version N.")
@click.option("--changed-since", metavar="GIT_REF",
              help="TARGET is a model repository in git: gate every new version added since GIT_REF.")
@click.option("--max-events", type=click.IntRange(min=1), help="Use only the first N reference events.")
def gate_command(target: Path, against: str | None, specs: tuple[str, ...], datas: tuple[str, ...],
                 labels: str | None, report_dir: Path, allow_overwrite: str | None,
                 allow_interface_change: str | None, first_version: bool, changed_since: str | None,
                 max_events: int | None) -> None:
    """Gate TARGET (the candidate model N+1) against --against REPO/NAME, or, with --changed-since GIT_REF,
    every new model version in the repository TARGET against the version before it."""
    check_output_dir(report_dir)
    data = _per_model(datas, "--data")
    if data is None:
        raise click.UsageError("give --data: the labelled reference events both versions run on")
    spec_items = _per_model(specs, "--spec")
    # What every gate of a --changed-since run shares; each changed model fills in its own candidate and data.
    template = GateRequest(candidate=target, against=Against(target, "-"), data=Path("."), labels=labels,
                           allow_overwrite=allow_overwrite, allow_interface_change=allow_interface_change,
                           first_version=first_version, max_events=max_events)
    if changed_since is not None:
        if against is not None:
            raise click.UsageError("--against names one model; with --changed-since the repository says which")
        spec_for = None if spec_items is None else _spec_pair(spec_items) if isinstance(spec_items, str) \
            else {name: _spec_pair(path) for name, path in spec_items.items()}
        data_for = Path(data) if isinstance(data, str) else {name: Path(path) for name, path in data.items()}
        gates = run_changed(target, changed_since, template, data_for=data_for, spec_for=spec_for)
        sys.exit(_finish_changed(gates, report_dir))
    if against is None:
        raise click.UsageError("give --against REPO/NAME[@VERSION] (or --changed-since GIT_REF with a repository)")
    if not isinstance(data, str) or (spec_items is not None and not isinstance(spec_items, str)):
        raise click.UsageError("NAME=FILE forms of --data/--spec go with --changed-since")
    spec_pair = _spec_pair(spec_items) if spec_items else None
    request = GateRequest(candidate=target, against=Against.parse(against), data=Path(data),
                          spec=spec_pair[0] if spec_pair else None, spec_path=spec_pair[1] if spec_pair else None,
                          labels=labels, allow_overwrite=allow_overwrite,
                          allow_interface_change=allow_interface_change, first_version=first_version,
                          max_events=max_events)
    sys.exit(_finish(run_gate(request), report_dir))


def _finish(result: GateResult, report_dir: Path) -> int:
    """Reports, the console lines, GitHub's summary and annotations; the exit code."""
    spec_path = Path(result.spec_path) if result.spec_path else None
    lines = spec_key_lines(spec_path) if spec_path is not None else {}
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    write_gate_reports(result, report_dir, spec_lines=lines, step_summary=Path(summary) if summary else None)
    name = result.candidate.name
    for check in result.checks:
        click.echo(f"{name}: {check.check:<16} {check.outcome:<9} {check.reason}")
    click.echo(f"{name}: gate {result.outcome} (exit {result.exit_code}); reports in {report_dir}")
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in annotations(result, spec_path, lines):
            click.echo(line)
    return result.exit_code


def _finish_changed(gates: list[ChangedGate], report_dir: Path) -> int:
    """One report folder per gate; the worst exit code (FAIL over UNDECIDED over PASS)."""
    if not gates:
        click.echo("no model version changed: nothing to gate")
        return EXIT_PASS
    report_dir.mkdir(parents=True, exist_ok=True)  # checked before the gates ran; one folder per gate inside
    codes = []
    for gate in gates:
        folder = report_dir / (gate.name if gate.version is None else f"{gate.name}-v{gate.version}")
        codes.append(_finish(gate.result, folder))
    if EXIT_FAIL in codes:
        return EXIT_FAIL
    return EXIT_UNDECIDED if EXIT_UNDECIDED in codes else EXIT_PASS


def register(group: click.Group) -> None:
    group.add_command(gate_command)

