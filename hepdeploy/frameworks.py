"""The source-framework registry: every framework a spec's source model can be in, in one table.

The spec (which ``source.framework`` values it accepts), the CLI (``--framework`` choices), the backend
(how a file is sniffed, how the model is loaded and run) and the convert stage (how it becomes ONNX) all
read this table. Loaders, runners and converters are named as ``module:function`` and imported by the
floor that calls them, so this module stays below every floor. A new source framework is one entry here,
its loader and runner in ``backend/`` and its converter in ``convert/``.

- ``loader(spec) -> model``: the loaded model object (None: the runner opens the file itself).
- ``runner(spec, model_or_None, name) -> Runner``: runs the source next to its ONNX export.
- ``converter(spec, output, exporter) -> Artifact``: the checked ONNX artifact.

A zoo network is not a framework: :func:`hepdeploy.model_zoo.zoo_source_spec` turns a ``framework: zoo``
spec into a spec of the framework the network is exported in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hepdeploy.errors import SpecError
from hepdeploy.registry import named_function

# torch.save, TorchScript and ExportedProgram files share suffixes: their content tells them apart.
TORCH_ARCHIVE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".jit", ".torchscript")


@dataclass(frozen=True)
class SourceFramework:
    """One framework a source model can be in: how it is recognised, loaded, run and converted."""

    name: str
    suffixes: tuple[str, ...]  # file suffixes that name it (a folder format or a factory: none)
    loader: str | None  # "module:function"; None: the runner opens the file itself
    runner: str  # "module:function"
    converter: str  # "module:function"
    needs_path: bool = True  # the spec's source gives a `path` (torch may give a factory instead)
    is_folder: bool = False  # the model is a folder, not a file

    def load(self, spec: Any) -> Any:
        """The loaded source model of ``spec`` (None when the runner opens the file itself)."""
        return named_function(self.loader)(spec) if self.loader is not None else None

    def open_runner(self, spec: Any, model: Any, name: str) -> Any:
        return named_function(self.runner)(spec, model, name)

    def convert(self, spec: Any, output: Any, exporter: str) -> Any:
        return named_function(self.converter)(spec, output, exporter)


_TORCH_CONVERTER = "hepdeploy.convert.from_torch:convert_torch"
REGISTRY: tuple[SourceFramework, ...] = (
    SourceFramework("torch", (), "hepdeploy.backend.loaders:load_torch_source",
                    "hepdeploy.backend.sources:torch_runner", _TORCH_CONVERTER, needs_path=False),
    SourceFramework("torchscript", TORCH_ARCHIVE_SUFFIXES, "hepdeploy.backend.loaders:load_torch_source",
                    "hepdeploy.backend.sources:torch_runner", _TORCH_CONVERTER),
    SourceFramework("exported_program", (".pt2",), "hepdeploy.backend.loaders:load_torch_source",
                    "hepdeploy.backend.sources:torch_runner", _TORCH_CONVERTER),
    SourceFramework("keras", (".keras", ".h5", ".hdf5"), "hepdeploy.backend.loaders:load_keras_source",
                    "hepdeploy.backend.sources:keras_runner", "hepdeploy.convert.from_tensorflow:convert_keras"),
    SourceFramework("savedmodel", (), "hepdeploy.backend.loaders:load_savedmodel_source",
                    "hepdeploy.backend.sources:savedmodel_runner",
                    "hepdeploy.convert.from_tensorflow:convert_savedmodel", is_folder=True),
    SourceFramework("onnx", (".onnx",), None, "hepdeploy.backend.sources:onnx_runner",
                    "hepdeploy.convert.from_onnx:convert_onnx"),
)
FRAMEWORK_NAMES: tuple[str, ...] = tuple(f.name for f in REGISTRY)
_BY_NAME = {f.name: f for f in REGISTRY}


def source_framework(name: str) -> SourceFramework:
    """The registry's entry for ``name``; anything else is refused with the names there are."""
    if name == "zoo":
        raise SpecError("a 'zoo' source is a network of the model zoo, not a model file: export it first "
                        "(hepdeploy zoo export, or hepdeploy build / convert with the zoo spec)")
    if name not in _BY_NAME:
        raise SpecError(f"unknown source framework {name!r} (one of {', '.join(FRAMEWORK_NAMES)})")
    return _BY_NAME[name]


def framework_of_suffix(suffix: str) -> SourceFramework | None:
    """The entry whose files carry ``suffix`` (a torch archive: ``torchscript``, whose content may still say
    state dict or ExportedProgram), else None."""
    suffix = suffix.lower()
    return next((f for f in REGISTRY if suffix in f.suffixes), None)


