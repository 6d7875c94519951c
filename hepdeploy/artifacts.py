"""The artifact every stage reads and writes: ``NAME.onnx`` plus ``NAME.json``.

The ``.onnx`` holds its weights inside (no external data under 2 GB); the JSON
sidecar of the same stem records where the model came from and what was done to it.
Stages talk only through these files and the plain classes below.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hepdeploy import __version__
from hepdeploy.errors import ModelLoadError
from hepdeploy.fsutil import (
    atomic_path,
    atomic_write_text,
    check_input_file,
    sha256_file,
)
from hepdeploy.graph_bounds import proven_leading_dims
from hepdeploy.spec import TensorSpec
from hepdeploy.variants import Precision, Target

if TYPE_CHECKING:
    import onnx

_log = logging.getLogger(__name__)

SIDECAR_SCHEMA = 1


class SourceRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    path: str | None = None
    sha256: str | None = None
    framework: str
    framework_version: str | None = None


class StepRecord(BaseModel):
    """One transformation applied to the model (export, simplify, fp16, int8 ...)."""

    model_config = ConfigDict(extra="allow")
    name: str
    tool: str | None = None
    tool_version: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    at: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


class VariantRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = "fp32"
    precision: Precision = "fp32"
    target: Target = "any"


class Sidecar(BaseModel):
    model_config = ConfigDict(extra="allow")
    schema_version: int = SIDECAR_SCHEMA
    hepdeploy_version: str = __version__
    model_name: str
    source: SourceRecord
    exporter: str | None = None
    opset: int | None = None
    producer: str | None = None
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    variant: VariantRecord = Field(default_factory=VariantRecord)
    steps: list[StepRecord] = Field(default_factory=list)
    sha256: str | None = Field(None, description="sha256 of the .onnx file this sidecar describes")
    parent: str | None = Field(None, description="sha256 of the artifact this one was derived from")


class Artifact(BaseModel):
    """An ONNX model file and its sidecar."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    path: Path
    sidecar: Sidecar

    @property
    def sidecar_path(self) -> Path:
        return sidecar_path_for(self.path)

    @property
    def name(self) -> str:
        return self.sidecar.model_name


def sidecar_path_for(onnx_path: Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


def engine_sidecar_path(engine_path: Path) -> Path:
    """``X.plan.json``: an engine keeps its suffix in its sidecar's name, beside ``X.onnx``'s ``X.json``."""
    return Path(engine_path).with_name(Path(engine_path).name + ".json")


def read_engine_sidecar(model_file: Path) -> Sidecar | None:
    """The sidecar of a non-ONNX model file: ``X.plan.json`` (hepdeploy's engines), else ``X.json``; None if unreadable."""
    for side in (engine_sidecar_path(model_file), sidecar_path_for(model_file)):
        if side.is_file() and side != Path(model_file):
            try:
                return Sidecar.model_validate_json(side.read_text(encoding="utf-8"))
            except (OSError, ValidationError):
                continue
    return None


def load_onnx(path: Path, load_weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX file or raise ModelLoadError with one clear line."""
    import onnx

    path = check_input_file(Path(path), "ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except Exception as error:  # onnx raises DecodeError, OSError, ValueError ...
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(error).__name__})") from error
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: not a readable ONNX model (empty graph)")
    return model


def save_onnx(model: onnx.ModelProto, path: Path) -> Path:
    """Write a single-file ONNX model atomically (weights inside, checked first)."""
    import onnx

    data = model.SerializeToString()
    if len(data) >= 2**31:
        raise ModelLoadError(f"{path}: model is over 2 GB; external-data models are not supported yet")
    with atomic_path(Path(path), suffix=".onnx.tmp") as tmp:
        tmp.write_bytes(data)
        onnx.checker.check_model(str(tmp))
    return Path(path)


def write_artifact(model: onnx.ModelProto, path: Path, sidecar: Sidecar) -> Artifact:
    """Write the ``.onnx`` then its sidecar, both atomically; the sidecar records the file's sha256."""
    path = Path(path)
    save_onnx(model, path)
    sidecar = sidecar.model_copy(update={"sha256": sha256_file(path), "opset": opset_of(model) or sidecar.opset})
    atomic_write_text(sidecar_path_for(path), sidecar.model_dump_json(indent=2) + "\n")
    return Artifact(path=path, sidecar=sidecar)


def read_artifact(path: Path) -> Artifact:
    """Read an artifact; an ONNX file without a sidecar gets one inferred from its graph."""
    path = check_input_file(Path(path), "ONNX model")
    side = sidecar_path_for(path)
    if side.is_file():
        try:
            sidecar = Sidecar.model_validate(json.loads(side.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, ValidationError) as error:
            raise ModelLoadError(f"{side}: not a valid hepdeploy sidecar ({type(error).__name__})") from error
        return Artifact(path=path, sidecar=sidecar)
    model = load_onnx(path, load_weights=False)
    inputs, outputs = tensor_specs_of(model)
    sidecar = Sidecar(
        model_name=path.stem,
        source=SourceRecord(path=str(path), sha256=sha256_file(path), framework="onnx"),
        opset=opset_of(model),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=inputs,
        outputs=outputs,
    )
    return Artifact(path=path, sidecar=sidecar)


def derive_sidecar(parent: Artifact, variant: VariantRecord, step: StepRecord) -> Sidecar:
    """The sidecar of a model made from ``parent`` by one more step."""
    return parent.sidecar.model_copy(
        deep=True,
        update={
            "variant": variant,
            "steps": [*parent.sidecar.steps, step],
            "parent": parent.sidecar.sha256,
            "sha256": None,
        },
    )


def opset_of(model: onnx.ModelProto) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


_ONNX_TO_NUMPY = {
    1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64",
    9: "bool", 10: "float16", 11: "float64", 16: "bfloat16",
}


def onnx_elem_type_name(elem_type: int) -> str:
    return _ONNX_TO_NUMPY.get(elem_type, f"onnx_type_{elem_type}")


def tensor_specs_of(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Tensor specs of a graph's real inputs (initializers excluded) and outputs.

    Unnamed dynamic dimensions become ``dim<K>``; this never fails on odd names, since
    it also describes models hepdeploy did not write.
    """
    initializers = {init.name for init in model.graph.initializer}

    def spec(value: Any, position: int) -> TensorSpec:
        shape: list[int | str] = []
        for k, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param") and dim.dim_param.isidentifier():
                shape.append(dim.dim_param)
            else:
                shape.append(f"dim{position}_{k}")
        return TensorSpec.model_construct(
            name=value.name, dtype=onnx_elem_type_name(value.type.tensor_type.elem_type), shape=shape
        )

    inputs = [spec(v, i) for i, v in enumerate(model.graph.input) if v.name not in initializers]
    outputs = [spec(v, i) for i, v in enumerate(model.graph.output)]
    return inputs, _with_shared_leading_dim(model, inputs, outputs)


def _with_shared_leading_dim(model: onnx.ModelProto, inputs: list[TensorSpec],
                             outputs: list[TensorSpec]) -> list[TensorSpec]:
    """Outputs whose leading dim the exporter named otherwise than the inputs' one shared name, renamed to it
    where symbolic shape inference proves it is the same dim; the rest as the graph declares them."""
    leading = {t.shape[0] if t.shape else None for t in inputs}
    dim = next(iter(leading)) if len(leading) == 1 else None
    differ = [t for t in outputs if t.shape and isinstance(t.shape[0], str) and t.shape[0] != dim]
    if not isinstance(dim, str) or not differ:
        return outputs
    proven, why = proven_leading_dims(model, dim)
    if any(t.name not in proven for t in differ):
        _log.info("leading dims kept as the graph names them (%s)", why)
    for tensor in differ:
        if tensor.name in proven:
            _log.info("output %r: leading dim %r is the inputs' %r (symbolic shape inference)", tensor.name,
                      tensor.shape[0], dim)
    renamed = {t.name for t in differ if t.name in proven}
    return [t.model_copy(update={"shape": [dim, *t.shape[1:]]}) if t.name in renamed else t for t in outputs]
