"""What a killed hepdeploy process leaves in the temporary folder is removed by the next command."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from click.testing import CliRunner

from hepdeploy.cli import main


def test_the_next_command_sweeps_work_folders_of_processes_that_are_gone() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    pid = int(dead.stdout)  # that process has ended
    root = Path(tempfile.gettempdir())
    stale = [root / f"hepdeploy-{kind}-{pid}-abcd1234" for kind in ("opt", "fp16", "ort-child")]
    for folder in stale:
        folder.mkdir()
        (folder / "prepared.onnx").write_bytes(b"left by a killed process")
    alive = root / f"hepdeploy-opt-{os.getpid()}-efgh5678"  # this process's own: kept
    alive.mkdir()
    try:
        assert CliRunner().invoke(main, ["triton", "check", str(root / "no-such-repo")]).exit_code == 2
        assert not any(folder.exists() for folder in stale)
        assert alive.is_dir()
    finally:
        alive.rmdir()
