"""What a TensorRT plan was built for, and where it can run: checked from recorded metadata.

A serialized engine only deserializes in the TensorRT version that built it, all four parts
(a *version-compatible* engine: in that version or a later one of the same major release, or
of the next major where NVIDIA supports the jump: 8 -> 10, 10 -> 11), on
the GPU architecture it was built for, and only for shapes inside its optimisation profile.
None of that needs TensorRT to check: the builder records it in the plan's sidecar
(:class:`PlanMetadata`), the publisher copies it into the version's manifest, and
``triton check`` compares config <-> metadata <-> target server on any machine. Only the
deserialization itself needs TensorRT and a GPU of the recorded compute capability.

The Triton release table (:data:`SERVER_RELEASES`) lists what each NGC
``tritonserver:YY.MM-py3`` image ships; its source and date are in :data:`RELEASES_SOURCE`.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hepdeploy.errors import SpecError

# -- the plan's own record ---------------------------------------------------------------------


class ProfileRange(BaseModel):
    """min/opt/max of one input in one optimisation profile (shapes, or values of a shape tensor)."""

    model_config = ConfigDict(extra="forbid")
    min: list[int]
    opt: list[int]
    max: list[int]


class PlanMetadata(BaseModel):
    """Everything about a plan that decides where it loads, recorded when it is built."""

    model_config = ConfigDict(extra="allow")
    tensorrt_version: str
    # Where the version came from: "library" (all four parts, as TensorRT compares them) or
    # "__version__" (the wheel's three parts: the build number is unknown). None: not recorded.
    tensorrt_version_source: str | None = None
    compute_capability: str
    gpu_name: str = ""
    # One dict per optimisation profile: input name -> its shape range.
    profiles: list[dict[str, ProfileRange]] = Field(default_factory=list)
    # Shape-tensor inputs (values, not shapes, decide the output shapes): their value ranges.
    shape_input_values: dict[str, ProfileRange] = Field(default_factory=dict)
    precision: str = "fp32"
    builder_flags: list[str] = Field(default_factory=list)
    strongly_typed: bool = True
    version_compatible: bool = False
    onnx_sha256: str | None = None

    def max_batch(self) -> int | None:
        """The largest leading dim every profile allows for every input (None: no input has a batch axis)."""
        highs = [r.max[0] for profile in self.profiles for r in profile.values() if r.max]
        highs += [r.max[0] for r in self.shape_input_values.values() if r.max]
        return min(highs) if highs else None

    def min_batch(self) -> int | None:
        lows = [r.min[0] for profile in self.profiles for r in profile.values() if r.min]
        return max(lows) if lows else None


PLAN_STEP = "tensorrt"


def plan_metadata_of(sidecar: Any) -> PlanMetadata | None:
    """The metadata of the last TensorRT step of a plan's sidecar (None for no sidecar or a non-plan one)."""
    for step in reversed(list(getattr(sidecar, "steps", []) or [])):
        if step.name == PLAN_STEP and "compute_capability" in step.parameters:
            parameters = dict(step.parameters)
            parameters.setdefault("tensorrt_version", step.tool_version or "")
            return PlanMetadata.model_validate(parameters)
    return None


# -- compute capability keys ---------------------------------------------------------------------

_CAPABILITY = re.compile(r"^[1-9][0-9]?\.[0-9]$")


def check_capability_key(key: str) -> str:
    """A ``cc_model_filenames`` key as Triton matches it: "8.0", "8.6", "9.0", "12.0"."""
    if not isinstance(key, str) or not _CAPABILITY.match(key):
        raise SpecError(
            f"compute capability {key!r}: Triton's cc_model_filenames keys look like '8.0' or '9.0' "
            "(major.minor, as nvidia-smi --query-gpu=compute_cap prints it)"
        )
    return key


# -- Triton releases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerRelease:
    """What one NGC ``tritonserver:YY.MM-py3`` image ships (None: not in the sources we read)."""

    release: str                # "24.10"
    onnxruntime: str            # the onnxruntime backend's ONNX Runtime
    tensorrt: str | None = None
    cuda: str | None = None


# Sources, read 2026-11-27:
#  ONNX Runtime: triton-inference-server/server docs/introduction/compatibility.md, "ONNX Runtime Versions"
#    (rows 24.04 to 26.08); CUDA: the release notes rel-YY-MM.html, "Driver Requirements";
#  TensorRT: the release notes of 24.10 ("NVIDIA TensorRT 10.5.0.18"). The TensorRT of other releases is
#    in NVIDIA's Frameworks Support Matrix, which we could not read here: those rows say None, and a
#    plan checked against them is reported as "not checked", never as compatible.
RELEASES_SOURCE = ("triton-inference-server/server docs/introduction/compatibility.md and release notes "
                   "rel-YY-MM (read 2026-11-27)")
SERVER_RELEASES: dict[str, ServerRelease] = {r.release: r for r in [
    ServerRelease("24.04", "1.17.3", cuda="12.4"),
    ServerRelease("24.05", "1.18.0", cuda="12.4"),
    ServerRelease("24.06", "1.18.0"),
    ServerRelease("24.07", "1.18.1", cuda="12.5.1"),
    ServerRelease("24.08", "1.18.1", cuda="12.6"),
    ServerRelease("24.09", "1.19.2"),
    ServerRelease("24.10", "1.19.2", tensorrt="10.5.0.18", cuda="12.6.2"),
    ServerRelease("24.11", "1.19.2"),
    ServerRelease("24.12", "1.20.1", cuda="12.6.3"),
    ServerRelease("25.01", "1.20.1", cuda="12.8.0"),
    ServerRelease("25.02", "1.20.1", cuda="12.8.0"),
    ServerRelease("25.03", "1.21.0", cuda="12.8.1"),
    ServerRelease("25.04", "1.21.0", cuda="12.9.0"),
    ServerRelease("25.05", "1.22.0"),
    ServerRelease("25.06", "1.22.0", cuda="12.9.1"),
    ServerRelease("25.07", "1.22.0"),
    ServerRelease("25.08", "1.23.0", cuda="13.0.0"),
    ServerRelease("25.09", "1.23.0"),
    ServerRelease("25.10", "1.23.1", cuda="13.0.2"),
    ServerRelease("25.11", "1.23.2"),
    ServerRelease("25.12", "1.23.2", cuda="13.1.0"),
    ServerRelease("26.01", "1.23.2"),
    ServerRelease("26.02", "1.24.1", cuda="13.1.1"),
    ServerRelease("26.03", "1.24.2"),
    ServerRelease("26.04", "1.24.4", cuda="13.2.1"),
    ServerRelease("26.05", "1.24.4"),
    ServerRelease("26.06", "1.24.4", cuda="13.3.0"),
    ServerRelease("26.07", "1.27.0", cuda="13.3.1"),
    ServerRelease("26.08", "1.28.0", cuda="13.4.1"),
]}
# The image the README documents and the [tensorrt] extra matches.
DEFAULT_SERVER_RELEASE = "24.10"


def server_release(name: str) -> ServerRelease:
    """The release ``name`` ("24.10", also "24.10-py3" or "nvcr.io/nvidia/tritonserver:24.10-py3")."""
    short = str(name).rsplit(":", 1)[-1].split("-", 1)[0]
    if short not in SERVER_RELEASES:
        known = list(SERVER_RELEASES)
        raise SpecError(f"Triton release {name!r} is not in hepdeploy's table (it knows {known[0]} to {known[-1]})")
    return SERVER_RELEASES[short]


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in str(text).split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


@dataclass(frozen=True)
class TensorRTVersion:
    """The TensorRT version of this process: ``text`` ("10.5.0.18") and where it was read (``source``)."""

    text: str
    source: str  # "library": all four parts; "__version__": the wheel's three parts, no build number


def tensorrt_full_version(trt: Any, library: Any = None) -> TensorRTVersion:
    """The full major.minor.patch.build version of the imported ``tensorrt`` module.

    TensorRT refuses a plan on a mismatch of any of the four parts, but the pip wheel's
    ``__version__`` has three. The four come from ``trt.get_version()`` where the bindings have
    it, else from the loaded library's ``getInferLibVersion`` and ``getInferLibBuildVersion``
    (``library``: a loaded libnvinfer, found by its soname when None), else the three-part
    ``__version__``, marked as such.
    """
    getter = getattr(trt, "get_version", None)
    text = str(getter()) if callable(getter) else ""
    if len(_version_tuple(text)) >= 4:
        return TensorRTVersion(text, "library")
    declared = str(getattr(trt, "__version__", ""))
    from_library = _library_version(library, declared)
    if from_library is not None:
        return TensorRTVersion(from_library, "library")
    return TensorRTVersion(declared, "__version__")


def _library_version(library: Any, declared: str) -> str | None:
    """"major.minor.patch.build" from libnvinfer's C entry points (None where they cannot be read)."""
    if library is None:
        import ctypes

        major = (_version_tuple(declared) or (0,))[0]
        try:
            library = ctypes.CDLL(f"libnvinfer.so.{major}")  # the one ``import tensorrt`` loaded
        except OSError:
            return None
    try:
        packed, build = int(library.getInferLibVersion()), int(library.getInferLibBuildVersion())
    except (AttributeError, OSError, TypeError, ValueError):
        return None
    # NV_TENSORRT_VERSION: major * 10000 + minor * 100 + patch since TensorRT 10 (major * 1000 before).
    scale = 10000 if packed >= 100000 else 1000
    return f"{packed // scale}.{packed % scale // 100}.{packed % 100}.{build}"


# A version-compatible plan runs in a later major release only across these jumps (NVIDIA's
# "Version Compatibility" guide): built major -> the later majors that can load it.
VERSION_COMPATIBLE_JUMPS: dict[int, frozenset[int]] = {8: frozenset({10}), 10: frozenset({11})}


def same_tensorrt(built: str, runtime: str) -> bool:
    """Equal in all four parts, as TensorRT compares them; in three where one side records only three
    (a wheel's ``__version__``: 10.5.0 == 10.5.0.18, the build number unknown)."""
    a, b = _version_tuple(built), _version_tuple(runtime)
    n = min(len(a), len(b), 4)
    return n >= 3 and a[:n] == b[:n]


def tensorrt_runtime_problem(metadata: PlanMetadata, runtime_version: str, where: str) -> str | None:
    """Why a plan will not deserialize in TensorRT ``runtime_version`` (None: it will, by version)."""
    built = _version_tuple(metadata.tensorrt_version)
    runtime = _version_tuple(runtime_version)
    if not built or not runtime:
        return f"TensorRT version unknown (plan: {metadata.tensorrt_version!r}, {where}: {runtime_version!r})"
    if metadata.version_compatible:
        return _version_compatible_problem(metadata.tensorrt_version, built, runtime_version, runtime, where)
    if not same_tensorrt(metadata.tensorrt_version, runtime_version):
        return (f"built with TensorRT {metadata.tensorrt_version}, {where} has {runtime_version}: a plan only "
                "deserializes in the TensorRT version that built it (rebuild, or build with --version-compatible)")
    return None


def _version_compatible_problem(built_text: str, built: tuple[int, ...], runtime_text: str,
                                runtime: tuple[int, ...], where: str) -> str | None:
    """Version-compatible engines run in the TensorRT that built them and later ones of the same
    major, or of the next major NVIDIA supports (:data:`VERSION_COMPATIBLE_JUMPS`); never in an older one."""
    n = min(len(built), len(runtime), 4)
    if runtime[:n] < built[:n]:
        return (f"built version-compatible with TensorRT {built_text}, which runs in that release or a later one "
                f"only; {where} has the older {runtime_text}")
    if runtime[0] != built[0] and runtime[0] not in VERSION_COMPATIBLE_JUMPS.get(built[0], frozenset()):
        jumps = ", ".join(f"{a} -> {b}" for a, later in VERSION_COMPATIBLE_JUMPS.items() for b in sorted(later))
        return (f"built version-compatible with TensorRT {built_text}; {where} has {runtime_text}, a major release "
                f"it is not supported in (NVIDIA supports {jumps} only)")
    return None


# ONNX Runtime's TensorRT execution provider supports TensorRT 11 from this release on (finding 9 of
# the TensorRT review; ONNX Runtime's own requirements table, read 2026-11-27, stops at TensorRT 10.9).
ORT_FOR_TENSORRT_11 = (1, 27)


def ort_tensorrt_problem(onnxruntime_version: str, tensorrt_version: str) -> str | None:
    """Why ONNX Runtime's TensorRT execution provider cannot use this TensorRT (None: it can)."""
    trt, ort = _version_tuple(tensorrt_version), _version_tuple(onnxruntime_version)
    if trt and trt[0] >= 11 and ort[:2] < ORT_FOR_TENSORRT_11:
        need = ".".join(map(str, ORT_FOR_TENSORRT_11))
        return (f"ONNX Runtime {onnxruntime_version}'s TensorRT execution provider does not support TensorRT "
                f"{tensorrt_version}; TensorRT 11 needs onnxruntime-gpu >= {need}")
    return None


# -- config <-> metadata -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigTensor:
    """One config input as Triton sees it: dims without the batch axis when max_batch_size > 0."""

    name: str
    dims: Sequence[int]


def config_profile_problems(
    metadata: PlanMetadata, max_batch_size: int, inputs: Iterable[ConfigTensor], preferred: Sequence[int] = ()
) -> list[str]:
    """Where a tensorrt_plan config asks for shapes the engine's profiles cannot take.

    Triton's TensorRT backend refuses a max_batch_size above the profile's max batch and
    fails requests outside a profile; these are the same checks, made before a server sees it.
    """
    problems: list[str] = []
    if not metadata.profiles:
        return ["the plan's metadata records no optimisation profile"]
    batched = max_batch_size > 0
    top = metadata.max_batch()
    if batched and top is not None and max_batch_size > top:
        problems.append(f"max_batch_size {max_batch_size} exceeds the engine profile's max batch {top}")
    low = metadata.min_batch()
    if batched and low is not None and low > 1:
        problems.append(f"the engine profile's min batch is {low}, but Triton sends batches from 1")
    too_big = [p for p in preferred if top is not None and p > top]
    if batched and too_big:
        problems.append(f"preferred_batch_size {too_big} exceeds the engine profile's max batch {top}")
    for tensor in inputs:
        ranges = [p[tensor.name] for p in metadata.profiles if tensor.name in p]
        if not ranges and tensor.name in metadata.shape_input_values:
            continue
        if not ranges:
            problems.append(f"input {tensor.name!r} is not in the engine's profile (profile has "
                            f"{', '.join(sorted(metadata.profiles[0]))})")
            continue
        for profile_range in ranges:
            lows, highs = profile_range.min, profile_range.max
            if batched:
                lows, highs = lows[1:], highs[1:]
            if len(lows) != len(tensor.dims):
                problems.append(f"input {tensor.name!r}: config dims {list(tensor.dims)} have rank {len(tensor.dims)}, "
                                f"the engine profile {profile_range.min}..{profile_range.max} rank {len(lows)}"
                                + (" (with the batch axis)" if batched else ""))
                break
            outside = [k for k, (d, lo, hi) in enumerate(zip(tensor.dims, lows, highs, strict=True))
                       if d != -1 and not lo <= d <= hi]
            if outside:
                problems.append(f"input {tensor.name!r}: config dims {list(tensor.dims)} lie outside the engine "
                                f"profile {profile_range.min}..{profile_range.max} (axis {outside[0]})")
                break
    return problems


def plan_problems(
    filename: str,
    metadata: PlanMetadata,
    *,
    capability_key: str | None = None,
    release: ServerRelease | None = None,
) -> list[str]:
    """Problems of one plan file against its cc_model_filenames key and the target Triton release."""
    problems = []
    if capability_key is not None and capability_key != metadata.compute_capability:
        problems.append(f"{filename} is listed for compute capability {capability_key} in cc_model_filenames but was "
                        f"built on compute capability {metadata.compute_capability} ({metadata.gpu_name or 'GPU'})")
    if release is not None and release.tensorrt is not None:
        reason = tensorrt_runtime_problem(metadata, release.tensorrt, f"Triton {release.release}")
        if reason:
            problems.append(f"{filename}: {reason}")
    return problems


def metadata_by_file(manifest: Mapping[str, Any] | None) -> dict[str, PlanMetadata]:
    """The plans' metadata a hepdeploy manifest carries (file name -> metadata)."""
    plans = (manifest or {}).get("plans") or {}
    return {name: PlanMetadata.model_validate(record) for name, record in plans.items()}
