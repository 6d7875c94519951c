"""Atomic file writes and safe names.

Every file hepdeploy writes goes through here: written to a temporary file in the
destination folder, flushed and fsync'ed, then renamed over the target, so a killed
process never leaves a half-written file and an existing output is only replaced by a
complete new one.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hepdeploy.errors import BadInputError, UnsafeNameError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def check_safe_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a plain file-system-safe name, else raise UnsafeNameError.

    Refuses empty names, path separators, ``..``, absolute paths and anything outside
    ``[A-Za-z0-9_.-]`` so a model or tensor name can never escape its folder.
    """
    if not isinstance(name, str) or not name:
        raise UnsafeNameError(f"{what} is empty")
    if "/" in name or "\\" in name or name in (".", "..") or ".." in name or not _SAFE_NAME.match(name):
        raise UnsafeNameError(
            f"{what} {name!r} is not a safe name (letters, digits, '_', '.', '-'; no '/', '..' or spaces)"
        )
    return name


def check_tensor_name(name: str, what: str = "tensor name") -> str:
    """A tensor name as ONNX and Triton take it: any non-empty text without control characters.

    Tensor names are kept verbatim (``ID_pred/Softmax:0``, ``output/BiasAdd``): CMSSW asks for
    them by name. Only file names derived from them are escaped (:func:`file_name_for`).
    """
    if not isinstance(name, str) or not name:
        raise UnsafeNameError(f"{what} is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name) > 1024:
        raise UnsafeNameError(f"{what} {name!r} has control characters or is longer than 1024 characters")
    return name


def file_name_for(name: str) -> str:
    """A file name derived from a tensor name: safe names unchanged, anything else percent-escaped.

    ``ID_pred/Softmax:0`` becomes ``ID_pred%2FSoftmax%3A0``: one file, never a path, and two
    names never meet in one file name (the escaping is reversible).
    """
    from urllib.parse import quote

    if _SAFE_NAME.match(name) and ".." not in name and name not in (".",):
        return name
    escaped = quote(name, safe="-_")
    escaped = escaped.replace(".", "%2E") if set(escaped) <= {"."} or ".." in escaped else escaped
    if len(escaped.encode()) > 200:  # file systems stop at 255 bytes: keep a prefix and a digest of the whole
        escaped = f"{escaped[:180]}~{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return escaped


def check_output_folder(path: Path) -> Path:
    """Raise BadInputError when the folder that would hold ``path`` does not exist."""
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise BadInputError(f"{path}: output folder {parent} does not exist")
    return Path(path)


def check_input_file(path: Path, what: str = "file") -> Path:
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: {what} not found")
    if not path.is_file():
        raise BadInputError(f"{path}: {what} is not a regular file")
    return path


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it over ``target`` on success.

    On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    check_output_folder(target)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix if suffix is not None else ".tmp", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would
    # (0666 minus the umask) so e.g. a Triton container running as another user can read it.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(target: Path, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: Path, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def file_digest(path: Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (md5 only as an identifier, as Triton's checksum agent uses it)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    return file_digest(path, "sha256", chunk)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (best effort: not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
