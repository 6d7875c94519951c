"""config.pbtxt through the schema: FACILE (batched), interaction network (no batch axis), twins, platforms."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb2

from hepdeploy.errors import RepositoryError, SpecError, UnsafeNameError
from hepdeploy.spec import TritonSpec
from hepdeploy.triton.config import (
    VersionFiles,
    build_model_config,
    config_to_pbtxt,
    parse_model_config,
    perf_analyzer_command,
    read_model_config,
)


def _roundtrip(config: pb2.ModelConfig) -> str:
    text = config_to_pbtxt(config)
    again = pb2.ModelConfig()
    text_format.Parse(text, again)
    assert again == config
    return text


def test_facile_gpu_config(models, facile_spec, facile_golden):
    config = build_model_config(models["facile"], facile_spec.triton, name="facile", warmup_inputs=facile_golden)
    text = _roundtrip(config)
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 160000
    assert list(config.input[0].dims) == [47]
    assert config.input[0].data_type == pb2.TYPE_FP32
    assert list(config.output[0].dims) == [1]
    assert list(config.dynamic_batching.preferred_batch_size) == [16000]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert [pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == ["KIND_GPU"]
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    warm = config.model_warmup[0]
    assert warm.batch_size == 1 and list(warm.inputs["input"].dims) == [47]
    assert warm.inputs["input"].input_data_file == "input"
    assert "max_batch_size: 160000" in text


def test_interaction_network_has_explicit_zero_batch(models, interaction_spec, interaction_golden):
    config = build_model_config(
        models["interaction"], interaction_spec.triton, name="interaction_network", warmup_inputs=interaction_golden
    )
    text = _roundtrip(config)
    assert config.max_batch_size == 0
    assert "max_batch_size: 0\n" in text  # text_format alone would omit it
    assert text.index("max_batch_size: 0") < text.index("input {")
    x, edge_index = config.input
    assert list(x.dims) == [-1, 3] and x.data_type == pb2.TYPE_FP32
    assert list(edge_index.dims) == [2, -1] and edge_index.data_type == pb2.TYPE_INT64
    assert list(config.output[0].dims) == [-1]
    assert not config.HasField("dynamic_batching")
    # warm-up dims are the golden sample's real sizes, with no batch axis taken off
    assert list(config.model_warmup[0].inputs["edge_index"].dims) == [2, 90]
    command = perf_analyzer_command(config)
    assert "--shape x:30,3" in command and "--shape edge_index:2,90" in command and " -b " not in command


def test_cpu_twin_config(models, facile_spec):
    config = build_model_config(models["facile"], facile_spec.triton, name="facile_cpu", kind="cpu")
    _roundtrip(config)
    assert [(pb2.ModelInstanceGroup.Kind.Name(g.kind), g.count) for g in config.instance_group] == [("KIND_CPU", 2)]
    # CMSSW's thread control: one intra-op and one inter-op thread per instance, sequential execution.
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    assert config.parameters["inter_op_thread_count"].string_value == "1"
    assert "execution_mode" not in config.parameters
    assert not config.HasField("optimization")  # no TensorRT accelerator on a CPU server
    threads = facile_spec.triton.model_copy(deep=True)
    threads.cpu_twin = threads.cpu_twin.model_copy(update={"count": None, "threads": 4})
    config = build_model_config(models["facile"], threads, name="facile_cpu", kind="cpu")
    assert [g.count for g in config.instance_group] == [4]  # instances = threads asked for
    settings = facile_spec.triton.model_copy(deep=True)
    settings.cpu_twin.inter_op_threads = 2
    config = build_model_config(models["facile"], settings, name="facile_cpu", kind="cpu")
    assert config.parameters["inter_op_thread_count"].string_value == "2"
    assert config.parameters["execution_mode"].string_value == "1"  # inter-op threads need parallel mode


def test_default_batching_from_batch_axis(models):
    config = build_model_config(models["facile"], TritonSpec(), name="facile")
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    config = build_model_config(models["interaction"], TritonSpec(), name="in")
    assert config.max_batch_size == 0


def test_max_batch_on_model_without_batch_axis_is_refused(models):
    with pytest.raises(SpecError, match="free batch axis"):
        build_model_config(models["interaction"], TritonSpec(max_batch_size=8), name="in")


def test_preferred_batch_above_max_is_refused(models):
    settings = TritonSpec(max_batch_size=100, dynamic_batching={"preferred_batch_size": [16000]})
    with pytest.raises(SpecError, match="preferred_batch_size"):
        build_model_config(models["facile"], settings, name="facile")


@pytest.mark.parametrize("bad", ["a/b", "..", "with space", "../up"])
def test_unsafe_model_names(models, bad):
    with pytest.raises(UnsafeNameError):
        build_model_config(models["facile"], TritonSpec(), name=bad)


def test_tensorrt_plan_with_compute_capabilities(facile_spec):
    config = build_model_config(
        facile_spec, facile_spec.triton, name="facile_trt", platform="tensorrt_plan",
        files=VersionFiles(cc_model_filenames={"8.0": "model_sm80.plan", "9.0": "model_sm90.plan"}),
    )
    _roundtrip(config)
    assert config.platform == "tensorrt_plan"
    assert dict(config.cc_model_filenames) == {"8.0": "model_sm80.plan", "9.0": "model_sm90.plan"}
    assert not config.HasField("optimization")  # the ORT accelerator block is for onnxruntime_onnx only


def test_libtorch_and_version_policies(facile_spec):
    for policy, field in (("all", "all"), ({"latest": 2}, "latest"), ({"specific": [1, 3]}, "specific")):
        settings = facile_spec.triton.model_copy(update={"version_policy": policy})
        config = build_model_config(facile_spec, settings, name="facile_pt", platform="pytorch_libtorch")
        _roundtrip(config)
        assert config.platform == "pytorch_libtorch"
        assert config.version_policy.WhichOneof("policy_choice") == field
    with pytest.raises(SpecError, match="version_policy"):
        build_model_config(facile_spec, facile_spec.triton.model_copy(update={"version_policy": {"oldest": 1}}),
                           name="x")


def test_one_dimensional_batched_tensor_uses_reshape(facile_spec):
    inputs = facile_spec.inputs
    outputs = [facile_spec.outputs[0].model_copy(update={"shape": ["batch"]})]
    config = build_model_config((inputs, outputs), facile_spec.triton, name="facile")
    assert list(config.output[0].dims) == [1] and config.output[0].HasField("reshape")
    assert list(config.output[0].reshape.shape) == []
    _roundtrip(config)


def test_warmup_rank_mismatch_is_refused(models, facile_spec):
    with pytest.raises(SpecError, match="rank"):
        build_model_config(models["facile"], facile_spec.triton, name="facile",
                           warmup_inputs={"input": np.zeros((47,), np.float32)})


def test_bad_pbtxt_is_reported_with_position(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "x"\nmax_batch_size: [oops\n')
    with pytest.raises(RepositoryError, match="config.pbtxt: not a valid model config: 2:"):
        read_model_config(path)
    with pytest.raises(RepositoryError):
        parse_model_config("input { nme: 'x' }")


def test_request_queue_without_batch_axis(models):
    # Triton accepts a dynamic batcher on a max_batch_size 0 model (a request queue), never preferred sizes.
    queue = TritonSpec(dynamic_batching={"max_queue_delay_microseconds": 50})
    config = build_model_config(models["interaction"], queue, name="in")
    assert config.max_batch_size == 0 and config.dynamic_batching.max_queue_delay_microseconds == 50
    _roundtrip(config)
    with pytest.raises(SpecError, match="preferred_batch_size"):
        build_model_config(models["interaction"], TritonSpec(dynamic_batching={"preferred_batch_size": [4]}),
                           name="in")


def test_tensorrt_plan_cannot_be_a_cpu_twin(facile_spec):
    with pytest.raises(SpecError, match="GPUs only"):
        build_model_config(facile_spec, facile_spec.triton, name="x", platform="tensorrt_plan", kind="cpu")
