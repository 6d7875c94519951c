"""Serving shapes from the data: ParticleNet's particle and SV multiplicities from the zoo's ROOT export (and
the same events' padded .npz masks), their min/opt/max with at least 99.9 % of the jets inside, and K
bucketed profiles chosen exactly by dynamic programming."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from hepdeploy.errors import SpecError
from hepdeploy.graph_bounds import DimBound
from hepdeploy.model_zoo import ExportOptions, ZooExport, export_network
from hepdeploy.serving.shapes import (
    bucket_profiles,
    dim_multiplicities,
    padding_waste,
    plan_dim,
    plan_dims,
    profile_coverage,
)
from hepdeploy.spec import load_spec, spec_from_dict
from hepdeploy.weaver import load_config

JETS = 2000


@pytest.fixture(scope="module")
def particlenet_root(tmp_path_factory: pytest.TempPathFactory, zoo_cache_dir: Path) -> ZooExport:
    """ParticleNet's jets as ROOT ntuples with a preprocess.json (seeded weights: only the data matters)."""
    out = tmp_path_factory.mktemp("particlenet-root")
    return export_network("particlenet", out, ExportOptions(train=False, budget="reduced", cache_dir=zoo_cache_dir,
                                                           reference_samples=JETS, root=True))


@pytest.mark.slow
def test_particlenet_multiplicities_from_root_match_the_npz_masks(particlenet_root: ZooExport) -> None:
    import uproot

    root_spec = load_spec(particlenet_root.root_spec_path)
    counts = dim_multiplicities(root_spec, particlenet_root.root.reference)  # type: ignore[union-attr]
    assert sorted(counts) == ["n_pf", "n_sv"] and all(len(c) == JETS for c in counts.values())
    with uproot.open(particlenet_root.root.reference) as handle:  # type: ignore[union-attr]
        np.testing.assert_array_equal(counts["n_pf"], handle["Events"]["nPFCands"].array(library="np"))
        np.testing.assert_array_equal(counts["n_sv"], handle["Events"]["nSV"].array(library="np"))
    # The same jets as padded arrays: the mask inputs give the same counts.
    padded = dim_multiplicities(particlenet_root.spec, particlenet_root.reference_path)
    assert sorted(padded) == ["n_pf", "n_sv"]
    np.testing.assert_array_equal(padded["n_pf"], counts["n_pf"])
    np.testing.assert_array_equal(padded["n_sv"], counts["n_sv"])


@pytest.mark.slow
def test_particlenet_plans_cover_the_jets_and_say_what_happens_beyond(particlenet_root: ZooExport) -> None:
    root_spec = load_spec(particlenet_root.root_spec_path)
    counts = dim_multiplicities(root_spec, particlenet_root.root.reference)  # type: ignore[union-attr]
    for dim, values in counts.items():
        plan = plan_dim(values, dim=dim)
        assert plan.min <= plan.opt <= plan.max and plan.coverage >= 0.999
        assert plan.min == max(int(values.min()), 1)  # most jets have no SV: a dim holds at least one entry
        assert plan.opt == max(int(np.ceil(np.median(values))), plan.min)
        quantile = int(np.quantile(values, 0.999, method="higher"))
        rounded = -(-quantile // 8) * 8  # to a multiple of 8, unless no jet has that many
        assert plan.max == (rounded if rounded <= values.max() else max(quantile, plan.min))
        assert plan.beyond_fraction == pytest.approx(float(np.mean(values > plan.max)))
        assert plan.coverage + plan.beyond_fraction == pytest.approx(1.0)
        assert plan.beyond_policy == "refuse" and plan.why.startswith(f"{dim}: min {plan.min}")
        assert plan_dim(values, dim=dim) == plan  # deterministic
    # A plan that leaves jets out says how many and what happens to them.
    tight = plan_dim(counts["n_pf"], coverage=0.5, dim="n_pf")
    assert tight.beyond_fraction > 0.3 and f"{int(np.sum(counts['n_pf'] > tight.max))} events" in tight.why
    assert "refused" in tight.why

    # Read through the preprocess.json: every batch is padded to min_length, cut at max_length.
    json = load_config(root_spec.data.preprocess.file)  # type: ignore[union-attr]
    group = json.groups["pf_features"]
    plans = plan_dims(root_spec, counts)
    assert plans["n_pf"].beyond_policy == "truncate"
    assert plans["n_pf"].min == max(group.min_length, int(counts["n_pf"].min()))  # type: ignore[type-var]
    assert "min_length" in plans["n_pf"].why and plans["n_pf"].max <= group.max_length  # type: ignore[operator]
    assert plans["n_pf"].coverage >= 0.999 and plans == plan_dims(root_spec, counts)


def test_npz_without_mask_counts_rows_that_are_not_all_zero(tmp_path: Path) -> None:
    spec = spec_from_dict({"name": "hits", "source": {"framework": "onnx", "path": "m.onnx"},
                           "inputs": [{"name": "hits", "shape": ["batch", "n_hits", 3]}],
                           "outputs": [{"name": "score", "shape": ["batch", 1]}]})
    rng = np.random.default_rng(3)
    used = rng.integers(0, 12, 40)
    hits = np.zeros((40, 12, 3), np.float32)
    for event, n in enumerate(used):
        hits[event, :n] = rng.uniform(0.5, 1.0, (n, 3))
    hits[0, 1] = 0.0  # a zero row inside an event is padding only when no real row follows it
    used[0] = max(used[0], 3)
    hits[0, 2] = 1.0
    np.savez(tmp_path / "hits.npz", hits=hits)
    np.testing.assert_array_equal(dim_multiplicities(spec, tmp_path / "hits.npz")["n_hits"], used)


def _bimodal(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.poisson(10, 6000).astype(np.int64), rng.poisson(80, 4000).astype(np.int64)


def test_two_profiles_cut_between_the_modes() -> None:
    low, high = _bimodal()
    counts = np.concatenate([low, high])
    plan = plan_dim(counts, dim="n_hits")
    (one,) = bucket_profiles(counts, 1, 0.0, plan)
    assert (one.ranges["n_hits"].min, one.ranges["n_hits"].max) == (plan.min, plan.max)
    first, second = bucket_profiles(counts, 2, 0.0, plan)
    cut = first.ranges["n_hits"].max
    assert second.ranges["n_hits"].min == cut + 1 and second.ranges["n_hits"].max == plan.max
    assert first.as_dict()["dims"]["n_hits"]["max"] == cut and first.as_dict()["events"] == first.events
    assert np.mean(low <= cut) > 0.97 and np.all(high > cut)  # the cut lies in the gap between the modes
    assert first.ranges["n_hits"].opt == int(np.ceil(np.median(counts[counts <= cut])))
    assert profile_coverage(counts, [first, second]) == pytest.approx(plan.coverage)
    assert padding_waste(counts, [first, second]) < padding_waste(counts, [one]) / 2
    assert bucket_profiles(counts, 2, 0.0, plan) == [first, second]  # deterministic


def test_the_profile_cost_sets_how_many_profiles() -> None:
    counts = np.concatenate(_bimodal(1))
    assert len(bucket_profiles(counts, 4, 0.0)) == 4  # free profiles: every one helps
    assert len(bucket_profiles(counts, 4, 1e6)) == 1  # dear profiles: one
    # Two profiles save ~30 padded entries per event over one; a third saves a few more.
    assert len(bucket_profiles(counts, 4, 15.0)) == 2


def test_dynamic_programming_is_exact_on_a_small_case() -> None:
    counts = np.array([1, 1, 2, 3, 3, 3, 7, 8, 8, 15, 16, 16, 16], np.int64)
    plan = plan_dim(counts, coverage=1.0, dim="n")
    for k in (2, 3):
        profiles = bucket_profiles(counts, k, 0.0, plan)
        tops = [p.ranges["n"].max for p in profiles]
        best = min(_padding(counts, [*cuts, plan.max]) for cuts in
                   itertools.combinations(sorted(set(counts[counts < plan.max].tolist())), k - 1))
        assert _padding(counts, tops) == best and len(profiles) == k


def _padding(counts: np.ndarray, tops: list[int]) -> int:
    """Entries padded when each event goes to the smallest top that holds it."""
    edges = np.asarray(sorted(tops))
    return int(np.sum(edges[np.searchsorted(edges, counts)] - counts))


def test_two_dims_share_the_profiles() -> None:
    rng = np.random.default_rng(5)
    particles = np.concatenate([rng.poisson(10, 500), rng.poisson(60, 500)]).astype(np.int64)
    vertices = rng.integers(0, 5, 1000).astype(np.int64)
    counts = {"n_pf": particles, "n_sv": vertices}
    profiles = bucket_profiles(counts, 2, 0.0)
    sv = plan_dim(vertices, dim="n_sv")
    assert all((p.ranges["n_sv"].min, p.ranges["n_sv"].max) == (sv.min, sv.max) for p in profiles)
    assert sum(p.events for p in profiles) == round(profile_coverage(counts, profiles) * 1000)
    assert 0.0 < padding_waste(counts, profiles) < 1.0


def test_events_beyond_a_truncation_length_are_truncated_and_counted() -> None:
    counts = np.concatenate([np.arange(1, 61), np.array([70, 80, 90])]).astype(np.int64)
    plan = plan_dim(counts, coverage=1.0, policy="truncate", dim="n_pf", truncate_at=64)
    assert (plan.max, plan.beyond_policy) == (64, "truncate")
    assert plan.beyond_fraction == pytest.approx(3 / 63) and plan.coverage == pytest.approx(60 / 63)
    assert "max 64 = the truncation length" in plan.why and "3 events" in plan.why and "truncated to 64" in plan.why
    with pytest.raises(SpecError, match="truncating needs the length"):
        plan_dim(counts, policy="truncate")


@pytest.mark.slow
def test_interaction_network_hits_and_edges_per_event(tmp_path: Path, zoo_cache_dir: Path) -> None:
    """Events concatenated into one graph, each edge's event recorded: edges per event are counted, hits per
    event are the block of hits its edges join."""
    result = export_network("interaction_network", tmp_path, ExportOptions(
        train=False, budget="reduced", cache_dir=zoo_cache_dir, reference_samples=4))
    counts = dim_multiplicities(result.spec, result.reference_path)
    arrays = np.load(result.reference_path)
    event, edges = arrays["event"], arrays["edge_index"]
    assert sorted(counts) == ["n_edges", "n_hits"] and len(counts["n_edges"]) == len(np.unique(event)) == 4
    np.testing.assert_array_equal(counts["n_edges"], np.bincount(event))
    assert counts["n_hits"].sum() == len(arrays["x"])  # every hit in its event's block
    for index, hits in enumerate(counts["n_hits"]):
        joined = edges[:, event == index]
        assert hits == joined.max() - joined.min() + 1
    plan = plan_dim(counts["n_hits"], dim="n_hits")
    assert plan.min == counts["n_hits"].min() and plan.max >= counts["n_hits"].max()


def test_a_graph_lower_bound_raises_min() -> None:
    counts = np.array([4, 9, 20, 25, 30, 31, 40], np.int64)
    bound = DimBound("n_pf", 17, "TopK 'knn' k=17")
    plan = plan_dim(counts, coverage=1.0, dim="n_pf", lower_bound=bound)
    assert (plan.min, plan.opt, plan.max) == (17, 25, 40)
    assert plan.why.startswith("n_pf: min 17 = TopK 'knn' k=17 (the smallest count seen is 4)")
    assert plan_dim(counts, coverage=1.0, dim="n_pf", lower_bound=50).min == 50  # above every count: all padded
