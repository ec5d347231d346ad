"""Training: epochs, persistent particles, beta's sign, updates, recorded quantities, checkpoints.

Streams follow spec section 1: one RandomState(seed) stands for the published global NumPy
stream (batch shuffles, then beta's sign once per batch) and a second one builds the
topology. A checkpoint after every epoch holds everything the next epoch reads, so a killed
run resumes to the same numbers an uninterrupted run gives.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from eqp.config.settings import TrialSettings
from eqp.data.datasets import Batches, DataSet, load_dataset
from eqp.engines.backends import c_kernel
from eqp.engines.backends.cuda_graphs import precise_float32
from eqp.engines.converged import SorParameters, make_settler
from eqp.engines.minimiser import Minimiser
from eqp.engines.registry import make_engine
from eqp.model.network import Network, rho
from eqp.model.topology import Topology, build_topology
from eqp.outputs import records

CHECKPOINT_FORMAT = 1
# The weight update: "auto" takes the compiled one where it gives the torch path's bits
UPDATES = ("auto", "torch")
CHECKPOINT_TENSORS = frozenset(
    {"weights", "biases", "train_particles", "test_particles", "mean_abs_dw", "stream_key"}
)
# A finished trial's state, in the checkpoint format (plus the mask and the settings), kept in
# its folder so that asking for more epochs continues it exactly; see run_trial's keep_state.
STATE_FILE = "state.safetensors"
# keep_state=None keeps the state when it is at most this large: every Diabetes/Wine trial and
# MNIST subsets, but not the full MNIST trials (~151 MiB 5-layer, ~457 MiB 3-layer).
KEEP_STATE_AUTO_BYTES = 64 * 2**20
# Settings that do not change a single bit of the epochs both runs train: a checkpoint made
# for fewer (or more) epochs, or under another name, continues exactly.
_NOT_ARITHMETIC = ("epochs", "name")


class DeviceError(RuntimeError):
    """The requested torch device is not available on this machine."""


def resolve_device(device: str) -> torch.device:
    """The torch device, checked; on CUDA float32 products are set to stay full float32."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"device '{device}' was requested but this machine has no usable CUDA "
            "(torch.cuda.is_available() is False); set device: cpu (or --device cpu)"
        )
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise DeviceError(f"device '{device}' is not a valid torch device: {exc}") from exc
    if resolved.type == "cuda":
        precise_float32()
    return resolved


@dataclass
class WorkTally:
    """Free-phase work (Euler steps or SOR passes) per example over one epoch's phases."""

    examples: int = 0
    total: int = 0
    most: int = 0
    capped: int = 0

    def add(self, work: torch.Tensor | None, capped: torch.Tensor | None) -> None:
        if work is None or capped is None:
            return
        self.examples += int(work.numel())
        self.total += int(work.sum())
        self.most = max(self.most, int(work.max()))
        self.capped += int(capped.sum())

    def columns(self, split: str) -> dict[str, float | int | None]:
        """metrics.csv cells: mean and max work per example and the capped count (empty
        when the split ran no free phase, e.g. training before epoch 1)."""
        if not self.examples:
            return {f"{split}_work_mean": None, f"{split}_work_max": None, f"{split}_capped": None}
        return {
            f"{split}_work_mean": self.total / self.examples,
            f"{split}_work_max": self.most,
            f"{split}_capped": self.capped,
        }


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
class Evaluation:
    error: float
    saturated_low: int
    saturated_high: int
    work: WorkTally = field(default_factory=WorkTally)


@dataclass
class History:
    """What a trial has recorded so far; the part of a checkpoint that is not tensors."""

    rows: list[dict[str, float]] = field(default_factory=list)
    rates: list[np.ndarray] = field(default_factory=list)


class Trainer:
    """One trial of one network: build it, then train and evaluate it epoch by epoch."""

    def __init__(
        self,
        settings: TrialSettings,
        data_root: str | Path | None = None,
        engine: str = "fast",
        eval_chunk: int = 50,
        data: DataSet | None = None,
        layout: str = "auto",
        threads: int = 1,
        cuda_graphs: bool = True,
        step_kernel: str = "cublas",
        update: str = "auto",
    ) -> None:
        self.settings = settings
        self.threads = max(1, threads)
        self.device = resolve_device(settings.device)
        self.stream = np.random.RandomState(settings.seed)
        torch.manual_seed(settings.seed)
        if data is None:
            data = load_dataset(settings, self.stream, data_root, self.device)
        self.data: DataSet = data
        self.topology: Topology = build_topology(settings, np.random.RandomState(settings.seed))
        self.net = Network.from_topology(self.topology, self.device)
        inner = make_engine(
            engine, self.net, settings.epsilon, layout, self.threads, cuda_graphs, step_kernel
        )
        self.sor = (
            SorParameters(settings.epsilon, settings.settle_tol, settings.settle_max_steps)
            if settings.settle == "sor"
            else None
        )
        self.engine: Minimiser = make_settler(inner, self.net, settings.settle, self.sor)
        self.step_kernel = str(getattr(inner, "step_kernel", "cublas"))
        self.train_work = WorkTally()
        self.eval_chunk = max(1, eval_chunk)
        hidden = self.net.n_neurons - self.net.n_inputs
        size = settings.batch_size
        zeros = dict(dtype=torch.float32, device=self.device)
        self.train_particles = torch.zeros(len(self.data.train), size, hidden, **zeros)
        self.test_particles = torch.zeros(len(self.data.test), size, hidden, **zeros)
        self.beta = float(settings.beta)
        self.epoch = 0
        self.history = History()
        n_in = self.net.n_inputs
        self.mean_abs_dw = torch.zeros(self.net.n_neurons, hidden, **zeros)
        self._mask_columns = self.net.mask[:, n_in:].contiguous()
        self._pair_columns = []
        for k in range(self.net.n_pairs):
            rows, cols = self.net.pair_block(k)
            self._pair_columns.append((rows, slice(cols.start - n_in, cols.stop - n_in)))
        self._pair_counts = [
            float(self.net.mask[self.net.pair_block(k)].sum()) for k in range(self.net.n_pairs)
        ]
        self._factor = None
        self._bias_factor = None
        # |dW| summed over the current epoch's batches (N x H), reset by train_epoch
        self.epoch_abs = torch.zeros_like(self.mean_abs_dw)
        # Set by eqp.training.ensemble when this trial is trained stacked with others: a checkpoint
        # of a stacked run resumes only a stacked run of the same size (the last bits differ).
        self.ensemble: dict[str, Any] | None = None
        if settings.per_layer_rates:
            factor = self.net.pair_learning_rate_matrix(settings.pair_learning_rates)
            self._factor = factor[:, n_in:].contiguous()
            if settings.correct_bias_quirk:
                self._bias_factor = self._layer_bias_factor(settings.pair_learning_rates)
        self._inner = inner
        self._compiled: c_kernel.FusedUpdate | None = None
        self.set_update(update)

    def set_update(self, update: str) -> None:
        """Choose the weight update ("auto" or "torch", see UPDATES); ``update`` then says
        which one runs ("native" or "torch"). Both give the same bits."""
        if update not in UPDATES:
            raise ValueError(f"unknown update {update!r}; use one of {', '.join(UPDATES)}")
        if update == "torch":
            self._native = None
        elif self._compiled is None:
            self._compiled = self._native = self._native_update(update, self._inner)
        else:
            self._native = self._compiled
        self.update = "native" if self._native is not None else "torch"

    def _native_update(self, update: str, inner: Minimiser) -> c_kernel.FusedUpdate | None:
        """The compiled update where it gives the torch path's bits (fused CPU layout, float32,
        AVX2+FMA and torch's product measured to round the same), else None."""
        fused = getattr(inner, "fused", None)
        net = self.net
        if update == "torch" or fused is None or net.weights.dtype != torch.float32:
            return None
        k = 2 * self.settings.batch_size
        if not c_kernel.update_matches_torch(net.n_neurons, k, net.n_inputs):
            return None
        # d is kept (for the per-layer rates' norms) in an N x H buffer laid out like the
        # torch path's dW, so that torch reduces the very same strided blocks
        self._record = torch.zeros_like(self.mean_abs_dw)
        pairs = [(k, k + 1) for k in range(net.n_pairs)]
        return c_kernel.FusedUpdate(net.mask, net.offsets, self.settings.batch_size, fused, pairs)

    def _layer_bias_factor(self, rates: tuple[float, ...]) -> torch.Tensor:
        """Bias of layer k+1 scaled by the rate of pair k (the fix of spec quirk 3)."""
        factor = torch.ones(self.net.n_neurons, dtype=torch.float32, device=self.device)
        offsets = self.net.offsets
        for k, rate in enumerate(rates):
            factor[offsets[k + 1] : offsets[k + 2]] = rate
        return factor

    # -- one batch -------------------------------------------------------------------------

    def _outputs(self, state: torch.Tensor) -> torch.Tensor:
        return state[:, self.net.output_slice]

    def _score(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Correct count (classification, first maximal index) or the batch's mean cost."""
        if self.data.classification:
            return (outputs.argmax(1) == targets.argmax(1)).sum()
        return (0.5 * ((targets - outputs) ** 2).sum(1)).mean()

    def _update(
        self, x: torch.Tensor, free: torch.Tensor, nudged: torch.Tensor, beta: float
    ) -> torch.Tensor:
        """Apply the EqProp update, add |dW| to ``epoch_abs`` (the compiled path: its upper
        triangle, see ``_mirror_hidden``); return the per-layer rates.

        dW is symmetric and zero between inputs, so only its columns of non-input neurons
        (N x H) are computed. The torch path forms them as one matrix product and mirrors the
        input rows afterwards; the compiled path (``c_kernel.FusedUpdate``) computes each
        connection once with the same float32 operations, on the kernel's threads.
        """
        n_in = self.net.n_inputs
        inputs = rho(x.to(torch.float32))
        r_free = torch.cat([inputs, free], 1)
        r_nudged = torch.cat([inputs, nudged], 1)
        both = torch.cat([r_nudged, r_free], 0)
        signed = torch.cat([nudged, -free], 0)
        size = x.shape[0]
        d_biases = ((r_nudged - r_free) / beta).mean(0)
        if self._native is not None:
            rate = 0.0 if self._factor is not None else float(self.settings.learning_rate)
            self._native.apply(
                both,
                signed,
                beta,
                rate,
                self._inner.eps,
                self.net.weights,
                self.net.mask,
                self._factor,
                self._record,
                self.epoch_abs,
                self.threads,
            )
            rates = self._pair_rates(self._record)
            self._step_biases(d_biases)
            self._inner.forget_drive()
            return rates
        d_weights = (both.T @ signed).div_(beta).div_(size).mul_(self._mask_columns)
        rates = self._pair_rates(d_weights)
        columns = self.net.weights[:, n_in:]
        if self._factor is None:
            columns += float(self.settings.learning_rate) * d_weights
        else:
            columns += d_weights * self._factor
        self._step_biases(d_biases)
        self.net.weights[n_in:, :n_in] = self.net.weights[:n_in, n_in:].T
        self.engine.refresh()
        self.epoch_abs += d_weights.abs_()
        return rates

    def _mirror_hidden(self, columns: torch.Tensor) -> None:
        """Fill the hidden x hidden lower triangle of an N x H record from its upper one (the
        compiled update sums |dW| there only; dW is symmetric, so these are the same sums)."""
        hidden = columns[self.net.n_inputs :]
        hidden += hidden.triu(1).T

    def _pair_rates(self, d_weights: torch.Tensor) -> torch.Tensor:
        """Per layer pair: the RMS of dW over its connections (norm over the block)."""
        return torch.stack(
            [
                torch.linalg.vector_norm(d_weights[rows, cols]) / math.sqrt(count)
                for (rows, cols), count in zip(self._pair_columns, self._pair_counts, strict=True)
            ]
        )

    def _step_biases(self, d_biases: torch.Tensor) -> None:
        if self._factor is None:
            self.net.biases += float(self.settings.learning_rate) * d_biases
        else:
            self.net.biases += (
                d_biases if self._bias_factor is None else d_biases * self._bias_factor
            )

    def train_batch(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Free phase, score, beta's sign, nudged phase, update: spec section 5 for batch j
        (its |dW| is added to ``epoch_abs``)."""
        s = self.settings
        x, y = self.data.train.x[j], self.data.train.y[j]
        free = self.engine.free(x, self.train_particles[j], s.free_iterations)
        self.train_work.add(self.engine.last_work, self.engine.last_capped)
        self.train_particles[j] = free
        score = self._score(self._outputs(free), y)
        if self.stream.randint(0, 2) == 1:
            self.beta = -self.beta
        nudged = self.engine.nudged(x, free, y, self.beta, s.weakly_clamped_iterations)
        return score, self._update(x, free, nudged, self.beta)

    def train_epoch(
        self, progress: Callable[[int], None] | None = None
    ) -> tuple[float, np.ndarray]:
        """One pass over the training batches in their fixed order (its free-phase work is
        left in ``train_work``)."""
        self.train_work = WorkTally()
        n_batches = len(self.data.train)
        rates = torch.empty(n_batches, self.net.n_pairs, dtype=torch.float32, device=self.device)
        epoch_abs = self.epoch_abs.zero_()
        score = torch.zeros((), dtype=torch.float64, device=self.device)
        for j in range(n_batches):
            batch_score, rates[j] = self.train_batch(j)
            score += batch_score
            if progress is not None:
                progress(1)
        self.epoch += 1
        if self._native is not None:
            self._mirror_hidden(epoch_abs)
        epoch_abs /= n_batches
        self.mean_abs_dw += (epoch_abs - self.mean_abs_dw) / self.epoch
        # this epoch's own mean |dW| (N x H columns): the authors' API's mean_dW
        self.last_epoch_abs_dw = epoch_abs
        if self.data.classification:
            total = n_batches * self.settings.batch_size
            error = (total - int(score.item())) / total
        else:
            error = float(score.item()) / n_batches
        return error, rates.double().cpu().numpy()

    def evaluate(self) -> Evaluation:
        """Test error from a free phase on every test batch; test particles persist too."""
        return self._free_phase_error(self.data.test, self.test_particles, store=True)

    def training_set_error(self) -> Evaluation:
        """Error of a free phase on every training batch at once, with no update and the
        particles left as they were (the authors' ``calculate_training_error``)."""
        return self._free_phase_error(self.data.train, self.train_particles, store=False)

    def _free_phase_error(
        self, batches: Batches, particles: torch.Tensor, store: bool
    ) -> Evaluation:
        s = self.settings
        n_batches = len(batches)
        scores = []
        last_state = None
        work = WorkTally()
        for start in range(0, n_batches, self.eval_chunk):
            stop = min(start + self.eval_chunk, n_batches)
            x = batches.x[start:stop]
            y = batches.y[start:stop]
            rows = x.shape[0] * x.shape[1]
            state = particles[start:stop].reshape(rows, -1)
            if not store:
                state = state.clone()  # in case an engine settles in place
            free = self.engine.free(x.reshape(rows, -1), state, s.free_iterations)
            work.add(self.engine.last_work, self.engine.last_capped)
            if store:
                particles[start:stop] = free.view_as(particles[start:stop])
            outputs = self._outputs(free).view(stop - start, s.batch_size, -1)
            for b in range(stop - start):
                scores.append(self._score(outputs[b], y[b]))
            last_state = torch.cat([x[-1].to(torch.float32), free[-s.batch_size :]], 1)
        total = torch.stack(scores).double().cpu().numpy()
        if self.data.classification:
            error = 1 - int(total.sum()) / (n_batches * s.batch_size)
        else:
            error = float(sum(float(v) for v in total)) / n_batches
        return Evaluation(
            error=error,
            saturated_low=int((last_state == 0).sum()),
            saturated_high=int((last_state == 1).sum()),
            work=work,
        )

    def full_mean_abs_dw(self) -> np.ndarray:
        """The running mean |dW| as a symmetric N x N matrix (kept as its N x H columns)."""
        n_in = self.net.n_inputs
        columns = self.mean_abs_dw.cpu().numpy()
        full = np.zeros((self.net.n_neurons, self.net.n_neurons), dtype=np.float32)
        full[:, n_in:] = columns
        full[n_in:, :n_in] = columns[:n_in].T
        return full

    # -- checkpoints -----------------------------------------------------------------------

    def fingerprint(self) -> str:
        """Identifies what a checkpoint may resume: settings, engine, weight layout and
        evaluation chunking (each changes the last bits, so a resumed run would not equal an
        uninterrupted one). The number of epochs and the trial's name are left out: they
        change no bit of the epochs trained, so a finished run continues to more epochs."""
        settings = self.settings.to_dict()
        for key in _NOT_ARITHMETIC:
            settings.pop(key)
        identity = {
            "settings": settings,
            "engine": self.engine.name,
            "layout": getattr(self.engine, "layout", "full"),
            "settle": self.settle_record(),
            "eval_chunk": self.eval_chunk,
            "format": CHECKPOINT_FORMAT,
        }
        if self.ensemble is not None:
            stack = self.ensemble
            identity["ensemble"] = [
                stack["members"],
                stack["step_kernel"],
                *stack.get("member_epochs", []),
            ]
        elif self.step_kernel != "cublas":
            identity["step_kernel"] = self.step_kernel
        blob = json.dumps(identity, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def settle_record(self) -> dict[str, Any]:
        """How the free phase settled, for summary.json (and checkpoints' fingerprint)."""
        if self.sor is None:
            return {"method": "euler", "steps": self.settings.free_iterations}
        return self.sor.as_dict()

    def save_checkpoint(self, path: Path, with_mask: bool = False) -> None:
        """Everything the next epoch reads (safetensors; metadata as JSON, no pickle).

        ``with_mask`` adds the connection mask, so a kept final state describes the network
        whole on its own (the mask is otherwise rebuilt from the settings' seed).
        """
        key, pos, has_gauss, gauss = self.stream.get_state(legacy=True)[1:]
        meta = {
            "fingerprint": self.fingerprint(),
            "epoch": self.epoch,
            "beta": self.beta,
            "stream": {"pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "rows": self.history.rows,
            # for progress listings and figures of an unfinished run (eqp.outputs.progress)
            "settings": self.settings.to_dict(),
            "learning_rates": list(self.settings.pair_learning_rates),
        }
        tensors = {
            "weights": self.net.weights,
            "biases": self.net.biases,
            "train_particles": self.train_particles,
            "test_particles": self.test_particles,
            "mean_abs_dw": self.mean_abs_dw,
            "stream_key": torch.from_numpy(key.astype(np.int64)),
        }
        if self.history.rates:
            tensors["rates"] = torch.from_numpy(np.stack(self.history.rates))
        if with_mask:
            tensors["mask"] = self.net.mask
        blob = save(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            metadata={"state": json.dumps(meta)},
        )
        records.atomic_write_bytes(path, blob)

    def load_checkpoint(self, path: Path) -> bool:
        """Resume from ``path`` if it belongs to this exact trial; report whether it did."""
        return self.resume_from(path) is None

    def read_checkpoint(self, path: Path) -> tuple[dict, dict[str, torch.Tensor]] | str:
        """A checkpoint's metadata and tensors if it belongs to this exact trial, else why not."""
        if not path.is_file():
            return "it is not a file"
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads(handle.metadata()["state"])
            tensors = load_file(str(path))
            if "stream" not in meta:
                raise KeyError("stream")
            missing = CHECKPOINT_TENSORS - set(tensors)
            if missing:
                raise KeyError(", ".join(sorted(missing)))
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return f"it is corrupt or truncated ({reason})"
        if meta.get("fingerprint") != self.fingerprint():
            return "it was made with other settings, another engine or another weight layout"
        if int(meta["epoch"]) > self.settings.epochs:
            return f"it is after epoch {meta['epoch']}, beyond the {self.settings.epochs} asked"
        if "mask" in tensors and not torch.equal(tensors["mask"], self.net.mask.cpu()):
            return "its connection mask is not the one these settings build"
        return meta, tensors

    def resume_from(self, path: Path) -> str | None:
        """Resume from ``path``; None if it did, else why the checkpoint cannot be used."""
        checkpoint = self.read_checkpoint(path)
        if isinstance(checkpoint, str):
            return checkpoint
        self.restore(*checkpoint)
        return None

    def restore(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint that :meth:`read_checkpoint` accepted."""
        stream = meta["stream"]
        self.net.weights.copy_(tensors["weights"])
        self.net.biases.copy_(tensors["biases"])
        self.train_particles.copy_(tensors["train_particles"])
        self.test_particles.copy_(tensors["test_particles"])
        self.mean_abs_dw.copy_(tensors["mean_abs_dw"])
        key = tensors["stream_key"].numpy().astype(np.uint32)
        self.stream.set_state(("MT19937", key, stream["pos"], stream["has_gauss"], stream["gauss"]))
        self.beta = float(meta["beta"])
        self.epoch = int(meta["epoch"])
        self.history = History(
            rows=list(meta["rows"]),
            rates=list(tensors["rates"].numpy()) if "rates" in tensors else [],
        )
        self.engine.refresh()


def log_spread(rates: np.ndarray) -> float:
    """Population sd of log10 of each pair's mean rate over all batches of all epochs."""
    if rates.size == 0:
        return float("nan")
    means = rates.reshape(-1, rates.shape[-1]).mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.std(np.log10(means)))


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


@dataclass
class TrialOutcome:
    folder: Path
    summary: dict[str, Any]
    resumed_from: int


def run_trial(
    settings: TrialSettings,
    out_dir: str | Path,
    data_root: str | Path | None = None,
    *,
    engine: str = "fast",
    checkpoint: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
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
    _check_writable_places(Path(out_dir), checkpoint_path)
    torch.set_num_threads(1)
    started = time.perf_counter()
    trainer = Trainer(
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
    resumed = 0
    if checkpoint_path is not None and checkpoint_path.exists():
        problem = trainer.resume_from(checkpoint_path)
        if problem is None:
            resumed = trainer.epoch
            log(f"resumed from the checkpoint after epoch {resumed}")
        else:
            log(f"ignored the checkpoint {checkpoint_path}: {problem}; starting over")
    if not trainer.history.rows:
        resumed = _continue_kept_state(trainer, Path(out_dir), log)
    if not trainer.history.rows:
        tick = time.perf_counter()
        record_initial(trainer, trainer.evaluate(), time.perf_counter() - tick, log)
        if checkpoint_path is not None:
            trainer.save_checkpoint(checkpoint_path)
    bar = _progress_bar(progress, settings, len(trainer.data.train), trainer.epoch)
    try:
        while trainer.epoch < settings.epochs:
            tick = time.perf_counter()
            train_error, rates = trainer.train_epoch(bar.update if bar is not None else None)
            evaluation = trainer.evaluate()
            record_epoch(trainer, train_error, rates, evaluation, time.perf_counter() - tick, log)
            if checkpoint_path is not None:
                trainer.save_checkpoint(checkpoint_path)
    finally:
        if bar is not None:
            bar.close()
    summary = finish_trial_folder(
        trainer, Path(out_dir), preset, time.perf_counter() - started, keep_state
    )
    if checkpoint_path is not None:
        checkpoint_path.unlink(missing_ok=True)
    return TrialOutcome(Path(out_dir), summary, resumed)


def state_bytes(trainer: Trainer) -> int:
    """Size of a trial's kept state file: parameters, mask, particles, mean |dW| (float32)."""
    tensors = (
        trainer.net.weights,
        trainer.net.biases,
        trainer.net.mask,
        trainer.train_particles,
        trainer.test_particles,
        trainer.mean_abs_dw,
    )
    return sum(t.numel() * t.element_size() for t in tensors)


def _continue_kept_state(trainer: Trainer, folder: Path, log: Callable[[str], None]) -> int:
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


def record_initial(
    trainer: Trainer, initial: Evaluation, seconds: float, log: Callable[[str], None]
) -> None:
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
    log: Callable[[str], None],
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


def _check_writable_places(out_dir: Path, checkpoint: Path | None) -> None:
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
        "log_spread": log_spread(rates),
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
