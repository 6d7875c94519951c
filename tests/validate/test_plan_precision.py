"""A TensorRT plan is judged at its graph's precision, read from its ``X.plan.json``.

A plan cannot run here (no TensorRT), so the plan's runner is ONNX Runtime over the graph the plan
stands for; what is under test is which precision (and so which tolerance row) validation chooses."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hepdeploy.artifacts import Sidecar, SourceRecord, StepRecord, VariantRecord, engine_sidecar_path
from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
from hepdeploy.plan_compat import PLAN_STEP
from hepdeploy.validate import candidate as candidate_module
from hepdeploy.validate import make_reference, validate_candidate


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_a_plan_from_a_reduced_precision_graph_is_judged_at_that_precision(
        tiny_onnx: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    # Defect 2 (second half): only .onnx sidecars were read, so every plan was judged as FP32.
    plan = tmp_path / f"tiny_{precision}.plan"
    shutil.copyfile(tiny_onnx, plan)
    sidecar = Sidecar(model_name="tiny", source=SourceRecord(framework="onnx"),
                      inputs=[{"name": "x", "shape": ["batch", 8]}],
                      outputs=[{"name": "prob", "shape": ["batch", 3]}, {"name": "energy", "shape": ["batch", 1]}],
                      variant=VariantRecord(name="tensorrt", precision=precision, target="tensorrt"),
                      steps=[StepRecord(name=PLAN_STEP, tool="tensorrt", tool_version="10.5.0.18")])
    engine_sidecar_path(plan).write_text(sidecar.model_dump_json())
    monkeypatch.setattr(candidate_module, "artifact_runner", lambda path, providers=None: OnnxRuntimeRunner(tiny_onnx))
    reference = make_reference(tiny_onnx, tiny_data)
    report = validate_candidate(plan, reference)
    assert report.precision == precision
    fp32 = validate_candidate(tiny_onnx, reference)
    assert fp32.precision == "fp32"
    assert all(report.tolerances[name].atol > fp32.tolerances[name].atol for name in fp32.tolerances)
