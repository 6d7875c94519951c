"""ONNX pass-through: check, optional opset conversion, rename to the spec, infer shapes.

The self-check compares the result with the original file in ONNX Runtime, which
catches an opset conversion that changed the numbers.
"""
from __future__ import annotations

import logging
from pathlib import Path

from hepdeploy.artifacts import Artifact, SourceRecord, StepRecord, load_onnx, opset_of
from hepdeploy.backend.base import RenamedRunner
from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
from hepdeploy.convert.common import (
    check_output_path,
    export_parameters,
    finish_conversion,
    source_sha256,
)
from hepdeploy.convert.graph_io import apply_spec_io, real_inputs
from hepdeploy.errors import ConversionError, ModelLoadError, first_line
from hepdeploy.spec import ModelSpec

log = logging.getLogger("hepdeploy.convert.onnx")


def convert_onnx(spec: ModelSpec, output: Path, exporter: str = "auto") -> Artifact:
    """Pass an ONNX model through: checker, opset conversion if asked, spec names, self-check."""
    import onnx

    output = check_output_path(Path(output))
    path = Path(spec.source.path)  # type: ignore[arg-type]  # the spec requires one
    model = load_onnx(path)
    try:
        onnx.checker.check_model(model)
    except Exception as error:
        first = first_line(error)
        raise ModelLoadError(f"{path}: not a valid ONNX model: {first}") from error
    original_inputs = [v.name for v in real_inputs(model)]
    original_outputs = [v.name for v in model.graph.output]
    original_opset = opset_of(model)
    if spec.opset is not None and spec.opset != original_opset:
        try:
            model = onnx.version_converter.convert_version(model, spec.opset)
        except Exception as error:
            first = first_line(error)
            raise ConversionError(f"{path}: cannot convert opset {original_opset} to {spec.opset}: {first}") from error
    apply_spec_io(model, spec, str(path))  # spec mistakes are reported before anything runs
    source_model = OnnxRuntimeRunner(path, name=f"onnx:{path}")
    runner = RenamedRunner(
        source_model,
        dict(zip([t.name for t in spec.inputs], original_inputs, strict=False)),
        dict(zip([t.name for t in spec.outputs], original_outputs, strict=False)),
        name=f"onnx:{path}",
    )
    source = SourceRecord(path=str(path), sha256=source_sha256(path), framework="onnx",
                          framework_version=f"onnx {onnx.__version__}",
                          producer=f"{model.producer_name} {model.producer_version}".strip() or None)
    step = StepRecord(name="export", tool="onnx-passthrough", tool_version=onnx.__version__,
                      parameters=export_parameters(original_opset=original_opset, opset=opset_of(model),
                                                   renamed_inputs=dict(zip(original_inputs,
                                                                           [t.name for t in spec.inputs],
                                                                           strict=False)),
                                                   renamed_outputs=dict(zip(original_outputs,
                                                                            [t.name for t in spec.outputs],
                                                                            strict=False))))
    return finish_conversion(model, spec, output, source, step, runner)
