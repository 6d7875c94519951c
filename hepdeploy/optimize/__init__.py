"""hepdeploy.optimize: one artifact in, one optimized variant out.

``optimize_artifact(source, variant, output)`` makes one of

==========  =====================================================  =========  ========
variant     how                                                    precision  target
==========  =====================================================  =========  ========
fp32        onnxslim + ONNX Runtime basic offline optimisation     fp32       any
fp16        ModelOpt AutoCast, FP32 I/O, sensitive nodes FP32      fp16       tensorrt
int8-trt    ModelOpt ONNX PTQ, explicit Q/DQ, per-channel weights  int8       tensorrt
int8-cpu    ONNX Runtime static QDQ, u8 activations / s8 weights   int8       cpu
tensorrt    TensorRT strongly typed ``.plan`` (GPU only)           (parent)   tensorrt
==========  =====================================================  =========  ========

fp16 and int8 variants start from the simplified graph: when the source has no
``simplify`` step yet, it is simplified first and both steps are recorded. Everything
is deterministic for the same inputs, data, seed and tool versions.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hepdeploy.errors import BadInputError, first_line
from hepdeploy.spec import ModelSpec, TensorSpec, VariantSpec
from hepdeploy.steps import StepResult

log = logging.getLogger("hepdeploy.optimize")

VARIANT_NAMES = ("fp32", "fp16", "int8-trt", "int8-cpu", "tensorrt")
NEEDS_CALIBRATION = ("int8-trt", "int8-cpu")
# The first samples of the calibration data drive AutoCast's reference run and the
# simplify check; more adds time, not information.
REFERENCE_SAMPLES = 64

_RECORDS = {
    "fp32": ("fp32", "any"),
    "fp16": ("fp16", "tensorrt"),
    "int8-trt": ("int8", "tensorrt"),
    "int8-cpu": ("int8", "cpu"),
}


def variant_spec(variant: VariantSpec | str, spec: ModelSpec | None = None) -> VariantSpec:
    """The VariantSpec for a name (the spec's entry when it lists one); unknown names refused."""
    if isinstance(variant, VariantSpec):
        return variant
    if variant not in VARIANT_NAMES:
        raise BadInputError(f"unknown variant {variant!r} (one of {', '.join(VARIANT_NAMES)})")
    return spec.variant(variant) if spec is not None else VariantSpec(name=variant)  # type: ignore[arg-type]


def resolve_calibration(
    calibration: dict[str, np.ndarray] | Path | str | None,
    inputs: list[TensorSpec],
    spec: ModelSpec | None,
    samples: int | None = None,
) -> dict[str, np.ndarray] | None:
    """Calibration arrays from a dict, a data file, or the spec's ``data.calibration``."""
    from hepdeploy.data import check_tensors, load_calibration

    data = spec.data if spec is not None else None
    count = samples or (data.calibration_samples if data else 512)
    if isinstance(calibration, dict):
        arrays = check_tensors(calibration, inputs, where="calibration data")
        n = next(iter(arrays.values())).shape[0]
        if samples is not None and n < samples:
            from hepdeploy.errors import DataError

            raise DataError(f"calibration data: holds {n} samples, fewer than the {samples} asked for")
        return arrays
    path = Path(calibration) if calibration is not None else (spec.resolve(data.calibration) if data else None)
    if path is None:
        return None
    ignore = [t.name for t in spec.outputs] + ([data.labels] if data and data.labels else []) if spec else []
    # A count nobody asked for (no --samples, spec default) adapts to a smaller file.
    explicit = samples is not None or (data is not None and "calibration_samples" in data.model_fields_set)
    return load_calibration(
        path, inputs, samples=count, seed=data.seed if data else 0,
        tree=data.root_tree if data else None, branches=data.root_branches if data else None, ignore=ignore,
        allow_fewer=not explicit,
    )


def optimize_artifact(
    source: Path,
    variant: VariantSpec | str,
    output: Path,
    *,
    calibration: dict[str, np.ndarray] | Path | None = None,
    spec: ModelSpec | None = None,
    require_gpu: bool = False,
    samples: int | None = None,
) -> StepResult:
    """Make one variant of the artifact at ``source`` and write it to ``output``.

    Returns StepResult ok (outputs: the .onnx/.plan and its sidecar) or skipped (tensorrt
    without a GPU); raises HepDeployError subclasses for bad input.
    """
    from hepdeploy.artifacts import read_artifact
    from hepdeploy.fsutil import check_output_folder

    vspec = variant_spec(variant, spec)
    output = check_output_folder(Path(output))
    parent = read_artifact(Path(source))
    if parent.sidecar.sha256 is None:  # a bare .onnx: its inferred sidecar has no file hash yet
        from hepdeploy.fsutil import sha256_file

        parent.sidecar.sha256 = sha256_file(parent.path)
    if vspec.name == "tensorrt":
        from hepdeploy.optimize.tensorrt import build_engine

        if output.suffix != ".plan":
            raise BadInputError(f"{output}: a TensorRT engine is written to a .plan file")
        return build_engine(parent, output, spec=spec, workspace_mib=vspec.workspace_mib, require_gpu=require_gpu)
    if output.suffix != ".onnx":
        raise BadInputError(f"{output}: an optimized variant is written to a .onnx file")
    if output.resolve() == parent.path.resolve():
        raise BadInputError(f"{output}: the output would overwrite the source model")

    inputs = spec.inputs if spec is not None else parent.sidecar.inputs
    arrays = resolve_calibration(calibration, inputs, spec, samples)
    if vspec.name in NEEDS_CALIBRATION and arrays is None:
        raise BadInputError(
            f"{vspec.name}: needs calibration data (--calibration FILE or data.calibration in the spec)"
        )
    return _make_onnx_variant(parent, vspec, output, inputs, arrays, spec)


def _make_onnx_variant(
    parent: Any,
    vspec: VariantSpec,
    output: Path,
    inputs: list[TensorSpec],
    arrays: dict[str, np.ndarray] | None,
    spec: ModelSpec | None,
) -> StepResult:
    import onnx

    from hepdeploy.artifacts import StepRecord, VariantRecord, derive_sidecar, load_onnx, write_artifact
    from hepdeploy.optimize.graph import (
        name_unnamed_nodes,
        package_version,
        prune_opset_imports,
        quiet_dependencies,
        sample_inputs,
    )
    from hepdeploy.optimize.simplify import simplify_model

    sample = sample_inputs(inputs, spec, arrays, count=8)
    steps: list[StepRecord] = []
    model = load_onnx(parent.path)
    already_simple = any(step.name == "simplify" for step in parent.sidecar.steps)
    if vspec.name == "fp32" or not already_simple:
        simplified = simplify_model(model, sample)
        steps.append(StepRecord(name="simplify", tool="onnxslim", tool_version=package_version("onnxslim"),
                                parameters=simplified.parameters))
        model = simplified.model

    if vspec.name != "fp32":
        with tempfile.TemporaryDirectory(prefix="hepdeploy-opt-") as folder:
            prepared = Path(folder) / "prepared.onnx"
            onnx.save(name_unnamed_nodes(model), str(prepared))
            with quiet_dependencies():
                model, step = _precision_step(prepared, vspec, inputs, arrays, spec)
        steps.append(step)

    # Shape hints written by the tools (AutoCast records the sizes of its reference run)
    # are optional and can be wrong for other sizes; ONNX Runtime and TensorRT infer their own.
    del model.graph.value_info[:]
    _check_runs(model, vspec.name, inputs, sample)

    precision, target = _RECORDS[vspec.name]
    if vspec.name == "int8-trt" and vspec.high_precision_dtype == "fp16":
        precision = "mixed"  # INT8 layers plus FP16 for the rest
    record = VariantRecord(name=vspec.name, precision=precision, target=target)  # type: ignore[arg-type]
    sidecar = derive_sidecar(parent, record, steps[0])
    sidecar.steps.extend(steps[1:])
    artifact = write_artifact(prune_opset_imports(model), output, sidecar)
    log.info("%s: wrote %s", vspec.name, output)
    details = {k: v for step in steps for k, v in step.parameters.items() if not isinstance(v, (list, dict))}
    return StepResult(vspec.name, "ok", outputs=[artifact.path, artifact.sidecar_path], details=details)


def _precision_step(
    prepared: Path,
    vspec: VariantSpec,
    inputs: list[TensorSpec],
    arrays: dict[str, np.ndarray] | None,
    spec: ModelSpec | None,
) -> tuple[Any, Any]:
    from hepdeploy.artifacts import StepRecord
    from hepdeploy.optimize.graph import package_version, sample_inputs

    if vspec.name == "fp16":
        from hepdeploy.data import batch_size_for, calibration_feeds
        from hepdeploy.optimize.fp16 import convert_fp16

        if arrays is not None:
            # Fewer samples for big inputs: AutoCast keeps every activation of every run.
            n = min(batch_size_for(arrays, REFERENCE_SAMPLES, budget_bytes=8 << 20), next(iter(arrays.values())).shape[0])
            reference = {name: value[:n] for name, value in arrays.items()}
            source = "calibration data"
        else:
            reference = sample_inputs(inputs, spec, None, count=REFERENCE_SAMPLES, seed=spec.data.seed if spec else 0)
            if not all(t.has_batch_axis for t in inputs):
                reference = {name: value[None] for name, value in reference.items()}
            source = "random samples from the tensor specs"
        feeds = list(calibration_feeds(reference, inputs, batch_size=batch_size_for(reference, 16)))
        model, parameters = convert_fp16(prepared, feeds, vspec.fp32_nodes, vspec.fp32_op_types)
        parameters["reference_data"] = source
        return model, StepRecord(name="fp16", tool="nvidia-modelopt", tool_version=package_version("nvidia-modelopt"),
                                 parameters=parameters)
    if vspec.name == "int8-trt":
        from hepdeploy.optimize.int8 import quantize_for_tensorrt

        assert arrays is not None
        model, parameters = quantize_for_tensorrt(prepared, arrays, inputs, vspec)
        return model, StepRecord(name="int8-trt", tool="nvidia-modelopt",
                                 tool_version=package_version("nvidia-modelopt"), parameters=parameters)
    if vspec.name == "int8-cpu":
        from hepdeploy.optimize.int8 import quantize_for_cpu

        assert arrays is not None
        model, parameters = quantize_for_cpu(prepared, arrays, inputs, vspec)
        return model, StepRecord(name="int8-cpu", tool="onnxruntime",
                                 tool_version=package_version("onnxruntime-gpu") or package_version("onnxruntime"),
                                 parameters=parameters)
    raise BadInputError(f"unknown variant {vspec.name!r} (one of {', '.join(VARIANT_NAMES)})")


def _check_runs(model: Any, variant: str, inputs: list[TensorSpec], sample: dict[str, np.ndarray]) -> None:
    """The variant must load and run in ONNX Runtime on the CPU, at the sample's batch and at
    batch 1, with finite outputs wherever the input model's are finite."""
    from hepdeploy.errors import ConversionError
    from hepdeploy.optimize.graph import run_ort

    batches = [sample]
    if all(t.has_batch_axis for t in inputs) and next(iter(sample.values())).shape[0] > 1:
        batches.append({name: value[:1] for name, value in sample.items()})
    for feeds in batches:
        try:
            outputs = run_ort(model, feeds)
        except Exception as error:  # ORT's own error types; any failure means a broken variant
            first = first_line(error)
            raise ConversionError(f"{variant}: the optimized model does not run in ONNX Runtime: {first[-300:]}") from None
        bad = [name for name, value in outputs.items() if value.dtype.kind == "f" and not np.isfinite(value).all()]
        if bad:
            raise ConversionError(f"{variant}: the optimized model gives NaN/Inf in {', '.join(bad)}")
