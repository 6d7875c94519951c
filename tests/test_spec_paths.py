"""A spec's paths are resolved once, when it is loaded; a spec written back out loads to the same spec."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from hepdeploy.spec import load_spec, spec_from_dict, spec_to_yaml

SPEC = {
    "name": "tagger",
    "source": {"framework": "torch", "factory": "tagger_model:build", "weights": "weights/tagger.pt"},
    "inputs": [{"name": "x", "shape": ["batch", 4]}],
    "outputs": [{"name": "y", "shape": ["batch", 2]}],
    "data": {"calibration": "data/calib_*.root", "reference": "~/reference.npz",
             "preprocess": {"file": "data/preprocess.json"}},
}


def _write(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tagger.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_relative_paths_become_absolute_at_load(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path / "specs", SPEC))
    folder = (tmp_path / "specs").resolve()
    assert spec.source.weights == str(folder / "weights" / "tagger.pt")
    assert spec.data.calibration == str(folder / "data" / "calib_*.root")  # a glob stays a glob
    assert spec.data.preprocess is not None and spec.data.preprocess.file == str(folder / "data" / "preprocess.json")
    assert spec.data.reference == str(Path("~/reference.npz").expanduser())
    assert spec.source.factory_dir == str(folder)  # the factory's module is imported from the spec's folder


def test_without_a_folder_paths_are_relative_to_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = spec_from_dict(SPEC)
    assert spec.source.weights == str(tmp_path / "weights" / "tagger.pt")


def test_a_spec_written_into_its_folder_moves_with_it(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path / "a", SPEC))
    text = spec_to_yaml(spec, tmp_path / "a")
    written = yaml.safe_load(text)
    assert written["source"]["weights"] == "weights/tagger.pt"  # relative again
    assert "factory_dir" not in written["source"]  # the default: the spec's own folder
    assert written["data"]["reference"] == str(Path("~/reference.npz").expanduser())  # outside: absolute
    (tmp_path / "a" / "tagger.yaml").write_text(text, encoding="utf-8")
    assert load_spec(tmp_path / "a" / "tagger.yaml") == spec

    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = load_spec(tmp_path / "b" / "tagger.yaml")
    assert moved.source.weights == str((tmp_path / "b").resolve() / "weights" / "tagger.pt")
    assert moved.source.factory_dir == str((tmp_path / "b").resolve())


def test_a_spec_written_elsewhere_keeps_pointing_at_the_same_files(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path / "a", SPEC))
    copy = tmp_path / "artifacts" / "tagger.yaml"
    copy.parent.mkdir()
    copy.write_text(spec_to_yaml(spec, copy.parent), encoding="utf-8")
    assert load_spec(copy) == spec
    copy.write_text(spec_to_yaml(spec), encoding="utf-8")  # no folder: every path absolute
    assert load_spec(copy) == spec
