"""Builds of the fused kernel: what another compiler, flag set or CPU gets.

The kernel's rounding is fixed by its source (every fused multiply-add is written out), so
results must not depend on which compiler built it or how that compiler contracts
multiply-adds on its own; the portable variant, which CPUs without AVX2+FMA run, must compute
the same steps as the reference.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from eqp.engines.backends import c_kernel
from eqp.engines.fast import FastEngine
from eqp.engines.reference import DenseReference
from eqp.model.network import Network
from eqp.model.topology import build_topology

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "eqp" / "engines" / "backends" / "csrc" / "settle.c"


def _compile(compiler: str, flags: list[str], library: Path) -> ctypes.CDLL:
    """The kernel built by `compiler` with `flags`, loaded (skips where there is no such
    compiler; a failed build is a test failure, with the compiler's message)."""
    path = shutil.which(compiler)
    if path is None:
        pytest.skip(f"{compiler} is not installed here")
    include = sysconfig.get_paths()["include"]
    result = subprocess.run(
        [
            path,
            "-shared",
            "-fPIC",
            "-fopenmp",
            f"-I{include}",
            *flags,
            str(SOURCE),
            "-o",
            str(library),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    lib, reason = c_kernel.load_library(str(library))
    assert lib is not None, reason
    return lib


def _network(settings):
    net = Network.from_topology(build_topology(settings, np.random.RandomState(0)))
    net.weights.mul_(1.5)  # livelier dynamics: more steps where rounding can differ
    net.biases.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(3))
    return net


def _every_result(lib, settings) -> dict[str, torch.Tensor]:
    """Euler phases and converged phases of several batch widths (one, two and three vectors
    of lanes, lane refills) and thread counts, by the kernel in `lib`. The step sizes are
    chosen so that no product is exact (the paper's MNIST eps = 0.5 keeps half of the state,
    a product that rounds the same fused or not)."""
    net = _network(settings)
    eps, pull = 0.3, 0.37
    engine = FastEngine(net, eps, "blocked")
    n_in = net.n_inputs
    first_output = net.output_slice.start
    results = {}
    for threads in (1, 2):
        fused = c_kernel.FusedSteps(
            net.mask[n_in:, n_in:],
            [o - n_in for o in net.offsets[1:]],
            engine.fused_blocks,
            lib,
            threads=threads,
        )
        fused.refresh(eps * net.weights[n_in:, n_in:])
        for batch in (1, 13, 20, 57):
            generator = torch.Generator().manual_seed(batch)
            x = torch.rand(batch, n_in, generator=generator)
            state = torch.zeros(batch, net.n_neurons - n_in)
            state[::3] = 0.5  # cold and warm starts
            y = torch.rand(batch, net.n_neurons - first_output, generator=generator)
            drive = engine.drive(x)
            free = fused.settle(drive, state, 1 - eps, 40, None, 0.0, first_output)
            nudged = fused.settle(drive, free, 1 - eps, 8, y, pull, first_output)
            settled, work, _ = fused.converge(drive, state, eps, 1.6, 1e-5, 0.1, 0.05, 1000)
            for part, value in (
                ("free", free),
                ("nudged", nudged),
                ("sor", settled),
                ("work", work),
            ):
                results[f"{threads} threads, batch {batch}, {part}"] = value
        if c_kernel.update_available():
            results.update(_update_results(lib, net, fused, eps, threads))
    return results


def _update_results(lib, net, fused, eps, threads) -> dict[str, torch.Tensor]:
    """The compiled weight update by the kernel in `lib`: weights, packed copies, |dW| and
    the recorded d after two batches of 20 (random states, both signs of beta)."""
    batch, n, n_in = 20, net.n_neurons, net.n_inputs
    pairs = [(k, k + 1) for k in range(net.n_pairs)]
    update = c_kernel.FusedUpdate(net.mask, net.offsets, batch, fused, pairs, lib)
    weights = net.weights.clone()
    record = torch.zeros(n, n - n_in)
    abs_sum = torch.zeros(n, n - n_in)
    generator = torch.Generator().manual_seed(11)
    for beta in (1.0, -0.7):
        both = torch.rand(2 * batch, n, generator=generator)
        both[both < 0.2] = 0
        sgn = both[:, n_in:].clone()
        sgn[batch:] *= -1
        update.apply(both, sgn, beta, 0.037, eps, weights, net.mask, None, record, abs_sum, threads)
    return {
        f"{threads} threads, update, {name}": value.clone()
        for name, value in (
            ("weights", weights),
            ("packed", fused.weights),
            ("csr values", fused.values),
            ("record", record),
            ("|dW|", abs_sum),
        )
    }


def _differences(ours, theirs) -> list[str]:
    return [key for key in ours if not torch.equal(ours[key], theirs[key])]


# (compiler, flags) builds that must give the installed kernel's bits exactly: GCC's default
# contraction (fast), tuning for this very CPU, an older GCC (CI installs gcc-11), and a build
# without OpenMP (one thread, whatever a caller asks for).
BUILDS = [
    ("cc", ["-O3", "-fopenmp", "-ffp-contract=fast"]),
    ("cc", ["-O2", "-fopenmp", "-ffp-contract=fast", "-march=native"]),
    ("gcc-11", ["-O3", "-fopenmp", "-ffp-contract=off"]),
    ("cc", ["-O3", "-ffp-contract=off"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("compiler", "flags"), BUILDS, ids=[" ".join([c, *f]) for c, f in BUILDS])
def test_every_build_of_the_kernel_rounds_the_same(
    paper_trials, native_kernel, compiler, flags, tmp_path
):
    lib = _compile(compiler, flags, tmp_path / "settle.so")
    assert lib.eqp_settle_variant() == c_kernel.instruction_set().encode()
    for name in ("mnist_5layer_swni", "mnist_3layer_mlff"):
        installed = _every_result(c_kernel._load()[0], paper_trials[name])
        built = _every_result(lib, paper_trials[name])
        assert _differences(installed, built) == [], name


@pytest.mark.slow
def test_portable_build_of_the_kernel_matches_the_reference(paper_trials, tmp_path):
    """The portable variant, which CPUs without AVX2+FMA run, computes the same steps."""
    lib = _compile(
        "cc", ["-O2", "-ffp-contract=off", "-DEQP_PORTABLE_ONLY"], tmp_path / "settle_portable.so"
    )
    assert lib.eqp_settle_variant() == b"portable"
    # the portable variant has no compiled update (it could not round as MKL does): the
    # trainer keeps the torch path there
    assert lib.eqp_update_dots(None, None, None, 40, 16, 8) == -2
    settings = paper_trials["mnist_5layer_swni"].with_overrides({"batch_size": 30})
    net = Network.from_topology(build_topology(settings, np.random.RandomState(0)))
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(settings.batch_size, net.n_inputs, generator=generator)
    state = torch.rand(settings.batch_size, net.n_neurons - net.n_inputs, generator=generator)
    labels = torch.randint(settings.layer_sizes[-1], (settings.batch_size,), generator=generator)
    y = torch.nn.functional.one_hot(labels, settings.layer_sizes[-1]).float()
    engine = FastEngine(net, settings.epsilon, "blocked")
    n_in = net.n_inputs
    fused = c_kernel.FusedSteps(
        net.mask[n_in:, n_in:], [o - n_in for o in net.offsets[1:]], engine.fused_blocks, lib
    )
    fused.refresh(settings.epsilon * net.weights[n_in:, n_in:])
    drive = engine.drive(x)
    first_output = net.output_slice.start
    reference = DenseReference(net, settings.epsilon)
    free = fused.settle(drive, state, 1 - settings.epsilon, 40, None, 0.0, first_output)
    assert torch.allclose(free, reference.free(x, state, 40), atol=2e-5, rtol=0)
    keep, pull = 1 - settings.epsilon, 2 * settings.epsilon
    nudged = fused.settle(drive, free, keep, 8, y, pull, first_output)
    assert torch.allclose(nudged, reference.nudged(x, free, y, 1.0, 8), atol=2e-5, rtol=0)
