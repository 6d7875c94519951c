"""What the registries share: a function named as ``module:function``.

The variant, platform and framework registries live on the ground floor and name their makers,
fillers, checkers, loaders and converters by string, so none of them imports a floor above it; the
floor that calls one resolves it here, when it first needs it.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def named_function(target: str) -> Callable[..., Any]:
    """The function ``target`` ("package.module:function") names."""
    module_name, _, function = target.partition(":")
    found = getattr(importlib.import_module(module_name), function)
    if not callable(found):
        raise TypeError(f"{target} is not a function")
    return found  # type: ignore[no-any-return]
