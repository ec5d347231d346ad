"""The CUDA path measured against itself, and the whole paper projected onto the card.

Variants, each timed in one run on synthetic batches of the trial's shapes:

* ``as-it-stands``: the dense layout's TorchScript loop, two kernel launches per Euler step;
* ``graphs``: the same steps replayed as one captured CUDA graph per phase;
* ``triton``: graphs, each step one fused Triton kernel (:mod:`eqp.engines.backends.triton_step`);
* ``ensemble-M`` (``-triton``): M trials of that shape stacked (the bypass-p sweep's points),
  graphs on; its seconds are per stacked batch, which trains every member one batch.

Seconds per training batch include the free and nudged phases and the update; seconds per
test batch are a test chunk's (``eval_chunk`` batches in one free phase) over its batches.
The projection multiplies these by the paper's batch counts and epochs
(:func:`project_paper_hours`); the Wine and Diabetes trials are added at the CPU model's
estimate of :mod:`eqp.pipeline`, since they stay on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from eqp.config.settings import TrialSettings
from eqp.config.stacking import stack_groups
from eqp.data.datasets import synthetic_dataset
from eqp.training.ensemble import Ensemble
from eqp.training.trainer import Trainer

CUDA_TRIALS = ("mnist_5layer_swni", "mnist_3layer_mlff")
# Stack sizes timed per shape: the sweep's 31 points, and the paper's named trials of that
# shape (four 5-layer MNIST/Fashion-MNIST trials, three 3-layer ones).
ENSEMBLE_SIZES = {5: (4, 31), 3: (3, 31)}


@dataclass
class CudaTiming:
    trial: str
    step_kernel: str
    graphs: bool
    members: int
    seconds_per_train_batch: float
    seconds_per_test_batch: float

    @property
    def variant(self) -> str:
        if self.members > 1:
            return f"ensemble-{self.members}" + ("-triton" if self.step_kernel == "triton" else "")
        if self.step_kernel == "triton":
            return "triton"
        return "graphs" if self.graphs else "as-it-stands"

    @property
    def per_member_train(self) -> float:
        return self.seconds_per_train_batch / self.members


def _hidden_layers(settings: TrialSettings) -> int:
    return len(settings.layer_sizes) - 2


def _synchronised(run: Callable[[], object]) -> float:
    """Wall seconds of ``run`` including the device work it queued."""
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    sync()
    start = time.perf_counter()
    run()
    sync()
    return time.perf_counter() - start


def _best(repeats: int, run: Callable[[], object]) -> float:
    return min(_synchronised(run) for _ in range(repeats))


def time_single(
    settings: TrialSettings,
    cuda_graphs: bool,
    batches: int,
    chunk: int,
    repeats: int,
    step_kernel: str = "cublas",
) -> tuple[CudaTiming, torch.Tensor]:
    """One trial alone; also its weights after the timed batches (to compare kernels)."""
    data = synthetic_dataset(settings, max(batches + 2, chunk), settings.device)
    trainer = Trainer.build(
        settings,
        data=data,
        layout="dense",
        cuda_graphs=cuda_graphs,
        eval_chunk=chunk,
        step_kernel=step_kernel,
    )
    for j in range(2):  # TorchScript profiles its first runs; graphs are captured here
        trainer.train_batch(j)
    trainer.evaluate()
    train = _best(repeats, lambda: [trainer.train_batch(j) for j in range(batches)]) / batches
    test = _best(repeats, trainer.evaluate) / len(data.test)
    timing = CudaTiming(settings.name, step_kernel, cuda_graphs, 1, train, test)
    return timing, trainer.net.weights.cpu()


def time_ensemble(
    settings: TrialSettings,
    members: int,
    batches: int,
    chunk: int,
    repeats: int,
    step_kernel: str = "cublas",
) -> CudaTiming:
    """``members`` trials of ``settings``' shape stacked (sweep points; seeds of an MLFF
    trial), graphs on."""
    data = synthetic_dataset(settings, max(batches + 2, chunk), settings.device)
    if settings.network_type == "MLFF":  # nothing to sweep: seeds stand in for the points
        variants = [{"seed": settings.seed + k} for k in range(members)]
    else:
        values = [0.0] + [10 ** (-4 + 4 * k / max(1, members - 2)) for k in range(members - 1)]
        variants = [{"bypass_p": p} for p in values]
    trainers = [
        Trainer.build(settings.with_overrides(v), data=data, layout="dense", eval_chunk=chunk)
        for v in variants
    ]
    ensemble = Ensemble(trainers, step_kernel=step_kernel)
    for j in range(2):
        ensemble.train_batch(j)
    ensemble.evaluate()
    train = _best(repeats, lambda: [ensemble.train_batch(j) for j in range(batches)]) / batches
    test = _best(repeats, ensemble.evaluate) / len(data.test)
    return CudaTiming(settings.name, step_kernel, True, members, train, test)


def run_cuda_benchmark(
    trials: Sequence[TrialSettings],
    batches: int,
    chunk: int = 50,
    repeats: int = 3,
    emit: Callable[[str], None] = print,
    step_kernels: Sequence[str] = ("cublas", "triton"),
) -> list[CudaTiming]:
    """Every variant of every trial, with speed-ups per member over the first."""
    results = []
    for settings in trials:
        timings = []
        weights = {}
        for kernel, graphs in (("cublas", False), ("cublas", True), ("triton", True)):
            if kernel in step_kernels:
                timing, weights[kernel, graphs] = time_single(
                    settings, graphs, batches, chunk, repeats, kernel
                )
                timings.append(timing)
        for members in ENSEMBLE_SIZES.get(_hidden_layers(settings), (31,)):
            for kernel in step_kernels:
                timings.append(time_ensemble(settings, members, batches, chunk, repeats, kernel))
        base = timings[0]
        for timing in timings:
            emit(
                f"{settings.name:<18} {timing.variant:<18} "
                f"s/train_batch={timing.seconds_per_train_batch:.6f} "
                f"s/test_batch={timing.seconds_per_test_batch:.6f} "
                f"s/train_batch/member={timing.per_member_train:.6f} "
                f"speedup/member={base.per_member_train / timing.per_member_train:.1f}x"
            )
        reference = weights.get(("cublas", True))
        for (kernel, graphs), value in weights.items():
            if reference is not None and (kernel, graphs) != ("cublas", True):
                emit(
                    f"{settings.name:<18} max |W({kernel}{'' if graphs else ', eager'}) - "
                    f"W(cublas, graphs)| after {2 + repeats * batches} batches: "
                    f"{float((value - reference).abs().max()):.3g}"
                )
        results.extend(timings)
    return results


def project_paper_hours(
    timings: Sequence[CudaTiming],
    paper: Mapping[str, TrialSettings],
    sweep: Sequence[TrialSettings],
    cpu_seconds: Callable[[TrialSettings], float],
) -> dict[str, float]:
    """Whole-paper hours on the measured card, for each way of running it.

    ``paper`` holds the named trials and ``sweep`` every sweep point (all seeds). MNIST and
    Fashion-MNIST trials count at the timings of their shape (hidden-layer count); the small
    trials at ``cpu_seconds``. A stack counts at the timing of the smallest measured stack at
    least as large, and members leave it as their epochs run out.
    """
    measured: dict[tuple[int, str, bool, int], CudaTiming] = {}
    for t in timings:
        measured[(_hidden_layers(paper[t.trial]), t.step_kernel, t.graphs, t.members)] = t

    def seconds_alone(settings: TrialSettings, kernel: str, graphs: bool) -> float:
        t = measured.get((_hidden_layers(settings), kernel, graphs, 1))
        if t is None:
            return float("nan")
        n_train, n_test = settings.batch_counts()
        epochs = settings.epochs
        return epochs * n_train * t.seconds_per_train_batch + (epochs + 1) * n_test * (
            t.seconds_per_test_batch
        )

    def stack_timing(settings: TrialSettings, kernel: str, members: int) -> CudaTiming | None:
        layers = _hidden_layers(settings)
        sizes = sorted(
            m
            for shape, k, graphs, m in measured
            if shape == layers and k == kernel and graphs and m >= members
        )
        return measured[(layers, kernel, True, sizes[0])] if sizes else None

    def seconds_stacked(group: Sequence[TrialSettings], kernel: str) -> float:
        if not group:
            return 0.0
        ordered = sorted(group, key=lambda s: s.epochs)
        n_train, n_test = ordered[0].batch_counts()
        first = stack_timing(ordered[0], kernel, len(ordered))
        if first is None:
            return float("nan")
        total, done = n_test * first.seconds_per_test_batch, 0
        for index, settings in enumerate(ordered):
            t = stack_timing(settings, kernel, len(ordered) - index)
            if t is None:
                return float("nan")
            per_epoch = n_train * t.seconds_per_train_batch + n_test * t.seconds_per_test_batch
            total += (settings.epochs - done) * per_epoch
            done = settings.epochs
        return total

    image = [s for s in paper.values() if s.dataset in ("mnist", "fashion_mnist")]
    small = sum(
        cpu_seconds(s) for s in paper.values() if s.dataset not in ("mnist", "fashion_mnist")
    )
    seeds = sorted({s.seed for s in sweep})
    # the named trials stacked as the pipeline stacks them (trial_ensembles)
    stacks = stack_groups({s.name: s for s in image})
    groups = [[paper[n] for n in names] for names in stacks.values()]
    alone = [s for s in image if not any(s in group for group in groups)]
    points = len(sweep) // max(1, len(seeds))
    seconds = {
        "as-it-stands, one trial at a time": small
        + sum(seconds_alone(s, "cublas", False) for s in [*image, *sweep])
    }
    for kernel, label in (("cublas", "graphs"), ("triton", "graphs + triton step")):
        sweep_stacked = sum(
            seconds_stacked([s for s in sweep if s.seed == seed], kernel) for seed in seeds
        )
        seconds[f"{label}, one trial at a time"] = small + sum(
            seconds_alone(s, kernel, True) for s in [*image, *sweep]
        )
        seconds[f"{label}, sweep as {points}-member ensembles"] = (
            small + sum(seconds_alone(s, kernel, True) for s in image) + sweep_stacked
        )
        seconds[f"{label}, the named trials of each shape stacked too"] = (
            small
            + sweep_stacked
            + sum(seconds_stacked(g, kernel) for g in groups)
            + sum(seconds_alone(s, kernel, True) for s in alone)
        )
    return {name: value / 3600 for name, value in seconds.items()}


def as_records(timings: Sequence[CudaTiming]) -> list[dict]:
    return [{**asdict(t), "variant": t.variant} for t in timings]
