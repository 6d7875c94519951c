"""The fp16 variant: mixed-precision conversion with NVIDIA ModelOpt AutoCast.

AutoCast (``modelopt.onnx.autocast.convert_to_mixed_precision``) is the documented
TensorRT 11 route to FP16 now that the builder's FP16 flag is gone: it rewrites the
graph itself, so a strongly typed TensorRT build and ONNX Runtime on a CPU compute the
same thing. It runs the model on reference data and keeps in FP32 every node whose
activations would overflow FP16 (``data_max``) or whose weights would (``init_max``),
plus deep reductions; graph inputs and outputs stay FP32 (``keep_io_types``). The user
can force more nodes (name regex) or op types to stay FP32.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hepdeploy.data import batch_size_for, calibration_feeds, sample_count
from hepdeploy.errors import BadInputError, ConversionError
from hepdeploy.graph_bounds import graph_dim_bounds, minimums
from hepdeploy.lifetime import work_folder
from hepdeploy.optimize.graph import FLOAT, check_batch, precision_summary
from hepdeploy.optimize.keep import expand_to_groups, nodes_matching
from hepdeploy.optimize.modelopt_worker import ModelOptWorker, run_job, worker_parameters
from hepdeploy.spec import ModelSpec, TensorSpec, VariantSpec

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("hepdeploy.optimize.fp16")


def check_node_patterns(model: onnx.ModelProto, patterns: list[str], what: str) -> None:
    """Refuse node-name patterns that match no node (a typo would silently do nothing)."""
    names = [node.name for node in model.graph.node]
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise BadInputError(f"{what} {pattern!r} is not a valid regular expression ({error})") from error
        if not any(regex.fullmatch(name) or regex.search(name) for name in names):
            raise BadInputError(f"{what} {pattern!r} matches no node of the model")


def check_op_types(op_types: list[str], what: str) -> None:
    import onnx

    for op_type in op_types:
        if not onnx.defs.has(op_type):
            raise BadInputError(f"{what} {op_type!r} is not an ONNX operator type")


# The first samples of the calibration data (or as many seeded samples) drive AutoCast's
# reference run; more adds time, not information.
REFERENCE_SAMPLES = 64


def make_fp16(
    prepared: Path,
    variant: VariantSpec,
    inputs: list[TensorSpec],
    calibration: dict[str, np.ndarray] | None,
    spec: ModelSpec | None,
    modelopt: ModelOptWorker | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The fp16 variant's maker (see :mod:`hepdeploy.variants`): AutoCast on calibration data, else on
    seeded samples from the tensor specs; in ``modelopt`` (a build's worker) when given."""
    if calibration is not None:
        # Fewer samples for big inputs: AutoCast keeps every activation of every run.
        n = min(batch_size_for(calibration, REFERENCE_SAMPLES, budget_bytes=8 << 20), sample_count(calibration))
        reference = {name: value[:n] for name, value in calibration.items()}
        source = "calibration data"
    else:
        reference = check_batch(inputs, spec, None, count=REFERENCE_SAMPLES, seed=spec.data.seed if spec else 0,
                                bounds=minimums(graph_dim_bounds(prepared)))
        if not all(t.has_batch_axis for t in inputs):
            reference = {name: value[None] for name, value in reference.items()}
        source = "random samples from the tensor specs"
    feeds = list(calibration_feeds(reference, inputs, batch_size=batch_size_for(reference, 16)))
    model, parameters = convert_fp16(prepared, feeds, variant.keep_nodes, variant.keep_op_types, modelopt)
    parameters["reference_data"] = source
    return model, parameters


def convert_fp16(
    model_path: Path,
    reference_feeds: list[dict[str, np.ndarray]],
    keep_nodes: list[str],
    keep_op_types: list[str],
    modelopt: ModelOptWorker | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """AutoCast ``model_path`` to FP16 driven by ``reference_feeds`` (one dict per run); FP32 I/O kept."""
    import onnx

    original = onnx.load(str(model_path))
    check_node_patterns(original, keep_nodes, "--keep-node")
    check_op_types(keep_op_types, "--keep-op")
    # A kept compute node keeps its whole layer (``optimize.keep``), handed over as exact names.
    kept = expand_to_groups(original, nodes_matching(original, keep_nodes, []))
    kept_patterns = [f"^{re.escape(name)}$" for name in kept]
    with work_folder("fp16") as folder:
        # A folder of .npz files, one model run each (AutoCast would split one file by
        # the model's static batch size, which is 1 for a dynamic batch).
        data_path = Path(folder) / "reference"
        data_path.mkdir()
        for k, feed in enumerate(reference_feeds):
            np.savez(data_path / f"batch_{k:05d}.npz", **feed)
        output = Path(folder) / "model.fp16.onnx"
        reply = run_job(
            {
                "step": "fp16",
                "kind": "fp16",
                "model": str(model_path),
                "output": str(output),
                "feeds": str(data_path),
                "kwargs": {
                    "low_precision_type": "fp16",
                    "nodes_to_exclude": kept_patterns or None,
                    "op_types_to_exclude": list(keep_op_types) or None,
                    "keep_io_types": True,
                    "providers": ["cpu"],
                },
            },
            modelopt,
        )
        converted = onnx.load(str(output))
    summary = precision_summary(converted)
    if summary.fp16_initializers == 0 and not _has_fp16_compute(converted):
        raise BadInputError(
            "fp16: AutoCast kept every node in FP32 (nothing could be converted); "
            "the model would only be an FP32 copy"
        )
    if not summary.io_is_fp32:
        raise ConversionError("fp16: AutoCast changed the type of a graph input or output")
    fp32_compute = _fp32_compute_nodes(converted)
    parameters = {
        "tool": "modelopt.onnx.autocast",
        "low_precision_type": "fp16",
        "keep_io_types": True,
        "keep_nodes": list(keep_nodes),
        "keep_op_types": list(keep_op_types),
        "reference_runs": len(reference_feeds),
        "nodes_kept_fp32": len(fp32_compute),
        "kept_fp32_examples": fp32_compute[:20],
        **summary.as_dict(),
        **worker_parameters(reply),
    }
    return converted, parameters


def _has_fp16_compute(model: onnx.ModelProto) -> bool:
    return any(
        node.op_type == "Cast" and any(a.name == "to" and a.i == 10 for a in node.attribute) for node in model.graph.node
    )


def _fp32_compute_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of compute nodes (not casts) whose first output is FP32 after conversion."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    skip = {"Cast", "Constant", "Shape", "Reshape", "Identity"}
    return [
        node.name for node in model.graph.node
        if node.op_type not in skip and node.output and types.get(node.output[0]) == FLOAT
    ]
