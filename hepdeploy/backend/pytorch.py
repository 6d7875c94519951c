"""PyTorch modules (nn.Module, TorchScript, an ExportedProgram's module) on the CPU."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hepdeploy.backend.base import Runner, named_outputs
from hepdeploy.spec import TensorSpec


class TorchModuleRunner(Runner):
    """A loaded ``torch.nn.Module``-like callable; inputs passed positionally in the model's order."""

    backend = "torch"

    def __init__(self, module: Any, inputs: Sequence[TensorSpec] | Sequence[str],
                 output_names: Sequence[str] | None = None, name: str = "torch") -> None:
        super().__init__(name, inputs, output_names)
        self.module = module
        if hasattr(module, "eval"):
            try:
                module.eval()
            except NotImplementedError:  # an ExportedProgram's module() is already in eval form
                pass

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(array)) for array in feed.values()]
        with torch.inference_mode():
            values = self.module(*args)
        return named_outputs(values, self.output_names, self.name)
