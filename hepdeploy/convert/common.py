"""What every converter does after its exporter ran: name, check, self-check, write.

The artifact is only written once the self-check passed, and then atomically, so an
existing output is replaced only by a complete, checked new one.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepdeploy.artifacts import (
    Artifact,
    Sidecar,
    SourceRecord,
    StepRecord,
    VariantRecord,
    opset_of,
    write_artifact,
)
from hepdeploy.backend.base import Runner
from hepdeploy.convert.graph_io import apply_spec_io
from hepdeploy.convert.selfcheck import SelfCheckReport, self_check
from hepdeploy.environment import onnxruntime_version
from hepdeploy.errors import BadInputError, ConversionError, ModelLoadError, first_line
from hepdeploy.fsutil import check_output_folder, sha256_file
from hepdeploy.progress import progress
from hepdeploy.spec import ModelSpec

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("hepdeploy.convert")


def source_sha256(path: Path | None) -> str | None:
    """sha256 of a model file; for a folder (SavedModel), of its files' relative names and contents."""
    if path is None or not Path(path).exists():
        return None
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(item.relative_to(path)).encode())
        digest.update(sha256_file(item).encode())
    return digest.hexdigest()


def check_output_path(output: Path) -> Path:
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise BadInputError(f"{output}: the output must be an .onnx file")
    if output.is_dir():
        raise BadInputError(f"{output}: is a folder; give the path of the .onnx file to write")
    return check_output_folder(output)


def check_converted(
    model: onnx.ModelProto, spec: ModelSpec, where: str, source_runner: Runner
) -> tuple[onnx.ModelProto, StepRecord]:
    """Rename I/O to the spec, run the checker and the self-check; the model and the check's record.

    Raises SpecError (the spec does not fit), ConversionError (broken graph) or
    DisagreementError (the graph does not reproduce its source). Writes nothing.
    """
    import onnx

    model = apply_spec_io(model, spec, where)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as error:  # inference is best effort; the checker below is not
        log.debug("shape inference failed: %s", error)
    model = apply_spec_io(model, spec, where)  # inference may have re-typed I/O; re-assert the spec's
    model.graph.name = spec.name
    try:
        onnx.checker.check_model(model)
    except Exception as error:
        first = first_line(error)
        raise ConversionError(f"{where}: the exported graph fails the ONNX checker: {first}") from error
    started = time.perf_counter()
    with progress("self-check: ONNX Runtime vs the source model"):
        report: SelfCheckReport = self_check(model, source_runner, spec)
    step = StepRecord(name="self-check", tool="onnxruntime", tool_version=onnxruntime_version(),
                      parameters={**report.as_parameters(), "seconds": round(time.perf_counter() - started, 3)})
    return model, step


def write_converted(
    model: onnx.ModelProto, spec: ModelSpec, output: Path, source: SourceRecord, steps: list[StepRecord]
) -> Artifact:
    """Write a checked model and its sidecar (atomically; the .onnx first, then the .json)."""
    sidecar = Sidecar(
        model_name=spec.name,
        source=source,
        exporter=steps[0].tool if steps else None,
        opset=opset_of(model),
        producer=f"{model.producer_name} {model.producer_version}".strip() or None,
        inputs=[t.model_copy(deep=True) for t in spec.inputs],
        outputs=[t.model_copy(deep=True) for t in spec.outputs],
        variant=VariantRecord(name="fp32", precision="fp32", target="any"),
        steps=steps,
    )
    if model.ByteSize() >= 2**31:
        raise ModelLoadError(f"{output}: the model is over 2 GB; external-data models are not supported yet")
    artifact = write_artifact(model, output, sidecar)
    log.info("wrote %s (opset %s, exporter %s)", artifact.path, sidecar.opset, sidecar.exporter)
    return artifact


def finish_conversion(
    model: onnx.ModelProto,
    spec: ModelSpec,
    output: Path,
    source: SourceRecord,
    export_step: StepRecord,
    source_runner: Runner,
) -> Artifact:
    """Check the exported graph against its source, then write the artifact."""
    model, check_step = check_converted(model, spec, str(source.path or spec.name), source_runner)
    return write_converted(model, spec, output, source, [export_step, check_step])


def export_parameters(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
