"""A conversion killed with SIGKILL never leaves a half-written .onnx at the target, and an
existing output is only ever replaced by a complete new one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from hepdeploy.artifacts import read_artifact

# Runs `hepdeploy convert` in a child process that SIGKILLs itself at the worst moment:
# half-way through writing the model bytes, or after writing them but before the rename.
CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path

    mode, source, target = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "mid-write":
        real_write = Path.write_bytes
        def write_bytes(self, data):
            if self.name.endswith(".onnx.tmp"):
                with open(self, "wb") as handle:
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            return real_write(self, data)
        Path.write_bytes = write_bytes
    elif mode == "before-rename":
        real_replace = os.replace
        def replace(src, dst, *args, **kwargs):
            if str(dst).endswith(".onnx"):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst, *args, **kwargs)
        os.replace = replace
    from hepdeploy.cli import main
    main(["convert", source, "-o", target, "--opset", "18"], standalone_mode=True)
""")


def _run_child(mode: str, source: Path, target: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", CHILD, mode, str(source), str(target)], capture_output=True,
                          text=True, timeout=180, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mid-write", "before-rename"])
def test_killed_conversion_leaves_no_half_written_onnx(torch_sources, tmp_path, mode):
    target = tmp_path / "jet.onnx"
    # Fresh target: after the kill there is no .onnx at the target at all.
    result = _run_child(mode, torch_sources["jet.onnx"], target)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".onnx"]
    # Existing target: after the kill it is the old, complete artifact, byte for byte.
    from hepdeploy.cli import main

    with pytest.raises(SystemExit) as done:
        main(["convert", str(torch_sources["jet.onnx"]), "-o", str(target)], standalone_mode=True)
    assert done.value.code in (0, None)
    old = target.read_bytes()
    result = _run_child(mode, torch_sources["jet.onnx"], target)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert target.read_bytes() == old
    onnx.checker.check_model(onnx.load(str(target)))
    assert read_artifact(target).sidecar.opset == 17  # the old one, not the killed opset-18 write
