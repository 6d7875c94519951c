"""The INT8 variants: explicit QuantizeLinear/DequantizeLinear nodes calibrated on user data.

* ``int8-trt`` — NVIDIA ModelOpt ONNX PTQ (``modelopt.onnx.quantization.quantize``): Q/DQ
  placed where TensorRT fuses them (Conv, Gemm/MatMul, pooling, residual Add ...),
  symmetric int8, per-channel weights; what a strongly typed TensorRT 10/11 build needs
  since the INT8 flag and calibrators are gone. Calibration methods ``max`` and
  ``entropy`` are ModelOpt's own; ``percentile`` ranges are computed with ONNX
  Runtime's histogram calibrator and handed to ModelOpt as a calibration cache.
* ``int8-cpu`` — ONNX Runtime static quantization in QDQ format, unsigned 8-bit
  activations and signed per-channel weights in 7 bits (u8s8: the fast path with AVX-512
  VNNI; s8s8 measured ~2x slower than FP32 there). ``reduce_range`` keeps the answer the
  same on every machine: on a CPU without VNNI, 8-bit weights saturate ONNX Runtime's
  int16 pair sums (the fully quantized test MLP's worst error: 2.34 there, 1.64 with 7 bits).

Both are checked afterwards: a result without Q/DQ nodes is refused, never written as
an "int8" variant.
"""
from __future__ import annotations

import functools
import logging
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hepdeploy.data import batch_size_for, calibration_feeds, sample_count
from hepdeploy.errors import BadInputError, ConversionError
from hepdeploy.lifetime import work_folder
from hepdeploy.optimize.fp16 import check_node_patterns, check_op_types
from hepdeploy.optimize.graph import edge_nodes, precision_summary
from hepdeploy.optimize.keep import expand_to_groups, nodes_matching, restore_fp32_inputs
from hepdeploy.optimize.modelopt_worker import ModelOptWorker, feed_reader, run_job, worker_parameters
from hepdeploy.spec import ModelSpec, TensorSpec, VariantSpec

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("hepdeploy.optimize.int8")

CALIBRATION_BATCH = 32
PERCENTILE = 99.99


def make_reader(arrays: dict[str, np.ndarray], inputs: list[TensorSpec], batch_size: int | None = None) -> Any:
    """An ONNX Runtime CalibrationDataReader over validated calibration arrays (rewindable)."""
    batch_size = batch_size or batch_size_for(arrays, CALIBRATION_BATCH)
    return feed_reader(list(calibration_feeds(arrays, inputs, batch_size)))


PREFIX_MARK = ":"


def _prefix_safe(name: str) -> str:
    return name + PREFIX_MARK


def _break_name_prefixes(model: onnx.ModelProto) -> dict[str, str]:
    """Append ':' to every node name (in place); return new -> old names.

    ModelOpt matches its own exclusion lists (e.g. its GEMV/small-K MatMul exclusions)
    as regex *prefixes*, so excluding ``linear`` also excluded ``linear_1`` ... ``linear_17``
    and left the interaction network with nothing quantized. With a terminator no name is
    a prefix of another; the names are restored after quantization.
    """
    renamed = {}
    for node in model.graph.node:
        new = _prefix_safe(node.name)
        renamed[new] = node.name
        node.name = new
    return renamed


def edge_exclusions(model: onnx.ModelProto, variant: VariantSpec) -> list[str]:
    """The edge nodes an INT8 variant keeps in FP32 (``keep_edges_fp32``), sorted."""
    if not variant.keep_edges_fp32:
        return []
    head, tail = edge_nodes(model)
    return sorted(set(head) | set(tail))


def _require_qdq(model: onnx.ModelProto, variant: str, original: onnx.ModelProto) -> dict[str, Any]:
    summary = precision_summary(model)
    if not summary.has_qdq or summary.quantized_compute == 0:
        ops = ", ".join(sorted({n.op_type for n in original.graph.node}))
        what = "no Q/DQ node was placed" if not summary.has_qdq else "no Conv/Gemm/MatMul got INT8 inputs"
        raise BadInputError(
            f"{variant}: nothing to quantize: {what} (the model's ops: {ops}); "
            "an FP32 copy is not written as an INT8 variant"
        )
    if not summary.io_is_fp32:
        raise ConversionError(f"{variant}: quantization changed the type of a graph input or output")
    return summary.as_dict()


def _load_checked(model_path: Path, variant: VariantSpec) -> tuple[onnx.ModelProto, list[str], list[str]]:
    """The FP32 model, its user exclusions checked; the edge nodes kept in FP32; every node kept in FP32
    (the user's exclusions and the edges, each compute node among them with its whole layer: ``optimize.keep``)."""
    import onnx

    original = onnx.load(str(model_path))
    check_node_patterns(original, variant.keep_nodes, "--keep-node")
    check_op_types(variant.keep_op_types, "--keep-op")
    check_op_types(variant.quantize_op_types, "--quantize-op")
    edges = edge_exclusions(original, variant)
    named = nodes_matching(original, variant.keep_nodes, variant.keep_op_types)
    return original, edges, expand_to_groups(original, [*named, *edges])


def quantize_for_tensorrt(model_path: Path, variant: VariantSpec, inputs: list[TensorSpec],
                          calibration: dict[str, np.ndarray],
                          spec: ModelSpec | None = None,
                          modelopt: ModelOptWorker | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The int8-trt maker: ModelOpt explicit-INT8 PTQ of ``model_path`` (calibrated on the CPU), in
    ``modelopt`` (a build's worker) when given."""
    return _quantize("int8-trt", model_path, variant, inputs, calibration, modelopt)


def quantize_for_cpu(model_path: Path, variant: VariantSpec, inputs: list[TensorSpec],
                     calibration: dict[str, np.ndarray],
                     spec: ModelSpec | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The int8-cpu maker: ONNX Runtime static QDQ quantization, u8 activations, s8 per-channel weights."""
    return _quantize("int8-cpu", model_path, variant, inputs, calibration)


def _quantize(name: str, model_path: Path, variant: VariantSpec, inputs: list[TensorSpec],
              calibration: dict[str, np.ndarray],
              modelopt: ModelOptWorker | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """What both INT8 makers do around their tool: the lowered graph (:func:`lowered_graph`), refused
    unless it holds Q/DQ nodes; the tool's parameters, then the shared ones."""
    quantized, parameters, original = lowered_graph(name, model_path, variant, inputs, calibration, modelopt)
    summary = _require_qdq(quantized, name, original)
    return quantized, {**parameters, **summary}


def lowered_graph(name: str, model_path: Path, variant: VariantSpec, inputs: list[TensorSpec],
                  calibration: dict[str, np.ndarray],
                  modelopt: ModelOptWorker | None = None) -> tuple[onnx.ModelProto, dict[str, Any], onnx.ModelProto]:
    """INT8 variant ``name``'s graph: the FP32 model and its exclusions checked, the tool run, then every
    kept node made to read FP32 (``optimize.keep``); with every layer kept it is the FP32 graph (not yet
    checked for Q/DQ nodes). Returns it, its parameters, and the FP32 model it was made from.

    The tool is called as ``quantizer(model_path, original, kept, variant, inputs, calibration)`` and
    returns the quantized model and its parameters; ``kept`` are the exact names it must leave in FP32.
    """
    quantizer = functools.partial(_modelopt_ptq, modelopt=modelopt) if name == "int8-trt" else _onnxruntime_qdq
    original, edges, kept = _load_checked(model_path, variant)
    quantized, parameters = quantizer(model_path, original, kept, variant, inputs, calibration)
    restored = restore_fp32_inputs(quantized, original, kept)
    return quantized, {**parameters, "edge_nodes_kept_fp32": edges, "nodes_kept_fp32": len(kept),
                       "fp32_inputs_restored": restored}, original


def _modelopt_ptq(model_path: Path, original: onnx.ModelProto, kept: list[str], variant: VariantSpec,
                  inputs: list[TensorSpec],
                  calibration: dict[str, np.ndarray],
                  modelopt: ModelOptWorker | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """int8-trt's tool: ModelOpt in a child process, on a copy whose node names are no one's prefix."""
    import onnx

    method = "max" if variant.calibration_method == "minmax" else variant.calibration_method
    # User patterns were expanded (same rule as int8-cpu) and are handed over as exact names.
    exclude_patterns = [f"^{re.escape(_prefix_safe(name))}$" for name in kept]
    with work_folder("int8trt") as folder:
        # ModelOpt writes intermediate files next to its input: give it a private folder.
        work = Path(folder)
        work_input = work / "model.onnx"
        renamed = _break_name_prefixes(original)
        onnx.save(original, str(work_input))
        work_output = work / "model.int8.onnx"
        feeds = work / "feeds"
        feeds.mkdir()
        for k, feed in enumerate(calibration_feeds(calibration, inputs, batch_size_for(calibration, CALIBRATION_BATCH))):
            np.savez(feeds / f"batch_{k:05d}.npz", **feed)
        cache_path = None
        if method == "percentile":
            # Computed here, where ONNX Runtime is not patched by ModelOpt.
            cache_path = work / "percentile.cache"
            _percentile_cache(work_input, make_reader(calibration, inputs), cache_path, work)
        reply = run_job(
            {
                "step": "int8-trt",
                "kind": "int8",
                "model": str(work_input),
                "output": str(work_output),
                "feeds": str(feeds),
                "kwargs": {
                    "quantize_mode": "int8",
                    "calibration_method": "max" if method == "percentile" else method,
                    "calibration_cache_path": str(cache_path) if cache_path else None,
                    "calibration_eps": ["cpu"],
                    "op_types_to_exclude": list(variant.keep_op_types) or None,
                    "op_types_to_quantize": list(variant.quantize_op_types) or None,
                    "nodes_to_exclude": exclude_patterns or None,
                    "high_precision_dtype": variant.high_precision_dtype,
                    "log_level": "WARNING",
                    # Weights become int8 initializers behind a DequantizeLinear (no weight
                    # QuantizeLinear for TensorRT to fold): the graph holds what it claims.
                    "dq_only": True,
                },
            },
            modelopt,
        )
        if not work_output.is_file():
            raise BadInputError(
                "int8-trt: nothing to quantize: ModelOpt wrote no model "
                f"(the model's ops: {', '.join(sorted({n.op_type for n in original.graph.node}))})"
            )
        quantized = onnx.load(str(work_output))
    for node in quantized.graph.node:
        node.name = renamed.get(node.name, node.name)
    for node in original.graph.node:
        node.name = renamed.get(node.name, node.name)
    return quantized, {
        "tool": "modelopt.onnx.quantization",
        "quantize_mode": "int8",
        "calibration_method": method,
        **({"percentile": PERCENTILE} if method == "percentile" else {}),
        "calibration_samples": sample_count(calibration),
        "calibration_eps": ["cpu"],
        "per_channel_weights": True,
        "weights": "int8 initializers (DequantizeLinear only)",
        "activations": "int8 symmetric",
        "high_precision_dtype": variant.high_precision_dtype,
        # INT8 layers plus FP16 for the rest is "mixed" in the sidecar.
        **({"precision": "mixed"} if variant.high_precision_dtype == "fp16" else {}),
        "nodes_to_exclude": list(variant.keep_nodes),
        "op_types_to_exclude": list(variant.keep_op_types),
        "op_types_to_quantize": list(variant.quantize_op_types) or "modelopt default",
        **worker_parameters(reply),
    }


def _onnxruntime_qdq(model_path: Path, original: onnx.ModelProto, kept: list[str], variant: VariantSpec,
                     inputs: list[TensorSpec],
                     calibration: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """int8-cpu's tool: ONNX Runtime ``quantize_static`` in QDQ format, u8 activations, s8 weights."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {
        "max": CalibrationMethod.MinMax,
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with work_folder("int8cpu") as folder:
        work_output = Path(folder) / "model.int8.onnx"
        try:
            quantize_static(
                str(model_path),
                str(work_output),
                make_reader(calibration, inputs),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=variant.per_channel,
                # 7-bit weights: without VNNI (AVX2 only) ONNX Runtime's u8s8 kernels sum u8 x s8 pairs into
                # int16 and saturate; with weights in [-64, 63] no pair overflows, so the integer results are
                # exact on every x86 CPU and a verdict made on the build machine holds on the serving one.
                reduce_range=True,
                op_types_to_quantize=list(variant.quantize_op_types) or None,
                nodes_to_exclude=kept or None,
                calibrate_method=methods[variant.calibration_method],
                calibration_providers=["CPUExecutionProvider"],
                extra_options={
                    "ActivationSymmetric": False,
                    "WeightSymmetric": True,
                    "CalibTensorRangeSymmetric": False,
                    **({"CalibPercentile": PERCENTILE} if variant.calibration_method == "percentile" else {}),
                },
            )
        except (ValueError, RuntimeError, KeyError, IndexError) as error:
            raise ConversionError(f"int8-cpu: ONNX Runtime quantization failed: {type(error).__name__}: {error}") from error
        quantized = onnx.load(str(work_output))
    return quantized, {
        "tool": "onnxruntime.quantization.quantize_static",
        "quant_format": "QDQ",
        "activation_type": "QUInt8",
        "weight_type": "QInt8",
        "reduce_range": True,
        "per_channel": variant.per_channel,
        "op_types_to_quantize": list(variant.quantize_op_types) or "onnxruntime default",
        "calibration_method": variant.calibration_method,
        **({"percentile": PERCENTILE} if variant.calibration_method == "percentile" else {}),
        "calibration_samples": sample_count(calibration),
        "nodes_to_exclude": kept,
    }


def _percentile_cache(model_path: Path, reader: Any, cache_path: Path, folder: Path) -> None:
    """Activation ranges at the PERCENTILE-th percentile of |x|, written as a TensorRT
    calibration cache (``name: big-endian float32 scale`` per line) for ModelOpt."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(
        str(model_path),
        augmented_model_path=str(folder / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Percentile,
        providers=["CPUExecutionProvider"],
        extra_options={"symmetric": True, "percentile": PERCENTILE},
    )
    calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    lines = ["TRT-10000-EntropyCalibration2"]
    for name, data in ranges.items():
        amax = max(float(np.abs(np.asarray(v, dtype=np.float64)).max()) for v in data.range_value)
        scale = amax / 127.0 if amax > 0 else 1.0
        lines.append(f"{name}: {struct.pack('!f', scale).hex()}")
    cache_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
