"""Training is deterministic and cached; budgets never stand in for each other."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hepdeploy.errors import BadInputError
from hepdeploy.model_zoo import find_cached, get_network, train_network


@pytest.mark.slow
@pytest.mark.parametrize("name,flavour", [("jet_mlp", "torch"), ("facile", "keras"), ("interaction_network", "torch")])
def test_same_seed_same_weights(name: str, flavour: str, tmp_path: Path) -> None:
    first = train_network(name, flavour, budget="reduced", cache_dir=tmp_path / "a")
    second = train_network(name, flavour, budget="reduced", cache_dir=tmp_path / "b")
    other_seed = train_network(name, flavour, budget="reduced", seed=1, cache_dir=tmp_path / "a")
    net = get_network(name)
    weights = [_weights(net, flavour, r.model_path) for r in (first, second, other_seed)]
    for a, b in zip(weights[0], weights[1]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(weights[0], weights[2]))
    assert first.metrics == second.metrics


def _weights(net, flavour: str, path: Path) -> list[np.ndarray]:
    model = net.load(flavour, path)
    if flavour == "keras":
        return [np.asarray(w) for w in model.get_weights()]
    return [v.detach().numpy() for v in model.state_dict().values()]


def test_cache_is_keyed_by_budget_and_reused(tmp_path: Path) -> None:
    assert find_cached("jet_mlp", "torch", "reduced", cache_dir=tmp_path) is None
    trained = train_network("jet_mlp", "torch", budget="reduced", cache_dir=tmp_path)
    meta = trained.meta
    assert meta["budget"] == "reduced" and meta["seed"] == 0 and meta["recipe"]["n_train"] > 0
    assert "jets.generate_jets" in meta["data_recipe"] and meta["metrics"]["auc"] > 0.7
    # The reduced training never counts as the full one.
    assert find_cached("jet_mlp", "torch", "full", cache_dir=tmp_path) is None
    stamp = trained.model_path.stat().st_mtime_ns
    again = train_network("jet_mlp", "torch", budget="reduced", cache_dir=tmp_path)
    assert again.model_path == trained.model_path and again.model_path.stat().st_mtime_ns == stamp
    assert not list(trained.model_path.parent.parent.glob(".*")), "no staging folders left behind"


def test_bad_names_and_budgets() -> None:
    with pytest.raises(BadInputError, match="unknown zoo network"):
        get_network("resnet51")
    with pytest.raises(BadInputError, match="no 'torch' flavour"):
        get_network("facile").check_flavour("torch")
    with pytest.raises(BadInputError, match="budget"):
        train_network("facile", budget="huge")
