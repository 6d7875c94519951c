"""The gate's report files: gate.json, JUnit XML, Markdown, OpenMetrics, GitLab Code Quality, the HTML
page (:mod:`hepdeploy.gate.page`), and GitHub annotations pointing at the spec line an allowance is on.

Every file is written atomically; nothing here reads the environment (the CLI passes the step-summary
path and decides whether to print annotations).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from hepdeploy.errors import SpecError, first_line
from hepdeploy.fsutil import atomic_write_text, check_input_file, check_output_dir, shown
from hepdeploy.gate.outcome import CheckResult, Finding, GateResult, exit_code
from hepdeploy.gate.page import gate_html
from hepdeploy.gate.report_text import (
    OUTCOME_RANK,
    finding_text,
    finding_title,
    named_message,
    interval_text,
    model_label,
    number_text,
)
from hepdeploy.validate.report import md_cell

log = logging.getLogger(__name__)

MARKDOWN_LIMIT = 1024 * 1024  # GitHub refuses a step summary over 1 MiB
MARKDOWN_ROWS_PER_CHECK = 200
_INDENTED_JSON_FINDINGS = 10_000  # beyond, gate.json is written compact (json's fast encoder)
MAX_ANNOTATIONS = 10  # GitHub shows at most 10 error annotations per step
_OUTCOME_MARK = {"PASS": "✅ PASS", "FAIL": "❌ FAIL", "UNDECIDED": "⚠️ UNDECIDED", "INFO": "ℹ️ INFO"}


def write_gate_reports(result: GateResult, folder: Path, *, spec_lines: Mapping[str, int] | None = None,
                       step_summary: Path | None = None) -> list[Path]:
    """Write gate.json, gate-junit.xml, gate.md, metrics.txt, gl-code-quality.json and gate.html into
    ``folder``; append the Markdown to ``step_summary`` (``$GITHUB_STEP_SUMMARY``) when given."""
    folder = Path(folder)
    check_output_dir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    markdown = gate_markdown(result)
    findings = sum(len(c.findings) for c in result.checks)
    texts = {
        "gate.json": json.dumps(jsonable(result.to_dict()), allow_nan=False, default=str,
                                indent=2 if findings <= _INDENTED_JSON_FINDINGS else None) + "\n",
        "gate-junit.xml": gate_junit_xml(result),
        "gate.md": markdown,
        "metrics.txt": gate_metrics(result),
        "gl-code-quality.json": json.dumps(code_quality(result, spec_lines or {}), indent=2) + "\n",
        "gate.html": gate_html(result),
    }
    written = [atomic_write_text(folder / name, text) for name, text in texts.items()]
    if step_summary is not None:
        try:
            with open(step_summary, "a", encoding="utf-8") as summary:
                summary.write(markdown + "\n")
        except OSError as error:  # the summary is a courtesy: the reports are written
            log.warning("step summary %s not written: %s", shown(step_summary), error.strerror or error)
    return written


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON takes it: numpy arrays and scalars as lists and numbers, tuples as lists,
    paths as text, NaN and infinities as null."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------------------- JUnit


# Characters XML 1.0 cannot hold (a reason quoting raw bytes): shown as '?' so the file stays valid.
_NOT_XML = {code: "?" for code in (*range(0, 9), 11, 12, *range(14, 32))}


def _junit_cases(check: CheckResult) -> Iterator[tuple[str, str, str]]:
    """(name, outcome, text) per case: the check itself, then each finding."""
    yield f"{check.check}: {check.outcome}", check.outcome, check.reason.translate(_NOT_XML)
    for finding in check.findings:
        yield (finding_title(check.check, finding).translate(_NOT_XML), finding.outcome,
               finding_text(finding).translate(_NOT_XML))


def gate_junit_xml(result: GateResult) -> str:
    """One testsuite per check, one testcase per check and per finding; FAIL a failure with the interval in
    its message, UNDECIDED skipped with the reason, INFO a passed case with the text in system-out."""
    import xml.etree.ElementTree as ET

    timestamp = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")
    root = ET.Element("testsuites", name=f"hepdeploy gate {result.candidate.name}")
    totals = {"tests": 0, "failures": 0}
    for index, check in enumerate(result.checks):
        cases = list(_junit_cases(check))
        failures = sum(outcome == "FAIL" for _, outcome, _ in cases)
        skipped = sum(outcome == "UNDECIDED" for _, outcome, _ in cases)
        seconds = check.seconds or 0.0
        suite = ET.SubElement(root, "testsuite", {
            "name": check.check, "tests": str(len(cases)), "failures": str(failures), "errors": "0",
            "skipped": str(skipped), "time": f"{seconds:.3f}", "timestamp": timestamp,
            "hostname": socket.gethostname() or "localhost", "id": str(index), "package": "hepdeploy.gate"})
        properties = ET.SubElement(suite, "properties")
        for key, value in (("model", result.candidate.name), ("outcome", check.outcome), ("reason", check.reason)):
            ET.SubElement(properties, "property", name=key, value=value.translate(_NOT_XML))
        for name, outcome, text in cases:
            case = ET.SubElement(suite, "testcase", classname=f"hepdeploy.gate.{result.candidate.name}",
                                 name=name, time=f"{seconds / len(cases):.3f}")
            if outcome == "FAIL":
                ET.SubElement(case, "failure", message=text[:500], type="GateFailure").text = text
            elif outcome == "UNDECIDED":
                ET.SubElement(case, "skipped", message=text[:500])
            if outcome != "FAIL" and text:
                ET.SubElement(case, "system-out").text = text
        ET.SubElement(suite, "system-out").text = f"{check.check}: {check.outcome}: {check.reason}".translate(_NOT_XML)
        ET.SubElement(suite, "system-err").text = ""
        totals["tests"] += len(cases)
        totals["failures"] += failures
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", "0")
    root.set("time", f"{result.seconds or 0.0:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ---------------------------------------------------------------------------- Markdown


def gate_markdown(result: GateResult, limit: int = MARKDOWN_LIMIT) -> str:
    """The headline (outcome and exit code), one line per check, each check's findings folded (failing
    and undecided first, at most MARKDOWN_ROWS_PER_CHECK rows, the rest counted), the change map's numbers.

    Fewer rows per check when that is over ``limit`` bytes (GitHub's step summary takes 1 MiB)."""
    head = [f"## hepdeploy gate: {md_cell(model_label(result))}: {_OUTCOME_MARK[result.outcome]} "
            f"(exit {result.exit_code})", "", _provenance_line(result), "",
            "| check | outcome | why |", "|---|---|---|"]
    head += [f"| {c.check} | {_OUTCOME_MARK[c.outcome]} | {md_cell(number_text(c.reason))} |" for c in result.checks]
    if result.allowed:
        head += ["", "Allowed: " + "; ".join(f"`{k}`: {md_cell(v)}" for k, v in result.allowed.items())]
    for rows in (MARKDOWN_ROWS_PER_CHECK, 50, 10, 0):
        lines = list(head)
        for check in result.checks:
            lines += ["", *_markdown_check(check, rows)]
        text = "\n".join(lines) + "\n"
        if len(text.encode()) <= limit:
            return text
    note = "\n\n*(cut at the size limit: the full report is gate.json)*\n"
    return text.encode()[:limit - len(note.encode())].decode(errors="ignore") + note


def _provenance_line(result: GateResult) -> str:
    sides = [("N", result.baseline), ("N+1", result.candidate)]
    shown = "; ".join(f"{who} `{md_cell(m.path)}`" + (f" sha256 `{m.sha256[:12]}`" if m.sha256 else "")
                      for who, m in sides if m is not None)
    events = f", {result.events:,} events" if result.events is not None else ""
    return f"{shown}; seed {result.seed}{events}" + ("; first version" if result.first_version else "")


def _markdown_check(check: CheckResult, rows: int) -> list[str]:
    opened = " open" if check.outcome in ("FAIL", "UNDECIDED") else ""
    lines = [f"<details{opened}><summary>{check.check}: {check.outcome}, {len(check.findings)} findings"
             "</summary>", ""]
    if check.check == "change_map" and check.details:
        lines += _markdown_change_map(check.details)
    if check.check == "performance" and check.details:
        lines += _markdown_performance(check.details)
    ordered = sorted(check.findings, key=lambda f: OUTCOME_RANK.get(f.outcome, 4))
    if ordered and rows:
        lines += ["| finding | metric | class | bin | N | N+1 | change | 95 % interval | allowance | outcome |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for f in ordered[:rows]:
            cells = [named_message(f), f.metric, f.klass, f.bin,
                     number_text(f.baseline), number_text(f.candidate), number_text(f.change, "+.4g"),
                     interval_text(f), number_text(f.allowance), f.outcome + (" (improved)" if f.improved else "")]
            lines.append("| " + " | ".join(md_cell(number_text(c)) for c in cells) + " |")
    if len(ordered) > rows:
        lines += ["", f"*… and {len(ordered) - rows:,} more findings (all of them in gate.json)*"]
    lines += ["", "</details>"]
    return lines


def _markdown_change_map(details: Mapping[str, Any]) -> list[str]:
    """The change map's numbers: the flip fraction (classifiers), the distance per class, the events that
    moved most, and a class permutation when N+1's columns follow N's in another order."""
    output = f"Output `{md_cell(str(details.get('output')))}`"
    flip, interval = details.get("flip_fraction"), details.get("flip_interval")
    if flip is not None:
        lines = [f"{output}: top class flips in {number_text(flip, '.3%')} of events"
                 + (f" (95 % interval [{interval[0]:.3%}, {interval[1]:.3%}])" if interval else "") + ".", ""]
    else:
        lines = [f"{output}.", ""]
    per_class = details.get("per_class") or {}
    if per_class:
        lines += ["| class | distance |", "|---|---|"]
        lines += [f"| {md_cell(str(k))} | {number_text(v.get('distance'))} ({md_cell(str(v.get('distance_name')))}) |"
                  for k, v in per_class.items()]
        lines.append("")
    largest = (details.get("largest_changes") or [])[:10]
    if largest:
        tops = "baseline_top" in largest[0]
        names = ("baseline_top", "candidate_top") if tops else ("baseline", "candidate")
        lines += [f"| event | change | N{' top class' if tops else ''} | N+1{' top class' if tops else ''} |",
                  "|---|---|---|---|"]
        lines += [f"| {e.get('event')} | {number_text(e.get('change'))} | {md_cell(number_text(e.get(names[0])))} | "
                  f"{md_cell(number_text(e.get(names[1])))} |" for e in largest]
        lines.append("")
    permutation = details.get("permutation")
    if permutation:
        correlation = permutation.get("correlation")
        moved = [f"{k} behaves like N's {v}" + (f" (correlation {number_text(correlation.get(k), '.3f')})"
                                                 if isinstance(correlation, Mapping) else "")
                 for k, v in (permutation.get("mapping") or {}).items() if k != v]
        lines += [f"N+1's classes look like N's permuted: {md_cell('; '.join(moved))}.", ""]
    return lines


def _markdown_performance(details: Mapping[str, Any]) -> list[str]:
    lines = ["| model | throughput /s | p50 ms | p99 ms |", "|---|---|---|---|"]
    for who, label in (("baseline", "N"), ("candidate", "N+1")):
        side = details.get(who) or {}
        lines.append(f"| {label} | {number_text(side.get('throughput_per_s'))} | {number_text(side.get('p50_ms'))} | "
                     f"{number_text(side.get('p99_ms'))} |")
    lines += ["", f"Throughput N+1/N {number_text(details.get('ratio'))}, noise band "
              f"{number_text(details.get('noise_band'))}.", ""]
    return lines


# ---------------------------------------------------------------------------- OpenMetrics


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{key}="{_label_value(value)}"' for key, value in pairs.items()) + "}"


def _metric_number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def gate_metrics(result: GateResult) -> str:
    """OpenMetrics text for GitLab's metrics report: every finding's change (N+1 - N, or N+1/N - 1 when
    relative) and every check's outcome as the exit code it alone would give (INFO 0), ending ``# EOF``."""
    model = result.candidate.name
    lines = ["# TYPE hepdeploy_gate_delta gauge",
             "# HELP hepdeploy_gate_delta Change from version N to N+1 of a gate finding (relative when the metric is)."]
    seen: set[str] = set()
    for check in result.checks:
        for f in check.findings:
            if f.change is None:
                continue
            labels = _labels({"model": model, "check": check.check, "metric": f.metric or f.name,
                              "class": f.klass or "", "bin": f.bin or ""})
            if labels not in seen:  # a label set appears once in a metric family
                seen.add(labels)
                lines.append(f"hepdeploy_gate_delta{labels} {_metric_number(f.change)}")
    lines += ["# TYPE hepdeploy_gate_outcome gauge",
              "# HELP hepdeploy_gate_outcome Exit code of a gate check alone (0 pass or info, 1 fail, 3 undecided)."]
    lines += [f"hepdeploy_gate_outcome{_labels({'model': model, 'check': c.check})} {exit_code([c])}"
              for c in result.checks]
    lines.append(f"hepdeploy_gate_outcome{_labels({'model': model, 'check': 'gate'})} {result.exit_code}")
    return "\n".join(lines) + "\n# EOF\n"


# ---------------------------------------------------------------------------- spec lines, Code Quality, annotations


def spec_key_lines(spec_path: Path) -> dict[str, int]:
    """Dotted key path -> 1-based line of that key in the YAML spec (``gate.physics.max_auc_drop``);
    list items count by index (``outputs.0.name``)."""
    text = check_input_file(Path(spec_path), "spec").read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as error:
        raise SpecError(f"{spec_path}: not YAML: {first_line(error)}") from error
    found: dict[str, int] = {}
    stack: list[tuple[str, Any]] = [("", root)] if root is not None else []
    while stack:
        prefix, node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            children = [(str(key.value), key.start_mark.line + 1, value) for key, value in node.value]
        elif isinstance(node, yaml.SequenceNode):
            children = [(str(i), item.start_mark.line + 1, item) for i, item in enumerate(node.value)]
        else:
            continue
        for name, line, child in children:
            path = f"{prefix}.{name}" if prefix else name
            found.setdefault(path, line)
            stack.append((path, child))
    return found


def spec_line(spec_key: str | None, spec_lines: Mapping[str, int]) -> int:
    """The line of ``spec_key``, else of its nearest written parent (a default allowance points at its
    block), else 1."""
    parts = (spec_key or "").split(".")
    while parts and parts[0]:
        key = ".".join(parts)
        if key in spec_lines:
            return spec_lines[key]
        parts.pop()
    return 1


def judged_problems(result: GateResult, outcomes: tuple[str, ...] = ("FAIL",)) -> list[tuple[CheckResult, Finding]]:
    """The findings with one of ``outcomes``, in check order; a check with that outcome and no such
    finding counts once, as a finding named after the check."""
    problems = []
    for check in result.checks:
        picked = [f for f in check.findings if f.outcome in outcomes]
        if not picked and check.outcome in outcomes:
            picked = [Finding(name=check.check, outcome=check.outcome, message=check.reason)]
        problems += [(check, f) for f in picked]
    return problems


def _fingerprint(model: str, check: str, finding: Finding) -> str:
    """Stable across runs: what failed and where, never the measured values."""
    key = json.dumps([model, check, finding.name, finding.metric, finding.klass, finding.bin, finding.spec_key,
                      finding.path])
    return hashlib.sha256(key.encode()).hexdigest()


def code_quality(result: GateResult, spec_lines: Mapping[str, int]) -> list[dict[str, Any]]:
    """GitLab Code Quality entries, one per failing finding, located at the spec line of its allowance."""
    path = result.spec_path or result.candidate.path
    model = result.candidate.name
    return [{"description": f"{model}: {finding_title(check.check, f)}: {finding_text(f)}",
             "check_name": f"hepdeploy-gate-{check.check}",
             "fingerprint": _fingerprint(model, check.check, f),
             "severity": "blocker" if check.check in ("integrity", "interface") else "major",
             "location": {"path": path, "lines": {"begin": spec_line(f.spec_key, spec_lines)}}}
            for check, f in judged_problems(result)]


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotations(result: GateResult, spec_path: str | Path, spec_lines: Mapping[str, int]) -> list[str]:
    """At most MAX_ANNOTATIONS GitHub workflow commands: ``::error`` per failing finding, then ``::warning``
    per undecided one, each at the spec line of the allowance it breaks; the last says how many were left out."""
    problems = judged_problems(result, ("FAIL", "UNDECIDED"))
    problems.sort(key=lambda pair: OUTCOME_RANK[pair[1].outcome])
    shown = problems if len(problems) <= MAX_ANNOTATIONS else problems[:MAX_ANNOTATIONS - 1]
    lines = []
    for check, f in shown:
        level = "error" if f.outcome == "FAIL" else "warning"
        title = f"hepdeploy gate {result.candidate.name}: {finding_title(check.check, f)} {f.outcome}"
        lines.append(f"::{level} file={_escape_property(str(spec_path))},line={spec_line(f.spec_key, spec_lines)},"
                     f"title={_escape_property(title)}::{_escape_data(finding_text(f))}")
    if len(problems) > len(shown):
        left = len(problems) - len(shown)
        lines.append(f"::error file={_escape_property(str(spec_path))},line=1,"
                     f"title={_escape_property(f'hepdeploy gate {result.candidate.name}')}::"
                     f"{left} more failing or undecided findings: see gate.md or gate.json")
    return lines
