"""Keras models and TensorFlow SavedModel functions."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hepdeploy.backend.base import Runner, named_outputs
from hepdeploy.spec import TensorSpec


class KerasRunner(Runner):
    """A loaded Keras model; inputs passed in the model's order, as a list when it has several."""

    backend = "keras"

    def __init__(self, model: Any, inputs: Sequence[TensorSpec] | Sequence[str],
                 output_names: Sequence[str] | None = None, name: str = "keras") -> None:
        super().__init__(name, inputs, output_names)
        self.model = model

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = list(feed.values())
        # Pass the inputs in the structure the model was built with (a list, or one tensor).
        as_list = len(args) > 1 or isinstance(getattr(self.model, "input", None), (list, tuple))
        values = self.model(args if as_list else args[0], training=False)
        names = self.output_names or [n for n in getattr(self.model, "output_names", None) or [] if n.isidentifier()]
        return named_outputs(values, names or None, self.name)


class SavedModelRunner(Runner):
    """A TensorFlow SavedModel through a positional callable (``loaders.load_savedmodel_callable``)."""

    backend = "tensorflow"

    def __init__(self, function: Callable[..., Any], inputs: Sequence[TensorSpec] | Sequence[str],
                 output_names: Sequence[str] | None = None, name: str = "savedmodel") -> None:
        super().__init__(name, inputs, output_names)
        self.function = function

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return named_outputs(self.function(*feed.values()), self.output_names, self.name)
