"""Deterministic CPU training with a cache of weights, seed, data recipe and achieved metrics.

Cache layout (root from ``HEPDEPLOY_CACHE``, default ``~/.cache/hepdeploy``)::

    <root>/zoo/<network>/<flavour>-<budget>-seed<seed>-<hash>/{model.keras|model.pt, meta.json}

The hash covers the training recipe, the data recipe and the zoo version, and the
budget is part of the key, so a reduced-budget training never stands in for the full one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hepdeploy.errors import BadInputError
from hepdeploy.fsutil import atomic_path, atomic_write_text
from hepdeploy.model_zoo import determinism
from hepdeploy.model_zoo.base import BUDGETS, ZooNetwork
from hepdeploy.model_zoo.registry import get_network
from hepdeploy.tf_support import import_keras, import_tensorflow

log = logging.getLogger("hepdeploy.model_zoo.training")

ZOO_VERSION = 1  # bump when a builder or generator changes: invalidates every cache entry


def cache_root(cache_dir: Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("HEPDEPLOY_CACHE") or Path.home() / ".cache" / "hepdeploy")


def data_seeds(seed: int) -> dict[str, int]:
    """Independent seeds for the train/test/reference/calibration samples of one training seed."""
    base = 1000 * seed + 10
    return {"train": base + 1, "test": base + 2, "reference": base + 3, "calibration": base + 4}


def cached_data_file(net: ZooNetwork, kind: str, n: int, seed: int, cache_dir: Path | None, target: Path,
                     write: Callable[[Path], Any], recipe: dict[str, Any] | None = None) -> Path:
    """A generated data file (``kind`` set of ``n`` events from ``seed``) copied to ``target``: ``write(path)``
    makes it once per recipe, in the zoo's data cache beside the trainings (a file of ``target``'s suffix);
    ``recipe`` adds what else the file depends on (a file format, a layout)."""
    suffix = target.suffix
    key = json.dumps({"zoo_version": ZOO_VERSION, "network": net.name, "data": net.data_recipe, "kind": kind,
                      "n": n, "seed": seed, **(recipe or {})}, sort_keys=True)
    cached = cache_root(cache_dir) / "zoo" / net.name / "data" / \
        f"{kind}-n{n}-seed{seed}-{hashlib.sha256(key.encode()).hexdigest()[:10]}{suffix}"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        write(cached)  # an atomic writer: a killed run leaves no partial file in the cache
    with atomic_path(target, suffix=suffix) as tmp:
        shutil.copyfile(cached, tmp)
    return target


def cache_key(net: ZooNetwork, flavour: str, budget: str, seed: int) -> str:
    payload = json.dumps(
        {
            "zoo_version": ZOO_VERSION,
            "network": net.name,
            "flavour": flavour,
            "budget": budget,
            "seed": seed,
            "recipe": net.recipes[budget].as_dict(),
            "data": net.data_recipe,
        },
        sort_keys=True,
    )
    return f"{flavour}-{budget}-seed{seed}-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


@dataclass
class TrainedModel:
    network: str
    flavour: str
    budget: str
    model_path: Path
    meta: dict[str, Any]

    @property
    def metrics(self) -> dict[str, float]:
        return self.meta.get("metrics", {})


def check_budget(budget: str) -> str:
    if budget not in BUDGETS:
        raise BadInputError(f"unknown training budget {budget!r} (one of {', '.join(BUDGETS)})")
    return budget


def find_cached(name: str, flavour: str | None = None, budget: str = "full", seed: int = 0,
                cache_dir: Path | None = None) -> TrainedModel | None:
    net = get_network(name)
    flavour = net.check_flavour(flavour)
    entry = cache_root(cache_dir) / "zoo" / net.name / cache_key(net, flavour, check_budget(budget), seed)
    model_path = entry / f"model{net.model_suffix(flavour)}"
    meta_path = entry / "meta.json"
    if not (model_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("ignoring unreadable cache entry %s", entry)
        return None
    return TrainedModel(net.name, flavour, budget, model_path, meta)


@contextlib.contextmanager
def _deterministic(net: ZooNetwork, flavour: str, seed: int, threads: int) -> Any:
    if flavour == "keras":
        with determinism.deterministic_keras(seed, threads):
            yield
    else:
        with determinism.deterministic_torch(seed, threads):
            yield


def train_network(
    name: str,
    flavour: str | None = None,
    budget: str = "full",
    seed: int = 0,
    cache_dir: Path | None = None,
    force: bool = False,
) -> TrainedModel:
    """Train (or fetch from the cache) one zoo network; store weights, seed, recipes and metrics."""
    net = get_network(name)
    flavour = net.check_flavour(flavour)
    check_budget(budget)
    if not force and (cached := find_cached(name, flavour, budget, seed, cache_dir)) is not None:
        log.info("using cached %s (%s, %s budget): %s", name, flavour, budget, cached.model_path.parent)
        return cached
    recipe = net.recipes[budget]
    seeds = data_seeds(seed)
    entry = cache_root(cache_dir) / "zoo" / net.name / cache_key(net, flavour, budget, seed)
    entry.parent.mkdir(parents=True, exist_ok=True)
    log.info("training %s (%s, %s budget, seed %d)", name, flavour, budget, seed)

    start = time.perf_counter()
    train = net.generate(recipe.n_train, seeds["train"])
    test = net.generate(recipe.n_test, seeds["test"])
    with _deterministic(net, flavour, seed, recipe.threads):
        model = net.build(flavour, seed=seed)
        net.fit(model, flavour, train, recipe, seed)
    train_seconds = time.perf_counter() - start
    metrics = net.evaluate(net.predict(model, flavour, test.inputs), test, train)

    meta = {
        "network": net.name,
        "flavour": flavour,
        "budget": budget,
        "seed": seed,
        "data_seeds": seeds,
        "recipe": recipe.as_dict(),
        "data_recipe": net.data_recipe,
        "zoo_version": ZOO_VERSION,
        "metrics": {k: round(float(v), 6) for k, v in metrics.items()},
        "train_seconds": round(train_seconds, 2),
        "parameters": net.parameter_count(model, flavour),
        "platform": {
            "machine": platform.machine(),
            "python": platform.python_version(),
            **_framework_versions(flavour),
        },
    }
    # Build the entry in a temporary folder, then rename: a killed training leaves no half entry.
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        model_path = net.save(model, flavour, staging / f"model{net.model_suffix(flavour)}")
        atomic_write_text(staging / "meta.json", json.dumps(meta, indent=2) + "\n")
        if force and entry.exists():
            shutil.rmtree(entry)
        try:
            os.replace(staging, entry)
        except OSError:
            # Another process finished the same training first; its entry is equivalent.
            log.info("cache entry %s appeared meanwhile; keeping it", entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    model_path = entry / f"model{net.model_suffix(flavour)}"
    log.info("trained %s in %.1f s: %s", name, train_seconds, meta["metrics"])
    return TrainedModel(net.name, flavour, budget, model_path, json.loads((entry / "meta.json").read_text()))


def _framework_versions(flavour: str) -> dict[str, str]:
    if flavour == "keras":
        tf = import_tensorflow()
        keras = import_keras()

        return {"keras": keras.__version__, "tensorflow": tf.__version__}
    import torch

    return {"torch": torch.__version__}
