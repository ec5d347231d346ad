"""The CUDA path: full float32, graph replays bit-identical to eager loops, ensembles too.

These run only with EQP_TEST_DEVICE=cuda on a machine with a GPU (elsewhere they skip; with the
variable set and no GPU they fail). The projection arithmetic is checked everywhere.
"""

from __future__ import annotations

import pytest
import torch

from eqp.data.datasets import synthetic_dataset
from eqp.engines.backends import torchscript
from eqp.engines.backends.cuda_graphs import GraphedLoops
from eqp.studies.bench_cuda import CudaTiming, project_paper_hours
from eqp.training.ensemble import Ensemble
from eqp.training.trainer import Trainer


def _eager(monkeypatch):
    """Make the non-graph path run the plain Python loops (TorchScript may fuse on CUDA)."""
    monkeypatch.setattr(torchscript, "compiled", lambda name: torchscript._LOOPS[name])


def test_tf32_is_switched_off_by_the_trainer(cuda_device, paper_trials):
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    Trainer.build(paper_trials["wine_5layer_swni"].with_overrides({"device": cuda_device}))
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
                torchscript.graph_dense_loop,
                (drive, state, tgt),
                (matrix,),
                (steps, pull, hidden - 10),
            )
            eager = torchscript.dense_loop(
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
        trainer = Trainer.build(
            settings, data=data, layout="dense", cuda_graphs=graphs, eval_chunk=3
        )
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
        trainer = Trainer.build(settings, data=data, layout="dense", cuda_graphs=graphs)
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
            Trainer.build(
                base.with_overrides({"bypass_p": p}), data=data, layout="dense", eval_chunk=2
            )
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


def test_the_triton_step_matches_the_cublas_loop(cuda_device):
    from eqp.engines.backends.triton_step import triton_loop

    generator = torch.Generator(device=cuda_device).manual_seed(2)
    for members, rows, hidden in ((1, 20, 510), (3, 20, 1510), (2, 1000, 510)):

        def rand(*shape):
            return torch.rand(*shape, device=cuda_device, generator=generator)

        matrix = 0.05 * (rand(members, hidden, hidden) - 0.5)
        drive, state, target = (
            rand(members, rows, hidden) - 0.5,
            rand(members, rows, hidden),
            rand(members, rows, 10),
        )
        pull = torch.tensor([0.5, -0.5, 0.5][:members], device=cuda_device).view(members, 1, 1)
        for tgt, pl in ((None, None), (target, pull)):
            reference = torchscript.stacked_loop(
                drive, state.clone(), tgt, pl, matrix, 30, hidden - 10
            )
            fused = triton_loop(drive, state.clone(), tgt, pl, matrix, 30, hidden - 10)
            assert float((fused - reference).abs().max()) < 1e-5, (members, rows, hidden)


def test_triton_training_matches_cublas_within_rounding(cuda_device, paper_trials):
    settings = paper_trials["mnist_5layer_swni"].with_overrides({"device": cuda_device})
    data = synthetic_dataset(settings, 4, cuda_device)
    weights, errors = [], []
    for kernel in ("cublas", "triton"):
        trainer = Trainer.build(
            settings, data=data, layout="dense", step_kernel=kernel, eval_chunk=2
        )
        for j in range(4):
            trainer.train_batch(j)
        errors.append(trainer.evaluate().error)
        weights.append(trainer.net.weights.cpu())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=1e-5)
    assert errors[0] == errors[1]


def test_projection_counts_batches_epochs_and_stacks(paper_trials):
    """Known timings in, hand-computed hours out (no device needed)."""
    five = paper_trials["mnist_5layer_swni"]
    timings = [
        CudaTiming("mnist_5layer_swni", "cublas", False, 1, 0.010, 0.002),
        CudaTiming("mnist_5layer_swni", "cublas", True, 1, 0.004, 0.001),
        CudaTiming("mnist_5layer_swni", "cublas", True, 31, 0.031, 0.0062),
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
    assert hours["graphs, sweep as 31-member ensembles"] == pytest.approx(
        alone(0.004, 0.001, 100) + stacked
    )
    # A stack of one named trial runs at the single-trial graph timing.
    assert hours["graphs, the named trials of each shape stacked too"] == pytest.approx(
        alone(0.004, 0.001, 100) + stacked
    )
    # No Triton timings given: its scenarios are unknown, not zero.
    assert (
        hours["graphs + triton step, one trial at a time"]
        != hours["graphs + triton step, one trial at a time"]
    )


def test_the_triton_step_is_refused_on_the_cpu(paper_trials):
    from eqp.engines.minimiser import LayoutError

    with pytest.raises(LayoutError, match="runs on CUDA devices only"):
        Trainer.build(paper_trials["wine_5layer_swni"], layout="dense", step_kernel="triton")
    with pytest.raises(LayoutError, match="unknown step kernel 'cutlass'"):
        Trainer.build(paper_trials["wine_5layer_swni"], layout="dense", step_kernel="cutlass")


def test_the_triton_kernel_computes_the_step_in_tritons_interpreter(tmp_path):
    """The kernel's indexing and masks, checked on the CPU (TRITON_INTERPRET=1) against the
    torch loop: ragged sizes, several members, free and nudged."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        # Where a GPU runs the compiled kernel, the tests above check it; the interpreter of
        # Triton 3.6 (on the H200 image) also fails on a scalar load that 3.8's handles.
        pytest.skip("the compiled kernel is checked on the GPU itself")
    script = tmp_path / "interpret.py"
    script.write_text(
        "import torch\n"
        "from eqp.engines.backends import torchscript\n"
        "from eqp.engines.backends.triton_step import triton_loop\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for m, r, h in ((1, 20, 130), (3, 20, 70), (2, 70, 100)):\n"
        "    w = 0.1 * torch.randn(m, h, h, generator=g)\n"
        "    d = torch.rand(m, r, h, generator=g) - 0.5\n"
        "    s = torch.rand(m, r, h, generator=g)\n"
        "    t = torch.rand(m, r, 10, generator=g)\n"
        "    p = torch.tensor([0.5, -0.5, 0.25][:m]).view(m, 1, 1)\n"
        "    for tg, pl in ((None, None), (t, p)):\n"
        "        a = torchscript.stacked_loop(d, s.clone(), tg, pl, w, 7, h - 10)\n"
        "        b = triton_loop(d, s.clone(), tg, pl, w, 7, h - 10)\n"
        "        print(float((a - b).abs().max()))\n"
    )
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    differences = [float(line) for line in done.stdout.split()]
    assert len(differences) == 6
    assert max(differences) < 1e-5
