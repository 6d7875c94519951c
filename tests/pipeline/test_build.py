"""`hepdeploy build` end to end on a real (reduced-budget) zoo network."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hepdeploy.backend.trt import tensorrt_unavailable
from hepdeploy.cli import main
from hepdeploy.triton.check import check_repository


@pytest.mark.slow
def test_build_jet_mlp_end_to_end(zoo_pair_build) -> None:  # noqa: ANN001 - conftest.BuiltPair
    # The session's build of facile and jet_mlp (tests/pipeline/conftest.py).
    out = zoo_pair_build.out
    summary = json.loads((out / "build-summary.json").read_text())
    jet = next(m for m in summary["models"] if m["name"] == "jet_mlp")
    steps = {s["step"]: s for s in jet["steps"]}
    for name in ("zoo-export", "convert", "reference", "optimize:fp32", "optimize:int8-cpu",
                 "optimize:fp16", "optimize:int8-trt", "validate:fp32", "publish"):
        assert steps[name]["status"] == "ok", (name, steps[name])
    if tensorrt_unavailable() is not None:
        # No GPU here: the graphs made for TensorRT are prechecked against the operator list of the
        # TensorRT that Triton 24.10 ships (the nearest list: 10.8).
        precheck = steps["precheck:tensorrt"]
        assert precheck["status"] == "ok", precheck
        assert "fp16, int8-trt pass the TensorRT ONNX parser precheck for Triton 24.10" in json.dumps(precheck)
    # The exit code is the verdict: 1 exactly when some step failed.
    failed = [s for m in summary["models"] for s in m["steps"] + summary["repository_steps"] if s["status"] == "failed"]
    assert zoo_pair_build.exit_code == (1 if failed else 0), zoo_pair_build.stdout
    assert summary["passed"] is (not failed)
    # Every variant file is a real artifact with its sidecar, and the reports exist.
    for variant in ("fp32", "int8_cpu", "fp16", "int8_trt"):
        assert (out / "jet_mlp" / "variants" / f"jet_mlp_{variant}.onnx").is_file()
        assert (out / "jet_mlp" / "variants" / f"jet_mlp_{variant}.json").is_file()
    for report in ("report.json", "junit.xml", "report.md", "report.html"):
        assert (out / "jet_mlp" / "reports" / report).is_file()
    # Every step records its peak resident memory, and the summary the build's largest.
    assert all("peak_rss_mib" in s["details"] for s in jet["steps"])
    assert summary["peak_rss_mib"] >= max(s["details"]["peak_rss_mib"] for s in jet["steps"])
    # The automatic CPU twin: FP32 and the CPU variants that pass, timed side by side; an INT8 one only
    # when it is measured 1.10x FP32 or faster.
    twin = steps["twin"]
    ratios = twin["details"]["throughput_vs_fp32"]
    assert twin["details"]["chosen"] == ("fp32" if all(r < 1.1 for r in ratios.values()) else
                                         max(ratios, key=ratios.get))
    # Only variants that passed validation are published, and the repository checks clean.
    repo = out / "model_repository"
    assert (repo / "jet_mlp_cpu" / "config.pbtxt").is_file()
    assert (repo / "jet_mlp" / "config.pbtxt").is_file()
    assert (repo / "jet_mlp" / "1" / "model.onnx").is_file()
    assert check_repository(repo) == []
    assert "Triton model repository" in zoo_pair_build.stdout


def test_build_refuses_a_bad_spec_before_any_work(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\nsource: {framework: zoo, zoo: facile}\ninputs: []\noutputs: []\nbogus: 1\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(spec), "-o", str(out)])
    assert result.exit_code == 2
    assert "bogus: unknown key" in result.output
    assert not out.exists()


def test_build_unknown_zoo_network(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["build", "--zoo", "nonesuch", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "unknown zoo network 'nonesuch'" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("strict", [False, True])
def test_a_variant_failing_validation_is_rejected_not_published(
    tmp_path: Path, zoo_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, strict: bool
) -> None:
    """int8 held to exact equality must fail: it is kept out of the repository; only --strict fails the build."""
    monkeypatch.setenv("HEPDEPLOY_CACHE", str(zoo_cache_dir))
    spec = tmp_path / "jet.yaml"
    spec.write_text(
        "name: jet\n"
        "source: {framework: zoo, zoo: jet_mlp}\n"
        "inputs: [{name: input_1, shape: [batch, 16]}]\n"
        "outputs: [{name: output, shape: [batch, 5]}]\n"
        "variants: [fp32, int8-cpu]\n"
        "validation: {policy: {int8: numerical}, tolerances: {int8: {atol: 0.0, rtol: 0.0}}}\n"
        "triton: {variant: fp32, max_batch_size: 64}\n"
    )
    out = tmp_path / "out"
    args = ["build", str(spec), "--budget", "reduced", "-o", str(out)] + (["--strict"] if strict else [])
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    summary = json.loads((out / "build-summary.json").read_text())
    steps = {s["step"]: s for s in summary["models"][0]["steps"]}
    assert steps["validate:fp32"]["status"] == "ok"
    assert steps["validate:int8-cpu"]["status"] == ("failed" if strict else "rejected")
    assert result.exit_code == (1 if strict else 0), result.output
    assert summary["rejected_variants"] == ([] if strict else ["jet:int8-cpu"])
    # The served fp32 variant is published either way; the manifest records its passing verdict.
    manifest = json.loads((out / "model_repository" / "jet" / "1" / "hepdeploy-manifest.json").read_text())
    assert manifest["source"]["variant"]["name"] == "fp32"
    assert manifest["verdict"]["passed"] is True
    assert sorted(p.name for p in (out / "model_repository").iterdir()) == ["jet"]
    assert check_repository(out / "model_repository") == []


@pytest.mark.slow
@pytest.mark.server
def test_build_serve_check_validates_what_the_local_server_serves(
    tmp_path: Path, zoo_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, triton_binary: object
) -> None:
    """--serve-check publishes Python-backend twins, serves the repository, validates, and names what it
    could not load (the bundled server has no ONNX Runtime backend) with the server's own message."""
    monkeypatch.setenv("HEPDEPLOY_CACHE", str(zoo_cache_dir))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["build", "--zoo", "jet_mlp", "--budget", "reduced", "--variant", "fp32", "--serve-check", "-o", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "build-summary.json").read_text())
    serve = {s["step"]: s for s in summary["repository_steps"]}["serve-check"]
    assert serve["status"] == "ok", serve
    lines = "\n".join(serve["details"]["lines"])
    assert "jet_mlp_py: loaded; PASS" in lines
    # The bundled server lacks what NGC images ship: the checksum repository agent our configs name by
    # default, and the ONNX Runtime backend; it says which one it missed first.
    refused = serve["details"]["not_loaded"]["jet_mlp"]
    assert ("unable to find 'libtritonrepoagent_checksum.so' for repo agent 'checksum'" in refused
            or "unable to find backend library for backend 'onnxruntime'" in refused), refused
