"""`hepdeploy preprocess check`: the CMS HLT ParticleNet preprocess.json run in both conventions on raw jets
with NaN/Inf, against the count a plain implementation of each convention gives, and through a model."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hepdeploy.cli import main
from hepdeploy.weaver import load_config
from tests.test_ntuple import write_hlt_like
from tests.test_weaver import REAL_JSON, plain_value

pytest.importorskip("uproot")
onnx = pytest.importorskip("onnx")


def pooled_tagger(path: Path) -> Path:
    """A small ONNX tagger over the json's six groups: masked sums over particles -> dense -> softmax(3)."""
    from onnx import TensorProto, helper, numpy_helper

    sizes = {"pf_points": (2, "n_pf"), "pf_features": (23, "n_pf"), "pf_mask": (1, "n_pf"),
             "sv_points": (2, "n_sv"), "sv_features": (11, "n_sv"), "sv_mask": (1, "n_sv")}
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", c, d]) for n, (c, d) in sizes.items()]
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(0, 0.3, (38, 3)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([2], np.int64), "axes")
    nodes = [
        helper.make_node("Mul", ["pf_features", "pf_mask"], ["pf_m"]),
        helper.make_node("Mul", ["sv_features", "sv_mask"], ["sv_m"]),
        *[helper.make_node("ReduceSum", [x, "axes"], [f"{x}_sum"], keepdims=0)
          for x in ("pf_m", "sv_m", "pf_points", "sv_points")],
        helper.make_node("Concat", ["pf_m_sum", "sv_m_sum", "pf_points_sum", "sv_points_sum"], ["pooled"], axis=1),
        helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["softmax"], axis=1),
    ]
    graph = helper.make_graph(nodes, "pooled_tagger", inputs,
                              [helper.make_tensor_value_info("softmax", TensorProto.FLOAT, ["batch", 3])],
                              [weights, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, path)
    return path


def test_parity_report_counts_what_each_convention_gives(tmp_path: Path) -> None:
    config = load_config(REAL_JSON)
    shutil.copy(REAL_JSON, tmp_path / "preprocess.json")
    n = 60
    counts, _, values = write_hlt_like(tmp_path / "jets.root", n)
    model = pooled_tagger(tmp_path / "tagger.onnx")
    result = CliRunner().invoke(main, [
        "preprocess", "check", str(tmp_path / "preprocess.json"), "--data", str(tmp_path / "jets.root"),
        "--model", str(model), "--labels", "label_b,label_c,label_l", "--class-names", "b,c,l",
        "--json", str(tmp_path / "parity.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["events"] == n and report["differs"]
    groups = {g["group"]: g for g in report["groups"]}
    # the kept particles: the first min(count, 50) of each jet
    kept = np.concatenate([np.arange(c) < 50 for c in counts])
    for name in ("pf_points", "pf_features"):
        group = config.groups[name]
        want = {}
        for var, info in zip(group.var_names, group.var_infos):
            raw = values[var][kept]
            n_diff = sum(plain_value(float(x), info, "cmssw") != plain_value(float(x), info, "weaver") for x in raw)
            if n_diff:
                want[var] = n_diff
        assert groups[name]["variables"] == want
        assert groups[name]["differing"] == sum(want.values()) > 0
    assert all(groups[g]["differing"] == 0 for g in ("pf_mask", "sv_points", "sv_features", "sv_mask"))
    (output,) = report["outputs"]
    assert output["output"] == "softmax" and output["max_abs_diff"] > 0
    assert 0.0 <= output["argmax_agreement"] <= 1.0
    checks = report["physics"]["checks"]
    assert {c["metric"].split(" ")[0] for c in checks} >= {"auc"} or checks, report["physics"]
    aucs = [c for c in checks if c["metric"].startswith("auc")]
    assert aucs and all(c["interval"] is not None and math.isfinite(c["reference"]) for c in aucs)
    assert "pf_features:" in result.output and "differ in" in result.output and "paired bootstrap" in result.output

    strict = CliRunner().invoke(main, ["preprocess", "check", str(tmp_path / "preprocess.json"),
                                       "--data", str(tmp_path / "jets.root"), "--fail-on-difference"])
    assert strict.exit_code == 1, strict.output


def test_parity_check_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    shutil.copy(REAL_JSON, tmp_path / "preprocess.json")
    write_hlt_like(tmp_path / "jets.root", 10)
    wrong_model = tmp_path / "other.onnx"
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), wrong_model)
    (tmp_path / "broken.json").write_text("{not json")
    for args, message in (
        (["--model", str(wrong_model)], "are not the preprocess.json's groups"),
        (["--tree", "Nope"], "no tree named 'Nope'"),
    ):
        result = CliRunner().invoke(main, ["preprocess", "check", str(tmp_path / "preprocess.json"),
                                           "--data", str(tmp_path / "jets.root"), *args])
        assert result.exit_code == 2 and message in result.output, result.output
    result = CliRunner().invoke(main, ["preprocess", "check", str(tmp_path / "broken.json"),
                                       "--data", str(tmp_path / "jets.root")])
    assert result.exit_code == 2 and "not valid JSON" in result.output, result.output
