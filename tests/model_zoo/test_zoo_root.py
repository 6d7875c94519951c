"""``hepdeploy zoo export NAME --root``: the zoo's jets as NanoAOD-like ntuples that read back, through the
spec's data mapping and the preprocess.json, into exactly the .npz sets' tensors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from hepdeploy.cli import main
from hepdeploy.data import load_calibration, load_tensors, read_root_events
from hepdeploy.model_zoo import ExportOptions, ZooExport, export_network
from hepdeploy.model_zoo.root_export import root_layout
from hepdeploy.spec import DataSpec, load_spec
from hepdeploy.validate.reference import load_data_file
from hepdeploy.weaver import load_config, mask_owners

REFERENCE_EVENTS = 600


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, zoo_cache_dir: Path) -> dict[str, ZooExport]:
    """particlenet and jet_mlp (torch) exported with --root: cached or seeded untrained weights, small sets."""
    out = tmp_path_factory.mktemp("zoo-root")
    return {name: export_network(name, out / name, ExportOptions(flavour=flavour, train=False, budget="reduced",
                                                                 cache_dir=zoo_cache_dir,
                                                                 reference_samples=REFERENCE_EVENTS, root=True))
            for name, flavour in (("particlenet", None), ("jet_mlp", "torch"))}


def _branches(path: Path) -> dict[str, str]:
    import uproot

    with uproot.open(path) as handle:
        assert [k.split(";")[0] for k in handle.keys()] == ["Events"]
        return dict(handle["Events"].typenames())


def test_particlenet_ntuple_is_nanoaod_like(exported: dict[str, ZooExport]) -> None:
    import uproot

    result = exported["particlenet"]
    assert result.root is not None and result.root_spec_path is not None
    assert result.root_spec_path.name == "particlenet_root.yaml"
    types = _branches(result.root.reference)
    assert types["nPFCands"].startswith("int") and types["nSV"].startswith("int")
    pf = {b for b in types if b.startswith("PFCands_")}
    sv = {b for b in types if b.startswith("SV_")}
    # 2 point coordinates + 20 (11) features; the points' etarel/phirel are also features (scaled by 10)
    assert len(pf) == 20 and len(sv) == 11
    assert {"PFCands_pt_log", "PFCands_normchi2", "PFCands_dxysig", "SV_ntracks", "Jet_pt", "Jet_eta"} <= set(types)
    assert all(types[b].endswith("[]") for b in pf | sv) and types["Jet_pt"] == "float"
    assert sorted(b for b in types if b.startswith("label_")) == sorted(f"label_{c}" for c in ("b", "bb", "c", "uds", "g"))
    npz = load_tensors(result.reference_path)
    with uproot.open(result.root.reference) as handle:
        tree = handle["Events"]
        assert tree.num_entries == REFERENCE_EVENTS
        n_pf = tree["nPFCands"].array(library="np")
        n_sv = tree["nSV"].array(library="np")
    np.testing.assert_array_equal(n_pf, npz["pf_mask"].sum(axis=(1, 2)))
    np.testing.assert_array_equal(n_sv, npz["sv_mask"].sum(axis=(1, 2)))
    # The spec maps the files, the json and the one-hot labels; everything else is the .npz spec's.
    root_spec, npz_spec = load_spec(result.root_spec_path), load_spec(result.spec_path)
    written = yaml.safe_load(result.root_spec_path.read_text(encoding="utf-8"))
    assert written["data"]["reference"] == "particlenet_reference.root"  # relative on disk: the folder can move
    assert root_spec.data.reference == str(result.root_spec_path.parent.resolve() / "particlenet_reference.root")
    assert root_spec.data.root_tree == "Events"
    assert root_spec.data.preprocess is not None and root_spec.data.preprocess.convention == "cmssw"
    assert root_spec.model_dump(exclude={"data"}) == npz_spec.model_dump(exclude={"data"})


def test_jet_mlp_ntuple_is_flat(exported: dict[str, ZooExport]) -> None:
    result = exported["jet_mlp"]
    types = _branches(result.root.reference)  # type: ignore[union-attr]
    features = [b for b in types if b.startswith("Jet_hl_")]
    assert len(features) == 16 and all(types[b] == "float" for b in features)
    assert not any(b.startswith("n") for b in types)  # no collections: one value per jet and branch
    spec = load_spec(result.root_spec_path)  # type: ignore[arg-type]
    assert spec.data.preprocess is None and spec.data.inputs["input_1"].branches == features


@pytest.mark.parametrize("name", ["particlenet", "jet_mlp"])
def test_root_sets_read_back_as_the_npz_sets(exported: dict[str, ZooExport], name: str) -> None:
    result = exported[name]
    spec = load_spec(result.root_spec_path)  # type: ignore[arg-type]
    from_root = load_data_file(Path(spec.data.reference), spec)
    npz = load_tensors(result.reference_path)
    assert set(from_root) == set(npz)
    for key, expected in npz.items():
        got = from_root[key]
        assert got.shape == expected.shape and got.dtype == expected.dtype, key
        if key in {t.name for t in spec.inputs}:
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=key)
        else:  # labels and binning variables: identical
            np.testing.assert_array_equal(got, expected, err_msg=key)
    # Calibration: the same events drawn with the same seed as from the .npz.
    samples = spec.data.calibration_samples
    from_root = load_calibration(Path(spec.data.calibration), list(spec.inputs), samples, spec.data.seed,
                                 data_spec=spec.data)
    npz = load_calibration(result.calibration_path, list(spec.inputs), samples, spec.data.seed)
    for key, expected in npz.items():
        np.testing.assert_allclose(from_root[key], expected, rtol=0, atol=1e-5, err_msg=key)


def test_preprocess_json_is_weaver_format(exported: dict[str, ZooExport]) -> None:
    pn = exported["particlenet"].root.preprocess  # type: ignore[union-attr]
    raw = json.loads(pn.read_text())
    assert raw["output_names"] == ["label_b", "label_bb", "label_c", "label_uds", "label_g"]
    assert raw["input_names"] == ["pf_points", "pf_features", "pf_mask", "sv_points", "sv_features", "sv_mask"]
    assert set(raw["pf_features"]) == {"var_names", "var_infos", "min_length", "max_length"}
    assert set(raw["pf_features"]["var_infos"]["pfcand_normchi2"]) == {
        "median", "norm_factor", "replace_inf_value", "lower_bound", "upper_bound", "pad"}
    config = load_config(pn)
    # Lengths pad to what the .npz sets hold (50 particles, 5 SVs), within the model's n_pf/n_sv ranges.
    assert (config.groups["pf_features"].min_length, config.groups["pf_features"].max_length) == (50, 100)
    assert (config.groups["sv_mask"].min_length, config.groups["sv_mask"].max_length) == (5, 10)
    assert len(config.groups["pf_features"].var_names) == 20 and len(config.groups["sv_features"].var_names) == 11
    assert mask_owners(config) == {"pf_mask": "pf_points", "sv_mask": "sv_points"}
    chi2 = config.groups["pf_features"].var_infos[config.groups["pf_features"].var_names.index("pfcand_normchi2")]
    assert chi2.replace_inf_value == chi2.median != 0  # cmssw maps a missing chi2 to exactly 0

    mlp = load_config(exported["jet_mlp"].root.preprocess)  # type: ignore[union-attr]
    group = mlp.groups["input_1"]
    assert mlp.input_names == ("input_1",) and group.flat and len(group.var_names) == 16
    assert all(i.median == 0 and i.norm_factor == 1 and i.upper_bound >= 1e32 for i in group.var_infos)


def test_jet_mlp_json_is_an_identity(exported: dict[str, ZooExport]) -> None:
    """The jet MLP's json read through the spec changes nothing."""
    result = exported["jet_mlp"]
    spec = load_spec(result.root_spec_path)  # type: ignore[arg-type]
    with_json = DataSpec.model_validate(
        {**spec.data.model_dump(), "preprocess": {"file": str(result.root.preprocess)}})  # type: ignore[union-attr]
    plain = read_root_events(Path(spec.data.reference), list(spec.inputs), spec.data)
    through = read_root_events(Path(spec.data.reference), list(spec.inputs), with_json)
    np.testing.assert_array_equal(plain["input_1"], through["input_1"])


def test_conventions_differ_exactly_where_the_file_holds_inf(exported: dict[str, ZooExport]) -> None:
    """Neutral particles: track chi2 +Inf, impact-parameter significances NaN. cmssw replaces them by the
    median (feature 0, as the model was trained); weaver clips Inf to the upper bound and sets NaN to 0
    afterwards, so the two differ at the Inf entries, and only there."""
    import awkward as ak
    import uproot

    result = exported["particlenet"]
    spec = load_spec(result.root_spec_path)  # type: ignore[arg-type]
    path = Path(spec.data.reference)
    cmssw = read_root_events(path, list(spec.inputs), spec.data, targets=False)
    weaver = read_root_events(path, list(spec.inputs), spec.data, targets=False, convention="weaver")
    branches = spec.data.inputs["pf_features"].branches
    assert branches is not None
    with uproot.open(path) as handle:
        raw = handle["Events"].arrays(branches, library="ak")
    length = cmssw["pf_features"].shape[2]
    padded = np.stack([ak.to_numpy(ak.fill_none(ak.pad_none(raw[b], length, clip=True), 0.0)) for b in branches], 1)
    inf, nan = np.isinf(padded), np.isnan(padded)
    assert inf.any() and nan.any()
    assert {branches[c] for c in np.nonzero(inf)[1]} == {"PFCands_normchi2"}
    assert {branches[c] for c in np.nonzero(nan)[1]} == {"PFCands_dxysig", "PFCands_dzsig"}
    charge = cmssw["pf_features"][:, branches.index("PFCands_charge"), :]
    mask = cmssw["pf_mask"][:, 0, :] > 0
    assert np.array_equal(inf.any(axis=1), mask & (charge == 0))  # every neutral, nothing else
    differ = cmssw["pf_features"] != weaver["pf_features"]
    np.testing.assert_array_equal(differ, inf)
    assert np.all(cmssw["pf_features"][inf | nan] == 0)
    chi2_upper = load_config(result.root.preprocess).groups["pf_features"].var_infos[  # type: ignore[union-attr]
        branches.index("PFCands_normchi2")].upper_bound
    assert np.all(weaver["pf_features"][inf] == np.float32(chi2_upper))
    assert np.all(weaver["pf_features"][nan] == 0)  # weaver's nan_to_num gives the same 0 for NaN
    for name in ("pf_points", "pf_mask", "sv_points", "sv_features", "sv_mask"):
        np.testing.assert_array_equal(cmssw[name], weaver[name], err_msg=name)


def test_cli_export_root_and_refusal(tmp_path: Path, zoo_cache_dir: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "mlp"
    result = runner.invoke(main, ["zoo", "export", "jet_mlp", "--flavour", "torch", "--no-train", "--root",
                                  "--reference-samples", "300", "-o", str(out), "--cache", str(zoo_cache_dir)])
    assert result.exit_code == 0, result.output
    for name in ("jet_mlp_torch_root.yaml", "jet_mlp_torch_reference.root", "jet_mlp_torch_calibration.root",
                 "jet_mlp_torch_preprocess.json"):
        assert (out / name).is_file() and str(out / name) in result.output, name
    refused = runner.invoke(main, ["zoo", "export", "facile", "--root", "-o", str(tmp_path / "facile")])
    assert refused.exit_code == 2
    assert "facile: --root writes ROOT ntuples for jet_mlp, particlenet only" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "facile").exists()
    with pytest.raises(Exception, match="jet_mlp, particlenet only"):
        root_layout("deepjet")


@pytest.mark.slow
def test_build_calibrates_and_validates_the_jet_mlp_from_root(exported: dict[str, ZooExport], tmp_path: Path) -> None:
    """The ROOT spec alone (the .npz sets removed) through `hepdeploy build`: the reference comes from the
    reference ntuple, int8 calibrates on the calibration ntuple, and the fp32 verdict passes. (The int8
    verdict of the reduced-budget model on 600 jets is not the point here: it may be rejected.)"""
    source = exported["jet_mlp"]
    folder = tmp_path / "export"
    shutil.copytree(source.spec_path.parent, folder)
    for npz in folder.glob("*.npz"):
        npz.unlink()
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(folder / "jet_mlp_torch_root.yaml"), "--variant", "fp32",
                                       "--variant", "int8-cpu", "--no-publish", "-o", str(out)], catch_exceptions=False)
    summary = json.loads((out / "build-summary.json").read_text())
    steps = {s["step"]: s for s in summary["models"][0]["steps"]}
    assert steps["reference"]["status"] == "ok" and steps["reference"]["reason"] == \
        "source model on jet_mlp_torch_reference.root", steps["reference"]
    assert steps["reference"]["details"]["samples"] == REFERENCE_EVENTS
    assert steps["optimize:int8-cpu"]["status"] == "ok", steps["optimize:int8-cpu"]
    assert steps["optimize:int8-cpu"]["details"]["calibration_samples"] == 512  # drawn from the ntuple
    assert steps["optimize:int8-cpu"]["details"]["calibration_data"] == str(folder / "jet_mlp_torch_calibration.root")
    sidecar = json.loads((out / "jet_mlp_torch" / "variants" / "jet_mlp_torch_int8_cpu.json").read_text())
    assert any(step.get("parameters", {}).get("calibration_samples") == 512 for step in sidecar["steps"])
    assert steps["validate:fp32"]["status"] == "ok" and steps["validate:fp32"]["details"]["passed"] is True
    report = json.loads((out / "jet_mlp_torch" / "reports" / "report.json").read_text())
    assert str(folder / "jet_mlp_torch_reference.root") in json.dumps(report)  # the golden set's provenance
    assert steps["validate:int8-cpu"]["status"] in ("ok", "rejected")  # validated on the ROOT reference
    assert not any(s["status"] == "failed" for name, s in steps.items() if not name.endswith(":int8-cpu")), steps
    assert result.exit_code == (0 if summary["passed"] else 1), result.output


def test_preprocess_check_with_the_spec_mapping_reports_the_inf_chi2(exported: dict[str, ZooExport],
                                                                     tmp_path: Path) -> None:
    """`preprocess check --spec`: the json's var names are not the branch names; the spec maps them, and the
    report names the one variable where the conventions part (the neutrals' +Inf chi2), with its count."""
    import json as json_module

    from click.testing import CliRunner

    from hepdeploy.cli import main

    result = exported["particlenet"]
    spec = load_spec(result.root_spec_path)  # type: ignore[arg-type]
    path = Path(spec.data.reference)
    cmssw = read_root_events(path, list(spec.inputs), spec.data, targets=False)
    weaver = read_root_events(path, list(spec.inputs), spec.data, targets=False, convention="weaver")
    differing = int((cmssw["pf_features"] != weaver["pf_features"]).sum())
    run = CliRunner().invoke(main, ["preprocess", "check", str(result.root.preprocess), "--data", str(path),  # type: ignore[union-attr]
                                    "--spec", str(result.root_spec_path), "--json", str(tmp_path / "parity.json")])
    assert run.exit_code == 0, run.output
    report = json_module.loads((tmp_path / "parity.json").read_text())
    groups = {g["group"]: g for g in report["groups"]}
    assert groups["pf_features"]["variables"] == {"pfcand_normchi2": differing} and differing > 0
    assert all(g["differing"] == 0 for name, g in groups.items() if name != "pf_features")
    bare = CliRunner().invoke(main, ["preprocess", "check", str(result.root.preprocess), "--data", str(path)])  # type: ignore[union-attr]
    assert bare.exit_code == 2 and "no branch" in bare.output  # without the spec: the json's names are not branches
