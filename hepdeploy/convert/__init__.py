"""Conversion of trained models to the hepdeploy artifact (single-file ONNX + sidecar).

One entry point, :func:`convert_from_spec`, hands the spec to its framework's converter
(the framework registry, :mod:`hepdeploy.frameworks`):

- ``torch`` / ``torchscript`` / ``exported_program``: :func:`convert_torch`
  (exporter auto|dynamo|torchscript),
- ``keras``: :func:`convert_keras`, ``savedmodel``: :func:`convert_savedmodel` (tf2onnx),
- ``onnx``: :func:`convert_onnx` (pass-through).

A ``framework: zoo`` spec is first turned into a spec of the network's exported source
(:func:`hepdeploy.model_zoo.zoo_source_spec`), then converted like any other (:func:`convert_zoo`).

Every converter self-checks the new graph against its source before anything is written.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from hepdeploy.artifacts import Artifact, SourceRecord
from hepdeploy.convert.common import check_output_path
from hepdeploy.convert.from_onnx import convert_onnx
from hepdeploy.convert.from_tensorflow import convert_keras, convert_savedmodel
from hepdeploy.convert.from_torch import convert_torch
from hepdeploy.errors import ModelLoadError, SpecError
from hepdeploy.frameworks import source_framework
from hepdeploy.fsutil import atomic_write_text, check_input_file, missing
from hepdeploy.lifetime import work_folder
from hepdeploy.model_zoo import zoo_source_spec

if TYPE_CHECKING:
    from hepdeploy.spec import ModelSpec

log = logging.getLogger("hepdeploy.convert")

EXPORTERS = ("auto", "dynamo", "torchscript")


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
        merged, exported = zoo_source_spec(spec, folder, train=train, budget=budget)
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


def convert_from_spec(spec: ModelSpec, output: Path, exporter: str = "auto") -> Artifact:
    """Convert the spec's source model to a checked artifact at ``output`` (``.onnx`` + ``.json``)."""
    if exporter not in EXPORTERS:
        raise SpecError(f"unknown exporter {exporter!r} (one of {', '.join(EXPORTERS)})")
    check_output_path(Path(output))
    if spec.source.framework == "zoo":
        return convert_zoo(spec, Path(output), exporter)
    framework = source_framework(spec.source.framework)
    if framework.needs_path and spec.source.path:
        path = Path(spec.source.path)
        if not framework.is_folder:
            check_input_file(path, f"{framework.name} model")
        elif not path.exists():
            raise ModelLoadError(missing(path, f"{framework.name} folder"))
    return framework.convert(spec, Path(output), exporter)  # type: ignore[no-any-return]


__all__ = ["EXPORTERS", "convert_from_spec", "convert_keras", "convert_onnx", "convert_savedmodel", "convert_torch",
           "convert_zoo"]
