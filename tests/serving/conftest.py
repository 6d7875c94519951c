"""The zoo's FACILE converted to ONNX once per session, with its reference inputs, for the serving tests."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass(frozen=True)
class ServedZooModel:
    onnx_path: Path
    inputs: dict[str, np.ndarray]  # the reference set's inputs, batch first


@pytest.fixture(scope="session")
def facile_onnx(zoo_export, tmp_path_factory: pytest.TempPathFactory) -> ServedZooModel:  # noqa: ANN001
    from hepdeploy.convert import convert_from_spec
    from hepdeploy.validate.reference import load_data_file

    exported = zoo_export("facile")
    out = tmp_path_factory.mktemp("serving-facile") / "facile.onnx"
    convert_from_spec(exported.spec, out)
    data = load_data_file(exported.reference_path)
    return ServedZooModel(out, {t.name: data[t.name] for t in exported.spec.inputs})
