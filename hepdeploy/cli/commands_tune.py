"""CLI command ``hepdeploy tune``: the fastest precision mix of a variant that passes the budget."""
from __future__ import annotations

from pathlib import Path

import click

from hepdeploy.artifacts import read_artifact
from hepdeploy.cli.options import CalibrationOptions, calibration_options, spec_option
from hepdeploy.convert import convert_from_spec
from hepdeploy.errors import BadInputError, ValidationFailedError, ValidationUndecidedError
from hepdeploy.fsutil import check_output_dir, check_output_folder
from hepdeploy.optimize import calibration_path, check_calibration_rows, resolve_calibration, variant_spec
from hepdeploy.optimize.modelopt_worker import ModelOptWorker
from hepdeploy.spec import ModelSpec, load_spec
from hepdeploy.tune import Evaluation, TuneData, TuneSettings, describe, tune_variant
from hepdeploy.validate.reference import load_reference, make_reference
from hepdeploy.variants import TUNABLE_VARIANTS

INTERRUPTED_EXIT = 130


@click.command("tune")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--variant", type=click.Choice(TUNABLE_VARIANTS), required=True, help="The variant to tune.")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True, metavar="OUT.onnx",
              help="Where the tuned variant (and its sidecar) is written when a mix passes.")
@spec_option("With a MODEL: the spec whose physics allowances and labels judge the candidates.")
@click.option("--golden", type=click.Path(path_type=Path, dir_okay=False),
              help="Reference (golden) set from `hepdeploy reference` (default: made from the spec's data.reference).")
@calibration_options
@click.option("--policy", type=click.Choice(["physics", "numerical", "either", "both"]),
              help="What must pass (default: the spec's policy for the variant's precision; numerical without labels).")
@click.option("--confirm-golden", type=click.Path(path_type=Path, dir_okay=False),
              help="A second reference set the chosen mix is confirmed on (default: the search judges on one half of "
                   "the reference set, chosen by a seeded split, and the answer is confirmed on the other half).")
@click.option("--max-evals", type=click.IntRange(min=1),
              help="Evaluations the search may make (default 2 x layers + 10); the confirmation is extra.")
@click.option("--report-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Report folder: tune.json, tune.yaml (the spec fragment), pareto.png and the evaluation cache "
                   "(default: OUT's folder / OUT-tune).")
def tune_command(source: Path, variant: str, output: Path, spec: ModelSpec | None, golden: Path | None,
                 confirm_golden: Path | None, calibration: CalibrationOptions, policy: str | None,
                 max_evals: int | None, report_dir: Path | None) -> None:
    """Find the cheapest mix of SOURCE's VARIANT that passes: layers kept in FP32 where they harm.

    SOURCE is a spec (converted first, its data.reference and data.calibration used) or an ONNX MODEL
    (with --golden, --calibration and usually --spec). Mixes are ranked by a cost modelled from the graph
    (never timed), judged on one half of the reference set, and the chosen one is confirmed on the other
    half (or on --confirm-golden). Exit 0 with a confirmed answer written to OUT, or when the answer is
    FP32 (no mix modelled faster than FP32 passes: nothing is written); 1 when the chosen mix FAILs its
    confirmation, 3 when its confirmation is UNDECIDED; 130 on Ctrl-C.
    """
    report_dir = report_dir or output.parent / f"{output.stem}-tune"
    check_output_folder(output)  # both before the search, not after it
    check_output_dir(report_dir)
    if source.suffix in (".yaml", ".yml"):
        spec = load_spec(source)
        report_dir.mkdir(parents=True, exist_ok=True)
        model = convert_from_spec(spec, report_dir / f"{spec.name}.onnx").path
    else:
        model = source
    if calibration.changes_data_spec and spec is not None:
        spec = spec.model_copy(update={"data": spec.data.model_copy(update=calibration.data_update(spec))})
    confirmation = load_reference(confirm_golden) if confirm_golden is not None else None
    if golden is not None:
        reference = load_reference(golden)
    elif spec is not None and spec.data.reference:
        reference = make_reference(spec, Path(spec.data.reference), labels=spec.data.label_array, spec=spec)
    else:
        raise BadInputError("tune: needs a reference set: --golden FILE, or a spec with data.reference")
    vspec = variant_spec(variant, spec)
    inputs = spec.inputs if spec is not None else None
    if inputs is None:
        inputs = read_artifact(model).sidecar.inputs
    arrays = resolve_calibration(calibration.path, inputs, spec, calibration.samples)
    check_calibration_rows(variant, arrays, calibration_path(calibration.path, spec), inputs)

    def progress(evaluation: Evaluation, done: int, budget: int) -> None:
        click.echo(f"[{done}/{budget}] {evaluation.phase}: {describe(evaluation)}", err=True)

    with ModelOptWorker() as modelopt:
        result = tune_variant(model, vspec, TuneData(reference, arrays, confirmation), output, report_dir, spec=spec,
                              settings=TuneSettings(policy, max_evals, modelopt, on_evaluation=progress))
    click.echo(f"{variant}: {len(result.evaluations)} evaluations, {len(result.groups)} layers decided, "
               f"{result.candidates} mixes modelled faster than FP32; cost model: {result.target} "
               f"({result.cost_source})")
    click.echo(f"split: {result.split}")
    if result.stopped:
        click.echo(f"stopped early: {result.stopped}")
    click.echo(f"report: {report_dir}")
    if (result.stopped or "").startswith("interrupted"):
        click.echo(f"interrupted: nothing was written to {output}")
        raise SystemExit(INTERRUPTED_EXIT)
    if result.passed:
        click.echo(f"answer: {result.reason}")
        click.echo(f"wrote {output}; spec fragment: {report_dir / 'tune.yaml'}")
        return
    if result.answer_is_fp32:
        click.echo(f"answer: {result.reason}; nothing was written to {output}")
        return
    error = ValidationUndecidedError if result.outcome == "UNDECIDED" else ValidationFailedError
    raise error(f"tune {variant}: {result.reason}")


def register(group: click.Group) -> None:
    group.add_command(tune_command)
