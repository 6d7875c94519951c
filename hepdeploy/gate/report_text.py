"""How every gate report writes a finding: its title, one line of text, its values and interval.

Shared by the report files (:mod:`hepdeploy.gate.reports`) and the HTML page (:mod:`hepdeploy.gate.page`).
"""
from __future__ import annotations

import math
from typing import Any

from hepdeploy.gate.outcome import Finding, GateResult

_CELL_LIMIT = 200
# Failing findings first, then undecided: what a reader (and a truncated table) must see.
OUTCOME_RANK = {"FAIL": 0, "UNDECIDED": 1, "PASS": 2, "INFO": 3}


def model_label(result: GateResult) -> str:
    base = result.baseline
    before = f"v{base.version}" if base is not None and base.version is not None else "no baseline"
    after = f"v{result.candidate.version}" if result.candidate.version is not None else "candidate"
    return f"{result.candidate.name} {before} → {after}"


def number_text(value: Any, spec: str = ".4g") -> str:
    """A finding's value as a table shows it: numbers formatted, anything else as text, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = str(value)
        return text if len(text) <= _CELL_LIMIT else text[:_CELL_LIMIT - 1] + "…"
    return format(value, spec) if math.isfinite(value) else str(value)


def interval_text(finding: Finding) -> str:
    if finding.interval is None:
        return "-"
    unit = " (relative)" if finding.relative else ""
    return f"[{finding.interval[0]:+.4g}, {finding.interval[1]:+.4g}]{unit}"


def _word_edge(text: str, index: int) -> bool:
    return index < 0 or index >= len(text) or not (text[index].isalnum() or text[index] == "_")


def _names(text: str, part: str) -> bool:
    """Whether ``part`` stands in ``text`` as a whole word (class ``t`` is not named by ``int8-cpu``)."""
    start = text.find(part)
    while start >= 0:
        if _word_edge(text, start - 1) and _word_edge(text, start + len(part)):
            return True
        start = text.find(part, start + 1)
    return False


def finding_title(check: str, finding: Finding) -> str:
    """check: name [metric, class, bin]: the one name a finding has in JUnit, Code Quality and annotations."""
    where = [part for part in (finding.metric, finding.klass, finding.bin) if part and not _names(finding.name, part)]
    return f"{check}: {finding.name}" + (f" [{', '.join(where)}]" if where else "")


def named_message(finding: Finding) -> str:
    """``name: message``, without saying the name twice when the message already starts with it."""
    if not finding.message:
        return finding.name
    return finding.message if finding.message.startswith(finding.name) else f"{finding.name}: {finding.message}"


def finding_text(finding: Finding) -> str:
    """One line: the message, both models' values, the change with its interval and the allowance."""
    parts = [finding.message] if finding.message else []
    if finding.baseline is not None or finding.candidate is not None:
        parts.append(f"N {number_text(finding.baseline)}, N+1 {number_text(finding.candidate)}")
    if finding.change is not None:
        parts.append(f"change {number_text(finding.change, '+.4g')}, 95 % interval {interval_text(finding)}")
    if finding.allowance is not None:
        parts.append(f"allowance {number_text(finding.allowance)}"
                     + (f" ({finding.spec_key})" if finding.spec_key else ""))
    if finding.improved:
        parts.append("improved")
    return "; ".join(parts) or finding.outcome
