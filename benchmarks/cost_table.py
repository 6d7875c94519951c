"""Measure the CPU row of the precision cost table (``hepdeploy/optimize/cost.py``) on this machine.

Times single-node ONNX graphs in ONNX Runtime on one thread, FP32 and INT8 (QDQ, u8 activations, s8
per-channel weights: what int8-cpu makes) at several sizes, and fits, by least squares:

* FP32 Gemm:  t = c_mac32 * MACs + c_io32 * (input + output elements) + c_node
* INT8 Gemm (DQ -> Gemm -> Q, fused by ONNX Runtime into one integer kernel): the same with c_mac8, c_io8
* QuantizeLinear / DequantizeLinear / Relu alone: t = c * elements + c_node

(non-negative least squares on relative error) and prints every coefficient in units of one FP32 MAC
(c_mac32 = 1), the form the table keeps. Run by
hand (``.venv/bin/python benchmarks/cost_table.py``), on an idle machine; the table is a fixed record
of one run, so that a search ranks mixes the same way on every machine and under any load.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SIZES = [(256, 16, 64), (1024, 64, 32), (4096, 47, 200), (4096, 200, 100), (16000, 47, 200), (16000, 100, 50),
         (16000, 200, 100), (2048, 256, 256), (512, 32, 32), (16000, 10, 5)]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _time(session: ort.InferenceSession, feed: dict[str, np.ndarray], seconds: float) -> float:
    session.run(None, feed)
    times = []
    began = time.perf_counter()
    while len(times) < 7 or (time.perf_counter() - began < seconds and len(times) < 2000):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _model(nodes: list, inputs: list, outputs: list, inits: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _gemm(b: int, k: int, n: int, int8: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT if not int8 else TensorProto.UINT8, [b, n])
    bias = numpy_helper.from_array(rng.normal(size=n).astype(np.float32), "bias")
    if not int8:
        w = numpy_helper.from_array(rng.normal(size=(k, n)).astype(np.float32), "w")
        return _model([helper.make_node("Gemm", ["x", "w", "bias"], ["y"])], [x], [y], [w, bias])
    xq = helper.make_tensor_value_info("xq", TensorProto.UINT8, [b, k])
    inits = [numpy_helper.from_array(rng.integers(-127, 127, (k, n)).astype(np.int8), "wq"),
             numpy_helper.from_array(np.full(n, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(n, np.int8), "wz"),
             numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.uint8), "xz"),
             numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
             numpy_helper.from_array(np.array(0, np.uint8), "yz"), bias]
    nodes = [helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xf"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wf"], axis=1),
             helper.make_node("Gemm", ["xf", "wf", "bias"], ["yf"]),
             helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"])]
    return _model(nodes, [xq], [y], inits)


def _elementwise(op: str, b: int, n: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    scale = numpy_helper.from_array(np.array(0.02, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.uint8), "z")
    if op == "DequantizeLinear":
        x = helper.make_tensor_value_info("x", TensorProto.UINT8, [b, n])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, n])
        feed = rng.integers(0, 255, (b, n)).astype(np.uint8)
        node = helper.make_node(op, ["x", "s", "z"], ["y"])
        return _model([node], [x], [y], [scale, zero]), {"x": feed}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, n])
    out_type = TensorProto.UINT8 if op == "QuantizeLinear" else TensorProto.FLOAT
    y = helper.make_tensor_value_info("y", out_type, [b, n])
    inputs, inits = (["x", "s", "z"], [scale, zero]) if op == "QuantizeLinear" else (["x"], [])
    node = helper.make_node(op, inputs, ["y"])
    return _model([node], [x], [y], inits), {"x": rng.normal(size=(b, n)).astype(np.float32)}


def _fit(columns: list[list[float]], ts: list[float]) -> list[float]:
    """Non-negative coefficients of t = sum(c_i x_i), fitted on relative error."""
    from scipy.optimize import nnls

    x = np.asarray(columns, float).T
    t = np.asarray(ts, float)
    coefficients, _ = nnls(x / t[:, None], np.ones_like(t))
    return [float(c) for c in coefficients]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="timing per graph")
    parser.add_argument("--out", type=Path, help="write every measurement and the table as JSON here")
    args = parser.parse_args()
    rows = []
    fits = {}
    for int8 in (False, True):
        macs, ios, times = [], [], []
        for b, k, n in SIZES:
            model = _gemm(b, k, n, int8)
            feed = (np.random.default_rng(2).integers(0, 255, (b, k)).astype(np.uint8) if int8 else
                    np.random.default_rng(2).normal(size=(b, k)).astype(np.float32))
            t = _time(_session(model), {"xq" if int8 else "x": feed}, args.seconds)
            macs.append(b * k * n)
            ios.append(b * (k + n))
            times.append(t)
            rows.append({"gemm": "int8" if int8 else "fp32", "b": b, "k": k, "n": n, "us": round(t * 1e6, 2)})
        mac, io, node = _fit([macs, ios, [1.0] * len(times)], times)
        fits["int8" if int8 else "fp32"] = {"mac_ns": mac * 1e9, "io_ns": io * 1e9, "node_us": node * 1e6}
    element = {}
    for op in ("QuantizeLinear", "DequantizeLinear", "Relu"):
        counts, times = [], []
        for b, n in ((1024, 64), (4096, 200), (16000, 100), (16000, 200), (65536, 47)):
            model, feed = _elementwise(op, b, n)
            times.append(_time(_session(model), feed, args.seconds))
            counts.append(b * n)
        per, node = _fit([counts, [1.0] * len(times)], times)
        element[op] = {"per_element_ns": per * 1e9, "node_us": node * 1e6}
    unit = fits["fp32"]["mac_ns"]
    nodes_us = [f["node_us"] for f in fits.values()] + [e["node_us"] for e in element.values()]
    table = {
        "mac": {"fp32": 1.0, "int8": round(fits["int8"]["mac_ns"] / unit, 3)},
        "io": {"fp32": round(fits["fp32"]["io_ns"] / unit, 1), "int8": round(fits["int8"]["io_ns"] / unit, 1)},
        "quantize": round(element["QuantizeLinear"]["per_element_ns"] / unit, 1),
        "dequantize": round(element["DequantizeLinear"]["per_element_ns"] / unit, 1),
        "element": round(element["Relu"]["per_element_ns"] / unit, 1),
        "node": round(statistics.median(nodes_us) * 1e3 / unit, -3),
    }
    result = {"measurements": rows, "gemm_fits": fits, "elementwise": element, "fp32_mac_ns": unit,
              "table_in_fp32_macs": table}
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
