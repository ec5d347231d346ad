"""Converged settling (settle: sor): tolerance, caps, energy, C against torch, per example."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eqp.config.settings import SettingsError
from eqp.engines.converged import (
    ConvergedSettler,
    ConvergenceError,
    SorParameters,
    layer_bounds,
    sor_settle,
)
from eqp.engines.fast import FastEngine
from eqp.model.network import Network
from eqp.model.topology import build_topology
from eqp.training.trainer import Trainer


def _setup(settings, batch, seed=0, dtype=torch.float32):
    net = Network.from_topology(build_topology(settings, np.random.RandomState(0)))
    net.biases.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(seed))
    net.weights = net.weights.to(dtype)
    net.biases = net.biases.to(dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(batch, net.n_inputs, generator=generator, dtype=dtype)
    state = torch.zeros(batch, net.n_neurons - net.n_inputs, dtype=dtype)
    return net, x, state


def _residual(net, x, state):
    """The fixed-point residual |clamp(W s + b + W_x x) - s|_inf of each example."""
    n_in = net.n_inputs
    h = state @ net.weights[n_in:, n_in:] + x @ net.weights[:n_in, n_in:] + net.biases[n_in:]
    return (h.clamp(0, 1) - state).abs().amax(1)


def _torch_settler(net, parameters):
    settler = ConvergedSettler(FastEngine(net, parameters.epsilon, "dense"), net, parameters)
    settler.fused = None
    return settler


CASES = [("wine_8layer_swni", 5), ("mnist_5layer_swni", 20), ("mnist_3layer_mlff", 20)]


@pytest.mark.parametrize(("name", "batch"), CASES)
@pytest.mark.parametrize("path", ["fused", "torch"])
def test_converged_states_meet_the_tolerance_or_hit_the_cap(
    paper_trials, name, batch, path, request
):
    settings = paper_trials[name]
    net, x, state = _setup(settings, batch)
    parameters = SorParameters(settings.epsilon, tol=1e-5)
    if path == "fused":
        request.getfixturevalue("native_kernel")
        settler = ConvergedSettler(FastEngine(net, settings.epsilon, "fused"), net, parameters)
    else:
        settler = _torch_settler(net, parameters)
    settled = settler.free(x, state, settings.free_iterations)
    converged = ~settler.last_capped
    assert converged.all(), "the paper's step budget suffices for these random nets"
    # float32 evaluation of the residual itself is exact to ~1e-7 here
    assert float(_residual(net, x, settled)[converged].max()) <= 1e-5 + 5e-7

    capped = ConvergedSettler(
        settler.inner, net, SorParameters(settings.epsilon, tol=1e-5, max_steps=3)
    )
    if path == "torch":
        capped.fused = None
    capped.free(x, state, settings.free_iterations)
    assert capped.last_work.tolist() == [3] * batch
    assert bool(capped.last_capped.all())


@pytest.mark.parametrize(
    ("name", "dtype", "slack"),
    [
        ("wine_8layer_swni", torch.float64, 1e-12),
        ("wine_5layer_mlff", torch.float64, 1e-12),
        ("mnist_5layer_swni", torch.float64, 1e-12),
    ],
)
def test_no_sweep_raises_the_energy(paper_trials, name, dtype, slack):
    """Each pass after the first (an Euler step) is an SOR sweep or a check: energy never rises."""
    settings = paper_trials[name]
    net, x, state = _setup(settings, 6, dtype=dtype)
    n_in = net.n_inputs
    scaled = settings.epsilon * net.weights[n_in:, n_in:]
    drive = settings.epsilon * (x @ net.weights[:n_in, n_in:] + net.biases[n_in:])
    energies = []
    for passes in range(1, 40):
        parameters = SorParameters(settings.epsilon, tol=1e-9, warmup_tol=10.0)
        settled, work, _ = sor_settle(drive, state, scaled, layer_bounds(net), parameters, passes)
        energies.append(net.energy(torch.cat([x, settled], 1)))
    energies = torch.stack(energies)
    rises = energies[1:] - energies[:-1]
    assert float(rises.max()) <= slack * float(energies.abs().max())
    assert float((energies[0] - energies[-1]).min()) > 0


def test_fused_kernel_sweeps_do_not_raise_the_energy(paper_trials, native_kernel):
    settings = paper_trials["mnist_5layer_swni"]
    net, x, state = _setup(settings, 20)
    engine = FastEngine(net, settings.epsilon, "fused")
    energies = []
    for passes in range(1, 60):
        settler = ConvergedSettler(
            engine, net, SorParameters(settings.epsilon, 1e-7, passes, warmup_tol=10.0)
        )
        settled = settler.free(x, state, 1000)
        energies.append(_energy64(net, torch.cat([x, settled], 1)))
    energies = torch.stack(energies)
    # float32 states: allow the rounding of one float32 energy, nothing more
    assert float((energies[1:] - energies[:-1]).max()) <= 1e-6 * float(energies.abs().max())


def _energy64(net, full):
    """The spec's energy of float32 states, evaluated in float64."""
    r = full.double().clamp(0, 1)
    weights, biases = net.weights.double(), net.biases.double()
    return 0.5 * (r * r).sum(1) - 0.5 * ((r @ weights) * r).sum(1) - r @ biases


@pytest.mark.parametrize(("name", "batch"), CASES)
def test_the_c_and_torch_paths_agree(paper_trials, native_kernel, name, batch):
    settings = paper_trials[name]
    net, x, state = _setup(settings, batch)
    parameters = SorParameters(settings.epsilon, tol=1e-5)
    fused = ConvergedSettler(FastEngine(net, settings.epsilon, "fused"), net, parameters)
    in_torch_settler = _torch_settler(net, parameters)
    in_c = fused.free(x, state, 5000)
    in_torch = in_torch_settler.free(x, state, 5000)
    assert float((in_c - in_torch).abs().max()) < 1e-4
    # summation order differs, so an example may cross the tolerance a pass earlier or later
    assert int((fused.last_work - in_torch_settler.last_work).abs().max()) <= 2


def test_an_example_settles_the_same_alone_or_in_any_batch(paper_trials, native_kernel):
    """A finished example stops changing: its result depends on nothing but itself (the input
    drive is computed once here: its GEMM may round differently for another batch width)."""
    settings = paper_trials["mnist_5layer_swni"]
    net, x, state = _setup(settings, 40)
    engine = FastEngine(net, settings.epsilon, "fused")
    drive = engine.drive(x)
    state[::3] = 0.5  # a mix of cold and warm starts

    def settle(rows):
        return engine.fused.converge(drive[:, rows], state[rows], 0.5, 1.6, 1e-5, 0.1, 0.05, 1000)

    together, work, _ = settle(slice(0, 40))
    for rows in (slice(0, 1), slice(7, 20), slice(17, 40)):
        alone, alone_work, _ = settle(rows)
        assert torch.equal(alone, together[rows])
        assert torch.equal(alone_work, work[rows])


def test_cold_starts_warm_up_longer_than_warm_ones(paper_trials):
    settings = paper_trials["mnist_5layer_swni"]
    net, x, state = _setup(settings, 8)
    parameters = SorParameters(settings.epsilon, 1e-5, warmup_tol=0.5, cold_warmup_tol=1e-3)
    settler = _torch_settler(net, parameters)
    settler.free(x, state, 1000)
    cold = settler.last_work.clone()
    settler.free(x, state + 1e-3, 1000)  # not all zero: the warm rule applies
    assert int(cold.min()) > int(settler.last_work.max())


def test_sw_intra_is_refused_with_one_clear_error(paper_trials):
    with pytest.raises(SettingsError, match="settle: sor .* SW_intra has them"):
        paper_trials["mnist_5layer_swni"].with_overrides(
            {"network_type": "SW_intra", "settle": "sor"}
        )
    settings = paper_trials["wine_8layer_swni"].with_overrides({"network_type": "SW_intra"})
    net, _, _ = _setup(settings, 5)
    with pytest.raises(ConvergenceError, match="inside a layer"):
        ConvergedSettler(FastEngine(net, 0.5, "dense"), net, SorParameters(0.5, 1e-5))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"settle": "newton"}, "settle = 'newton' is invalid; use 'euler'"),
        ({"settle": "sor", "settle_tol": 0}, "settle_tol = 0 is invalid"),
        ({"settle": "sor", "settle_max_steps": 0}, "settle_max_steps = 0 is invalid"),
    ],
)
def test_bad_settle_settings_name_the_field(paper_trials, change, message):
    with pytest.raises(SettingsError, match=message):
        paper_trials["wine_5layer_swni"].with_overrides(change)


def test_euler_trials_keep_the_plain_engine_and_record_fixed_work(paper_trials, tmp_path):
    from eqp.outputs import records
    from eqp.training.run import run_trial

    settings = paper_trials["wine_5layer_swni"].with_overrides({"epochs": 1, "free_iterations": 50})
    assert isinstance(Trainer.build(settings).engine, FastEngine)
    folder = run_trial(settings, tmp_path / "euler", log=lambda _: None).folder
    metrics = records.read_metrics(folder)
    assert metrics["test_work_mean"].tolist() == [50.0, 50.0]
    assert metrics["train_work_max"][1] == 50 and np.isnan(metrics["train_work_mean"][0])
    assert metrics["test_capped"].tolist() == [0, 0]

    converged = settings.with_overrides({"settle": "sor", "free_iterations": 1000})
    folder = run_trial(converged, tmp_path / "sor", log=lambda _: None).folder
    metrics = records.read_metrics(folder)
    summary = records.TrialRecord.open(folder).summary
    assert summary["settle"]["method"] == "sor" and summary["settle"]["tol"] == 1e-5
    assert summary["settings"]["settle"] == "sor"
    assert 1 < metrics["train_work_mean"][1] < metrics["train_work_max"][1] < 1000
    assert metrics["train_capped"][1] == 0


@pytest.mark.parametrize("name", ["mnist_5layer_swni", "mnist_3layer_swni"])
def test_a_batch_settles_the_same_split_across_threads(paper_trials, native_kernel, name):
    """A batch narrower than a strip per thread has its rows split across the team (a barrier
    after each layer), where one thread settles it in a working strip of its own: same bits,
    same work, for columns that finish at different passes."""
    settings = paper_trials[name]
    net, x, state = _setup(settings, 24)
    engine = FastEngine(net, settings.epsilon, "fused")
    state[::3] = 0.5  # a mix of cold and warm starts, so columns finish at different passes
    for batch in (5, 13, 20, 24):
        drive = engine.drive(x[:batch])
        results = []
        for threads in (1, 2, 3):
            engine.fused.threads = threads
            results.append(
                engine.fused.converge(drive, state[:batch], 0.5, 1.6, 1e-5, 0.1, 0.05, 1000)
            )
        one, work, capped = results[0]
        assert int(work.max()) > int(work.min())  # columns finish at different passes
        for many, many_work, many_capped in results[1:]:
            assert torch.equal(many, one)
            assert torch.equal(many_work, work)
            assert torch.equal(many_capped, capped)
