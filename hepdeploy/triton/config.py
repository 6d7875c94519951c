"""Triton ``config.pbtxt`` through the official schema.

Configs are ``tritonclient.grpc.model_config_pb2.ModelConfig`` messages written and read
with protobuf's text format; nothing here formats a config by hand. The one addition is
``max_batch_size: 0``: proto3 scalars have no presence, so text_format never prints a
zero, yet an explicit ``max_batch_size: 0`` is what tells a reader (and Triton's
auto-complete, which otherwise may *guess* a batch size) that the model has no batch
axis. ``config_to_pbtxt`` inserts that single line and proves, by parsing the result back
and comparing messages, that the text still means exactly the message.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hepdeploy.artifacts import Artifact, Sidecar, read_artifact
from hepdeploy.errors import BadInputError, RepositoryError, SpecError
from hepdeploy.fsutil import check_safe_name, file_digest, file_name_for
from hepdeploy.plan_compat import PlanMetadata, check_capability_key
from hepdeploy.platforms import (
    DEFAULT_PLATFORM,
    PLATFORMS,
    TritonPlatform,
    platform_of_config,
    triton_platform,
)
from hepdeploy.registry import named_function
from hepdeploy.spec import TensorSpec, TritonSpec, infer_batch_axis

if TYPE_CHECKING:
    import numpy as np
    from tritonclient.grpc import model_config_pb2

Kind = Literal["gpu", "cpu"]
# numpy dtype name <-> Triton DataType enum name.
_DTYPE_TO_TRITON = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "int16": "TYPE_INT16",
    "uint16": "TYPE_UINT16",
    "int32": "TYPE_INT32",
    "uint32": "TYPE_UINT32",
    "int64": "TYPE_INT64",
    "uint64": "TYPE_UINT64",
    "bool": "TYPE_BOOL",
}
_TRITON_TO_DTYPE = {v: k for k, v in _DTYPE_TO_TRITON.items()}

# ONNX Runtime backend model parameters (triton-inference-server/onnxruntime_backend README):
# execution_mode 0 = sequential, 1 = parallel; inter-op threads only matter in parallel mode.
ORT_INTRA_OP_THREADS = "intra_op_thread_count"
ORT_INTER_OP_THREADS = "inter_op_thread_count"
ORT_EXECUTION_MODE = "execution_mode"

WARMUP_FOLDER = "warmup"  # Triton reads model_warmup input_data_file from <model>/warmup/


def model_config_schema() -> Any:
    """Triton's model_config protobuf module (imported on first use: tritonclient is an optional extra)."""
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def triton_dtype(dtype: str) -> str:
    """``float32`` -> ``TYPE_FP32``."""
    try:
        return _DTYPE_TO_TRITON[dtype]
    except KeyError as error:
        raise SpecError(f"dtype {dtype!r} has no Triton data type") from error


def numpy_dtype_of(triton_type: str) -> str:
    """``TYPE_FP32`` -> ``float32`` (raises for TYPE_STRING and unknown names)."""
    try:
        return _TRITON_TO_DTYPE[triton_type]
    except KeyError as error:
        raise RepositoryError(f"Triton data type {triton_type} is not supported here") from error


def has_free_batch_axis(tensors: Sequence[TensorSpec]) -> bool:
    """Every tensor's first dimension is dynamic (a name), so Triton may batch over it."""
    return bool(tensors) and all(t.shape and isinstance(t.shape[0], str) for t in tensors)


def default_batched(tensors: Sequence[TensorSpec]) -> bool:
    """Batched when the leading dim of every tensor is the batch axis (see :func:`hepdeploy.spec.infer_batch_axis`)."""
    return infer_batch_axis(tensors)[0]


def tensor_specs_from(source: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an Artifact, Sidecar, ModelSpec, (inputs, outputs) pair or ONNX path."""
    if isinstance(source, Artifact):
        return list(source.sidecar.inputs), list(source.sidecar.outputs)
    if isinstance(source, Sidecar):
        return list(source.inputs), list(source.outputs)
    if isinstance(source, (str, Path)):
        return tensor_specs_from(read_artifact(Path(source)))
    if isinstance(source, tuple) and len(source) == 2:
        return list(source[0]), list(source[1])
    inputs, outputs = getattr(source, "inputs", None), getattr(source, "outputs", None)
    if inputs is not None and outputs is not None:
        return list(inputs), list(outputs)
    raise TypeError(f"cannot read tensor specs from {type(source).__name__}")


@dataclass(frozen=True)
class WarmupSample:
    """One warm-up input: its raw bytes (row-major) and the dims Triton must announce."""

    name: str
    dtype: str
    dims: list[int]
    data: bytes

    @property
    def file_name(self) -> str:
        """The file under ``warmup/``: the tensor name, escaped where it is not a plain file name."""
        return file_name_for(self.name)


def warmup_samples(
    inputs: Sequence[TensorSpec], warmup_inputs: Mapping[str, np.ndarray], batched: bool
) -> list[WarmupSample]:
    """One sample per input taken from golden inputs: the first row when batched, else as is."""
    import numpy as np

    samples = []
    for spec in inputs:
        if spec.name not in warmup_inputs:
            raise SpecError(f"warm-up data lacks input {spec.name!r} (has {', '.join(sorted(warmup_inputs))})")
        array = np.asarray(warmup_inputs[spec.name])
        if array.ndim != len(spec.shape):
            raise SpecError(
                f"warm-up input {spec.name!r}: rank {array.ndim} but the model's input has rank {len(spec.shape)}"
            )
        if batched:
            if array.shape[0] < 1:
                raise SpecError(f"warm-up input {spec.name!r} is empty")
            array = array[:1]
        elif spec.shape and isinstance(spec.shape[0], int) and array.shape[0] > spec.shape[0]:
            array = array[:spec.shape[0]]  # rows of a reference set for a model with a fixed batch
        array = np.ascontiguousarray(array.astype(spec.dtype, copy=False))
        dims = list(array.shape[1:] if batched else array.shape)
        samples.append(WarmupSample(spec.name, spec.dtype, [int(d) for d in dims], array.tobytes(order="C")))
    return samples


def _dims(spec: TensorSpec, batched: bool) -> list[int]:
    shape = spec.shape[1:] if batched else spec.shape
    return [d if isinstance(d, int) else -1 for d in shape]


def _fill_tensor(message: Any, spec: TensorSpec, batched: bool) -> None:
    pb2 = model_config_schema()
    message.name = spec.name
    message.data_type = pb2.DataType.Value(triton_dtype(spec.dtype))
    dims = _dims(spec, batched)
    if batched and not dims:
        # A [batch] tensor: Triton needs non-empty dims, so announce [1] and reshape to [].
        message.dims.append(1)
        message.reshape.SetInParent()
    else:
        message.dims.extend(dims)


LABEL_FILENAME = "labels.txt"


def _label_output(config: Any, outputs: Sequence[TensorSpec], labels: Sequence[str], name: str) -> None:
    """``label_filename`` on the classification output: the one whose last dim is the number of classes."""
    fitting = [t for t in outputs if t.shape and t.shape[-1] == len(labels)]
    if not fitting:
        shapes = ", ".join(f"{t.name}{list(t.shape)}" for t in outputs)
        raise SpecError(f"model {name!r}: triton.labels has {len(labels)} names but no output has {len(labels)} "
                        f"classes on its last axis ({shapes})")
    for message in config.output:
        if message.name == fitting[0].name:
            message.label_filename = LABEL_FILENAME


CHECKSUM_AGENT = "checksum"


def set_checksum_agent(config: Any, model_dir: Path) -> None:
    """The checksum repository agent over every file one folder down (``MD5:<folder>/<file>``), as
    CMSSW's cmsTritonConfigTool writes it: version folders and ``warmup/`` alike.

    Triton's checksum agent refuses to load a model whose files differ; CMSSW's SonicTriton
    compares the same keys between its local copy and the server's to refuse a mismatched version.
    Other repository agents the config names are kept.
    """
    kept = [agent for agent in config.model_repository_agents.agents if agent.name != CHECKSUM_AGENT]
    del config.model_repository_agents.agents[:]
    config.model_repository_agents.agents.extend(kept)
    agent = config.model_repository_agents.agents.add()
    agent.name = CHECKSUM_AGENT
    for path in sorted(Path(model_dir).glob("*/*")):
        if path.is_file():
            agent.parameters[f"MD5:{path.relative_to(model_dir).as_posix()}"] = file_digest(path, "md5")


def label_file_text(labels: Sequence[str]) -> str:
    return "".join(f"{label}\n" for label in labels)


def _dims_from_profile(config: Any, plan: PlanMetadata, batched: bool) -> None:
    """Input dims the engine profile fixes (min == max) become numbers instead of -1."""
    profile = plan.profiles[0] if plan.profiles else {}
    for message in config.input:
        shape_range = profile.get(message.name)
        if shape_range is None or message.HasField("reshape"):
            continue
        lows, highs = (shape_range.min[1:], shape_range.max[1:]) if batched else (shape_range.min, shape_range.max)
        if len(lows) != len(message.dims):
            continue
        for axis, (low, high) in enumerate(zip(lows, highs, strict=True)):
            if message.dims[axis] == -1 and low == high:
                message.dims[axis] = low


def _version_policy(config: Any, policy: str | Mapping[str, Any]) -> None:
    if policy == "latest":
        config.version_policy.latest.num_versions = 1
    elif policy == "all":
        config.version_policy.all.SetInParent()
    elif isinstance(policy, Mapping) and set(policy) == {"latest"}:
        config.version_policy.latest.num_versions = int(policy["latest"])
    elif isinstance(policy, Mapping) and set(policy) == {"specific"}:
        versions = policy["specific"]
        if not versions or not all(isinstance(v, int) and v > 0 for v in versions):
            raise SpecError("triton.version_policy.specific must be a list of positive version numbers")
        config.version_policy.specific.versions.extend(versions)
    elif isinstance(policy, Mapping) and set(policy) == {"all"}:
        config.version_policy.all.SetInParent()
    else:
        raise SpecError(
            f"triton.version_policy {policy!r}: use 'latest', 'all', {{latest: N}} or {{specific: [1, 2]}}"
        )


@dataclass(frozen=True)
class VersionFiles:
    """What a version folder holds besides tensors: the model file's name when it is not the platform's
    default, TensorRT plans per compute capability (``"8.0"`` -> file name) and the default plan's
    recorded metadata (its engine profile sets max_batch_size and fixed dims)."""

    model_filename: str | None = None
    cc_model_filenames: Mapping[str, str] = field(default_factory=dict)
    plan: PlanMetadata | None = None


@dataclass(frozen=True)
class ConfigRequest:
    """Everything a platform's filler may read while a config is built."""

    name: str
    platform: TritonPlatform
    kind: Kind
    triton: TritonSpec
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    files: VersionFiles

    max_batch_size: int  # decided once (:func:`_max_batch_size`): every filler sees the same value

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0


def _max_batch_size(name: str, platform: TritonPlatform, triton: TritonSpec, tensors: Sequence[TensorSpec],
                    files: VersionFiles) -> int:
    """From the spec, else 64 (or the engine profile's max batch) when every tensor has a free batch axis;
    a batch size needs that axis."""
    plan = files.plan if platform.name == "tensorrt_plan" else None
    profile_max = plan.max_batch() if plan is not None else None
    if triton.max_batch_size is None:
        if not default_batched(tensors):
            return 0
        preferred = triton.dynamic_batching.preferred_batch_size if triton.dynamic_batching else []
        max_batch = profile_max if profile_max is not None else max([*preferred, 64])
    else:
        max_batch = triton.max_batch_size
        if profile_max is not None and max_batch > profile_max:
            raise SpecError(f"model {name!r}: triton.max_batch_size {max_batch} exceeds the TensorRT engine "
                            f"profile's max batch {profile_max} (raise dims.batch.max and rebuild the plan)")
    if max_batch > 0 and not has_free_batch_axis(tensors):
        fixed = [f"{t.name}{t.shape}" for t in tensors if not (t.shape and isinstance(t.shape[0], str))]
        raise SpecError(
            f"model {name!r}: triton.max_batch_size {max_batch} needs a free batch axis as the first "
            f"dimension of every input and output, but these have none: {', '.join(fixed)}; use max_batch_size: 0"
        )
    return max_batch


def build_model_config(
    artifact_or_specs: Any,
    triton: TritonSpec,
    *,
    name: str,
    platform: str | None = None,
    kind: Kind = "gpu",
    warmup_inputs: Mapping[str, np.ndarray] | None = None,
    files: VersionFiles | None = None,
) -> model_config_pb2.ModelConfig:
    """The ModelConfig for one model from its tensor specs and the spec's ``triton:`` block.

    What every platform shares is set here; what one platform has of its own, its registry entry's
    filler sets (``hepdeploy.platforms``). ``kind='cpu'`` makes a CPU model: KIND_CPU instances (ONNX
    Runtime thread settings from ``triton.cpu_twin``), no GPU accelerator. Warm-up files themselves are
    written by the publisher; this only references ``warmup/<input name>``.
    """
    check_safe_name(name, "Triton model name")
    try:
        entry = triton_platform(platform or triton.platform or DEFAULT_PLATFORM)
    except BadInputError as error:
        raise SpecError(str(error)) from error
    if kind == "cpu" and not entry.runs_on_cpu:
        raise SpecError(f"model {name!r}: a {entry.name} model runs on GPUs only; a CPU twin needs an ONNX variant")
    inputs, outputs = tensor_specs_from(artifact_or_specs)
    if not inputs or not outputs:
        raise SpecError(f"model {name!r}: needs at least one input and one output")
    files = files or VersionFiles()
    max_batch = _max_batch_size(name, entry, triton, [*inputs, *outputs], files)
    request = ConfigRequest(name, entry, kind, triton, inputs, outputs, files, max_batch)
    config = model_config_schema().ModelConfig()
    config.name = name
    setattr(config, entry.config_field, entry.name)
    config.max_batch_size = max_batch
    for spec in inputs:
        _fill_tensor(config.input.add(), spec, request.batched)
    for spec in outputs:
        _fill_tensor(config.output.add(), spec, request.batched)
    _fill_dynamic_batching(config, request)
    _fill_instances(config, request)
    if entry.filler is not None:
        named_function(entry.filler)(config, request)
    _fill_files(config, request)
    _version_policy(config, triton.version_policy)
    if triton.labels:
        _label_output(config, outputs, triton.labels, name)
    if triton.warmup and warmup_inputs:
        _fill_warmup(config, inputs, warmup_inputs, request.batched)
    return config


def _fill_dynamic_batching(config: Any, request: ConfigRequest) -> None:
    settings = request.triton.dynamic_batching
    if settings is None and not request.batched:
        return
    # Without a batch axis Triton still accepts a dynamic batcher as a plain request queue,
    # but no preferred batch size (each must be <= max_batch_size, here 0).
    preferred = list(settings.preferred_batch_size) if settings else []
    too_big = [p for p in preferred if p > config.max_batch_size or p < 1]
    if too_big:
        raise SpecError(f"model {request.name!r}: preferred_batch_size {too_big} must be between 1 and "
                        f"max_batch_size {config.max_batch_size}")
    config.dynamic_batching.SetInParent()
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_microseconds if settings else 100


def _fill_instances(config: Any, request: ConfigRequest) -> None:
    kinds = model_config_schema().ModelInstanceGroup.Kind
    twin = request.triton.cpu_twin
    if request.kind == "cpu":
        group = config.instance_group.add()
        group.kind = kinds.Value("KIND_CPU")
        group.count = twin.instances if twin else 1
        return
    for wanted in request.triton.instance_group or []:
        group = config.instance_group.add()
        group.kind = kinds.Value(wanted.kind)
        group.count = wanted.count
        group.gpus.extend(wanted.gpus)
    if not request.triton.instance_group:
        group = config.instance_group.add()
        group.kind = kinds.Value("KIND_GPU")
        group.count = 1


def _fill_files(config: Any, request: ConfigRequest) -> None:
    files = request.files
    if files.model_filename and files.model_filename != request.platform.default_filename:
        config.default_model_filename = files.model_filename
    if files.cc_model_filenames:
        if request.platform.name != "tensorrt_plan":
            raise SpecError("cc_model_filenames is only meaningful for tensorrt_plan models")
        for capability, filename in sorted(files.cc_model_filenames.items()):
            config.cc_model_filenames[check_capability_key(capability)] = filename


def _fill_warmup(config: Any, inputs: Sequence[TensorSpec], warmup_inputs: Mapping[str, np.ndarray],
                 batched: bool) -> None:
    """A warm-up from golden inputs: one row of each (the files are written by the publisher)."""
    pb2 = model_config_schema()
    warmup = config.model_warmup.add()
    warmup.name = "golden_sample"
    warmup.batch_size = 1
    for sample in warmup_samples(inputs, warmup_inputs, batched):
        entry = warmup.inputs[sample.name]
        entry.data_type = pb2.DataType.Value(triton_dtype(sample.dtype))
        entry.dims.extend(sample.dims)
        entry.input_data_file = sample.file_name


# -- the platforms' own fields (their registry entries name these) ---------------------------


def fill_onnxruntime(config: Any, request: ConfigRequest) -> None:
    """ONNX Runtime: the TensorRT execution provider on GPUs, thread counts on CPUs, the graph level."""
    triton, twin = request.triton, request.triton.cpu_twin
    if request.kind == "gpu" and triton.tensorrt_accelerator:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
        accelerator.name = "tensorrt"
        accelerator.parameters["precision_mode"] = triton.tensorrt_accelerator
    if request.kind == "cpu":
        intra = twin.intra_op_threads if twin else 1
        inter = twin.inter_op_threads if twin else 1
        config.parameters[ORT_INTRA_OP_THREADS].string_value = str(intra)
        if inter > 0:
            config.parameters[ORT_INTER_OP_THREADS].string_value = str(inter)
        if inter > 1:  # several inter-op threads only help in ORT's parallel execution mode
            config.parameters[ORT_EXECUTION_MODE].string_value = "1"
    if triton.optimization.graph_level is not None:
        config.optimization.graph.level = triton.optimization.graph_level


def fill_tensorrt(config: Any, request: ConfigRequest) -> None:
    """A TensorRT plan with its recorded metadata: dims the engine profile fixes are numbers (Triton's
    TensorRT backend refuses a config that asks for more than the engine takes), shape tensors are marked."""
    plan = request.files.plan
    if plan is None:
        return
    _dims_from_profile(config, plan, request.batched)
    for message in config.input:  # inputs whose values set output shapes: Triton must know
        message.is_shape_tensor = message.name in plan.shape_input_values


# -- text format ---------------------------------------------------------------------------------

def config_to_pbtxt(config: model_config_pb2.ModelConfig) -> str:
    """Text format of a ModelConfig, with ``max_batch_size: 0`` printed explicitly."""
    from google.protobuf import text_format

    text = text_format.MessageToString(config)
    if config.max_batch_size == 0:
        # Put the line where text_format would print a non-zero value: before the first
        # top-level field with a higher field number.
        fields = config.DESCRIPTOR.fields_by_name
        own_number = fields["max_batch_size"].number
        lines = text.splitlines()
        at = len(lines)
        for index, line in enumerate(lines):
            if line[:1].isspace() or not line.strip():
                continue
            field = fields.get(line.split(":", 1)[0].split(" ", 1)[0])
            if field is not None and field.number > own_number:
                at = index
                break
        lines.insert(at, "max_batch_size: 0")
        text = "\n".join(lines) + "\n"
    if parse_model_config(text, "generated config") != config:  # the line must not change the meaning
        raise AssertionError("config text does not round-trip through the schema")
    return text


def parse_model_config(text: str, where: str = "config.pbtxt") -> model_config_pb2.ModelConfig:
    """Parse config text with the schema; RepositoryError with the parser's line:column message."""
    from google.protobuf import text_format

    config = model_config_schema().ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise RepositoryError(f"{where}: not a valid model config: {error}") from error
    return config


def read_model_config(path: Path) -> model_config_pb2.ModelConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise RepositoryError(f"{path}: no config.pbtxt") from error
    except (OSError, UnicodeDecodeError) as error:
        raise RepositoryError(f"{path}: cannot read config ({type(error).__name__})") from error
    return parse_model_config(text, str(path))


# -- helpers used by repository and check --------------------------------------------------------


def config_platform(config: model_config_pb2.ModelConfig) -> str:
    """Platform name, with backend-only configs mapped to their platform (onnxruntime -> onnxruntime_onnx)."""
    return platform_of_config(config.platform, config.backend)


def model_filename(config: model_config_pb2.ModelConfig) -> str | None:
    entry = PLATFORMS.get(config_platform(config))
    return config.default_model_filename or (entry.default_filename if entry is not None else None)


def perf_analyzer_command(
    config: model_config_pb2.ModelConfig,
    *,
    dim_sizes: Mapping[str, int] | None = None,
    batch: int | None = None,
    url: str = "localhost:8001",
) -> str:
    """The perf_analyzer command that measures this model: ``--shape`` for every input.

    Variable dims take their size from the warm-up sample (or ``dim_sizes``, else 8) so
    perf_analyzer can build requests; ``-b`` is the largest preferred batch when batched.
    """
    warm: dict[str, list[int]] = {}
    for sample in config.model_warmup:
        for input_name, entry in sample.inputs.items():
            warm.setdefault(input_name, list(entry.dims))
    parts = ["perf_analyzer", "-m", config.name]
    for tensor in config.input:
        dims = list(tensor.dims)
        if tensor.name in warm and len(warm[tensor.name]) == len(dims):
            dims = [w if d == -1 else d for d, w in zip(dims, warm[tensor.name], strict=True)]
        dims = [(dim_sizes or {}).get(tensor.name, 8) if d == -1 else d for d in dims]
        parts += ["--shape", f"{tensor.name}:{','.join(str(d) for d in dims)}"]
    if config.max_batch_size > 0:
        preferred = list(config.dynamic_batching.preferred_batch_size)
        size = batch or (max(preferred) if preferred else 1)
        parts += ["-b", str(min(size, config.max_batch_size))]
    parts += ["-i", "grpc", "-u", url, "--concurrency-range", "1:4"]
    return " ".join(parts)

