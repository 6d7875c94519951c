"""Loading source models safely (the deferred half of a runner: load here, run in a Runner).

- torch: a ``module:function`` factory builds the nn.Module; weights are a state dict
  read with ``torch.load(weights_only=True)``. A pickle that is not weights-only is
  refused (its code is never executed).
- TorchScript ``.pt`` (torch.jit.load), ExportedProgram ``.pt2`` (torch.export.load).
- Keras ``.keras``/``.h5`` (keras.models.load_model, safe mode), TF SavedModel folder.
Framework imports happen inside the functions.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepdeploy.errors import (
    DependencyMissingError,
    ModelLoadError,
    SpecError,
    first_line,
)
from hepdeploy.frameworks import FRAMEWORK_NAMES, TORCH_ARCHIVE_SUFFIXES, framework_of_suffix, source_framework
from hepdeploy.fsutil import check_input_file, missing, shown
from hepdeploy.tf_support import import_tensorflow

if TYPE_CHECKING:
    from hepdeploy.spec import ModelSpec

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- file kinds

def sniff_framework(path: Path) -> str:
    """Guess the framework of a model file from its suffix and content.

    Returns one of torchscript, torch_pickle, exported_program, keras, savedmodel, onnx.
    ``torch_pickle`` is a ``torch.save`` file (state dict): it needs a factory.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(missing(path, "model file"))
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "savedmodel"
        raise ModelLoadError(f"{path}: a folder but not a TensorFlow SavedModel (no saved_model.pb)")
    suffix = path.suffix.lower()
    if suffix in TORCH_ARCHIVE_SUFFIXES:
        return torch_file_kind(path)
    framework = framework_of_suffix(suffix)
    if framework is None:
        raise ModelLoadError(f"{path}: cannot tell the framework from the suffix {suffix or '(none)'!r}; "
                             f"use --framework ({', '.join(FRAMEWORK_NAMES)})")
    return framework.name


def torch_file_kind(path: Path) -> str:
    """'torchscript' for a TorchScript archive, 'exported_program' for a .pt2 archive, else 'torch_pickle'."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            head = handle.read(2)
        # Legacy (non-zip) torch.save files start with a pickle protocol marker.
        if head[:1] == b"\x80":
            return "torch_pickle"
        raise ModelLoadError(f"{path}: not a PyTorch file (neither a zip archive nor a pickle)")
    try:
        names = zipfile.ZipFile(path).namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise ModelLoadError(f"{path}: not a readable PyTorch archive ({first_line(error)})") from error
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any("/models/" in n and n.endswith(".json") for n in names) or any(n.endswith("archive_format") for n in names):
        return "exported_program"
    return "torch_pickle"


# ---------------------------------------------------------------- torch

def _import_torch() -> Any:
    try:
        import torch
    except ImportError as error:  # pragma: no cover - torch is a core dependency
        raise DependencyMissingError(f"PyTorch is not installed ({error})") from error
    return torch


def load_state_dict(path: Path) -> dict[str, Any]:
    """Read a state dict with ``weights_only=True``; anything else is refused, never executed."""
    torch = _import_torch()
    path = check_input_file(Path(path), "weights file")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        import pickle

        if isinstance(error, pickle.UnpicklingError) or "weights_only" in str(error) or "Weights only" in str(error):
            raise ModelLoadError(
                f"{path}: refused: this pickle is not weights-only (loading it would run arbitrary code); "
                "save a state dict with torch.save(model.state_dict(), path) or a TorchScript/ExportedProgram file"
            ) from error
        raise ModelLoadError(f"{path}: not a readable PyTorch weights file ({first_line(error)})") from error
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]  # common checkpoint layout: {'state_dict': ..., 'epoch': ...}
    if not isinstance(data, dict) or not all(hasattr(v, "shape") for v in data.values()):
        raise ModelLoadError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return data


@contextlib.contextmanager
def _on_sys_path(folder: Path | None) -> Iterator[None]:
    if folder is None:
        yield
        return
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def resolve_factory(factory: str, module_file: Path | None = None, module_dir: Path | None = None) -> Callable[..., Any]:
    """Find the callable named by ``package.module:function`` (or ``function`` in ``module_file``), importing
    from ``module_dir`` (the spec's ``source.factory_dir``) or the working directory."""
    module_name, _, function_name = factory.partition(":")
    if not module_name or not function_name:
        raise SpecError(f"factory {factory!r} must look like 'package.module:function'")
    try:
        if module_file is not None:
            module_file = check_input_file(module_file, "factory module")
            import_spec = importlib.util.spec_from_file_location(module_name, module_file)
            if import_spec is None or import_spec.loader is None:
                raise ModelLoadError(f"{module_file}: cannot import as a Python module")
            module = importlib.util.module_from_spec(import_spec)
            import_spec.loader.exec_module(module)
        else:
            with _on_sys_path(module_dir), _on_sys_path(Path.cwd()):
                module = importlib.import_module(module_name)
    except ModelLoadError:
        raise
    except ImportError as error:
        raise ModelLoadError(f"factory {factory!r}: cannot import module {module_name!r} ({first_line(error)})") from error
    except Exception as error:
        raise ModelLoadError(f"factory {factory!r}: importing {module_name!r} failed: "
                             f"{type(error).__name__}: {first_line(error)}") from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ModelLoadError(f"factory {factory!r}: module {module_name!r} has no callable {function_name!r}")
    return function


def build_torch_module(factory: str, factory_kwargs: dict[str, Any] | None = None, weights: Path | None = None,
                       module_file: Path | None = None, module_dir: Path | None = None) -> Any:
    torch = _import_torch()
    function = resolve_factory(factory, module_file, module_dir)
    try:
        module = function(**(factory_kwargs or {}))
    except Exception as error:
        raise ModelLoadError(f"factory {factory!r} raised {type(error).__name__}: {first_line(error)}") from error
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"factory {factory!r} returned {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        state = load_state_dict(weights)
        try:
            module.load_state_dict(state)
        except RuntimeError as error:
            raise ModelLoadError(f"{weights}: does not fit the module from {factory!r}: {first_line(error)}") from error
    return module.eval()


def load_torchscript(path: Path) -> Any:
    torch = _import_torch()
    path = check_input_file(Path(path), "TorchScript model")
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as error:
        raise ModelLoadError(f"{path}: not a readable TorchScript model ({first_line(error)})") from error


def load_exported_program(path: Path) -> Any:
    torch = _import_torch()
    path = check_input_file(Path(path), "ExportedProgram")
    try:
        return torch.export.load(str(path))
    except Exception as error:
        raise ModelLoadError(f"{path}: not a readable torch.export ExportedProgram ({first_line(error)})") from error


def load_torch_source(spec: ModelSpec) -> Any:
    """The nn.Module / ScriptModule / ExportedProgram a torch-family spec names."""
    source = spec.source
    path = Path(source.path) if source.path else None
    if source.framework == "torchscript":
        return load_torchscript(path)  # type: ignore[arg-type]  # the spec requires one
    if source.framework == "exported_program":
        return load_exported_program(path)  # type: ignore[arg-type]
    weights = Path(source.weights) if source.weights else None
    module_file = None
    if path is not None:
        if path.suffix == ".py":
            module_file = path
        elif weights is None:
            weights = path  # `path:` pointing at a state dict
    if not source.factory:
        raise SpecError(f"{spec.name}: source.framework 'torch' needs 'factory: module:function'")
    module_dir = Path(source.factory_dir) if source.factory_dir else None
    return build_torch_module(source.factory, source.factory_kwargs, weights, module_file, module_dir)


# ---------------------------------------------------------------- keras / tensorflow

def load_keras(path: Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(missing(path, "Keras model"))
    if path.suffix == ".keras" and path.is_file() and not zipfile.is_zipfile(path):
        # Keras says "File not found" for these: say what it is.
        raise ModelLoadError(f"{shown(path)}: not a readable Keras model (a .keras file is a zip archive; this one "
                             "is truncated or of another kind)")
    import_tensorflow()
    import keras

    try:
        # safe_mode (the default) refuses to deserialize lambdas, i.e. arbitrary code.
        return keras.models.load_model(str(path), compile=False)
    except Exception as error:
        raise ModelLoadError(f"{path}: not a readable Keras model ({type(error).__name__}: {first_line(error)})") from error


def tf_input_signature(spec: ModelSpec) -> list[Any]:
    """tf.TensorSpec per spec input: named dimensions become None."""
    tf = import_tensorflow()
    return [
        tf.TensorSpec([None if isinstance(d, str) else d for d in t.shape], tf.as_dtype(t.dtype), name=t.name)
        for t in spec.inputs
    ]


def load_savedmodel(path: Path) -> Any:
    tf = import_tensorflow()
    path = Path(path)
    if not (path / "saved_model.pb").is_file() and not (path / "saved_model.pbtxt").is_file():
        raise ModelLoadError(f"{path}: not a TensorFlow SavedModel folder (no saved_model.pb)")
    try:
        return tf.saved_model.load(str(path))
    except Exception as error:
        raise ModelLoadError(f"{path}: not a readable SavedModel ({type(error).__name__}: {first_line(error)})") from error


def load_savedmodel_callable(path: Path, input_signature: Sequence[Any] | None = None) -> Callable[..., Any]:
    """A positional callable over a SavedModel: ``f(*inputs) -> outputs``.

    Keras-exported SavedModels have a ``serve`` endpoint taking the inputs positionally;
    other SavedModels are called through ``serving_default`` with keyword inputs in the
    order of its signature, and outputs in natural key order.
    """
    tf = import_tensorflow()
    loaded = load_savedmodel(path)
    serve = getattr(loaded, "serve", None)
    if serve is not None and callable(serve):
        def call(*args: Any) -> Any:
            values = serve(list(args)) if len(args) > 1 else serve(args[0])
            return values

        call.loaded = loaded  # type: ignore[attr-defined]  # keep the variables alive
        return _wrap_tf_function(tf, call, input_signature)
    signatures = getattr(loaded, "signatures", {})
    if "serving_default" not in signatures:
        raise ModelLoadError(f"{path}: the SavedModel has neither a 'serve' endpoint nor a 'serving_default' signature")
    signature = signatures["serving_default"]
    _, kwargs_spec = signature.structured_input_signature
    names = list(kwargs_spec)  # signature keyword order as saved
    if input_signature is not None and len(input_signature) != len(names):
        raise SpecError(f"{path}: the SavedModel takes {len(names)} input(s) ({', '.join(names)}) "
                        f"but the spec lists {len(input_signature)}")

    def call_signature(*args: Any) -> Any:
        return signature(**dict(zip(names, args, strict=True)))

    call_signature.loaded = loaded  # type: ignore[attr-defined]
    return _wrap_tf_function(tf, call_signature, input_signature)


def _wrap_tf_function(tf: Any, function: Callable[..., Any], input_signature: Sequence[Any] | None) -> Callable[..., Any]:
    wrapped = tf.function(function, input_signature=list(input_signature) if input_signature else None)
    wrapped._hepdeploy_python_function = function  # type: ignore[attr-defined]
    return wrapped


def load_keras_source(spec: ModelSpec) -> Any:
    """The Keras model a ``keras`` spec names."""
    return load_keras(Path(spec.source.path))  # type: ignore[arg-type]  # the spec requires one


def load_savedmodel_source(spec: ModelSpec) -> Any:
    """A positional callable over the SavedModel a ``savedmodel`` spec names."""
    return load_savedmodel_callable(Path(spec.source.path), tf_input_signature(spec))  # type: ignore[arg-type]


def load_source(spec: ModelSpec) -> Any:
    """The loaded source model a spec names (the framework registry's loader): an nn.Module-like object, a
    Keras model, a SavedModel callable, or None for a file its runner opens itself (ONNX)."""
    return source_framework(spec.source.framework).load(spec)
