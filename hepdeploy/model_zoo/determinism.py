"""Seeding and thread pinning so that the same seed on the same platform gives the same weights."""
from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator

import numpy as np

from hepdeploy.tf_support import import_keras, import_tensorflow

log = logging.getLogger("hepdeploy.model_zoo.determinism")


@contextlib.contextmanager
def deterministic_torch(seed: int, threads: int) -> Iterator[None]:
    """Seed torch, force deterministic kernels and a fixed thread count; restore afterwards."""
    import torch

    old_threads = torch.get_num_threads()
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # Parallel reductions split work by thread count: pin it so results are bitwise stable.
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_deterministic)
        torch.set_num_threads(old_threads)


@contextlib.contextmanager
def deterministic_keras(seed: int, threads: int) -> Iterator[None]:
    """Seed Python, numpy and TensorFlow (keras.utils.set_random_seed) and enable op determinism."""

    tf = import_tensorflow()
    keras = import_keras()

    try:  # only possible before TensorFlow has started its thread pools
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        log.debug("TensorFlow thread pools already started; keeping their size")
    keras.utils.set_random_seed(seed)
    # Deterministic kernels (raises on ops that have none) for the training only: switched back
    # afterwards so other work in the same process (conversion, validation) is unaffected.
    from tensorflow.python.framework import config as tf_config

    was_enabled = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_enabled:
            tf_config.disable_op_determinism()
