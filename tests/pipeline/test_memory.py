"""The peak resident memory of one piece of work, as a build step records it."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from hepdeploy.memory import peak_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-step peaks read /proc (Linux)")
def test_each_block_gets_its_own_peak() -> None:
    with peak_memory() as big:
        block = np.ones(300 << 17)  # 300 MiB of float64, touched
        del block
    with peak_memory() as small:
        np.ones(1 << 10).sum()
    assert big.process_mib is not None and small.process_mib is not None
    assert big.process_mib >= 300
    # The mark was reset between the blocks: the second one does not inherit the first one's peak.
    assert small.process_mib < big.process_mib - 200
    assert big.as_dict()["peak_rss_mib"] == round(big.process_mib, 1)
