"""What a hepdeploy process leaves behind when it is killed, and how the next one cleans it up.

Temporary work folders are named ``hepdeploy-KIND-PID-xxxxxxxx``: a process killed outright (SIGKILL,
the OOM killer) cannot remove its own, so every command sweeps the folders whose process is gone
when it starts, as the shared-memory regions of dead clients already are. Child processes that do
the heavy work (the ModelOpt worker, a Triton server) are asked to die with their parent.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_WORK_FOLDER = re.compile(r"^hepdeploy-[a-z][a-z0-9-]*?-(\d+)-[A-Za-z0-9_]{8}$")


def work_folder(kind: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary folder this process owns, removed when the ``with`` block ends (and, if the process is
    killed first, by the next hepdeploy command: :func:`sweep_stale_work_folders`)."""
    return tempfile.TemporaryDirectory(prefix=f"hepdeploy-{kind}-{os.getpid()}-")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def sweep_stale_work_folders(root: Path | None = None) -> list[Path]:
    """Remove the work folders whose process no longer runs; the folders removed."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    with contextlib.suppress(OSError):
        for path in root.iterdir():
            match = _WORK_FOLDER.match(path.name)
            if match is None or int(match.group(1)) == os.getpid() or process_alive(int(match.group(1))):
                continue
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
    if removed:
        log.debug("removed %d work folder(s) of processes that are gone", len(removed))
    return removed


def die_with_parent() -> None:
    """``preexec_fn`` of a child process: SIGTERM when the process that started it dies, even by SIGKILL
    (Linux; ties to the forking thread). Elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
