"""Every shipped example spec parses, and its paths and names are what the docs say."""
from __future__ import annotations

from pathlib import Path

import pytest

from hepdeploy.spec import load_spec

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_examples_are_shipped() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_parses(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name
    for located in (spec.source.path, spec.source.weights, spec.data.calibration, spec.data.reference):
        if located is not None:  # resolved against the example's folder when it was loaded
            assert Path(located).is_absolute() and Path(located).is_relative_to(path.parent)
    for tensor in [*spec.inputs, *spec.outputs]:
        assert tensor.shape, f"{path.name}: {tensor.name} has no shape"
    if spec.triton.max_batch_size == 0:
        assert not spec.batched
    elif spec.triton.max_batch_size:
        assert spec.batched
