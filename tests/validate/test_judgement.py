"""The Judgement bundle (precision, tolerances, policy, chunk size): checked when made, and followed by
validation; the verdict algebra it feeds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from hepdeploy.errors import BadInputError, DataError
from hepdeploy.judgement import Judgement
from hepdeploy.validate import make_reference, validate_candidate
from hepdeploy.validate.verdict import choose_policy, combine


def test_a_judgement_is_checked_when_it_is_made() -> None:
    judgement = Judgement.parse(atol=["1e-3", "prob:1e-2"], rtol=0.5)
    assert judgement.atol.default == 1e-3 and judgement.atol.per_output == {"prob": 1e-2}
    assert judgement.rtol.default == 0.5 and not judgement.rtol.per_output
    with pytest.raises(DataError, match="unknown policy"):
        Judgement(policy="majority")
    with pytest.raises(DataError, match="unknown precision"):
        Judgement(precision="fp8")
    with pytest.raises(BadInputError, match="chunk size"):
        Judgement(chunk_size=0)
    with pytest.raises(DataError, match="not a number"):
        Judgement.parse(atol="prob:tiny")
    # The sidecar's precision fills in only where the judgement names none.
    assert Judgement().with_precision("fp16").precision == "fp16"
    assert Judgement(precision="fp32").with_precision("int8").precision == "fp32"
    assert Judgement().chunk_for(None) == 4096 and Judgement(chunk_size=7).chunk_for(None) == 7


def _scaled_copy(source: Path, target: Path, factor: float) -> Path:
    model = onnx.load(str(source))
    init = next(i for i in model.graph.initializer if len(i.dims) == 2)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    onnx.save(model, str(target))
    return target


def test_validation_follows_the_judgement(tiny_onnx: Path, tiny_data: Path, tmp_path: Path) -> None:
    reference = make_reference(tiny_onnx, tiny_data)  # no labels: physics cannot run
    changed = _scaled_copy(tiny_onnx, tmp_path / "changed.onnx", 1.01)
    default = validate_candidate(changed, reference)
    assert default.outcome == "FAIL" and default.precision == "fp32" and default.policy == "numerical"
    loose = validate_candidate(changed, reference, judgement=Judgement.parse(atol=1.0))
    assert loose.passed, loose.verdict
    assert {t.atol_source for t in loose.tolerances.values()} == {"--atol"}
    with pytest.raises(DataError, match="unknown output"):
        validate_candidate(changed, reference, judgement=Judgement.parse(atol="nope:1"))
    # Physics asked for without labels: the numbers decide, and the report says why.
    asked = validate_candidate(tiny_onnx, reference, judgement=Judgement(precision="fp16", policy="physics"))
    assert asked.precision == "fp16" and asked.policy == "numerical" and asked.passed
    assert "was physics" in asked.policy_reason


def test_the_policies_combine_numerical_and_physics_outcomes() -> None:
    assert combine("numerical", "PASS", "FAIL") == "PASS"
    assert combine("physics", "FAIL", "PASS") == "PASS"
    assert combine("physics", "FAIL", None) == "FAIL"  # physics did not run: the numbers decide
    assert combine("either", "FAIL", "PASS") == "PASS"
    assert combine("either", "FAIL", "UNDECIDED") == "UNDECIDED"
    assert combine("both", "PASS", "UNDECIDED") == "UNDECIDED"
    assert combine("both", "UNDECIDED", "FAIL") == "FAIL"
    assert choose_policy("int8", True, None, None) == ("physics", "default for int8")
    assert choose_policy("mixed", False, None, None)[0] == "numerical"
