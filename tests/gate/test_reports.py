"""The gate's report files, from gate results whose checks carry real physics numbers (the jet MLP's
outputs judged by the validate stage's paired bootstrap) and from findings made as input data."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hepdeploy.gate.outcome import CheckResult, Finding, GateModel, GateResult, outcome_of
from hepdeploy.gate.reports import (
    MAX_ANNOTATIONS,
    annotations,
    code_quality,
    gate_markdown,
    spec_key_lines,
    write_gate_reports,
)

JUNIT_XSD = Path(__file__).parents[1] / "validate" / "junit.xsd"
SPEC_YAML = """\
name: jet_mlp
validation:
  physics:
    max_auc_drop: 0.01
gate:
  integrity: {}
  physics:
    max_auc_drop: 0.002
    max_signal_efficiency_drop: 0.01
  outputs:
    - name: output
      dims: [5]
"""
REPORT_FILES = {"gate.json", "gate-junit.xml", "gate.md", "metrics.txt", "gl-code-quality.json", "gate.html"}


def _one(element):
    """xmlschema gives an element that may repeat as a list."""
    return element[0] if isinstance(element, list) else element


def _models(name: str = "jet_mlp") -> tuple[GateModel, GateModel]:
    return (GateModel(name, 1, f"repo/{name}/1/model.onnx", "a" * 64, "onnxruntime_onnx"),
            GateModel(name, 2, f"repo/{name}/2/model.onnx", "b" * 64, "onnxruntime_onnx"))


def _checks(physics: list[Finding], curves: dict | None = None) -> list[CheckResult]:
    """Every check of CHECK_ORDER: integrity fails on a flipped byte, variants is undecided, the physics
    findings given, the change map and performance reported."""
    flipped = Finding("1/model.onnx", "FAIL", "sha256 differs from the manifest", path="1/model.onnx",
                      baseline="a" * 64, candidate="c" * 64, spec_key="gate.integrity")
    undecided = Finding("int8-cpu", "UNDECIDED", "about 12,000 events would decide it", metric="auc", klass="t",
                        change=-0.003, interval=(-0.008, 0.001), allowance=0.005)
    change_map = {"output": "output", "flip_fraction": 0.031, "flip_interval": [0.027, 0.035],
                  "classes": ["g", "q"], "per_class": {
                      c: {"distance": 0.04 + k / 100, "distance_name": "Kolmogorov-Smirnov",
                          "edges": np.linspace(0, 1, 11).tolist(), "baseline_hist": [5, 4, 3, 2, 1, 1, 2, 3, 4, 5],
                          "candidate_hist": [4, 4, 4, 2, 1, 1, 2, 3, 4, 5]} for k, c in enumerate(["g", "q"])},
                  "largest_changes": [{"event": 17, "change": 0.81, "baseline_top": "g", "candidate_top": "q"}],
                  "permutation": None}
    performance = {"baseline": {"throughput_per_s": 51000.0, "p50_ms": 1.2, "p99_ms": 2.5},
                   "candidate": {"throughput_per_s": 49000.0, "p50_ms": 1.3, "p99_ms": 2.7},
                   "ratio": 0.96, "noise_band": 0.1}
    physics_outcome = outcome_of(physics)
    return [
        CheckResult("integrity", "FAIL", "1/model.onnx changed in a published version", [flipped]),
        CheckResult("interface", "PASS", "same tensors, labels and config",
                    [Finding("output", "PASS", "float32 [-1, 5]")]),
        CheckResult("variants", "UNDECIDED", "int8-cpu undecided", [undecided]),
        CheckResult("non_inferiority", physics_outcome, "physics against version 1", physics,
                    {"curves": curves or {}}),
        CheckResult("change_map", "INFO", "3.1 % of events flip their top class", [], change_map),
        CheckResult("performance", "INFO", "no allowance set", [], performance),
    ]


def _gate_result(physics: list[Finding], curves: dict | None = None, name: str = "jet_mlp") -> GateResult:
    baseline, candidate = _models(name)
    return GateResult(baseline, candidate, _checks(physics, curves), seed=0, events=2000, spec_path="jet_mlp.yaml",
                      versions={"hepdeploy": "test"})


@pytest.fixture(scope="module")
def physics_findings(zoo_export):
    return jet_mlp_physics(zoo_export("jet_mlp"))


def jet_mlp_physics(exported) -> tuple[list[Finding], dict]:
    """The jet MLP's golden outputs as version N, and N+1 = the same network with the top-quark score mixed
    with noise in the highest pT bins, judged by the validate stage's physics checks: findings and ROC curves."""
    from hepdeploy.validate import make_reference
    from hepdeploy.validate.physics import physics_checks

    reference = make_reference(exported.spec, exported.reference_path)
    baseline = reference.outputs["output"]
    candidate = baseline.copy()
    high_pt = reference.variables["jet_pt"] >= 530.0
    candidate[high_pt, 4] = 0.3 * candidate[high_pt, 4] + 0.7 * np.random.default_rng(0).uniform(size=high_pt.sum())
    physics = physics_checks({"output": candidate}, reference.outputs, reference.labels,
                             exported.spec.validation.physics, reference.variables)
    findings = [Finding(c.name, c.outcome, c.reason, metric=c.metric, klass=None, bin=c.bin, baseline=c.reference,
                        candidate=c.candidate, change=c.change, interval=c.interval, allowance=c.limit,
                        relative=c.relative, spec_key=f"gate.physics.max_{re.match(r'[a-z_]+', c.metric).group(0)}_drop")
                for c in physics.checks]
    # As gate.json keeps them: lists, a non-finite value as None (the band at a mistag no replica reached).
    curves = {label: {key: [v if np.isfinite(v) else None for v in np.asarray(value, float)]
                      for key, value in curve.items()} for label, curve in physics.curves.items()}
    return findings, curves


@pytest.mark.slow
def test_every_file_from_real_physics(physics_findings, tmp_path: Path) -> None:
    xmlschema = pytest.importorskip("xmlschema")
    findings, curves = physics_findings
    assert any(f.outcome == "FAIL" for f in findings), "noise in the top score at high pT must fail a check"
    first = next(iter(curves))
    curves = {**curves, first: {**curves[first], "band_cand_low": [None, *curves[first]["band_cand_low"][1:]]}}
    result = _gate_result(findings, curves)
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    written = write_gate_reports(result, tmp_path / "report", step_summary=summary)
    assert {p.name for p in written} == REPORT_FILES and all(p.stat().st_size > 0 for p in written)

    data = json.loads((tmp_path / "report" / "gate.json").read_text())
    assert data["outcome"] == "FAIL" and data["exit_code"] == 1
    assert data["baseline"]["sha256"] == "a" * 64 and data["candidate"]["sha256"] == "b" * 64
    assert [c["check"] for c in data["checks"]][:2] == ["integrity", "interface"]
    assert data["checks"][3]["details"]["curves"].keys() == curves.keys()

    schema = xmlschema.XMLSchema(str(JUNIT_XSD))
    junit = tmp_path / "report" / "gate-junit.xml"
    schema.validate(str(junit))
    suites = schema.to_dict(str(junit))["testsuite"]
    assert [s["@name"] for s in suites] == [c.check for c in result.checks]
    for suite, check in zip(suites, result.checks, strict=True):
        cases = [check.outcome] + [f.outcome for f in check.findings]
        assert int(suite["@tests"]) == len(cases)
        assert int(suite["@failures"]) == cases.count("FAIL")
        assert int(suite["@skipped"]) == cases.count("UNDECIDED")
    failure = next(case for case in suites[3]["testcase"][1:] if "failure" in case)
    assert "95 % interval [" in _one(failure["failure"])["@message"]

    assert summary.read_text().startswith("earlier step\n## hepdeploy gate: jet_mlp v1 → v2: ❌ FAIL (exit 1)")
    page = (tmp_path / "report" / "gate.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # the ROC curves and the change map


def test_junit_skips_undecided_and_passes_info(tmp_path: Path) -> None:
    xmlschema = pytest.importorskip("xmlschema")
    info = Finding("flip fraction", "INFO", "3.1 % flip", change=0.031)
    result = _gate_result([Finding("auc", "UNDECIDED", "about 40,000 events would decide it", change=-0.001,
                                   interval=(-0.004, 0.002), allowance=0.002)])
    result.checks[4].findings.append(info)
    result.checks[1].findings.append(Finding("header", "PASS", "raw bytes \x00\x1b[0m in a reason"))
    write_gate_reports(result, tmp_path)
    schema = xmlschema.XMLSchema(str(JUNIT_XSD))
    tree = schema.to_dict(str(tmp_path / "gate-junit.xml"))
    cases = [case for suite in tree["testsuite"] for case in suite["testcase"]]
    skipped = [case for case in cases if "skipped" in case]
    assert {case["@name"] for case in skipped} == {"variants: UNDECIDED", "variants: int8-cpu [auc, t]",
                                                    "non_inferiority: UNDECIDED", "non_inferiority: auc"}
    assert "about 40,000 events would decide it" in _one(skipped[-1]["skipped"])["@message"]
    flip = next(case for case in cases if case["@name"] == "change_map: flip fraction")
    assert "failure" not in flip and "skipped" not in flip and "3.1 % flip" in str(flip["system-out"])


@pytest.mark.slow
def test_markdown_stays_under_one_mebibyte(tmp_path: Path) -> None:
    many = [Finding(f"auc in bin {i}", "FAIL" if i % 7 == 0 else "PASS", "x" * 300, metric="auc", klass="t",
                    bin=f"jet_pt [{i}, {i + 1})", baseline=0.9, candidate=0.89, change=-0.01,
                    interval=(-0.02, -0.005), allowance=0.002) for i in range(100_000)]
    result = _gate_result(many)
    text = gate_markdown(result)
    assert len(text.encode()) < 1024 * 1024
    assert "*… and 99,800 more findings (all of them in gate.json)*" in text
    # the truncated table keeps the failing findings first
    rows = [line for line in text.splitlines() if line.startswith("| auc in bin")]
    assert rows and all(line.rstrip().endswith("| FAIL |") for line in rows)
    write_gate_reports(result, tmp_path)
    assert (tmp_path / "gate.md").stat().st_size < 1024 * 1024
    assert len(json.loads((tmp_path / "gate.json").read_text())["checks"][3]["findings"]) == 100_000


def test_markdown_with_long_findings_in_every_check_keeps_its_folds() -> None:
    result = _gate_result([])
    for check in result.checks:
        check.findings = [Finding(f"{check.check} item {i} " + "y" * 5000, "FAIL", "z" * 5000, metric="m" * 5000,
                                  klass="c" * 5000, bin="b" * 5000, baseline="v" * 5000, candidate="w" * 5000)
                          for i in range(300)]
    text = gate_markdown(result)
    assert len(text.encode()) < 1024 * 1024
    assert text.count("<details") == text.count("</details>") == 6
    assert text.count("more findings (all of them in gate.json)") == 6


def test_a_first_version_without_baseline(tmp_path: Path) -> None:
    _, candidate = _models()
    checks = [CheckResult(name, "INFO", "no version N: nothing to compare") for name in
              ("interface", "non_inferiority", "change_map", "performance")]
    checks.insert(0, CheckResult("integrity", "PASS", "the candidate goes into a new version folder",
                                 [Finding("1/", "PASS", "new version folder")]))
    result = GateResult(None, candidate, checks, first_version=True)
    written = write_gate_reports(result, tmp_path / "first")
    assert {p.name for p in written} == REPORT_FILES
    data = json.loads((tmp_path / "first" / "gate.json").read_text())
    assert data["baseline"] is None and data["exit_code"] == 0 and data["first_version"] is True
    assert gate_markdown(result).startswith("## hepdeploy gate: jet_mlp no baseline → v2: ✅ PASS (exit 0)")
    assert json.loads((tmp_path / "first" / "gl-code-quality.json").read_text()) == []
    assert annotations(result, "spec.yaml", {}) == []


def test_markdown_shows_the_change_map_and_folds_details() -> None:
    text = gate_markdown(_gate_result([]))
    assert "top class flips in 3.100% of events (95 % interval [2.700%, 3.500%])" in text
    assert "| g | 0.04 (Kolmogorov-Smirnov) |" in text and "| 17 | 0.81 | g | q |" in text
    assert "<details open><summary>integrity: FAIL" in text and "<details><summary>interface: PASS" in text
    assert "| integrity | ❌ FAIL | 1/model.onnx changed in a published version |" in text


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{((?:[a-zA-Z_]+="(?:[^"\\]|\\.)*",?)*)\} (\S+)$')


def test_markdown_shows_a_regression_change_map_and_a_permutation() -> None:
    regression = _gate_result([])
    regression.checks[4].details = {
        "output": "energy", "task": "regression", "events": 500, "classes": ["energy"], "permutation": None,
        "per_class": {"energy": {"distance": 0.12, "distance_name": "Wasserstein-1", "edges": [0.0, 1.0, 2.0],
                                 "baseline_hist": [3, 4], "candidate_hist": [4, 3]}},
        "largest_changes": [{"event": 3, "change": 0.5, "baseline": 10.25, "candidate": 10.75}]}
    text = gate_markdown(regression)
    assert "Output `energy`." in text and "flips" not in text
    assert "| event | change | N | N+1 |" in text and "| 3 | 0.5 | 10.25 | 10.75 |" in text
    from hepdeploy.gate.page import gate_html

    assert gate_html(regression).count("data:image/png;base64,") == 1

    swapped = _gate_result([])
    swapped.checks[4].details["permutation"] = {"mapping": {"g": "g", "W": "Z", "Z": "W"},
                                                 "correlation": {"g": 0.99, "W": 0.91, "Z": 0.9}}
    text = gate_markdown(swapped)
    assert "N+1's classes look like N's permuted: W behaves like N's Z (correlation 0.910); " \
           "Z behaves like N's W (correlation 0.900)." in text


def test_metrics_parse_line_by_line() -> None:
    from hepdeploy.gate.reports import gate_metrics

    tricky = Finding('auc "quoted"\nname', "FAIL", metric='auc', klass='b\\c "x"', bin="jet_pt [30, 100)",
                     change=-0.004, interval=(-0.006, -0.003), allowance=0.002)
    nan = Finding("resolution", "UNDECIDED", metric="resolution", change=float("nan"))
    text = gate_metrics(_gate_result([tricky, nan], name='jet "mlp"'))
    lines = text.splitlines()
    assert lines[-1] == "# EOF" and text.endswith("# EOF\n")
    samples = {}
    for line in lines:
        if line.startswith("#"):
            assert re.match(r"^# (TYPE \S+ gauge|HELP \S+ .+|EOF)$", line), line
            continue
        match = _SAMPLE.match(line)
        assert match, line
        samples[(match.group(1), match.group(2))] = match.group(3)
        float(match.group(3))
    delta = [(labels, value) for (name, labels), value in samples.items() if name == "hepdeploy_gate_delta"]
    assert ('model="jet \\"mlp\\"",check="non_inferiority",metric="auc",class="b\\\\c \\"x\\"",'
            'bin="jet_pt [30, 100)"', "-0.004") in delta
    assert any(value == "NaN" for _, value in delta)
    outcomes = {labels: value for (name, labels), value in samples.items() if name == "hepdeploy_gate_outcome"}
    assert outcomes['model="jet \\"mlp\\"",check="integrity"'] == "1"
    assert outcomes['model="jet \\"mlp\\"",check="variants"'] == "3"
    assert outcomes['model="jet \\"mlp\\"",check="change_map"'] == "0"
    assert outcomes['model="jet \\"mlp\\"",check="gate"'] == "1"


def test_spec_key_lines_reads_nested_keys(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_YAML)
    lines = spec_key_lines(spec)
    assert lines["gate.physics.max_auc_drop"] == 8
    assert lines["validation.physics.max_auc_drop"] == 4
    assert lines["gate.outputs.0.name"] == 11 and lines["gate"] == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("gate: [unclosed\n")
    from hepdeploy.errors import SpecError

    with pytest.raises(SpecError, match="not YAML"):
        spec_key_lines(bad)


def test_code_quality_only_for_failures_with_stable_fingerprints(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_YAML)
    lines = spec_key_lines(spec)
    failing = Finding("auc in jet_pt [530, 600)", "FAIL", metric="auc", bin="jet_pt [530, 600)", change=-0.01,
                      interval=(-0.02, -0.004), allowance=0.002, spec_key="gate.physics.max_auc_drop")
    passing = Finding("auc", "PASS", metric="auc", change=0.0, interval=(-0.001, 0.001), allowance=0.002,
                      spec_key="gate.physics.max_auc_drop")
    entries = code_quality(_gate_result([failing, passing]), lines)
    assert [e["check_name"] for e in entries] == ["hepdeploy-gate-integrity", "hepdeploy-gate-non_inferiority"]
    assert [e["severity"] for e in entries] == ["blocker", "major"]
    assert entries[1]["location"] == {"path": "jet_mlp.yaml", "lines": {"begin": 8}}
    assert entries[0]["location"]["lines"]["begin"] == 6  # gate.integrity
    # the same failure measured again (other values) keeps its fingerprint; another bin gets another one
    again = Finding(failing.name, "FAIL", metric="auc", bin=failing.bin, change=-0.02, interval=(-0.03, -0.01),
                    allowance=0.002, spec_key="gate.physics.max_auc_drop")
    other_bin = Finding("auc in jet_pt [400, 465)", "FAIL", metric="auc", bin="jet_pt [400, 465)", change=-0.01,
                        interval=(-0.02, -0.004), allowance=0.002, spec_key="gate.physics.max_auc_drop")
    assert code_quality(_gate_result([again]), lines)[1]["fingerprint"] == entries[1]["fingerprint"]
    assert code_quality(_gate_result([other_bin]), lines)[1]["fingerprint"] != entries[1]["fingerprint"]
    assert all(len(e["fingerprint"]) == 64 for e in entries)


def test_at_most_ten_annotations_at_the_spec_line(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_YAML)
    lines = spec_key_lines(spec)
    failing = [Finding(f"efficiency in bin {i}", "FAIL", "worse: 50%, of jets", metric="signal_efficiency",
                       bin=f"jet_pt [{i}, {i + 1})", change=-0.05, interval=(-0.07, -0.03), allowance=0.01,
                       spec_key="gate.physics.max_signal_efficiency_drop") for i in range(30)]
    found = annotations(_gate_result(failing), "specs/jet_mlp.yaml", lines)
    assert len(found) == MAX_ANNOTATIONS
    assert all(a.startswith("::error file=specs/jet_mlp.yaml,line=") for a in found)
    assert found[0].startswith("::error file=specs/jet_mlp.yaml,line=6,title=")  # integrity first, at gate.integrity
    assert found[1].startswith("::error file=specs/jet_mlp.yaml,line=9,title=")
    title, message = found[1].split(",title=", 1)[1].split("::", 1)
    assert "%2C" in title and "," not in title and ":" not in title  # `, ` and `:` escaped in properties
    assert "worse: 50%25, of jets" in message  # only % (and newlines) escaped in the message
    assert found[-1].endswith("23 more failing or undecided findings: see gate.md or gate.json")

    few = annotations(_gate_result([failing[0]]), "jet_mlp.yaml", lines)
    assert [a.split(",title=")[0] for a in few] == [
        "::error file=jet_mlp.yaml,line=6", "::error file=jet_mlp.yaml,line=9", "::warning file=jet_mlp.yaml,line=1"]


def test_html_escapes_user_strings(tmp_path: Path) -> None:
    name = "<script>alert(1)</script>"
    result = _gate_result([Finding("auc", "PASS", "<b>bold</b>", change=0.0)], name=name)
    write_gate_reports(result, tmp_path)
    page = (tmp_path / "gate.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert page.count("data:image/png;base64,") == 1  # the change map (no curves given)


@pytest.mark.slow
def test_html_loads_in_a_browser(tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed: the page is not loaded in a browser")
    write_gate_reports(_gate_result([Finding("auc", "FAIL", change=-0.01, interval=(-0.02, -0.005))]), tmp_path)
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (tmp_path / "gate.html").as_uri()], capture_output=True, text=True, timeout=120, check=True)
    assert "<table id=\"checks\">" in dom.stdout
    assert dom.stdout.count("<tr>") >= 1 + 6 and "<img " in dom.stdout
    assert "integrity: <span class=\"FAIL\">FAIL</span>" in dom.stdout
