"""The source-framework registry: every entry can be loaded, run and converted, and the spec and sniffing read it."""
from __future__ import annotations

import pytest

from hepdeploy.errors import SpecError
from hepdeploy.frameworks import FRAMEWORK_NAMES, REGISTRY, framework_of_suffix, source_framework
from hepdeploy.registry import named_function
from hepdeploy.spec import FILE_FRAMEWORKS, SourceSpec


@pytest.mark.parametrize("entry", REGISTRY, ids=[f.name for f in REGISTRY])
def test_every_framework_names_importable_functions(entry) -> None:  # noqa: ANN001
    for target in (entry.loader, entry.runner, entry.converter):
        if target is not None:
            assert callable(named_function(target)), target
    assert source_framework(entry.name) is entry


def test_the_spec_accepts_the_registry_and_zoo_is_no_framework() -> None:
    assert FILE_FRAMEWORKS == FRAMEWORK_NAMES
    assert SourceSpec(framework="zoo", zoo="facile").zoo == "facile"  # a spec producer, resolved before any backend
    with pytest.raises(SpecError, match="zoo"):
        source_framework("zoo")
    with pytest.raises(SpecError, match="unknown source framework"):
        source_framework("caffe")


def test_suffixes_name_one_framework_each() -> None:
    assert framework_of_suffix(".ONNX").name == "onnx"  # type: ignore[union-attr]
    assert framework_of_suffix(".h5").name == "keras"  # type: ignore[union-attr]
    assert framework_of_suffix(".pt2").name == "exported_program"  # type: ignore[union-attr]
    assert framework_of_suffix(".txt") is None
    suffixes = [s for f in REGISTRY for s in f.suffixes]
    assert len(suffixes) == len(set(suffixes))
