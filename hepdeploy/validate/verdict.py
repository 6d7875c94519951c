"""The verdict algebra: which policy judges a candidate, and how its numerical outcome (PASS or FAIL) and
its physics outcome (PASS, FAIL or UNDECIDED, see :mod:`hepdeploy.validate.physics`) combine into one."""
from __future__ import annotations

from typing import TYPE_CHECKING

from hepdeploy.compare import DEFAULT_POLICY, precision_key
from hepdeploy.validate.report import VariantReport

if TYPE_CHECKING:
    from hepdeploy.spec import ModelSpec

def choose_policy(
    precision: str, physics_ran: bool, spec: ModelSpec | None, policy: str | None, why_not: str = "no labels/targets"
) -> tuple[str, str]:
    """(policy, why): explicit > spec.validation.policy > default; physics falls back without labels.

    ``policy`` comes from a :class:`~hepdeploy.judgement.Judgement`, which has checked it."""
    key = precision_key(precision)
    if policy is not None:
        chosen, why = policy, "asked for"
    elif spec is not None and key in spec.validation.policy:
        chosen, why = spec.validation.policy[key], f"spec validation.policy.{key}"
    else:
        chosen, why = DEFAULT_POLICY[key], f"default for {key}"
    if chosen in ("physics", "either", "both") and not physics_ran:
        return "numerical", f"{why} was {chosen}, but {why_not}: numerical checks decide"
    return chosen, why


def verdict_of(report: VariantReport) -> tuple[str, str]:
    """(PASS | FAIL | UNDECIDED, the verdict in one line): the report's policy combines the numerical
    outcome with the physics one."""
    hard = report.hard_failures
    if hard:
        return "FAIL", "FAIL: " + "; ".join(c.summary() for c in hard)
    failed_outputs = [c.name for c in report.numerical if not c.passed]
    numerical = "PASS" if not failed_outputs else "FAIL"
    num_text = "numerical checks pass" if not failed_outputs else f"numerical checks fail on {', '.join(failed_outputs)}"
    phys = report.physics
    physics = phys.outcome if phys.ran else None
    if physics is None:
        phys_text = "physics checks did not run"
    elif physics == "PASS":
        phys_text = "physics checks pass"
    else:
        deciding = phys.deciding()
        word = "fail" if physics == "FAIL" else "are undecided"
        names = ", ".join(c.name for c in deciding[:3]) + (f" and {len(deciding) - 3} more" if len(deciding) > 3 else "")
        phys_text = f"physics checks {word} on {names}"
        if physics == "UNDECIDED" and deciding[0].reason:
            phys_text += f" ({deciding[0].name}: {deciding[0].reason})"
    outcome = combine(report.policy, numerical, physics)
    return outcome, f"{outcome} (policy {report.policy}): {num_text}; {phys_text}"


def combine(policy: str, numerical: str, physics: str | None) -> str:
    """One outcome from the numerical and physics ones under ``policy`` (physics None: it did not run)."""
    if policy == "numerical" or physics is None:
        return numerical
    if policy == "physics":
        return physics
    outcomes = {numerical, physics}
    if policy == "either":
        return "PASS" if "PASS" in outcomes else "FAIL" if outcomes == {"FAIL"} else "UNDECIDED"
    return "FAIL" if "FAIL" in outcomes else "PASS" if outcomes == {"PASS"} else "UNDECIDED"  # both
