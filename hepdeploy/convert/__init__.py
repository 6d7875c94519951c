"""Conversion of trained models to the hepdeploy artifact (single-file ONNX + sidecar).

One entry point, :func:`convert_from_spec`, dispatches on ``spec.source.framework`` to
one converter per source:

- ``torch`` / ``torchscript`` / ``exported_program``: :func:`convert_torch`
  (exporter auto|dynamo|torchscript),
- ``keras``: :func:`convert_keras`, ``savedmodel``: :func:`convert_savedmodel` (tf2onnx),
- ``onnx``: :func:`convert_onnx` (pass-through),
- ``zoo``: the zoo network is exported to its source format first, then converted.

Every converter self-checks the new graph against its source before anything is written.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepdeploy.artifacts import Artifact, SourceRecord
from hepdeploy.convert.common import check_output_path
from hepdeploy.convert.from_onnx import convert_onnx
from hepdeploy.convert.from_tensorflow import convert_keras, convert_savedmodel
from hepdeploy.convert.from_torch import convert_torch
from hepdeploy.errors import ModelLoadError, SpecError
from hepdeploy.fsutil import atomic_write_text, check_input_file, missing
from hepdeploy.lifetime import work_folder
from hepdeploy.model_zoo import export_network

if TYPE_CHECKING:
    from hepdeploy.spec import ModelSpec

log = logging.getLogger("hepdeploy.convert")

EXPORTERS = ("auto", "dynamo", "torchscript")


def merge_zoo_spec(user: ModelSpec, zoo_spec: ModelSpec) -> ModelSpec:
    """The zoo's concrete spec, with every field the user's spec set explicitly winning.

    Data paths the user gives stay relative to the user's spec folder.
    """
    if zoo_spec.source.framework == "zoo":
        raise SpecError(f"zoo network {user.source.zoo!r} exported a spec that is itself a zoo source")
    update: dict[str, Any] = {"name": user.name}
    for key in ("inputs", "outputs", "dims", "opset", "data", "variants", "validation", "triton"):
        if key in user.model_fields_set:
            update[key] = getattr(user, key)
    if "dims" in update:
        update["dims"] = {**zoo_spec.dims, **user.dims}
    if "data" in update:
        data = user.data.model_copy(update={
            key: str(user.resolve(getattr(user.data, key)))
            for key in ("calibration", "reference") if getattr(user.data, key)
        })
        update["data"] = data
    return zoo_spec.model_copy(update=update)


def convert_zoo(
    spec: ModelSpec,
    output: Path,
    exporter: str = "auto",
    work_dir: Path | None = None,
    train: bool = True,
    budget: str = "full",
) -> Artifact:
    """Export the zoo network to its source format, then convert that.

    The network's model file, spec and data files go to ``work_dir`` (kept) or a temporary
    folder (removed afterwards). ``train``/``budget`` are passed to the zoo (trained
    weights are cached there). Fields the user's spec sets explicitly (tensors, dims,
    data, variants, validation, triton, opset) win over the zoo's.
    """
    with work_folder("zoo") as tmp:
        folder = Path(work_dir) if work_dir is not None else Path(tmp)
        exported = export_network(spec.source.zoo, folder, flavour=spec.source.zoo_flavour, train=train,
                                  budget=budget)
        merged = merge_zoo_spec(spec, exported.spec)
        artifact = convert_from_spec(merged, output, exporter)
        # Record the zoo network as the source (the exported file may live in a temp folder).
        old = artifact.sidecar.source
        extra = {k: v for k, v in (old.model_extra or {}).items() if k not in ("factory", "weights", "weights_sha256")}
        source = SourceRecord(path=old.path if work_dir is not None else None, sha256=old.sha256,
                              framework=old.framework, framework_version=old.framework_version, **extra,
                              zoo=spec.source.zoo, zoo_flavour=spec.source.zoo_flavour or exported.spec.source.framework,
                              zoo_trained=exported.trained, zoo_budget=exported.budget)
        sidecar = artifact.sidecar.model_copy(update={"source": source})
        atomic_write_text(artifact.sidecar_path, sidecar.model_dump_json(indent=2) + "\n")
    return Artifact(path=artifact.path, sidecar=sidecar)


_CONVERTERS = {
    "torch": convert_torch,
    "torchscript": convert_torch,
    "exported_program": convert_torch,
    "keras": convert_keras,
    "savedmodel": convert_savedmodel,
    "onnx": convert_onnx,
    "zoo": convert_zoo,
}


def convert_from_spec(spec: ModelSpec, output: Path, exporter: str = "auto") -> Artifact:
    """Convert the spec's source model to a checked artifact at ``output`` (``.onnx`` + ``.json``)."""
    if exporter not in EXPORTERS:
        raise SpecError(f"unknown exporter {exporter!r} (one of {', '.join(EXPORTERS)})")
    check_output_path(Path(output))
    framework = spec.source.framework
    if framework not in ("torch", "zoo") and spec.source.path:
        path = spec.resolve(spec.source.path)
        if framework != "savedmodel":
            check_input_file(path, f"{framework} model")  # type: ignore[arg-type]
        elif not Path(path).exists():  # type: ignore[arg-type]

            raise ModelLoadError(missing(path, "SavedModel folder"))
    return _CONVERTERS[framework](spec, Path(output), exporter)


__all__ = ["EXPORTERS", "convert_from_spec", "merge_zoo_spec", "convert_keras", "convert_onnx", "convert_savedmodel",
           "convert_torch", "convert_zoo"]
