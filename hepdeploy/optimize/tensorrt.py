"""TensorRT engine (``.plan``) from any ONNX variant — GPU only.

The network is built **strongly typed**: every tensor's type comes from the ONNX graph
(FP16 from AutoCast, INT8 from Q/DQ nodes), which is the only precision model TensorRT 11
keeps. No API that TensorRT 11 removed is used: no FP16/INT8 builder flags, no
calibrators, no EXPLICIT_BATCH flag (networks are always explicit batch since 10.0;
the STRONGLY_TYPED flag is still accepted by 11, where strong typing is always on).

One optimisation profile spans the spec's dynamic dims (min/opt/max), pinned to every dim the
parsed network fixes; shape-tensor inputs get value ranges (``shape_input_values``). TF32 is
cleared (TensorRT enables it by default; FP32 plans are judged at FP32's tolerances). The
workspace pool is capped with ``set_memory_pool_limit``. A timing cache is kept per GPU
architecture and TensorRT version (``tensorrt.sm80.trt10.5.0.timing.cache``), so plans for
several GPUs can be built into one folder; a cache TensorRT refuses (another GPU or version)
is replaced by an empty one with a warning, and saving it is best effort, after the plan and
its sidecar are written.

The sidecar ``X.plan.json`` records :class:`hepdeploy.plan_compat.PlanMetadata`: TensorRT
version (all four parts where the library gives them), GPU and compute capability, profiles,
precision, builder flags. A plan only runs on the TensorRT version and GPU architecture it
was built for, and Triton's config is derived from that record.

``import tensorrt`` is lazy; without it, or without a CUDA device, the step is
"skipped" with the reason (or DependencyMissingError when a GPU is required).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hepdeploy.artifacts import (
    Artifact,
    StepRecord,
    VariantRecord,
    derive_sidecar,
    engine_sidecar_path,
)
from hepdeploy.backend.cudart import cuda_device
from hepdeploy.backend.trt import recording_logger, tensorrt_unavailable
from hepdeploy.errors import ConversionError, DependencyMissingError, first_line
from hepdeploy.fsutil import atomic_path, atomic_write_text, sha256_file
from hepdeploy.graph_bounds import graph_dim_bounds, minimums
from hepdeploy.plan_compat import PLAN_STEP, PlanMetadata, ProfileRange, tensorrt_full_version
from hepdeploy.sampling import dim_range
from hepdeploy.spec import ModelSpec, TensorSpec, VariantSpec
from hepdeploy.steps import StepResult

log = logging.getLogger("hepdeploy.optimize.tensorrt")

# min, opt and max shape of one input.
ShapeTriple = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def unavailable_reason() -> str | None:
    """Why a TensorRT engine cannot be built here, or None when it can."""
    return tensorrt_unavailable()


def profile_shapes(
    inputs: list[TensorSpec], spec: ModelSpec | None, bounds: Mapping[str, int] | None = None
) -> dict[str, ShapeTriple]:
    """min/opt/max shape of every input from the spec's named dims (defaults without a spec), each min at
    least the lower bound the graph puts on the dim (``bounds``)."""
    shapes = {}
    for tensor in inputs:
        low, opt, high = [], [], []
        for dim in tensor.shape:
            if isinstance(dim, int):
                low.append(dim), opt.append(dim), high.append(dim)
            else:
                r = dim_range(spec, dim, bounds)
                o = r.opt if r.opt is not None else r.min
                low.append(r.min), opt.append(o), high.append(r.max if r.max is not None else o)
        shapes[tensor.name] = (tuple(low), tuple(opt), tuple(high))
    return shapes


# -- timing cache ------------------------------------------------------------------------------


def timing_cache_path(folder: Path, compute_capability: str, tensorrt_version: str) -> Path:
    """One cache per GPU architecture and TensorRT version: a cache only fits the pair that made it."""
    release = ".".join(tensorrt_version.split(".")[:3])
    return Path(folder) / f"tensorrt.sm{compute_capability.replace('.', '')}.trt{release}.timing.cache"


def attach_timing_cache(config: Any, path: Path) -> bool:
    """Attach the cache at ``path`` to a builder config; False when it was refused and an empty one used.

    ``set_timing_cache(..., ignore_mismatch=False)`` refuses a cache from another GPU or
    TensorRT version by returning False and leaving the config without a cache, so that
    ``get_timing_cache()`` is None after the build. Refused caches are replaced, never ignored.
    """
    blob = path.read_bytes() if path.is_file() else b""
    cache = None
    try:
        cache = config.create_timing_cache(blob)
    except Exception as error:  # a corrupt file: the bindings raise from the C++ deserializer
        log.warning("tensorrt: timing cache %s is unreadable (%s); starting an empty one", path, error)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return True
    if blob:
        log.warning("tensorrt: timing cache %s was made by another GPU or TensorRT version; "
                    "starting an empty one (it will be replaced)", path)
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        log.warning("tensorrt: building without a timing cache")
    return not blob


def save_timing_cache(config: Any, path: Path) -> bool:
    """Write the config's timing cache to ``path`` (best effort: the plan is already written)."""
    cache = config.get_timing_cache()
    if cache is None:
        log.warning("tensorrt: no timing cache to save after the build")
        return False
    try:
        with atomic_path(path, suffix=".cache.tmp") as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
    except OSError as error:
        log.warning("tensorrt: cannot save the timing cache %s (%s)", path, error.strerror or error)
        return False
    return True


# -- the build ----------------------------------------------------------------------------------


def add_profile(config: Any, profile: Any, logger: Any, where: Path) -> int:
    """Add the optimisation profile to the builder config; ``add_optimization_profile`` says -1 when it
    refuses one (an invalid or incomplete profile), which is an error in TensorRT's words, here."""
    index = config.add_optimization_profile(profile)
    if index < 0:
        raise ConversionError(f"tensorrt: TensorRT refused the optimisation profile for {where}{logger.said()}")
    return int(index)


def build_engine(
    parent: Artifact,
    output: Path,
    *,
    spec: ModelSpec | None = None,
    variant: VariantSpec | None = None,
    timing_cache: Path | None = None,
    require_gpu: bool = False,
) -> StepResult:
    """Build ``output`` (.plan) from the ONNX artifact ``parent``; skipped without TensorRT/CUDA."""
    reason = unavailable_reason()
    if reason is not None:
        if require_gpu:
            raise DependencyMissingError(f"tensorrt: cannot build an engine: {reason}")
        return StepResult("tensorrt", "skipped", reason=reason)
    import tensorrt as trt

    variant = variant or VariantSpec(name="tensorrt")
    output = Path(output)
    device = cuda_device()
    assert device is not None  # checked by unavailable_reason
    timing_cache = Path(timing_cache) if timing_cache else timing_cache_path(
        output.parent, device.compute_capability, trt.__version__)
    inputs = spec.inputs if spec is not None else parent.sidecar.inputs
    shapes = profile_shapes(inputs, spec, minimums(graph_dim_bounds(parent.path)))

    logger = recording_logger(trt)  # keeps TensorRT's errors for the one-line messages below
    builder = trt.Builder(logger)
    network, parser, strongly_typed = _parsed_network(trt, builder, logger, parent.path)
    config, builder_flags = builder_config(trt, builder, variant)
    profile = _Profile(builder.create_optimization_profile())
    profile.cover(network, shapes, variant.shape_input_values)
    add_profile(config, profile.profile, logger, parent.path)
    attach_timing_cache(config, timing_cache)

    serialized = builder.build_serialized_network(network, config)
    del parser  # kept alive until the build: the network holds weights the parser owns
    if serialized is None:
        raise ConversionError(f"tensorrt: the builder failed on {parent.path}{logger.said()}")
    with atomic_path(output, suffix=".plan.tmp") as tmp:
        tmp.write_bytes(bytes(serialized))

    version = tensorrt_full_version(trt)
    metadata = PlanMetadata(
        tensorrt_version=version.text,
        tensorrt_version_source=version.source,
        compute_capability=device.compute_capability,
        gpu_name=device.name,
        profiles=[profile.recorded],
        shape_input_values=profile.shape_values,
        precision=parent.sidecar.variant.precision,
        builder_flags=builder_flags,
        strongly_typed=strongly_typed,
        version_compatible=variant.version_compatible,
        onnx_sha256=parent.sidecar.sha256,
    )
    parameters: dict[str, Any] = {**metadata.model_dump(mode="json"), "workspace_mib": variant.workspace_mib,
                                  "timing_cache": str(timing_cache)}
    sidecar_path = _write_sidecar(parent, output, StepRecord(name=PLAN_STEP, tool="tensorrt",
                                                              tool_version=version.text, parameters=parameters))
    save_timing_cache(config, timing_cache)
    return StepResult("tensorrt", "ok", outputs=[output, sidecar_path], details=parameters)


def builder_config(trt: Any, builder: Any, variant: VariantSpec) -> tuple[Any, list[str]]:
    """The builder config for ``variant``, and the builder flags it chose, as recorded in the sidecar.

    TF32 is cleared: ``kTF32`` is on by default (``NvInfer.h``) and strong typing leaves it on,
    but TF32 matrix products are off by about 1e-3 while FP32 plans are judged at atol 1e-5 /
    rtol 1e-4. FP16 and INT8 plans take their types from the graph, so they lose nothing.
    """
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, variant.workspace_mib << 20)
    config.clear_flag(trt.BuilderFlag.TF32)
    builder_flags = ["TF32=off"]
    if variant.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        builder_flags.append("VERSION_COMPATIBLE")
    return config, builder_flags


def _parsed_network(trt: Any, builder: Any, logger: Any, path: Path) -> tuple[Any, Any, bool]:
    """(network, its parser, whether it is strongly typed) for the ONNX file at ``path``."""
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConversionError(f"tensorrt: the ONNX parser refused {path}: {errors}")
    return network, parser, strongly_typed is not None


class _Profile:
    """The one optimisation profile, and what it was set to (recorded in the plan's sidecar)."""

    def __init__(self, profile: Any) -> None:
        self.profile = profile
        self.recorded: dict[str, ProfileRange] = {}
        self.shape_values: dict[str, ProfileRange] = {}

    def cover(self, network: Any, shapes: dict[str, ShapeTriple],
              shape_input_values: dict[str, ProfileRange]) -> None:
        """min/opt/max of every network input: its shape, or for a shape tensor the range of its values."""
        for tensor in (network.get_input(i) for i in range(network.num_inputs)):
            if tensor.is_shape_tensor:
                # Its values, not its shape, set the output shapes: TensorRT needs their range.
                values = shape_input_values.get(tensor.name)
                if values is None:
                    raise ConversionError(
                        f"tensorrt: input {tensor.name!r} is a shape tensor; give its value range as "
                        f"shape_input_values: {{{tensor.name!r}: {{min: [...], opt: [...], max: [...]}}}} "
                        "in the tensorrt variant of the spec")
                self.profile.set_shape_input(tensor.name, values.min, values.opt, values.max)
                self.shape_values[tensor.name] = values
                continue
            if tensor.name not in shapes:
                raise ConversionError(f"tensorrt: network input {tensor.name!r} is not in the spec's inputs")
            low, opt, high = pinned_by_graph(tensor.name, shapes[tensor.name], tuple(tensor.shape))
            try:
                self.profile.set_shape(tensor.name, low, opt, high)
            except RuntimeError as error:  # the bindings raise when TensorRT refuses the dimensions
                raise ConversionError(f"tensorrt: the profile of input {tensor.name!r} min {list(low)} opt {list(opt)} "
                                      f"max {list(high)} was refused: {first_line(error)}") from None
            self.recorded[tensor.name] = ProfileRange(min=list(low), opt=list(opt), max=list(high))



def pinned_by_graph(name: str, spec_shapes: ShapeTriple, graph_shape: tuple[int, ...]) -> ShapeTriple:
    """The spec's min/opt/max of input ``name`` with every dim the parsed network fixes pinned to it.

    ``graph_shape`` is ``network.get_input(i).shape`` (-1 for a dynamic dim). TensorRT refuses
    a profile whose range differs from a fixed dim, so a fixed-batch-1 graph gets min=opt=max=1
    whatever the spec's batch range; a spec range that excludes the fixed value is an error.
    """
    low, opt, high = (list(dims) for dims in spec_shapes)
    if len(graph_shape) != len(low):
        raise ConversionError(f"tensorrt: input {name!r} has rank {len(graph_shape)} {list(graph_shape)} in the "
                              f"graph but rank {len(low)} in the spec ({low}..{high})")
    for axis, fixed in enumerate(graph_shape):
        if fixed < 0:
            continue
        if not low[axis] <= fixed <= high[axis]:
            raise ConversionError(f"tensorrt: input {name!r} axis {axis} is fixed to {fixed} by the graph, outside "
                                  f"the spec's range {low[axis]}..{high[axis]}")
        low[axis] = opt[axis] = high[axis] = fixed
    return tuple(low), tuple(opt), tuple(high)


def _write_sidecar(parent: Artifact, output: Path, step: StepRecord) -> Path:
    """The plan's sidecar: the parent's, with the build step and the plan's hash."""
    record = VariantRecord(name="tensorrt", precision=parent.sidecar.variant.precision, target="tensorrt")
    sidecar = derive_sidecar(parent, record, step).model_copy(update={"sha256": sha256_file(output)})
    sidecar_path = engine_sidecar_path(output)
    atomic_write_text(sidecar_path, sidecar.model_dump_json(indent=2) + "\n")
    return sidecar_path
