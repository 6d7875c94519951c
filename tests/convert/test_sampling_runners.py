"""Seeded sample inputs, self-check sizes, and the runners' common interface."""
from __future__ import annotations

import numpy as np
import pytest

from hepdeploy.backend.base import Runner
from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
from hepdeploy.backend.pytorch import TorchModuleRunner
from hepdeploy.backend.sources import artifact_runner, source_runner
from hepdeploy.backend.trt import TensorRTEngineRunner
from hepdeploy.errors import DataError, DependencyMissingError, SpecError
from hepdeploy.sampling import sample_inputs, self_check_sizes, trace_sizes
from hepdeploy.spec import TensorSpec, spec_from_dict


def _spec(**extra):
    data = {
        "name": "m", "source": {"framework": "onnx", "path": "m.onnx"},
        "inputs": [{"name": "hits", "shape": ["n_hits", 3]},
                   {"name": "edges", "dtype": "int64", "shape": [2, "n_edges"], "index_of": "n_hits"},
                   {"name": "x", "shape": ["batch", "n_particles", 4], "low": -2.0, "high": 5.0}],
        "outputs": [{"name": "y", "shape": ["batch", 1]}],
    }
    data.update(extra)
    return spec_from_dict(data)


def test_sample_inputs_are_seeded_typed_and_in_range():
    spec = _spec()
    sizes = {"n_hits": 7, "n_edges": 30, "batch": 4, "n_particles": 9}
    a = sample_inputs(spec.inputs, sizes, seed=5)
    b = sample_inputs(spec.inputs, sizes, seed=5)
    c = sample_inputs(spec.inputs, sizes, seed=6)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["hits"], c["hits"])
    assert a["hits"].shape == (7, 3) and a["hits"].dtype == np.float32
    assert a["edges"].shape == (2, 30) and a["edges"].dtype == np.int64
    assert a["edges"].min() >= 0 and a["edges"].max() < 7
    assert a["x"].shape == (4, 9, 4) and a["x"].min() >= -2.0 and a["x"].max() <= 5.0


def test_sample_inputs_missing_size_is_a_spec_error():
    with pytest.raises(SpecError, match="n_hits"):
        sample_inputs([TensorSpec(name="a", shape=["n_hits"])], {}, 0)


def test_self_check_sizes_cover_every_dim_at_two_sizes():
    spec = _spec()
    combos = self_check_sizes(spec)
    for dim in ("n_hits", "n_edges", "n_particles"):
        values = {c[dim] for c in combos}
        assert len(values) >= 2 and min(values) >= 2
    assert {c["batch"] for c in combos} == {1, 64}


def test_self_check_sizes_respect_the_specs_maximum():
    spec = _spec(dims={"batch": {"min": 1, "opt": 8, "max": 16}, "n_particles": {"min": 3, "opt": 5, "max": 6}})
    combos = self_check_sizes(spec)
    assert {c["batch"] for c in combos} == {1, 16}
    assert {c["n_particles"] for c in combos} <= {3, 4, 5, 6} and len({c["n_particles"] for c in combos}) == 2


def test_trace_sizes_are_at_least_two_and_distinct():
    sizes = trace_sizes(_spec())
    assert set(sizes) == {"n_hits", "n_edges", "batch", "n_particles"}
    assert min(sizes.values()) >= 2 and len(set(sizes.values())) == len(sizes)


@pytest.fixture(scope="module")
def jet_onnx(torch_sources):
    return torch_sources["jet.onnx"]


def test_onnxruntime_runner_from_path_bytes_and_proto(jet_onnx):
    import onnx

    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    runners = [OnnxRuntimeRunner(jet_onnx), OnnxRuntimeRunner(jet_onnx.read_bytes()),
               OnnxRuntimeRunner(onnx.load(str(jet_onnx)))]
    outs = [r.run({"features": x})["scores"] for r in runners]
    assert isinstance(runners[0], Runner)
    assert outs[0].shape == (5, 5)
    np.testing.assert_allclose(outs[0].sum(axis=1), 1.0, rtol=1e-5)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_onnxruntime_runner_reports_the_providers_that_really_run(jet_onnx):
    import onnxruntime

    runner = OnnxRuntimeRunner(jet_onnx, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert "CPUExecutionProvider" in runner.providers_used
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "CUDAExecutionProvider" not in runner.providers_used


def test_onnxruntime_runner_exposes_intermediate_tensors(jet_onnx):
    import onnx

    model = onnx.load(str(jet_onnx))
    relu = next(n for n in model.graph.node if n.op_type == "Relu").output[0]
    runner = OnnxRuntimeRunner(jet_onnx, output_names=[relu, "scores"])
    out = runner.run({"features": np.ones((2, 16), np.float32)})
    assert out[relu].shape == (2, 8) and (out[relu] >= 0).all()
    assert out["scores"].shape == (2, 5)
    with pytest.raises(Exception, match="no tensor named"):
        OnnxRuntimeRunner(jet_onnx, output_names=["does_not_exist"])


def test_onnxruntime_runner_missing_input_is_a_data_error(jet_onnx):
    with pytest.raises(DataError, match="features"):
        OnnxRuntimeRunner(jet_onnx).run({"x": np.ones((1, 16), np.float32)})


def test_run_chunked_matches_one_run(jet_onnx):
    runner = OnnxRuntimeRunner(jet_onnx)
    x = np.random.default_rng(1).standard_normal((103, 16)).astype(np.float32)
    whole = runner.run({"features": x})["scores"]
    chunked = runner.run_chunked({"features": x}, chunk_size=10)["scores"]
    np.testing.assert_array_equal(whole, chunked)


def test_torch_module_runner_checks_the_output_count():
    import torch

    runner = TorchModuleRunner(torch.nn.Linear(3, 2), ["x"], ["a", "b"])
    with pytest.raises(SpecError, match="returns 1 output"):
        runner.run({"x": np.ones((2, 3), np.float32)})


def test_tensorrt_runner_says_what_is_missing(tmp_path):
    try:
        import tensorrt  # noqa: F401
        import torch

        if torch.cuda.is_available():
            pytest.skip("TensorRT and a GPU are present; the gpu-marked tests cover the runner")
    except (ImportError, OSError):
        pass
    with pytest.raises(DependencyMissingError, match="TensorRT|CUDA"):
        TensorRTEngineRunner(tmp_path / "model.plan")


def test_self_check_sizes_of_a_static_model_is_one_run():
    spec = spec_from_dict({"name": "m", "source": {"framework": "onnx", "path": "m.onnx"},
                           "inputs": [{"name": "x", "shape": [4, 16]}], "outputs": [{"name": "y", "shape": [4, 1]}]})
    assert self_check_sizes(spec) == [{}]
    assert trace_sizes(spec) == {}


def test_source_runner_translates_an_onnx_sources_own_names(jet_onnx):
    spec = spec_from_dict({"name": "jet", "source": {"framework": "onnx", "path": str(jet_onnx)},
                           "inputs": [{"name": "input_1", "shape": ["batch", 16]}],
                           "outputs": [{"name": "probs", "shape": ["batch", 5]}]})
    x = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    out = source_runner(spec).run({"input_1": x})
    np.testing.assert_array_equal(out["probs"], OnnxRuntimeRunner(jet_onnx).run({"features": x})["scores"])


def test_artifact_runner_opens_onnx_and_refuses_other_files(jet_onnx, tmp_path):
    from hepdeploy.errors import ModelLoadError

    assert artifact_runner(jet_onnx).providers_used == ["CPUExecutionProvider"]
    with pytest.raises(ModelLoadError, match="not a deployable artifact"):
        artifact_runner(tmp_path / "model.keras")


def test_a_session_in_a_child_process_runs_a_good_model_and_reports_a_refused_one(jet_onnx, tmp_path):
    from hepdeploy.backend.onnxrt import check_in_child
    from hepdeploy.errors import ModelLoadError

    check_in_child(jet_onnx, {"features": np.ones((3, 16), np.float32)}, where="jet")  # no error: it ran
    with pytest.raises(ModelLoadError, match=r"jet: ONNX Runtime cannot load or run the model: .*features"):
        check_in_child(jet_onnx, {"features": np.ones((3, 7), np.float32)}, where="jet")  # wrong width
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="broken: ONNX Runtime cannot load"):
        check_in_child(broken, where="broken")
