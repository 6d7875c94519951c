"""Peak resident memory of one piece of work: this process and the child processes it ran.

Linux keeps a high-water mark of each process's resident set (``VmHWM`` in ``/proc/PID/status``) and
lets its owner reset it (``5`` into ``/proc/PID/clear_refs``), so the peak of one build step is read
without sampling: reset the marks of this process and of its live children, do the step, read them.
A child that ends within the step (an ONNX Runtime check in a child process) is caught by
``getrusage(RUSAGE_CHILDREN)``, whose peak is the largest of every waited-for child so far and so is
only recorded when the step raised it; a forked child counts the pages it shared with this process at the
fork, so its figure is close to this process's size then, not only its own. Where ``/proc`` is missing
(not Linux) only ``getrusage`` is read. External tools that read this process's ``ru_maxrss`` (``time -v``)
see the peak since the last step began, not the whole run's: the build's peak is the largest step's.
"""
from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass
class PeakMemory:
    """Peaks in MiB; None where they could not be read."""

    process_mib: float | None = None  # this process, within the work
    children_mib: float | None = None  # the largest child process that ran within the work

    def as_dict(self) -> dict[str, float]:
        peaks = {"peak_rss_mib": self.process_mib, "children_peak_rss_mib": self.children_mib}
        return {key: round(value, 1) for key, value in peaks.items() if value is not None}

    @property
    def largest_mib(self) -> float | None:
        values = [v for v in (self.process_mib, self.children_mib) if v is not None]
        return max(values) if values else None


@contextmanager
def peak_memory() -> Iterator[PeakMemory]:
    """Measure the peak resident memory of the work in the ``with`` block (see the module docstring)."""
    peak = PeakMemory()
    own = _PROC / "self"
    resettable = _reset_mark(own)
    for child in _children(os.getpid()):
        _reset_mark(_PROC / str(child))
    waited_before = _rusage_children_mib()
    try:
        yield peak
    finally:
        peak.process_mib = _high_water_mib(own) if resettable else _rusage_self_mib()
        live = [m for m in (_high_water_mib(_PROC / str(c)) for c in _children(os.getpid())) if m is not None]
        waited_after = _rusage_children_mib()
        if waited_after > waited_before:
            live.append(waited_after)
        peak.children_mib = max(live) if live else None


def _reset_mark(process: Path) -> bool:
    try:
        (process / "clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _high_water_mib(process: Path) -> float | None:
    try:
        for line in (process / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def _children(pid: int) -> list[int]:
    """Live descendants of ``pid`` (Linux: every thread's ``children`` list, recursively)."""
    found: list[int] = []
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            direct = [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
        for child in direct:
            found.append(child)
            found.extend(_children(child))
    return found


def _rusage_self_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _rusage_children_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
