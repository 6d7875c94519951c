"""`hepdeploy report OUT`: the page of a build (``OUT/index.html`` and ``OUT/index.md``), made again from
the files the build left, so a build made elsewhere can be looked at later."""
from __future__ import annotations

from pathlib import Path

import click

from hepdeploy.build_page import write_build_page
from hepdeploy.cli.commands_build import DEFAULT_OUT


@click.command("report")
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT)
def report_command(out_dir: Path) -> None:
    """Write OUT/index.html and OUT/index.md again from OUT/build-summary.json, the models' reports and the
    model repository, and print the page's path (OUT: the build's output folder, ./hepdeploy-out by default)."""
    click.echo(str(write_build_page(out_dir).resolve()))


def register(group: click.Group) -> None:
    group.add_command(report_command)
