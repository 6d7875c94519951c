"""Keras (``.keras``/``.h5``) and TensorFlow SavedModel sources, through tf2onnx.

The graph is renamed to the spec's tensor names (no ``:0``) and its dynamic dimensions
get the spec's names (no ``unk__N``); named dimensions, batch included, stay dynamic.
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

from hepdeploy.artifacts import Artifact, SourceRecord, StepRecord
from hepdeploy.backend.loaders import (
    load_keras,
    load_savedmodel_callable,
    tf_input_signature,
)
from hepdeploy.backend.tf import KerasRunner, SavedModelRunner
from hepdeploy.convert.common import (
    check_output_path,
    export_parameters,
    finish_conversion,
    source_sha256,
)
from hepdeploy.errors import (
    ConversionError,
    DependencyMissingError,
    SpecError,
    first_line,
)
from hepdeploy.progress import progress
from hepdeploy.spec import ModelSpec
from hepdeploy.tf_support import import_tensorflow

log = logging.getLogger("hepdeploy.convert.tensorflow")

TF2ONNX_DEFAULT_OPSET = 17


def _tf2onnx() -> Any:
    import_tensorflow()
    try:
        import tf2onnx
    except ImportError as error:
        raise DependencyMissingError(f"tf2onnx is not installed ({error}); install hepdeploy[tf]") from error
    return tf2onnx


def check_keras_inputs(model: Any, spec: ModelSpec, where: str) -> None:
    """The spec's inputs must match the Keras model's in number, rank and fixed sizes."""
    shapes = [tuple(t.shape) for t in model.inputs]
    if len(shapes) != len(spec.inputs):
        raise SpecError(f"{where}: the model has {len(shapes)} input(s) but the spec lists {len(spec.inputs)}")
    for shape, tensor in zip(shapes, spec.inputs, strict=True):
        if len(shape) != len(tensor.shape):
            raise SpecError(f"{where}: input {tensor.name!r} has rank {len(tensor.shape)} in the spec "
                            f"{tensor.shape} but the model's input has rank {len(shape)} "
                            f"{[d if d is not None else '?' for d in shape]}")
        for k, (have, want) in enumerate(zip(shape, tensor.shape, strict=True)):
            if isinstance(want, int) and have is not None and have != want:
                raise SpecError(f"{where}: input {tensor.name!r} dimension {k} is {want} in the spec but "
                                f"{have} in the model")
            if isinstance(want, str) and have is not None:
                raise SpecError(f"{where}: input {tensor.name!r} dimension {k} is {want!r} (dynamic) in the spec "
                                f"but fixed to {have} in the model")


def _source_record(spec: ModelSpec, path: Path) -> SourceRecord:
    tf = import_tensorflow()
    import keras

    version = f"tensorflow {tf.__version__}, keras {keras.__version__}"
    return SourceRecord(path=str(path), sha256=source_sha256(path), framework=spec.source.framework,
                        framework_version=version)


def _export(tf2onnx: Any, entry: str, source: Any, signature: Any, spec: ModelSpec, where: object,
            shape_misfit: str | None = None) -> tuple[Any, StepRecord]:
    """Run ``tf2onnx.convert.<entry>`` on ``source`` (its warnings silenced); the ONNX proto and the export step.

    ``shape_misfit`` names the source kind whose shape, rank or compatibility errors are the
    spec's fault (its inputs do not fit a traced function): those become SpecErrors.
    """
    opset = spec.opset or TF2ONNX_DEFAULT_OPSET
    started = time.perf_counter()
    try:
        with progress(f"converting {spec.name} with tf2onnx"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proto, _ = getattr(tf2onnx.convert, entry)(source, input_signature=signature, opset=opset)
    except Exception as error:
        text = first_line(error)
        if shape_misfit and ("shape" in text.lower() or "rank" in text.lower() or "incompatible" in text.lower()):
            raise SpecError(f"{where}: the spec's input shapes do not fit the {shape_misfit}: {text}") from error
        raise ConversionError(f"{where}: tf2onnx failed: {type(error).__name__}: {text}") from error
    step = StepRecord(name="export", tool="tf2onnx", tool_version=tf2onnx.__version__,
                      parameters=export_parameters(opset=opset, entry=entry,
                                                   seconds=round(time.perf_counter() - started, 3)))
    return proto, step


def convert_keras_model(model: Any, spec: ModelSpec, output: Path, source: SourceRecord) -> Artifact:
    """A loaded Keras model to a checked artifact."""
    tf2onnx = _tf2onnx()
    output = check_output_path(Path(output))
    where = source.path or spec.name
    check_keras_inputs(model, spec, str(where))
    proto, step = _export(tf2onnx, "from_keras", model, tf_input_signature(spec), spec, where)
    runner = KerasRunner(model, spec.inputs, [t.name for t in spec.outputs], name=f"keras:{where}")
    return finish_conversion(proto, spec, output, source, step, runner)


def convert_keras(spec: ModelSpec, output: Path, exporter: str = "auto") -> Artifact:
    """Convert a spec whose source is a Keras ``.keras``/``.h5`` file."""
    check_output_path(Path(output))
    path = Path(spec.source.path)  # type: ignore[arg-type]  # the spec requires one
    model = load_keras(path)
    return convert_keras_model(model, spec, output, _source_record(spec, path))


def convert_savedmodel(spec: ModelSpec, output: Path, exporter: str = "auto") -> Artifact:
    """Convert a spec whose source is a TensorFlow SavedModel folder."""
    tf2onnx = _tf2onnx()
    output = check_output_path(Path(output))
    path = Path(spec.source.path)  # type: ignore[arg-type]  # the spec requires one
    signature = tf_input_signature(spec)
    function = load_savedmodel_callable(path, signature)
    proto, step = _export(tf2onnx, "from_function", function, signature, spec, path, shape_misfit="SavedModel")
    runner = SavedModelRunner(function, spec.inputs, [t.name for t in spec.outputs], name=f"savedmodel:{path}")
    return finish_conversion(proto, spec, output, _source_record(spec, path), step, runner)
