"""The variant registry: every optimized variant hepdeploy can make, in one table.

The spec (which names it accepts), the CLI (its choices), the optimize stage (how to make
one) and the build (file names, what needs calibration) all read this table; adding a
variant is one entry here plus its maker. The maker is named as ``module:function`` and
resolved by the optimize stage only, so this module stays below every stage.

A maker of an ONNX variant is called as ``maker(prepared_onnx_path, variant_spec, inputs,
calibration_arrays_or_None, model_spec_or_None)`` (plus ``modelopt=worker`` for a kind
whose tool is ModelOpt: the build's one ModelOpt process) and returns ``(onnx.ModelProto,
parameters)``; ``parameters["precision"]``, when present, overrides the kind's precision in
the sidecar (e.g. "mixed" for INT8 with FP16 elsewhere). The maker of an engine variant
(suffix ``.plan``) builds the file itself (``optimize.tensorrt.build_engine``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hepdeploy.errors import BadInputError

Precision = Literal["fp32", "fp16", "int8", "mixed"]
Target = Literal["any", "tensorrt", "cpu"]


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

    @property
    def is_engine(self) -> bool:
        """A serialized engine for one GPU (not an ONNX graph that any backend runs)."""
        return self.suffix == ".plan"

    @property
    def uses_modelopt(self) -> bool:
        """Made by NVIDIA ModelOpt, in a ModelOpt worker process (``optimize.modelopt_worker``)."""
        return self.tool == "nvidia-modelopt"

    def filename(self, model_name: str) -> str:
        """The variant's file name in a build folder: ``facile_int8_cpu.onnx``."""
        return f"{model_name}_{self.name.replace('-', '_')}{self.suffix}"


REGISTRY: tuple[VariantKind, ...] = (
    VariantKind("fp32", "fp32", "any", ".onnx", False, "onnxslim", None,
                "onnxslim + ONNX Runtime basic offline optimisation, outputs checked unchanged"),
    VariantKind("fp16", "fp16", "tensorrt", ".onnx", False, "nvidia-modelopt", "hepdeploy.optimize.fp16:make_fp16",
                "ModelOpt AutoCast, FP32 inputs/outputs, sensitive nodes kept FP32"),
    VariantKind("int8-trt", "int8", "tensorrt", ".onnx", True, "nvidia-modelopt",
                "hepdeploy.optimize.int8:quantize_for_tensorrt",
                "ModelOpt explicit Q/DQ PTQ for TensorRT, per-channel weights", min_calibration_rows=16),
    VariantKind("int8-cpu", "int8", "cpu", ".onnx", True, "onnxruntime", "hepdeploy.optimize.int8:quantize_for_cpu",
                "ONNX Runtime static QDQ, u8 activations / s8 per-channel weights", min_calibration_rows=16),
    VariantKind("tensorrt", "fp32", "tensorrt", ".plan", False, "tensorrt", "hepdeploy.optimize.tensorrt:build_engine",
                "a strongly typed TensorRT engine (GPU only); its precision is its parent graph's"),
)
VARIANTS: dict[str, VariantKind] = {kind.name: kind for kind in REGISTRY}
VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)
# What a spec builds when it lists no variants.
DEFAULT_VARIANTS: tuple[str, ...] = ("fp32", "int8-cpu", "fp16", "int8-trt")


def variant_kind(name: str) -> VariantKind:
    """The registry entry for ``name``; an unknown name is bad input."""
    kind = VARIANTS.get(name)
    if kind is None:
        raise BadInputError(f"unknown variant {name!r} (one of {', '.join(VARIANT_NAMES)})")
    return kind
