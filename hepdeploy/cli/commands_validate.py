"""CLI commands of the validate stage: ``hepdeploy validate`` and ``hepdeploy reference``.

Thin layers over hepdeploy.validate; exit 0 when every candidate passes, 1 when one
disagrees, 2 for bad input.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from hepdeploy.compare import parse_tolerance_values
from hepdeploy.errors import ValidationFailedError
from hepdeploy.spec import load_spec
from hepdeploy.validate import (
    console_table,
    load_reference,
    make_reference,
    save_reference,
    validate_candidate,
    validate_served,
    write_onnx_test_data,
    write_reports,
)
from hepdeploy.validate.reference import ReferenceSet, resolve_labels

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


def _load_spec_if_any(path: Path | None) -> Any:
    if path is None:
        return None

    return load_spec(path)


def _reference_from_options(golden: Path | None, reference_model: str | None, data: Path | None,
                            labels: str | None, spec: Any, chunk_size: int | None) -> Any:
    if (golden is None) == (reference_model is None):
        raise click.UsageError("give exactly one of --golden FILE or --reference MODEL_OR_SPEC --data FILE")
    if golden is not None:
        if data is not None:
            raise click.UsageError("--data goes with --reference, not with --golden")
        ref = load_reference(golden)
        if labels is not None:
            chosen = resolve_labels(labels, {**ref.inputs, **ref.labels})
            ref = ReferenceSet(ref.inputs, ref.outputs, chosen, ref.provenance).check(str(golden))
        return ref
    if data is None:
        raise click.UsageError("--reference needs --data FILE (the inputs to run the source model on)")
    return make_reference(reference_model, data, labels=labels, spec=spec, chunk_size=chunk_size)


@click.command("validate")
@click.argument("candidates", nargs=-1, type=click.Path(path_type=Path))
@click.option("--golden", type=click.Path(path_type=Path), help="Reference set (.npz from `hepdeploy reference`, "
              "or an ONNX test_data_set folder).")
@click.option("--reference", "reference_model", metavar="MODEL_OR_SPEC",
              help="Source model (.onnx) or spec (.yaml) to run on --data to make the reference now.")
@click.option("--data", type=click.Path(path_type=Path), help="Inputs (and labels) for --reference.")
@click.option("--labels", metavar="NAME_OR_FILE", help="Labels/targets: an array name in the data, or a file.")
@click.option("--spec", "spec_path", type=click.Path(path_type=Path),
              help="Spec whose validation block (tolerances, policy, physics) applies.")
@click.option("--atol", multiple=True, metavar="[NAME:]VALUE", help="Absolute tolerance, for all or one output.")
@click.option("--rtol", multiple=True, metavar="[NAME:]VALUE", help="Relative tolerance, for all or one output.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
              help="Tolerance defaults to use (default: the candidate sidecar's precision).")
@click.option("--policy", type=click.Choice(["numerical", "physics", "either", "both"]),
              help="What must pass (default: numerical for fp32; physics for fp16/int8 when labels exist).")
@click.option("--report-dir", type=click.Path(path_type=Path), help="Write JSON, JUnit XML, Markdown, HTML here.")
@click.option("--localize", is_flag=True, help="Find the first node whose output exceeds tolerance (ONNX).")
@click.option("--fp32-model", type=click.Path(path_type=Path), help="FP32 ONNX model to localise against.")
@click.option("--chunk-size", type=click.IntRange(min=1), help="Samples per inference call.")
@click.option("--providers", metavar="LIST", help="ONNX Runtime providers, e.g. cuda,cpu (default cpu).")
@click.option("--save-golden", type=click.Path(path_type=Path), help="With --reference: also save the reference.")
@click.option("--server", metavar="HOST:PORT",
              help="Validate what a live Triton server returns (with --model and --golden) instead of files.")
@click.option("--model", "served_model", metavar="NAME[:VERSION]", help="With --server: the served model.")
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default="grpc", show_default=True,
              help="With --server: gRPC (default) or HTTP (needs tritonclient[http]).")
@click.option("--server-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="With --server: seconds allowed for every call to the server.")
@click.option("--artifact", type=click.Path(path_type=Path, dir_okay=False),
              help="With --server: the artifact (.onnx + sidecar) whose tensors the served model must have.")
def validate_command(candidates: tuple[Path, ...], golden: Path | None, reference_model: str | None,
                     data: Path | None, labels: str | None, spec_path: Path | None, atol: tuple[str, ...],
                     rtol: tuple[str, ...], precision: str | None, policy: str | None, report_dir: Path | None,
                     localize: bool, fp32_model: Path | None, chunk_size: int | None, providers: str | None,
                     save_golden: Path | None, server: str | None, served_model: str | None, protocol: str,
                     server_timeout: float, artifact: Path | None) -> None:
    """Check CANDIDATE models against a reference set: exit 0 agree, 1 disagree, 2 bad input.

    With --server HOST:PORT the candidate is the model a live Triton server serves (--model).
    """
    from rich.console import Console

    if server is not None:
        unused = [option for option, value in (
            ("--reference", reference_model), ("--data", data), ("--localize", localize),
            ("--fp32-model", fp32_model), ("--providers", providers), ("--save-golden", save_golden)) if value]
        _validate_served(server, served_model, golden, candidates, unused, protocol=protocol,
                         timeout_s=server_timeout, artifact=artifact, spec_path=spec_path, precision=precision,
                         atol=atol, rtol=rtol, policy=policy, chunk_size=chunk_size, report_dir=report_dir)
        return
    if served_model is not None or artifact is not None:
        raise click.UsageError("--model and --artifact go with --server HOST:PORT")
    if not candidates:
        raise click.UsageError("give at least one CANDIDATE model")
    spec = _load_spec_if_any(spec_path)
    if spec is None and reference_model and Path(reference_model).suffix in (".yaml", ".yml"):
        spec = _load_spec_if_any(Path(reference_model))
    atol_o, rtol_o = parse_tolerance_values(atol, "--atol"), parse_tolerance_values(rtol, "--rtol")
    reference = _reference_from_options(golden, reference_model, data, labels, spec, chunk_size)
    if save_golden is not None:
        save_reference(reference, save_golden)
    reports = [
        validate_candidate(path, reference, spec=spec, precision=precision, atol=atol_o, rtol=rtol_o, policy=policy,
                           localize=localize, chunk_size=chunk_size, fp32_model=fp32_model,
                           providers=_providers(providers))
        for path in candidates
    ]
    Console(file=sys.stdout, width=160).print(console_table(reports))
    if report_dir is not None:
        written = write_reports(reports, report_dir)
        click.echo(f"reports: {len(written)} files in {report_dir}", err=True)
    failed = [r.variant for r in reports if not r.passed]
    if failed:
        raise ValidationFailedError(f"{len(failed)} of {len(reports)} candidate(s) disagree: {', '.join(failed)}")


def _validate_served(server: str, model_ref: str | None, golden: Path | None, candidates: tuple[Path, ...],
                     unused: list[str], *, protocol: str, timeout_s: float, artifact: Path | None,
                     spec_path: Path | None, precision: str | None, atol: tuple[str, ...], rtol: tuple[str, ...],
                     policy: str | None, chunk_size: int | None, report_dir: Path | None) -> None:
    """``validate --server``: the served model is the one candidate; same table, reports and exit codes."""
    from rich.console import Console

    if model_ref is None or golden is None:
        raise click.UsageError("--server needs --model NAME[:VERSION] and --golden FILE")
    if candidates:
        raise click.UsageError("with --server, give no CANDIDATE files (the server's model is the candidate)")
    if unused:
        raise click.UsageError(f"{', '.join(unused)} do not apply with --server")
    report = validate_served(
        server, model_ref, golden, protocol=protocol, timeout_s=timeout_s,  # type: ignore[arg-type]
        spec=_load_spec_if_any(spec_path), artifact=artifact, precision=precision,
        atol=parse_tolerance_values(atol, "--atol"), rtol=parse_tolerance_values(rtol, "--rtol"), policy=policy,
        chunk_size=chunk_size,
    )
    Console(file=sys.stdout, width=160).print(console_table([report]))
    if report_dir is not None:
        written = write_reports([report], report_dir)
        click.echo(f"reports: {len(written)} files in {report_dir}", err=True)
    if not report.passed:
        raise ValidationFailedError(f"the served model {model_ref} disagrees with the golden set: {report.verdict}")


@click.command("reference")
@click.argument("model", metavar="MODEL_OR_SPEC")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Inputs (and labels) to run.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="golden.npz, or a folder for the ONNX test-data layout (test_data_set_N/*.pb).")
@click.option("--labels", metavar="NAME_OR_FILE", help="Labels/targets: an array name in the data, or a file.")
@click.option("--chunk-size", type=click.IntRange(min=1), help="Samples per inference call.")
@click.option("--max-samples", type=click.IntRange(min=1), help="Use only the first N samples.")
@click.option("--samples-per-set", type=click.IntRange(min=1), help="ONNX layout: samples per test_data_set.")
def reference_command(model: str, data: Path, output: Path, labels: str | None, chunk_size: int | None,
                      max_samples: int | None, samples_per_set: int | None) -> None:
    """Run the source MODEL_OR_SPEC on --data and write the reference (golden) set."""

    ref = make_reference(model, data, labels=labels, chunk_size=chunk_size, max_samples=max_samples)
    if output.suffix == ".npz":
        save_reference(ref, output)
    else:
        write_onnx_test_data(ref, output, samples_per_set=samples_per_set)
    outputs = ", ".join(f"{k}{list(v.shape)}" for k, v in ref.outputs.items())
    labels_text = ", ".join(ref.labels) or "none"
    click.echo(f"{output}: {ref.n_samples} samples, outputs {outputs}, labels {labels_text}, "
               f"source {ref.provenance.get('framework')} sha256 {str(ref.provenance.get('sha256'))[:12]}")


def register(group: click.Group) -> None:
    """Add this module's commands to the main group."""
    group.add_command(validate_command)
    group.add_command(reference_command)
