"""Validation reports: one VariantReport per candidate, written for people and for CI.

``write_reports`` writes, into one folder: ``report.json`` (versioned schema),
``junit.xml`` (one test case per variant x output x check, as GitLab/GitHub/Jenkins read
it), ``report.md`` (also appended to ``$GITHUB_STEP_SUMMARY`` when set) and
``report.html`` with matplotlib plots under ``plots/``. ``console_table`` renders the
summary the CLI prints.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import math
import os
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import numpy as np

from hepdeploy import __version__
from hepdeploy.compare import PRECISION_DEFAULTS, OutputComparison, ResolvedTolerance
from hepdeploy.fsutil import atomic_path, atomic_write_text, file_name_for
from hepdeploy.validate.localize import LocalizationReport
from hepdeploy.validate.physics import PhysicsCheck, PhysicsResult

log = logging.getLogger("hepdeploy.validate.report")

REPORT_SCHEMA = "hepdeploy.validation-report"
REPORT_SCHEMA_VERSION = 1
MAX_PLOT_VALUES = 200_000  # values kept per output for plots (not written to JSON)


@dataclass
class VariantReport:
    """Everything known about one candidate's agreement with the reference."""

    variant: str
    candidate: str
    precision: str
    policy: str
    policy_reason: str
    providers: list[str]
    tolerances: dict[str, ResolvedTolerance]
    numerical: list[OutputComparison]
    physics: PhysicsResult
    passed: bool
    verdict: str
    n_samples: int
    outcome: str = "FAIL"  # PASS | FAIL | UNDECIDED (passed is outcome == PASS)
    reference: dict[str, Any] = field(default_factory=dict)
    localization: LocalizationReport | None = None
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    # For plots only: flattened reference/candidate values per output (subsampled).
    plot_values: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def numerical_passed(self) -> bool:
        return all(c.passed for c in self.numerical)

    @property
    def hard_failures(self) -> list[OutputComparison]:
        """Shape/dtype mismatches and NaN/Inf where the reference is finite: fail under every policy."""
        return [c for c in self.numerical if c.problem]

    def counts_numerical(self) -> bool:
        return self.policy in ("numerical", "either", "both")

    def counts_physics(self) -> bool:
        return self.policy in ("physics", "either", "both") and self.physics.ran

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "candidate": self.candidate,
            "precision": self.precision,
            "policy": self.policy,
            "policy_reason": self.policy_reason,
            "passed": self.passed,
            "outcome": self.outcome,
            "verdict": self.verdict,
            "providers": list(self.providers),
            "n_samples": self.n_samples,
            "elapsed_s": round(self.elapsed_s, 3),
            "tolerances": {
                name: {"atol": t.atol, "rtol": t.rtol, "atol_source": t.atol_source, "rtol_source": t.rtol_source}
                for name, t in self.tolerances.items()
            },
            "numerical": {"passed": self.numerical_passed, "outputs": [_comparison_dict(c) for c in self.numerical]},
            "physics": self.physics.to_dict(),
            "allowance_use": _finite_or_none(harm_of(self)),
            "deciding": deciding_text(self),
            "localization": self.localization.to_dict() if self.localization else None,
            "reference": self.reference,
            "notes": list(self.notes),
        }


def _comparison_dict(c: OutputComparison) -> dict[str, Any]:
    def num(x: float) -> float | None:
        return float(x) if x is not None and np.isfinite(x) else None

    return {
        "name": c.name, "passed": c.passed, "atol": c.atol, "rtol": c.rtol, "n_elements": c.n_elements,
        "max_abs_error": num(c.max_abs_error), "mean_abs_error": num(c.mean_abs_error),
        "median_abs_error": num(c.median_abs_error), "p99_abs_error": num(c.p99_abs_error),
        "max_rel_error": num(c.max_rel_error), "fraction_out_of_tolerance": num(c.fraction_out_of_tolerance),
        "cosine_similarity": num(c.cosine_similarity), "problem": c.problem,
    }


def harm_of(report: VariantReport) -> float:
    """The worst check's use of its allowance (far end of its 95 % interval; 1.0 = at the allowance)."""
    if report.hard_failures:
        return math.inf
    if report.counts_physics():
        uses = [use for check in report.physics.checks if (use := _check_use(check)) is not None]
        if uses:
            return max(uses)
    # Numerical budget: the worst error in units of its tolerance.
    return max((c.max_abs_error / (c.atol + c.rtol) if (c.atol + c.rtol) > 0 else math.inf)
               for c in report.numerical) if report.numerical else 0.0


def _check_use(check: PhysicsCheck) -> float | None:
    """One judged check's use of its allowance (the far end of its interval); None for a reported check."""
    if check.informational or check.limit is None:
        return None
    estimate = check.change if check.reference is not None else check.candidate
    return _allowance_use(check.kind, float(check.limit), check.interval or (estimate, estimate))


def _allowance_use(kind: str, limit: float, interval: tuple[float | None, float | None]) -> float | None:
    low, high = interval
    if low is None or high is None:
        return None
    if kind == "drop":
        return max(-low, 0.0) / limit if limit > 0 else math.inf
    if kind == "increase":
        return max(high, 0.0) / limit if limit > 0 else math.inf
    if kind == "level":  # e.g. argmax agreement >= 0.95: the budget is the distance from a perfect 1
        return (1.0 - low) / (1.0 - limit) if 0 < limit < 1 else (limit / low if low > 0 else math.inf)
    return max(abs(low), abs(high)) / limit if limit > 0 else math.inf


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def deciding_text(report: VariantReport) -> str:
    """The check that decides the verdict, with its interval: a failing (or undecided) check, else the one
    that uses most of its allowance; the worst numerical output when no physics check counts."""
    if report.hard_failures:
        first = report.hard_failures[0]
        return f"{first.name}: {first.problem}"
    if report.counts_physics():
        judged = [c for c in report.physics.checks if not c.informational and c.limit is not None]
        deciding = report.physics.deciding() or judged
        if deciding:
            def use(check: PhysicsCheck) -> float:
                found = _check_use(check)
                return -1.0 if found is None else found
            check = max(deciding, key=use)
            return f"{check.name}: {check.outcome} {check.value_text()} ({check.rule})"
    if not report.numerical:
        return "-"
    worst = max(report.numerical, key=lambda c: (not c.passed, c.fraction_out_of_tolerance or 0.0))
    return (f"{worst.name}: {'ok' if worst.passed else 'FAIL'} max|d|={_fmt(worst.max_abs_error)} "
            f"(atol={worst.atol:g} rtol={worst.rtol:g})")


# What a build did with a variant once it was judged: published (passed, in a build that does not
# publish), rejected (kept out; the build goes on) or failed (a variant the build needed).
Decision = Literal["published", "passed", "rejected", "failed"]


@dataclass(frozen=True)
class VariantDecision:
    """One variant's fate in a build, why, and the report that judged it last (a tuned variant's: its
    confirmation)."""

    variant: str
    decision: Decision
    why: str
    report: str | None = None  # the VariantReport.variant that decided it (default: ``variant``)
    roles: tuple[str, ...] = ()  # where it was published: "cpu_twin jet_mlp_cpu v1"


@dataclass(frozen=True)
class ModelDecisions:
    """What one model's build kept and rejected: the report's headline and its opening table."""

    model: str
    decisions: list[VariantDecision]
    unpublished: str | None = None  # why nothing was published, in a build that publishes


def model_outcome(reports: list[VariantReport], decisions: ModelDecisions | None) -> tuple[str, str]:
    """(PASS | FAIL | UNDECIDED, one line) for the headline. In a build, the model's outcome: what it kept,
    all passing, or why it fails; a rejected candidate does not make it FAIL. Without a build (one
    ``hepdeploy validate`` run) the worst candidate's outcome."""
    if decisions is None:
        outcome = overall_outcome(reports)
        counts = {o: sum(r.outcome == o for r in reports) for o in ("PASS", "FAIL", "UNDECIDED")}
        return outcome, ", ".join(f"{n} {o}" for o, n in counts.items() if n) or "no candidate"
    failed = [d for d in decisions.decisions if d.decision == "failed"]
    kept = [d.variant for d in decisions.decisions if d.decision in ("published", "passed")]
    rejected = [d.variant for d in decisions.decisions if d.decision == "rejected"]
    also = f"; rejected {', '.join(rejected)}" if rejected else ""
    if failed:
        return "FAIL", f"{', '.join(d.variant for d in failed)} failed: {failed[0].why}"
    if not kept:
        return "FAIL", "no variant passed validation: nothing published" + also
    if decisions.unpublished is not None:
        return "FAIL", f"nothing published ({decisions.unpublished}); passed {', '.join(kept)}" + also
    published = [f"{d.variant} ({', '.join(d.roles)})" for d in decisions.decisions if d.decision == "published"]
    served = [d.variant for d in decisions.decisions if d.decision == "passed"]
    text = "; ".join(part for part in (f"published {', '.join(published)}" if published else "",
                                       f"passed{', not served:' if published else ''} {', '.join(served)}"
                                       if served else "") if part)
    return "PASS", text + also


def _decision_rows(reports: list[VariantReport], decisions: ModelDecisions | None) -> list[tuple[str, ...]]:
    """(variant, decision, outcome, deciding check, why, the report section that judged it) per decision;
    per candidate without a build."""
    by_name = {r.variant: r for r in reports}
    if decisions is None:
        return [(r.variant, "", r.outcome, deciding_text(r), r.verdict, r.variant) for r in reports]
    rows = []
    for d in decisions.decisions:
        judged = by_name.get(d.report or d.variant)
        decision = d.decision + (f" as {', '.join(d.roles)}" if d.roles else "")
        rows.append((d.variant, decision, judged.outcome if judged else "-",
                     deciding_text(judged) if judged else "-", d.why, judged.variant if judged else d.variant))
    return rows


def _failing(checks: list[PhysicsCheck]) -> bool:
    return any(c.outcome in ("FAIL", "UNDECIDED") for c in checks)


def overall_outcome(reports: list[VariantReport]) -> str:
    """FAIL if a candidate fails, else UNDECIDED if one is undecided, else PASS."""
    outcomes = {r.outcome for r in reports}
    return "FAIL" if "FAIL" in outcomes else "UNDECIDED" if "UNDECIDED" in outcomes else "PASS"


def defaults_line() -> str:
    """The default tolerances per precision, as printed in every report."""
    return ", ".join(f"{k}: atol={v.atol:g} rtol={v.rtol:g}" for k, v in PRECISION_DEFAULTS.items())


# ---------------------------------------------------------------------------- writers


def write_reports(reports: list[VariantReport], report_dir: Path,
                  decisions: ModelDecisions | None = None) -> list[Path]:
    """Write JSON, JUnit XML, Markdown and HTML (+ PNG plots) into ``report_dir``; return the paths.

    ``decisions``: what a build kept and rejected; the headline is then the model's outcome."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    written = [
        atomic_write_text(report_dir / "report.json", json.dumps(report_json(reports, decisions), indent=2) + "\n"),
        atomic_write_text(report_dir / "junit.xml", junit_xml(reports)),
    ]
    markdown = report_markdown(reports, decisions)
    written.append(atomic_write_text(report_dir / "report.md", markdown))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as handle:
                handle.write(markdown + "\n")
        except OSError as error:
            log.warning("cannot append to $GITHUB_STEP_SUMMARY (%s): %s", summary, error)
    plots = write_plots(reports, report_dir / "plots")
    written += [p for paths in plots.values() for p in paths]
    written.append(atomic_write_text(report_dir / "report.html", report_html(reports, plots, report_dir, decisions)))
    return written


def report_json(reports: list[VariantReport], decisions: ModelDecisions | None = None) -> dict[str, Any]:
    headline, line = model_outcome(reports, decisions)
    return {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "hepdeploy_version": __version__,
        "created": _now(),
        "passed": all(r.passed for r in reports),
        "outcome": overall_outcome(reports),
        "model": decisions.model if decisions is not None else None,
        "headline": {"outcome": headline, "line": line},
        "decisions": [asdict(d) for d in decisions.decisions] if decisions is not None else None,
        "default_tolerances": {k: {"atol": v.atol, "rtol": v.rtol} for k, v in PRECISION_DEFAULTS.items()},
        "variants": [r.to_dict() for r in reports],
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- JUnit


@dataclass
class _Case:
    classname: str
    name: str
    outcome: str  # passed | failure | skipped
    message: str = ""
    details: str = ""


def junit_cases(report: VariantReport) -> list[_Case]:
    """One case per output x numerical check, per physics metric, and one for localization."""
    cases: list[_Case] = []
    cls = f"hepdeploy.validate.{report.variant}"
    counts_num = report.counts_numerical()
    for c in report.numerical:
        shape_problem = bool(c.problem) and ("shape" in c.problem or "dtype" in c.problem)
        finite_problem = bool(c.problem) and "NaN/Inf" in c.problem
        cases.append(_Case(cls, f"{c.name}: shape and dtype", "failure" if shape_problem else "passed",
                           c.problem if shape_problem else ""))
        cases.append(_Case(cls, f"{c.name}: finite where the reference is", "failure" if finite_problem else "passed",
                           c.problem if finite_problem else ""))
        within = c.passed or bool(c.problem)
        tol = f"atol={c.atol:g} rtol={c.rtol:g}"
        if c.problem:
            outcome, message = "skipped", f"not compared: {c.problem}"
        elif within:
            outcome, message = "passed", ""
        elif counts_num:
            outcome, message = "failure", f"{100 * c.fraction_out_of_tolerance:.3g}% of elements out of tolerance ({tol})"
        else:
            outcome, message = "skipped", f"out of tolerance ({tol}) but not required by policy {report.policy}"
        cases.append(_Case(cls, f"{c.name}: within tolerance", outcome, message, c.summary()))
    counts_phys = report.policy in ("physics", "either", "both")
    for check in report.physics.checks:
        if check.passed:
            outcome, message = "passed", ""
        elif check.outcome == "UNDECIDED":
            outcome, message = "skipped", check.summary()  # neither a pass nor a failure: the exit code says 3
        elif counts_phys:
            outcome, message = "failure", check.summary()
        else:
            outcome, message = "skipped", f"{check.summary()}; not required by policy {report.policy}"
        cases.append(_Case(cls, f"{check.output}: physics {check.name}", outcome, message, check.summary()))
    if not report.physics.ran:
        note = "; ".join(report.physics.notes) or "physics checks did not run"
        cases.append(_Case(cls, "physics", "skipped", note))
    if report.localization is not None:
        cases.append(_Case(cls, "localize: first divergent node", "passed", "", report.localization.summary()))
    return cases


def junit_xml(reports: list[VariantReport]) -> str:
    import xml.etree.ElementTree as ET

    timestamp = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")
    root = ET.Element("testsuites", name="hepdeploy validate")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total_time = 0.0
    for index, report in enumerate(reports):
        cases = junit_cases(report)
        failures = sum(c.outcome == "failure" for c in cases)
        skipped = sum(c.outcome == "skipped" for c in cases)
        # "either" passes on one family alone: its failed cases then show as skipped, not red.
        if report.passed and failures:
            for c in cases:
                if c.outcome == "failure" and "shape" not in c.name and "finite" not in c.name:
                    c.outcome, c.message = "skipped", f"{c.message}; variant passes by policy {report.policy}"
            failures = sum(c.outcome == "failure" for c in cases)
            skipped = sum(c.outcome == "skipped" for c in cases)
        per_case = report.elapsed_s / max(len(cases), 1)
        suite = ET.SubElement(root, "testsuite", {
            "name": report.variant, "tests": str(len(cases)), "failures": str(failures), "errors": "0",
            "skipped": str(skipped), "time": f"{report.elapsed_s:.3f}", "timestamp": timestamp,
            "hostname": socket.gethostname() or "localhost", "id": str(index), "package": "hepdeploy.validate",
        })
        props = ET.SubElement(suite, "properties")
        for key, value in (("candidate", report.candidate), ("precision", report.precision),
                           ("policy", report.policy), ("providers", ",".join(report.providers)),
                           ("verdict", report.verdict)):
            ET.SubElement(props, "property", name=key, value=str(value))
        for case in cases:
            element = ET.SubElement(suite, "testcase", classname=case.classname, name=case.name,
                                    time=f"{per_case:.3f}")
            if case.outcome == "failure":
                failure = ET.SubElement(element, "failure", message=case.message[:500], type="DisagreementError")
                failure.text = case.details or case.message
            elif case.outcome == "skipped":
                ET.SubElement(element, "skipped", message=case.message[:500])
            if case.details and case.outcome != "failure":
                ET.SubElement(element, "system-out").text = case.details
        ET.SubElement(suite, "system-out").text = report.verdict
        ET.SubElement(suite, "system-err").text = ""
        totals["tests"] += len(cases)
        totals["failures"] += failures
        totals["skipped"] += skipped
        total_time += report.elapsed_s
    for key in ("tests", "failures", "errors"):
        root.set(key, str(totals[key]))
    root.set("time", f"{total_time:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ---------------------------------------------------------------------------- text


def _fmt(x: float | None, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return format(x, spec)


_STYLE = {"PASS": "[green]PASS[/]", "FAIL": "[red]FAIL[/]", "UNDECIDED": "[yellow]UNDECIDED[/]", "INFO": "info"}


def console_table(reports: list[VariantReport]) -> Any:
    """A rich renderable: one row per variant x output, then the physics rows with their intervals."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"hepdeploy validate ({overall_outcome(reports)})")
    for column in ("variant", "check", "value", "limit", "result"):
        table.add_column(column)
    for report in reports:
        table.add_row(escape(report.variant), f"{report.precision}, policy {report.policy}",
                      ", ".join(report.providers), "", _STYLE[report.outcome])
        for c in report.numerical:
            value = c.problem or f"max|d|={_fmt(c.max_abs_error)} p99={_fmt(c.p99_abs_error)} " \
                                 f"out={_fmt(c.fraction_out_of_tolerance)}"
            table.add_row("", escape(c.name), escape(value), f"atol={c.atol:g} rtol={c.rtol:g}", "ok" if c.passed else "FAIL")
        for check in report.physics.checks:
            table.add_row("", escape(check.name), escape(check.value_text()), check.rule, _STYLE[check.outcome])
            if check.reason:
                table.add_row("", "", escape(check.reason), "", "")
        for note in report.physics.notes + report.notes:
            table.add_row("", "note", escape(note), "", "")
        if report.localization is not None:
            table.add_row("", "localize", escape(report.localization.summary()), "", "")
    table.caption = f"default tolerances: {defaults_line()}; physics changes: candidate - reference [95 % interval]"
    return table


def _by_bin(checks: list[PhysicsCheck]) -> dict[str | None, list[PhysicsCheck]]:
    """Checks grouped by bin, all events first."""
    groups: dict[str | None, list[PhysicsCheck]] = {None: []}
    for check in checks:
        groups.setdefault(check.bin, []).append(check)
    return {k: v for k, v in groups.items() if v}


def _interval_text(check: PhysicsCheck, signed: bool = True) -> str:
    if check.interval is None:
        return "-"
    spec = "+.4f" if signed and check.reference is not None else ".4f"
    return f"[{format(check.interval[0], spec)}, {format(check.interval[1], spec)}]"


def report_markdown(reports: list[VariantReport], decisions: ModelDecisions | None = None) -> str:
    """The answer first (headline and the table of what was kept and rejected, and why), then each candidate
    with its per-bin tables folded (``<details>``; a bin with a failing or undecided check unfolded)."""
    outcome, line = model_outcome(reports, decisions)
    icon = {"PASS": "✅", "FAIL": "❌", "UNDECIDED": "❔"}[outcome]
    model = f"{decisions.model}: " if decisions is not None else ""
    lines = [f"## hepdeploy validation: {model}{icon} {outcome}", "", line, ""]
    lines += ["| variant | decision | verdict | deciding check | why |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(md_cell(cell) for cell in row[:5])} |" for row in _decision_rows(reports, decisions)]
    lines += ["", f"Default tolerances: {defaults_line()}.", ""]
    for r in reports:
        lines += _markdown_variant(r)
    return "\n".join(lines)


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "-"


def _markdown_variant(r: VariantReport) -> list[str]:
    lines = [f"### {r.variant}: {r.outcome}", "", f"{r.verdict}", "",
             f"Candidate `{r.candidate}`, {r.n_samples} samples; policy {r.policy} ({r.policy_reason}).", "",
             "| output | atol | rtol | max abs | mean abs | p99 abs | max rel | out of tol | cosine | result |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in r.numerical:
        tol = r.tolerances.get(c.name)
        atol = f"{c.atol:g} ({tol.atol_source})" if tol else f"{c.atol:g}"
        rtol = f"{c.rtol:g} ({tol.rtol_source})" if tol else f"{c.rtol:g}"
        result = c.problem or ("ok" if c.passed else "FAIL")
        lines.append(f"| {c.name} | {atol} | {rtol} | {_fmt(c.max_abs_error)} | {_fmt(c.mean_abs_error)} | "
                     f"{_fmt(c.p99_abs_error)} | {_fmt(c.max_rel_error)} | {_fmt(c.fraction_out_of_tolerance)} | "
                     f"{_fmt(c.cosine_similarity, '.6f')} | {result} |")
    lines.append("")
    if r.physics.ran:
        lines += [f"Physics ({r.physics.task}, output `{r.physics.output}`, labels `{r.physics.labels}`; "
                  f"{_change_text(r)} with its 95 % interval{_bootstrap_text(r)}):", ""]
        for bin_name, checks in _by_bin(r.physics.checks).items():
            lines += [f"<details{' open' if _failing(checks) else ''}><summary>{_bin_title(bin_name, checks)}"
                      "</summary>", "",
                      "| metric | reference | candidate | change | 95 % interval | allowed | events | result |",
                      "|---|---|---|---|---|---|---|---|"]
            for check in checks:
                result = check.outcome + (f": {check.reason}" if check.reason else "")
                lines.append(f"| {check.metric} | {_fmt(check.reference, '.4f')} | {_fmt(check.candidate, '.4f')} | "
                             f"{_fmt(check.change, '+.4f')} | {_interval_text(check)} | {check.rule} | "
                             f"{check.n_events:,} | {result} |")
            lines += ["", "</details>", ""]
    for note in r.physics.notes + r.notes:
        lines.append(f"- {note}")
    if r.localization is not None:
        lines.append(f"- localization: {r.localization.summary()}")
    lines.append("")
    return lines


def _bin_title(bin_name: str | None, checks: list[PhysicsCheck]) -> str:
    """'bin jet_pt [30, 100): 12 checks, 1 FAIL' (all events when ``bin_name`` is None)."""
    where = "all events" if bin_name is None else f"bin {bin_name}"
    bad = [c.outcome for c in checks if c.outcome in ("FAIL", "UNDECIDED")]
    counts = ", ".join(f"{bad.count(o)} {o}" for o in ("FAIL", "UNDECIDED") if o in bad)
    return f"{where}: {len(checks)} checks" + (f", {counts}" if counts else ", all pass")


# ---------------------------------------------------------------------------- plots + HTML


def _change_text(report: VariantReport) -> str:
    """What the change column holds: the difference, and the ratio for metrics judged relative to the reference."""
    relative = any(check.relative for check in report.physics.checks)
    return "change = candidate - reference" + ("; relative change = candidate / reference - 1" if relative else "")


def _bootstrap_text(report: VariantReport) -> str:
    info = report.physics.bootstrap
    if not info:
        return "; no bootstrap: no intervals"
    return (f"; paired bootstrap, {info['replicas']} replicas; FAIL needs the simultaneous interval "
            f"(critical value {info['simultaneous_critical_value']:g}) outside the allowance")


def safe_name(text: str) -> str:
    """A name made safe for a file name and an HTML anchor (a report's section for a variant)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def write_plots(reports: list[VariantReport], folder: Path) -> dict[str, list[Path]]:
    """PNG plots per variant: output distributions, residuals, ROC curves / regression residuals."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    result: dict[str, list[Path]] = {}
    for report in reports:
        paths: list[Path] = []
        stem = safe_name(report.variant)
        for output, (ref, cand) in report.plot_values.items():
            if ref.size == 0 or ref.dtype.kind not in "fiub":
                continue
            fig = _plot_output(plt, report, output, ref, cand)
            paths.append(_save_figure(fig, folder / f"{stem}_{file_name_for(output)}_outputs.png"))
            plt.close(fig)
        if report.physics.curves:
            fig = _plot_roc(plt, report)
            paths.append(_save_figure(fig, folder / f"{stem}_roc.png"))
            plt.close(fig)
        if report.physics.residuals:
            fig = _plot_regression(plt, report)
            paths.append(_save_figure(fig, folder / f"{stem}_regression.png"))
            plt.close(fig)
        result[report.variant] = paths
    return result


def _plot_output(plt: Any, report: VariantReport, output: str, ref: np.ndarray, cand: np.ndarray) -> Any:
    """One output: the distributions of both models (left) and the residual with the atol lines (right)."""
    fig, (ax_dist, ax_res) = plt.subplots(1, 2, figsize=(10, 3.6))
    finite = np.isfinite(ref) & np.isfinite(cand)
    r, c = ref[finite].astype(np.float64), cand[finite].astype(np.float64)
    low, high = (float(r.min()), float(r.max())) if r.size else (0.0, 1.0)
    bins = np.linspace(low, high if high > low else low + 1.0, 60)
    ax_dist.hist(r, bins=bins, histtype="step", linewidth=2.0, label="reference")
    ax_dist.hist(c, bins=bins, histtype="step", linewidth=1.2, linestyle="--", label=report.variant)
    ax_dist.set_yscale("log")
    ax_dist.set_xlabel(f"{output} value")
    ax_dist.set_ylabel("entries")
    ax_dist.set_title(f"{output}: distribution")
    ax_dist.legend()
    residual = c - r
    tol = report.tolerances.get(output)
    ax_res.hist(residual, bins=60, histtype="stepfilled", alpha=0.7)
    if tol is not None:
        # The atol lines only where they do not squeeze the histogram into one bin.
        reach = float(np.abs(residual).max()) if residual.size else 0.0
        if 0 < tol.atol <= 3 * reach:
            ax_res.axvline(tol.atol, color="red", linestyle=":", label=f"atol={tol.atol:g}")
            ax_res.axvline(-tol.atol, color="red", linestyle=":")
            ax_res.legend()
        else:
            ax_res.text(0.98, 0.95, f"atol={tol.atol:g} (off scale)", transform=ax_res.transAxes,
                        ha="right", va="top", color="red")
    ax_res.set_yscale("log")
    ax_res.set_xlabel(f"{report.variant} - reference")
    ax_res.set_ylabel("entries")
    ax_res.set_title(f"{output}: residual ({int((~finite).sum())} non-finite)")
    fig.tight_layout()
    return fig


def _plot_roc(plt: Any, report: VariantReport) -> Any:
    """The ROC curves of both models per class, the candidate's with its 95 % bootstrap band."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for k, (label, curve) in enumerate(report.physics.curves.items()):
        colour = f"C{k % 10}"
        ax.plot(curve["tpr_ref"], np.maximum(curve["fpr_ref"], 1e-6), color=colour, linewidth=2.0,
                label=f"{label} reference")
        ax.plot(curve["tpr_cand"], np.maximum(curve["fpr_cand"], 1e-6), color=colour, linewidth=1.2,
                linestyle="--", label=f"{label} {report.variant}")
        if "band_fpr" in curve:  # the candidate's pointwise 95 % bootstrap band
            ax.fill_betweenx(curve["band_fpr"], curve["band_cand_low"], curve["band_cand_high"],
                             color=colour, alpha=0.2, linewidth=0)
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 1.0)
    ax.set_xlabel("signal efficiency")
    ax.set_ylabel("background efficiency (mistag)")
    ax.set_title(f"ROC: reference (solid) vs {report.variant} (dashed, 95 % band)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _plot_regression(plt: Any, report: VariantReport) -> Any:
    """The relative residuals of both models, one panel per regression target."""
    n = len(report.physics.residuals)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.6), squeeze=False)
    for ax, (label, values) in zip(axes[0], report.physics.residuals.items(), strict=True):
        ref_res, cand_res = values["reference"], values["candidate"]
        both = np.r_[ref_res, cand_res]
        both = both[np.isfinite(both)]
        lo, hi = np.percentile(both, [0.5, 99.5]) if both.size else (-1.0, 1.0)
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 60)
        ax.hist(ref_res, bins=bins, histtype="step", linewidth=2.0, label="reference")
        ax.hist(cand_res, bins=bins, histtype="step", linestyle="--", label=report.variant)
        ax.set_xlabel(f"(prediction - true) / true, {label}")
        ax.set_ylabel("events")
        ax.legend()
    fig.tight_layout()
    return fig


def _save_figure(fig: Any, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path


_HTML_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#eee}td:first-child{text-align:left}"
    "td.text{text-align:left}.pass{color:#070;font-weight:bold}.fail{color:#b00;font-weight:bold}"
    "img{max-width:100%;margin:0.5em 0}summary{cursor:pointer;margin:0.5em 0}")


def report_html(reports: list[VariantReport], plots: dict[str, list[Path]], report_dir: Path,
                decisions: ModelDecisions | None = None) -> str:
    """The answer first (headline, then what was kept and rejected and why, in one table); then each candidate,
    its per-bin tables and plots folded (``<details>``), a bin with a failing or undecided check unfolded."""
    outcome, line = model_outcome(reports, decisions)
    esc = html.escape
    model = f"{decisions.model}: " if decisions is not None else ""
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>hepdeploy validation: {esc(model)}{outcome}</title>", f"<style>{_HTML_STYLE}</style></head><body>",
        f"<h1>hepdeploy validation: {esc(model)}<span class='{'pass' if outcome == 'PASS' else 'fail'}'>"
        f"{outcome}</span></h1>", f"<p id='outcome'>{esc(line)}</p>",
        "<table id='decisions'><tr><th>variant</th><th>decision</th><th>verdict</th><th>deciding check</th>"
        "<th>why</th></tr>",
    ]
    for row in _decision_rows(reports, decisions):
        css = "pass" if row[2] == "PASS" else "fail"
        parts.append(f"<tr><td><a href='#{esc(safe_name(row[5]))}'>{esc(row[0])}</a></td><td class='text'>"
                     f"{esc(row[1] or '-')}</td><td class='{css}'>{esc(row[2])}</td><td class='text'>{esc(row[3])}"
                     f"</td><td class='text'>{esc(row[4])}</td></tr>")
    parts += ["</table>",
              f"<p>Default tolerances: {esc(defaults_line())}. Generated {esc(_now())} by hepdeploy "
              f"{esc(__version__)}.</p>"]
    for r in reports:
        parts += _html_variant(r, plots.get(r.variant, []), report_dir)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_variant(r: VariantReport, plots: list[Path], report_dir: Path) -> list[str]:
    esc = html.escape
    css = "pass" if r.passed else "fail"
    parts = [
        f"<h2 id='{esc(safe_name(r.variant))}'>{esc(r.variant)}: <span class='{css}'>{r.outcome}</span></h2>",
        f"<p>{esc(r.verdict)}</p>", f"<p>Deciding check: {esc(deciding_text(r))}</p>",
        f"<p>Candidate <code>{esc(r.candidate)}</code>, precision {esc(r.precision)}, policy {esc(r.policy)} "
        f"({esc(r.policy_reason)}), providers {esc(', '.join(r.providers))}, {r.n_samples} samples.</p>",
        "<table><tr><th>output</th><th>atol</th><th>rtol</th><th>max abs</th><th>p99 abs</th><th>max rel</th>"
        "<th>out of tol</th><th>cosine</th><th>result</th></tr>",
    ]
    for c in r.numerical:
        result = esc(c.problem) if c.problem else ("ok" if c.passed else "FAIL")
        parts.append(
            f"<tr><td>{esc(c.name)}</td><td>{c.atol:g}</td><td>{c.rtol:g}</td><td>{_fmt(c.max_abs_error)}</td>"
            f"<td>{_fmt(c.p99_abs_error)}</td><td>{_fmt(c.max_rel_error)}</td>"
            f"<td>{_fmt(c.fraction_out_of_tolerance)}</td><td>{_fmt(c.cosine_similarity, '.6f')}</td>"
            f"<td class='{'pass' if c.passed else 'fail'}'>{result}</td></tr>"
        )
    parts.append("</table>")
    if r.physics.ran:
        parts.append(f"<p>Physics: {esc(r.physics.task)} on output <code>{esc(str(r.physics.output))}</code>"
                     f" with labels <code>{esc(str(r.physics.labels))}</code>; {esc(_change_text(r))} "
                     f"with its 95 % interval{esc(_bootstrap_text(r))}.</p>")
        for bin_name, checks in _by_bin(r.physics.checks).items():
            parts += _html_bin(bin_name, checks)
    notes = r.physics.notes + r.notes
    if notes:
        parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    if r.localization is not None:
        parts += _html_localization(r.localization)
    if plots:
        parts.append(f"<details><summary>plots ({len(plots)})</summary>")
        for path in plots:
            rel = path.relative_to(report_dir).as_posix()
            # File names from tensor names are percent-escaped: the URL escapes the '%' itself.
            parts.append(f"<div><img src='{esc(quote(rel))}' alt='{esc(path.stem)}'></div>")
        parts.append("</details>")
    return parts


def _html_bin(bin_name: str | None, checks: list[PhysicsCheck]) -> list[str]:
    """One bin's checks, folded unless one of them fails or is undecided."""
    esc = html.escape
    parts = [f"<details{' open' if _failing(checks) else ''}><summary>{esc(_bin_title(bin_name, checks))}</summary>",
             "<table><tr><th>metric</th><th>reference</th><th>candidate</th><th>change</th>"
             "<th>95 % interval</th><th>allowed</th><th>events</th><th>result</th></tr>"]
    for check in checks:
        css = "pass" if check.passed else "fail"
        result = esc(check.outcome + (f": {check.reason}" if check.reason else ""))
        parts.append(
            f"<tr><td>{esc(check.metric)}</td><td>{_fmt(check.reference, '.4f')}</td>"
            f"<td>{_fmt(check.candidate, '.4f')}</td><td>{_fmt(check.change, '+.4f')}</td>"
            f"<td>{esc(_interval_text(check))}</td><td>{esc(check.rule)}</td><td>{check.n_events:,}</td>"
            f"<td class='{css}'>{result}</td></tr>"
        )
    parts += ["</table>", "</details>"]
    return parts


def _html_localization(localization: LocalizationReport) -> list[str]:
    esc = html.escape
    parts = [f"<p>Localization: {esc(localization.summary())}</p>",
             "<details><summary>tensors</summary>",
             "<table><tr><th>node</th><th>op</th><th>tensor</th><th>SQNR dB</th><th>max abs</th>"
             "<th>out of tol</th><th>exceeds</th></tr>"]
    for t in [t for t in localization.tensors if t.max_abs_error is not None][:200]:
        parts.append(f"<tr><td>{esc(t.node)}</td><td>{esc(t.op_type)}</td><td>{esc(t.tensor)}</td>"
                     f"<td>{_fmt(t.sqnr_db, '.1f')}</td><td>{_fmt(t.max_abs_error)}</td>"
                     f"<td>{_fmt(t.fraction_out_of_tolerance)}</td>"
                     f"<td class='{'fail' if t.exceeds else 'pass'}'>{'yes' if t.exceeds else 'no'}</td></tr>")
    parts += ["</table>", "</details>"]
    return parts
