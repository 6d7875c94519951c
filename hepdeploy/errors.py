"""The one exception hierarchy of hepdeploy.

Library code raises these; only the CLI turns them into a one-line message and an
exit code (0 ok, 1 disagreement, 2 bad input or usage, 3 undecided: the reference set cannot
tell whether a candidate agrees).
"""
from __future__ import annotations

import re


class HepDeployError(Exception):
    """Base of every error hepdeploy raises on purpose."""

    exit_code: int = 2


class BadInputError(HepDeployError):
    """A file, spec, name or value the user gave cannot be used (exit 2)."""

    exit_code = 2


class SpecError(BadInputError):
    """The model spec is invalid: unknown key, wrong type, rank mismatch ..."""


class ModelLoadError(BadInputError):
    """A model file is missing, corrupt, unsafe to load or of an unknown kind."""


class DataError(BadInputError):
    """Tensor data (calibration, reference, golden) is missing, malformed or non-finite."""


class UnsafeNameError(BadInputError):
    """A model or tensor name could escape its folder (``../x``, ``/abs``, empty)."""


class DependencyMissingError(HepDeployError):
    """An optional dependency (TensorFlow, TensorRT, a CUDA device) is not available."""

    exit_code = 2


class ConversionError(HepDeployError):
    """An exporter failed on a model that loaded fine."""

    exit_code = 2


class NativeCrashError(HepDeployError):
    """A dependency crashed natively (a signal, not an exception) in a child process we ran it in."""

    exit_code = 2


class DisagreementError(HepDeployError):
    """Two models that must agree do not (exit 1)."""

    exit_code = 1


class ValidationFailedError(DisagreementError):
    """A candidate variant failed its numerical or physics checks (exit 1)."""


class ValidationUndecidedError(HepDeployError):
    """A candidate is neither shown to agree nor to disagree: the reference set cannot resolve it (exit 3)."""

    exit_code = 3


class RepositoryError(HepDeployError):
    """A Triton model repository is broken or cannot be published to."""

    exit_code = 1


class ServerError(HepDeployError):
    """A Triton server could not start, died, or did not answer in time (exit 2)."""

    exit_code = 2


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def first_line(error: BaseException, limit: int = 1000) -> str:
    """The first line of an exception's message (colour codes removed, cut to ``limit``), or its
    type name when it has no message: what a one-line error from a dependency's failure shows."""
    text = _ANSI_ESCAPE.sub("", str(error)).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
