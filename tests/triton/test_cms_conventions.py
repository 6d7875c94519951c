"""What real CMS Triton configs carry: class labels, the checksum repository agent (checked by CMSSW's
SonicTriton against its local copy), the ONNX Runtime graph level, and CMSSW's CPU thread control."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from hepdeploy.cli import main
from hepdeploy.errors import SpecError
from hepdeploy.model_zoo import get_network
from hepdeploy.model_zoo.export import spec_dict
from hepdeploy.spec import spec_from_dict
from hepdeploy.triton.check import check_repository
from hepdeploy.triton.config import read_model_config
from hepdeploy.triton.repository import publish_model, publish_python_twin
from hepdeploy.triton.plan import ModelRequest

FLAVOURS = ["b", "c", "uds"]


def _classifier(path: Path, seed: int = 0) -> Path:
    import onnx

    weights = numpy_helper.from_array(np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
        "tagger", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])], initializer=[weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def _spec(**triton: object):  # noqa: ANN202
    return spec_from_dict({"name": "tagger", "source": {"framework": "onnx", "path": "t.onnx"},
                           "inputs": [{"name": "x", "shape": ["batch", 4]}],
                           "outputs": [{"name": "probs", "shape": ["batch", 3]}], "triton": triton})


def test_labels_are_written_and_named_by_the_classification_output(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(_classifier(tmp_path / "t.onnx"), name="tagger", spec=_spec(labels=FLAVOURS)))
    config = read_model_config(repo / "tagger" / "config.pbtxt")
    assert config.output[0].label_filename == "labels.txt"
    assert (repo / "tagger" / "labels.txt").read_text().splitlines() == FLAVOURS
    assert check_repository(repo) == []
    (repo / "tagger" / "labels.txt").write_text("b\nc\n")
    assert any("2 labels for output 'probs' with 3 classes" in p.message for p in check_repository(repo))
    with pytest.raises(SpecError, match="no output has 4 classes"):
        publish_model(tmp_path / "other", ModelRequest(tmp_path / "t.onnx", name="tagger", spec=_spec(labels=[*FLAVOURS, "g"])))


def test_the_zoo_classifiers_fill_their_labels() -> None:
    net = get_network("jet_mlp")
    triton = spec_dict(net, net.default_flavour, "jet_mlp", "jet_mlp.keras")["triton"]
    assert triton["labels"] == list(net.class_names) and len(net.class_names) > 1


def test_the_checksum_agent_covers_every_version_and_catches_a_changed_file(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = _classifier(tmp_path / "t.onnx")
    publish_model(repo, ModelRequest(first, name="tagger", spec=_spec()))
    publish_model(repo, ModelRequest(_classifier(tmp_path / "t2.onnx", seed=1), name="tagger", spec=_spec()))
    config = read_model_config(repo / "tagger" / "config.pbtxt")
    (agent,) = config.model_repository_agents.agents
    # Every file one folder down, as cmsTritonConfigTool lists them: models, manifests (and warm-up files).
    assert agent.name == "checksum" and sorted(agent.parameters) == [
        "MD5:1/hepdeploy-manifest.json", "MD5:1/model.onnx", "MD5:2/hepdeploy-manifest.json", "MD5:2/model.onnx"]
    import hashlib

    assert agent.parameters["MD5:2/model.onnx"] == hashlib.md5((repo / "tagger/2/model.onnx").read_bytes()).hexdigest()
    assert check_repository(repo) == []
    (repo / "tagger" / "1" / "model.onnx").write_bytes((tmp_path / "t2.onnx").read_bytes())
    messages = [p.message for p in check_repository(repo, run_models=False)]
    assert "MD5 differs from the checksum agent's (Triton would refuse to load it)" in messages
    # Off by choice; and never on a Python-backend twin (it targets minimal servers without repository agents).
    publish_model(repo, ModelRequest(first, name="plain", spec=_spec(checksum_agent=False)))
    assert not read_model_config(repo / "plain" / "config.pbtxt").model_repository_agents.agents
    publish_python_twin(repo, first, model_name="tagger", spec=_spec())
    assert not read_model_config(repo / "tagger_py" / "config.pbtxt").model_repository_agents.agents


def test_graph_level_and_cpu_twin_threads(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    spec = _spec(optimization={"graph_level": 1}, cpu_twin={"variant": "fp32", "threads": 4})
    model = _classifier(tmp_path / "t.onnx")
    result = CliRunner().invoke(main, ["triton", "add", str(repo), str(model), "--cpu-twin", str(model),
                                       "--spec", _write(tmp_path, spec)])
    assert result.exit_code == 0, result.output
    gpu = read_model_config(repo / "tagger" / "config.pbtxt")
    assert gpu.optimization.graph.level == 1
    cpu = read_model_config(repo / "tagger_cpu" / "config.pbtxt")
    assert [g.count for g in cpu.instance_group] == [4]
    assert cpu.parameters["intra_op_thread_count"].string_value == "1"
    assert cpu.parameters["inter_op_thread_count"].string_value == "1"


def _write(folder: Path, spec) -> str:  # noqa: ANN001
    import yaml

    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    return str(path)
