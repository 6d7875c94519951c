"""The variant registry: every optimized variant hepdeploy can make, in one table.

The spec (which names and which options it accepts), the CLI (its choices, and which of its
options apply), the optimize stage (how to make one), tune (which variants it searches, whose
speed it can time here) and the build (file names, what needs calibration) all read this table;
adding a variant is one entry here plus its maker; code elsewhere asks the entry (``kind.tunable``,
``kind.speed``, ``kind.applies(option)``), not the name. The maker is named as ``module:function``
and resolved by the optimize stage only, so this module stays below every stage.

A maker of an ONNX variant is called as ``maker(prepared_onnx_path, variant_spec, inputs,
calibration_arrays_or_None, model_spec_or_None)`` (plus ``modelopt=worker`` for a kind
whose tool is ModelOpt: the build's one ModelOpt process) and returns ``(onnx.ModelProto,
parameters)``; ``parameters["precision"]``, when present, overrides the kind's precision in
the sidecar (e.g. "mixed" for INT8 with FP16 elsewhere). The maker of an engine variant
(suffix ``.plan``) builds the file itself (``optimize.tensorrt.build_engine``).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from hepdeploy.errors import BadInputError

Precision = Literal["fp32", "fp16", "int8", "mixed"]
Target = Literal["any", "tensorrt", "cpu"]
# How a variant's speed against FP32 is known: "timed" in ONNX Runtime on this machine's CPU (one
# thread, alternating with FP32: tune's near ties, the automatic CPU twin), or only "modelled" by the
# cost table of its serving target (``optimize.cost``): its target's hardware may not be here.
Speed = Literal["timed", "modelled"]

# The variant options (VariantSpec keys) and the variants they mean something to; ``name`` applies to all.
# The spec and the CLI refuse an option given to a variant it does not apply to.
KEEP_OPTIONS = frozenset({"keep_nodes", "keep_op_types"})  # kept in high precision (one vocabulary)
INT8_OPTIONS = frozenset({"calibration_method", "quantize_op_types", "keep_edges_fp32"})
ENGINE_OPTIONS = frozenset({"workspace_mib", "shape_input_values", "version_compatible"})
TUNE_OPTION = "tune"


@dataclass(frozen=True)
class VariantKind:
    """What one variant is: its precision and serving target, how it is made and stored."""

    name: str
    precision: Precision
    target: Target
    suffix: str
    needs_calibration: bool
    tool: str  # the distribution whose version the sidecar's step records
    maker: str | None  # "module:function"; None: the simplified FP32 graph is the variant
    summary: str
    # Fewest calibration rows (events) the variant accepts: ranges from fewer are not ranges of the data.
    min_calibration_rows: int = 0
    # ``hepdeploy tune`` can search which of its layers to keep in high precision (it lowers some).
    tunable: bool = False
    speed: Speed = "modelled"
    # The VariantSpec keys that mean something to it (besides ``name``); the others are refused.
    options: frozenset[str] = frozenset()

    @property
    def is_engine(self) -> bool:
        """A serialized engine for one GPU (not an ONNX graph that any backend runs)."""
        return self.suffix == ".plan"

    @property
    def uses_modelopt(self) -> bool:
        """Made by NVIDIA ModelOpt, in a ModelOpt worker process (``optimize.modelopt_worker``)."""
        return self.tool == "nvidia-modelopt"

    def filename(self, model_name: str, tuned: bool = False) -> str:
        """The variant's file name, wherever hepdeploy names one (a build's folder, ``optimize -o FOLDER``):
        ``facile_int8_cpu.onnx``; ``tuned``: the mix ``tune`` found, ``facile_int8_cpu_tuned.onnx`` (a build
        keeps it beside the plain variant it replaces, whose report explains why it was tuned)."""
        return f"{model_name}_{self.name.replace('-', '_')}{'_tuned' if tuned else ''}{self.suffix}"

    def applies(self, option: str) -> bool:
        """Whether the VariantSpec key ``option`` means something to this variant."""
        return option == "name" or option in self.options

    def check_options(self, given: Iterable[str], spelling: dict[str, str] | None = None) -> None:
        """Refuse options that do not apply to this variant (BadInputError naming the variant and each option,
        as ``spelling`` writes it: a CLI flag, a spec key)."""
        refused = [option for option in given if not self.applies(option)]
        if refused:
            names = ", ".join((spelling or {}).get(option, option) for option in refused)
            applying = ", ".join(sorted(self.options)) or "none"
            raise BadInputError(f"{names} does not apply to the {self.name} variant (its options: {applying})")


REGISTRY: tuple[VariantKind, ...] = (
    VariantKind("fp32", "fp32", "any", ".onnx", False, "onnxslim", None,
                "onnxslim + ONNX Runtime basic offline optimisation, outputs checked unchanged", speed="timed"),
    VariantKind("fp16", "fp16", "tensorrt", ".onnx", False, "nvidia-modelopt", "hepdeploy.optimize.fp16:make_fp16",
                "ModelOpt AutoCast, FP32 inputs/outputs, sensitive nodes kept FP32",
                tunable=True, options=KEEP_OPTIONS | {TUNE_OPTION}),
    VariantKind("int8-trt", "int8", "tensorrt", ".onnx", True, "nvidia-modelopt",
                "hepdeploy.optimize.int8:quantize_for_tensorrt",
                "ModelOpt explicit Q/DQ PTQ for TensorRT, per-channel weights", min_calibration_rows=16,
                tunable=True, options=KEEP_OPTIONS | INT8_OPTIONS | {"high_precision_dtype", TUNE_OPTION}),
    VariantKind("int8-cpu", "int8", "cpu", ".onnx", True, "onnxruntime", "hepdeploy.optimize.int8:quantize_for_cpu",
                "ONNX Runtime static QDQ, u8 activations / s8 per-channel weights", min_calibration_rows=16,
                tunable=True, speed="timed", options=KEEP_OPTIONS | INT8_OPTIONS | {"per_channel", TUNE_OPTION}),
    VariantKind("tensorrt", "fp32", "tensorrt", ".plan", False, "tensorrt", "hepdeploy.optimize.tensorrt:build_engine",
                "a strongly typed TensorRT engine (GPU only); its precision is its parent graph's",
                options=ENGINE_OPTIONS),
)
VARIANTS: dict[str, VariantKind] = {kind.name: kind for kind in REGISTRY}
VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)
# What a spec builds when it lists no variants.
DEFAULT_VARIANTS: tuple[str, ...] = ("fp32", "int8-cpu", "fp16", "int8-trt")
TUNABLE_VARIANTS: tuple[str, ...] = tuple(kind.name for kind in REGISTRY if kind.tunable)
# The variant every other one is judged and timed against.
BASELINE = "fp32"


def variant_kind(name: str) -> VariantKind:
    """The registry entry for ``name``; an unknown name is bad input."""
    kind = VARIANTS.get(name)
    if kind is None:
        raise BadInputError(f"unknown variant {name!r} (one of {', '.join(VARIANT_NAMES)})")
    return kind
