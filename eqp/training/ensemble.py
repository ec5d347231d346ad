"""Several trials of one shape trained in lockstep as one stacked batch (built for GPUs).

A trial's batches are sequential (persistent particles, an update after every batch), so one
trial cannot fill a GPU: its steps are a few microseconds of arithmetic each. Trials with the
same layer sizes (the 31 points of the bypass-p sweep, seeds of one trial) can share every
launch instead: weights, particles and states get a leading member axis, each Euler step is one
batched product over the members (captured as a CUDA graph on a GPU), and the update is one
batched product too. Each member keeps its own data, topology, random stream (beta's sign),
learning rates and epoch count (a member whose epochs have run out leaves the stack, the others
go on), so its outputs equal its separate run within float rounding (batched and single
products sum in different orders), and its trial folder is written as a single run's.

Members are ordinary :class:`eqp.training.trainer.Trainer` objects whose tensors are re-pointed at
slices of the stacked ones, so checkpoints and trial folders are theirs unchanged; scoring and
the run of the trial folders (:func:`eqp.training.run.run_members`) are a single trial's too.
Only the update is the ensemble's own: one batched product, which rounds differently.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eqp.config.settings import TrialSettings
from eqp.config.stacking import EnsembleError, check_stackable
from eqp.engines.backends import torchscript, triton_step
from eqp.engines.backends.cuda_graphs import GraphedLoops
from eqp.engines.fast import check_step_kernel
from eqp.model.network import rho
from eqp.training import scoring
from eqp.training.run import Member, TrialOutcome, check_writable_places, run_members
from eqp.training.scoring import Evaluation, WorkTally
from eqp.training.trainer import Trainer
from eqp.training.update import fold_into_mean


def ensemble_record(members: Sequence[Trainer], step_kernel: str) -> dict[str, Any]:
    """What a member's summary.json and checkpoint say of the stack it trains in: the member
    count, the step kernel, and the members' epochs where they differ (when the stack
    shrinks; a resumed run must shrink it at the same epochs)."""
    record: dict[str, Any] = {"members": len(members), "step_kernel": step_kernel}
    epochs = sorted(m.settings.epochs for m in members)
    if len(set(epochs)) > 1:
        record["member_epochs"] = epochs
    return record


class Ensemble:
    """Lockstep training of ``trainers`` (built on one device, stackable settings)."""

    def __init__(
        self, trainers: Sequence[Trainer], cuda_graphs: bool = True, step_kernel: str = "cublas"
    ) -> None:
        check_stackable([t.settings for t in trainers])
        self.members = list(trainers)
        first = self.members[0]
        self.settings = first.settings
        self.device = first.device
        check_step_kernel(step_kernel, self.device)
        if len({m.epoch for m in self.members}) > 1:
            raise EnsembleError(
                "members of one stack must be at the same epoch, got "
                + ", ".join(f"{m.settings.name}: {m.epoch}" for m in self.members)
            )
        record = ensemble_record(self.members, step_kernel)
        for index, member in enumerate(self.members):
            # a member keeps the record of the stack it started in (the job's), not of the
            # smaller stacks it goes on in when others have finished
            if member.ensemble is None:
                member.ensemble = {**record, "index": index}
            member.step_kernel = step_kernel
        net = first.net
        self.n_in = net.n_inputs
        self.output_start = net.output_slice.start
        self.classification = first.data.classification
        self.eps = float(self.settings.epsilon)
        self._stack_parameters()
        self._stack_particles()
        self._stack_data()
        self._stack_learning_rates()
        self.matrix = torch.empty(
            len(self.members),
            *(2 * (net.n_neurons - self.n_in,)),
            dtype=torch.float32,
            device=self.device,
        )
        self.cuda_graphs = cuda_graphs
        self.graphs = GraphedLoops() if self.device.type == "cuda" and cuda_graphs else None
        self.step_kernel = step_kernel
        self._loop = (
            triton_step.triton_loop if step_kernel == "triton" else torchscript.stacked_loop
        )
        self.refresh()

    def regroup(self, members: list[Trainer]) -> Ensemble:
        """A stack of ``members`` (some of this one's, at its epoch) with its options."""
        return Ensemble(members, cuda_graphs=self.cuda_graphs, step_kernel=self.step_kernel)

    # -- stacking ----------------------------------------------------------------------------

    def _stack_parameters(self) -> None:
        self.weights = torch.stack([m.net.weights for m in self.members])
        self.biases = torch.stack([m.net.biases for m in self.members])
        self.mask_columns = torch.stack([m.weight_update.mask_columns for m in self.members])
        self.mean_abs_dw = torch.stack([m.mean_abs_dw for m in self.members])
        for index, member in enumerate(self.members):
            member.net.weights = self.weights[index]
            member.net.biases = self.biases[index]
            member.mean_abs_dw = self.mean_abs_dw[index]
        first = self.members[0]
        self.pair_columns = first.weight_update.pair_columns
        self.pair_counts = torch.tensor(
            [m.weight_update.pair_counts for m in self.members],
            dtype=torch.float32,
            device=self.device,
        )

    def _stack_particles(self) -> None:
        # Batches outermost: one batch's particles of all members are one contiguous block.
        self.train_particles = torch.stack([m.train_particles for m in self.members], 1)
        self.test_particles = torch.stack([m.test_particles for m in self.members], 1)
        for index, member in enumerate(self.members):
            member.train_particles = self.train_particles[:, index]
            member.test_particles = self.test_particles[:, index]

    def _stack_data(self) -> None:
        """Members that drew the same batches (same data and seed) share one copy."""
        first = self.members[0].data
        shared = all(
            torch.equal(m.data.train.x, first.train.x)
            and torch.equal(m.data.test.x, first.test.x)
            and torch.equal(m.data.train.y, first.train.y)
            and torch.equal(m.data.test.y, first.test.y)
            for m in self.members[1:]
        )
        count = len(self.members)
        if shared:
            for member in self.members[1:]:
                member.data = first
            self.train_x = first.train.x[:, None].expand(-1, count, -1, -1)
            self.train_y = first.train.y[:, None].expand(-1, count, -1, -1)
            self.test_x = first.test.x[:, None].expand(-1, count, -1, -1)
            self.test_y = first.test.y[:, None].expand(-1, count, -1, -1)
            return
        self.train_x = torch.stack([m.data.train.x for m in self.members], 1)
        self.train_y = torch.stack([m.data.train.y for m in self.members], 1)
        self.test_x = torch.stack([m.data.test.x for m in self.members], 1)
        self.test_y = torch.stack([m.data.test.y for m in self.members], 1)

    def _stack_learning_rates(self) -> None:
        """Per member a factor on dW (its scalar rate, or per-pair rates) and on the biases."""
        weight_factors, bias_factors = zip(
            *(m.weight_update.factors() for m in self.members), strict=True
        )
        self.weight_factor = torch.stack(weight_factors)
        self.bias_factor = torch.stack(bias_factors)

    def refresh(self) -> None:
        """Step matrices eps W_hh + (1 - eps) I of every member, in place (graphs read them)."""
        hidden = self.weights[:, self.n_in :, self.n_in :]
        torch.mul(hidden, self.eps, out=self.matrix)
        self.matrix.diagonal(dim1=1, dim2=2).add_(1 - self.eps)

    # -- phases ------------------------------------------------------------------------------

    def drive(self, x: torch.Tensor) -> torch.Tensor:
        """eps (rho(x) W_xh + b_h) per member: members x rows x hidden."""
        input_weights = self.weights[:, : self.n_in, self.n_in :]
        hidden_bias = self.biases[:, None, self.n_in :]
        return self.eps * torch.baddbmm(hidden_bias, rho(x.to(torch.float32)), input_weights)

    def settle(
        self,
        drive: torch.Tensor,
        state: torch.Tensor,
        steps: int,
        target: torch.Tensor | None = None,
        pull: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``steps`` Euler steps of every member from ``state`` (members x rows x hidden)."""
        if self.graphs is not None:
            return self.graphs.run(
                self._loop,
                (drive, state, target, pull),
                (self.matrix,),
                (steps, self.output_start),
            )
        return self._loop(drive, state.clone(), target, pull, self.matrix, steps, self.output_start)

    # -- training ----------------------------------------------------------------------------

    def _update(
        self, x: torch.Tensor, free: torch.Tensor, nudged: torch.Tensor, betas: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's EqProp update at once (see WeightUpdate.apply): rates and |dW|."""
        inputs = rho(x.to(torch.float32))
        r_free = torch.cat([inputs, free], 2)
        r_nudged = torch.cat([inputs, nudged], 2)
        both = torch.cat([r_nudged, r_free], 1)
        signed = torch.cat([nudged, -free], 1)
        size = x.shape[1]
        scale = betas[:, None, None]
        d_weights = torch.bmm(both.transpose(1, 2), signed).div_(scale)
        d_weights.div_(size).mul_(self.mask_columns)
        d_biases = ((r_nudged - r_free) / scale).mean(1)
        norms = torch.stack(
            [
                torch.linalg.vector_norm(d_weights[:, rows, cols], dim=(1, 2))
                for rows, cols in self.pair_columns
            ],
            1,
        )
        rates = norms / self.pair_counts.sqrt()
        self.weights[:, :, self.n_in :] += d_weights * self.weight_factor
        self.biases += d_biases * self.bias_factor
        self.weights[:, self.n_in :, : self.n_in] = self.weights[
            :, : self.n_in, self.n_in :
        ].transpose(1, 2)
        self.refresh()
        return rates, d_weights.abs_()

    def train_batch(self, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch ``j`` of every member: free phase, scores, beta's signs, nudged phase, update."""
        s = self.settings
        x, y = self.train_x[j], self.train_y[j]
        drive = self.drive(x)
        free = self.settle(drive, self.train_particles[j], s.free_iterations)
        self.train_particles[j] = free
        scores = scoring.score(free[:, :, self.output_start :], y, self.classification)
        for member in self.members:
            if member.stream.randint(0, 2) == 1:
                member.beta = -member.beta
        betas = torch.tensor(
            [m.beta for m in self.members], dtype=torch.float32, device=self.device
        )
        pull = (2 * self.eps * betas)[:, None, None]
        nudged = self.settle(drive, free, s.weakly_clamped_iterations, y, pull)
        rates, abs_dw = self._update(x, free, nudged, betas)
        return scores, rates, abs_dw

    def train_epoch(
        self, progress: Callable[[int], None] | None = None
    ) -> list[tuple[float, np.ndarray]]:
        """One pass over the training batches for every member: (error, rates) per member."""
        n_batches = self.train_x.shape[0]
        count = len(self.members)
        rates = torch.empty(n_batches, count, self.pair_counts.shape[1], device=self.device)
        epoch_abs = torch.zeros_like(self.mean_abs_dw)
        score = torch.zeros(count, dtype=torch.float64, device=self.device)
        for j in range(n_batches):
            batch_score, rates[j], abs_dw = self.train_batch(j)
            score += batch_score
            epoch_abs += abs_dw
            if progress is not None:
                progress(1)
        epoch = self.members[0].epoch + 1
        epoch_abs /= n_batches
        fold_into_mean(self.mean_abs_dw, epoch_abs, epoch)
        steps = self.settings.free_iterations
        examples = n_batches * self.settings.batch_size
        totals = score.cpu().numpy()
        per_member = rates.double().cpu().numpy()
        results = []
        for index, member in enumerate(self.members):
            member.epoch = epoch
            member.train_work = WorkTally.euler(examples, steps)
            error = scoring.error(
                totals[index], examples, n_batches, self.classification, training=True
            )
            results.append((error, per_member[:, index]))
        return results

    def evaluate(self, chunk: int | None = None) -> list[Evaluation]:
        """Every member's test error (chunks of ``chunk`` test batches, as Trainer.evaluate)."""
        s = self.settings
        chunk = chunk or self.members[0].eval_chunk
        n_batches, count, size = self.test_x.shape[0], len(self.members), s.batch_size
        hidden = self.test_particles.shape[-1]
        scores = []
        last = None
        for start in range(0, n_batches, chunk):
            stop = min(start + chunk, n_batches)
            rows = (stop - start) * size
            x = self.test_x[start:stop].transpose(0, 1).reshape(count, rows, -1)
            y = self.test_y[start:stop].transpose(0, 1)
            state = self.test_particles[start:stop].transpose(0, 1).reshape(count, rows, hidden)
            free = self.settle(self.drive(x), state, s.free_iterations)
            moved = free.view(count, stop - start, size, hidden)
            self.test_particles[start:stop] = moved.transpose(0, 1)
            outputs = free[:, :, self.output_start :].view(count, stop - start, size, -1)
            scores.append(scoring.score(outputs, y, self.classification))
            last = torch.cat([x[:, -size:], free[:, -size:]], 2)
        totals = torch.cat(scores, 1).double().cpu().numpy()
        low = (last == 0).sum((1, 2)).cpu().numpy()
        high = (last == 1).sum((1, 2)).cpu().numpy()
        results = []
        examples = n_batches * size
        for index in range(count):
            error = scoring.error(
                totals[index], examples, n_batches, self.classification, training=False
            )
            work = WorkTally.euler(examples, s.free_iterations)
            results.append(Evaluation(error, int(low[index]), int(high[index]), work))
        return results


def run_ensemble(
    settings_list: Sequence[TrialSettings],
    out_dirs: Sequence[str | Path],
    data_root: str | Path | None = None,
    *,
    checkpoints: Sequence[str | Path | None] | None = None,
    log: Callable[[str], None] = print,
    preset: str | None = None,
    eval_chunk: int = 50,
    cuda_graphs: bool = True,
    step_kernel: str = "cublas",
    keep_state: bool | None = None,
) -> list[TrialOutcome]:
    """Train stackable trials together; write each one's folder as :func:`run_trial` would
    (its kept state too, which only a stack of the same kind continues).

    Checkpoints (one per member, after every epoch) resume only together: if any member's
    is missing or unusable, every member starts over, since they must stay in lockstep.
    """
    check_stackable(settings_list)
    if len(out_dirs) != len(settings_list):
        raise EnsembleError(
            f"{len(settings_list)} trials but {len(out_dirs)} output folders; give one each"
        )
    paths = [None if c is None else Path(c) for c in (checkpoints or [None] * len(out_dirs))]
    if len(paths) != len(settings_list):
        raise EnsembleError(
            f"{len(settings_list)} trials but {len(paths)} checkpoints; give one each (or none)"
        )
    for folder, checkpoint in zip(out_dirs, paths, strict=True):
        check_writable_places(Path(folder), checkpoint)
    torch.set_num_threads(1)
    started = time.perf_counter()
    trainers = [
        Trainer.build(s, data_root, eval_chunk=eval_chunk, layout="dense") for s in settings_list
    ]
    ensemble = Ensemble(trainers, cuda_graphs=cuda_graphs, step_kernel=step_kernel)
    first = trainers[0]
    log(
        f"ensemble of {len(trainers)} trials ({', '.join(s.name for s in settings_list)}) on "
        f"{first.device}: {len(first.data.train)} training and {len(first.data.test)} test "
        f"batches of {first.settings.batch_size} each; {first.settings.free_iterations} Euler "
        f"steps (faithful); CUDA graphs {'on' if ensemble.graphs is not None else 'off'}, "
        f"step kernel {ensemble.step_kernel}"
    )
    _resume_together(trainers, paths, log)
    ensemble.refresh()
    members = [
        Member(trainer, Path(folder), path, _member_log(log, trainer), resumed=trainer.epoch)
        for trainer, folder, path in zip(trainers, out_dirs, paths, strict=True)
    ]
    return run_members(members, ensemble, log, started, preset=preset, keep_state=keep_state)


def _member_log(log: Callable[[str], None], member: Trainer) -> Callable[[str], None]:
    label = f"[{member.settings.name} p={member.settings.bypass_p} seed {member.settings.seed}] "
    return lambda line: log(label + line)


def _resume_together(
    trainers: Sequence[Trainer], paths: Sequence[Path | None], log: Callable[[str], None]
) -> None:
    """Resume every member from its checkpoint, or none of them (they move in lockstep)."""
    if any(p is None or not p.exists() for p in paths):
        if any(p is not None and p.exists() for p in paths):
            log("some members have no checkpoint; every member starts over")
        return
    read = [t.read_checkpoint(p) for t, p in zip(trainers, paths, strict=True) if p is not None]
    bad = [
        f"{t.settings.name} p={t.settings.bypass_p}: {why}"
        for t, why in zip(trainers, read, strict=True)
        if isinstance(why, str)
    ]
    if not bad:
        # in lockstep, a member is at the stack's epoch or at its own last one, if earlier
        reached = max(int(meta["epoch"]) for meta, _ in read)
        bad = [
            f"{t.settings.name} p={t.settings.bypass_p}: at epoch {meta['epoch']}, not "
            f"{min(reached, t.settings.epochs)}"
            for t, (meta, _) in zip(trainers, read, strict=True)
            if int(meta["epoch"]) != min(reached, t.settings.epochs)
        ]
    if bad:
        log(f"ignored the checkpoints ({'; '.join(bad)}); every member starts over")
        return
    for member, (meta, tensors) in zip(trainers, read, strict=True):
        member.restore(meta, tensors)
    log(f"resumed every member from its checkpoint after epoch {reached}")
