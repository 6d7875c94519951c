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

MAX_NAME_LENGTH = 200
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
    if len(name) > MAX_NAME_LENGTH:  # a folder or file is made of it, with suffixes: stay well inside 255
        raise UnsafeNameError(f"{what} is {len(name)} characters long; at most {MAX_NAME_LENGTH}")
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


# A file is written as ".NAME.xxxxxxxx.tmp" beside its target, then renamed: NAME must leave room for that.
_TEMP_NAME_EXTRA = 14
_NAME_MAX = 255


def shown(path: Path | str) -> str:
    """A path as an error line shows it: as it is, or quoted when it holds a newline or other control
    character that would break the line."""
    text = str(path)
    return repr(text) if any(ord(c) < 32 or ord(c) == 127 for c in text) else text


def _missing_reason(path: Path) -> str:
    """Why ``path`` cannot be reached: a broken or looping link, a parent that is a file, or a missing folder."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            return "is a symbolic link that loops"
        except OSError:
            return "is a symbolic link to nothing"
    for parent in path.parents:
        if parent.is_symlink() and not parent.exists():
            return f"its parent {shown(parent)} is a broken or looping symbolic link"
        if parent.exists():
            return f"its parent {shown(parent)} is a file, not a folder" if not parent.is_dir() else "not found"
    return "not found"


def output_problem(path: Path) -> str | None:
    """Why a file cannot be written at ``path`` (checked by writing a probe beside it), or None."""
    path = Path(path).expanduser()
    if len(path.name.encode()) + _TEMP_NAME_EXTRA > _NAME_MAX:
        return f"the file name is too long ({len(path.name.encode())} bytes; at most {_NAME_MAX - _TEMP_NAME_EXTRA})"
    if path.is_dir():
        return "is a folder"
    parent = path.absolute().parent
    if parent.exists() and not parent.is_dir():
        return f"{shown(parent)} is a file, not a folder"
    if not parent.is_dir():
        reason = _missing_reason(parent)
        return f"output folder {shown(parent)} does not exist" if reason == "not found" else \
            f"output folder {shown(parent)}: {reason}"
    try:
        fd, probe = tempfile.mkstemp(prefix=".hepdeploy-probe.", dir=parent)
    except OSError as error:
        return f"folder {shown(parent)} is not writable ({error.strerror or type(error).__name__})"
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def check_output_folder(path: Path) -> Path:
    """Raise BadInputError, naming ``path`` and the reason, unless a file can be written there (its
    folder exists and takes files, and the name leaves room for the temporary name it is written under)."""
    problem = output_problem(Path(path))
    if problem is not None:
        raise BadInputError(f"{shown(path)}: {problem}")
    return Path(path)


def check_output_dir(folder: Path) -> Path:
    """Raise BadInputError unless ``folder`` is, or can be made as, a folder that takes files."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BadInputError(f"{shown(folder)}: is a file, not a folder")
    if not folder.exists():
        check_output_folder(folder)
        return folder
    check_output_folder(folder / "probe")
    return folder


def missing(path: Path | str, what: str) -> str:
    """The one line for a file that is not there: ``PATH: WHAT not found``, or why it cannot be reached
    (a broken or looping link, a parent that is a file)."""
    reason = _missing_reason(Path(path))
    return f"{shown(path)}: {what} cannot be reached: {reason}" if reason.startswith("its parent") else \
        f"{shown(path)}: {what} {reason}"


def check_input_file(path: Path, what: str = "file") -> Path:
    path = Path(path)
    if not path.exists():
        raise BadInputError(missing(path, what))
    if not path.is_file():
        raise BadInputError(f"{shown(path)}: {what} is not a regular file")
    return path


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it over ``target`` on success.

    On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    check_output_folder(target)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=suffix if suffix is not None else ".tmp", dir=target.parent
        )
    except OSError as error:  # named after the target, never after the temporary file
        raise BadInputError(f"{shown(target)}: cannot be written ({error.strerror or type(error).__name__})") from error
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
