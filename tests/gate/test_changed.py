"""Which models changed since a git ref: a temporary git repository holding a model repository (in a
subfolder, as a cms-data-like repository keeps it) with two commits."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hepdeploy.errors import RepositoryError
from hepdeploy.gate.changed import changed_models

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

CONFIG_A = ('name: "jet_a"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\n'
            'output [{ name: "output" data_type: TYPE_FP32 dims: [5] label_filename: "classes.txt" }]\n')
LABELS_A = "g\nq\nW\nZ\nt\n"


def git(work: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@example.org",
                           "-c", "commit.gpgsign=false", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    """A git work tree whose ``models/`` holds jet_a and jet_b, version 1 each, committed once."""
    work = tmp_path / "cms-data"
    for name in ("jet_a", "jet_b"):
        model = work / "models" / name
        (model / "1").mkdir(parents=True)
        (model / "config.pbtxt").write_text(CONFIG_A.replace("jet_a", name))
        (model / "labels.txt").write_text(LABELS_A)
        (model / "classes.txt").write_text(LABELS_A)
        (model / "1" / "preprocess.json").write_text('{"input_names": ["jet"]}')
        (model / "1" / "model.onnx").write_bytes(bytes(range(256)) * 8)
        (model / "1" / "hepdeploy-manifest.json").write_text('{"schema": 2}\n')
    (work / "README.md").write_text("models\n")
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    git(work, "add", "-A")
    git(work, "commit", "-qm", "version 1 of both")
    return work


def test_a_new_version_of_one_model(work: Path) -> None:
    model = work / "models" / "jet_a"
    shutil.copytree(model / "1", model / "2")
    (model / "2" / "model.onnx").write_bytes(b"another network")
    (model / "labels.txt").write_text("q\ng\nW\nZ\nt\n")  # what N's labels were must still be readable
    git(work, "add", "-A")
    git(work, "commit", "-qm", "jet_a version 2")
    (work / "README.md").write_text("models, changed\n")  # beside the models: not a model

    changed = changed_models(work / "models", "HEAD~1")
    assert [m.name for m in changed] == ["jet_a"]
    a = changed[0]
    assert a.new_versions == [2] and a.versions_at_ref == [1] and a.baseline_version == 1
    assert a.changed_files == {} and a.removed_versions == []
    assert a.changed_model_files == {"labels.txt": "M"}
    assert a.config_at_ref == CONFIG_A and a.labels_at_ref == LABELS_A
    assert a.files_at_ref == {"config.pbtxt": CONFIG_A.encode(), "labels.txt": LABELS_A.encode(),
                              "classes.txt": LABELS_A.encode(), "preprocess.json": None,
                              "1/preprocess.json": b'{"input_names": ["jet"]}'}
    assert a.folder == work / "models" / "jet_a"


def test_a_flipped_byte_in_a_published_version_uncommitted(work: Path) -> None:
    onnx = work / "models" / "jet_a" / "1" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[100] ^= 0xFF
    onnx.write_bytes(bytes(data))  # not committed: the working tree counts
    (work / "models" / "jet_a" / "1" / "extra.bin").write_bytes(b"x")  # untracked, inside a published version

    changed = changed_models(work / "models", "main")
    assert [m.name for m in changed] == ["jet_a"]
    assert changed[0].changed_files == {"1/model.onnx": "M", "1/extra.bin": "A"}
    assert changed[0].new_versions == []
    assert changed[0].changed_existing == ["jet_a/1/extra.bin", "jet_a/1/model.onnx"]


def test_the_repository_at_the_top_of_the_work_tree_and_a_removed_version(work: Path) -> None:
    git(work, "rm", "-rq", "models/jet_b/1")
    changed = changed_models(work, "HEAD")  # the work tree's top: the model folder is models/, not a model
    assert [m.name for m in changed] == ["models"]
    changed = changed_models(work / "models", "HEAD")
    assert [(m.name, m.removed_versions, m.new_versions) for m in changed] == [("jet_b", [1], [])]
    assert changed[0].changed_files == {"1/hepdeploy-manifest.json": "D", "1/model.onnx": "D",
                                        "1/preprocess.json": "D"}


def test_nothing_changed(work: Path) -> None:
    assert changed_models(work / "models", "HEAD") == []


def test_bad_ref_or_no_git_repository(work: Path, tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="--changed-since 'no-such-ref': not a commit"):
        changed_models(work / "models", "no-such-ref")
    with pytest.raises(RepositoryError, match="not a commit"):
        changed_models(work / "models", "--output=/tmp/x")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RepositoryError, match="not inside a git work tree"):
        changed_models(plain, "HEAD")
    with pytest.raises(RepositoryError, match="model repository not found"):
        changed_models(tmp_path / "absent", "HEAD")
