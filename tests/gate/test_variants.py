"""The gate's variants check on the jet MLP: N+1's fp16 and int8-cpu variants made by the optimize stage
and judged against N+1 itself; a spec with fp32 alone is reported, not judged; a TensorRT plan that
cannot be built here is UNDECIDED with the reason, never left out."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hepdeploy.gate.variants import check_variants, gated_variants

pytestmark = pytest.mark.slow


def _with_variants(spec: Any, names: list[str]) -> Any:
    """The zoo's spec with these variants, its efficiency taken at 5 % background: 2000 test jets hold ~16
    background jets per class beyond a 1 % cut, below the floor of 20 (the zoo's 80,000 hold enough)."""
    physics = spec.validation.physics.model_copy(update={"background_efficiency": 0.05})
    return spec.model_copy(update={"variants": [spec.variant(name) for name in names],
                                   "validation": spec.validation.model_copy(update={"physics": physics})})


def test_fp16_and_int8_cpu_of_the_jet_mlp_are_judged_against_it(jet_versions: Any, tmp_path: Path) -> None:
    """fp16 passes. The zoo's own int8-cpu of the jet MLP quantizes the first layer, which reads the raw jet
    features (the zoo sets `tune: true` for it): on 2000 jets its W and Z efficiencies are UNDECIDED, and the
    gate's verdict is the one `hepdeploy validate` gives the same file against N+1."""
    from hepdeploy.gate.outcome import outcome_of
    from hepdeploy.validate import make_reference, validate_candidate

    spec = _with_variants(jet_versions.spec, ["fp32", "fp16", "int8-cpu"])
    result = check_variants(jet_versions.retrained, spec, jet_versions.events, tmp_path)
    assert result.check == "variants"
    assert [f.name for f in result.findings] == ["fp16", "int8-cpu"]
    fp16, int8 = result.findings
    assert fp16.outcome == "PASS", fp16.message
    made = {f.name: Path(f.path) for f in result.findings}
    assert made["fp16"].name == "jet_mlp_fp16.onnx" and made["int8-cpu"].is_file()
    assert int8.extra["precision"] == "int8"
    golden = make_reference(jet_versions.retrained, jet_versions.zoo.reference_path, spec=spec)
    validated = validate_candidate(made["int8-cpu"], golden, spec=spec)
    assert int8.outcome == validated.outcome and int8.message.startswith(f"int8-cpu: {validated.verdict}")
    assert spec.variant("int8-cpu").tune and (int8.outcome == "PASS") != ("(tune: true)" in int8.message)
    if int8.outcome == "UNDECIDED":
        assert "events would decide it" in int8.message
    assert result.outcome == outcome_of(result.findings)
    # Judged against N+1's own outputs: the same file judged against N's (another training) does not pass.
    assert validate_candidate(made["int8-cpu"], jet_versions.events, spec=spec).outcome != "PASS"


def test_a_spec_with_fp32_alone_is_reported_not_judged(jet_versions: Any, tmp_path: Path) -> None:
    spec = _with_variants(jet_versions.spec, ["fp32"])
    result = check_variants(jet_versions.retrained, spec, jet_versions.events, tmp_path)
    assert (result.outcome, result.reason, result.findings) == ("INFO", "the spec asks for no variants besides fp32", [])


def test_the_cpu_twin_variant_is_gated_too(jet_versions: Any) -> None:
    spec = _with_variants(jet_versions.spec, ["fp32", "fp16"])
    twin = spec.triton.model_copy(update={"cpu_twin": spec.triton.cpu_twin.model_copy(update={"variant": "int8-cpu"})})
    assert gated_variants(spec.model_copy(update={"triton": twin})) == ["fp16", "int8-cpu"]
    assert gated_variants(spec) == ["fp16"]  # cpu_twin: auto names none


def test_a_tensorrt_plan_that_cannot_be_built_here_is_undecided(jet_versions: Any, tmp_path: Path) -> None:
    from hepdeploy.backend.trt import tensorrt_unavailable

    why = tensorrt_unavailable()
    if why is None:
        pytest.skip("TensorRT runs here: the plan is built and judged")
    spec = _with_variants(jet_versions.spec, ["fp32", "tensorrt"])
    result = check_variants(jet_versions.retrained, spec, jet_versions.events, tmp_path)
    [finding] = result.findings
    assert result.outcome == "UNDECIDED" and finding.outcome == "UNDECIDED"
    assert "only be gated on a machine with a GPU and TensorRT" in finding.message


def test_a_candidate_that_is_not_onnx_leaves_its_variants_undecided(jet_versions: Any, tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"an engine")
    result = check_variants(plan, _with_variants(jet_versions.spec, ["fp32", "fp16"]), jet_versions.events, tmp_path)
    assert result.outcome == "UNDECIDED" and "is not an ONNX file" in result.reason and "fp16" in result.reason
