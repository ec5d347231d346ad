"""Dynamics: the fast engine against the dense reference, and the physics of the free phase."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eqp import cli
from eqp.data.datasets import synthetic_dataset
from eqp.engines.backends import c_kernel
from eqp.engines.fast import LAYOUTS, FastEngine
from eqp.engines.minimiser import LayoutError
from eqp.engines.reference import DenseReference
from eqp.engines.registry import make_engine
from eqp.model.network import Network
from eqp.model.topology import build_topology
from eqp.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Torch on one thread, as training runs it (run_trial): with two, MKL splits a product's
    sums differently, and the reference drifts further from the fast engine (measured 2.1e-5
    against 1.3e-5 over 60 steps of mnist_5layer_swni on an AVX-512 machine), so a test run
    alone would compare another arithmetic than the one the suite and the trainer use."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _network(settings, seed=0):
    return Network.from_topology(build_topology(settings, np.random.RandomState(seed)))


def _batch(settings, net, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(settings.batch_size, net.n_inputs, generator=generator)
    hidden = net.n_neurons - net.n_inputs
    state = torch.rand(settings.batch_size, hidden, generator=generator)
    y = torch.nn.functional.one_hot(
        torch.randint(settings.layer_sizes[-1], (settings.batch_size,), generator=generator),
        settings.layer_sizes[-1],
    ).float()
    return x, state, y


# (trial, changed settings, free steps compared). The MNIST SW_intra net amplifies rounding
# differences between any two summation orders (measured ~x3 per 30 steps, for the TorchScript
# dense layout too), so it is compared over fewer steps.
CASES = [
    ("wine_8layer_mlff", {}, 60),
    ("wine_8layer_swni", {}, 60),
    ("wine_8layer_swni", {"network_type": "SW_intra"}, 60),
    ("wine_8layer_swni", {"batch_size": 33}, 60),  # the fused kernel's 24 + 16 column tiles
    ("mnist_5layer_swni", {}, 60),
    ("mnist_5layer_swni", {"batch_size": 13, "network_type": "SW_intra"}, 20),
    ("mnist_3layer_mlff", {}, 60),
]


@pytest.mark.parametrize(("name", "change", "steps"), CASES)
@pytest.mark.parametrize("layout", ["dense", "blocked", "fused"])
def test_fast_engine_matches_the_dense_reference(
    paper_trials, name, change, steps, layout, request
):
    if layout == "fused":
        request.getfixturevalue("native_kernel")
    settings = paper_trials[name].with_overrides(change)
    net = _network(settings)
    net.biases.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(1))
    x, state, y = _batch(settings, net)
    reference = DenseReference(net, settings.epsilon)
    fast = FastEngine(net, settings.epsilon, layout)
    free_ref = reference.free(x, state, steps)
    free_fast = fast.free(x, state, steps)
    assert torch.allclose(free_fast, free_ref, atol=2e-5, rtol=0)
    for beta in (1.0, -1.0):
        nudged_ref = reference.nudged(x, free_ref, y, beta, 8)
        nudged_fast = fast.nudged(x, free_ref, y, beta, 8)
        assert torch.allclose(nudged_fast, nudged_ref, atol=2e-5, rtol=0)


def test_auto_layout_takes_the_fused_kernel_on_cpu(paper_trials, native_kernel):
    for name in ("mnist_3layer_mlff", "wine_8layer_mlff"):
        assert FastEngine(_network(paper_trials[name]), 0.5).layout == "fused"


def test_without_the_kernel_auto_picks_blocks_for_mnist_and_dense_for_small_nets(
    paper_trials, monkeypatch
):
    monkeypatch.setattr(c_kernel, "unavailable_reason", lambda: "not built (test)")
    assert FastEngine(_network(paper_trials["mnist_3layer_mlff"]), 0.5).layout == "blocked"
    assert FastEngine(_network(paper_trials["wine_8layer_mlff"]), 0.5).layout == "dense"
    with pytest.raises(LayoutError, match="'fused' is not available: not built"):
        FastEngine(_network(paper_trials["wine_8layer_mlff"]), 0.5, "fused")


def test_unknown_layouts_and_layouts_of_the_dense_engine_are_refused(paper_trials):
    net = _network(paper_trials["wine_5layer_swni"])
    with pytest.raises(LayoutError, match="unknown layout 'sparse'"):
        make_engine("fast", net, 0.5, "sparse")
    with pytest.raises(LayoutError, match="fast engine only"):
        make_engine("dense", net, 0.5, "blocked")
    assert cli.LAYOUTS == LAYOUTS


def test_fused_kernel_follows_weight_updates(paper_trials, native_kernel):
    """After each update the packed blocks and CSR values are refreshed from W."""
    settings = paper_trials["mnist_5layer_swni"].with_overrides({"free_iterations": 30})
    data = synthetic_dataset(settings, 3)
    trainers = {
        layout: Trainer.build(settings, data=data, layout=layout) for layout in ("blocked", "fused")
    }
    for j in range(3):
        for trainer in trainers.values():
            trainer.train_batch(j)
    blocked, fused = trainers["blocked"], trainers["fused"]
    assert torch.allclose(blocked.net.weights, fused.net.weights, atol=1e-5, rtol=0)
    assert torch.allclose(blocked.train_particles, fused.train_particles, atol=1e-4, rtol=0)


def test_inputs_never_move_in_the_reference(paper_trials):
    settings = paper_trials["wine_5layer_swni"]
    net = _network(settings)
    x, state, y = _batch(settings, net)
    reference = DenseReference(net, settings.epsilon)
    full = reference._full(x, state)
    for _ in range(20):
        full = reference._energy_step(full).clamp(0, 1)
    assert torch.equal(full[:, : net.n_inputs], x)


def test_free_phase_never_increases_the_energy(paper_trials):
    settings = paper_trials["mnist_5layer_swni"]
    net = _network(settings)
    net.biases.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(2))
    x, state, _ = _batch(settings, net)
    fast = FastEngine(net, settings.epsilon)
    energies = []
    for _ in range(50):
        energies.append(net.energy(torch.cat([x, state], 1)).double())
        state = fast.free(x, state, 1)
    energies = torch.stack(energies)
    assert torch.all(energies[1:] <= energies[:-1] + 1e-4)
    assert energies[-1].sum() < energies[0].sum()


def test_training_batches_agree_between_engines(paper_trials):
    settings = paper_trials["wine_5layer_swni"].with_overrides({"free_iterations": 200})
    data = synthetic_dataset(settings, 4)
    trainers = {name: Trainer.build(settings, engine=name, data=data) for name in ("dense", "fast")}
    for j in range(4):
        outputs = {name: t.train_batch(j) for name, t in trainers.items()}
        dense_rates, fast_rates = outputs["dense"][1], outputs["fast"][1]
        assert torch.allclose(dense_rates, fast_rates, rtol=1e-3, atol=1e-7)
    assert torch.allclose(
        trainers["dense"].net.weights, trainers["fast"].net.weights, atol=1e-5, rtol=0
    )
