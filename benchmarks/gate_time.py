"""How long the whole gate takes on the jet MLP: version N (seed 0) published, N+1 retrained with seed 1,
80,000 labelled jets with the zoo's jet pT bins, every check (integrity, interface, fp16 and int8-cpu made
from N+1 and validated, the paired bootstrap, the change map, N and N+1 timed side by side).

    .venv/bin/python benchmarks/gate_time.py [WORK_DIR [TRAINING_CACHE]]

Prints the exit code, the wall time of the command and of each check, and writes
``benchmarks/results/gate_time.md`` (with the gate's own Markdown summary).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

RESULTS = Path(__file__).resolve().parent / "results"


def prepare(work: Path, cache: Path) -> dict[str, Path]:
    """N and N+1 exported (trained with the reduced budget, 80,000 reference jets), N published."""
    from hepdeploy.convert import convert_from_spec
    from hepdeploy.model_zoo import ExportOptions, export_network
    from hepdeploy.spec import spec_to_yaml
    from hepdeploy.triton.plan import ModelRequest
    from hepdeploy.triton.repository import publish_model

    n = export_network("jet_mlp", work / "n", ExportOptions(flavour="torch", budget="reduced", cache_dir=cache))
    n1 = export_network("jet_mlp", work / "n1", ExportOptions(flavour="torch", budget="reduced", cache_dir=cache,
                                                              seed=1))
    n_onnx = convert_from_spec(n.spec, work / "n.onnx").path
    n1_onnx = convert_from_spec(n1.spec, work / "n1.onnx").path
    repo = work / "repo"
    if not (repo / "jet_mlp").is_dir():
        publish_model(repo, ModelRequest(n_onnx, "jet_mlp", spec=n.spec))
    data = yaml.safe_load(spec_to_yaml(n1.spec, work))
    data["variants"] = ["fp32", "fp16", "int8-cpu"]
    data["gate"] = {"physics": {"max_auc_drop": 0.002}}
    spec = work / "gate.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    return {"candidate": n1_onnx, "repo": repo, "data": n.reference_path, "spec": spec}


def main() -> int:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="gate-time-"))
    paths = prepare(work, Path(sys.argv[2]) if len(sys.argv) > 2 else work / "cache")
    report = work / "report"
    command = [sys.executable, "-m", "hepdeploy", "gate", str(paths["candidate"]), "--against",
               f"{paths['repo']}/jet_mlp", "--spec", str(paths["spec"]), "--data", str(paths["data"]),
               "--report-dir", str(report)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    gate = json.loads((report / "gate.json").read_text())
    lines = [f"# The gate on the jet MLP: {gate['events']:,} jets, N (seed 0) vs N+1 (seed 1)", "",
             f"`hepdeploy gate` exited {done.returncode} ({gate['outcome']}) in {seconds:.1f} s wall on this machine.",
             "", "| check | outcome | seconds |", "|---|---|---|"]
    lines += [f"| {c['check']} | {c['outcome']} | {c['seconds']} |" for c in gate["checks"]]
    lines += ["", "## The gate's own summary (gate.md)", "", (report / "gate.md").read_text()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gate_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8 + len(gate["checks"])]))
    print(done.stdout[-3000:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
