"""Preprocessing served: ``triton add --preprocess`` publishes NAME_preprocess and NAME_ensemble, and
``validate --server --data EVENTS.root`` checks the ensemble end to end against the inline path.

The model is a small ParticleNet-shaped torch network (masked particle pooling plus a jet MLP) exported
to ONNX with a dynamic particle axis; the preprocess.json has a particle group with min/max lengths, a
mask group and a flat group; the ROOT file has NaN/+-Inf values, empty jets and jets longer than
max_length. The served preprocessing is checked three ways: its model.py run in-process against a plain
numpy computation (runs everywhere), the ensemble's scores on a real server against preprocessing +
ONNX Runtime inline (both conventions), and the served preprocess model against the plain computation.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hepdeploy.cli import main
from hepdeploy.spec import load_spec, spec_from_dict

MAX_BATCH = 16  # several requests per validation, so per-request lengths differ from the file's
GROUPS = ["pf_features", "pf_mask", "jet_features"]
PREPROCESS = {
    "input_names": GROUPS,
    "output_names": ["scores"],
    "pf_features": {
        "var_names": ["PF_pt", "PF_eta", "PF_phi"], "min_length": 2, "max_length": 6,
        "var_infos": {
            "PF_pt": {"median": 5.0, "norm_factor": 0.2, "replace_inf_value": -1.0, "lower_bound": -5, "upper_bound": 5},
            "PF_eta": {"median": 0.0, "norm_factor": 1.0, "replace_inf_value": 0.5, "lower_bound": -2.5,
                       "upper_bound": 2.5, "pad": -9.0},
            "PF_phi": {"median": 0.1, "norm_factor": 0.5, "replace_inf_value": 3.0, "lower_bound": -1e32,
                       "upper_bound": 1e32},
        },
    },
    "pf_mask": {"var_names": ["PF_mask"], "min_length": 2, "max_length": 6,
                "var_infos": {"PF_mask": {"median": 0, "norm_factor": 1, "replace_inf_value": 0}}},
    "jet_features": {
        "var_names": ["jet_pt", "jet_eta"],
        "var_infos": {
            "jet_pt": {"median": 100, "norm_factor": 0.01, "replace_inf_value": 0.25, "lower_bound": -5, "upper_bound": 5},
            "jet_eta": {"median": 0, "norm_factor": 1, "replace_inf_value": 0, "lower_bound": -5, "upper_bound": 5},
        },
    },
}
SPEC = {
    "name": "pn",
    "source": {"framework": "onnx", "path": "pn.onnx"},
    "inputs": [{"name": "pf_features", "shape": ["batch", 3, "n"]}, {"name": "pf_mask", "shape": ["batch", 1, "n"]},
               {"name": "jet_features", "shape": ["batch", 2]}],
    "outputs": [{"name": "scores", "shape": ["batch", 3]}],
    "data": {"root_tree": "Events", "labels": "label", "preprocess": {"file": "preprocess.json", "convention": "cmssw"},
             "inputs": {"pf_features": {"sort_by": "PF_pt"}}},
    "triton": {"max_batch_size": MAX_BATCH, "labels": ["b", "c", "light"]},
}


@dataclass
class Work:
    folder: Path
    onnx: Path
    spec_path: Path
    json_path: Path
    events: Path


def _network():
    import torch
    from torch import nn

    class MaskedParticleNet(nn.Module):
        """Per-particle features pooled over the mask, jet features, and a mean over *every* position, pads
        included: the scores depend on the padded length, so the served lengths must be right to agree."""

        def __init__(self) -> None:
            super().__init__()
            self.particles = nn.Conv1d(3, 8, 1)
            self.jet = nn.Linear(2, 8)
            self.head = nn.Linear(19, 3)

        def forward(self, pf_features, pf_mask, jet_features):
            hidden = torch.relu(self.particles(pf_features)) * pf_mask
            pooled = hidden.sum(dim=2) / pf_mask.sum(dim=2).clamp(min=1.0)
            joined = torch.cat([pooled, torch.relu(self.jet(jet_features)), pf_features.mean(dim=2)], dim=1)
            return torch.softmax(self.head(joined), dim=1)

    torch.manual_seed(0)
    return MaskedParticleNet()


def _write_events(path: Path, events: int = 160) -> None:
    import awkward as ak

    from hepdeploy.ntuple import write_ntuple

    rng = np.random.default_rng(1)
    counts = rng.integers(0, 11, events)
    counts[:4] = [0, 6, 10, 0]  # empty jets and jets longer than max_length (6)
    counts[100:130] = rng.integers(0, 4, 30)  # a run of short jets: requests there are padded to 2 or 3
    total = int(counts.sum())
    pt = rng.exponential(8, total).astype(np.float32)
    eta = rng.normal(0, 1.5, total).astype(np.float32)
    phi = rng.uniform(-3.2, 3.2, total).astype(np.float32)
    for values in (pt, eta, phi):
        chosen = rng.choice(np.flatnonzero(np.repeat(np.arange(events), counts) < 40), 9, replace=False)
        values[chosen[:3]], values[chosen[3:6]], values[chosen[6:]] = np.nan, np.inf, -np.inf
    jet_pt = rng.uniform(30, 300, events).astype(np.float32)
    jet_eta = rng.normal(0, 1, events).astype(np.float32)
    jet_pt[5], jet_eta[6], jet_pt[7], jet_eta[8] = np.nan, np.inf, 1e33, -np.inf
    particles = ak.zip({"pt": ak.unflatten(pt, counts), "eta": ak.unflatten(eta, counts),
                        "phi": ak.unflatten(phi, counts)})
    write_ntuple(path, "Events", {"PF": particles, "jet_pt": jet_pt, "jet_eta": jet_eta,
                                  "label": (np.arange(events) % 3).astype(np.int32)})


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Work:
    pytest.importorskip("torch")
    import yaml

    from hepdeploy.convert.from_torch import convert_torch_model

    folder = tmp_path_factory.mktemp("ensemble")
    # The exporter takes the module itself; the spec's torch source only has to name some factory.
    export_spec = spec_from_dict({**SPEC, "source": {"framework": "torch", "factory": "tests:masked_particle_net"}})
    onnx = convert_torch_model(_network(), export_spec, folder / "pn.onnx", exporter="torchscript").path
    spec_path = folder / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC), encoding="utf-8")
    json_path = folder / "preprocess.json"
    json_path.write_text(json.dumps(PREPROCESS, indent=1), encoding="utf-8")
    _write_events(folder / "events.root")
    return Work(folder, onnx, spec_path, json_path, folder / "events.root")


def _add(repo: Path, work: Work, *extra: str):
    return CliRunner().invoke(main, ["triton", "add", str(repo), str(work.onnx), "--spec", str(work.spec_path),
                                     "--preprocess", str(work.json_path), "--python-backend", *extra])


@pytest.fixture(scope="module")
def repo(work: Work) -> Path:
    """pn (cmssw, from the spec) and pnw (--convention weaver), each with its twin, preprocess model and ensemble."""
    repo = work.folder / "model_repository"
    for extra in ([], ["--name", "pnw", "--convention", "weaver"]):
        result = _add(repo, work, *extra)
        assert result.exit_code == 0, result.output
    return repo


# --------------------------------------------------------------------------- a plain numpy computation


def _plain(raw: np.ndarray, lengths: np.ndarray | None, group: dict, convention: str) -> np.ndarray:
    """The preprocess.json's rules written out event by event, independently of hepdeploy.weaver."""
    names = group["var_names"]
    infos = [group["var_infos"][n] for n in names]

    def value(x: np.float32, info: dict) -> np.float32:
        if convention == "cmssw" and (not np.isfinite(x) or abs(x) > 1e32):
            x = np.float32(info.get("replace_inf_value", 0.0))
        with np.errstate(invalid="ignore", over="ignore"):
            y = (x - np.float32(info.get("median", 0.0))) * np.float32(info.get("norm_factor", 1.0))
        y = min(max(y, np.float32(info.get("lower_bound", -1e32))), np.float32(info.get("upper_bound", 1e32))) \
            if not np.isnan(y) else y
        return np.float32(0.0) if convention == "weaver" and np.isnan(y) else np.float32(y)

    if lengths is None:
        return np.array([[value(raw[b, c], infos[c]) for c in range(len(names))] for b in range(raw.shape[0])],
                        dtype=np.float32)
    counts = np.minimum(lengths.reshape(-1), raw.shape[2])
    length = int(min(max(int(counts.max()), group["min_length"]), group["max_length"]))
    out = np.zeros((raw.shape[0], len(names), length), dtype=np.float32)
    for b in range(raw.shape[0]):
        for c, info in enumerate(infos):
            for k in range(length):
                out[b, c, k] = value(raw[b, c, k], info) if k < counts[b] else np.float32(info.get("pad", 0.0))
    return out


# Requests as a client could send them (events' lengths, and the padded length the rules give):
RAW_REQUESTS = {
    "long": [0, 3, 9, 12, 1],  # over max_length (6), beyond the array's 9 columns (clipped): 6
    "short": [1, 3, 0, 2],  # the longest event: 3
    "empty": [0, 0],  # min_length: 2
}


def _raw_request(kind: str = "long", seed: int = 3) -> dict[str, np.ndarray]:
    """NaN pads beyond each length, NaN/Inf/huge values inside the events."""
    rng = np.random.default_rng(seed)
    lengths = np.array(RAW_REQUESTS[kind], dtype=np.int32).reshape(-1, 1)
    raw = rng.normal(3, 6, (len(lengths), 3, 9)).astype(np.float32)
    for b, n in enumerate(lengths[:, 0]):
        raw[b, :, min(n, 9):] = np.nan
    if kind == "long":
        raw[1, 0, 0], raw[1, 1, 2], raw[2, 2, 1], raw[2, 0, 4], raw[4, 1, 0] = np.nan, np.inf, -np.inf, 3e32, np.inf
    if kind == "short":
        raw[1, 0, 2], raw[0, 2, 0] = -np.inf, np.nan
    jets = rng.normal(100, 50, (len(lengths), 2)).astype(np.float32)
    jets[0, 0], jets[1, 1] = np.nan, np.inf
    return {"pf_features_raw": raw, "pf_features_length": lengths, "jet_features_raw": jets}


def _plain_outputs(request: dict[str, np.ndarray], convention: str) -> dict[str, np.ndarray]:
    lengths = request["pf_features_length"]
    mask_raw = np.ones((lengths.shape[0], 1, request["pf_features_raw"].shape[2]), np.float32)
    return {
        "pf_features": _plain(request["pf_features_raw"], lengths, PREPROCESS["pf_features"], convention),
        "pf_mask": _plain(mask_raw, lengths, PREPROCESS["pf_mask"], convention),
        "jet_features": _plain(request["jet_features_raw"], None, PREPROCESS["jet_features"], convention),
    }


# --------------------------------------------------------------------------- model.py in-process


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, np.ascontiguousarray(array)

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def _fake_backend_utils() -> types.ModuleType:
    """What model.py uses of triton_python_backend_utils, over numpy (tensors through DLPack, as served)."""
    module = types.ModuleType("triton_python_backend_utils")

    class Tensor(_Tensor):
        @staticmethod
        def from_dlpack(name, array):
            return _Tensor(name, np.from_dlpack(array))

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.outputs = {t.name: t.array for t in output_tensors}
            self.error = error

    class TritonError(Exception):
        pass

    module.Tensor = Tensor
    module.InferenceResponse = InferenceResponse
    module.TritonError = TritonError
    module.get_input_tensor_by_name = lambda request, name: request.get(name)
    return module


def _in_process_model(repo: Path, name: str, monkeypatch):
    """The published preprocess model's model.py, initialised as Triton's Python backend would."""
    from google.protobuf import json_format

    from hepdeploy.triton.config import read_model_config

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_backend_utils())
    spec = importlib.util.spec_from_file_location(f"served_{name}", repo / name / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json_format.MessageToDict(read_model_config(repo / name / "config.pbtxt"), preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(repo / name), "model_version": "1"})
    return model


def _run_in_process(model, request: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    [response] = model.execute([{n: _Tensor(n, a) for n, a in request.items()}])
    assert response.error is None, response.error
    return response.outputs


# --------------------------------------------------------------------------- tests without a server


def test_a_json_that_does_not_match_the_model_is_refused_in_one_line_and_nothing_is_written(work, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**PREPROCESS, "input_names": ["pf_features", "jet_features"]}), encoding="utf-8")
    repo = tmp_path / "repo"
    result = CliRunner().invoke(main, ["triton", "add", str(repo), str(work.onnx), "--spec", str(work.spec_path),
                                       "--preprocess", str(bad), "--python-backend"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "pf_mask" in lines[0] and "do not match the model's inputs" in lines[0], result.output
    assert not repo.exists()

    channels = tmp_path / "channels.json"
    wrong = json.loads(json.dumps(PREPROCESS))
    wrong["jet_features"]["var_names"].append("jet_phi")
    wrong["jet_features"]["var_infos"]["jet_phi"] = {}
    channels.write_text(json.dumps(wrong), encoding="utf-8")
    result = CliRunner().invoke(main, ["triton", "add", str(repo), str(work.onnx), "--spec", str(work.spec_path),
                                       "--preprocess", str(channels)])
    assert result.exit_code == 2 and "3 variable(s)" in result.output and "2 channel(s)" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not repo.exists()

    plan = tmp_path / "pn.plan"
    plan.write_bytes(b"not an onnx file")
    result = CliRunner().invoke(main, ["triton", "add", str(repo), str(plan), "--spec", str(work.spec_path),
                                       "--preprocess", str(work.json_path)])
    assert result.exit_code == 2 and "not an .onnx file" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not repo.exists()


def test_the_published_ensemble_carries_weaver_verbatim_and_passes_the_repository_check(work, repo):
    import hepdeploy.weaver
    from hepdeploy.triton.check import check_repository
    from hepdeploy.triton.config import read_model_config

    version = repo / "pn_preprocess" / "1"
    assert (version / "weaver_rules.py").read_bytes() == Path(hepdeploy.weaver.__file__).read_bytes()
    assert (version / "preprocess.json").read_bytes() == work.json_path.read_bytes()
    manifest = json.loads((version / "hepdeploy-manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["files"]) == {"model.py", "weaver_rules.py", "preprocess.json"}

    ensemble = read_model_config(repo / "pn_ensemble" / "config.pbtxt")
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == MAX_BATCH
    assert [(t.name, list(t.dims)) for t in ensemble.input] == [
        ("pf_features_raw", [3, -1]), ("pf_features_length", [1]), ("jet_features_raw", [2])]
    assert [(t.name, list(t.dims), t.label_filename) for t in ensemble.output] == [("scores", [3], "labels.txt")]
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["pn_preprocess", "pn_py"]
    preprocess = read_model_config(repo / "pn_preprocess" / "config.pbtxt")
    assert preprocess.parameters["convention"].string_value == "cmssw"
    assert read_model_config(repo / "pnw_preprocess" / "config.pbtxt").parameters["convention"].string_value == "weaver"
    assert [(t.name, list(t.dims)) for t in preprocess.output] == [
        ("pf_features", [3, -1]), ("pf_mask", [1, -1]), ("jet_features", [2])]
    assert (repo / "pn_ensemble" / "labels.txt").read_text(encoding="utf-8").split() == ["b", "c", "light"]
    assert check_repository(repo, run_models=False) == []


def test_triton_check_follows_the_ensemble_steps(repo, tmp_path):
    """A step model that is missing, a step tensor the model lacks, an output no step makes: a problem each."""
    import shutil

    from hepdeploy.triton.check import check_repository
    from hepdeploy.triton.config import config_to_pbtxt, read_model_config

    broken = tmp_path / "repo"
    shutil.copytree(repo, broken)
    shutil.rmtree(broken / "pnw_py")
    config = read_model_config(broken / "pn_ensemble" / "config.pbtxt")
    step = config.ensemble_scheduling.step[1]
    source = step.input_map.pop("pf_mask")
    step.input_map["pf_maskk"] = source
    config.output[0].name = "scores_typo"
    (broken / "pn_ensemble" / "config.pbtxt").write_text(config_to_pbtxt(config), encoding="utf-8")
    problems = [p.line() for p in check_repository(broken, run_models=False)]
    assert any("pn_py has no input 'pf_maskk'" in p for p in problems), problems
    assert any("ensemble output 'scores_typo' is made by no step" in p for p in problems), problems
    assert any("model 'pnw_py' is not in the repository" in p for p in problems), problems


@pytest.mark.parametrize("convention", ["cmssw", "weaver"])
@pytest.mark.parametrize("kind,length", [("long", 6), ("short", 3), ("empty", 2)])
def test_the_served_model_py_equals_a_plain_numpy_computation(repo, convention, kind, length, monkeypatch):
    model = _in_process_model(repo, "pn_preprocess" if convention == "cmssw" else "pnw_preprocess", monkeypatch)
    request = _raw_request(kind)
    produced = _run_in_process(model, request)
    expected = _plain_outputs(request, convention)
    assert list(produced) == GROUPS
    for name in GROUPS:
        assert produced[name].dtype == np.float32 and produced[name].shape == expected[name].shape, name
        np.testing.assert_array_equal(produced[name], expected[name], err_msg=name)
    assert produced["pf_features"].shape[2] == produced["pf_mask"].shape[2] == length
    assert all(np.isfinite(produced[n]).all() for n in GROUPS)  # NaN/Inf handled by either convention
    again = _run_in_process(model, {k: v.copy() for k, v in request.items()})
    assert all(np.array_equal(again[n], produced[n]) for n in GROUPS)  # deterministic


def _served_in_process_equals_inline(repo: Path, name: str, spec, onnx: Path, events: Path, monkeypatch,
                                     request: int = 7) -> set[int]:
    """Run validate's raw arrays through the published model.py (in-process) request by request: the tensors
    must be the inline path's (cut to each request's length), the scores the inline reference's to rounding.
    Returns the particle lengths the requests were padded to."""
    from hepdeploy.backend.sources import artifact_runner
    from hepdeploy.data import read_root_events
    from hepdeploy.validate.raw_events import inline_reference

    convention = spec.data.preprocess.convention
    reference = inline_reference(events, onnx, spec, convention, request)
    inline = read_root_events(events, spec.inputs, spec.data)
    model = _in_process_model(repo, f"{name}_preprocess", monkeypatch)
    scores, padded = [], set()
    layouts = {n: m.layout for n, m in spec.data.inputs.items()}
    with artifact_runner(onnx) as runner:
        for start in range(0, reference.n_samples, request):
            served = _run_in_process(model, {k: v[start:start + request] for k, v in reference.inputs.items()})
            channels_last = layouts.get("pf_features") == "channels_last"
            length = served["pf_features"].shape[1 if channels_last else 2]
            padded.add(length)
            for group in GROUPS:
                expected = inline[group][start:start + request]
                if expected.ndim == 3:
                    expected = expected[:, :length, :] if layouts.get(group) == "channels_last" else expected[:, :, :length]
                np.testing.assert_array_equal(served[group], expected, err_msg=f"{group} at {start}")
            scores.append(runner.run(served)["scores"])
    # ONNX Runtime's CPU kernels may round differently by a buffer's alignment: equal to float rounding.
    np.testing.assert_allclose(np.concatenate(scores), reference.outputs["scores"], rtol=0, atol=1e-6)
    assert reference.labels["label"].shape == (reference.n_samples,)
    return padded


def test_the_raw_events_and_the_served_code_reproduce_the_inline_path_without_a_server(work, repo, monkeypatch):
    """validate's two halves agree: the raw arrays it sends, through the served code, give the inline tensors."""
    from hepdeploy.validate.raw_events import inline_reference

    spec = load_spec(work.spec_path)
    reference = inline_reference(work.events, work.onnx, spec, "cmssw", 7)
    assert set(reference.inputs) == {"pf_features_raw", "pf_features_length", "jet_features_raw"}
    lengths = reference.inputs["pf_features_length"][:, 0]
    assert lengths.max() == 10 and lengths.min() == 0 and reference.inputs["pf_features_raw"].shape[2] == 10
    assert np.isnan(reference.inputs["pf_features_raw"]).any() and np.isinf(reference.inputs["jet_features_raw"]).any()
    padded = _served_in_process_equals_inline(repo, "pn", spec, work.onnx, work.events, monkeypatch)
    assert padded == {2, 3, 6}  # requests are padded to their own longest event (clamped), not the file's


def test_channels_last_and_a_fixed_length_are_served_as_the_inline_path_reads_them(work, tmp_path, monkeypatch):
    import torch
    import yaml

    from hepdeploy.convert.from_torch import convert_torch_model
    from hepdeploy.triton.ensemble import ensemble_requests, plan_ensemble
    from hepdeploy.triton.plan import ModelRequest, PublicationRequest, plan_publication
    from hepdeploy.triton.repository import publish

    class ChannelsLast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = _network()

        def forward(self, pf_features, pf_mask, jet_features):
            return self.inner(pf_features.transpose(1, 2), pf_mask, jet_features)

    data = json.loads(json.dumps(SPEC["data"]))
    data["inputs"]["pf_features"]["layout"] = "channels_last"
    data["preprocess"] = {"file": str(work.json_path), "convention": "weaver"}
    spec_dict = {**SPEC, "name": "pncl", "data": data,
                 "inputs": [{"name": "pf_features", "shape": ["batch", 6, 3]},
                            {"name": "pf_mask", "shape": ["batch", 1, 6]},
                            {"name": "jet_features", "shape": ["batch", 2]}]}
    export_spec = spec_from_dict({**spec_dict, "source": {"framework": "torch", "factory": "tests:channels_last"}})
    onnx = convert_torch_model(ChannelsLast(), export_spec, tmp_path / "pncl.onnx", exporter="torchscript").path
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec_dict), encoding="utf-8")
    spec = load_spec(tmp_path / "spec.yaml")
    repo = tmp_path / "repo"
    plan = plan_ensemble(onnx, work.json_path, name="pncl", spec=spec)
    assert [(g.name, g.layout, g.fixed_length) for g in plan.served.groups] == [
        ("pf_features", "channels_last", 6), ("pf_mask", "channels_first", 6), ("jet_features", "channels_first", None)]
    assert plan.convention == "weaver" and plan.model_step == "pncl"
    # One publish: the ensemble's steps are checked among the models staged with it.
    request = PublicationRequest(ModelRequest(onnx, "pncl", spec=spec), extra=ensemble_requests(plan))
    assert [r.name for r in publish(repo, plan_publication(request))] == ["pncl", "pncl_preprocess", "pncl_ensemble"]
    padded = _served_in_process_equals_inline(repo, "pncl", spec, onnx, work.events, monkeypatch)
    assert padded == {6}


# --------------------------------------------------------------------------- on the bundled server


@pytest.fixture(scope="module")
def server(repo, triton_binary):
    from hepdeploy.triton.server import TritonServer

    with TritonServer(repo, binary=triton_binary, load=["pn_ensemble", "pnw_ensemble"], startup_timeout_s=180,
                      load_timeout_s=300) as running:
        refused = running.model_load_errors()
        assert not refused, refused
        yield running


@pytest.mark.server
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name,convention", [("pn", "cmssw"), ("pnw", "weaver")])
def test_the_served_ensemble_equals_preprocessing_and_model_inline(work, server, name, convention):
    from hepdeploy.backend.triton import ServerTarget, TritonRunner
    from hepdeploy.judgement import Judgement
    from hepdeploy.validate import validate_served_ensemble
    from hepdeploy.validate.raw_events import inline_reference

    spec = load_spec(work.spec_path)
    report = validate_served_ensemble(ServerTarget(server.grpc_url), f"{name}_ensemble", work.events, spec=spec,
                                      artifact=work.onnx, judgement=Judgement.parse(atol="1e-6", rtol="0"))
    [scores] = report.numerical
    assert report.outcome == "PASS" and scores.passed and scores.max_abs_error <= 1e-6, report.verdict
    assert report.n_samples == 160
    assert any(f"({convention})" in note for note in report.notes), report.notes

    # The served preprocess model alone, against the plain numpy computation (NaN pads, over-length events).
    with TritonRunner(ServerTarget(server.grpc_url), f"{name}_preprocess") as runner:
        for kind in RAW_REQUESTS:
            produced = runner.run(_raw_request(kind))
            expected = _plain_outputs(_raw_request(kind), convention)
            for group in GROUPS:
                assert produced[group].shape == expected[group].shape, (kind, group)
                np.testing.assert_array_equal(produced[group], expected[group], err_msg=f"{kind} {group}")

    # The events exercise the conventions: the other convention's inline scores differ from the served ones.
    other = inline_reference(work.events, work.onnx, spec, "weaver" if convention == "cmssw" else "cmssw", MAX_BATCH)
    with TritonRunner(ServerTarget(server.grpc_url), f"{name}_ensemble") as runner:
        served = runner.run_chunked(other.inputs, MAX_BATCH)["scores"]
    assert np.abs(served - other.outputs["scores"]).max() > 1e-3


@pytest.mark.server
@pytest.mark.timeout(600)
def test_validate_cli_checks_the_ensemble_with_root_events(work, server):
    args = ["validate", "--server", server.grpc_url, "--model", "pnw_ensemble", "--data", str(work.events),
            "--spec", str(work.spec_path), "--artifact", str(work.onnx), "--atol", "1e-6"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "scores" in result.output, result.output
    missing = CliRunner().invoke(main, args[:-4])
    assert missing.exit_code == 2 and "--artifact MODEL.onnx" in missing.output, missing.output


def test_the_build_publishes_the_ensemble_of_a_spec_with_preprocessing(work, tmp_path):
    """`build`'s publish step: a spec with data.preprocess also publishes <name>_preprocess and <name>_ensemble
    (its model step the Python-backend twin when the spec asks for one), and the repository checks clean."""
    from hepdeploy.pipeline import _publish_step
    from hepdeploy.spec import load_spec
    from hepdeploy.triton.check import check_repository
    from hepdeploy.triton.config import read_model_config

    spec = load_spec(work.spec_path)
    spec = spec.model_copy(update={"triton": spec.triton.model_copy(update={"python_backend": True})})
    repo = tmp_path / "model_repository"
    step = _publish_step(repo, spec, {"fp32": work.onnx}, {}, {})
    assert step.status == "ok", step
    assert {p.parent.name for p in step.outputs} == {"pn", "pn_py", "pn_preprocess", "pn_ensemble"}
    ensemble = read_model_config(repo / "pn_ensemble" / "config.pbtxt")
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["pn_preprocess", "pn_py"]
    assert check_repository(repo, run_models=False) == []
