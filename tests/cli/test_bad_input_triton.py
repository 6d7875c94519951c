"""Bad input, second campaign: publishing (triton add, check, supersonic, serve). A model is published
whole with its twins or not at all, a repository a server could not load does not pass, and nothing
is left beside the repository."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hepdeploy.cli import main
from hepdeploy.triton import repository


def _spec_variant(jet: dict[str, Path], tmp_path: Path, old: str, new: str) -> Path:
    spec = tmp_path / "variant.yaml"
    text = jet["spec"].read_text()
    assert old in text
    spec.write_text(text.replace(old, new).replace("path: jet_mlp.keras", f"path: {jet['folder'] / 'jet_mlp.keras'}"))
    return spec


@pytest.mark.parametrize("old, new, message", [
    ("name: input_1", "name: features", "the spec's inputs (features) are not the model's (input_1)"),
    ("  - batch\n  - 16", "  - batch\n  - 17", "input 'input_1' is ['batch', 17] in the spec but ['batch', 16]"),
    ("  - batch\n  - 16", "  - 16\n  - batch", "input 'input_1' is [16, 'batch'] in the spec"),
])
def test_triton_add_refuses_a_spec_whose_tensors_are_not_the_models(run, jet: dict[str, Path], tmp_path: Path, old: str,
                                                                      new: str, message: str) -> None:  # item 3
    repo = tmp_path / "repo"
    code, lines = run("triton", "add", repo, jet["model"], "--spec", _spec_variant(jet, tmp_path, old, new))
    assert code == 2 and message in lines[-1], lines
    assert not repo.exists()


def test_a_max_batch_size_above_the_batch_dims_max_is_refused(run, jet: dict[str, Path], tmp_path: Path) -> None:
    spec = _spec_variant(jet, tmp_path, "max_batch_size: 4096", "max_batch_size: 100000")  # item 3
    code, lines = run("triton", "add", tmp_path / "repo", jet["model"], "--spec", spec)
    assert code == 2 and "triton.max_batch_size 100000 is above dims.batch.max 4096" in lines[-1]


def test_a_twin_that_cannot_be_published_leaves_nothing_published(run, jet: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"  # item 9
    code, lines = run("triton", "add", repo, jet["model"], "--spec", jet["spec"], "--cpu-twin", jet["other"])
    assert code == 2 and lines[-1].startswith("error: jet_mlp_cpu: ") and "nothing was published" in lines[-1]
    assert not repo.exists()  # not the model without its twin, and no empty repository either
    code, lines = run("triton", "add", repo, jet["model"], "--cpu-twin", jet["other"], "--warmup", jet["golden"])
    assert code == 2 and "warm-up data lacks input 'input_1:0'" in lines[-1] and str(jet["golden"]) in lines[-1]
    assert not repo.exists()


def test_an_interrupt_between_models_takes_back_the_ones_already_in(jet: dict[str, Path], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # item 10
    """The model, its CPU twin and its Python twin are swapped in together: Ctrl-C before the last swap takes
    back the two already made, so a server never sees the model without its twins."""
    real, swaps = repository._commit, []

    def interrupted(*args):  # noqa: ANN002, ANN202 - Ctrl-C at the third swap
        swaps.append(args[1].name)
        if len(swaps) == 3:
            raise KeyboardInterrupt
        return real(*args)

    repo = tmp_path / "repo"
    assert CliRunner().invoke(main, ["triton", "add", str(repo), str(jet["model"]), "--name", "jet"]).exit_code == 0
    before = (repo / "jet" / "config.pbtxt").read_text()
    monkeypatch.setattr(repository, "_commit", interrupted)
    result = CliRunner().invoke(main, ["triton", "add", str(repo), str(jet["model"]), "--name", "jet",
                                       "--cpu-twin", str(jet["model"]), "--python-backend"])
    assert result.exit_code == 130 and swaps == ["jet", "jet_cpu", "jet_py"]
    assert sorted(p.name for p in repo.iterdir()) == ["jet"]  # jet_cpu taken back, jet_py never swapped in
    assert sorted(p.name for p in (repo / "jet").iterdir() if p.name.isdigit()) == ["1"]  # version 2 taken back
    assert (repo / "jet" / "config.pbtxt").read_text() == before


def test_publishing_leaves_nothing_beside_the_repository(run, jet: dict[str, Path], tmp_path: Path) -> None:  # item 16
    repo = tmp_path / "repo"
    assert run("triton", "add", repo, jet["model"], "--name", "jet")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no .repo.hepdeploy-staging
    code, lines = run("triton", "add", tmp_path / "fresh", jet["model"], "--name", "n" * 300)
    assert code == 2 and "Triton model name is 300 characters long; at most 200" in lines[-1]
    assert not (tmp_path / "fresh").exists()


def test_repository_paths_that_are_wrong_are_bad_input(run, jet: dict[str, Path], tmp_path: Path) -> None:  # items 12, 17
    code, lines = run("triton", "check", tmp_path / "absent")
    assert code == 2 and lines == [f"error: {tmp_path / 'absent'}: no such folder (a model repository)"]
    code, lines = run("triton", "add", "/proc/repo", jet["model"])
    assert code == 2 and "/proc/repo: folder /proc is not writable" in lines[-1]
    code, lines = run("triton", "serve", tmp_path / "absent")  # refused before any server is looked for
    assert code == 2 and lines == [f"error: {tmp_path / 'absent'}: no such folder (a model repository)"]


def test_triton_check_finds_a_looping_version_folder(run, jet: dict[str, Path], tmp_path: Path) -> None:  # item 5
    repo = tmp_path / "repo"
    assert run("triton", "add", repo, jet["model"], "--name", "jet")[0] == 0
    (repo / "jet" / "loopy").symlink_to(repo / "jet" / "2")
    (repo / "jet" / "2").symlink_to(repo / "jet" / "loopy")
    code, lines = run("triton", "check", repo)
    assert code == 1 and any("'2' is a symbolic link that leads nowhere" in line for line in lines), lines


def test_supersonic_refuses_values_kubernetes_or_triton_would_refuse(run, jet: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"  # item 7
    assert run("triton", "add", repo, jet["model"], "--name", "jet")[0] == 0
    out = tmp_path / "values.yaml"
    code, lines = run("triton", "supersonic", repo, "-o", out, "--claim", "Bad Claim/../x")
    assert code == 2 and "--claim 'Bad Claim/../x': not a name Kubernetes takes (RFC 1123" in lines[-1]
    code, lines = run("triton", "supersonic", repo, "-o", out, "--claim", "models", "--gpus", "1000")
    assert code == 2 and "--gpus 1000: no node has that many GPUs" in lines[-1]
    with (repo / "jet" / "1" / "model.onnx").open("ab") as handle:
        handle.write(b"changed after publishing")
    code, lines = run("triton", "supersonic", repo, "-o", out, "--claim", "models")
    assert code == 2 and "the repository fails `hepdeploy triton check`" in lines[-1]
    assert not out.exists()
