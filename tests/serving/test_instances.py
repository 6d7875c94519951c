"""One instance's memory, measured; the instance count within cores and memory."""
from __future__ import annotations

import pytest

from hepdeploy.errors import BadInputError, ModelLoadError
from hepdeploy.serving.instances import choose_instances, instance_memory_bytes
from hepdeploy.serving.latency import data_inputs_for


def test_an_instance_at_a_larger_profile_needs_more_memory(facile_onnx, tmp_path) -> None:  # noqa: ANN001
    inputs_for = data_inputs_for(facile_onnx.inputs, seed=0)
    small = instance_memory_bytes(facile_onnx.onnx_path, inputs_for(1000))
    large_inputs = inputs_for(60000)
    large = instance_memory_bytes(facile_onnx.onnx_path, large_inputs)
    assert 0 < small < large
    # The graph's activations at 60,000 rows are many times its 11 MB of inputs.
    assert large - small > 2 * sum(v.nbytes for v in large_inputs.values())
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(ModelLoadError, match="measuring one instance's memory failed"):
        instance_memory_bytes(broken, inputs_for(10))


def test_instances_are_what_the_budget_needs_within_the_cores_and_the_memory() -> None:
    mib = 2**20
    assert choose_instances(8, 4096 * mib, 500 * mib, 3)[0] == 3
    count, why = choose_instances(2, 4096 * mib, 500 * mib, 4)
    assert count == 2 and "only 2 fit the cores" in why
    count, why = choose_instances(8, 1200 * mib, 500 * mib, 4)
    assert count == 2 and "only 2 fit the memory" in why
    with pytest.raises(BadInputError, match="one instance needs 500.0 MiB"):
        choose_instances(8, 100 * mib, 500 * mib, 1)
