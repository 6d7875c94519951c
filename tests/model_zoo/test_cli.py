"""``hepdeploy zoo list | train | export`` as a user runs them."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from hepdeploy.cli import main
from hepdeploy.spec import load_spec


def test_zoo_train_export_list(tmp_path: Path) -> None:
    runner = CliRunner()
    cache = tmp_path / "cache"
    result = runner.invoke(main, ["zoo", "train", "jet_mlp", "--flavour", "torch", "--budget", "reduced",
                                  "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    assert "AUC" in result.output

    out = tmp_path / "out"
    result = runner.invoke(main, ["zoo", "export", "jet_mlp", "-o", str(out), "--flavour", "torch", "--budget",
                                  "reduced", "--no-train", "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    assert "trained (reduced budget)" in result.output
    spec = load_spec(out / "jet_mlp_torch.yaml")
    assert spec.source.factory == "hepdeploy.model_zoo.jet_mlp:build_torch"
    assert (out / "jet_mlp_torch.pt").is_file() and (out / "jet_mlp_torch_reference.npz").is_file()

    result = runner.invoke(main, ["zoo", "list", "--json", "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    rows = {(r["name"], r["flavour"]): r for r in json.loads(result.output)}
    assert len(rows) == 7
    assert rows[("jet_mlp", "torch")]["budget"] == "reduced" and rows[("jet_mlp", "torch")]["metrics"]["auc"] > 0.7
    assert rows[("jet_mlp", "keras")]["metrics"] == {} and rows[("jet_mlp", "keras")]["parameters"] == 4389
    assert rows[("facile", "keras")]["inputs"] == "input[batch,47]"

    table = runner.invoke(main, ["zoo", "list", "--cache", str(cache)])
    assert table.exit_code == 0 and "not trained" in table.output and "(reduced budget)" in table.output
    assert "input_1[batch,16]" in table.output


def test_zoo_export_untrained_and_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["zoo", "export", "facile", "-o", str(tmp_path / "f"), "--no-train",
                                  "--cache", str(tmp_path / "empty")])
    assert result.exit_code == 0, result.output
    assert "untrained" in result.output and (tmp_path / "f" / "facile.keras").is_file()

    result = runner.invoke(main, ["zoo", "export", "nosuchnet", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown zoo network 'nosuchnet'" in result.output
    result = runner.invoke(main, ["zoo", "export", "facile", "-o", str(tmp_path / "missing" / "deeper")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(main, ["zoo", "train", "facile", "--flavour", "torch"])
    assert result.exit_code == 2 and "no 'torch' flavour" in result.output
