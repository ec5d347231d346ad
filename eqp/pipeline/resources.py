"""The resources of a training job: memory and wall time (and a GPU), from a model fitted
to measurements, so that Slurm gets limits a job fits in."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from eqp.config.settings import (
    DOWNLOADED,
    PipelineError,
    TrialSettings,
)

# Resource model of a training job on the CPU (fused kernel), fitted to `python -m eqp bench`
# on this project's 2-core machine and rounded up; the Slurm time limit is twice the estimate.
# A settling step (Euler step or SOR pass) costs a fixed overhead plus a time per non-input
# connection and example (mnist_5layer ~45-60 us and mnist_3layer ~0.4-0.6 ms per step of a
# batch of 20); threads divide it (PARALLEL_EFFICIENCY per thread; the kernel stops adding
# threads where a net is too small). The weight update and the input drive stay on one thread.
SECONDS_PER_STEP = 2.0e-6
SECONDS_PER_EDGE_EXAMPLE = 3.5e-11
SECONDS_PER_UPDATE_ENTRY = 8.0e-9  # per entry of the N x hidden update, per training batch
PARALLEL_EFFICIENCY = 0.8
# SOR passes per batch assumed for the estimate: a batch costs its slowest example, measured
# at ~120-190 on average for cold first epochs of the MNIST nets and ~80-130 for warm ones.
SOR_PASSES = 200
JOB_OVERHEAD_S = 60.0
RUNTIME_MARGIN = 2.0
# Ensembles (sweep.ensemble, eqp.training.ensemble). On a CPU: the members' single-thread estimates
# above, one after another, times a slowdown (stacked dense products against the fused kernel;
# measured 2.0-2.2 for 4-8 points of the sweep here). On CUDA: a fixed cost per settling step
# (a replayed CUDA graph) plus a time per member, example and entry of the dense hidden x hidden
# step matrix; the same for a weight update (entries of the N x hidden dW). Measured on an
# H200 with 8 and 31 points of the sweep: ~15 us per step and ~1e-13 s per member, example
# and entry (0.64 ms per step for 31 x 1000 test rows); the constants allow a GPU about three
# times slower. Every member also costs set-up time (data, topology, its folder): ~0.5 s there.
ENSEMBLE_CPU_SLOWDOWN = 2.5
ENSEMBLE_MEMBER_OVERHEAD_S = 2.0
GPU_SECONDS_PER_STEP = 3.0e-5
GPU_SECONDS_PER_ENTRY_EXAMPLE = 3.0e-13
GPU_SECONDS_PER_UPDATE = 1.0e-3
GPU_SECONDS_PER_UPDATE_ENTRY = 1.0e-11
# Host memory of a CUDA job beyond BASE_MEM_MB (the CUDA context and libraries).
GPU_HOST_MEM_MB = 1000
MIN_RUNTIME_MIN = 10
BASE_MEM_MB = 1500


def connections(settings: TrialSettings) -> int:
    """Connections of the network (rewiring moves connections; it does not add any)."""
    sizes = settings.layer_sizes
    count = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    if settings.network_type == "SW_intra":
        count += sum(h * (h - 1) // 2 for h in sizes[1:-1])
    return count


def examples(settings: TrialSettings) -> tuple[int, int]:
    """Training and test examples per epoch, after any subset."""
    n_train, n_test = settings.batch_counts()
    return n_train * settings.batch_size, n_test * settings.batch_size


def _speedup(threads: int) -> float:
    return 1.0 + PARALLEL_EFFICIENCY * (max(1, threads) - 1)


def _free_steps(settings: TrialSettings) -> int:
    """Settling passes of a free phase assumed for the estimate (Euler steps or SOR passes)."""
    if settings.settle == "sor":
        return min(settings.settle_cap, SOR_PASSES)
    return settings.free_iterations


def _training_seconds(
    settings: TrialSettings,
    eval_chunk: int,
    step_seconds: Callable[[int], float],
    update_seconds: float,
) -> float:
    """Every epoch's training and evaluation plus the initial evaluation, without overhead.

    ``step_seconds(rows)`` is the time of one settling step of ``rows`` examples and
    ``update_seconds`` that of one weight update.
    """
    n_train, n_test = settings.batch_counts()
    size, free_steps = settings.batch_size, _free_steps(settings)
    clamped_steps = settings.weakly_clamped_iterations
    train = n_train * ((free_steps + clamped_steps) * step_seconds(size) + update_seconds)
    full, rest = divmod(n_test, max(1, eval_chunk))
    evaluate = full * free_steps * step_seconds(eval_chunk * size)
    evaluate += free_steps * step_seconds(rest * size) if rest else 0.0
    return settings.epochs * (train + evaluate) + evaluate


def _cpu_training_seconds(settings: TrialSettings, eval_chunk: int, threads: int) -> float:
    sizes = settings.layer_sizes
    edges = connections(settings) - sizes[0] * sizes[1]  # those among non-input neurons
    speedup = _speedup(threads)

    def step(rows: int) -> float:
        return (SECONDS_PER_STEP + 2 * edges * rows * SECONDS_PER_EDGE_EXAMPLE) / speedup

    neurons = sum(sizes)
    update = SECONDS_PER_UPDATE_ENTRY * neurons * (neurons - sizes[0])
    return _training_seconds(settings, eval_chunk, step, update)


def estimate_seconds(settings: TrialSettings, eval_chunk: int = 50, threads: int = 1) -> float:
    """A generous CPU estimate of a trial's wall time with ``threads`` kernel threads."""
    return _cpu_training_seconds(settings, eval_chunk, threads) + JOB_OVERHEAD_S


def _first_member(members: Sequence[TrialSettings]) -> TrialSettings:
    if not members:
        raise PipelineError("an ensemble needs at least one member")
    return members[0]


def estimate_ensemble_seconds(members: Sequence[TrialSettings], eval_chunk: int = 50) -> float:
    """A generous estimate of the wall time of one ensemble of ``members`` (eqp.training.ensemble).

    On CUDA the members settle together: a step costs a fixed launch overhead plus a time
    per member, example and entry of the dense hidden x hidden step matrix. On a CPU (one
    thread, as run_ensemble runs) the stacked products are slower than the members'
    single-threaded fused-kernel runs one after another, by ENSEMBLE_CPU_SLOWDOWN.
    """
    first = _first_member(members)
    longest = max(members, key=lambda m: m.epochs)  # all members counted until it ends
    overhead = JOB_OVERHEAD_S + ENSEMBLE_MEMBER_OVERHEAD_S * len(members)
    if not first.device.startswith("cuda"):
        cpu = sum(_cpu_training_seconds(m, eval_chunk, 1) for m in members)
        return ENSEMBLE_CPU_SLOWDOWN * cpu + overhead
    sizes = first.layer_sizes
    hidden = sum(sizes) - sizes[0]  # the step matrix is hidden x hidden, dW neurons x hidden
    count = len(members)

    def step(rows: int) -> float:
        return GPU_SECONDS_PER_STEP + count * rows * hidden**2 * GPU_SECONDS_PER_ENTRY_EXAMPLE

    update = GPU_SECONDS_PER_UPDATE + count * sum(sizes) * hidden * GPU_SECONDS_PER_UPDATE_ENTRY
    return _training_seconds(longest, eval_chunk, step, update) + overhead


def _memory_bytes(settings: TrialSettings) -> tuple[float, float]:
    """Bytes a job holds while it reads the data set's files, and for each network it trains
    (its batches, weights and particles)."""
    n_train, n_test = examples(settings)
    sizes = settings.layer_sizes
    neurons = sum(sizes)
    hidden = neurons - sizes[0]
    files = 70000 * sizes[0] * (1 + 4) if settings.dataset in DOWNLOADED else 0
    data = (n_train + n_test) * (sizes[0] + sizes[-1]) * 4 * 2
    weights = neurons * neurons * 4 * 8  # W, mask, running means, per-batch dW, engine copies
    particles = (n_train + n_test) * hidden * 4 * 2
    return files, data + weights + particles


def _mem_mb(total_bytes: float) -> int:
    total = BASE_MEM_MB + 1.5 * total_bytes / 2**20
    return int(math.ceil(total / 100.0) * 100)


def estimate_mem_mb(settings: TrialSettings) -> int:
    """Torch and Python, the data (MNIST loads a whole split first), weights and particles."""
    return _mem_mb(sum(_memory_bytes(settings)))


def estimate_ensemble_mem_mb(members: Sequence[TrialSettings]) -> int:
    """Host memory of one ensemble job: the data files are read one member at a time.

    On a CPU every member holds its batches (until the ensemble shares identical ones),
    weights and particles (measured: ~0.5 GB per member of the full-MNIST sweep, 16 members).
    On CUDA those live on the GPU and the host stages one member's at a time (measured: 1.7 GB
    for 31 members), plus the CUDA context.
    """
    first = _first_member(members)
    files = max(_memory_bytes(m)[0] for m in members)
    own = [_memory_bytes(m)[1] for m in members]
    if first.device.startswith("cuda"):
        return _mem_mb(files + max(own)) + GPU_HOST_MEM_MB
    return _mem_mb(files + sum(own))


def _limit_minutes(seconds: float) -> int:
    """Slurm's time limit (minutes) for a job estimated at ``seconds``."""
    return max(MIN_RUNTIME_MIN, int(math.ceil(RUNTIME_MARGIN * seconds / 60.0)))


def estimate_resources(
    settings: TrialSettings, eval_chunk: int = 50, threads: int = 1
) -> dict[str, int]:
    """``mem_mb`` and ``runtime`` (minutes, Slurm's time limit) of one training job.

    The runtime is a CPU estimate with a margin; on a GPU it is far too long, which only
    costs queue priority. Override per rule with ``--set-resources train_trial:runtime=...``.
    """
    return {
        "mem_mb": estimate_mem_mb(settings),
        "runtime": _limit_minutes(estimate_seconds(settings, eval_chunk, threads)),
    }


def estimate_ensemble_resources(
    members: Sequence[TrialSettings], eval_chunk: int = 50
) -> dict[str, int]:
    """``mem_mb`` and ``runtime`` (minutes) of one ensemble job (train_sweep_ensemble,
    train_trial_ensemble_<group>).

    Override with ``--set-resources train_sweep_ensemble:runtime=...``.
    """
    return {
        "mem_mb": estimate_ensemble_mem_mb(members),
        "runtime": _limit_minutes(estimate_ensemble_seconds(members, eval_chunk)),
    }
