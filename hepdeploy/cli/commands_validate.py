"""CLI commands of the validate stage: ``hepdeploy validate`` and ``hepdeploy reference``.

Thin layers over hepdeploy.validate; exit 0 when every candidate passes, 1 when one
disagrees, 2 for bad input.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from hepdeploy.cli.options import (
    ReferenceOptions,
    ServerOptions,
    judgement_options,
    reference_options,
    server_options,
    spec_option,
)
from hepdeploy.errors import BadInputError, ValidationFailedError, ValidationUndecidedError
from hepdeploy.fsutil import check_output_dir, check_output_folder
from hepdeploy.judgement import Judgement
from hepdeploy.ntuple import is_root_source
from hepdeploy.spec import ModelSpec, load_spec
from hepdeploy.validate import (
    Localization,
    VariantReport,
    console_table,
    make_reference,
    save_reference,
    validate_candidate,
    validate_served,
    validate_served_ensemble,
    write_onnx_test_data,
    write_reports,
)

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


def _providers(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [PROVIDER_ALIASES.get(p.strip().lower(), p.strip()) for p in text.split(",") if p.strip()]


@click.command("validate")
@click.argument("candidates", nargs=-1, type=click.Path(path_type=Path))
@reference_options
@spec_option("Spec whose validation block (tolerances, policy, physics) applies.")
@judgement_options
@click.option("--report-dir", type=click.Path(path_type=Path), help="Write JSON, JUnit XML, Markdown, HTML here.")
@click.option("--localize", is_flag=True, help="Find the first node whose output loses precision (ONNX).")
@click.option("--localize-rule", type=click.Choice(["sqnr", "tolerance"]), default="sqnr", show_default=True,
              help="Judge intermediate tensors by signal-to-noise ratio (scale-free) or by the outputs' atol/rtol.")
@click.option("--fp32-model", type=click.Path(path_type=Path), help="FP32 ONNX model to localise against.")
@click.option("--providers", metavar="LIST", help="ONNX Runtime providers, e.g. cuda,cpu (default cpu).")
@click.option("--save-golden", type=click.Path(path_type=Path), help="With --reference: also save the reference.")
@server_options()
@click.option("--artifact", type=click.Path(path_type=Path, dir_okay=False),
              help="With --server: the artifact (.onnx + sidecar) whose tensors the served model must have.")
def validate_command(candidates: tuple[Path, ...], reference: ReferenceOptions, spec: ModelSpec | None,
                     judgement: Judgement, report_dir: Path | None, localize: bool, localize_rule: str,
                     fp32_model: Path | None, providers: str | None, save_golden: Path | None,
                     server: ServerOptions, artifact: Path | None) -> None:
    """Check CANDIDATE models against a reference set: exit 0 agree, 1 disagree, 2 bad input, 3 undecided.

    Undecided: a physics change whose interval straddles its allowance, or a metric resting on
    too few events; the report says about how many events would decide it.

    With --server HOST:PORT the candidate is the model a live Triton server serves (--model).
    With --server and --data EVENTS.root, --model is a preprocessing ensemble (`triton add --preprocess`):
    the raw features of the events (read through --spec's data block) are sent to it and its answers
    compared with the same events preprocessed inline and run through --artifact MODEL.onnx.
    """
    if report_dir is not None:
        check_output_dir(report_dir)  # before the work, not after it
    if save_golden is not None:
        check_output_folder(save_golden)
    if server.given and reference.data is not None and is_root_source(reference.data):
        unused = [option for option, value in (
            ("--golden", reference.golden), ("--reference", reference.reference_model), ("--labels", reference.labels),
            ("--localize", localize), ("--fp32-model", fp32_model), ("--providers", providers),
            ("--save-golden", save_golden)) if value]
        _validate_served_ensemble(server, reference.data, candidates, unused, artifact=artifact, spec=spec,
                                  judgement=judgement, report_dir=report_dir)
        return
    if server.given:
        unused = [option for option, value in (
            ("--reference", reference.reference_model), ("--data", reference.data), ("--localize", localize),
            ("--fp32-model", fp32_model), ("--providers", providers), ("--save-golden", save_golden)) if value]
        _validate_served(server, reference.golden, candidates, unused, artifact=artifact, spec=spec,
                         judgement=judgement, report_dir=report_dir)
        return
    if server.model is not None or artifact is not None:
        raise click.UsageError("--model and --artifact go with --server HOST:PORT")
    if not candidates:
        raise click.UsageError("give at least one CANDIDATE model")
    if spec is None and reference.reference_model and Path(reference.reference_model).suffix in (".yaml", ".yml"):
        spec = load_spec(Path(reference.reference_model))
    golden = reference.load(spec, judgement.chunk_size)
    if save_golden is not None:
        save_reference(golden, save_golden)
    localization = Localization(localize_rule, fp32_model) if localize else None  # type: ignore[arg-type]
    reports = [
        validate_candidate(path, golden, spec=spec, judgement=judgement, localization=localization,
                           providers=_providers(providers))
        for path in candidates
    ]
    _show(reports, report_dir)
    _exit_for(reports)


def _exit_for(reports: list[VariantReport]) -> None:
    """Exit 1 when a candidate fails, else 3 when one is undecided (0 when all pass)."""
    failed = [r.variant for r in reports if r.outcome == "FAIL"]
    if failed:
        raise ValidationFailedError(f"{len(failed)} of {len(reports)} candidate(s) disagree: {', '.join(failed)}")
    undecided = [r for r in reports if r.outcome == "UNDECIDED"]
    if undecided:
        raise ValidationUndecidedError(
            f"{len(undecided)} of {len(reports)} candidate(s) undecided (the reference set cannot resolve them): "
            + "; ".join(f"{r.variant}: {r.verdict}" for r in undecided))


def _show(reports: list[VariantReport], report_dir: Path | None) -> None:
    from rich.console import Console

    Console(file=sys.stdout, width=160).print(console_table(reports))
    if report_dir is not None:
        written = write_reports(reports, report_dir)
        click.echo(f"reports: {len(written)} files in {report_dir}", err=True)


def _validate_served(server: ServerOptions, golden: Path | None, candidates: tuple[Path, ...], unused: list[str], *,
                     artifact: Path | None, spec: ModelSpec | None, judgement: Judgement,
                     report_dir: Path | None) -> None:
    """``validate --server``: the served model is the one candidate; same table, reports and exit codes."""
    if server.model is None or golden is None:
        raise click.UsageError("--server needs --model NAME[:VERSION] and --golden FILE")
    if candidates:
        raise click.UsageError("with --server, give no CANDIDATE files (the server's model is the candidate)")
    if unused:
        raise click.UsageError(f"{', '.join(unused)} do not apply with --server")
    report = validate_served(server.target(), server.model, golden, spec=spec, artifact=artifact, judgement=judgement)
    _show([report], report_dir)
    if report.outcome == "FAIL":
        raise ValidationFailedError(f"the served model {server.model} disagrees with the golden set: {report.verdict}")
    if report.outcome == "UNDECIDED":
        raise ValidationUndecidedError(f"the served model {server.model} is undecided: {report.verdict}")


def _validate_served_ensemble(server: ServerOptions, data: Path, candidates: tuple[Path, ...], unused: list[str], *,
                              artifact: Path | None, spec: ModelSpec | None, judgement: Judgement,
                              report_dir: Path | None) -> None:
    """``validate --server --data EVENTS.root``: a preprocessing ensemble against the inline path."""
    if server.model is None or spec is None or artifact is None:
        raise click.UsageError("--server with --data EVENTS.root validates a preprocessing ensemble: give --model "
                               "NAME_ensemble, --spec SPEC.yaml (its data block maps the file) and --artifact MODEL.onnx")
    if candidates:
        raise click.UsageError("with --server, give no CANDIDATE files (the server's model is the candidate)")
    if unused:
        raise click.UsageError(f"{', '.join(unused)} do not apply with --server and ROOT --data")
    report = validate_served_ensemble(server.target(), server.model, data, spec=spec, artifact=artifact,
                                      judgement=judgement)
    _show([report], report_dir)
    if report.outcome == "FAIL":
        raise ValidationFailedError(f"the served ensemble {server.model} disagrees with the inline path: {report.verdict}")
    if report.outcome == "UNDECIDED":
        raise ValidationUndecidedError(f"the served ensemble {server.model} is undecided: {report.verdict}")


@click.command("reference")
@click.argument("model", metavar="MODEL_OR_SPEC")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Inputs (and labels) to run.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="golden.npz, or a folder for the ONNX test-data layout (test_data_set_N/*.pb).")
@click.option("--labels", metavar="NAME_OR_FILE", help="Labels/targets: an array name in the data, or a file.")
@click.option("--chunk-size", type=click.IntRange(min=1), help="Samples per inference call.")
@click.option("--max-samples", type=click.IntRange(min=1), help="Use only the first N samples.")
@click.option("--samples-per-set", type=click.IntRange(min=1), help="ONNX layout: samples per test_data_set.")
@click.option("--variable", "variables", multiple=True, metavar="NAME",
              help="A per-event array of the data to keep for binned physics checks (repeatable; default: the "
                   "spec's data.variables and the variables its bins name).")
def reference_command(model: str, data: Path, output: Path, labels: str | None, chunk_size: int | None,
                      max_samples: int | None, samples_per_set: int | None, variables: tuple[str, ...]) -> None:
    """Run the source MODEL_OR_SPEC on --data and write the reference (golden) set."""
    if output.suffix == ".npz":
        check_output_folder(output)  # before the run, not after it
    else:
        check_output_dir(output)
    if output.resolve() == Path(data).resolve():
        raise BadInputError(f"{output}: the reference set would overwrite its own --data (its labels and "
                            "variables with it); write it to another file")
    ref = make_reference(model, data, labels=labels, chunk_size=chunk_size, max_samples=max_samples,
                         variables=list(variables) or None)
    if output.suffix == ".npz":
        save_reference(ref, output)
    else:
        write_onnx_test_data(ref, output, samples_per_set=samples_per_set)
    outputs = ", ".join(f"{k}{list(v.shape)}" for k, v in ref.outputs.items())
    labels_text = ", ".join(ref.labels) or "none"
    variables_text = f", variables {', '.join(ref.variables)}" if ref.variables else ""
    click.echo(f"{output}: {ref.n_samples} samples, outputs {outputs}, labels {labels_text}{variables_text}, "
               f"source {ref.provenance.get('framework')} sha256 {str(ref.provenance.get('sha256'))[:12]}")


def register(group: click.Group) -> None:
    """Add this module's commands to the main group."""
    group.add_command(validate_command)
    group.add_command(reference_command)
