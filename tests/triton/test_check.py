"""`triton check` finds each kind of broken repository, and passes good and foreign ones."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from hepdeploy.cli import main
from hepdeploy.triton.check import check_repository, check_repository_report
from hepdeploy.triton.config import config_to_pbtxt, read_model_config
from hepdeploy.triton.repository import INNER_STAGING, MANIFEST_NAME, publish_model
from hepdeploy.triton.plan import ModelRequest


@pytest.fixture()
def good_repo(tmp_path, models, facile_spec, facile_golden, interaction_spec, interaction_golden) -> Path:
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(models["facile"], name="facile", spec=facile_spec, warmup_inputs=facile_golden))
    publish_model(repo, ModelRequest(models["interaction"], name="interaction_network", spec=interaction_spec, warmup_inputs=interaction_golden))
    assert check_repository(repo) == []
    return repo


def _edit_config(model_dir: Path, change: Callable) -> None:
    config = read_model_config(model_dir / "config.pbtxt")
    change(config)
    (model_dir / "config.pbtxt").write_text(config_to_pbtxt(config))


def _set_dims(config, dims):
    del config.input[0].dims[:]
    config.input[0].dims.extend(dims)


DEFECTS = {
    "missing model file": (
        lambda repo, models: (repo / "facile" / "1" / "model.onnx").unlink(),
        "model file model.onnx for platform onnxruntime_onnx is missing",
    ),
    "wrong dims": (
        lambda repo, models: _edit_config(repo / "facile", lambda c: _set_dims(c, [46])),
        "config dims [46] do not match the model shape [batch, 47]",
    ),
    "wrong dtype": (
        lambda repo, models: _edit_config(repo / "facile", lambda c: setattr(c.input[0], "data_type", 12)),
        "config data_type TYPE_FP64 but the model has float32",
    ),
    "input name mismatch": (
        lambda repo, models: _edit_config(repo / "facile", lambda c: setattr(c.input[0], "name", "inputs")),
        "config input 'inputs' is not a model input",
    ),
    "bad pbtxt syntax": (
        lambda repo, models: (repo / "facile" / "config.pbtxt").write_text('name: "facile"\ninput [ { name: }\n'),
        "not a valid model config",
    ),
    "checksum mismatch": (
        lambda repo, models: shutil.copyfile(models["facile_other"], repo / "facile" / "1" / "model.onnx"),
        "sha256 does not match the manifest",
    ),
    "max_batch_size on a model without batch axis": (
        lambda repo, models: _edit_config(
            repo / "interaction_network", lambda c: setattr(c, "max_batch_size", 8)
        ),
        "max_batch_size 8 but the model's first dim is 2, not a free batch axis",
    ),
    "max_batch_size 0 on a batched model": (
        lambda repo, models: _edit_config(
            repo / "facile", lambda c: (setattr(c, "max_batch_size", 0), c.ClearField("dynamic_batching"))
        ),
        "max_batch_size is 0 but the model has a batch axis",
    ),
    "non-numeric version folder": (
        lambda repo, models: (repo / "facile" / "1").rename(repo / "facile" / "v1"),
        "folder 'v1' is not a numeric version folder",
    ),
    "empty version folder": (
        lambda repo, models: (repo / "facile" / "2").mkdir(),
        "version folder is empty",
    ),
    "preferred batch above max batch": (
        lambda repo, models: _edit_config(
            repo / "facile", lambda c: c.dynamic_batching.preferred_batch_size.append(200000)
        ),
        "preferred_batch_size [200000] > max_batch_size 160000",
    ),
    "config name differs from folder": (
        lambda repo, models: (repo / "facile").rename(repo / "facile2"),
        "config name 'facile' differs from the folder name 'facile2'",
    ),
    "warm-up file of the wrong size": (
        lambda repo, models: (repo / "facile" / "warmup" / "input").write_bytes(b"\0" * 12),
        "warm-up file has 12 bytes",
    ),
    "file added after publishing": (
        lambda repo, models: (repo / "facile" / "1" / "notes.txt").write_text("hi"),
        "not in the manifest",
    ),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_check_catches(defect, good_repo, models):
    damage, expected = DEFECTS[defect]
    damage(good_repo, models)
    problems = check_repository(good_repo)
    assert problems, f"{defect}: not caught"
    assert any(expected in p.message for p in problems), [p.line() for p in problems]
    # every problem is one line naming a path inside the repository
    assert all("\n" not in p.line() and str(good_repo) in p.line() for p in problems)


def test_model_that_fails_to_run_is_caught(good_repo):
    # same interface, but the graph fails at run time: the weights' inner dim is wrong
    import numpy as np
    import onnx
    from onnx import numpy_helper

    path = good_repo / "facile" / "1" / "model.onnx"
    model = onnx.load(str(path))
    (good_repo / "facile" / "1" / MANIFEST_NAME).unlink()  # foreign repository: no checksums
    config_path = good_repo / "facile" / "config.pbtxt"
    config = read_model_config(config_path)
    config.ClearField("model_repository_agents")
    config_path.write_text(config_to_pbtxt(config))
    w2 = next(i for i in model.graph.initializer if i.name == "w2")
    w2.CopyFrom(numpy_helper.from_array(np.zeros((4, 1), np.float32), "w2"))
    path.write_bytes(model.SerializeToString())
    messages = [p.message for p in check_repository(good_repo)]
    assert any("ONNX Runtime" in m for m in messages), messages
    assert check_repository(good_repo, run_models=False) == []


def test_foreign_repository_without_manifest_passes(good_repo):
    for manifest in good_repo.rglob(MANIFEST_NAME):
        manifest.unlink()
    for config_path in good_repo.glob("*/config.pbtxt"):  # nor our checksum agent
        config = read_model_config(config_path)
        config.ClearField("model_repository_agents")
        config_path.write_text(config_to_pbtxt(config))
    for readme in good_repo.rglob("README.md"):
        readme.unlink()
    report = check_repository_report(good_repo)
    assert report.ok, [p.line() for p in report.problems]
    assert report.models == ["facile", "interaction_network"] and report.runs == 3  # batch 1, 16000, one IN run


def test_leftover_inner_staging_is_reported(good_repo):
    (good_repo / INNER_STAGING).mkdir()
    messages = [p.message for p in check_repository(good_repo)]
    assert any("Triton would try to load it" in m for m in messages)


def test_cli_add_and_check(tmp_path, models):
    spec = tmp_path / "facile.yaml"
    spec.write_text(
        "name: facile\nsource: {framework: onnx, path: facile.onnx}\n"
        "inputs: [{name: input, shape: [batch, 47]}]\noutputs: [{name: output, shape: [batch, 1]}]\n"
        "triton:\n  max_batch_size: 160000\n"
        "  dynamic_batching: {preferred_batch_size: [16000], max_queue_delay_microseconds: 100}\n"
        "  cpu_twin: {variant: int8-cpu, intra_op_threads: 1}\n"
    )
    repo = tmp_path / "repo"
    runner = CliRunner()
    result = runner.invoke(main, ["triton", "add", str(repo), str(models["facile"]), "--spec", str(spec),
                                  "--cpu-twin", str(models["facile_other"])])
    assert result.exit_code == 0, result.output
    assert "published facile version 1" in result.output and "published facile_cpu version 1" in result.output
    result = runner.invoke(main, ["triton", "check", str(repo)])
    assert result.exit_code == 0, result.output
    assert "2 model(s), 2 version(s)" in result.output and "0 problem(s)" in result.output

    (repo / "facile" / "1" / "model.onnx").unlink()
    result = runner.invoke(main, ["triton", "check", str(repo)])
    assert result.exit_code == 1
    assert "model.onnx: model file model.onnx for platform onnxruntime_onnx is missing" in result.output

    result = runner.invoke(main, ["triton", "add", str(repo), str(models["facile"]), "--name", "../x"])
    assert result.exit_code == 2 and "not a safe name" in result.output


def test_versions_not_served_are_not_compared(tmp_path, models, interaction_spec, facile_spec):
    # version 1 is the interaction network, version 2 a FACILE-shaped model under the same name:
    # with the default version_policy (latest 1) Triton serves only version 2 with the new config.
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(models["interaction"], name="net", spec=interaction_spec))
    publish_model(repo, ModelRequest(models["facile"], name="net", spec=facile_spec))
    report = check_repository_report(repo)
    assert report.ok, [p.line() for p in report.problems]
    assert any("version 1 is not served" in n for n in report.notes)
    _edit_config(repo / "net", lambda c: c.version_policy.all.SetInParent())
    messages = [p.message for p in check_repository(repo)]
    assert any("config input 'input' is not a model input" in m for m in messages), messages


def test_cli_add_with_warmup_and_verdict(tmp_path, models, interaction_golden):
    import json

    import numpy as np

    golden = tmp_path / "golden.npz"
    np.savez(golden, **interaction_golden, labels=np.zeros(90))
    verdict = tmp_path / "verdict.json"
    verdict.write_text(json.dumps({"passed": True, "variant": "fp32"}))
    repo = tmp_path / "repo"
    runner = CliRunner()
    result = runner.invoke(main, ["triton", "add", str(repo), str(models["interaction"]), "--name", "in",
                                  "--warmup", str(golden), "--verdict", str(verdict)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((repo / "in" / "1" / MANIFEST_NAME).read_text())
    assert manifest["verdict"] == {"passed": True, "variant": "fp32"}
    assert sorted(p.name for p in (repo / "in" / "warmup").iterdir()) == ["edge_index", "x"]
    assert runner.invoke(main, ["triton", "check", str(repo)]).exit_code == 0

    verdict.write_text("{not json")
    result = runner.invoke(main, ["triton", "add", str(repo), str(models["interaction"]), "--name", "in",
                                  "--verdict", str(verdict)])
    assert result.exit_code == 2 and "not a readable JSON verdict" in result.output
    assert sorted(p.name for p in (repo / "in").iterdir() if p.name.isdigit()) == ["1"]


def test_preferred_batch_on_model_without_batch_axis(good_repo):
    _edit_config(good_repo / "interaction_network", lambda c: c.dynamic_batching.preferred_batch_size.append(4))
    messages = [p.message for p in check_repository(good_repo)]
    assert messages == ["preferred_batch_size [4] > max_batch_size 0"]
    _edit_config(good_repo / "interaction_network", lambda c: c.dynamic_batching.ClearField("preferred_batch_size"))
    assert check_repository(good_repo) == []  # a plain request queue is fine
