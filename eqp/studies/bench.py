"""Benchmarks that compare two implementations in one run and print their ratio.

* Engines: the dense reference against the fast engine (Euler steps) on the same network and
  synthetic batches.
* Phases: seconds per training batch and per test chunk of the fast engine for each settle
  method (faithful Euler, converged SOR) and thread count, all from one warm state (a warm-up
  epoch on a data subset with converged settling, so particles sit near their fixed points as
  they do after the first epoch of a run; or a training run's checkpoint, the state its later
  epochs spend their time in), with the free-phase work per example; training batches also
  with the torch weight update against the compiled one (same bits).

Absolute seconds on a shared machine are noise; the ratios within one run are the point.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from eqp.config.settings import SettingsError, TrialSettings
from eqp.data.datasets import DataSet, load_dataset, synthetic_dataset
from eqp.engines.converged import SorParameters, make_settler
from eqp.training.scoring import WorkTally
from eqp.training.trainer import Trainer

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
    trainer = Trainer.build(
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


@dataclass
class PhaseTiming:
    trial: str
    settle: str
    threads: int
    update: str
    seconds_per_train_batch: float
    seconds_per_test_chunk: float
    test_chunk_examples: int
    train_work_mean: float
    train_work_max: int
    test_work_mean: float


def _bench_data(
    settings: TrialSettings, train_batches: int, test_batches: int, data_dir: str | None
) -> tuple[DataSet, str]:
    """The trial's real data (first examples) where ``data_dir`` holds it, else synthetic."""
    size = settings.batch_size
    subset = settings.with_overrides(
        {"train_examples": train_batches * size, "test_examples": test_batches * size}
    )
    if settings.dataset in ("diabetes", "wine"):
        import numpy as np

        return load_dataset(subset, np.random.RandomState(settings.seed)), "real"
    if data_dir is not None and Path(data_dir).is_dir():
        import numpy as np

        from eqp.data.datasets import DataError

        try:
            return load_dataset(subset, np.random.RandomState(settings.seed), data_dir), "real"
        except DataError:
            pass
    return synthetic_dataset(settings, max(train_batches, test_batches)), "synthetic"


def _resumed(
    settings: TrialSettings,
    checkpoint: Path,
    data_dir: str | None,
    chunk: int,
    eval_chunk: int,
    threads: int,
) -> Trainer:
    """The trial resumed from its training checkpoint (on its full data, which the
    checkpoint's particles belong to), its test set cut to one chunk for the timings."""
    import numpy as np

    if not checkpoint.is_file():
        raise SettingsError(f"--checkpoint {checkpoint}: no such file")
    data = load_dataset(settings, np.random.RandomState(settings.seed), data_dir)
    trainer = Trainer.build(settings, data=data, eval_chunk=eval_chunk, threads=threads)
    why = trainer.resume_from(checkpoint)
    if why is not None:
        raise SettingsError(
            f"--checkpoint {checkpoint} cannot resume {settings.name} as --config describes "
            f"it: {why} (for a run's checkpoint, pass the config it was trained with)"
        )
    test = replace(data.test, x=data.test.x[:chunk], y=data.test.y[:chunk])
    trainer.data = replace(data, test=test)
    trainer.test_particles = trainer.test_particles[:chunk].clone()
    return trainer


class _Snapshot:
    """Everything a training batch changes, to time several variants from one state."""

    def __init__(self, trainer: Trainer) -> None:
        self.tensors = [
            t.clone()
            for t in (
                trainer.net.weights,
                trainer.net.biases,
                trainer.train_particles,
                trainer.test_particles,
                trainer.mean_abs_dw,
            )
        ]
        self.beta = trainer.beta
        self.stream = trainer.stream.get_state()

    def restore(self, trainer: Trainer) -> None:
        targets = (
            trainer.net.weights,
            trainer.net.biases,
            trainer.train_particles,
            trainer.test_particles,
            trainer.mean_abs_dw,
        )
        for target, saved in zip(targets, self.tensors, strict=True):
            target.copy_(saved)
        trainer.beta = self.beta
        trainer.stream.set_state(self.stream)
        trainer.engine.refresh()


def time_phases(
    settings: TrialSettings,
    settles: Sequence[str],
    threads: Sequence[int],
    batches: int,
    warm_batches: int,
    data_dir: str | None = None,
    repeats: int = 3,
    emit: Callable[[str], None] = print,
    updates: Sequence[str] = ("torch", "auto"),
    checkpoint: str | Path | None = None,
    eval_chunk: int = 50,
) -> list[PhaseTiming]:
    """Per training batch and per test chunk, for every settle method, thread count and
    weight update (the best of ``repeats`` interleaved rounds, each from the same warm state:
    a warm-up epoch, or the training ``checkpoint`` of this very trial, trained with test
    chunks of ``eval_chunk`` batches; the test chunk once per method and thread count, with
    the last update)."""
    chunk = min(50, settings.batch_counts()[1])
    if settings.network_type == "SW_intra" and "sor" in settles:
        settles = [s for s in settles if s != "sor"]
    converged = settings.with_overrides({"settle": "sor"}) if "sor" in settles else settings
    torch.set_num_threads(1)  # as in run_trial: only the fused kernel uses several threads
    if checkpoint is None:
        data, kind = _bench_data(settings, max(batches, warm_batches), chunk, data_dir)
        trainer = Trainer.build(converged, data=data, eval_chunk=chunk, threads=max(threads))
        start = time.perf_counter()
        trainer.train_epoch()
        trainer.evaluate()
        emit(
            f"{settings.name:<20} warm-up: one epoch of {len(data.train)} {kind} batches and a "
            f"test pass ({trainer.settings.settle}) in {time.perf_counter() - start:.1f} s"
        )
    else:
        trainer = _resumed(converged, Path(checkpoint), data_dir, chunk, eval_chunk, max(threads))
        if batches > len(trainer.data.train):
            raise SettingsError(
                f"--batches = {batches} is more than the {len(trainer.data.train)} training "
                f"batches of {settings.name}; use {len(trainer.data.train)} or fewer"
            )
        emit(
            f"{settings.name:<20} from {checkpoint}: the state after epoch {trainer.epoch} "
            f"({trainer.settings.settle}), its first {batches} training and {chunk} test batches"
        )
    inner = getattr(trainer.engine, "inner", trainer.engine)
    engines = {
        method: make_settler(
            inner,
            trainer.net,
            method,
            SorParameters(settings.epsilon, settings.settle_tol, settings.settle_max_steps)
            if method == "sor"
            else None,
        )
        for method in settles
    }
    snapshot = _Snapshot(trainer)
    best: dict[tuple[str, int, str], list[float]] = {}
    tallies: dict[tuple[str, int, str], tuple[WorkTally, WorkTally]] = {}
    for _ in range(repeats):  # interleaved, best of each: the machine's noise only slows runs
        for method in settles:
            for count in threads:
                for position, update in enumerate(updates):
                    trainer.engine = engines[method]
                    trainer.weight_update.threads = count
                    trainer.weight_update.choose(update)
                    if getattr(inner, "fused", None) is not None:
                        inner.fused.threads = count
                    snapshot.restore(trainer)
                    trainer.train_work = WorkTally()
                    tick = time.perf_counter()
                    for j in range(batches):
                        trainer.train_batch(j)
                    per_batch = (time.perf_counter() - tick) / batches
                    per_chunk, evaluation = math.nan, None
                    if position == len(updates) - 1:  # the test pass has no update
                        tick = time.perf_counter()
                        evaluation = trainer.evaluate()
                        per_chunk = time.perf_counter() - tick
                    key = (method, count, trainer.update)
                    previous = best.get(key, [math.inf, math.nan])
                    chunk_best = per_chunk if math.isnan(previous[1]) else previous[1]
                    if not math.isnan(per_chunk):
                        chunk_best = min(chunk_best, per_chunk)
                    best[key] = [min(previous[0], per_batch), chunk_best]
                    tallies[key] = (trainer.train_work, evaluation.work if evaluation else None)
    results = []
    for (method, count, update), (per_batch, per_chunk) in best.items():
        work, test_work = tallies[(method, count, update)]
        test_work = test_work or WorkTally()
        timing = PhaseTiming(
            settings.name,
            method,
            count,
            update,
            per_batch,
            per_chunk,
            test_work.examples,
            work.total / max(work.examples, 1),
            work.most,
            test_work.total / max(test_work.examples, 1),
        )
        results.append(timing)
        test = (
            f"s/test_chunk={per_chunk:.4f} ({timing.test_chunk_examples} examples)"
            if not math.isnan(per_chunk)
            else "s/test_chunk=-"
        )
        emit(
            f"{settings.name:<20} settle={method:<5} threads={count} update={update:<6} "
            f"s/train_batch={per_batch:.5f} {test} work/example: train mean "
            f"{timing.train_work_mean:.1f} max {timing.train_work_max}, test mean "
            f"{timing.test_work_mean:.1f}"
        )
    _emit_ratios(results, emit)
    if len(updates) > 1:
        snapshot.restore(trainer)
        _time_updates(trainer, threads, updates, 5 * repeats, emit)
        snapshot.restore(trainer)
    return results


def _time_updates(
    trainer: Trainer,
    threads: Sequence[int],
    updates: Sequence[str],
    repeats: int,
    emit: Callable[[str], None],
) -> None:
    """The weight update alone (``WeightUpdate.apply`` on one batch's states), every update and
    thread count interleaved, best of ``repeats``: the part of a batch this choice changes."""
    x, y = trainer.data.train.x[0], trainer.data.train.y[0]
    free = trainer.engine.free(x, trainer.train_particles[0], trainer.settings.free_iterations)
    nudged = trainer.engine.nudged(x, free, y, trainer.beta, 4)
    best: dict[tuple[str, int], float] = {}
    for _ in range(repeats):
        for update in updates:
            trainer.weight_update.choose(update)
            for count in threads:
                trainer.weight_update.threads = count
                tick = time.perf_counter()
                trainer.weight_update.apply(x, free, nudged, trainer.beta)
                seconds = time.perf_counter() - tick
                key = (trainer.update, count)
                best[key] = min(best.get(key, math.inf), seconds)
    base = next(iter(best.values()))
    emit(
        f"{trainer.settings.name:<20} weight update alone (ms, best of {repeats}): "
        + ", ".join(
            f"{update} {count} thread(s) {1e3 * seconds:.2f} ({base / seconds:.2f}x)"
            for (update, count), seconds in best.items()
        )
    )


def _emit_ratios(results: Sequence[PhaseTiming], emit: Callable[[str], None]) -> None:
    by_key = {(r.settle, r.threads, r.update): r for r in results}
    settles = list(dict.fromkeys(r.settle for r in results))
    threads = list(dict.fromkeys(r.threads for r in results))
    updates = list(dict.fromkeys(r.update for r in results))
    final = updates[-1]
    name = results[0].trial if results else ""
    for method in settles:
        for update in updates:
            base = by_key[(method, threads[0], update)]
            for count in threads[1:]:
                other = by_key[(method, count, update)]
                line = (
                    f"{name:<20} settle={method:<5} update={update:<6} threads {threads[0]}->"
                    f"{count}: train batch "
                    f"{base.seconds_per_train_batch / other.seconds_per_train_batch:.2f}x"
                )
                if update == final:
                    line += (
                        f", test chunk "
                        f"{base.seconds_per_test_chunk / other.seconds_per_test_chunk:.2f}x"
                    )
                emit(line)
        for count in threads:
            for before, after in zip(updates[:-1], updates[1:], strict=True):
                old = by_key[(method, count, before)].seconds_per_train_batch
                new = by_key[(method, count, after)].seconds_per_train_batch
                emit(
                    f"{name:<20} settle={method:<5} threads={count} update {before}->{after}: "
                    f"train batch {old / new:.2f}x"
                )
        if len(threads) > 1 and len(updates) > 1:
            old = by_key[(method, threads[0], updates[0])].seconds_per_train_batch
            new = by_key[(method, threads[-1], final)].seconds_per_train_batch
            emit(
                f"{name:<20} settle={method:<5} {threads[0]} thread(s), update {updates[0]} -> "
                f"{threads[-1]} threads, update {final}: train batch {old / new:.2f}x"
            )
    if "euler" in settles and "sor" in settles:
        for count in threads:
            euler, sor = by_key[("euler", count, final)], by_key[("sor", count, final)]
            emit(
                f"{name:<20} threads={count} update={final} settle euler->sor: train batch "
                f"{euler.seconds_per_train_batch / sor.seconds_per_train_batch:.2f}x, test "
                f"chunk {euler.seconds_per_test_chunk / sor.seconds_per_test_chunk:.2f}x"
            )
