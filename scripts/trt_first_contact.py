"""First contact with TensorRT on a new GPU: the shortest run that shows what the review could not.

1. builds a 512x512 MatMul plan through hepdeploy (strongly typed, TF32 cleared) and measures its
   error against float64: FP32 is about 1e-6 of the output's scale, TF32 about 1e-3;
2. runs 4x the profile's max batch through the runner's ``run_chunked``, asking for chunks larger
   than the profile allows: the runner must cap each chunk by the engine's own profile;
3. closes the runner and checks that its device buffers and stream are released (device memory
   comes back, the stream handle is gone).

Prints "skipped: no GPU / no TensorRT" and exits 0 where either is missing; exits 1 when a check
fails. ``scripts/gpu_check.sh`` runs it first.

    python scripts/trt_first_contact.py [WORK_DIR]        (default: a temporary folder)
"""
from __future__ import annotations

import ctypes
import sys
import tempfile
from pathlib import Path

import numpy as np

from hepdeploy.artifacts import read_engine_sidecar
from hepdeploy.backend.cudart import cudart_candidates
from hepdeploy.backend.trt import TensorRTEngineRunner, tensorrt_unavailable
from hepdeploy.convert import convert_from_spec
from hepdeploy.optimize import optimize_artifact
from hepdeploy.plan_compat import plan_metadata_of
from hepdeploy.spec import spec_from_dict

WIDTH = 512
MAX_BATCH = 2048
# FP32 matrix products of width 512 stay near 1e-6 of the output's scale; TF32 ones near 1e-3.
FP32_RELATIVE_ERROR = 1e-4


def say(line: str) -> None:
    print(f"trt_first_contact: {line}", flush=True)


def matmul_plan(folder: Path, weight: np.ndarray) -> Path:
    """The ONNX graph y = x @ weight, converted and built into a plan by hepdeploy."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul512",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [numpy_helper.from_array(weight.astype(np.float32), "w")])
    source = folder / "matmul512.source.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every ONNX Runtime the checks use can read
    onnx.save(model, str(source))
    spec = spec_from_dict({
        "name": "matmul512", "source": {"framework": "onnx", "path": str(source)},
        "inputs": [{"name": "x", "shape": ["batch", WIDTH]}], "outputs": [{"name": "y", "shape": ["batch", WIDTH]}],
        "dims": {"batch": {"min": 1, "opt": 256, "max": MAX_BATCH}},
    })
    artifact = convert_from_spec(spec, folder / "matmul512.onnx")
    plan = folder / "matmul512.plan"
    result = optimize_artifact(artifact.path, "tensorrt", plan, spec=spec, require_gpu=True)
    say(result.line())
    metadata = plan_metadata_of(read_engine_sidecar(plan))
    if metadata is not None:
        say(f"TensorRT {metadata.tensorrt_version} (from {metadata.tensorrt_version_source}), "
            f"builder flags {metadata.builder_flags}, profile {metadata.profiles}")
    return plan


def free_device_bytes() -> int:
    """cudaMemGetInfo's free bytes on the current device, from the runtime the runner uses."""
    for name in cudart_candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        if lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) == 0:
            return int(free.value)
    return -1


def check_error(plan: Path, x: np.ndarray, weight: np.ndarray) -> list[str]:
    with TensorRTEngineRunner(plan) as runner:
        got = runner.run({"x": x[:256]})["y"].astype(np.float64)
    want = x[:256].astype(np.float64) @ weight.astype(np.float64)
    relative = float(np.abs(got - want).max() / np.abs(want).max())
    say(f"512x512 MatMul error against float64: {relative:.2e} of the output's scale "
        f"(FP32 ~1e-6, TF32 ~1e-3)")
    if relative > FP32_RELATIVE_ERROR:
        return [f"the FP32 plan's error {relative:.2e} exceeds {FP32_RELATIVE_ERROR:.0e}: TF32 is on?"]
    return []


def check_chunks_and_release(plan: Path, x: np.ndarray, weight: np.ndarray) -> list[str]:
    metadata = plan_metadata_of(read_engine_sidecar(plan))
    top = metadata.max_batch() if metadata is not None else None
    if top is None:
        return [f"{plan}: its sidecar records no profile max batch"]
    rows = np.concatenate([x] * (4 * top // len(x) + 1))[:4 * top]
    problems: list[str] = []
    before = free_device_bytes()
    runner = TensorRTEngineRunner(plan)
    try:
        got = runner.run_chunked({"x": rows}, chunk_size=4 * top)["y"]  # more than the profile: must be capped
        if got.shape != (4 * top, WIDTH) or not np.allclose(got[:len(x)], x @ weight, rtol=1e-3, atol=1e-3):
            problems.append(f"run_chunked over {4 * top} rows returned {got.shape} or wrong values")
        else:
            say(f"run_chunked ran {4 * top} rows, 4x the profile's max batch {top}")
    except Exception as error:  # the check reports every failure and goes on to the release check
        problems.append(f"run_chunked over 4x the profile's max batch {top} failed: {error}")
    held = free_device_bytes()
    runner.close()
    after = free_device_bytes()
    say(f"device memory free: {before >> 20} MiB before, {held >> 20} MiB open, {after >> 20} MiB after close")
    # Two I/O buffers of one profile-sized chunk were held (where the run got that far): most of them must
    # come back. What the first run loads for good (kernels, cuBLAS workspace) is not asked back.
    buffers = 2 * top * WIDTH * 4
    if min(before, held, after) >= 0 and before - held >= buffers // 2 and after - held < buffers // 2:
        problems.append(f"closing the runner released {(after - held) >> 20} MiB, less than half of its "
                        f"{buffers >> 20} MiB of buffers")
    buffers_held, stream_held = runner.cuda.held()
    if buffers_held or stream_held:
        problems.append(f"after close the runner still holds {buffers_held} device buffer(s)"
                        f"{' and its CUDA stream' if stream_held else ''}")
    return problems


def main(argv: list[str]) -> int:
    reason = tensorrt_unavailable()
    if reason is not None:
        say(f"skipped: no GPU / no TensorRT ({reason})")
        return 0
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((WIDTH, WIDTH)).astype(np.float32)
    x = rng.standard_normal((256, WIDTH)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="trt-first-contact-") as scratch:
        folder = Path(argv[0]) if argv else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        plan = matmul_plan(folder, weight)
        problems = check_error(plan, x, weight) + check_chunks_and_release(plan, x, weight)
    for problem in problems:
        say(f"FAILED: {problem}")
    say("all checks passed" if not problems else f"{len(problems)} check(s) failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
