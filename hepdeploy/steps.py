"""The status every pipeline step returns (ok / failed / skipped / rejected, with a reason)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# "rejected": the step worked, but what it made did not pass validation, so it is kept out of
# the deployment (a variant the build made but does not publish).
Status = Literal["ok", "failed", "skipped", "rejected"]


@dataclass
class StepResult:
    """What one step did: its status, why (when not ok), and the files it wrote."""

    step: str
    status: Status
    reason: str = ""
    outputs: list[Path] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None  # the variant a step made or judged (None: not about one variant)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def line(self) -> str:
        text = f"{self.step}: {self.status}"
        if self.reason:
            text += f": {self.reason}"
        return text
