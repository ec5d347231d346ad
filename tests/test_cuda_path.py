"""The CUDA path: full float32, graph replays bit-identical to eager loops, ensembles too.

These run only with EQP_TEST_DEVICE=cuda on a machine with a GPU (elsewhere they skip; with the
variable set and no GPU they fail). The projection arithmetic is checked everywhere.
"""

from __future__ import annotations

import pytest
import torch

from eqp import kernels
from eqp.bench_cuda import CudaTiming, project_paper_hours
from eqp.data import synthetic_dataset
from eqp.ensemble import Ensemble
from eqp.graphs import GraphedLoops
from eqp.trainer import Trainer


def _eager(monkeypatch):
    """Make the non-graph path run the plain Python loops (TorchScript may fuse on CUDA)."""
    monkeypatch.setattr(kernels, "compiled", lambda name: kernels._LOOPS[name])


def test_tf32_is_switched_off_by_the_trainer(cuda_device, paper_trials):
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    Trainer(paper_trials["wine_5layer_swni"].with_overrides({"device": cuda_device}))
    assert not torch.backends.cuda.matmul.allow_tf32
    assert not torch.backends.cudnn.allow_tf32


def test_a_replayed_graph_equals_the_eager_loop_bit_for_bit(cuda_device):
    generator = torch.Generator(device=cuda_device).manual_seed(1)
    hidden, rows, steps = 130, 20, 50
    graphs = GraphedLoops()
    matrix = 0.1 * torch.randn(hidden, hidden, device=cuda_device, generator=generator)
    for trial in range(3):  # new inputs each replay: the static buffers must be refilled
        drive = torch.rand(rows, hidden, device=cuda_device, generator=generator) - 0.5
        state = torch.rand(rows, hidden, device=cuda_device, generator=generator)
        target = torch.rand(rows, 10, device=cuda_device, generator=generator)
        for tgt, pull in ((None, 0.0), (target, 0.25), (target, -0.25)):
            replayed = graphs.run(
                kernels.graph_dense_loop,
                (drive, state, tgt),
                (matrix,),
                (steps, pull, hidden - 10),
            )
            eager = kernels.dense_loop(
                drive, state.clone(), matrix, torch.empty_like(state), steps, tgt, pull, hidden - 10
            )
            assert torch.equal(replayed, eager), (trial, pull)
        matrix.mul_(0.9)  # in place, as the engine's refresh does: the graphs must follow
    assert len(graphs) == 3


@pytest.mark.parametrize("trial", ["wine_8layer_swni", "mnist_5layer_swni"])
def test_graphed_training_equals_eager_training_bit_for_bit(
    cuda_device, paper_trials, monkeypatch, trial
):
    _eager(monkeypatch)
    settings = paper_trials[trial].with_overrides({"device": cuda_device})
    data = synthetic_dataset(settings, 6, cuda_device)
    runs = {}
    for graphs in (True, False):
        trainer = Trainer(settings, data=data, layout="dense", cuda_graphs=graphs, eval_chunk=3)
        for j in range(6):
            trainer.train_batch(j)
        evaluation = trainer.evaluate()
        runs[graphs] = (trainer.net.weights.clone(), trainer.test_particles.clone(), evaluation)
        assert (trainer.engine.graphs is not None) == graphs
    assert torch.equal(runs[True][0], runs[False][0])
    assert torch.equal(runs[True][1], runs[False][1])
    assert runs[True][2].error == runs[False][2].error


def test_graphs_agree_with_the_torchscript_loop_within_rounding(cuda_device, paper_trials):
    settings = paper_trials["mnist_5layer_swni"].with_overrides({"device": cuda_device})
    data = synthetic_dataset(settings, 4, cuda_device)
    weights = []
    for graphs in (True, False):
        trainer = Trainer(settings, data=data, layout="dense", cuda_graphs=graphs)
        for j in range(4):
            trainer.train_batch(j)
        weights.append(trainer.net.weights.cpu())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=1e-5)


def test_an_ensemble_with_graphs_equals_it_without_bit_for_bit(cuda_device, paper_trials):
    base = paper_trials["mnist_5layer_swni"].with_overrides({"device": cuda_device})
    data = synthetic_dataset(base, 4, cuda_device)
    results = []
    for graphs in (True, False):
        trainers = [
            Trainer(base.with_overrides({"bypass_p": p}), data=data, layout="dense", eval_chunk=2)
            for p in (0.0, 0.05, 0.5)
        ]
        ensemble = Ensemble(trainers, cuda_graphs=graphs)
        for j in range(4):
            ensemble.train_batch(j)
        errors = [e.error for e in ensemble.evaluate()]
        results.append((ensemble.weights.clone(), ensemble.test_particles.clone(), errors))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]


def test_projection_counts_batches_epochs_and_stacks(paper_trials):
    """Known timings in, hand-computed hours out (no device needed)."""
    five = paper_trials["mnist_5layer_swni"]
    timings = [
        CudaTiming("mnist_5layer_swni", "as-it-stands", 1, 0.010, 0.002),
        CudaTiming("mnist_5layer_swni", "graphs", 1, 0.004, 0.001),
        CudaTiming("mnist_5layer_swni", "ensemble-31", 31, 0.031, 0.0062),
    ]
    named = {"mnist_5layer_swni": five}
    sweep = [five.with_overrides({"bypass_p": k / 30, "epochs": 10}) for k in range(31)]
    hours = project_paper_hours(timings, named, sweep, lambda s: 0.0)
    n_train, n_test = five.batch_counts()  # 3000 and 500 at the paper's settings

    def alone(train, test, epochs):
        return (epochs * n_train * train + (epochs + 1) * n_test * test) / 3600

    assert hours["as-it-stands, one trial at a time"] == pytest.approx(
        alone(0.010, 0.002, 100) + 31 * alone(0.010, 0.002, 10)
    )
    assert hours["graphs, one trial at a time"] == pytest.approx(
        alone(0.004, 0.001, 100) + 31 * alone(0.004, 0.001, 10)
    )
    stacked = alone(0.031, 0.0062, 10)
    assert hours["graphs, sweep as 31-member ensembles (the pipeline on cuda)"] == pytest.approx(
        alone(0.004, 0.001, 100) + stacked
    )
    # A stack of one named trial runs at the single-trial graph timing.
    assert hours["graphs, the named trials of each shape stacked too"] == pytest.approx(
        alone(0.004, 0.001, 100) + stacked
    )
