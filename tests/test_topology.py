"""Topology: identical to the published walk, and the structural properties of the paper."""

from __future__ import annotations

import numpy as np
import pytest
from literal_topology import literal_build

from eqp.model.topology import build_topology, layer_offsets


def _build(settings, seed=0):
    return build_topology(settings, np.random.RandomState(seed))


@pytest.mark.parametrize("network_type", ["MLFF", "SW_no_intra", "SW_intra"])
@pytest.mark.parametrize("p", [0.0, 0.05, 0.3, 1.0])
def test_identical_to_the_literal_published_walk(paper_trials, network_type, p):
    settings = paper_trials["wine_8layer_swni"].with_overrides(
        {"network_type": network_type, "bypass_p": p, "bypass_mag": 0.5}
    )
    for seed in (0, 7):
        topo = _build(settings, seed)
        mask, weights, rewired, listed = literal_build(
            settings.layer_sizes, network_type, p, 0.5, seed
        )
        assert np.array_equal(topo.mask, mask)
        assert np.array_equal(topo.weights, weights)
        assert (topo.rewired, topo.listed) == (rewired, listed)


def test_mnist_network_identical_to_the_literal_walk(paper_trials):
    settings = paper_trials["mnist_5layer_swni"]
    topo = _build(settings)
    mask, weights, _, _ = literal_build(
        settings.layer_sizes, settings.network_type, settings.bypass_p, settings.bypass_mag, 0
    )
    assert np.array_equal(topo.mask, mask)
    assert np.array_equal(topo.weights, weights)


def test_realised_p_of_named_trials_matches_the_paper(paper_trials, published):
    for name, trial in paper_trials.items():
        expected = published["trials"][name]["final"]["realised_p"]
        assert round(_build(trial).realised_p, 3) == pytest.approx(expected, abs=1e-9), name


@pytest.mark.parametrize("name", ["mnist_5layer_swni", "wine_8layer_swni", "mnist_3layer_mlff"])
def test_symmetric_with_zero_diagonal(paper_trials, name):
    topo = _build(paper_trials[name])
    assert np.array_equal(topo.mask, topo.mask.T)
    assert np.array_equal(topo.weights, topo.weights.T)
    assert not topo.mask.diagonal().any()
    assert not topo.weights.diagonal().any()
    assert topo.weights.dtype == np.float32
    assert not topo.weights[topo.mask == 0].any()


def _layer_of(sizes):
    return np.repeat(np.arange(len(sizes)), sizes)


def test_sw_no_intra_has_no_intra_layer_connection(paper_trials):
    settings = paper_trials["mnist_5layer_swni"].with_overrides({"bypass_p": 0.5})
    topo = _build(settings)
    layer = _layer_of(settings.layer_sizes)
    rows, cols = np.nonzero(topo.mask)
    assert not np.any(layer[rows] == layer[cols])
    assert np.any(np.abs(layer[rows] - layer[cols]) > 1)


def test_mlff_has_only_adjacent_layer_connections(paper_trials):
    settings = paper_trials["mnist_3layer_mlff"]
    topo = _build(settings)
    layer = _layer_of(settings.layer_sizes)
    rows, cols = np.nonzero(topo.mask)
    assert np.all(np.abs(layer[rows] - layer[cols]) == 1)
    offsets = layer_offsets(settings.layer_sizes)
    for k in range(len(settings.layer_sizes) - 1):
        block = topo.mask[offsets[k] : offsets[k + 1], offsets[k + 1] : offsets[k + 2]]
        assert block.all()


def test_realised_p_is_close_to_p_over_many_draws(paper_trials):
    settings = paper_trials["wine_8layer_swni"].with_overrides({"bypass_p": 0.3})
    realised = [_build(settings, seed).realised_p for seed in range(40)]
    assert np.mean(realised) == pytest.approx(0.3, abs=0.01)
    assert np.std(realised) > 0
