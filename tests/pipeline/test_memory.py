"""The peak resident memory of one piece of work, as a build step records it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Run in a fresh interpreter: the test session's own size (gigabytes after the zoo tests) would hide
# a 300 MiB block in its high-water mark.
PROBE = """
import json
import numpy as np
from hepdeploy.memory import peak_memory
with peak_memory() as big:
    block = np.ones(300 << 17)  # 300 MiB of float64, touched
    del block
with peak_memory() as small:
    np.ones(1 << 10).sum()
print(json.dumps([big.process_mib, small.process_mib, big.as_dict()]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-step peaks read /proc (Linux)")
def test_each_block_gets_its_own_peak() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    big, small, record = json.loads(done.stdout)
    assert big >= 300
    # The mark was reset between the blocks: the second one does not inherit the first one's peak.
    assert small < big - 200
    assert record["peak_rss_mib"] == round(big, 1)
