"""Running trials to complete trial folders: one trial alone, or a group trained together.

:func:`run_trial` and :func:`eqp.training.ensemble.run_ensemble` differ in how they build and
resume their trainers; from then on both go through :func:`run_members`, a trial alone being
a group of one: the initial evaluation, per epoch training, evaluation, the recorded rows and
the checkpoints, and at the end the trial folders.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import save

from eqp.config.settings import TrialSettings
from eqp.engines.backends import c_kernel
from eqp.outputs import records
from eqp.training.checkpoint import KEEP_STATE_AUTO_BYTES, STATE_FILE, state_bytes
from eqp.training.scoring import Evaluation, WorkTally
from eqp.training.trainer import Trainer

Log = Callable[[str], None]


@dataclass
class EpochResult:
    epoch: int
    train_error: float
    test_error: float
    saturated_low: int
    saturated_high: int
    seconds: float
    train_work: WorkTally = field(default_factory=WorkTally)
    test_work: WorkTally = field(default_factory=WorkTally)

    def row(self) -> dict[str, float | int | None]:
        row = {k: v for k, v in self.__dict__.items() if not isinstance(v, WorkTally)}
        return {**row, **self.train_work.columns("train"), **self.test_work.columns("test")}


@dataclass
class TrialOutcome:
    folder: Path
    summary: dict[str, Any]
    resumed_from: int


@dataclass
class Member:
    """One trial of a run: its trainer, its folder, its checkpoint (if any), where its log
    lines go, and the epoch it resumed after."""

    trainer: Trainer
    folder: Path
    checkpoint: Path | None
    log: Log
    resumed: int = 0


class Group(Protocol):
    """Trainers that train and evaluate together, one result per member, in their order."""

    members: list[Trainer]

    def train_epoch(
        self, progress: Callable[[int], None] | None = None
    ) -> list[tuple[float, np.ndarray]]: ...

    def evaluate(self) -> list[Evaluation]: ...

    def regroup(self, members: list[Trainer]) -> Group:
        """The same kind of group of ``members`` (some of this one's): those that go on."""
        ...


class Alone:
    """A trial trained on its own, as a group of one."""

    def __init__(self, trainer: Trainer) -> None:
        self.members = [trainer]

    def train_epoch(
        self, progress: Callable[[int], None] | None = None
    ) -> list[tuple[float, np.ndarray]]:
        return [self.members[0].train_epoch(progress)]

    def evaluate(self) -> list[Evaluation]:
        return [self.members[0].evaluate()]

    def regroup(self, members: list[Trainer]) -> Alone:
        return Alone(members[0])


def run_trial(
    settings: TrialSettings,
    out_dir: str | Path,
    data_root: str | Path | None = None,
    *,
    engine: str = "fast",
    checkpoint: str | Path | None = None,
    progress: bool = False,
    log: Log = print,
    preset: str | None = None,
    threads: int | None = None,
    eval_chunk: int = 50,
    layout: str = "auto",
    step_kernel: str = "cublas",
    keep_state: bool | None = None,
) -> TrialOutcome:
    """Train ``settings`` for its epochs and write a complete trial folder to ``out_dir``.

    With ``checkpoint`` (a file path outside the declared outputs) the state is saved after
    every epoch and a rerun continues from the last complete one. A finished trial keeps its
    final state in ``out_dir/state.safetensors`` (``keep_state``: True, False, or None = only
    when it is at most ``KEEP_STATE_AUTO_BYTES``); a later run asking for more epochs of the
    same trial continues from it, bitwise as one uninterrupted run. ``threads`` is the number
    of cores the fused kernel uses; torch itself stays on one thread, because MKL splits a
    product's inner dimension differently for other thread counts (the input drive's GEMM
    rounds differently at 3 threads here), and results must not depend on the thread count.
    """
    checkpoint_path = Path(checkpoint) if checkpoint else None
    check_writable_places(Path(out_dir), checkpoint_path)
    torch.set_num_threads(1)
    started = time.perf_counter()
    trainer = Trainer.build(
        settings,
        data_root,
        engine=engine,
        eval_chunk=eval_chunk,
        layout=layout,
        threads=threads or 1,
        step_kernel=step_kernel,
    )
    log(
        f"trial {settings.name} seed {settings.seed}: {len(trainer.data.train)} training and "
        f"{len(trainer.data.test)} test batches of {settings.batch_size}; realised p = "
        f"{trainer.topology.realised_p:.6g}; engine {engine} "
        f"({getattr(trainer.engine, 'layout', 'full')} layout) on {trainer.device}, "
        f"{trainer.threads} thread(s); free phase: {_settle_text(trainer.settle_record())}"
    )
    member = Member(trainer, Path(out_dir), checkpoint_path, log)
    member.resumed = _resume_alone(member)
    outcomes = run_members(
        [member],
        Alone(trainer),
        log,
        started,
        preset=preset,
        keep_state=keep_state,
        progress=progress,
    )
    return outcomes[0]


def run_members(
    members: Sequence[Member],
    group: Group,
    log: Log,
    started: float,
    *,
    preset: str | None,
    keep_state: bool | None,
    progress: bool = False,
) -> list[TrialOutcome]:
    """Train ``members`` (resumed, in lockstep, ``group`` training them) to their epochs and
    write their folders; a member whose epochs have run out leaves the group, the others go
    on. Before the first epoch (no recorded row yet) the members are evaluated as epoch 0."""
    first = members[0].trainer
    if not first.history.rows:
        tick = time.perf_counter()
        initial = group.evaluate()
        seconds = time.perf_counter() - tick
        for member, evaluation in zip(members, initial, strict=True):
            record_initial(member.trainer, evaluation, seconds, member.log)
        _save_checkpoints(members)
    bar = _progress_bar(progress, first.settings, len(first.data.train), first.epoch)
    try:
        while True:
            going_on = [m for m in members if m.trainer.epoch < m.trainer.settings.epochs]
            if not going_on:
                break
            if len(going_on) < len(group.members):
                log(
                    f"{len(members) - len(going_on)} member(s) finished; the other "
                    f"{len(going_on)} go on from epoch {going_on[0].trainer.epoch}"
                )
                group = group.regroup([m.trainer for m in going_on])
            tick = time.perf_counter()
            trained = group.train_epoch(bar.update if bar is not None else None)
            evaluations = group.evaluate()
            seconds = time.perf_counter() - tick
            for member, (error, rates), evaluation in zip(
                going_on, trained, evaluations, strict=True
            ):
                record_epoch(member.trainer, error, rates, evaluation, seconds, member.log)
            _save_checkpoints(going_on)
    finally:
        if bar is not None:
            bar.close()
    total = time.perf_counter() - started
    outcomes = []
    for member in members:
        summary = finish_trial_folder(member.trainer, member.folder, preset, total, keep_state)
        if member.checkpoint is not None:
            member.checkpoint.unlink(missing_ok=True)
        outcomes.append(TrialOutcome(member.folder, summary, member.resumed))
    return outcomes


def _save_checkpoints(members: Sequence[Member]) -> None:
    for member in members:
        if member.checkpoint is not None:
            member.trainer.save_checkpoint(member.checkpoint)


def _resume_alone(member: Member) -> int:
    """Resume a trial alone from its checkpoint, else from the kept state of a finished run
    of fewer epochs; return the epoch it resumed after (0 if it did not)."""
    trainer, path, log = member.trainer, member.checkpoint, member.log
    resumed = 0
    if path is not None and path.exists():
        problem = trainer.resume_from(path)
        if problem is None:
            resumed = trainer.epoch
            log(f"resumed from the checkpoint after epoch {resumed}")
        else:
            log(f"ignored the checkpoint {path}: {problem}; starting over")
    if not trainer.history.rows:
        resumed = _continue_kept_state(trainer, member.folder, log)
    return resumed


def _continue_kept_state(trainer: Trainer, folder: Path, log: Log) -> int:
    """Restore a finished run's kept state from ``folder`` if this run asks for more epochs
    of the same trial; return the epoch it continues after (0 if it does not).

    Asked for the same epochs again, a trial trains from the start as before (a rerun after
    a change to the code must not reuse old results).
    """
    path = folder / STATE_FILE
    if not path.is_file():
        return 0
    checkpoint = trainer.read_checkpoint(path)
    if isinstance(checkpoint, str):
        log(f"the kept state {path} is not continued: {checkpoint}; starting over")
        return 0
    epoch = int(checkpoint[0]["epoch"])
    if epoch >= trainer.settings.epochs:
        return 0
    # the folder's files are those of the shorter run until this one ends: mark it incomplete
    (folder / "summary.json").unlink(missing_ok=True)
    trainer.restore(*checkpoint)
    log(f"continued from the kept state of the finished run after epoch {epoch}")
    return epoch


def finish_trial_folder(
    trainer: Trainer, folder: Path, preset: str | None, seconds: float, keep_state: bool | None
) -> dict[str, Any]:
    """Keep (or drop) the final state, then write the trial folder, summary.json last."""
    keep = state_bytes(trainer) <= KEEP_STATE_AUTO_BYTES if keep_state is None else keep_state
    path = folder / STATE_FILE
    if keep:
        folder.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(path, with_mask=True)
    else:
        # a state left by an earlier run would not describe this folder's files
        path.unlink(missing_ok=True)
    return write_trial_folder(trainer, folder, preset, seconds)


def record_initial(trainer: Trainer, initial: Evaluation, seconds: float, log: Log) -> None:
    """Epoch 0's row: the test error before any training."""
    trainer.history.rows.append(
        EpochResult(
            0,
            initial.error,
            initial.error,
            initial.saturated_low,
            initial.saturated_high,
            seconds,
            test_work=initial.work,
        ).row()
    )
    log(f"epoch 0: test error {initial.error:.6g}")


def record_epoch(
    trainer: Trainer,
    train_error: float,
    rates: np.ndarray,
    evaluation: Evaluation,
    seconds: float,
    log: Log,
) -> None:
    """Append one trained epoch's row and rates to the history, and log it."""
    result = EpochResult(
        trainer.epoch,
        train_error,
        evaluation.error,
        evaluation.saturated_low,
        evaluation.saturated_high,
        seconds,
        train_work=trainer.train_work,
        test_work=evaluation.work,
    )
    trainer.history.rows.append(result.row())
    trainer.history.rates.append(rates)
    log(
        f"epoch {result.epoch}: train error {train_error:.6g}, test error "
        f"{evaluation.error:.6g} ({result.seconds:.1f} s"
        + (
            f"; free-phase passes per example: train {_work_text(trainer.train_work)}, "
            f"test {_work_text(evaluation.work)})"
            if trainer.sor is not None
            else ")"
        )
    )


def _settle_text(record: dict[str, Any]) -> str:
    if record["method"] == "euler":
        return f"{record['steps']} Euler steps (faithful)"
    cap = record["max_steps"] or "the Euler steps"
    return (
        f"SOR to a fixed point (tol {record['tol']:g}, omega {record['omega']:g}, Euler "
        f"warm-up above residual {record['warmup_tol']:g} ({record['cold_warmup_tol']:g} from "
        f"zero), at most {cap} passes)"
    )


def _work_text(tally: WorkTally) -> str:
    if not tally.examples:
        return "-"
    return f"mean {tally.total / tally.examples:.1f}, max {tally.most}, capped {tally.capped}"


def check_writable_places(out_dir: Path, checkpoint: Path | None) -> None:
    """Refuse, before any training, an output folder or checkpoint that could not be written;
    clear what an earlier, killed attempt left half-written there."""
    if out_dir.exists() and not out_dir.is_dir():
        raise records.RecordError(
            f"the output folder {out_dir} is an existing file; give a folder path (new or "
            "existing) or move the file away"
        )
    if checkpoint is not None and checkpoint.is_dir():
        raise records.RecordError(
            f"the checkpoint {checkpoint} is an existing folder; give a file path instead"
        )
    for place in (out_dir, *([checkpoint.parent] if checkpoint is not None else [])):
        blocking = next((p for p in place.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise records.RecordError(
                f"{place} cannot be created: {blocking} is a file, not a folder; choose "
                "another path"
            )
    # A job killed while writing leaves a temporary beside the file; the folder is this
    # job's alone, the checkpoint folder is shared with other seeds (only ours is touched).
    records.remove_temporaries(out_dir)
    if checkpoint is not None:
        records.remove_temporaries(checkpoint.parent, checkpoint.name)


def _progress_bar(enabled: bool, settings: TrialSettings, per_epoch: int, done: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        total=per_epoch * settings.epochs,
        initial=per_epoch * done,
        desc=settings.name,
        unit="batch",
        dynamic_ncols=True,
    )


def write_trial_folder(
    trainer: Trainer, folder: Path, preset: str | None, seconds: float
) -> dict[str, Any]:
    """Write every output file; summary.json goes last and marks the folder complete."""
    folder.mkdir(parents=True, exist_ok=True)
    s = trainer.settings
    rows = trainer.history.rows
    pairs = trainer.net.n_pairs
    rates = (
        np.stack(trainer.history.rates)
        if trainer.history.rates
        else np.zeros((0, len(trainer.data.train), pairs))
    )
    records.write_metrics(folder, rows)
    records.atomic_write_npz(
        folder / "layer_rates.npz",
        rates=rates,
        learning_rates=np.asarray(s.pair_learning_rates, dtype=np.float64),
    )
    mask = trainer.topology.mask != 0
    records.atomic_write_npz(
        folder / "mean_dw.npz",
        **records.sparse_from_dense(trainer.full_mean_abs_dw(), mask),
        layer_sizes=np.asarray(s.layer_sizes, dtype=np.int64),
    )
    records.atomic_write_npz(
        folder / "initial.npz",
        W=trainer.topology.weights,
        mask=trainer.topology.mask.astype(np.uint8),
    )
    records.atomic_write_bytes(
        folder / "model.safetensors",
        save(
            {
                "W": trainer.net.weights.detach().cpu().contiguous(),
                "b": trainer.net.biases.detach().cpu().contiguous(),
                "mask": trainer.net.mask.detach().cpu().contiguous(),
            },
            metadata={"trial": s.name, "seed": str(s.seed)},
        ),
    )
    rate_means = rates.reshape(-1, pairs).mean(0) if rates.size else np.full(pairs, np.nan)
    layout = getattr(trainer.engine, "layout", None)
    summary = {
        "trial": s.name,
        "seed": s.seed,
        "preset": preset,
        "settings": s.to_dict(),
        "epochs_run": trainer.epoch,
        "initial_test_error": rows[0]["test_error"],
        "train_error": rows[-1]["train_error"],
        "test_error": rows[-1]["test_error"],
        "realised_p": trainer.topology.realised_p,
        "rewired_connections": trainer.topology.rewired,
        "log_spread": records.log_spread(rates),
        "layer_rate_means": [float(v) for v in rate_means],
        "batches_per_epoch": {"train": len(trainer.data.train), "test": len(trainer.data.test)},
        "engine": trainer.engine.name,
        "engine_layout": layout,
        # the fused kernel's arithmetic: avx2+fma and portable round differently
        "kernel_instruction_set": c_kernel.instruction_set() if layout == "fused" else None,
        "settle": trainer.settle_record(),
        "threads": trainer.threads,
        "device": str(trainer.device),
        "step_kernel": trainer.step_kernel,
        "ensemble": trainer.ensemble,
        "seconds": seconds,
        "versions": versions(),
    }
    records.atomic_write_json(folder / "summary.json", records.json_safe(summary))
    return summary


def versions() -> dict[str, str]:
    import platform

    import sklearn

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "eqp": _package_version(),
    }


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eqp")
    except PackageNotFoundError:
        return "unknown"
