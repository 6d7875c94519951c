"""TensorRT plans in a repository: config <-> recorded metadata <-> target server <-> this machine.

TensorRT cannot be installed here, so no test depends on whether it is: each says which
machine it describes. "TensorRT absent" is a PlanLoader with that reason; "TensorRT present
on an 8.0 GPU" is a PlanLoader over a runtime that behaves as the bindings document
(``deserialize_cuda_engine`` returns None for bytes that are not a plan of this GPU and
version). The plans are byte strings with the sidecar metadata our builder writes.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from hepdeploy.artifacts import (
    Sidecar,
    SourceRecord,
    StepRecord,
    VariantRecord,
    engine_sidecar_path,
)
from hepdeploy.backend.cudart import CudaDevice
from hepdeploy.backend.trt import PlanLoader
from hepdeploy.cli import main
from hepdeploy.errors import BadInputError, SpecError
from hepdeploy.plan_compat import PLAN_STEP, PlanMetadata, ProfileRange, server_release
from hepdeploy.triton.check import (
    CheckEnvironment,
    check_repository,
    check_repository_report,
)
from hepdeploy.triton.config import read_model_config
from hepdeploy.triton.repository import publish_model
from hepdeploy.triton.plan import ModelRequest

ABSENT = PlanLoader(reason="tensorrt is not importable (ModuleNotFoundError: No module named 'tensorrt')")


class _Runtime:
    """A TensorRT runtime as the bindings document it: None for bytes it cannot deserialize."""

    def __init__(self) -> None:
        self.engine_host_code_allowed = False

    def deserialize_cuda_engine(self, data: bytes) -> None:
        return None


def present_on(capability: str, version: str = "10.5.0.18") -> PlanLoader:
    return PlanLoader(trt=types.SimpleNamespace(__version__=version), runtime=_Runtime(),
                      device=CudaDevice(0, f"GPU sm{capability}", capability))


def write_plan(path: Path, capability: str, *, version: str = "10.5.0.18", batch: tuple[int, int, int] = (1, 256, 1024),
               version_compatible: bool = False) -> Path:
    """Plan bytes plus the sidecar ``build_engine`` writes (tensors, TensorRT step with its metadata)."""
    path.write_bytes(b"serialized engine for sm" + capability.encode())
    metadata = PlanMetadata(tensorrt_version=version, compute_capability=capability, gpu_name=f"GPU sm{capability}",
                            profiles=[{"input": ProfileRange(min=[batch[0], 47], opt=[batch[1], 47],
                                                             max=[batch[2], 47])}],
                            precision="fp16", version_compatible=version_compatible)
    sidecar = Sidecar(
        model_name="facile", source=SourceRecord(framework="onnx"),
        inputs=[{"name": "input", "shape": ["batch", 47]}], outputs=[{"name": "output", "shape": ["batch", 1]}],
        variant=VariantRecord(name="tensorrt", precision="fp16", target="tensorrt"),
        steps=[StepRecord(name=PLAN_STEP, tool="tensorrt", tool_version=version,
                          parameters=metadata.model_dump(mode="json"))],
    )
    engine_sidecar_path(path).write_text(sidecar.model_dump_json(indent=2))
    return path


def _triton_without_batch(spec):
    return spec.triton.model_copy(update={"max_batch_size": None, "dynamic_batching": None})


def _publish(tmp_path: Path, spec, loader: PlanLoader, verify: bool = True, **plans_by_cc: Path):
    repo = tmp_path / "repo"
    main_plan = next(iter(plans_by_cc.values()))
    cc_files = {cc.replace("_", "."): p for cc, p in plans_by_cc.items()}
    result = publish_model(repo, ModelRequest(main_plan, name="facile_trt", spec=spec, triton=_triton_without_batch(spec), cc_model_files=cc_files), verify=verify, environment=CheckEnvironment(plan_loader=loader))
    return repo, result


# -- finding 4 and the acceptance: publish and check without TensorRT -----------------------------


def test_without_tensorrt_the_metadata_is_checked_and_the_plan_noted_not_loadable(tmp_path, facile_spec, monkeypatch):
    plans = {"8_0": write_plan(tmp_path / "a.plan", "8.0"), "9_0": write_plan(tmp_path / "b.plan", "9.0")}
    repo, result = _publish(tmp_path, facile_spec, ABSENT, **plans)
    config = read_model_config(repo / "facile_trt" / "config.pbtxt")
    assert dict(config.cc_model_filenames) == {"8.0": "model_sm80.plan", "9.0": "model_sm90.plan"}
    # Finding 5: max_batch_size is the engine profile's max batch, not max(preferred, 64) or the spec's.
    assert config.max_batch_size == 1024
    manifest = (result.version_dir / "hepdeploy-manifest.json").read_text()
    assert '"compute_capability": "9.0"' in manifest and '"tensorrt_version": "10.5.0.18"' in manifest

    report = check_repository_report(repo, environment=CheckEnvironment(plan_loader=ABSENT))
    assert report.ok, report.problems
    not_loadable = [n for n in report.notes if "plan not loadable here: tensorrt is not importable" in n]
    assert len(not_loadable) == 3  # model.plan, model_sm80.plan, model_sm90.plan: noted, never passed
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # the CLI's own loader, on a machine without TensorRT
    cli = CliRunner().invoke(main, ["triton", "check", str(repo), "--no-run"])
    assert cli.exit_code == 0, cli.output
    assert "plan not loadable here: tensorrt is not importable" in cli.stderr


def test_with_tensorrt_a_plan_that_does_not_deserialize_is_refused_at_publish(tmp_path, facile_spec):
    # Finding 4: the old test published fake bytes with verify=True and passed only where TensorRT was absent.
    plans = {"8_0": write_plan(tmp_path / "a.plan", "8.0"), "9_0": write_plan(tmp_path / "b.plan", "9.0")}
    with pytest.raises(Exception, match="cannot deserialize"):
        _publish(tmp_path, facile_spec, present_on("8.0"), **plans)
    assert not (tmp_path / "repo" / "facile_trt").exists()  # nothing half-written


def test_a_plan_for_another_gpu_is_not_deserialized_here(tmp_path, facile_spec):
    # Finding 3: the 9.0 plan is not broken on an 8.0 GPU; Triton on a 9.0 GPU loads it.
    plans = {"9_0": write_plan(tmp_path / "b.plan", "9.0")}
    repo, _ = _publish(tmp_path, facile_spec, ABSENT, **plans)
    report = check_repository_report(repo, environment=CheckEnvironment(plan_loader=present_on("8.0")))
    assert report.ok, report.problems
    assert any("built for compute capability 9.0, this GPU (GPU sm8.0) is 8.0" in n for n in report.notes)
    # On a 9.0 GPU the same plan is deserialized, and these bytes are not a plan.
    problems = check_repository(repo, environment=CheckEnvironment(plan_loader=present_on("9.0")))
    assert any("cannot deserialize" in p.message for p in problems)
    # A plan without recorded metadata (not built by hepdeploy) is judged by the key it is listed under.
    (repo / "facile_trt" / "1" / "hepdeploy-manifest.json").unlink()
    report = check_repository_report(repo, environment=CheckEnvironment(plan_loader=present_on("8.0")))
    assert any("model_sm90.plan: plan not loadable here: built for compute capability 9.0" in n for n in report.notes)


def test_a_runtime_that_cannot_start_is_a_note_not_a_crash(tmp_path, facile_spec, monkeypatch):
    # Finding 2: with the wheel installed but no usable CUDA, trt.Runtime raises TypeError.
    plans = {"8_0": write_plan(tmp_path / "a.plan", "8.0")}
    repo, _ = _publish(tmp_path, facile_spec, ABSENT, **plans)

    class Runtime:
        def __init__(self, logger: object) -> None:
            raise TypeError("pybind11::init(): factory function returned nullptr")

    class Logger:
        ERROR, WARNING = 0, 1

        def __init__(self, level: int = 0) -> None:
            self.level = level

    fake = types.SimpleNamespace(__version__="10.5.0.18", Runtime=Runtime, Logger=Logger)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    report = check_repository_report(repo)  # the real PlanLoader.here(), over the broken runtime
    assert report.ok, report.problems
    assert any("plan not loadable here: the TensorRT runtime cannot start (TypeError: pybind11" in n
               for n in report.notes), report.notes
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    assert "tensorrt is not importable" in (PlanLoader.here().reason or "")


# -- finding 5: config <-> engine profile -------------------------------------------------------------


def test_config_batch_and_dims_come_from_the_profile(tmp_path, facile_spec):
    plan = write_plan(tmp_path / "a.plan", "8.0", batch=(1, 64, 512))
    repo = tmp_path / "repo"
    # An explicit max_batch_size above the profile is refused before anything is written.
    with pytest.raises(SpecError, match="exceeds the TensorRT engine profile's max batch 512"):
        publish_model(repo, ModelRequest(plan, name="m", spec=facile_spec), environment=CheckEnvironment(plan_loader=ABSENT))
    triton = facile_spec.triton.model_copy(update={"max_batch_size": None, "dynamic_batching": None})
    publish_model(repo, ModelRequest(plan, name="m", spec=facile_spec, triton=triton), environment=CheckEnvironment(plan_loader=ABSENT))
    config_path = repo / "m" / "config.pbtxt"
    assert read_model_config(config_path).max_batch_size == 512
    assert check_repository(repo, environment=CheckEnvironment(plan_loader=ABSENT)) == []
    # A config edited by hand past the engine's profile is what Triton's TensorRT backend refuses.
    config_path.write_text(config_path.read_text().replace("max_batch_size: 512", "max_batch_size: 4096"))
    problems = [p.message for p in check_repository(repo, environment=CheckEnvironment(plan_loader=ABSENT))]
    assert "max_batch_size 4096 exceeds the engine profile's max batch 512" in problems


def test_profile_min_batch_above_one_and_wrong_dims_are_reported(tmp_path, facile_spec):
    plan = write_plan(tmp_path / "a.plan", "8.0", batch=(8, 64, 512))
    repo = tmp_path / "repo"
    triton = facile_spec.triton.model_copy(update={"max_batch_size": None, "dynamic_batching": None})
    with pytest.raises(Exception, match="min batch is 8"):
        publish_model(repo, ModelRequest(plan, name="m", spec=facile_spec, triton=triton), environment=CheckEnvironment(plan_loader=ABSENT))


# -- findings 6 and 9: target server, version-compatible plans, cc keys -------------------------------


def test_server_release_is_checked_against_each_plan(tmp_path, facile_spec, monkeypatch):
    plans = {"8_0": write_plan(tmp_path / "a.plan", "8.0", version="10.8.0.43")}
    repo, _ = _publish(tmp_path, facile_spec, ABSENT, **plans)
    env = CheckEnvironment(release=server_release("24.10"), plan_loader=ABSENT)
    messages = [p.message for p in check_repository(repo, environment=env)]
    assert any("built with TensorRT 10.8.0.43, Triton 24.10 has 10.5.0.18" in m for m in messages), messages
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    cli = CliRunner().invoke(main, ["triton", "check", str(repo), "--no-run", "--server-release", "24.10-py3"])
    assert cli.exit_code == 1 and "Triton 24.10 has 10.5.0.18" in cli.output
    cli = CliRunner().invoke(main, ["triton", "check", str(repo), "--server-release", "19.01"])
    assert cli.exit_code == 2 and "not in hepdeploy's table" in cli.output
    # A release whose TensorRT we do not know is said to be unchecked, never passed as compatible.
    report = check_repository_report(repo, environment=CheckEnvironment(release=server_release("25.06"),
                                                                         plan_loader=ABSENT))
    assert any("not in hepdeploy's table; plan versions not checked" in n for n in report.notes)


def test_version_compatible_plans_run_in_later_runtimes_only():
    from hepdeploy.plan_compat import tensorrt_runtime_problem

    older = PlanMetadata(tensorrt_version="10.3.0", compute_capability="8.0", version_compatible=True)
    assert tensorrt_runtime_problem(older, "10.5.0.18", "Triton 24.10") is None
    assert tensorrt_runtime_problem(older, "11.1.0", "x") is None
    assert "or a later one only" in tensorrt_runtime_problem(older, "10.2.0", "x")
    newer = older.model_copy(update={"tensorrt_version": "10.8.0"})
    assert tensorrt_runtime_problem(newer, "10.5.0.18", "Triton 24.10") is not None
    plain = older.model_copy(update={"version_compatible": False})
    assert "only deserializes in the TensorRT version that built it" in tensorrt_runtime_problem(plain, "10.5.0", "x")


def test_tensorrt_extra_matches_the_documented_server_image():
    import tomllib

    from hepdeploy.plan_compat import DEFAULT_SERVER_RELEASE

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    (requirement,) = pyproject["project"]["optional-dependencies"]["tensorrt"]
    shipped = server_release(DEFAULT_SERVER_RELEASE).tensorrt
    assert shipped is not None
    major_minor = ".".join(shipped.split(".")[:2])
    assert requirement.replace(" ", "") == f"tensorrt~={major_minor}.0", requirement


def test_cc_keys_are_validated_and_matched_to_the_plan(tmp_path, facile_spec):
    plan80 = write_plan(tmp_path / "a.plan", "8.0")
    with pytest.raises(SpecError, match="look like '8.0'"):
        publish_model(tmp_path / "repo", ModelRequest(plan80, name="m", spec=facile_spec, triton=_triton_without_batch(facile_spec), cc_model_files={"80": plan80}), environment=CheckEnvironment(plan_loader=ABSENT))
    with pytest.raises(BadInputError, match="built on compute capability 8.0"):
        publish_model(tmp_path / "repo", ModelRequest(plan80, name="m", spec=facile_spec, triton=_triton_without_batch(facile_spec), cc_model_files={"9.0": plan80}), environment=CheckEnvironment(plan_loader=ABSENT))
    assert not (tmp_path / "repo" / "m").exists()
    # A hand-edited config is caught by the check: the key's form, and a plan listed under another capability.
    repo, _ = _publish(tmp_path, facile_spec, ABSENT, **{"8_0": plan80})
    config_path = repo / "facile_trt" / "config.pbtxt"
    config_path.write_text(config_path.read_text().replace('key: "8.0"', 'key: "9.0"'))
    messages = [p.message for p in check_repository(repo, environment=CheckEnvironment(plan_loader=ABSENT))]
    assert any("listed for compute capability 9.0 in cc_model_filenames but was built on compute capability 8.0"
               in m for m in messages), messages
    config_path.write_text(config_path.read_text().replace('key: "9.0"', 'key: "sm_90"'))
    messages = [p.message for p in check_repository(repo, environment=CheckEnvironment(plan_loader=ABSENT))]
    assert any("look like '8.0'" in m for m in messages), messages


def test_ort_tensorrt_provider_needs_a_recent_onnxruntime_for_tensorrt_11():
    from hepdeploy.plan_compat import ort_tensorrt_problem

    assert "needs onnxruntime-gpu >= 1.27" in ort_tensorrt_problem("1.24.4", "11.1.0.5")
    assert ort_tensorrt_problem("1.27.0", "11.1.0.5") is None
    assert ort_tensorrt_problem("1.19.2", "10.5.0.18") is None


def test_a_batch_shaped_input_is_compared_through_its_reshape(tmp_path):
    # A [batch] tensor is announced as dims [1] with reshape [] (Triton needs non-empty dims).
    from hepdeploy.spec import spec_from_dict

    spec = spec_from_dict({"name": "m", "source": {"framework": "onnx", "path": "m.onnx"},
                           "inputs": [{"name": "input", "shape": ["batch"]}],
                           "outputs": [{"name": "output", "shape": ["batch"]}]})
    plan = write_plan(tmp_path / "a.plan", "8.0")
    side = engine_sidecar_path(plan)
    sidecar = Sidecar.model_validate_json(side.read_text())
    sidecar.inputs = [spec.inputs[0]]
    sidecar.outputs = [spec.outputs[0]]
    sidecar.steps[0].parameters["profiles"] = [{"input": {"min": [1], "opt": [256], "max": [1024]}}]
    side.write_text(sidecar.model_dump_json())
    repo = tmp_path / "repo"
    publish_model(repo, ModelRequest(plan, name="m", spec=spec), environment=CheckEnvironment(plan_loader=ABSENT))
    assert read_model_config(repo / "m" / "config.pbtxt").max_batch_size == 1024
    assert check_repository(repo, environment=CheckEnvironment(plan_loader=ABSENT)) == []
