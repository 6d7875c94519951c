"""``hepdeploy preprocess check``: the cmssw and weaver conventions of a preprocess.json on the same events."""
from __future__ import annotations

import json
from pathlib import Path

import click

from hepdeploy.cli.options import spec_option
from hepdeploy.fsutil import atomic_write_text, check_output_folder
from hepdeploy.spec import ColumnSource, ModelSpec
from hepdeploy.validate.preprocess_parity import check_parity

DIFFERENCE_EXIT = 1


@click.group("preprocess")
def preprocess() -> None:
    """weaver preprocess.json files: compare how training (weaver) and CMSSW apply them."""


@preprocess.command("check")
@click.argument("preprocess_json", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--data", required=True, help="ROOT file (or a glob of them) with the raw branches the json names.")
@click.option("--tree", help="Tree to read (default: the file's only tree).")
@click.option("--model", type=click.Path(path_type=Path, dir_okay=False),
              help="ONNX model taking the json's groups: also compare its outputs under both conventions.")
@click.option("--labels", metavar="BRANCH[,BRANCH...]",
              help="Class index branch, or one-hot branches in class order: per-class AUC under both conventions.")
@click.option("--class-names", metavar="NAME[,NAME...]", help="Class names for the AUC lines.")
@spec_option("Spec whose data block maps the file (data.inputs branches, tree, labels) and names the classes.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Also write the report as JSON.")
@click.option("--fail-on-difference", is_flag=True, help="Exit 1 when any value differs between the conventions.")
def check_command(preprocess_json: Path, data: str, tree: str | None, model: Path | None, labels: str | None,
                  class_names: str | None, spec: ModelSpec | None, json_path: Path | None,
                  fail_on_difference: bool) -> None:
    """Run PREPROCESS_JSON's cmssw and weaver conventions on the same raw events and print, per input
    group, how many values differ and in which variables; with --model, the effect on the outputs.
    Branches are the json's var_names unless --spec maps them.
    Exit 0 (differences are information) unless --fail-on-difference."""
    if json_path is not None:
        check_output_folder(json_path)  # before the work, not after it
    label_source = None
    if labels:
        names = [n.strip() for n in labels.split(",") if n.strip()]
        label_source = ColumnSource(branch=names[0]) if len(names) == 1 else ColumnSource(branches=names)
    report = check_parity(preprocess_json, data, tree=tree, model=model, labels=label_source,
                          class_names=class_names.split(",") if class_names else None, spec=spec)
    for line in report.lines():
        click.echo(line)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(report.as_dict(), indent=2) + "\n")
    if fail_on_difference and report.differs:
        raise click.exceptions.Exit(DIFFERENCE_EXIT)


def register(group: click.Group) -> None:
    group.add_command(preprocess)
