"""Reading and writing named tensors (.npz now; .h5, .root and ONNX .pb by later issues)."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from hepdeploy.errors import DataError
from hepdeploy.fsutil import atomic_write_bytes, check_input_file


def save_tensors(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays to an ``.npz`` file atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    return atomic_write_bytes(Path(path), buffer.getvalue())


def load_tensors(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file (no pickles) or raise DataError."""
    path = check_input_file(Path(path), "data file")
    if path.suffix != ".npz":
        raise DataError(f"{path}: unsupported data format {path.suffix!r} (expected .npz)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable .npz file ({type(error).__name__})") from None
