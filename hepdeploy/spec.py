"""The model spec: what a model is, how to find it, and how to deploy it.

A spec is YAML validated with pydantic. Unknown keys are refused with the key's path
(``triton.dynamic_batching.prefered: extra inputs are not permitted``). Later stages
read their own blocks (variants, tolerances, validation, triton) from the same object.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hepdeploy.errors import BadInputError, SpecError, UnsafeNameError, first_line
from hepdeploy.frameworks import FRAMEWORK_NAMES, source_framework
from hepdeploy.fsutil import check_safe_name, check_tensor_name, missing
from hepdeploy.plan_compat import ProfileRange, server_release
from hepdeploy.platforms import USER_PLATFORMS
from hepdeploy.variants import DEFAULT_VARIANTS, VARIANT_NAMES, variant_kind

_log = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "float64", "bfloat16", "int8", "uint8", "int16", "int32", "int64", "bool")
# Frameworks a model file can be in (the registry's); a spec's source may also name a zoo network.
FILE_FRAMEWORKS = FRAMEWORK_NAMES
Framework = Literal[(*FILE_FRAMEWORKS, "zoo")]  # type: ignore[valid-type]
VariantName = Literal[VARIANT_NAMES]  # type: ignore[valid-type]  # the registry's names
Dim = int | str
# Old variant keys still read (example specs, tune.yaml fragments written before one vocabulary) -> the key.
DEPRECATED_KEEP_KEYS = {"fp32_nodes": "keep_nodes", "fp32_op_types": "keep_op_types",
                        "exclude_nodes": "keep_nodes", "exclude_op_types": "keep_op_types"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# Leading-dimension names exporters give the batch axis: ours, ONNX's docs (N), Keras/tf2onnx
# (unk__123, batch_size), PyTorch users (batch_size, bs).
BATCH_DIM_NAMES = frozenset({"batch", "N", "batch_size", "batchsize", "bs", "None"})
_UNKNOWN_DIM = re.compile(r"^unk__\d+$")
# What hepdeploy calls a leading dim the exporter left unnamed (-1 or empty): dim<position>_0.
_UNNAMED_LEADING_DIM = re.compile(r"^dim\d+_0$")


def is_batch_dim_name(dim: Dim) -> bool:
    return isinstance(dim, str) and (dim in BATCH_DIM_NAMES or bool(_UNKNOWN_DIM.match(dim))
                                     or bool(_UNNAMED_LEADING_DIM.match(dim)))


def infer_batch_axis(tensors: Sequence[TensorSpec]) -> tuple[bool, str]:
    """Whether the leading dim of every input and output is the batch axis, and why (or why not).

    It is when every leading dim has a batch name, or when one symbolic leading dim is shared
    by every input and output (whatever the exporter called it).
    """
    if not tensors:
        return False, "no tensors"
    leading = [t.shape[0] if t.shape else None for t in tensors]
    fixed = [f"{t.name}{list(t.shape)}" for t, d in zip(tensors, leading, strict=True) if not isinstance(d, str)]
    if fixed:
        return False, f"not every tensor has a symbolic leading dim ({', '.join(fixed[:3])})"
    names = sorted(set(leading))  # type: ignore[type-var]
    if all(isinstance(d, str) and _UNNAMED_LEADING_DIM.match(d) for d in leading):
        return True, "an unnamed (-1) leading dim on every input and output"
    if all(is_batch_dim_name(d) for d in leading):
        return True, f"leading dim named {' / '.join(map(repr, names))} on every input and output"
    if len(names) == 1:
        return True, f"symbolic leading dim {names[0]!r} shared by every input and output"
    return False, f"leading dims differ ({', '.join(map(repr, names))}) and are not batch names"


class TensorSpec(_Strict):
    """One input or output: a name, a dtype and a shape of ints and dimension names."""

    name: str
    dtype: str = "float32"
    shape: list[Dim]
    # How to draw valid sample values (self-checks, warm-up): a range, or an index
    # into a named dimension (e.g. edge_index values index the `n_hits` axis).
    low: float | None = None
    high: float | None = None
    index_of: str | None = Field(None, description="values are indices along this named dimension")

    @field_validator("name")
    @classmethod
    def _tensor_name(cls, value: str) -> str:
        return check_tensor_name(value)

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in DTYPES:
            raise ValueError(f"unknown dtype {value!r} (one of {', '.join(DTYPES)})")
        return value

    @field_validator("shape")
    @classmethod
    def _dims(cls, value: list[Dim]) -> list[Dim]:
        for dim in value:
            if isinstance(dim, bool) or (isinstance(dim, int) and dim < 1):
                raise ValueError(f"dimension {dim!r} must be a positive int or a name")
            if isinstance(dim, str) and not dim.isidentifier():
                raise ValueError(f"dimension name {dim!r} must be an identifier such as 'batch'")
        return value

    @property
    def dynamic_dims(self) -> list[str]:
        return [d for d in self.shape if isinstance(d, str)]

    @property
    def has_batch_axis(self) -> bool:
        """The leading dim has a batch name (``batch``, ``N``, ``batch_size``, ``unk__7`` ...)."""
        return bool(self.shape) and is_batch_dim_name(self.shape[0])


class DimRange(_Strict):
    """Sizes of one named dynamic dimension: TensorRT profile min/opt/max and test values."""

    min: int = Field(1, ge=1)
    opt: int | None = Field(None, ge=1)
    max: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> DimRange:
        opt = self.opt if self.opt is not None else self.min
        top = self.max if self.max is not None else opt
        if not self.min <= opt <= top:
            raise ValueError(f"need min <= opt <= max, got {self.min}/{opt}/{top}")
        return self


def default_dim_range(dim: str) -> DimRange:
    """Sizes of a named dim no spec describes: 'batch' 1/64/64, others 2/8/16."""
    if dim == "batch":
        return DimRange(min=1, opt=64, max=64)
    return DimRange(min=2, opt=8, max=16)


class SourceSpec(_Strict):
    framework: Framework
    path: str | None = None
    factory: str | None = Field(None, description="'package.module:function' building a torch nn.Module")
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = Field(None, description="state dict loaded with torch.load(weights_only=True)")
    zoo: str | None = Field(None, description="name of a model_zoo network")
    zoo_flavour: str | None = Field(None, description="for zoo networks with several frameworks: keras | torch")
    factory_dir: str | None = Field(None, description="folder the factory's module is imported from "
                                                      "(default: the spec's folder)")

    @model_validator(mode="after")
    def _needs_location(self) -> SourceSpec:
        if self.framework == "zoo":
            if not self.zoo:
                raise ValueError("framework 'zoo' needs 'zoo: NAME'")
        elif not source_framework(self.framework).needs_path:
            if not self.factory and not self.path:
                raise ValueError(f"framework {self.framework!r} needs 'factory: module:function' (or a path to a "
                                 ".py file)")
        elif not self.path:
            raise ValueError(f"framework {self.framework!r} needs 'path'")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"factory {self.factory!r} must look like 'package.module:function'")
        return self


class ColumnSource(_Strict):
    """Per-event values from a ROOT file: one branch, or one-hot branches turned into the class index."""

    branch: str | None = None
    branches: list[str] | None = Field(None, min_length=1, description="one-hot columns, in class order")

    @model_validator(mode="after")
    def _one_source(self) -> ColumnSource:
        if (self.branch is None) == (self.branches is None):
            raise ValueError("give either 'branch' or 'branches'")
        return self


class InputMapping(_Strict):
    """How one model input is made from ROOT branches (``data.inputs.NAME``)."""

    branches: list[str] | None = Field(
        None, min_length=1, description="scalar branches stacked as columns, or jagged branches (one per channel) "
                                        "padded to `length`; default: the input's name, or the preprocess.json's var_names")
    length: int | None = Field(None, ge=1, description="particles kept per event (jagged branches)")
    pad: float = Field(0.0, description="value of padded positions (without a preprocess.json)")
    sort_by: str | None = Field(None, description="jagged branch whose values order the particles (descending)")
    layout: Literal["channels_first", "channels_last"] = Field(
        "channels_first", description="[events, C, n] or [events, n, C]")
    mask_of: str | None = Field(None, description="1 for the particles of that input, 0 for its padding")

    @model_validator(mode="after")
    def _mask_alone(self) -> InputMapping:
        if self.mask_of is not None and (self.branches is not None or self.sort_by is not None):
            raise ValueError("mask_of builds the mask from counts: it takes no branches or sort_by")
        return self


class PreprocessRef(_Strict):
    file: str = Field(description="a weaver preprocess.json (relative to the spec's folder)")
    convention: Literal["cmssw", "weaver"] = Field(
        "cmssw", description="cmssw: NaN/Inf replaced before centring; weaver: standardise, clip, then NaN -> 0")


# The reference-set name of labels made from one-hot branches.
LABELS_FROM_BRANCHES = "labels"


class DataSpec(_Strict):
    calibration: str | None = Field(None, description="a data file (.npz, .h5, .root) or a glob of ROOT files")
    reference: str | None = Field(None, description="a data file (.npz, .root) or a glob of ROOT files")
    labels: str | ColumnSource | None = Field(
        None, description="name of the labels/targets array (or branch) in the data files, or {branch|branches}")
    # Per-event arrays kept beside the inputs and labels of a reference set (binning variables such
    # as jet_pt; "event" groups the rows of graph networks into events for the bootstrap). The
    # variables validation.physics.bins names are kept without being listed here. In ROOT files a
    # listed name is a branch; a mapping names each variable's branch(es).
    variables: list[str] | dict[str, ColumnSource] = Field(
        default_factory=list, description="names of per-event arrays (branches) in the data files")
    calibration_samples: int = Field(512, ge=1)
    seed: int = 0
    root_tree: str | None = Field(None, description="TTree name (a path such as dir/Events) in ROOT data files")
    root_branches: dict[str, str] = Field(default_factory=dict, description="input name -> branch name")
    inputs: dict[str, InputMapping] = Field(default_factory=dict, description="model input -> how ROOT branches make it")
    preprocess: PreprocessRef | None = None

    @property
    def label_array(self) -> str | None:
        """The name the labels carry in data files and reference sets."""
        if self.labels is None or isinstance(self.labels, str):
            return self.labels
        return self.labels.branch or LABELS_FROM_BRANCHES

    @property
    def variable_names(self) -> list[str]:
        return list(self.variables)


class VariantSpec(_Strict):
    """One optimized variant and its options (the optimize stage gives them meaning). An option the variant
    registry does not list for the variant (``workspace_mib`` on int8-cpu) is refused."""

    name: VariantName
    # Kept in high precision (FP32; int8-trt's layers left unquantized are its high_precision_dtype): nodes
    # whose name a regex matches, and every node of these op types. One pair of keys for every variant.
    keep_nodes: list[str] = Field(default_factory=list)
    keep_op_types: list[str] = Field(default_factory=list)
    calibration_method: Literal["max", "entropy", "percentile", "minmax"] = "max"
    # INT8: quantize only these op types (empty: the quantizer's own default set).
    quantize_op_types: list[str] = Field(default_factory=list)
    per_channel: bool = True
    workspace_mib: int = Field(4096, ge=16)
    # tensorrt: value ranges of shape-tensor inputs (inputs whose values set output shapes).
    shape_input_values: dict[str, ProfileRange] = Field(default_factory=dict)
    # tensorrt: a version-compatible plan (runs in later TensorRT releases of the same major version).
    version_compatible: bool = False
    # int8-trt: dtype of the layers left unquantized (ModelOpt's high_precision_dtype).
    # fp32 keeps the variant comparable with the int8 tolerances; fp16 is faster on GPUs.
    high_precision_dtype: Literal["fp32", "fp16"] = "fp32"
    # int8: keep input normalisation before the first Conv/Gemm/MatMul and the last
    # layer before the outputs in FP32 (mixed-scale raw inputs, regression outputs).
    keep_edges_fp32: bool = True
    # build: when this variant fails validation, search for the fastest mix that passes (hepdeploy tune)
    # and publish it instead.
    tune: bool = False

    @model_validator(mode="before")
    @classmethod
    def _deprecated_keep_keys(cls, data: Any) -> Any:
        """fp16's ``fp32_nodes``/``fp32_op_types`` and INT8's ``exclude_nodes``/``exclude_op_types`` (the two
        old words for what ``keep_nodes``/``keep_op_types`` now say) still load, with a warning."""
        if not isinstance(data, dict) or not any(old in data for old in DEPRECATED_KEEP_KEYS):
            return data
        data = dict(data)
        for old, new in DEPRECATED_KEEP_KEYS.items():
            if old in data:
                _log.warning("variant %s: %r is deprecated, write %r", data.get("name", "?"), old, new)
                data[new] = [*data.get(new, []), *data.pop(old)]
        return data

    @model_validator(mode="after")
    def _options_apply(self) -> VariantSpec:
        # An option set to its default changes nothing (a spec dumped in full and loaded again): only a value
        # that would change what a variant that ignores it makes is refused.
        changed = [key for key in self.model_fields_set
                   if getattr(self, key) != type(self).model_fields[key].get_default(call_default_factory=True)]
        try:
            variant_kind(self.name).check_options(sorted(changed))
        except BadInputError as error:  # a spec's problem: reported with its key path, as a SpecError
            raise ValueError(str(error)) from error
        return self


class Tolerance(_Strict):
    atol: float | None = Field(None, ge=0)
    rtol: float | None = Field(None, ge=0)


class PrecisionTolerance(Tolerance):
    outputs: dict[str, Tolerance] = Field(default_factory=dict)


class BootstrapSpec(_Strict):
    """The paired bootstrap that puts an interval on every physics change."""

    replicas: int = Field(1000, ge=0, description="resamples of the events; 0 turns intervals off")
    seed: int = 0
    confidence: float = Field(0.95, gt=0, lt=1, description="family-wise: all intervals together")


class PhysicsSpec(_Strict):
    """Allowed degradation of physics metrics versus the reference model.

    Every judged metric of hepdeploy.validate.metric_registry names the field here that holds its
    allowance; a new metric adds its allowance (and working point, if it has one) here.
    """

    # "auto" infers the task from the labels (integer classes, binary per-edge flags, float
    # targets); "none" turns physics checks off.
    task: Literal["auto", "classification", "regression", "edge_classification", "none"] = "auto"
    output: str | None = Field(None, description="output holding the scores/prediction (default: the first)")
    class_names: list[str] = Field(default_factory=list, description="names of the classifier's classes, in order")
    threshold: float = Field(0.5, gt=0, lt=1, description="edge classification: score cut for efficiency/purity")
    max_auc_drop: float = Field(0.01, ge=0)
    background_efficiency: float = Field(0.01, gt=0, lt=1)
    max_signal_efficiency_drop: float | None = Field(0.02, ge=0, description="absolute drop (None: not checked)")
    # Opt-in: the efficiency's drop relative to the reference's (1 % of 0.30 is 0.003), as the gate judges it.
    max_signal_efficiency_relative_drop: float | None = Field(
        None, ge=0, description="relative drop of the signal efficiency at background_efficiency (unset: not checked)")
    min_argmax_agreement: float | None = Field(0.95, ge=0, le=1, description="None: not checked")
    max_bias_change: float = Field(0.01, ge=0)
    max_resolution_change: float = Field(0.01, ge=0, description="absolute change of IQR/1.349 resolution")
    signal_efficiency: float = Field(0.5, gt=0, lt=1, description="background rejection: its working point")
    # Opt-in: a good tagger's rejection needs a large reference set (the background passing its cut
    # must reach min_background_beyond_cut), so it is checked only when this is set.
    max_background_rejection_drop: float | None = Field(
        None, ge=0, description="relative drop of 1/background efficiency at signal_efficiency (unset: not checked)")
    # Every metric is also judged per bin of these per-event variables; the worst bin decides.
    bins: dict[str, list[float]] = Field(default_factory=dict, description="variable -> bin edges (ascending)")
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec)
    # The statistical floor: a metric resting on fewer events is not judged ("not enough events").
    min_signal_events: int = Field(50, ge=1, description="signal events of a class (or bin) an AUC/efficiency needs")
    min_background_beyond_cut: int = Field(
        20, ge=1, description="background events beyond the working-point cut an efficiency needs")
    min_events: int = Field(50, ge=1, description="events a regression metric or the argmax agreement needs")

    @field_validator("bins")
    @classmethod
    def _ascending(cls, value: dict[str, list[float]]) -> dict[str, list[float]]:
        for name, edges in value.items():
            if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
                raise ValueError(f"bins of {name!r} need at least two ascending edges, got {edges}")
        return value


class ValidationSpec(_Strict):
    tolerances: dict[Literal["fp32", "fp16", "int8"], PrecisionTolerance] = Field(default_factory=dict)
    policy: dict[Literal["fp32", "fp16", "int8"], Literal["numerical", "physics", "either", "both"]] = Field(
        default_factory=dict
    )
    physics: PhysicsSpec = Field(default_factory=PhysicsSpec)
    chunk_size: int = Field(4096, ge=1)


class DynamicBatching(_Strict):
    preferred_batch_size: list[int] = Field(default_factory=list)
    max_queue_delay_microseconds: int = Field(100, ge=0)


class InstanceGroup(_Strict):
    count: int = Field(1, ge=1)
    kind: Literal["KIND_GPU", "KIND_CPU", "KIND_AUTO"] = "KIND_GPU"
    gpus: list[int] = Field(default_factory=list)


class CpuTwin(_Strict):
    """The CPU-fallback twin. CMSSW's thread control: one instance per thread asked for, each
    ONNX Runtime session with one intra-op and one inter-op thread (``count`` and the thread
    counts override that). ``variant: auto`` (the default): the build serves the fastest CPU variant
    that passes, FP32 included, timed side by side here; an INT8 that is not measured faster than FP32
    is never the twin."""

    variant: VariantName | Literal["auto"] = "auto"
    threads: int = Field(1, ge=1)
    count: int | None = Field(None, ge=1)
    intra_op_threads: int = Field(1, ge=0)
    inter_op_threads: int = Field(1, ge=0)

    @property
    def instances(self) -> int:
        return self.count if self.count is not None else self.threads


class TritonOptimization(_Strict):
    # ONNX Runtime backend's `optimization { graph { level } }`: 0 (Triton's default) all optimisations,
    # -1 basic only, 1 extended, 2 none (per the onnxruntime_backend README).
    graph_level: int | None = Field(None, ge=-1, le=2)


class PerfSpec(_Strict):
    """What one "event" is for throughput figures."""

    batch_per_request: int = Field(1, ge=1)
    requests_per_event: int = Field(1, ge=1)


class TritonSpec(_Strict):
    model_name: str | None = None
    variant: VariantName = "fp32"
    platform: str | None = None  # one of the platform registry's user choices (hepdeploy.platforms)
    max_batch_size: int | None = Field(None, ge=0)
    dynamic_batching: DynamicBatching | None = None
    instance_group: list[InstanceGroup] = Field(default_factory=list)
    tensorrt_accelerator: Literal["FP32", "FP16", "INT8"] | None = None
    # Class names in order: written to labels.txt and named by the classification output's label_filename.
    labels: list[str] = Field(default_factory=list)
    # The checksum repository agent (MD5:<version>/<file> keys, as CMSSW's cmsTritonConfigTool writes them).
    checksum_agent: bool = True
    optimization: TritonOptimization = Field(default_factory=TritonOptimization)
    # The NGC tritonserver release that will serve the repository ("24.10"): plans and ORT-TRT
    # configs are checked against its TensorRT and ONNX Runtime versions.
    server_release: str | None = None
    warmup: bool = True
    version_policy: Literal["latest", "all"] | dict[str, Any] = "latest"
    cpu_twin: CpuTwin | None = None
    python_backend: bool = False
    perf: PerfSpec = Field(default_factory=PerfSpec)
    # `auto`: the build profiles the model on its data (`hepdeploy profile`) and publishes the batching and
    # instances it chooses, in place of the numbers above.
    serving: Literal["auto"] | None = None

    @field_validator("model_name")
    @classmethod
    def _safe(cls, value: str | None) -> str | None:
        return None if value is None else check_safe_name(value, "Triton model name")

    @field_validator("platform")
    @classmethod
    def _known_platform(cls, value: str | None) -> str | None:
        if value is not None and value not in USER_PLATFORMS:
            raise ValueError(f"Triton platform {value!r} is not one a model file is published as "
                             f"(one of {', '.join(USER_PLATFORMS)})")
        return value

    @field_validator("server_release")
    @classmethod
    def _known_release(cls, value: str | None) -> str | None:
        return None if value is None else server_release(value).release


class GatePhysicsSpec(PhysicsSpec):
    """``gate.physics``: how much worse than version N version N+1 may be (non-inferiority), per metric.

    Defaults suit two trainings of one network: AUC may drop by 0.002, the signal efficiency at
    ``background_efficiency`` by 1 % of its value; the absolute efficiency drop and the argmax agreement
    are not judged (two trainings disagree on many events: the change map reports the flip fraction).
    Every allowance holds in every bin alike. What this block leaves unset besides allowances (task,
    output, class names, working points, bins, floors, bootstrap replicas) is ``validation.physics``'s.
    """

    max_auc_drop: float = Field(0.002, ge=0)
    max_signal_efficiency_drop: float | None = Field(None, ge=0, description="absolute drop (None: not checked)")
    max_signal_efficiency_relative_drop: float | None = Field(
        0.01, ge=0, description="relative drop of the signal efficiency at background_efficiency")
    min_argmax_agreement: float | None = Field(None, ge=0, le=1, description="None: not checked (the change map's)")


# What ``gate.physics`` takes from ``validation.physics`` when it does not set it: what the metrics are
# computed on, not how much they may change.
GATE_INHERITED_PHYSICS = ("task", "output", "class_names", "threshold", "background_efficiency", "signal_efficiency",
                          "bins", "bootstrap", "min_signal_events", "min_background_beyond_cut", "min_events")


class GatePerformanceSpec(_Strict):
    """``gate.performance``: N and N+1 timed side by side; a slowdown is judged only when ``max_slowdown`` is set."""

    max_slowdown: float | None = Field(
        None, gt=0, description="relative: 0.2 lets N+1 be 20 % slower than N (unset: reported, not judged)")
    noise_band: float = Field(0.10, ge=0, description="relative change the timing cannot tell from noise")
    seconds: float = Field(2.0, gt=0, description="timing time, both models together, after the warm-up")
    batch: int = Field(256, ge=1, description="rows per run (fewer when the data holds fewer)")


class GateSpec(_Strict):
    """``gate``: what ``hepdeploy gate`` holds version N+1 to against version N."""

    physics: GatePhysicsSpec = Field(default_factory=GatePhysicsSpec)
    performance: GatePerformanceSpec = Field(default_factory=GatePerformanceSpec)
    seed: int = Field(0, description="the bootstrap's seed (recorded in gate.json)")

    def physics_against(self, validation: PhysicsSpec) -> GatePhysicsSpec:
        """``gate.physics`` completed from ``validation.physics`` (:data:`GATE_INHERITED_PHYSICS` it leaves
        unset), with the bootstrap seeded by ``gate.seed``."""
        given = self.physics.model_fields_set
        inherited = {key: getattr(validation, key) for key in GATE_INHERITED_PHYSICS if key not in given}
        merged = self.physics.model_copy(update=inherited, deep=True)
        merged.bootstrap = merged.bootstrap.model_copy(update={"seed": self.seed})
        return merged


def _variants_default() -> list[VariantSpec]:
    return [VariantSpec(name=n) for n in DEFAULT_VARIANTS]


class ModelSpec(_Strict):
    name: str
    description: str = ""
    source: SourceSpec
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dims: dict[str, DimRange] = Field(default_factory=dict)
    opset: int | None = Field(None, ge=7)
    data: DataSpec = Field(default_factory=DataSpec)
    variants: list[Annotated[VariantSpec, Field()]] = Field(default_factory=_variants_default)
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    triton: TritonSpec = Field(default_factory=TritonSpec)
    gate: GateSpec = Field(default_factory=GateSpec)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_safe_name(value, "model name")

    @field_validator("variants", mode="before")
    @classmethod
    def _variant_shorthand(cls, value: Any) -> Any:
        # `variants: [fp32, fp16]` is shorthand for `[{name: fp32}, {name: fp16}]`.
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if not self.inputs:
            raise ValueError("a model needs at least one input")
        if not self.outputs:
            raise ValueError("a model needs at least one output")
        names = [t.name for t in [*self.inputs, *self.outputs]]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tensor names must be unique, repeated: {', '.join(dupes)}")
        batch = self.dims.get("batch")
        mbs = self.triton.max_batch_size
        if mbs and batch is not None and batch.max is not None and mbs > batch.max:
            raise ValueError(f"triton.max_batch_size {mbs} is above dims.batch.max {batch.max}: Triton would send "
                             f"batches the model was not built or checked for (lower one or raise the other)")
        return self

    def tensor_problems(self, inputs: list[TensorSpec], outputs: list[TensorSpec], where: str) -> list[str]:
        """How the model's tensors (``inputs``, ``outputs``) differ from the spec's: names, ranks, and dims
        the spec declares that the model does not have (a fixed size, or a dynamic one where the model is
        fixed, e.g. the batch axis on the wrong axis). Empty when they agree."""
        problems = []
        for role, declared, actual in (("input", self.inputs, inputs), ("output", self.outputs, outputs)):
            have = {t.name: t for t in actual}
            missing = [t.name for t in declared if t.name not in have]
            extra = [name for name in have if name not in {t.name for t in declared}]
            if missing or extra:
                problems.append(f"{where}: the spec's {role}s ({', '.join(t.name for t in declared)}) are not the "
                                f"model's ({', '.join(have)})")
                continue
            for tensor in declared:
                model_shape = have[tensor.name].shape
                if len(model_shape) != len(tensor.shape) or any(
                        isinstance(want, str) and isinstance(got, int) or isinstance(want, int) and isinstance(got, int)
                        and want != got for want, got in zip(tensor.shape, model_shape)):
                    problems.append(f"{where}: {role} {tensor.name!r} is {list(tensor.shape)} in the spec but "
                                    f"{list(model_shape)} in the model")
        return problems

    def dim_range(self, dim: str) -> DimRange:
        """Sizes for a named dim: the spec's ``dims`` entry, else :func:`default_dim_range`."""
        return self.dims[dim] if dim in self.dims else default_dim_range(dim)

    @property
    def batched(self) -> bool:
        """True when every input's first dimension is the named 'batch' axis."""
        return all(t.has_batch_axis for t in self.inputs)

    def variant(self, name: str) -> VariantSpec:
        for variant in self.variants:
            if variant.name == name:
                return variant
        return VariantSpec(name=name)  # type: ignore[arg-type]


def format_validation_error(error: ValidationError, where: str) -> str:
    """One line per problem, each with the key path: 'spec.yaml: inputs.0.dtype: ...'."""
    parts = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{where}: {loc}: {msg}")
    return "; ".join(parts)


def _path_fields(spec: ModelSpec) -> list[tuple[BaseModel, str]]:
    """(block, key) of every key of the spec that holds a path (a file, a folder or a glob)."""
    fields: list[tuple[BaseModel, str]] = [(spec.source, "path"), (spec.source, "weights"),
                                           (spec.source, "factory_dir"), (spec.data, "calibration"),
                                           (spec.data, "reference")]
    if spec.data.preprocess is not None:
        fields.append((spec.data.preprocess, "file"))
    return fields


def _resolve_paths(spec: ModelSpec, base_dir: Path) -> None:
    """Make every path of the spec absolute (relative ones are relative to ``base_dir``), once, at load time:
    nothing downstream needs to know where the spec came from. A torch factory is imported from the spec's
    folder unless the spec names another."""
    if spec.source.factory is not None and spec.source.factory_dir is None:
        spec.source.factory_dir = str(base_dir)
    for block, key in _path_fields(spec):
        value = getattr(block, key)
        if value is not None:
            path = Path(value).expanduser()
            setattr(block, key, str(path if path.is_absolute() else base_dir / path))


def spec_from_dict(data: Any, where: str = "spec", base_dir: Path | None = None) -> ModelSpec:
    """A validated spec whose paths are absolute: relative ones are taken relative to ``base_dir`` (the spec
    file's folder; the working directory when None)."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: a spec must be a YAML mapping, got {type(data).__name__}")
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(format_validation_error(error, where)) from error
    except UnsafeNameError as error:  # raised as-is by name validators; say which file it is in
        raise UnsafeNameError(f"{where}: {error}") from error
    _resolve_paths(spec, Path(base_dir).absolute() if base_dir is not None else Path.cwd())
    return spec


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (plain YAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {seen[key]} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_spec(path: Path | str) -> ModelSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(missing(path, "spec file"))
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        first = first_line(error)
        raise SpecError(f"{path}: not valid YAML: {first}") from error
    return spec_from_dict(data, where=str(path), base_dir=path.resolve().parent)


def spec_to_yaml(spec: ModelSpec, folder: Path | None = None) -> str:
    """The spec as YAML to be written into ``folder``: paths inside ``folder`` are written relative to it (the
    folder can move with its files), others absolute; loading the file gives the same spec back."""
    spec = spec.model_copy(deep=True)
    if folder is not None:
        folder = Path(folder).absolute()
        if spec.source.factory_dir is not None and Path(spec.source.factory_dir) == folder:
            spec.source.factory_dir = None  # the default: the spec's folder
        for block, key in _path_fields(spec):
            value = getattr(block, key)
            if value is not None and Path(value).is_relative_to(folder):
                setattr(block, key, Path(value).relative_to(folder).as_posix())
    data = spec.model_dump(mode="json", exclude_defaults=True)
    data = {"name": spec.name, **data}
    return yaml.safe_dump(data, sort_keys=False)


def parse_tensor_option(text: str) -> TensorSpec:
    """Parse ``name:dtype:shape`` from the command line, e.g. ``input:float32:batch,47``."""
    pieces = text.split(":")
    if len(pieces) != 3:
        raise SpecError(f"--input {text!r}: expected name:dtype:shape such as input:float32:batch,47")
    name, dtype, shape_text = pieces
    shape: list[Dim] = [int(d) if d.strip().isdigit() else d.strip() for d in shape_text.split(",") if d.strip()]
    try:
        return TensorSpec(name=name, dtype=dtype, shape=shape)
    except ValidationError as error:
        raise SpecError(format_validation_error(error, f"--input {text!r}")) from error
