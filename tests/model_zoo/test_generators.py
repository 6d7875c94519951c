"""The synthetic data generators: seeded, deterministic, and physically sensible."""
from __future__ import annotations

import numpy as np
import pytest

from hepdeploy.model_zoo import hcal, jets, tracks


def _jet_arrays(sample: jets.Jets) -> dict[str, np.ndarray]:
    return {k: v for k, v in vars(sample).items() if isinstance(v, np.ndarray)}


def test_jets_same_seed_identical_other_seed_different() -> None:
    kinds = ("g", "q", "W", "Z", "t")
    a, b = jets.generate_jets(300, 7, kinds), jets.generate_jets(300, 7, kinds)
    c = jets.generate_jets(300, 8, kinds)
    for name, value in _jet_arrays(a).items():
        np.testing.assert_array_equal(value, _jet_arrays(b)[name], err_msg=name)
    assert not np.array_equal(a.part_pt, c.part_pt)
    np.testing.assert_array_equal(jets.high_level_features(a), jets.high_level_features(b))
    np.testing.assert_array_equal(jets.jet_images(a, 32), jets.jet_images(b, 32))


def test_jet_masses_follow_the_resonances() -> None:
    sample = jets.generate_jets(3000, 1, ("q", "W", "t"))
    median = {k: float(np.median(sample.mass[sample.label == i])) for i, k in enumerate(("q", "W", "t"))}
    assert 65 < median["W"] < 100, median
    assert 150 < median["t"] < 195, median
    assert median["q"] < median["W"] < median["t"]


def test_heavy_flavour_has_displaced_vertices_and_tracks() -> None:
    sample = jets.generate_jets(4000, 2, ("b", "uds"))
    b, light = sample.label == 0, sample.label == 1
    assert sample.n_sv[b].mean() > 3 * sample.n_sv[light].mean()
    d0sig = np.abs(sample.part_d0 / np.maximum(sample.part_d0_err, 1e-6))
    assert np.mean(d0sig[b][sample.mask[b]] > 5) > 2 * np.mean(d0sig[light][sample.mask[light]] > 5)
    # pT fractions of the constituents add up to the jet pT
    np.testing.assert_allclose(sample.part_pt.sum(1), sample.pt, rtol=1e-4)


def test_jet_images_sum_to_one_inside_the_window() -> None:
    sample = jets.generate_jets(50, 3, ("q", "t"))
    images = jets.jet_images(sample, 224)
    assert images.shape == (50, 224, 224, 3) and images.dtype == np.float32
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    assert np.all(images.sum((1, 2, 3)) <= 3.0 + 1e-4) and np.median(images[..., 0].sum((1, 2))) > 0.95


def test_hcal_channels_deterministic_with_47_features() -> None:
    a, b = hcal.generate_channels(500, 5), hcal.generate_channels(500, 5)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.energy, b.energy)
    assert a.features.shape == (500, 47) and np.isfinite(a.features).all()
    # one-hot depth and |ieta| blocks
    np.testing.assert_array_equal(a.features[:, 11:18].sum(1), 1)
    np.testing.assert_array_equal(a.features[:, 18:].sum(1), 1)
    assert not np.array_equal(a.energy, hcal.generate_channels(500, 6).energy)


def test_tracking_events_are_valid_graphs() -> None:
    events = tracks.generate_events(3, 9)
    again = tracks.generate_events(3, 9)
    for g, h in zip(events, again):
        np.testing.assert_array_equal(g.edge_index, h.edge_index)
        np.testing.assert_array_equal(g.x, h.x)
    merged = tracks.merge(events)
    assert merged.edge_index.dtype == np.int64 and merged.edge_index.shape[0] == 2
    assert merged.edge_index.min() >= 0 and merged.edge_index.max() < merged.n_hits
    assert merged.edge_attr.shape == (merged.n_edges, 4) and merged.x.shape == (merged.n_hits, 3)
    # a real classification problem: both classes well populated
    assert 0.15 < merged.y.mean() < 0.7
    # true edges join hits of the same particle
    src, dst = merged.edge_index
    assert np.all(merged.particle[src][merged.y == 1] == merged.particle[dst][merged.y == 1])


@pytest.mark.parametrize("name", ["facile", "jet_mlp", "interaction_network", "particlenet", "deepjet"])
def test_network_data_matches_its_spec(name: str) -> None:
    from hepdeploy.model_zoo import get_network

    net = get_network(name)
    data = net.generate(12 if name != "interaction_network" else 2, seed=4)
    sizes: dict[str, int] = {}
    for tensor in net.inputs:
        array = data.inputs[tensor.name]
        assert array.dtype == np.dtype(tensor.dtype), tensor.name
        assert array.ndim == len(tensor.shape), tensor.name
        for dim, size in zip(tensor.shape, array.shape):
            if isinstance(dim, int):
                assert size == dim, (tensor.name, tensor.shape, array.shape)
            else:
                assert sizes.setdefault(dim, size) == size, (dim, tensor.name)
        if tensor.index_of:
            assert array.max() < sizes.get(tensor.index_of, data.inputs["x"].shape[0])
    assert len(data.truth) == (sizes["batch"] if "batch" in sizes else sizes["n_edges"])
