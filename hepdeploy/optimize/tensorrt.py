"""TensorRT engine (``.plan``) from any ONNX variant — GPU only.

The network is built **strongly typed**: every tensor's type comes from the ONNX graph
(FP16 from AutoCast, INT8 from Q/DQ nodes), which is the only precision model TensorRT 11
keeps. No API that TensorRT 11 removed is used: no FP16/INT8 builder flags, no
calibrators, no EXPLICIT_BATCH flag (networks are always explicit batch since 10.0;
the STRONGLY_TYPED flag is still accepted by 11, where strong typing is always on).

One optimisation profile spans the spec's dynamic dims (min/opt/max), the workspace
pool is capped with ``set_memory_pool_limit``, and a timing cache file is read before
and written after the build so later builds on the same GPU are faster. The sidecar
``X.plan.json`` records the TensorRT version, GPU name and compute capability: a plan
only runs on the TensorRT version and GPU architecture it was built for.

``import tensorrt`` is lazy; without it, or without a CUDA device, the step is
"skipped" with the reason (or DependencyMissingError when a GPU is required).
"""
from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hepdeploy.artifacts import Artifact, StepRecord, VariantRecord, derive_sidecar
from hepdeploy.errors import ConversionError, DependencyMissingError
from hepdeploy.fsutil import atomic_path, atomic_write_text, sha256_file
from hepdeploy.sampling import dim_range
from hepdeploy.spec import ModelSpec, TensorSpec
from hepdeploy.steps import StepResult

log = logging.getLogger("hepdeploy.optimize.tensorrt")


@dataclass(frozen=True)
class CudaDevice:
    name: str
    compute_capability: str


def cuda_device(index: int = 0) -> CudaDevice | None:
    """The first CUDA device via the driver API (libcuda), or None where there is none."""
    for library in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(library)
            break
        except OSError:
            continue
    else:
        return None
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= index:
        return None
    device = ctypes.c_int(0)
    if cuda.cuDeviceGet(ctypes.byref(device), index) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    cuda.cuDeviceGetName(name, 256, device)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # COMPUTE_CAPABILITY_MINOR
    return CudaDevice(name.value.decode(errors="replace"), f"{major.value}.{minor.value}")


def unavailable_reason() -> str | None:
    """Why a TensorRT engine cannot be built here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except Exception as error:  # ImportError, or OSError when libnvinfer is missing
        return f"tensorrt is not importable ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    if cuda_device() is None:
        return "no CUDA device"
    return None


def profile_shapes(
    inputs: list[TensorSpec], spec: ModelSpec | None
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """min/opt/max shape of every input from the spec's named dims (defaults without a spec)."""
    shapes = {}
    for tensor in inputs:
        low, opt, high = [], [], []
        for dim in tensor.shape:
            if isinstance(dim, int):
                low.append(dim), opt.append(dim), high.append(dim)
            else:
                r = dim_range(spec, dim)
                o = r.opt if r.opt is not None else r.min
                low.append(r.min), opt.append(o), high.append(r.max if r.max is not None else o)
        shapes[tensor.name] = (tuple(low), tuple(opt), tuple(high))
    return shapes


def build_engine(
    parent: Artifact,
    output: Path,
    *,
    spec: ModelSpec | None = None,
    workspace_mib: int = 4096,
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

    output = Path(output)
    timing_cache = Path(timing_cache) if timing_cache else output.parent / "tensorrt.timing.cache"
    device = cuda_device()
    assert device is not None  # checked by unavailable_reason
    inputs = spec.inputs if spec is not None else parent.sidecar.inputs
    shapes = profile_shapes(inputs, spec)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(parent.path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConversionError(f"tensorrt: the ONNX parser refused {parent.path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    profile = builder.create_optimization_profile()
    network_inputs = [network.get_input(i) for i in range(network.num_inputs)]
    for tensor in network_inputs:
        if tensor.name not in shapes:
            raise ConversionError(f"tensorrt: network input {tensor.name!r} is not in the spec's inputs")
        low, opt, high = shapes[tensor.name]
        profile.set_shape(tensor.name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConversionError(f"tensorrt: the builder failed on {parent.path} (see the TensorRT log above)")
    with atomic_path(output, suffix=".plan.tmp") as tmp:
        tmp.write_bytes(bytes(serialized))
    with atomic_path(timing_cache, suffix=".cache.tmp") as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))

    parameters: dict[str, Any] = {
        "strongly_typed": strongly_typed is not None,
        "profile": {name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for name, s in shapes.items()},
        "workspace_mib": workspace_mib,
        "timing_cache": str(timing_cache),
        "gpu_name": device.name,
        "compute_capability": device.compute_capability,
        "onnx_sha256": parent.sidecar.sha256,
    }
    step = StepRecord(name="tensorrt", tool="tensorrt", tool_version=trt.__version__, parameters=parameters)
    record = VariantRecord(name="tensorrt", precision=parent.sidecar.variant.precision, target="tensorrt")
    sidecar = derive_sidecar(parent, record, step).model_copy(update={"sha256": sha256_file(output)})
    sidecar_path = output.with_name(output.name + ".json")
    atomic_write_text(sidecar_path, sidecar.model_dump_json(indent=2) + "\n")
    return StepResult("tensorrt", "ok", outputs=[output, sidecar_path], details=parameters)
