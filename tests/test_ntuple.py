"""ROOT ntuples mapped to model inputs (hepdeploy.ntuple through hepdeploy.data): files written here with
uproot, values checked against plain numpy, and one clear line for each kind of bad input."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from hepdeploy import ntuple
from hepdeploy.data import Draw, load_calibration, read_root_events
from hepdeploy.errors import DataError
from hepdeploy.spec import DataSpec, TensorSpec, spec_from_dict
from hepdeploy.weaver import load_config
from tests.test_weaver import REAL_JSON, plain_group

ak = pytest.importorskip("awkward")
uproot = pytest.importorskip("uproot")

N = 300


def jagged(counts: np.ndarray, values: np.ndarray) -> object:
    return ak.unflatten(values.astype(np.float32), counts)


def write_flat(path: Path, n: int = N, seed: int = 0, tree: str = "Events") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    branches = {f"f{i}": rng.normal(i, 1, n).astype(np.float32) for i in range(16)}
    branches["jet_pt"] = rng.uniform(30, 300, n).astype(np.float32)
    label = rng.integers(0, 3, n)
    branches.update({f"label_{c}": (label == i).astype(np.int32) for i, c in enumerate("bcl")})
    branches["cls"] = label.astype(np.int32)
    ntuple.write_ntuple(path, tree, branches)
    return {**branches, "label": label}


def write_jagged(path: Path, n: int = N, seed: int = 1, tree: str = "Events", max_n: int = 14) -> dict:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, max_n, n)
    counts[:3] = [0, max_n + 6, 1]  # an empty jet, an over-length one, a single particle
    total = int(counts.sum())
    pt = rng.exponential(10, total)
    eta = rng.normal(0, 1, total)
    sv_counts = rng.integers(0, 3, n)
    ntuple.write_ntuple(path, tree, {
        "PFCands": ak.zip({"pt": jagged(counts, pt), "eta": jagged(counts, eta)}),
        "SV": ak.zip({"mass": jagged(sv_counts, rng.uniform(0, 5, int(sv_counts.sum())))}),
        "Jet_pt": rng.uniform(30, 300, n).astype(np.float32),
    })
    return {"counts": counts, "pt": pt.astype(np.float32), "eta": eta.astype(np.float32), "sv_counts": sv_counts}


def padded(counts: np.ndarray, values: np.ndarray, length: int, pad: float = 0.0, order=None) -> np.ndarray:
    out = np.full((len(counts), length), pad, np.float32)
    start = 0
    for i, n in enumerate(counts):
        event = values[start:start + n]
        if order is not None:
            event = event[np.argsort(-order[start:start + n], kind="stable")]
        out[i, :min(n, length)] = event[:length]
        start += n
    return out


MLP = [TensorSpec(name="input_1", shape=["batch", 16])]


def test_flat_branches_stack_into_one_tensor_with_labels_and_variables(tmp_path: Path) -> None:
    raw = write_flat(tmp_path / "flat.root")
    data = DataSpec(inputs={"input_1": {"branches": [f"f{i}" for i in range(16)]}},
                    labels={"branches": ["label_b", "label_c", "label_l"]}, variables={"pt": {"branch": "jet_pt"}})
    out = read_root_events(tmp_path / "flat.root", MLP, data)
    np.testing.assert_array_equal(out["input_1"], np.stack([raw[f"f{i}"] for i in range(16)], axis=1))
    np.testing.assert_array_equal(out["labels"], raw["label"])
    np.testing.assert_array_equal(out["pt"], raw["jet_pt"])
    by_index = read_root_events(tmp_path / "flat.root", MLP, DataSpec(inputs=data.inputs, labels={"branch": "cls"}))
    np.testing.assert_array_equal(by_index["cls"], raw["label"])
    mixed = read_root_events(tmp_path / "flat.root", [TensorSpec(name="x", shape=["batch", 2])],
                             DataSpec(inputs={"x": {"branches": ["f0", "cls"]}}))
    assert mixed["x"].dtype == np.float32 and np.array_equal(mixed["x"][:, 1], raw["label"])  # an int branch feeds floats
    one = read_root_events(tmp_path / "flat.root", [TensorSpec(name="f3", shape=["batch"])], DataSpec())
    np.testing.assert_array_equal(one["f3"], raw["f3"])  # a rank-1 input from its own branch
    with pytest.raises(DataError, match="hold floating-point values but the input is int64"):
        read_root_events(tmp_path / "flat.root", [TensorSpec(name="x", shape=["batch", 1], dtype="int64")],
                         DataSpec(inputs={"x": {"branches": ["f0"]}}))


def test_jagged_branches_padded_sorted_and_masked(tmp_path: Path) -> None:
    raw = write_jagged(tmp_path / "j.root")
    inputs = [TensorSpec(name="pf", shape=["batch", 2, "n"]), TensorSpec(name="mask", shape=["batch", 1, "n"]),
              TensorSpec(name="pf_last", shape=["batch", "n", 2])]
    data = DataSpec(inputs={
        "pf": {"branches": ["PFCands_pt", "PFCands_eta"], "length": 10, "pad": -9},
        "mask": {"mask_of": "pf"},
        "pf_last": {"branches": ["PFCands_pt", "PFCands_eta"], "length": 10, "sort_by": "PFCands_pt",
                    "layout": "channels_last"}})
    out = read_root_events(tmp_path / "j.root", inputs, data)
    counts = raw["counts"]
    np.testing.assert_array_equal(out["pf"][:, 0], padded(counts, raw["pt"], 10, -9))  # stored order: no sorting
    np.testing.assert_array_equal(out["pf"][:, 1], padded(counts, raw["eta"], 10, -9))
    np.testing.assert_array_equal(out["mask"][:, 0], padded(counts, np.ones(counts.sum()), 10))
    np.testing.assert_array_equal(out["pf_last"][:, :, 0], padded(counts, raw["pt"], 10, order=raw["pt"]))
    np.testing.assert_array_equal(out["pf_last"][:, :, 1], padded(counts, raw["eta"], 10, order=raw["pt"]))
    assert out["pf"][0].tolist() == [[-9] * 10] * 2  # the empty jet is all padding


def test_several_files_a_glob_chunks_and_a_tree_in_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [write_jagged(tmp_path / f"part{i}.root", n=120, seed=i, tree="dir/Events") for i in range(3)]
    monkeypatch.setattr(ntuple, "CHUNK_ENTRIES", 50)  # chunk edges inside each file
    inputs = [TensorSpec(name="pf", shape=["batch", 1, "n"])]
    data = DataSpec(root_tree="dir/Events", inputs={"pf": {"branches": ["PFCands_pt"], "length": 12}})
    everything = read_root_events(tmp_path / "part*.root", inputs, data)
    want = np.concatenate([padded(p["counts"], p["pt"], 12) for p in parts])
    np.testing.assert_array_equal(everything["pf"][:, 0], want)
    chosen = load_calibration(tmp_path / "part*.root", inputs, samples=40, seed=5, data_spec=data)
    again = load_calibration(tmp_path / "part*.root", inputs, samples=40, seed=5, data_spec=data)
    np.testing.assert_array_equal(chosen["pf"], again["pf"])
    rows = {tuple(r) for r in want}
    assert all(tuple(r) in rows for r in chosen["pf"][:, 0])
    found = read_root_events(tmp_path / "part0.root", inputs, data.model_copy(update={"root_tree": None}))
    np.testing.assert_array_equal(found["pf"][:, 0], padded(parts[0]["counts"], parts[0]["pt"], 12))  # the only tree
    with uproot.update(tmp_path / "part0.root") as handle:
        handle.mktree("Other", {"x": np.float32}).extend({"x": np.zeros(3, np.float32)})
    with pytest.raises(DataError, match="name the tree to read .* Other, dir/Events"):
        read_root_events(tmp_path / "part0.root", inputs, data.model_copy(update={"root_tree": None}))


def write_hlt_like(path: Path, n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Jets with the raw branches the CMS HLT ParticleNet json names (jagged, NaN/Inf in the PF variables,
    an empty jet, a 64-particle jet, a jet with 7 SVs) and one-hot labels label_b/label_c/label_l."""
    config = load_config(REAL_JSON)
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 30, n)
    counts[:2] = [0, 64]
    sv_counts = rng.integers(0, 4, n)
    sv_counts[2] = 7
    values = {}
    pf_vars = config.groups["pf_points"].var_names + config.groups["pf_features"].var_names
    for var in dict.fromkeys(pf_vars):
        column = rng.normal(1, 3, int(counts.sum())).astype(np.float32)
        column[rng.random(column.size) < 0.05] = np.nan
        column[rng.random(column.size) < 0.05] = np.inf
        values[var] = column
    for var in dict.fromkeys(config.groups["sv_points"].var_names + config.groups["sv_features"].var_names):
        values[var] = rng.normal(2, 3, int(sv_counts.sum())).astype(np.float32)
    branches: dict = {v: jagged(counts if v.startswith("jet_pfcand") else sv_counts, c) for v, c in values.items()}
    label = rng.integers(0, 3, n)
    branches.update({f"label_{c}": (label == i).astype(np.int32) for i, c in enumerate("bcl")})
    ntuple.write_ntuple(path, "Events", branches)
    return counts, sv_counts, values


def test_a_real_preprocess_json_drives_the_mapping_unchanged(tmp_path: Path) -> None:
    """The CMS HLT ParticleNet AK4 json (min_length 16 / max_length 50): branches named by its var_names,
    masks from counts, NaN/Inf and over-length jets; values as each convention's own rule gives them."""
    config = load_config(REAL_JSON)
    pf, sv = config.groups["pf_features"], config.groups["sv_features"]
    n = 40
    counts, sv_counts, values = write_hlt_like(tmp_path / "hlt.root", n)
    shutil.copy(REAL_JSON, tmp_path / "preprocess.json")
    spec = spec_from_dict({
        "name": "pnet", "source": {"framework": "onnx", "path": "m.onnx"},
        "inputs": [{"name": g, "shape": ["batch", len(config.groups[g].var_names), "n_pf" if "pf" in g else "n_sv"]}
                   for g in config.input_names],
        "outputs": [{"name": "softmax", "shape": ["batch", 6]}],
        "data": {"preprocess": {"file": "preprocess.json"}}}, base_dir=tmp_path)
    for convention in ("cmssw", "weaver"):
        out = read_root_events(tmp_path / "hlt.root", list(spec.inputs), spec.data, convention=convention)
        assert out["pf_features"].shape == (n, 23, 50)  # the 64-particle jet: clamped to max_length
        assert out["sv_features"].shape == (n, 11, 5)
        for group, group_counts, length in ((pf, counts, 50), (sv, sv_counts, 5)):
            events, starts = [], np.concatenate([[0], np.cumsum(group_counts)])
            for i in range(n):
                events.append([list(values[v][starts[i]:starts[i + 1]]) for v in group.var_names])
            want = plain_group(group, events, convention, length)
            np.testing.assert_allclose(out[group.name], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out["pf_mask"][:, 0], padded(counts, np.ones(counts.sum()), 50))
        np.testing.assert_array_equal(out["sv_mask"][:, 0], padded(sv_counts, np.ones(sv_counts.sum()), 5))
    short = read_root_events(tmp_path / "hlt.root", list(spec.inputs), spec.data,
                             draw=Draw(samples=1, seed=0, allow_fewer=True))
    assert short["pf_features"].shape[-1] in range(16, 51)  # one jet: its own length, at least min_length
    assert math.isfinite(float(np.abs(short["pf_features"]).max()))


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    write_flat(tmp_path / "flat.root")
    write_jagged(tmp_path / "j.root")
    return tmp_path


@pytest.mark.parametrize("case, message", [
    ({"inputs": {"input_1": {"branches": ["f0", "nope"]}}}, "no branch nope"),
    ({"inputs": {"input_1": {"branches": ["PFCands_pt"]}}, "file": "j.root"}, "is jagged; give data.inputs.input_1.length"),
    ({"inputs": {"input_1": {"branches": ["PFCands_pt", "SV_mass"], "length": 16}}, "file": "j.root"},
     "differ in length at event"),
    ({"inputs": {"input_1": {"branches": ["f0"]}}, "labels": {"branch": "PFCands_pt"}, "file": "j.root"}, "no branch f0"),
    ({"inputs": {"input_1": {"branches": [f"f{i}" for i in range(16)]}}, "labels": {"branches": ["label_b", "label_c"]}},
     "do not have exactly one of label_b, label_c set"),
    ({"inputs": {"input_2": {"branches": ["f0"]}}}, "not an input of the model"),
    ({"root_tree": "Other"}, "no tree named 'Other'"),
])
def test_bad_mappings_are_refused_in_one_line(files: Path, case: dict, message: str) -> None:
    case = dict(case)
    name = case.pop("file", "flat.root")
    with pytest.raises(DataError, match=message) as error:
        read_root_events(files / name, MLP, DataSpec(**case))
    assert "\n" not in str(error.value)
    assert name in str(error.value) or "not an input of the model" in str(error.value)  # the line names the file


def test_labels_must_be_one_number_per_event(files: Path) -> None:
    data = DataSpec(inputs={"pf": {"branches": ["PFCands_pt"], "length": 4}}, labels={"branch": "PFCands_eta"})
    with pytest.raises(DataError, match="j.root.*not one number per event"):
        read_root_events(files / "j.root", [TensorSpec(name="pf", shape=["batch", 1, "n"])], data)


def test_corrupt_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "corrupt.root").write_bytes(b"not a root file at all" * 20)
    with pytest.raises(DataError, match="not a readable ROOT file"):
        read_root_events(tmp_path / "corrupt.root", MLP, DataSpec())
    ntuple.write_ntuple(tmp_path / "cut.root", "Events", {"input_1": np.ones((5000, 16), np.float32)})
    (tmp_path / "cut.root").write_bytes((tmp_path / "cut.root").read_bytes()[:2000])  # truncated in a copy
    with pytest.raises(DataError, match="cut.root: "):
        read_root_events(tmp_path / "cut.root", MLP, DataSpec())
    ntuple.write_ntuple(tmp_path / "empty.root", "Events", {"input_1": np.zeros((0, 16), np.float32)})
    with pytest.raises(DataError, match="holds no events"):
        read_root_events(tmp_path / "empty.root", MLP, DataSpec())
    with pytest.raises(DataError, match="no file matches"):
        read_root_events(tmp_path / "none_*.root", MLP, DataSpec())
    with pytest.raises(DataError, match="no such data file"):
        read_root_events(tmp_path / "absent.root", MLP, DataSpec())


def test_optimize_calibrates_from_sixteen_scalar_branches(tmp_path: Path) -> None:
    """The issue's first try: `--root-branch input_1=f0,...,f15` on a flat ntuple calibrates an INT8 model."""
    onnx = pytest.importorskip("onnx")
    from click.testing import CliRunner
    from onnx import TensorProto, helper, numpy_helper

    from hepdeploy.cli import main

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input_1", "w", "b"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"]), helper.make_node("Softmax", ["logits"], ["output"])],
        "mlp", [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(rng.normal(0, 0.3, (16, 32)).astype(np.float32), "w"),
         numpy_helper.from_array(np.zeros(32, np.float32), "b"),
         numpy_helper.from_array(rng.normal(0, 0.3, (32, 5)).astype(np.float32), "w2"),
         numpy_helper.from_array(np.zeros(5, np.float32), "b2")])
    model = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), model)
    write_flat(tmp_path / "flat.root")
    columns = ",".join(f"f{i}" for i in range(16))
    result = CliRunner().invoke(main, ["optimize", str(model), "--variant", "int8-cpu", "--calibration",
                                       str(tmp_path / "flat.root"), "--root-branch", f"input_1={columns}",
                                       "--samples", "64", "-o", str(tmp_path / "mlp.int8.onnx")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mlp.int8.onnx").is_file()
    refused = CliRunner().invoke(main, ["optimize", str(model), "--variant", "int8-cpu", "--calibration",
                                        str(tmp_path / "flat.root"), "--root-branch", "input_1=f0,f1,nope",
                                        "-o", str(tmp_path / "other.onnx")])
    assert refused.exit_code == 2 and "no branch nope" in refused.output
    assert not (tmp_path / "other.onnx").exists()


def test_foreign_names_a_batch_dim_named_n_and_a_fixed_batch_of_one(tmp_path: Path) -> None:
    """Models we did not make: a TensorFlow-style input name and a batch dim `N` map like any other, and a
    model exported with a fixed batch of 1 calibrates from the ntuple's rows."""
    raw = write_flat(tmp_path / "flat.root")
    columns = [f"f{i}" for i in range(16)]
    tf_input = [TensorSpec(name="ID_pred/input_1:0", shape=["N", 16])]
    data = DataSpec(inputs={"ID_pred/input_1:0": {"branches": columns}})
    out = read_root_events(tmp_path / "flat.root", tf_input, data)
    np.testing.assert_array_equal(out["ID_pred/input_1:0"], np.stack([raw[c] for c in columns], axis=1))
    fixed = [TensorSpec(name="input_1", shape=[1, 16])]
    rows = load_calibration(tmp_path / "flat.root", fixed, samples=20, seed=0,
                            data_spec=DataSpec(inputs={"input_1": {"branches": columns}}))
    assert rows["input_1"].shape == (20, 1, 16)
    assert {tuple(r) for r in rows["input_1"][:, 0]} <= {tuple(r) for r in out["ID_pred/input_1:0"]}
