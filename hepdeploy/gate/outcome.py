"""What every gate check returns, and how the checks make the gate's exit code.

A check is PASS, FAIL or UNDECIDED; INFO marks what is reported but not judged (the change map, a
performance comparison without an allowance, a check with nothing to look at, said so in its
reason). A check that could not be made is UNDECIDED with the reason, never PASS: the gate never
shows green for a comparison it did not make.

Exit codes (:func:`exit_code`): 0 every judged check passed; 1 any FAIL; 3 any UNDECIDED (and no
FAIL). 2 (bad input, or no baseline without ``--first-version``) is the CLI's, from a
:class:`~hepdeploy.errors.HepdeployError` raised before any check ran.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

GateOutcome = Literal["PASS", "FAIL", "UNDECIDED", "INFO"]

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_BAD_INPUT = 2
EXIT_UNDECIDED = 3

# The checks, in the order they run and are reported.
CHECK_ORDER = ("integrity", "interface", "variants", "non_inferiority", "change_map", "performance")


@dataclass
class Finding:
    """One judged (or reported) item of a check: a file, a tensor field, a metric in one bin, a variant.

    ``baseline`` / ``candidate`` are version N's and N+1's values (numbers, strings, small lists);
    ``interval`` the 95 % interval of the judged change (N+1 - N, or N+1/N - 1 when ``relative``);
    ``allowance`` the limit it is judged against and ``spec_key`` the dotted spec path that sets it
    (``gate.physics.max_auc_drop``), which annotations point at.
    """

    name: str
    outcome: GateOutcome
    message: str = ""
    metric: str | None = None
    klass: str | None = None
    bin: str | None = None
    baseline: Any = None
    candidate: Any = None
    change: float | None = None
    interval: tuple[float, float] | None = None
    allowance: float | None = None
    relative: bool = False
    improved: bool = False
    spec_key: str | None = None
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # Left out: what is unset (None, an empty extra, improved/relative False); a change of 0.0 is kept.
        data = {key: value for key, value in self.__dict__.items()
                if not (value is None or value is False or (isinstance(value, dict) and not value))}
        data["outcome"] = self.outcome
        if self.interval is not None:
            data["interval"] = [float(self.interval[0]), float(self.interval[1])]
        return data


@dataclass
class CheckResult:
    """One of the gate's checks (``CHECK_ORDER``): its outcome, one line saying why, and its findings."""

    check: str
    outcome: GateOutcome
    reason: str
    findings: list[Finding] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None

    def deciding(self) -> list[Finding]:
        """The findings with this check's outcome (the ones that decided it)."""
        return [f for f in self.findings if f.outcome == self.outcome]

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "outcome": self.outcome, "reason": self.reason,
                "findings": [f.to_dict() for f in self.findings], "details": self.details,
                "seconds": None if self.seconds is None else round(self.seconds, 3)}


def outcome_of(findings: list[Finding]) -> GateOutcome:
    """FAIL if any finding fails, else UNDECIDED if any is undecided, else PASS; INFO when nothing was judged."""
    outcomes = {f.outcome for f in findings}
    if "FAIL" in outcomes:
        return "FAIL"
    if "UNDECIDED" in outcomes:
        return "UNDECIDED"
    if "PASS" in outcomes:
        return "PASS"
    return "INFO"


def exit_code(checks: list[CheckResult]) -> int:
    """0 all judged checks PASS (INFO is not judged); 1 any FAIL; 3 any UNDECIDED and no FAIL."""
    outcomes = {c.outcome for c in checks}
    if "FAIL" in outcomes:
        return EXIT_FAIL
    if "UNDECIDED" in outcomes:
        return EXIT_UNDECIDED
    return EXIT_PASS


@dataclass
class GateModel:
    """One side of the comparison: where the model is, its version, the file that runs and its sha256."""

    name: str
    version: int | None
    path: str
    sha256: str | None = None
    platform: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class GateResult:
    """The whole gate: both models, every check, the seed and the tool versions (what gate.json holds)."""

    baseline: GateModel | None
    candidate: GateModel
    checks: list[CheckResult]
    seed: int = 0
    events: int | None = None
    spec_path: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    allowed: dict[str, str] = field(default_factory=dict)  # --allow-overwrite / --allow-interface-change reasons
    first_version: bool = False
    seconds: float | None = None

    @property
    def exit_code(self) -> int:
        return exit_code(self.checks)

    @property
    def outcome(self) -> str:
        return {EXIT_PASS: "PASS", EXIT_FAIL: "FAIL", EXIT_UNDECIDED: "UNDECIDED"}[self.exit_code]

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.check == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": 1, "outcome": self.outcome, "exit_code": self.exit_code,
                "baseline": None if self.baseline is None else self.baseline.to_dict(),
                "candidate": self.candidate.to_dict(), "first_version": self.first_version,
                "seed": self.seed, "events": self.events, "spec": self.spec_path, "allowed": self.allowed,
                "versions": self.versions, "seconds": None if self.seconds is None else round(self.seconds, 3),
                "checks": [c.to_dict() for c in self.checks]}
