"""PyTorch sources: nn.Module (factory + state dict), TorchScript ``.pt``, ExportedProgram ``.pt2``.

Exporter ``auto`` picks an order by what the model is (:func:`exporter_order`) and falls back
to the other exporter when the first fails or its graph fails the self-check; the sidecar
records which ran, the order and why. The dynamo exporter (``torch.onnx.export(dynamo=True)``)
costs ~4 s of fixed tracing here whatever the model's size, the TorchScript one a fraction of
a second on a small model: a small model tries TorchScript first and keeps its graph only when
the self-check finds it exact. Dynamic dimensions come from the spec and the model is traced
with sizes >= 2 on each, so none is baked into the graph.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from hepdeploy.artifacts import Artifact, SourceRecord, StepRecord
from hepdeploy.backend.loaders import load_torch_source
from hepdeploy.backend.pytorch import TorchModuleRunner
from hepdeploy.convert.common import (
    check_converted,
    check_output_path,
    export_parameters,
    source_sha256,
    write_converted,
)
from hepdeploy.errors import ConversionError, DisagreementError, SpecError, first_line
from hepdeploy.progress import progress
from hepdeploy.sampling import sample_inputs, trace_sizes
from hepdeploy.spec import ModelSpec

log = logging.getLogger("hepdeploy.convert.torch")

Exporter = Literal["auto", "dynamo", "torchscript"]
DYNAMO_MIN_OPSET = 18
TORCHSCRIPT_DEFAULT_OPSET = 17
# Up to this many parameters the TorchScript exporter goes first under ``auto``: the dynamo exporter's
# fixed cost would be most of the model's build (the zoo's graph networks are ~0.4M, ResNet-50 25M).
SMALL_MODEL_PARAMETERS = 5_000_000


_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch._export", "torch.fx", "onnxscript",
                  "onnx_ir", "torch.utils._sympy")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Exporter chatter (missing torchvision ops, pass logs) only when hepdeploy logs at DEBUG.

    torch configures its own loggers when imported, so the CLI's settings do not reach them.
    """
    if logging.getLogger("hepdeploy").isEnabledFor(logging.DEBUG):
        yield
        return
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _dynamic_shapes(spec: ModelSpec) -> tuple[dict[int, Any], ...]:
    import torch

    dims: dict[str, Any] = {}
    for name in {d for t in spec.inputs for d in t.dynamic_dims}:
        bounds: dict[str, int] = {}
        if name in spec.dims:
            if spec.dims[name].min > 1:
                bounds["min"] = spec.dims[name].min
            if spec.dims[name].max is not None:
                bounds["max"] = spec.dims[name].max
        dims[name] = torch.export.Dim(name, **bounds)
    return tuple({k: dims[d] for k, d in enumerate(t.shape) if isinstance(d, str)} for t in spec.inputs)


def _dynamic_axes(spec: ModelSpec) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for tensor in [*spec.inputs, *spec.outputs]:
        named = {k: d for k, d in enumerate(tensor.shape) if isinstance(d, str)}
        if named:
            axes[tensor.name] = named
    return axes


def _is_exported_program(model: Any) -> bool:
    import torch

    return isinstance(model, torch.export.ExportedProgram)


def export_dynamo(model: Any, args: tuple[Any, ...], spec: ModelSpec) -> Any:
    """torch.onnx.export with the dynamo exporter; returns the ModelProto (weights inside)."""
    import torch

    opset = spec.opset
    if opset is not None and opset < DYNAMO_MIN_OPSET:
        raise ConversionError(f"the dynamo exporter writes opset >= {DYNAMO_MIN_OPSET}, the spec asks for {opset}")
    kwargs: dict[str, Any] = {}
    if not _is_exported_program(model):
        kwargs["dynamic_shapes"] = _dynamic_shapes(spec)
    chatter = io.StringIO()  # the dynamo exporter prints its progress on stdout, which is ours
    with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, args, dynamo=True, input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs], opset_version=opset, external_data=False,
            optimize=True, verbose=False, report=False, **kwargs,
        )
    log.debug("dynamo exporter said: %s", chatter.getvalue())
    if program is None:
        raise ConversionError("the dynamo exporter returned no program")
    return program.model_proto


def export_torchscript(model: Any, args: tuple[Any, ...], spec: ModelSpec) -> Any:
    """torch.onnx.export with the TorchScript exporter (dynamo=False); returns the ModelProto."""
    import onnx
    import torch

    if _is_exported_program(model):
        model = model.module()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_exporter():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, buffer, dynamo=False, input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs], dynamic_axes=_dynamic_axes(spec),
            opset_version=spec.opset or TORCHSCRIPT_DEFAULT_OPSET, do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def exporter_order(model: Any, spec: ModelSpec, exporter: Exporter) -> tuple[list[str], str]:
    """The exporters to try, in order, and why (the sidecar's ``exporter_choice``)."""
    import torch

    if exporter != "auto":
        return [exporter], f"--exporter {exporter}"
    if spec.opset is not None and spec.opset < DYNAMO_MIN_OPSET:
        return ["torchscript"], f"opset {spec.opset}: the dynamo exporter writes opset >= {DYNAMO_MIN_OPSET}"
    if _is_exported_program(model):
        return ["dynamo", "torchscript"], "an ExportedProgram: the dynamo exporter takes it as it is"
    if isinstance(model, torch.jit.ScriptModule):
        return ["torchscript", "dynamo"], "a TorchScript module: the TorchScript exporter reads it as it is"
    parameters = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else None
    if parameters is not None and parameters <= SMALL_MODEL_PARAMETERS:
        return ["torchscript", "dynamo"], (
            f"a small model ({parameters} parameters <= {SMALL_MODEL_PARAMETERS}): the TorchScript exporter first "
            "(the dynamo exporter's fixed cost would dominate); its graph is kept only if the self-check passes")
    return ["dynamo", "torchscript"], f"{parameters} parameters: the dynamo exporter first"


def _callable(model: Any) -> Any:
    return model.module() if _is_exported_program(model) else model


def convert_torch_model(
    model: Any,
    spec: ModelSpec,
    output: Path,
    exporter: Exporter = "auto",
    source: SourceRecord | None = None,
) -> Artifact:
    """Export a loaded nn.Module / ScriptModule / ExportedProgram to a checked artifact."""
    import torch

    output = check_output_path(Path(output))
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise SpecError(f"unknown exporter {exporter!r} (auto, dynamo, torchscript)")
    if source is None:
        source = SourceRecord(framework=spec.source.framework, framework_version=torch.__version__)
    if hasattr(model, "eval"):
        model.eval()
    sizes = trace_sizes(spec)
    example = sample_inputs(spec.inputs, sizes, spec.data.seed)
    args = tuple(torch.from_numpy(example[t.name]) for t in spec.inputs)
    runner = TorchModuleRunner(_callable(model), spec.inputs, [t.name for t in spec.outputs],
                               name=f"{spec.source.framework}:{source.path or spec.source.factory}")
    try:
        runner.run(example)  # fails early and clearly when the spec's shapes do not fit the model
    except SpecError:
        raise
    except Exception as error:
        raise SpecError(
            f"{source.path or spec.name}: the model does not run on inputs shaped as the spec says "
            f"({', '.join(f'{t.name} {t.shape}' for t in spec.inputs)} at sizes {sizes}): "
            f"{type(error).__name__}: {first_line(error)}"
        ) from error
    order, why = exporter_order(model, spec, exporter)
    errors: dict[str, str] = {}
    disagreement: DisagreementError | None = None
    where = str(source.path or spec.name)
    for position, name in enumerate(order):
        last = position == len(order) - 1
        started = time.perf_counter()
        try:
            with progress(f"exporting {spec.name} with the {name} exporter"):
                proto = export_dynamo(model, args, spec) if name == "dynamo" else export_torchscript(model, args, spec)
        except Exception as error:  # exporters raise many types; we record and maybe fall back
            errors[name] = f"{type(error).__name__}: {first_line(error)}"
            log.info("%s exporter failed on %s: %s", name, spec.name, errors[name])
            continue
        seconds = round(time.perf_counter() - started, 3)
        try:
            # A graph that exported but is wrong (a dimension baked in, numbers that differ)
            # is as much a reason to try the next exporter as an exception.
            proto, check_step = check_converted(proto, spec, where, runner)
        except (ConversionError, DisagreementError) as error:
            if isinstance(error, DisagreementError):
                disagreement = error
            errors[name] = f"{type(error).__name__}: {first_line(error)}"
            if last:
                break
            log.info("%s exporter's graph rejected for %s: %s; trying the next exporter", name, spec.name,
                     errors[name])
            continue
        step = StepRecord(
            name="export", tool=f"torch.onnx.{name}", tool_version=torch.__version__,
            parameters=export_parameters(requested_exporter=exporter, exporter=name, exporter_order=order,
                                         exporter_choice=why, trace_sizes=sizes, opset=spec.opset,
                                         fallback_from=errors or None, seconds=seconds),
        )
        return write_converted(proto, spec, output, source, [step, check_step])
    detail = "; ".join(f"{k}: {v}" for k, v in errors.items())
    if disagreement is not None:
        raise DisagreementError(f"{where}: no exporter produced a graph that agrees with the model ({detail})")
    raise ConversionError(f"{where}: export to ONNX failed ({detail})")


def convert_torch(spec: ModelSpec, output: Path, exporter: Exporter = "auto") -> Artifact:
    """Convert a spec whose source is torch / torchscript / exported_program."""
    import torch

    check_output_path(Path(output))
    model = load_torch_source(spec)
    weights = Path(spec.source.weights) if spec.source.weights else None
    path = Path(spec.source.path) if spec.source.path else weights
    extra: dict[str, Any] = {}
    if spec.source.factory:
        extra["factory"] = spec.source.factory
    if weights is not None and weights != path:
        extra["weights"] = str(weights)
        extra["weights_sha256"] = source_sha256(weights)
    source = SourceRecord(
        path=str(path) if path else None,
        sha256=source_sha256(path),
        framework=spec.source.framework,
        framework_version=torch.__version__,
        **extra,
    )
    return convert_torch_model(model, spec, output, exporter, source)
