"""Zoo networks, converted to ONNX, published with their own specs: the repository passes `triton check`."""
from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb2

from hepdeploy.data import load_tensors
from hepdeploy.spec import CpuTwin
from hepdeploy.triton.check import check_repository_report
from hepdeploy.triton.plan import ModelRequest, PublicationRequest, plan_publication
from hepdeploy.triton.repository import publish


@pytest.mark.slow
@pytest.mark.parametrize("network", ["facile", "interaction_network"])
def test_zoo_network_repository_passes_check(network, zoo_export, tmp_path):
    convert = pytest.importorskip("hepdeploy.convert")
    export = zoo_export(network)
    artifact = convert.convert_from_spec(export.spec, tmp_path / f"{network}.onnx")
    reference = load_tensors(export.reference_path)
    warmup = {t.name: reference[t.name] for t in export.spec.inputs}
    triton = export.spec.triton.model_copy(update={"cpu_twin": CpuTwin(variant="fp32", intra_op_threads=1)})
    repo = tmp_path / "model_repository"
    request = PublicationRequest(ModelRequest(artifact.path, network, spec=export.spec, triton=triton,
                                              warmup_inputs=warmup, verdict={"passed": True}),
                                 cpu_twin=artifact.path, cpu_twin_verdict={"passed": True})
    results = publish(repo, plan_publication(request))
    assert [r.name for r in results] == [network, f"{network}_cpu"]

    report = check_repository_report(repo)
    assert report.ok, [p.line() for p in report.problems]
    assert report.runs >= 2
    for result in results:
        text = (result.model_dir / "config.pbtxt").read_text()
        config = text_format.Parse(text, pb2.ModelConfig())
        assert config.name == result.name
        if network == "facile":
            assert config.max_batch_size == 160000 and list(config.input[0].dims) == [47]
            assert list(config.dynamic_batching.preferred_batch_size) == [16000]
        else:
            assert "max_batch_size: 0\n" in text
            assert [list(t.dims) for t in config.input] == [[-1, 3], [2, -1], [-1, 4]]
