"""Dims the graph constrains: a k-NN tagger exported like ParticleNet takes the 17 nearest points
(k = 16 neighbours and the point itself) along its dynamic particle axis, so no particle count below 17
can run. Every stage finds that bound, or learns it once from the error a run gives, and a weaver
preprocess.json is the spec of a model given without one."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from hepdeploy.cli import main
from hepdeploy.graph_bounds import bound_from_error, graph_dim_bounds
from hepdeploy.triton.config import read_model_config

torch = pytest.importorskip("torch")

WEAVER_JSON = Path(__file__).resolve().parents[1] / "data" / "weaver" / "hlt_particlenet_ak4_v01_preprocess.json"
K = 16  # neighbours: TopK takes K + 1 along the particle axis


def _knn(pf_channels: int, sv_channels: int | None, k_from_arithmetic: bool = False) -> torch.nn.Module:
    class KNN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(2 * pf_channels, 16, 1)
            self.sv = torch.nn.Linear(sv_channels, 16) if sv_channels else None
            self.fc = torch.nn.Linear(16, 3)

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            points, features, mask = tensors[:3]
            x = points.transpose(1, 2)
            inner = -2 * torch.matmul(x, x.transpose(1, 2))
            square = (x * x).sum(dim=-1, keepdim=True)
            distance = -(square + inner + square.transpose(1, 2))
            # With k_from_arithmetic, K reaches TopK through arithmetic on the particle count, which the
            # graph walk does not evaluate: only a run tells the bound.
            k = (torch.clamp(torch.tensor(points.shape[2]) * 0 + K, max=K) + 1) if k_from_arithmetic else K + 1
            index = distance.topk(k, dim=-1)[1][:, :, 1:]
            f = features.transpose(1, 2)
            n, p, c = f.shape
            base = torch.arange(n).view(-1, 1, 1) * p
            neighbours = f.reshape(n * p, c)[(index + base).reshape(-1)].reshape(n, p, K, c)
            edge = torch.cat([f.unsqueeze(2).expand(-1, -1, K, -1), neighbours - f.unsqueeze(2)], dim=-1)
            h = torch.relu(self.conv(edge.mean(2).transpose(1, 2)))
            h = (h * mask).sum(-1) / mask.sum(-1).clamp(min=1)
            if self.sv is not None:
                sv_points, sv_features, sv_mask = tensors[3:6]
                sv = sv_features + sv_points.mean(1, keepdim=True)
                h = h + (torch.relu(self.sv(sv.transpose(1, 2))) * sv_mask.transpose(1, 2)).sum(1)
            return torch.softmax(self.fc(h), dim=-1)

    torch.manual_seed(0)
    return KNN().eval()


def _export(folder: Path, name: str, pf_channels: int = 4, sv_channels: int | None = None,
            k_from_arithmetic: bool = False, particles: int = 24) -> tuple[Path, Path]:
    """The k-NN model exported like ParticleNet (TorchScript exporter, batch N, particle axis dynamic) and
    a data set of 200 jets with ``particles`` particles."""
    names = ["pf_points", "pf_features", "pf_mask"] + (["sv_points", "sv_features", "sv_mask"] if sv_channels else [])
    channels = [2, pf_channels, 1] + ([2, sv_channels, 1] if sv_channels else [])
    dims = ["n_pf"] * 3 + ["n_sv"] * 3
    sizes = {"n_pf": particles, "n_sv": 5}
    example = tuple(torch.randn(4, c, sizes[d]) for c, d in zip(channels, dims))
    path = folder / f"{name}.onnx"
    torch.onnx.export(_knn(pf_channels, sv_channels, k_from_arithmetic), example, str(path), opset_version=13,
                      input_names=names, output_names=["softmax"], dynamo=False,
                      dynamic_axes={**{n: {0: "N", 2: d} for n, d in zip(names, dims)}, "softmax": {0: "N"}})
    rng = np.random.default_rng(1)
    data = folder / f"{name}.npz"
    arrays = {n: rng.standard_normal((200, c, sizes[d])).astype(np.float32) for n, c, d in zip(names, channels, dims)}
    for n in names:
        if n.endswith("mask"):
            arrays[n] = np.ones_like(arrays[n])
    np.savez(data, **arrays)
    return path, data


def _hlt_layout(folder: Path) -> tuple[dict, Path, Path]:
    """The real HLT ParticleNet preprocess.json (copied) and a k-NN model with its groups and channels."""
    config = json.loads(WEAVER_JSON.read_text())
    pf, sv = len(config["pf_features"]["var_names"]), len(config["sv_features"]["var_names"])
    model, _ = _export(folder, "hlt_knn", pf_channels=pf, sv_channels=sv)
    preprocess = folder / "preprocess.json"
    shutil.copyfile(WEAVER_JSON, preprocess)
    return config, model, preprocess


def _cli(*args: str | Path, code: int = 0) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (args, result.output)
    return result.output


def test_the_graph_walk_finds_the_topk_bound(tmp_path: Path) -> None:
    model, _ = _export(tmp_path, "knn")
    bounds = graph_dim_bounds(model)
    assert set(bounds) == {"n_pf"} and bounds["n_pf"].minimum == K + 1
    assert bounds["n_pf"].line().startswith("n_pf >= 17: TopK") and "k=17" in bounds["n_pf"].line()
    # ONNX Runtime's own words for the same bound, as a run at 16 particles reports it.
    message = "k argument [17] should not be greater than specified axis dim value [16]"
    assert bound_from_error(message, {"n_pf": 16, "n_sv": 5}) == {"n_pf": 17}
    assert bound_from_error("some other failure", {"n_pf": 16}) is None


@pytest.mark.slow
def test_a_knn_model_goes_through_every_stage_without_a_spec(tmp_path: Path) -> None:
    model, data = _export(tmp_path, "knn")
    shown = _cli("inspect", model)
    assert "dim bound: n_pf >= 17 (TopK" in shown
    assert json.loads(_cli("inspect", model, "--json"))["dim_bounds"][0]["min"] == 17
    # Without data, optimize samples its check batch: at 17 particles or more, never at the default 8.
    for variant in ("fp32", "fp16"):
        _cli("optimize", model, "--variant", variant, "-o", tmp_path / f"{variant}.onnx")
    _cli("optimize", model, "--variant", "int8-cpu", "-o", tmp_path / "int8-cpu.onnx", "--calibration", data)
    golden = tmp_path / "golden.npz"
    _cli("reference", model, "--data", data, "-o", golden)
    for variant in ("fp32", "fp16", "int8-cpu"):
        result = CliRunner().invoke(main, ["validate", str(tmp_path / f"{variant}.onnx"), "--golden", str(golden)])
        assert result.exit_code in (0, 1), result.output  # a verdict, not a failure to run
    repo = tmp_path / "repo"
    _cli("triton", "add", repo, model, "--name", "knn")  # its check runs the model at sampled sizes >= 17
    _cli("triton", "add", repo, tmp_path / "fp16.onnx", "--name", "knn_warm", "--warmup", golden)
    assert "0 problem(s)" in _cli("triton", "check", repo)
    config = read_model_config(repo / "knn_warm" / "config.pbtxt")
    assert config.max_batch_size > 0 and list(config.input[0].dims) == [2, -1]
    warm = config.model_warmup[0].inputs["pf_points"]
    assert list(warm.dims)[-1] >= 17  # the warm-up's particle axis respects the bound


@pytest.mark.slow
def test_a_bound_the_walk_misses_is_learned_once_from_the_run(tmp_path: Path) -> None:
    model, _ = _export(tmp_path, "knn_computed_k", k_from_arithmetic=True)
    assert "n_pf" not in graph_dim_bounds(model)  # K is computed: the walk cannot see it
    out = tmp_path / "fp32.onnx"
    _cli("optimize", model, "--variant", "fp32", "-o", out)
    steps = json.loads(out.with_suffix(".json").read_text())["steps"]
    assert any(step["parameters"].get("dim_bounds_learned") == {"n_pf": 17} for step in steps)
    repo = tmp_path / "repo"
    _cli("triton", "add", repo, model, "--name", "knn")
    assert "n_pf >= 17 (found by running it)" in _cli("triton", "check", repo)


@pytest.mark.slow
def test_a_preprocess_json_is_the_spec_and_its_min_length_is_checked_against_the_graph(tmp_path: Path) -> None:
    config, model, preprocess = _hlt_layout(tmp_path)

    # min_length 16 < 17: refused with --strict, and nothing is published.
    repo = tmp_path / "repo"
    result = CliRunner().invoke(main, ["triton", "add", str(repo), str(model), "--name", "hlt_pn", "--preprocess",
                                       str(preprocess), "--strict"])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: preprocess.json: pf_* min_length 16 < 17 needed by TopK"), line
    assert "raise min_length to 17" in line
    assert not (repo / "hlt_pn").exists()

    # Without --strict: one warning line, then the model, its preprocessing and the ensemble, no spec given.
    result = CliRunner().invoke(main, ["-v", "triton", "add", str(repo), str(model), "--name", "hlt_pn",
                                       "--preprocess", str(preprocess)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "min_length 16 < 17" in line]
    assert len(warnings) == 1 and "batches whose longest event has <= 16 entries along n_pf cannot run" in warnings[0]
    assert "dims.n_pf: preprocess.json: min_length 16, max_length 50" in result.output  # where each field came from
    for published in ("hlt_pn", "hlt_pn_preprocess", "hlt_pn_ensemble"):
        assert (repo / published / "1").is_dir(), published
    labels = (repo / "hlt_pn" / "labels.txt").read_text().split()
    assert labels == config["output_names"][:3]  # a 3-class output: the json's first three output names
    assert "0 problem(s)" in _cli("triton", "check", repo)

    # Raised to the bound, the json passes without a warning.
    config["pf_points"]["min_length"] = config["pf_features"]["min_length"] = config["pf_mask"]["min_length"] = 17
    preprocess.write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["triton", "add", str(tmp_path / "repo2"), str(model), "--preprocess",
                                       str(preprocess), "--strict"])
    assert result.exit_code == 0 and "cannot run" not in result.output, result.output
    onnx.checker.check_model(str(model))


@pytest.mark.slow
def test_build_on_an_onnx_file_and_its_preprocess_json(tmp_path: Path) -> None:
    config, model, preprocess = _hlt_layout(tmp_path)
    common = ["build", str(model), "--preprocess", str(preprocess), "--variant", "fp32", "--variant", "fp16"]

    result = CliRunner().invoke(main, [*common, "-o", str(tmp_path / "strict"), "--strict"])
    steps = {s["step"]: s for s in json.loads((tmp_path / "strict" / "build-summary.json").read_text())
             ["models"][0]["steps"]}
    assert result.exit_code == 1 and steps["dim-bounds"]["status"] == "failed"
    assert "min_length 16 < 17 needed by TopK" in steps["dim-bounds"]["reason"]

    result = CliRunner().invoke(main, [*common, "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "build-summary.json").read_text())
    steps = {s["step"]: s for s in summary["models"][0]["steps"]}
    assert steps["dim-bounds"]["status"] == "ok" and "min_length 16 < 17" in steps["dim-bounds"]["reason"]
    assert steps["validate:fp16"]["status"] == "ok"  # the sampled golden set respects the bound
    repo = tmp_path / "out" / "model_repository"
    assert {p.name for p in repo.iterdir()} >= {"hlt_knn", "hlt_knn_preprocess", "hlt_knn_ensemble"}
