"""Engine benchmark: dense reference against the fast engine on the paper's networks.

Both engines run in one process on the same network and synthetic batches, so the printed
ratio is meaningful even on a noisy shared machine where absolute seconds are not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .data import synthetic_dataset
from .settings import TrialSettings
from .trainer import Trainer

DEFAULT_TRIALS = ("mnist_5layer_swni", "mnist_3layer_mlff", "wine_8layer_mlff")


@dataclass
class EngineTiming:
    trial: str
    engine: str
    layout: str
    seconds_per_batch: float
    seconds_per_step: float
    floor_flop_per_step: float

    @property
    def gflops(self) -> float:
        return self.floor_flop_per_step / self.seconds_per_step / 1e9


def _best_of(repeats: int, run: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def time_engine(
    settings: TrialSettings, engine: str, batches: int, layout: str = "auto"
) -> EngineTiming:
    """Seconds per training batch (free, nudged, update) and per free-phase Euler step."""
    data = synthetic_dataset(settings, batches + 1, settings.device)
    trainer = Trainer(
        settings, engine=engine, data=data, layout=layout if engine == "fast" else "auto"
    )
    trainer.train_batch(0)
    start = time.perf_counter()
    for j in range(1, batches + 1):
        trainer.train_batch(j)
    per_batch = (time.perf_counter() - start) / batches
    x = data.train.x[0]
    state = trainer.train_particles[0]
    steps = max(5, min(settings.free_iterations, int(0.5 / max(per_batch / 1000, 1e-6))))
    per_step = _best_of(3, lambda: trainer.engine.free(x, state, steps)) / steps
    n_in = trainer.net.n_inputs
    nonzero = int((trainer.net.mask[n_in:, n_in:] != 0).sum())
    return EngineTiming(
        settings.name,
        engine,
        getattr(trainer.engine, "layout", "-"),
        per_batch,
        per_step,
        2.0 * settings.batch_size * nonzero,
    )


def matmul_gflops(settings: TrialSettings, repeats: int = 200) -> float:
    """Throughput of plain (batch x n_k) @ (n_k x n_k+1) products over the non-input blocks."""
    flops = seconds = 0.0
    sizes = settings.layer_sizes
    for n_src, n_dst in zip(sizes[1:-1], sizes[2:], strict=True):
        for rows, cols in ((n_src, n_dst), (n_dst, n_src)):
            a = torch.rand(settings.batch_size, rows)
            b = torch.rand(rows, cols)
            out = torch.empty(settings.batch_size, cols)
            torch.mm(a, b, out=out)
            seconds += (
                _best_of(
                    3, lambda a=a, b=b, out=out: [torch.mm(a, b, out=out) for _ in range(repeats)]
                )
                / repeats
            )
            flops += 2.0 * settings.batch_size * rows * cols
    return flops / seconds / 1e9


def run_benchmark(
    trials: Sequence[TrialSettings],
    engines: Sequence[str],
    batches: int,
    threads: int = 1,
    emit: Callable[[str], None] = print,
    layout: str = "auto",
) -> list[EngineTiming]:
    torch.set_num_threads(threads)
    results = []
    for settings in trials:
        timings = {}
        for engine in engines:
            timing = time_engine(settings, engine, batches, layout)
            timings[engine] = timing
            results.append(timing)
            emit(
                f"{settings.name:<20} engine={engine:<5} layout={timing.layout:<7} "
                f"s/batch={timing.seconds_per_batch:.6f} "
                f"ms/step={1e3 * timing.seconds_per_step:.4f} "
                f"floor_MFLOP/step={timing.floor_flop_per_step / 1e6:.3f} "
                f"GFLOP/s={timing.gflops:.2f}"
            )
        matmul = matmul_gflops(settings)
        line = f"{settings.name:<20} matmul_GFLOP/s={matmul:.2f}"
        if "fast" in timings:
            line += f" fast_vs_matmul={matmul / timings['fast'].gflops:.2f}x"
        if "dense" in timings and "fast" in timings:
            ratio = timings["dense"].seconds_per_batch / timings["fast"].seconds_per_batch
            line += f" speedup(dense/fast)={ratio:.1f}x"
        emit(line)
    return results
