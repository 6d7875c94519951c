"""The variant registry is complete: what each variant accepts, whether it can be tuned, how its speed is
known and what its files are called are read from its entry, and one precision table holds what each
precision is held to."""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import pytest

from hepdeploy.cli.commands_tune import tune_command
from hepdeploy.compare import DEFAULT_POLICY, MIN_SQNR_DB, PRECISION_DEFAULTS, PRECISION_TABLE, resolve_tolerances
from hepdeploy.errors import BadInputError, SpecError
from hepdeploy.pipeline import variant_file
from hepdeploy.spec import VariantSpec, spec_from_dict
from hepdeploy.validate.verdict import choose_policy
from hepdeploy.variants import REGISTRY, TUNABLE_VARIANTS, variant_kind


def _spec(variants: list[Any]) -> dict[str, Any]:
    return {"name": "m", "source": {"framework": "onnx", "path": "m.onnx"},
            "inputs": [{"name": "x", "shape": ["batch", 4]}], "outputs": [{"name": "y", "shape": ["batch", 1]}],
            "variants": variants}


def test_every_option_is_a_spec_key_and_every_key_is_some_variants_option() -> None:
    keys = set(VariantSpec.model_fields) - {"name"}
    listed = set().union(*(kind.options for kind in REGISTRY))
    assert listed == keys
    for kind in REGISTRY:
        if kind.maker is not None:  # an importable maker for every variant that is made
            module, _, function = kind.maker.partition(":")
            assert callable(getattr(importlib.import_module(module), function)), kind.name


def test_tunable_variants_come_from_the_registry() -> None:
    assert TUNABLE_VARIANTS == tuple(k.name for k in REGISTRY if k.tunable) == ("fp16", "int8-trt", "int8-cpu")
    choice = next(p for p in tune_command.params if p.name == "variant")
    assert tuple(choice.type.choices) == TUNABLE_VARIANTS  # type: ignore[attr-defined]
    assert all(kind.applies("tune") == kind.tunable for kind in REGISTRY)
    # Speed is timed here only where ONNX Runtime on this CPU is the variant's own runtime (and FP32's).
    assert {k.name for k in REGISTRY if k.speed == "timed"} == {"fp32", "int8-cpu"}


@pytest.mark.parametrize(("variant", "key", "value"), [
    ("int8-cpu", "workspace_mib", 1024), ("fp32", "tune", True), ("fp16", "calibration_method", "entropy"),
    ("tensorrt", "keep_nodes", ["^a$"]), ("int8-trt", "per_channel", False), ("int8-cpu", "high_precision_dtype", "fp16"),
])
def test_a_spec_option_that_does_not_apply_is_refused(variant: str, key: str, value: Any) -> None:
    with pytest.raises(SpecError, match=rf"m.yaml: variants.1: .*{key} does not apply to the {variant} variant"):
        spec_from_dict(_spec(["fp32", {"name": variant, key: value}]), where="m.yaml")
    with pytest.raises(BadInputError, match=f"{key} does not apply to the {variant} variant"):
        variant_kind(variant).check_options([key])
    # The value the option has anyway (its default) is not refused: only a value that would change something.
    assert spec_from_dict(_spec([{"name": variant}])).variants[0].name == variant
    written_in_full = spec_from_dict(_spec([variant])).model_dump(mode="json", exclude_none=True)
    assert spec_from_dict(written_in_full).variants[0].name == variant  # a spec dumped with every default loads


def test_one_pair_of_keys_keeps_nodes_in_high_precision_and_the_old_words_still_load(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hepdeploy.spec"):
        spec = spec_from_dict(_spec([
            {"name": "fp16", "fp32_nodes": ["^a$"], "fp32_op_types": ["Softmax"]},
            {"name": "int8-cpu", "exclude_nodes": ["^b$"], "exclude_op_types": ["Conv"], "keep_nodes": ["^c$"]},
        ]))
    fp16, int8 = spec.variants
    assert (fp16.keep_nodes, fp16.keep_op_types) == (["^a$"], ["Softmax"])
    assert (sorted(int8.keep_nodes), int8.keep_op_types) == (["^b$", "^c$"], ["Conv"])
    assert "'exclude_nodes' is deprecated, write 'keep_nodes'" in caplog.text
    assert not {"fp32_nodes", "exclude_nodes"} & set(VariantSpec.model_fields)


def test_variant_files_are_named_one_way(tmp_path: Path) -> None:
    assert variant_kind("int8-cpu").filename("facile") == "facile_int8_cpu.onnx"
    assert variant_kind("tensorrt").filename("facile") == "facile_tensorrt.plan"
    assert variant_kind("int8-cpu").filename("facile", tuned=True) == "facile_int8_cpu_tuned.onnx"
    assert variant_file(tmp_path, "facile", "int8-trt", tuned=True) == tmp_path / "variants" / "facile_int8_trt_tuned.onnx"


def test_one_precision_table_sets_tolerances_sqnr_floor_and_policy() -> None:
    for key, entry in PRECISION_TABLE.items():
        assert (PRECISION_DEFAULTS[key], MIN_SQNR_DB[key], DEFAULT_POLICY[key]) == \
            (entry.tolerances, entry.min_sqnr_db, entry.policy)
        assert choose_policy(key, True, None, None) == (entry.policy, f"default for {key}")
    mixed = resolve_tolerances("mixed", ["y"])["y"]  # INT8 with FP16 elsewhere is judged as INT8
    assert (mixed.atol, mixed.rtol) == (PRECISION_TABLE["int8"].tolerances.atol, PRECISION_TABLE["int8"].tolerances.rtol)
    floors = [PRECISION_TABLE[k].min_sqnr_db for k in ("fp32", "fp16", "int8")]
    assert floors == sorted(floors, reverse=True)
