"""CLI command of the optimize stage: ``hepdeploy optimize``."""
from __future__ import annotations

from pathlib import Path

import click

from hepdeploy.artifacts import read_artifact
from hepdeploy.cli.options import (
    CalibrationOptions,
    calibration_options,
    server_release_option,
    spec_option,
    variant_option,
)
from hepdeploy.errors import BadInputError
from hepdeploy.optimize import optimize_artifact, variant_spec
from hepdeploy.optimize.trt_precheck import precheck_model
from hepdeploy.plan_compat import DEFAULT_SERVER_RELEASE, server_release
from hepdeploy.spec import ModelSpec, SourceSpec
from hepdeploy.variants import variant_kind


# The command line's spelling of each variant option it sets (named when the option does not apply).
_FLAGS = {"calibration_method": "--method", "keep_nodes": "--keep-node", "keep_op_types": "--keep-op",
          "quantize_op_types": "--quantize-op", "per_channel": "--per-tensor", "high_precision_dtype": "--high-precision",
          "workspace_mib": "--workspace-mib", "version_compatible": "--version-compatible"}


@click.command("optimize")
@click.argument("model", type=click.Path(path_type=Path))
@variant_option(required=True, help="Which variant to make (fp32 = simplified graph; tensorrt = a .plan, GPU only).")
@click.option("-o", "--output", type=click.Path(path_type=Path), metavar="OUT",
              help="The .onnx (or .plan) file to write, or an existing folder for MODEL_<variant>.onnx "
                   "(e.g. facile_int8_cpu.onnx).")
@spec_option("Model spec (YAML): tensors, dims for the TensorRT profile, data and variant options.")
@calibration_options
@click.option("--method", type=click.Choice(["max", "entropy", "percentile"]),
              help="INT8 calibration method (default max).")
@click.option("--keep-node", "--fp32-node", "--exclude-node", "keep_nodes", multiple=True, metavar="REGEX",
              help="fp16, int8-*: keep nodes whose name matches in high precision, unlowered (repeatable; "
                   "--fp32-node and --exclude-node are its older spellings).")
@click.option("--keep-op", "--fp32-op", "--exclude-op", "keep_ops", multiple=True, metavar="OP",
              help="fp16, int8-*: keep every node of this op type in high precision (repeatable; "
                   "--fp32-op and --exclude-op are its older spellings).")
@click.option("--quantize-op", "quantize_ops", multiple=True, metavar="OP",
              help="INT8: quantize only nodes of these op types, e.g. Conv, MatMul, Gemm (repeatable).")
@click.option("--per-tensor", is_flag=True, help="int8-cpu: per-tensor instead of per-channel weight scales.")
@click.option("--high-precision", type=click.Choice(["fp32", "fp16"]),
              help="int8-trt: dtype of the layers left unquantized (default fp32).")
@click.option("--workspace-mib", type=click.IntRange(16, None), help="tensorrt: builder workspace limit.")
@click.option("--require-gpu", is_flag=True, help="tensorrt: fail (exit 2) instead of skipping without TensorRT/CUDA.")
@click.option("--version-compatible", is_flag=True,
              help="tensorrt: a version-compatible plan (runs in later TensorRT 10.x/11.x runtimes; Triton must be "
                   "started with --backend-config=tensorrt,version-compatible=true).")
@click.option("--precheck", is_flag=True,
              help="tensorrt: build nothing; report what TensorRT's ONNX parser would refuse in MODEL (no GPU needed). "
                   "Exit 1 when it would refuse the graph.")
@server_release_option
def optimize_command(
    model: Path, variant: str, output: Path | None, spec: ModelSpec | None, calibration: CalibrationOptions,
    method: str | None, keep_nodes: tuple[str, ...], keep_ops: tuple[str, ...], quantize_ops: tuple[str, ...],
    per_tensor: bool, high_precision: str | None,
    workspace_mib: int | None, require_gpu: bool, version_compatible: bool, precheck: bool, server_release: str | None,
) -> None:
    """Make one optimized VARIANT of the ONNX artifact MODEL.

    fp32: onnxslim + ONNX Runtime basic optimisation, outputs checked unchanged.
    fp16: ModelOpt AutoCast, FP32 inputs/outputs, sensitive nodes kept FP32.
    int8-trt: ModelOpt explicit Q/DQ PTQ for TensorRT (needs --calibration).
    int8-cpu: ONNX Runtime static QDQ, u8 activations / s8 per-channel weights (needs --calibration).
    tensorrt: a strongly typed TensorRT .plan (skipped without TensorRT and a CUDA device);
    with --precheck, what TensorRT's ONNX parser would refuse, per the operator list of the
    target server's TensorRT (--server-release, default the README's 24.10).
    """
    if precheck:
        _precheck(model, variant, server_release)
        return
    if output is None:
        raise BadInputError("-o/--output is required (except with --precheck)")
    vspec = variant_spec(variant, spec)
    updates: dict[str, object] = {}
    if method:
        updates["calibration_method"] = method
    if keep_nodes:
        updates["keep_nodes"] = [*vspec.keep_nodes, *keep_nodes]
    if keep_ops:
        updates["keep_op_types"] = [*vspec.keep_op_types, *keep_ops]
    if quantize_ops:
        updates["quantize_op_types"] = [*vspec.quantize_op_types, *quantize_ops]
    if per_tensor:
        updates["per_channel"] = False
    if high_precision:
        updates["high_precision_dtype"] = high_precision
    if workspace_mib:
        updates["workspace_mib"] = workspace_mib
    if version_compatible:
        updates["version_compatible"] = True
    kind = variant_kind(vspec.name)
    kind.check_options(updates, spelling=_FLAGS)
    vspec = vspec.model_copy(update=updates)

    if calibration.changes_data_spec:
        spec = spec or _spec_from_model(model)
        spec = spec.model_copy(update={"data": spec.data.model_copy(update=calibration.data_update(spec))})

    if output.is_dir():
        output = output / kind.filename(model.stem)
    if calibration.path is None and kind.needs_calibration and (spec is None or not spec.data.calibration):
        raise BadInputError(f"{kind.name}: needs calibration data (--calibration FILE)")
    result = optimize_artifact(model, vspec, output, calibration=calibration.path, spec=spec,
                               require_gpu=require_gpu, samples=calibration.samples)
    click.echo(result.line())
    for path in result.outputs:
        click.echo(f"  wrote {path}")


def _precheck(model: Path, variant: str, release_name: str | None) -> None:
    if not variant_kind(variant).is_engine:
        raise BadInputError("--precheck checks a graph for a TensorRT engine: use it with --variant tensorrt")
    release = server_release(release_name or DEFAULT_SERVER_RELEASE)
    report = precheck_model(model, release.tensorrt)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        raise click.exceptions.Exit(1)


def _spec_from_model(model: Path) -> ModelSpec:
    """A minimal spec from the artifact's own tensor specs, to carry data options."""
    artifact = read_artifact(model)
    return ModelSpec(
        name=artifact.name if artifact.name.isidentifier() else "model",
        source=SourceSpec(framework="onnx", path=str(model)),
        inputs=artifact.sidecar.inputs,
        outputs=artifact.sidecar.outputs,
    )


def register(group: click.Group) -> None:
    """Add this module's commands to the main group."""
    group.add_command(optimize_command)
