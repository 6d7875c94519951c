"""TensorFlow and Keras, imported on demand and quietly.

TensorFlow is an optional dependency (the ``[tf]`` extra): import it only through here, inside
the functions that need it, so the core imports fast and works without it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from hepdeploy.errors import DependencyMissingError


@contextlib.contextmanager
def _silenced_native_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null (native libraries' start-up banners).

    TensorFlow's C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL when it is set after the
    process started; Python exceptions are unaffected.
    """
    if logging.getLogger("hepdeploy").isEnabledFor(logging.DEBUG):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        if "tensorflow" in sys.modules:
            import tensorflow as tf
        else:
            with _silenced_native_stderr():
                import tensorflow as tf
    except ImportError as error:
        raise DependencyMissingError(
            f"TensorFlow is not installed ({error}); install hepdeploy[tf] for Keras/SavedModel models"
        ) from error
    return tf


def import_keras() -> Any:
    """Keras 3 on its TensorFlow backend (TensorFlow imported quietly first)."""
    import_tensorflow()
    import keras

    return keras
