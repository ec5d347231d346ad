"""The compiled weight update gives the torch path's bits exactly.

``WeightUpdate.apply`` has two paths: torch (one dense N x H product from MKL, then passes over
it) and the compiled one (``c_kernel.FusedUpdate``: each connection once, the same float32
operations per entry, on the kernel's threads). Where the compiled one runs it must leave
weights, biases, the fused kernel's packed copies, the per-layer rates and the |dW| record
exactly as the torch path does, for any thread count.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eqp.engines.backends import c_kernel
from eqp.studies.bench import _bench_data
from eqp.training.trainer import Trainer


def _state(trainer: Trainer, rates: list[np.ndarray]) -> dict[str, torch.Tensor]:
    fused = trainer.weight_update.engine.fused
    return {
        "weights": trainer.net.weights.clone(),
        "biases": trainer.net.biases.clone(),
        "packed": fused.weights.clone(),
        "csr values": fused.values.clone(),
        "mean |dW|": trainer.mean_abs_dw.clone(),
        "rates": torch.from_numpy(np.stack(rates)),
    }


def _train(settings, data, update: str, threads: int) -> tuple[str, dict[str, torch.Tensor]]:
    torch.set_num_threads(1)
    trainer = Trainer.build(settings, data=data, threads=threads, update=update, eval_chunk=2)
    rates = [trainer.train_epoch()[1] for _ in range(2)]
    return trainer.update, _state(trainer, rates)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.int32) if tensor.dtype == torch.float32 else tensor.view(torch.int64)


def _compare(settings, data) -> None:
    used, expected = _train(settings, data, "torch", 1)
    assert used == "torch"
    for threads in (1, 2, 3):
        used, state = _train(settings, data, "auto", threads)
        assert used == "native"
        different = [k for k in expected if not torch.equal(_bits(expected[k]), _bits(state[k]))]
        assert different == [], f"{threads} thread(s)"


@pytest.fixture
def compiled_update(native_kernel):
    if not c_kernel.update_available():
        pytest.skip("the compiled update needs AVX2+FMA")


QUICK = {"free_iterations": 30, "weakly_clamped_iterations": 4}


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("mnist_3layer_swni", {}),  # skip connections: dense blocks and the CSR list
        ("mnist_3layer_mlffpl", {"correct_bias_quirk": True}),  # per-layer rates, bias fix
        ("mnist_5layer_swni", {"bypass_p": 0.9, "settle": "sor"}),  # pairs mostly in CSR
    ],
)
def test_compiled_update_gives_the_torch_paths_bits_on_mnist(
    paper_trials, compiled_update, mnist_root, name, overrides
):
    settings = paper_trials[name].with_overrides({**QUICK, **overrides})
    data, kind = _bench_data(settings, 5, 2, str(mnist_root))
    assert kind == "real"  # blank pixels: inputs that are exactly zero in every example
    _compare(settings, data)


def test_compiled_update_gives_the_torch_paths_bits_on_a_small_net(paper_trials, compiled_update):
    settings = paper_trials["wine_8layer_swni"].with_overrides(
        {"epochs": 2, "free_iterations": 200, "bypass_p": 0.6}
    )
    _compare(settings, None)


def test_the_torch_product_is_checked_before_the_compiled_update_runs(compiled_update):
    """One FMA chain per entry is how MKL's CPU product rounds here (K = 2 x batch)."""
    assert c_kernel.update_matches_torch(2294, 40, 784)
    assert c_kernel.update_matches_torch(1294, 40, 784)


def test_the_torch_update_stays_where_it_is_asked_for(paper_trials, native_kernel):
    settings = paper_trials["wine_5layer_swni"]
    assert Trainer.build(settings, update="torch").update == "torch"
    with pytest.raises(ValueError, match="unknown update"):
        Trainer.build(settings, update="fast")
