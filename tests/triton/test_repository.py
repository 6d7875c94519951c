"""Versioned, atomic publishing: versions never modified, a SIGKILL or a failure mid-publish changes nothing."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hepdeploy.errors import BadInputError, RepositoryError, SpecError, UnsafeNameError
from hepdeploy.fsutil import sha256_file
from hepdeploy.triton import repository
from hepdeploy.triton.check import check_repository
from hepdeploy.triton.config import read_model_config
from hepdeploy.triton.layout import newest_manifest
from hepdeploy.triton.plan import ModelRequest, PublicationRequest, plan_publication, spec_publication
from hepdeploy.triton.repository import (
    MANIFEST_NAME,
    publish,
    publish_model,
    staging_root,
)


def test_publish_adds_versions_and_never_touches_old_ones(tmp_path, models, facile_spec, facile_golden, snapshot):
    repo = tmp_path / "model_repository"
    first = publish_model(repo, ModelRequest(models["facile"], name="facile", spec=facile_spec, warmup_inputs=facile_golden, verdict={"passed": True, "variant": "fp32"}))
    assert (first.version, first.version_dir) == (1, repo / "facile" / "1")
    before = snapshot(repo / "facile" / "1")
    inode = os.stat(repo / "facile" / "1" / "model.onnx").st_ino

    second = publish_model(repo, ModelRequest(models["facile_other"], name="facile", spec=facile_spec, warmup_inputs=facile_golden))
    assert second.version == 2 and not second.config_changed
    assert snapshot(repo / "facile" / "1") == before  # same bytes ...
    assert os.stat(repo / "facile" / "1" / "model.onnx").st_ino == inode  # ... same file, not a copy

    manifest = json.loads((repo / "facile" / "1" / MANIFEST_NAME).read_text())
    assert manifest["files"]["model.onnx"] == sha256_file(models["facile"])
    assert manifest["verdict"] == {"passed": True, "variant": "fp32"}
    assert manifest["version"] == 1 and manifest["hepdeploy_version"]
    assert (repo / "facile" / "warmup" / "input").stat().st_size == 47 * 4
    readme = (repo / "facile" / "README.md").read_text()
    assert "perf_analyzer -m facile --shape input:47 -b 16000" in readme
    assert check_repository(repo) == []
    # staging happened next to the repository, never inside it
    assert staging_root(repo).parent == repo.resolve().parent
    assert sorted(p.name for p in repo.iterdir()) == ["facile"]


def test_gpu_and_cpu_twins(tmp_path, models, facile_spec, facile_golden):
    repo = tmp_path / "repo"
    request = PublicationRequest(
        ModelRequest(models["facile"], "facile", spec=facile_spec, warmup_inputs=facile_golden,
                     verdict={"passed": True}),
        cpu_twin=models["facile_other"], cpu_twin_verdict={"passed": True, "variant": "int8-cpu"})
    results = publish(repo, plan_publication(request))
    assert [r.name for r in results] == ["facile", "facile_cpu"]
    twin = newest_manifest(repo / "facile_cpu")
    assert (twin.role, twin.twin_of, twin.verdict["variant"]) == ("cpu_twin", "facile", "int8-cpu")
    assert (newest_manifest(repo / "facile").role, newest_manifest(repo / "facile").twin_of) == ("model", None)
    gpu = read_model_config(repo / "facile" / "config.pbtxt")
    cpu = read_model_config(repo / "facile_cpu" / "config.pbtxt")
    assert gpu.instance_group[0].kind == gpu.instance_group[0].KIND_GPU
    assert cpu.instance_group[0].kind == cpu.instance_group[0].KIND_CPU
    assert cpu.parameters["intra_op_thread_count"].string_value == "1"
    assert [t.name for t in cpu.input] == [t.name for t in gpu.input]
    assert check_repository(repo) == []


def test_interaction_network_publishes_without_batch_axis(tmp_path, models, interaction_spec, interaction_golden):
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(models["interaction"], name="interaction_network", spec=interaction_spec, warmup_inputs=interaction_golden))
    text = (repo / "interaction_network" / "config.pbtxt").read_text()
    assert "max_batch_size: 0" in text
    readme = (repo / "interaction_network" / "README.md").read_text()
    assert "--shape x:30,3 --shape edge_index:2,90" in readme
    assert check_repository(repo) == []


@pytest.mark.parametrize("bad", ["a/b", "..", "my model", "../escape"])
def test_unsafe_names_leave_repository_untouched(tmp_path, models, bad, snapshot):
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(models["facile"], name="facile"))
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeNameError):
        publish_model(repo, ModelRequest(models["facile"], name=bad))
    assert snapshot(tmp_path) == before


def test_max_batch_on_model_without_batch_axis(tmp_path, models, interaction_spec, snapshot):
    repo = tmp_path / "repo"
    repo.mkdir()
    settings = interaction_spec.triton.model_copy(update={"max_batch_size": 16})
    with pytest.raises(SpecError, match="free batch axis"):
        publish_model(repo, ModelRequest(models["interaction"], name="in", spec=interaction_spec, triton=settings))
    assert snapshot(repo) == {}


def test_preferred_batch_above_max(tmp_path, models, facile_spec):
    settings = facile_spec.triton.model_copy(update={"max_batch_size": 1000})
    with pytest.raises(SpecError, match="preferred_batch_size"):
        publish_model(tmp_path / "repo", ModelRequest(models["facile"], name="facile", triton=settings))
    assert list(tmp_path.iterdir()) == []  # not even the repository folder was created


def test_broken_existing_config_is_left_untouched_and_reported(tmp_path, models, snapshot):
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(models["facile"], name="facile"))
    (repo / "facile" / "config.pbtxt").write_text("name: 'facile'\nmax_batch_size: {\n")
    before = snapshot(repo)
    with pytest.raises(RepositoryError, match="not a valid model config.*nothing changed"):
        publish_model(repo, ModelRequest(models["facile"], name="facile"))
    assert snapshot(repo) == before
    problems = check_repository(repo)
    assert len(problems) == 1 and "not a valid model config" in problems[0].message


def test_disk_full_while_staging_changes_nothing(tmp_path, models, monkeypatch, snapshot):
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(models["facile"], name="facile"))
    before = snapshot(tmp_path)

    def copy_until_disk_full(src: Path, dst: Path) -> None:  # the copy writes half, then the disk is full
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(repository, "_copy_file", copy_until_disk_full)
    with pytest.raises(RepositoryError, match="No space left on device.*nothing changed"):
        publish_model(repo, ModelRequest(models["facile_other"], name="facile"))
    staging = staging_root(repo)
    assert snapshot(tmp_path) == {**before, staging.name: "dir"} or snapshot(tmp_path) == before
    assert not any(staging.iterdir()) if staging.exists() else True
    assert check_repository(repo) == []


def test_permission_denied_at_commit_changes_nothing(tmp_path, models, monkeypatch, snapshot):
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(models["facile"], name="facile"))
    before = snapshot(repo)

    def refuse(a: Path, b: Path) -> bool:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(b))

    monkeypatch.setattr(repository, "_exchange", refuse)
    with pytest.raises(RepositoryError, match="Permission denied.*nothing changed"):
        publish_model(repo, ModelRequest(models["facile_other"], name="facile"))
    assert snapshot(repo) == before


def test_fallback_commit_by_renames(tmp_path, models, facile_spec, facile_golden, monkeypatch, snapshot):
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(models["facile"], name="facile", spec=facile_spec, warmup_inputs=facile_golden))
    before = snapshot(repo / "facile" / "1")
    monkeypatch.setattr(repository, "_exchange", lambda a, b: False)  # a file system without RENAME_EXCHANGE
    result = publish_model(repo, ModelRequest(models["facile_other"], name="facile", spec=facile_spec, warmup_inputs=facile_golden))
    assert result.version == 2 and snapshot(repo / "facile" / "1") == before
    assert check_repository(repo) == []


def test_python_backend_twin_with_extra_files(tmp_path, models, facile_spec):
    from hepdeploy.triton.config import build_model_config

    config = build_model_config(models["facile"], facile_spec.triton, name="facile_py", kind="cpu")
    config.ClearField("platform")
    config.backend = "python"
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(models["facile"], name="facile_py", platform="python", config=config, extra_files={"model.py": b"class TritonPythonModel:\n    pass\n"}))
    version = repo / "facile_py" / "1"
    assert sorted(p.name for p in version.iterdir()) == [MANIFEST_NAME, "model.onnx", "model.py"]
    assert check_repository(repo) == []
    (version / "model.py").unlink()
    messages = [p.message for p in check_repository(repo)]
    assert any("model.py is missing" in m for m in messages)


def test_missing_model_file_and_plan_without_spec(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        publish_model(tmp_path / "repo", ModelRequest(tmp_path / "nope.onnx", name="x"))
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not really an engine")
    with pytest.raises(BadInputError, match="needs --spec"):
        publish_model(tmp_path / "repo", ModelRequest(plan, name="x"), verify=False)


@pytest.mark.slow
def test_sigkill_mid_copy_leaves_repository_exactly_as_it_was(tmp_path, models, build_mlp, snapshot):
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(models["facile"], name="facile"))
    big = build_mlp(tmp_path / "big.onnx", seed=5, hidden=40000)  # ~7.5 MB: several 1 MiB copy chunks
    before = snapshot(repo)

    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from hepdeploy.triton.repository import publish_model
        from hepdeploy.triton.plan import ModelRequest
        publish_model(Path({str(repo)!r}), ModelRequest(Path({str(big)!r}), name="facile"))
        """
    )
    env = {**os.environ, "HEPDEPLOY_TEST_SLOW_COPY": "0.5", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", script], env=env)
    staging = staging_root(repo)
    deadline = time.monotonic() + 60
    partial = None
    try:
        while time.monotonic() < deadline and partial is None:
            for path in staging.glob("publish-*/facile/2/model.onnx") if staging.exists() else []:
                if 0 < path.stat().st_size < big.stat().st_size:
                    partial = path
            time.sleep(0.05)
        assert partial is not None, "the publishing process never started copying"
        assert child.poll() is None
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert snapshot(repo) == before  # tree and bytes unchanged
    assert check_repository(repo) == []
    # the next publish clears the killed one's leftovers and takes version 2
    assert publish_model(repo, ModelRequest(models["facile_other"], name="facile")).version == 2
    assert not staging.exists()  # the leftovers cleared, and the staging folder removed once empty
    assert np.array_equal(sorted(os.listdir(repo / "facile")), sorted(["1", "2", "README.md", "config.pbtxt"]))


def test_published_files_are_world_readable(tmp_path, models, facile_spec, facile_golden):
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(models["facile"], name="facile", spec=facile_spec, warmup_inputs=facile_golden))
    for path in [repo / "facile" / "config.pbtxt", repo / "facile" / "warmup" / "input",
                 repo / "facile" / "1" / MANIFEST_NAME, repo / "facile" / "README.md"]:
        assert path.stat().st_mode & 0o444 == 0o444, path  # a server running as another user can read it


@pytest.mark.slow
def test_sigkill_at_any_moment_gives_old_or_complete_new_model(tmp_path, models, build_mlp, snapshot):
    """Kill publishes at spread-out moments: the repository is either untouched or has the full new version."""
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(models["facile"], name="facile"))
    big = build_mlp(tmp_path / "big.onnx", seed=6, hidden=12000)  # ~2.3 MB: three slowed copy chunks
    script = f"from pathlib import Path\nfrom hepdeploy.triton.plan import ModelRequest\nfrom hepdeploy.triton.repository import publish_model\n" \
             f"publish_model(Path({str(repo)!r}), ModelRequest(Path({str(big)!r}), name='facile'))\n"
    env = {**os.environ, "HEPDEPLOY_TEST_SLOW_COPY": "0.1", "OMP_NUM_THREADS": "1"}
    outcomes = set()
    for delay in (0.2, 0.5, 0.8, 1.1, 1.6, 3.0):
        before = snapshot(repo)
        child = subprocess.Popen([sys.executable, "-c", script], env=env)
        time.sleep(delay)
        child.kill()
        child.wait()
        after = snapshot(repo)
        assert check_repository(repo) == []
        if after == before:
            outcomes.add("untouched")
            continue
        outcomes.add("published")
        new_version = max(int(p.name) for p in (repo / "facile").iterdir() if p.name.isdigit())
        old_versions = {k: v for k, v in before.items() if k.split("/")[1:2] and k.split("/")[1].isdigit()}
        assert {k: after.get(k) for k in old_versions} == old_versions  # no existing version changed
        assert sha256_file(repo / "facile" / str(new_version) / "model.onnx") == sha256_file(big)
    assert "untouched" in outcomes  # at least one kill landed mid-publish


@pytest.mark.slow
def test_torchscript_model(tmp_path, facile_spec):
    torch = pytest.importorskip("torch")
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(47, 1)))
    path = tmp_path / "facile.pt"
    scripted.save(str(path))
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(path, name="facile_pt", spec=facile_spec))
    config = read_model_config(repo / "facile_pt" / "config.pbtxt")
    assert config.platform == "pytorch_libtorch" and (repo / "facile_pt" / "1" / "model.pt").is_file()
    assert check_repository(repo) == []
    (repo / "facile_pt" / "1" / "model.pt").write_bytes(b"garbage")
    (repo / "facile_pt" / "1" / MANIFEST_NAME).unlink()
    assert any("not a loadable TorchScript file" in p.message for p in check_repository(repo))


def test_existing_problems_do_not_block_but_new_ones_do(tmp_path, models, interaction_spec, facile_spec):
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(models["facile"], name="facile", spec=facile_spec))
    (repo / "facile" / "old").mkdir()  # a stray folder someone left: reported, but not ours to fix
    (repo / "facile" / "old" / "x").write_text("x")
    assert publish_model(repo, ModelRequest(models["facile_other"], name="facile", spec=facile_spec)).version == 2
    # a config the model cannot run with is a NEW problem: refused, nothing changed
    settings = facile_spec.triton.model_copy(update={"version_policy": "all"})
    with pytest.raises(RepositoryError, match="failed its check before publishing"):
        publish_model(repo, ModelRequest(models["interaction"], name="facile", spec=interaction_spec, triton=settings.model_copy(
            update={"max_batch_size": 0, "dynamic_batching": None})))
    assert sorted(p.name for p in (repo / "facile").iterdir() if p.name.isdigit()) == ["1", "2"]


def test_publish_spec_serves_the_spec_variants(tmp_path, models, facile_spec, facile_golden):
    spec = facile_spec.model_copy(deep=True)
    spec.triton.variant = "fp16"  # not built here: falls back to fp32, with a warning
    spec.triton.python_backend = True
    variants = {"fp32": models["facile"], "int8-cpu": models["facile_other"]}
    verdicts = {"fp32": {"passed": True, "variant": "fp32"}, "int8-cpu": {"passed": True, "variant": "int8-cpu"}}
    repo = tmp_path / "repo"
    results = publish(repo, plan_publication(spec_publication(spec, variants, verdicts=verdicts,
                                                              warmup_inputs=facile_golden)))
    assert [r.name for r in results] == ["facile", "facile_cpu", "facile_py"]
    gpu_manifest = json.loads((repo / "facile" / "1" / MANIFEST_NAME).read_text())
    assert gpu_manifest["files"]["model.onnx"] == sha256_file(models["facile"])  # the fp32 fallback
    cpu_manifest = json.loads((repo / "facile_cpu" / "1" / MANIFEST_NAME).read_text())
    assert cpu_manifest["verdict"]["variant"] == "int8-cpu"
    assert cpu_manifest["files"]["model.onnx"] == sha256_file(models["facile_other"])
    assert read_model_config(repo / "facile_py" / "config.pbtxt").backend == "python"
    assert [(m.role, m.twin_of) for m in map(newest_manifest, (repo / "facile_cpu", repo / "facile_py"))] == [
        ("cpu_twin", "facile"), ("python_twin", "facile")]
    assert check_repository(repo) == []


def test_savedmodel_folder_is_copied_whole(tmp_path, facile_spec):
    # A SavedModel is a folder; only its layout is checked here (loading it needs TensorFlow).
    saved = tmp_path / "facile_savedmodel"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"graph")
    (saved / "variables" / "variables.index").write_bytes(b"index")
    repo = tmp_path / "repo"
    result = publish_model(repo, ModelRequest(saved, name="facile_tf", spec=facile_spec))
    assert read_model_config(repo / "facile_tf" / "config.pbtxt").platform == "tensorflow_savedmodel"
    assert sorted(result.files) == ["model.savedmodel/saved_model.pb", "model.savedmodel/variables/variables.index"]
    assert check_repository(repo) == []
    (repo / "facile_tf" / "1" / "model.savedmodel" / "saved_model.pb").unlink()
    messages = [p.message for p in check_repository(repo)]
    assert any("not a SavedModel folder" in m for m in messages) and any("listed in the manifest" in m for m in messages)


def test_a_twin_finds_its_golden_set_through_its_manifest_not_its_name(tmp_path, models, facile_spec):
    from hepdeploy.serve_check import _golden_for

    repo = tmp_path / "repo"
    request = PublicationRequest(ModelRequest(models["facile"], "facile", spec=facile_spec),
                                 cpu_twin=models["facile_other"], python_twin=models["facile"])
    publish(repo, plan_publication(request))
    publish_model(repo, ModelRequest(models["facile_other"], "other_py", spec=facile_spec))  # a name, not a twin
    goldens = {"facile": tmp_path / "facile.npz", "other": tmp_path / "other.npz"}
    assert [_golden_for(repo, n, goldens) for n in ("facile", "facile_cpu", "facile_py")] == [goldens["facile"]] * 3
    assert _golden_for(repo, "other_py", goldens) is None  # its manifest says it twins nothing
    manifest = json.loads((repo / "facile_py" / "1" / MANIFEST_NAME).read_text())
    del manifest["role"], manifest["twin_of"]  # as a schema-1 manifest (published before roles) reads
    (repo / "facile_py" / "1" / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert _golden_for(repo, "facile_py", goldens) is None
