"""CLI command of the optimize stage: ``hepdeploy optimize``."""
from __future__ import annotations

from pathlib import Path

import click

from hepdeploy.artifacts import read_artifact
from hepdeploy.errors import BadInputError
from hepdeploy.optimize import optimize_artifact, variant_spec
from hepdeploy.spec import DataSpec, ModelSpec, SourceSpec, load_spec

VARIANTS = ("fp32", "fp16", "int8-trt", "int8-cpu", "tensorrt")


@click.command("optimize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--variant", "variant_name", required=True, metavar="|".join(VARIANTS),
              help="Which variant to make (fp32 = simplified graph; tensorrt = a .plan, GPU only).")
@click.option("-o", "output", required=True, type=click.Path(path_type=Path), metavar="OUT",
              help="The .onnx (or .plan) file to write, or an existing folder for MODEL.<variant>.onnx.")
@click.option("--spec", "spec_path", type=click.Path(path_type=Path),
              help="Model spec (YAML): tensors, dims for the TensorRT profile, data and variant options.")
@click.option("--calibration", type=click.Path(path_type=Path), metavar="FILE",
              help="Calibration data: .npz, .h5 (a dataset per input) or .root (a branch per input).")
@click.option("--samples", type=click.IntRange(1, None), help="Calibration samples drawn at random (default 512).")
@click.option("--seed", type=int, help="Seed of the random calibration subset (default 0).")
@click.option("--root-tree", metavar="NAME", help="TTree holding the calibration data in a ROOT file.")
@click.option("--root-branch", "root_branches", multiple=True, metavar="INPUT=BRANCH",
              help="Branch read for an input (default: the input's name); repeat per input.")
@click.option("--method", type=click.Choice(["max", "entropy", "percentile"]),
              help="INT8 calibration method (default max).")
@click.option("--exclude-node", "exclude_nodes", multiple=True, metavar="REGEX",
              help="INT8: leave nodes whose name matches unquantized (repeatable).")
@click.option("--exclude-op", "exclude_ops", multiple=True, metavar="OP",
              help="INT8: leave every node of this op type unquantized (repeatable).")
@click.option("--quantize-op", "quantize_ops", multiple=True, metavar="OP",
              help="INT8: quantize only nodes of these op types, e.g. Conv, MatMul, Gemm (repeatable).")
@click.option("--fp32-node", "fp32_nodes", multiple=True, metavar="REGEX",
              help="FP16: keep nodes whose name matches in FP32 (repeatable).")
@click.option("--fp32-op", "fp32_ops", multiple=True, metavar="OP",
              help="FP16: keep every node of this op type in FP32 (repeatable).")
@click.option("--per-tensor", is_flag=True, help="int8-cpu: per-tensor instead of per-channel weight scales.")
@click.option("--high-precision", type=click.Choice(["fp32", "fp16"]),
              help="int8-trt: dtype of the layers left unquantized (default fp32).")
@click.option("--workspace-mib", type=click.IntRange(16, None), help="tensorrt: builder workspace limit.")
@click.option("--require-gpu", is_flag=True, help="tensorrt: fail (exit 2) instead of skipping without TensorRT/CUDA.")
def optimize_command(
    model: Path, variant_name: str, output: Path, spec_path: Path | None, calibration: Path | None,
    samples: int | None, seed: int | None, root_tree: str | None, root_branches: tuple[str, ...],
    method: str | None, exclude_nodes: tuple[str, ...], exclude_ops: tuple[str, ...],
    quantize_ops: tuple[str, ...], fp32_nodes: tuple[str, ...], fp32_ops: tuple[str, ...], per_tensor: bool, high_precision: str | None,
    workspace_mib: int | None, require_gpu: bool,
) -> None:
    """Make one optimized VARIANT of the ONNX artifact MODEL.

    fp32: onnxslim + ONNX Runtime basic optimisation, outputs checked unchanged.
    fp16: ModelOpt AutoCast, FP32 inputs/outputs, sensitive nodes kept FP32.
    int8-trt: ModelOpt explicit Q/DQ PTQ for TensorRT (needs --calibration).
    int8-cpu: ONNX Runtime static QDQ, u8 activations / s8 per-channel weights (needs --calibration).
    tensorrt: a strongly typed TensorRT .plan (skipped without TensorRT and a CUDA device).
    """

    spec = load_spec(spec_path) if spec_path is not None else None
    vspec = variant_spec(variant_name, spec)
    updates: dict[str, object] = {}
    if method:
        updates["calibration_method"] = method
    if exclude_nodes:
        updates["exclude_nodes"] = [*vspec.exclude_nodes, *exclude_nodes]
    if exclude_ops:
        updates["exclude_op_types"] = [*vspec.exclude_op_types, *exclude_ops]
    if quantize_ops:
        updates["quantize_op_types"] = [*vspec.quantize_op_types, *quantize_ops]
    if fp32_nodes:
        updates["fp32_nodes"] = [*vspec.fp32_nodes, *fp32_nodes]
    if fp32_ops:
        updates["fp32_op_types"] = [*vspec.fp32_op_types, *fp32_ops]
    if per_tensor:
        updates["per_channel"] = False
    if high_precision:
        updates["high_precision_dtype"] = high_precision
    if workspace_mib:
        updates["workspace_mib"] = workspace_mib
    vspec = vspec.model_copy(update=updates)

    if spec is not None and (seed is not None or root_tree or root_branches):
        data = spec.data.model_copy(update={
            **({"seed": seed} if seed is not None else {}),
            **({"root_tree": root_tree} if root_tree else {}),
            **({"root_branches": {**spec.data.root_branches, **_pairs(root_branches)}} if root_branches else {}),
        })
        spec = spec.model_copy(update={"data": data})
    elif spec is None and (seed is not None or root_tree or root_branches):
        spec = _spec_from_model(model, seed, root_tree, _pairs(root_branches))

    if output.is_dir():
        suffix = ".plan" if vspec.name == "tensorrt" else ".onnx"
        output = output / f"{model.stem}.{vspec.name}{suffix}"
    if calibration is None and vspec.name in ("int8-trt", "int8-cpu") and (spec is None or not spec.data.calibration):
        raise BadInputError(f"{vspec.name}: needs calibration data (--calibration FILE)")
    result = optimize_artifact(model, vspec, output, calibration=calibration, spec=spec,
                               require_gpu=require_gpu, samples=samples)
    click.echo(result.line())
    for path in result.outputs:
        click.echo(f"  wrote {path}")


def _pairs(items: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, branch = item.partition("=")
        if not sep or not name or not branch:
            raise BadInputError(f"--root-branch {item!r}: expected INPUT=BRANCH")
        pairs[name] = branch
    return pairs


def _spec_from_model(model: Path, seed: int | None, tree: str | None, branches: dict[str, str]):  # type: ignore[no-untyped-def]
    """A minimal spec from the artifact's own tensor specs, to carry data options."""

    artifact = read_artifact(model)
    return ModelSpec(
        name=artifact.name if artifact.name.isidentifier() else "model",
        source=SourceSpec(framework="onnx", path=str(model)),
        inputs=artifact.sidecar.inputs,
        outputs=artifact.sidecar.outputs,
        data=DataSpec(seed=seed or 0, root_tree=tree, root_branches=branches),
    )


def register(group: click.Group) -> None:
    """Add this module's commands to the main group."""
    group.add_command(optimize_command)
