"""The TensorRT engine runner and the CUDA runtime wrapper, run for real against the stand-ins of
``trt_fakes`` (TensorRT's runtime objects and libcudart on host memory): chunks inside the engine's
profile, rank-0 inputs, outputs sized by the data, return values TensorRT and CUDA fail with, and
the release of device memory and streams (issue 28, defects 1, 3, 4, 5, 6 and 8)."""
from __future__ import annotations

import gc
import sys
from pathlib import Path

import numpy as np
import pytest

from hepdeploy.backend.cudart import CudaRuntime, cuda_device
from hepdeploy.backend.trt import PlanLoader, TensorRTEngineRunner
from hepdeploy.errors import DataError, DependencyMissingError, ModelLoadError
from tests.backend.trt_fakes import DataType, FakeCudart, FakeDriver, FakePlan, FakeTensor, fake_tensorrt


def mlp_plan(max_batch: int = 256, **options: object) -> FakePlan:
    """x [batch, 4] -> y [batch, 1] = 2 * sum(x), batch 1..max_batch (ParticleNet's and DeepJet's profiles stop at 256)."""
    return FakePlan(
        tensors=[FakeTensor("x", "INPUT", (-1, 4), profile=((1, 4), (16, 4), (max_batch, 4))),
                 FakeTensor("y", "OUTPUT", (-1, 1), shape_of=lambda s: (s["x"][0], 1))],
        compute=lambda feed: {"y": 2 * feed["x"].sum(axis=1, keepdims=True)},
        **options,  # type: ignore[arg-type]
    )


def graph_plan() -> FakePlan:
    """A whole event per call, as the interaction network: hits and edges, profile maxima 20000 and 50000."""
    return FakePlan(
        tensors=[FakeTensor("hits", "INPUT", (-1, 3), profile=((1, 3), (5000, 3), (20000, 3))),
                 FakeTensor("edges", "INPUT", (2, -1), dtype=DataType.INT64, profile=((2, 1), (2, 9000), (2, 50000))),
                 FakeTensor("weight", "OUTPUT", (-1,), shape_of=lambda s: (s["edges"][1],))],
        compute=lambda feed: {"weight": feed["hits"][feed["edges"][0], 0]},
    )


@pytest.fixture()
def cudart() -> FakeCudart:
    return FakeCudart(devices=2)


def open_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart, plan: FakePlan,
                device: int = 0) -> TensorRTEngineRunner:
    path = tmp_path / "model.plan"
    path.write_bytes(b"plan:model")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt({b"plan:model": plan}, cudart))
    return TensorRTEngineRunner(path, device, cudart=cudart)


# -- defect 1: every chunk inside the engine's profile ----------------------------------------------


def test_chunks_are_capped_by_the_engines_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  cudart: FakeCudart) -> None:
    # The runner has bare input names (no fixed batch), so run_chunked used 4096 rows: setInputShape refused it.
    x = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
    with open_runner(tmp_path, monkeypatch, cudart, mlp_plan(max_batch=256)) as runner:
        y = runner.run_chunked({"x": x}, 4096)["y"]
        assert runner.context.runs == 4  # 256 + 256 + 256 + 232 rows
        assert runner.profile_rows() == 256
    np.testing.assert_allclose(y, 2 * x.sum(axis=1, keepdims=True), rtol=1e-6)


def test_an_event_bigger_than_the_profile_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      cudart: FakeCudart) -> None:
    # A whole graph cannot be cut in chunks: 25,000 hits against a profile maximum of 20,000 is said in one line.
    rng = np.random.default_rng(1)
    hits = rng.normal(size=(25000, 3)).astype(np.float32)
    edges = rng.integers(0, 25000, size=(2, 47000))
    with open_runner(tmp_path, monkeypatch, cudart, graph_plan()) as runner:
        with pytest.raises(DataError) as error:
            runner.run_chunked({"hits": hits, "edges": edges}, 4096)
        message = str(error.value)
        assert "\n" not in message and "'hits' shape [25000, 3]" in message and "max [20000, 3]" in message
        assert "dim 0 is 25000" in message  # TensorRT's own words, from its logger
        # An event inside the profile runs whole, its int64 edges and all.
        small = runner.run_chunked({"hits": hits[:20000], "edges": edges[:, :100] % 20000}, 4096)["weight"]
    np.testing.assert_array_equal(small, hits[:20000][edges[0, :100] % 20000, 0])


# -- defect 3: rank-0 inputs keep their shape --------------------------------------------------------


def test_a_rank_0_input_keeps_its_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart) -> None:
    # np.ascontiguousarray made the scalar shape (1,), which setInputShape refuses on a rank-0 tensor.
    plan = FakePlan(
        tensors=[FakeTensor("x", "INPUT", (-1, 4), profile=((1, 4), (8, 4), (64, 4))),
                 FakeTensor("scale", "INPUT", (), profile=((), (), ())),
                 FakeTensor("y", "OUTPUT", (-1, 4), shape_of=lambda s: s["x"])],
        compute=lambda feed: {"y": feed["x"] * feed["scale"]},
    )
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with open_runner(tmp_path, monkeypatch, cudart, plan) as runner:
        y = runner.run({"x": x, "scale": np.float32(2.5)})["y"]
    np.testing.assert_array_equal(y, 2.5 * x)


# -- defect 4: outputs whose shape the data decides --------------------------------------------------


def test_an_output_sized_by_the_data_comes_through_an_output_allocator(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart) -> None:
    # NonZero: the runner raised on the -1 dim; TensorRT sizes it through an IOutputAllocator.
    plan = FakePlan(
        tensors=[FakeTensor("x", "INPUT", (-1,), profile=((1,), (8,), (64,))),
                 FakeTensor("index", "OUTPUT", (-1,), dtype=DataType.INT64)],
        compute=lambda feed: {"index": np.nonzero(feed["x"] > 0)[0]},
    )
    with open_runner(tmp_path, monkeypatch, cudart, plan) as runner:
        for x in ([1, -1, 2, 0], [1.0] * 40, [-1, 3]):  # grows the buffer, then reuses it
            got = runner.run({"x": np.array(x, dtype=np.float32)})["index"]
            np.testing.assert_array_equal(got, np.nonzero(np.array(x) > 0)[0])
        assert got.dtype == np.int64
    assert cudart.live() == (0, 0)


# -- defect 5: return values TensorRT fails with ----------------------------------------------------


def test_no_execution_context_is_a_load_error_in_tensorrts_words(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart) -> None:
    # create_execution_context() returns None where the largest profile's memory cannot be had.
    with pytest.raises(ModelLoadError, match=r"cannot create an execution context.*OutOfMemory"):
        open_runner(tmp_path, monkeypatch, cudart, mlp_plan(context_memory=False))
    assert cudart.live() == (0, 0)  # the stream made for it is gone too


def test_a_refused_tensor_address_is_said_where_it_happens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart) -> None:
    with open_runner(tmp_path, monkeypatch, cudart, mlp_plan(refused_addresses={"x"})) as runner:
        with pytest.raises(DataError, match=r"refused the address of tensor 'x' \(TensorRT: .*setTensorAddress"):
            runner.run({"x": np.ones((2, 4), np.float32)})


def test_an_unknown_plan_says_what_tensorrt_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  cudart: FakeCudart) -> None:
    path = tmp_path / "other.plan"
    path.write_bytes(b"plan:from another TensorRT")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt({}, cudart))
    with pytest.raises(ModelLoadError, match=r"cannot deserialize this engine .*\(TensorRT: .*magicTag"):
        TensorRTEngineRunner(path, cudart=cudart)
    assert cudart.live() == (0, 0)


# -- defect 6: CUDA's own words in every CUDA error --------------------------------------------------


def test_cuda_errors_carry_cudas_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart) -> None:
    # A driver older than the runtime used to read "no CUDA device 0 (the CUDA runtime sees 0)".
    old_driver = FakeCudart()
    old_driver.fail["cudaGetDeviceCount"] = 35
    with pytest.raises(DependencyMissingError, match="driver version is insufficient for CUDA runtime version"):
        CudaRuntime(0, old_driver)
    with pytest.raises(DependencyMissingError, match=r"no CUDA device 3 \(the CUDA runtime sees 2\)"):
        CudaRuntime(3, cudart)
    with open_runner(tmp_path, monkeypatch, cudart, mlp_plan()) as runner:
        cudart.fail["cudaMalloc"] = 2
        with pytest.raises(DataError, match=r"cudaMalloc failed on device 0: out of memory \(cudaError 2\)"):
            runner.run({"x": np.ones((2, 4), np.float32)})
        del cudart.fail["cudaMalloc"]


# -- defect 8: lifetime -----------------------------------------------------------------------------


def test_an_unclosed_runner_releases_its_memory_and_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            cudart: FakeCudart) -> None:
    runner = open_runner(tmp_path, monkeypatch, cudart, mlp_plan())
    runner.run({"x": np.ones((3, 4), np.float32)})
    assert cudart.live() == (2, 1) and runner.cuda.held() == (2, True)  # x's and y's buffers, the stream
    del runner
    gc.collect()
    assert cudart.live() == (0, 0)


def test_close_frees_on_its_own_device_and_checks_what_cuda_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart) -> None:
    runner = open_runner(tmp_path, monkeypatch, cudart, mlp_plan(), device=1)
    runner.run({"x": np.ones((3, 4), np.float32)})
    cudart.cudaSetDevice(0)  # something else in the thread made another device current
    runner.close()
    assert runner.cuda.held() == (0, False)
    assert cudart.frees == [(1, 1), (1, 1)] and cudart.destroys == [(1, 1)] and cudart.live() == (0, 0)
    cuda = CudaRuntime(0, cudart)
    cuda.malloc(16)
    cudart.fail["cudaFree"] = 700
    with pytest.raises(DataError, match=r"cudaFree: an illegal memory access was encountered"):
        cuda.close()


def test_a_plan_that_throws_while_deserializing_still_releases_cuda(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart) -> None:
    plan = mlp_plan(raises=RuntimeError("std::exception: deserialization failed"))
    with pytest.raises(ModelLoadError, match="cannot deserialize this engine .*RuntimeError"):
        open_runner(tmp_path, monkeypatch, cudart, plan)
    assert cudart.live() == (0, 0)


def test_a_runtime_that_cannot_start_releases_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    cudart: FakeCudart) -> None:
    path = tmp_path / "model.plan"
    path.write_bytes(b"plan:model")
    trt = fake_tensorrt({b"plan:model": mlp_plan()}, cudart)

    class NoRuntime(trt.Runtime):  # type: ignore[name-defined,misc]
        def __init__(self, logger: object) -> None:  # as the bindings behave where CUDA cannot start
            raise TypeError("pybind11::init(): factory function returned nullptr")

    trt.Runtime = NoRuntime
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(DependencyMissingError, match="TensorRT runtime cannot start on device 0: .*nullptr"):
        TensorRTEngineRunner(path, cudart=cudart)
    assert cudart.live() == (0, 0)


def test_an_unreadable_compute_capability_is_an_error_not_0_0() -> None:
    driver = FakeDriver(devices=1, capability=(9, 0))
    assert cuda_device(0, driver).compute_capability == "9.0"  # type: ignore[union-attr]
    driver.fail["cuDeviceGetAttribute"] = 101
    with pytest.raises(DependencyMissingError, match=r"cuDeviceGetAttribute.*failed on device 0: invalid device"):
        cuda_device(0, driver)
    driver = FakeDriver()
    driver.fail["cuDeviceGetName"] = 1
    with pytest.raises(DependencyMissingError, match="cuDeviceGetName"):
        cuda_device(0, driver)


def test_the_plan_loader_loads_on_the_device_asked_for(monkeypatch: pytest.MonkeyPatch, cudart: FakeCudart) -> None:
    plan = mlp_plan()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt({b"plan:model": plan}, cudart))
    loader = PlanLoader.here(1, driver=FakeDriver(devices=2), cudart=cudart)
    assert loader.reason is None and loader.device is not None and loader.device.index == 1
    cudart.cudaSetDevice(0)
    assert loader.io_names(b"plan:model", None) == {"x", "y"}
    assert plan.loaded_on == [1]
    assert PlanLoader.here(2, driver=FakeDriver(devices=2), cudart=cudart).reason == "no CUDA device"
