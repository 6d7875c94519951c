"""The gate's integrity check on a repository published by hepdeploy: untouched versions pass, a changed
byte or a changed file in a published version fails unless the overwrite is declared, and the candidate
may only go into a new version folder."""
from __future__ import annotations

import json
import shutil

import pytest

from hepdeploy.gate.integrity import check_integrity
from hepdeploy.triton.config import config_to_pbtxt, read_model_config, set_checksum_agent

pytestmark = pytest.mark.slow


def _flip_byte(path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_an_untouched_published_version_passes(published):
    result = check_integrity(published, candidate_version=2)
    assert result.check == "integrity" and result.outcome == "PASS", result.reason
    assert [f.name for f in result.findings if f.outcome == "PASS"] == ["candidate version", "jet_mlp/1"]
    json.dumps(result.to_dict())


def test_the_candidate_published_beside_n_is_checked_against_its_own_manifest(published, jet_versions):
    jet_versions.publish(published.parent, jet_versions.retrained)
    result = check_integrity(published, candidate_version=2, candidate_in_repository=True)
    assert result.outcome == "PASS", result.reason
    assert result.details["versions"] == [1]
    _flip_byte(published / "2" / "model.onnx")
    broken = check_integrity(published, candidate_version=2, candidate_in_repository=True, allow_overwrite="why not")
    assert broken.outcome == "FAIL"  # a broken candidate is not an overwrite a reason can excuse
    assert {f.path for f in broken.deciding()} == {"jet_mlp/2/model.onnx"}


def test_one_flipped_byte_in_a_published_model_fails_naming_the_file(published):
    _flip_byte(published / "1" / "model.onnx")
    result = check_integrity(published, candidate_version=2)
    assert result.outcome == "FAIL"
    assert {f.path for f in result.deciding()} == {"jet_mlp/1/model.onnx"}
    messages = " ".join(f.message for f in result.deciding())
    assert "sha256" in messages and "MD5" in messages  # the manifest and the checksum agent both see it
    assert "jet_mlp/1/model.onnx" in result.reason


def test_a_declared_overwrite_is_reported_with_its_reason_not_failed(published):
    _flip_byte(published / "1" / "model.onnx")
    reason = "re-exported with the fixed opset, same weights (PR 123)"
    result = check_integrity(published, candidate_version=2, allow_overwrite=reason)
    assert result.outcome == "PASS", result.reason
    assert result.details["allow_overwrite"] == reason
    assert {f.path for f in result.findings if f.outcome == "INFO"} == {"jet_mlp/1/model.onnx"}
    assert reason in result.reason


@pytest.mark.parametrize("version", [1, 0])
def test_the_candidate_may_not_go_into_or_below_a_published_folder(published, version):
    result = check_integrity(published, candidate_version=version)
    assert result.outcome == "FAIL"
    (finding,) = result.deciding()
    assert finding.name == "candidate version" and finding.baseline == [1] and finding.candidate == version
    # Declaring an overwrite is about changed files, not about publishing over a version.
    assert check_integrity(published, candidate_version=version, allow_overwrite="x").outcome == "FAIL"


def test_without_a_version_the_candidate_goes_into_the_next_folder(published):
    result = check_integrity(published, candidate_version=None)
    assert result.outcome == "PASS" and result.findings[0].candidate == 2


def test_a_file_changed_by_a_commit_in_an_existing_version_fails_unless_declared(published, jet_versions):
    jet_versions.publish(published.parent, jet_versions.retrained)  # the commit adds version 2
    changed = ["jet_mlp/1/model.onnx"]
    # What every publish rewrites, and the candidate's own new files, are not changes to a published version.
    commit = [*changed, "jet_mlp/config.pbtxt", "jet_mlp/2/model.onnx", "jet_mlp/2/hepdeploy-manifest.json"]
    result = check_integrity(published, candidate_version=2, changed_existing=commit, candidate_in_repository=True)
    assert result.outcome == "FAIL"
    assert [f.path for f in result.deciding()] == changed and result.deciding()[0].extra["version"] == 1
    assert result.details["changed_existing"] == changed and len(result.details["changed_elsewhere"]) == 3
    allowed = check_integrity(published, candidate_version=2, changed_existing=commit, candidate_in_repository=True,
                              allow_overwrite="retag")
    assert allowed.outcome == "PASS" and allowed.details["allow_overwrite"] == "retag"
    untouched = check_integrity(published, candidate_version=2, changed_existing=commit[1:],
                                candidate_in_repository=True)
    assert untouched.outcome == "PASS", untouched.reason


def test_a_file_added_to_a_published_version_fails(published):
    (published / "1" / "notes.txt").write_text("added later\n")
    result = check_integrity(published, candidate_version=2)
    assert result.outcome == "FAIL"
    assert any(f.path == "jet_mlp/1/notes.txt" for f in result.deciding())


def test_a_version_nothing_recorded_cannot_be_verified_and_is_undecided(published):
    # A version folder written by hand: no manifest, and the checksum agent (written at publishing) does
    # not list its files.
    hand_made = published / "2"
    hand_made.mkdir()
    shutil.copy(published / "1" / "model.onnx", hand_made / "model.onnx")
    result = check_integrity(published, candidate_version=3)
    assert result.outcome == "UNDECIDED"
    (finding,) = result.deciding()
    assert finding.path == "jet_mlp/2" and finding.extra["uncovered"] == ["2/model.onnx"]
    assert [f.name for f in result.findings if f.outcome == "PASS"] == ["candidate version", "jet_mlp/1"]


def test_a_version_the_checksum_agent_covers_is_verified_without_a_manifest(published):
    # CMS repositories written by cmsTritonConfigTool carry the checksum agent and no hepdeploy manifest.
    (published / "1" / "hepdeploy-manifest.json").unlink()
    config = read_model_config(published / "config.pbtxt")
    set_checksum_agent(config, published)
    (published / "config.pbtxt").write_text(config_to_pbtxt(config))
    result = check_integrity(published, candidate_version=2)
    assert result.outcome == "PASS", result.reason
    _flip_byte(published / "1" / "model.onnx")
    failed = check_integrity(published, candidate_version=2)
    assert failed.outcome == "FAIL" and {f.path for f in failed.deciding()} == {"jet_mlp/1/model.onnx"}


def test_a_first_version_has_nothing_published_to_check(tmp_path):
    result = check_integrity(tmp_path / "model_repository" / "new_model", candidate_version=1)
    assert result.outcome == "PASS" and result.details["versions"] == []
