"""The CI recipes shipped in the repository: the GitHub composite action and example workflow validate against
the schemas editors and linters use; the GitLab component parses and its job's script gates exactly the
changed model of a real published repository kept in git."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / ".." / "shared" / "third_party" / "schemastore"
COMPONENT = ROOT / "templates" / "gate.yml"
_INPUT = re.compile(r"\$\[\[\s*inputs\.([A-Za-z0-9_-]+)\s*\]\]")


def _schema(name: str) -> dict:
    path = SCHEMAS / name
    if not path.is_file():
        pytest.skip(f"{name} is not in {SCHEMAS.resolve()} (the SchemaStore copy beside the project)")
    return json.loads(path.read_text())


def _validate(document: object, schema: dict) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def _workflow(path: Path) -> dict:
    """A workflow as GitHub reads it: PyYAML (YAML 1.1) reads the ``on:`` key as True."""
    data = yaml.safe_load(path.read_text())
    if True in data:
        data["on"] = data.pop(True)
    return data


def test_the_action_validates_against_the_action_schema() -> None:
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    assert _validate(action, _schema("github-action.json")) == []
    assert action["runs"]["using"] == "composite"
    uses = [step.get("uses", "") for step in action["runs"]["steps"]]
    assert any(u.startswith("actions/setup-python@") for u in uses)
    assert any(u.startswith("actions/upload-artifact@") for u in uses)
    scripts = "\n".join(step.get("run", "") for step in action["runs"]["steps"])
    assert "hepdeploy gate" in scripts and "GITHUB_STEP_SUMMARY" in scripts
    assert "${{" not in scripts  # inputs reach the scripts through env, never pasted into them
    assert {"spec", "against", "data", "candidate", "changed-since", "report-dir", "python-version"} <= set(action["inputs"])


def test_a_composite_step_without_a_shell_is_refused() -> None:
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    del next(step for step in action["runs"]["steps"] if "run" in step)["shell"]
    assert _validate(action, _schema("github-action.json"))


def test_the_example_workflow_validates_against_the_workflow_schema() -> None:
    workflow = _workflow(ROOT / "examples" / "ci" / "github-gate.yml")
    assert _validate(workflow, _schema("github-workflow.json")) == []
    assert "pull_request" in workflow["on"] and workflow["on"]["pull_request"]["paths"]
    steps = workflow["jobs"]["gate"]["steps"]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    gate = next(s for s in steps if "changed-since" in s.get("with", {}))
    assert gate["with"]["changed-since"] == "origin/${{ github.base_ref }}"
    assert set(gate["with"]) <= set(yaml.safe_load((ROOT / "action.yml").read_text())["inputs"])


def _component() -> tuple[dict, dict]:
    header, jobs = yaml.safe_load_all(COMPONENT.read_text())
    return header, jobs


def test_the_gitlab_component_parses_with_its_reports() -> None:
    header, jobs = _component()
    inputs = header["spec"]["inputs"]
    assert {"repository", "spec", "data", "changed-since", "report-dir", "stage"} <= set(inputs)
    job = jobs["hepdeploy-gate"]
    used = set(_INPUT.findall(COMPONENT.read_text().split("\n---\n", 1)[1]))
    assert used <= set(inputs), f"inputs used but not declared: {used - set(inputs)}"
    assert job["allow_failure"] == {"exit_codes": [3]}
    assert set(job["artifacts"]["reports"]) == {"junit", "metrics", "codequality"}
    assert job["artifacts"]["when"] == "always"
    assert any("hepdeploy gate" in line for line in job["script"])
    assert inputs["changed-since"]["default"] == "$CI_MERGE_REQUEST_DIFF_BASE_SHA"

    example = yaml.safe_load((ROOT / "examples" / "ci" / "gitlab-ci.yml").read_text())
    included = example["include"][0]
    assert included["component"].endswith("/gate@1.0.0")
    assert set(included["inputs"]) <= set(inputs)


def _job_script(inputs: dict[str, str]) -> tuple[dict, str]:
    """The component's job with ``inputs`` (over the defaults) substituted, and its script as bash runs it:
    the job's variables exported first (GitLab expands ``$VAR`` in them), then the script lines."""
    header, _ = _component()
    values = {name: str(spec.get("default", "")) for name, spec in header["spec"]["inputs"].items()} | inputs
    text = _INPUT.sub(lambda m: values[m.group(1)], COMPONENT.read_text().split("\n---\n", 1)[1])
    job = yaml.safe_load(text)["hepdeploy-gate"]
    exports = [f'export {name}="{str(value).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
               for name, value in job["variables"].items()]
    return job, "\n".join([*exports, *job["script"]]) + "\n"


def test_the_gitlab_job_passes_its_inputs_on(tmp_path: Path) -> None:
    """The script's arguments, with a spec path holding a space and extra arguments, as a program on PATH
    named hepdeploy receives them; its exit code (3) is the job's."""
    if shutil.which("bash") is None or shutil.which("git") is None:
        pytest.skip("git and bash are needed to run the job's script")
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    _git(project, "commit", "-q", "--allow-empty", "-m", "base")
    base = _git(project, "rev-parse", "HEAD").strip()
    tools = tmp_path / "bin"
    tools.mkdir()
    recorder = tools / "hepdeploy"
    recorder.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                        "open(os.environ['ARGS_FILE'], 'w').write(json.dumps([os.getcwd(), *sys.argv[1:]]))\n"
                        "sys.exit(3)\n")
    recorder.chmod(0o755)
    job, script = _job_script({"spec": "specs/jet tagger.yaml", "data": "ref.npz", "extra-args": "--seed 7"})
    env = {**os.environ, "CI_PROJECT_DIR": str(project), "CI_MERGE_REQUEST_DIFF_BASE_SHA": base,
           "ARGS_FILE": str(tmp_path / "args.json"), "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 3 and 3 in job["allow_failure"]["exit_codes"], run.stderr
    assert json.loads((tmp_path / "args.json").read_text()) == [
        str(project), "gate", "models", "--changed-since", base, "--report-dir", "gate-report",
        "--spec", "specs/jet tagger.yaml", "--data", "ref.npz", "--seed", "7"]


def test_the_action_passes_its_inputs_on(tmp_path: Path) -> None:
    """The action's gate step, run by bash as GitHub runs a composite step (-e, pipefail), with the inputs in
    its environment: the arguments a program named hepdeploy receives, the exit code in the step's outputs."""
    if shutil.which("bash") is None:
        pytest.skip("bash is needed to run the action's step")
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    step = next(s for s in action["runs"]["steps"] if s.get("id") == "gate")
    inputs = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()} | {
        "repository": "models", "changed-since": "origin/main", "spec": "specs/jet tagger.yaml",
        "allow-interface-change": "renamed output, clients updated", "first-version": "false"}
    env = {name: re.sub(r"\$\{\{ inputs\.([a-z-]+) \}\}", lambda m: inputs[m.group(1)], value)
           for name, value in step["env"].items()}
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "hepdeploy").write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                                     "print(json.dumps(['GITHUB_STEP_SUMMARY' in os.environ, *sys.argv[1:]]))\n"
                                     "sys.exit(1)\n")
    (tools / "hepdeploy").chmod(0o755)
    outputs = tmp_path / "outputs"
    env |= {"PATH": f"{tools}{os.pathsep}{os.environ['PATH']}", "GITHUB_OUTPUT": str(outputs),
            "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    run = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr  # the exit code is judged after the reports are uploaded
    assert outputs.read_text() == "exit-code=1\n"
    assert json.loads(run.stdout) == [False, "gate", "models", "--changed-since", "origin/main", "--spec",
                                      "specs/jet tagger.yaml", "--allow-interface-change",
                                      "renamed output, clients updated", "--report-dir", "gate-report"]


def _git(work: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(work), "-c", "user.name=ci", "-c", "user.email=ci@example.org",
                           "-c", "commit.gpgsign=false", *args], capture_output=True, text=True, check=True).stdout


def _hepdeploy(*args: str | Path) -> None:
    done = subprocess.run([sys.executable, "-m", "hepdeploy", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, f"hepdeploy {' '.join(map(str, args))}: {done.stderr}"


@pytest.mark.slow
def test_the_gitlab_job_gates_the_changed_model(zoo_export, write_gate_spec, tmp_path: Path) -> None:
    if shutil.which("git") is None or shutil.which("bash") is None:
        pytest.skip("git and bash are needed to run the job's script")
    exported = zoo_export("jet_mlp")
    onnx = tmp_path / "jet_mlp.onnx"
    _hepdeploy("convert", exported.source_path, "--spec", exported.spec_path, "-o", onnx)
    project = tmp_path / "cms-data"
    project.mkdir()
    models = project / "models"
    for name in ("jet_a", "jet_b"):  # version 1 of both, published and committed
        _hepdeploy("triton", "add", models, onnx, "--spec", exported.spec_path, "--name", name)
    subprocess.run(["git", "init", "-q", "-b", "main", str(project)], check=True)
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "version 1 of jet_a and jet_b")
    base = _git(project, "rev-parse", "HEAD").strip()
    _hepdeploy("triton", "add", models, onnx, "--spec", exported.spec_path, "--name", "jet_a")  # jet_a version 2
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "jet_a version 2")

    spec = write_gate_spec(exported.spec, tmp_path, "gate.yaml", ["fp32", "fp16"], {"physics": {"max_auc_drop": 0.002}})
    job, script = _job_script({"repository": "models", "spec": str(spec),
                               "data": str(exported.reference_path), "report-dir": "gate-report"})
    env = {**os.environ, "CI_PROJECT_DIR": str(project), "CI_MERGE_REQUEST_DIFF_BASE_SHA": base,
           "CI_PIPELINE_SOURCE": "merge_request_event", "GITLAB_CI": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("GITHUB_ACTIONS", None)
    env.pop("GITHUB_STEP_SUMMARY", None)
    run = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    # The same network again as version 2: the acceptance table's "identical candidate", exit 0.
    assert run.returncode == 0, run.stdout + run.stderr

    reports = project / "gate-report"
    gated = [json.loads(p.read_text()) for p in sorted(reports.rglob("gate.json"))]
    assert [(g["candidate"]["name"], g["baseline"]["version"], g["candidate"]["version"]) for g in gated] == \
        [("jet_a", 1, 2)]
    for kind, pattern in job["artifacts"]["reports"].items():  # what GitLab's widgets would pick up
        assert list(project.glob(pattern)), f"{kind}: nothing matches {pattern}"
