"""The SuperSONIC values override: merged over the chart's own defaults the way Helm merges, it must
validate against the chart's schema (both files are the chart's, unchanged, in shared/third_party)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hepdeploy.cli import main
from hepdeploy.triton.repository import publish_model
from hepdeploy.triton.plan import ModelRequest
from hepdeploy.triton.supersonic import helm_merge

jsonschema = pytest.importorskip("jsonschema")


def _chart() -> Path:
    candidates = [Path(os.environ.get("HEPDEPLOY_THIRD_PARTY", "")) / "supersonic-0.3.1",
                  Path(__file__).resolve().parents[3] / "shared" / "third_party" / "supersonic-0.3.1",
                  Path("/work/shared/third_party/supersonic-0.3.1")]
    for folder in candidates:
        if (folder / "values.schema.json").is_file():
            return folder
    pytest.skip("the SuperSONIC chart files (shared/third_party/supersonic-0.3.1) are not on this machine")


@pytest.fixture()
def repo(tmp_path: Path, models, facile_spec) -> Path:  # noqa: ANN001
    repo = tmp_path / "model_repository"
    publish_model(repo, ModelRequest(models["facile"], name="facile", spec=facile_spec))
    return repo


def _validate(values_file: Path) -> dict:
    import json

    chart = _chart()
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    schema = json.loads((chart / "values.schema.json").read_text())
    override = yaml.safe_load(values_file.read_text())
    merged = helm_merge(defaults, override)
    jsonschema.validate(merged, schema)
    return merged


@pytest.mark.parametrize("storage_args", [["--storage", "pvc", "--claim", "sonic-models"],
                                          ["--storage", "nfs", "--nfs-server", "nfs.example.org",
                                           "--nfs-path", "/exports/models"]])
def test_the_override_validates_against_the_chart_schema_after_the_merge(repo: Path, tmp_path: Path,
                                                                          storage_args: list[str]) -> None:
    out = tmp_path / "values.yaml"
    result = CliRunner().invoke(main, ["triton", "supersonic", str(repo), "-o", str(out), *storage_args,
                                       "--gpus", "2", "--replicas", "1:4", "--server-release", "24.10",
                                       "--server-load-threshold", "7"])
    assert result.exit_code == 0, result.output
    merged = _validate(out)
    assert merged["serverLoadThreshold"] == 7  # KEDA's threshold from `hepdeploy profile`
    triton = merged["triton"]
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert "--model-repository=/models" in triton["args"][0]
    assert "--backend-config=onnxruntime,enable-global-threadpool=1" in triton["args"][0]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert triton["modelRepository"]["enabled"] is True and triton["modelRepository"]["mountPath"] == "/models"
    assert merged["keda"]["enabled"] is True and merged["prometheus"]["enabled"] is True
    assert (merged["keda"]["minReplicaCount"], merged["keda"]["maxReplicaCount"]) == (1, 4)
    # Everything the override does not name keeps the chart's defaults (maps merge, lists replace).
    assert merged["envoy"]["enabled"] is True and merged["triton"]["service"]["ports"][1]["port"] == 8001


def test_bad_requests_are_one_clear_line(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "values.yaml"
    cases = [
        (["--storage", "pvc"], "needs --claim"),
        (["--storage", "nfs", "--nfs-server", "h"], "needs --nfs-server HOST and --nfs-path"),
        (["--storage", "cvmfs"], "under /cvmfs/"),
        (["--claim", "c", "--replicas", "4:2"], "MIN <= MAX"),
        (["--claim", "c", "--server-release", "19.01"], "not in hepdeploy's table"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, ["triton", "supersonic", str(repo), "-o", str(out), *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert not out.exists()
    result = CliRunner().invoke(main, ["triton", "supersonic", str(tmp_path / "nothing"), "-o", str(out),
                                       "--claim", "c"])
    assert result.exit_code == 2 and "model repository folder not found" in result.output
