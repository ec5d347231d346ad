"""One trial's training: epochs, persistent particles, beta's sign, and its recorded quantities.

Streams follow spec section 1: one RandomState(seed) stands for the published global NumPy
stream (batch shuffles, then beta's sign once per batch) and a second one builds the
topology. A :class:`Trainer` is made of the parts :meth:`Trainer.build` makes from the
settings (data, topology, network, engine or settler, weight update); the checkpoint format is
:mod:`eqp.training.checkpoint`, the run of a trial folder :mod:`eqp.training.run`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eqp.config.settings import TrialSettings
from eqp.data.datasets import Batches, DataSet, load_dataset
from eqp.engines.backends.cuda_graphs import precise_float32
from eqp.engines.converged import ConvergedSettler, SorParameters, make_settler
from eqp.engines.minimiser import Minimiser
from eqp.engines.registry import make_engine
from eqp.model.network import Network
from eqp.model.topology import Topology, build_topology
from eqp.training import checkpoint, scoring
from eqp.training.checkpoint import History
from eqp.training.scoring import Evaluation, WorkTally
from eqp.training.update import WeightUpdate, fold_into_mean


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


class Trainer:
    """One trial of one network, trained and evaluated epoch by epoch.

    ``engine`` settles the phases on ``net`` (an Euler engine, or a converged settler around
    one) and ``weight_update`` changes ``net`` after every batch; ``stream`` is the trial's
    global stream, already past the data's shuffles. :meth:`build` makes them all.
    """

    def __init__(
        self,
        settings: TrialSettings,
        *,
        data: DataSet,
        topology: Topology,
        net: Network,
        engine: Minimiser,
        weight_update: WeightUpdate,
        stream: np.random.RandomState,
        device: torch.device,
        eval_chunk: int = 50,
    ) -> None:
        self.settings = settings
        self.data = data
        self.topology = topology
        self.net = net
        self.engine = engine
        self.weight_update = weight_update
        self.stream = stream
        self.device = device
        self.eval_chunk = max(1, eval_chunk)
        self.sor: SorParameters | None = (
            engine.parameters if isinstance(engine, ConvergedSettler) else None
        )
        inner = getattr(engine, "inner", engine)
        self.step_kernel = str(getattr(inner, "step_kernel", "cublas"))
        self.train_work = WorkTally()
        hidden = net.n_neurons - net.n_inputs
        size = settings.batch_size
        zeros = dict(dtype=torch.float32, device=device)
        self.train_particles = torch.zeros(len(data.train), size, hidden, **zeros)
        self.test_particles = torch.zeros(len(data.test), size, hidden, **zeros)
        self.beta = float(settings.beta)
        self.epoch = 0
        self.history = History()
        self.mean_abs_dw = torch.zeros(net.n_neurons, hidden, **zeros)
        # Set by eqp.training.ensemble when this trial is trained stacked with others: a checkpoint
        # of a stacked run resumes only a stacked run of the same size (the last bits differ).
        self.ensemble: dict[str, Any] | None = None

    @classmethod
    def build(
        cls,
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
    ) -> Trainer:
        """The trial ``settings`` describe: its data (``data``, or loaded from ``data_root``),
        topology, network, engine (``engine``, ``layout``, ``threads`` of the fused kernel,
        ``cuda_graphs``, ``step_kernel``), settler and weight update (``update``)."""
        threads = max(1, threads)
        device = resolve_device(settings.device)
        stream = np.random.RandomState(settings.seed)
        torch.manual_seed(settings.seed)
        if data is None:
            data = load_dataset(settings, stream, data_root, device)
        topology = build_topology(settings, np.random.RandomState(settings.seed))
        net = Network.from_topology(topology, device)
        inner = make_engine(
            engine, net, settings.epsilon, layout, threads, cuda_graphs, step_kernel
        )
        sor = (
            SorParameters(settings.epsilon, settings.settle_tol, settings.settle_max_steps)
            if settings.settle == "sor"
            else None
        )
        return cls(
            settings,
            data=data,
            topology=topology,
            net=net,
            engine=make_settler(inner, net, settings.settle, sor),
            weight_update=WeightUpdate(net, inner, settings, threads, update),
            stream=stream,
            device=device,
            eval_chunk=eval_chunk,
        )

    @property
    def update(self) -> str:
        """Which weight update runs: "native" (compiled) or "torch"."""
        return self.weight_update.name

    @property
    def threads(self) -> int:
        """The fused kernel's and the compiled update's thread count."""
        return self.weight_update.threads

    # -- one batch -------------------------------------------------------------------------

    def _outputs(self, state: torch.Tensor) -> torch.Tensor:
        return state[:, self.net.output_slice]

    def train_batch(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Free phase, score, beta's sign, nudged phase, update: spec section 5 for batch j
        (its |dW| is added to the update's ``epoch_abs``)."""
        s = self.settings
        x, y = self.data.train.x[j], self.data.train.y[j]
        free = self.engine.free(x, self.train_particles[j], s.free_iterations)
        self.train_work.add(self.engine.last_work, self.engine.last_capped)
        self.train_particles[j] = free
        score = scoring.score(self._outputs(free), y, self.data.classification)
        if self.stream.randint(0, 2) == 1:
            self.beta = -self.beta
        nudged = self.engine.nudged(x, free, y, self.beta, s.weakly_clamped_iterations)
        return score, self.weight_update.apply(x, free, nudged, self.beta)

    def train_epoch(
        self, progress: Callable[[int], None] | None = None
    ) -> tuple[float, np.ndarray]:
        """One pass over the training batches in their fixed order (its free-phase work is
        left in ``train_work``)."""
        self.train_work = WorkTally()
        n_batches = len(self.data.train)
        rates = torch.empty(n_batches, self.net.n_pairs, dtype=torch.float32, device=self.device)
        self.weight_update.start_epoch()
        score = torch.zeros((), dtype=torch.float64, device=self.device)
        for j in range(n_batches):
            batch_score, rates[j] = self.train_batch(j)
            score += batch_score
            if progress is not None:
                progress(1)
        self.epoch += 1
        epoch_abs = self.weight_update.end_epoch(n_batches)
        fold_into_mean(self.mean_abs_dw, epoch_abs, self.epoch)
        # this epoch's own mean |dW| (N x H columns): the authors' API's mean_dW
        self.last_epoch_abs_dw = epoch_abs
        examples = n_batches * self.settings.batch_size
        error = scoring.error(
            score.item(), examples, n_batches, self.data.classification, training=True
        )
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
                scores.append(scoring.score(outputs[b], y[b], self.data.classification))
            last_state = torch.cat([x[-1].to(torch.float32), free[-s.batch_size :]], 1)
        total = torch.stack(scores).double().cpu().numpy()
        examples = n_batches * s.batch_size
        return Evaluation(
            error=scoring.error(
                total, examples, n_batches, self.data.classification, training=False
            ),
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

    def settle_record(self) -> dict[str, Any]:
        """How the free phase settled, for summary.json (and checkpoints' fingerprint)."""
        if self.sor is None:
            return {"method": "euler", "steps": self.settings.free_iterations}
        return self.sor.as_dict()

    # -- checkpoints (the format is eqp.training.checkpoint's) -----------------------------

    def fingerprint(self) -> str:
        """What a checkpoint of this trial is made for (see checkpoint.fingerprint)."""
        return checkpoint.fingerprint(self)

    def save_checkpoint(self, path: Path, with_mask: bool = False) -> None:
        """Write everything the next epoch reads to ``path`` (``with_mask``: and the mask)."""
        checkpoint.save_checkpoint(self, path, with_mask)

    def read_checkpoint(self, path: Path) -> checkpoint.Checkpoint | str:
        """A checkpoint's metadata and tensors if it belongs to this exact trial, else why not."""
        return checkpoint.read_checkpoint(self, path)

    def restore(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint that :meth:`read_checkpoint` accepted."""
        checkpoint.restore_checkpoint(self, meta, tensors)

    def resume_from(self, path: Path) -> str | None:
        """Resume from ``path``; None if it did, else why the checkpoint cannot be used."""
        read = self.read_checkpoint(path)
        if isinstance(read, str):
            return read
        self.restore(*read)
        return None

    def load_checkpoint(self, path: Path) -> bool:
        """Resume from ``path`` if it belongs to this exact trial; report whether it did."""
        return self.resume_from(path) is None
