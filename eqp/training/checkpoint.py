"""The checkpoint format: what a trial's state file holds, whom it belongs to, how it returns.

A checkpoint after every epoch holds everything the next epoch reads (parameters, persistent
particles, the running mean |dW|, the random stream, beta's sign, the recorded history), so a
killed run resumes to the same numbers an uninterrupted run gives. Its fingerprint names what
changes a bit of those numbers, so a checkpoint resumes only the very trial it was made for.
Files are safetensors with the metadata as JSON (no pickle); existing files must keep loading,
so the format and the fingerprint's inputs change only with ``CHECKPOINT_FORMAT``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save

from eqp.config.settings import TrialSettings
from eqp.engines.minimiser import Minimiser
from eqp.model.network import Network
from eqp.outputs import records

CHECKPOINT_FORMAT = 1
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

Checkpoint = tuple[dict[str, Any], dict[str, torch.Tensor]]


@dataclass
class History:
    """What a trial has recorded so far; the part of a checkpoint that is not tensors."""

    rows: list[dict[str, float]] = field(default_factory=list)
    rates: list[np.ndarray] = field(default_factory=list)


class Trial(Protocol):
    """What a checkpoint reads from and writes back to (a :class:`Trainer`)."""

    settings: TrialSettings
    net: Network
    engine: Minimiser
    stream: np.random.RandomState
    train_particles: torch.Tensor
    test_particles: torch.Tensor
    mean_abs_dw: torch.Tensor
    beta: float
    epoch: int
    history: History
    eval_chunk: int
    step_kernel: str
    ensemble: dict[str, Any] | None

    def settle_record(self) -> dict[str, Any]: ...


def fingerprint(trial: Trial) -> str:
    """Identifies what a checkpoint may resume: settings, engine, weight layout and
    evaluation chunking (each changes the last bits, so a resumed run would not equal an
    uninterrupted one). The number of epochs and the trial's name are left out: they
    change no bit of the epochs trained, so a finished run continues to more epochs."""
    settings = trial.settings.to_dict()
    for key in _NOT_ARITHMETIC:
        settings.pop(key)
    identity: dict[str, Any] = {
        "settings": settings,
        "engine": trial.engine.name,
        "layout": getattr(trial.engine, "layout", "full"),
        "settle": trial.settle_record(),
        "eval_chunk": trial.eval_chunk,
        "format": CHECKPOINT_FORMAT,
    }
    if trial.ensemble is not None:
        stack = trial.ensemble
        identity["ensemble"] = [
            stack["members"],
            stack["step_kernel"],
            *stack.get("member_epochs", []),
        ]
    elif trial.step_kernel != "cublas":
        identity["step_kernel"] = trial.step_kernel
    blob = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_checkpoint(trial: Trial, path: Path, with_mask: bool = False) -> None:
    """Everything the next epoch reads (safetensors; metadata as JSON, no pickle).

    ``with_mask`` adds the connection mask, so a kept final state describes the network
    whole on its own (the mask is otherwise rebuilt from the settings' seed).
    """
    key, pos, has_gauss, gauss = trial.stream.get_state(legacy=True)[1:]
    meta = {
        "fingerprint": fingerprint(trial),
        "epoch": trial.epoch,
        "beta": trial.beta,
        "stream": {"pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "rows": trial.history.rows,
        # for progress listings and figures of an unfinished run (eqp.outputs.progress)
        "settings": trial.settings.to_dict(),
        "learning_rates": list(trial.settings.pair_learning_rates),
    }
    tensors = {
        "weights": trial.net.weights,
        "biases": trial.net.biases,
        "train_particles": trial.train_particles,
        "test_particles": trial.test_particles,
        "mean_abs_dw": trial.mean_abs_dw,
        "stream_key": torch.from_numpy(key.astype(np.int64)),
    }
    if trial.history.rates:
        tensors["rates"] = torch.from_numpy(np.stack(trial.history.rates))
    if with_mask:
        tensors["mask"] = trial.net.mask
    blob = save(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        metadata={"state": json.dumps(meta)},
    )
    records.atomic_write_bytes(path, blob)


def read_checkpoint(trial: Trial, path: Path) -> Checkpoint | str:
    """A checkpoint's metadata and tensors if it belongs to this exact trial, else why not
    (one line)."""
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
    if meta.get("fingerprint") != fingerprint(trial):
        return "it was made with other settings, another engine or another weight layout"
    if int(meta["epoch"]) > trial.settings.epochs:
        return f"it is after epoch {meta['epoch']}, beyond the {trial.settings.epochs} asked"
    if "mask" in tensors and not torch.equal(tensors["mask"], trial.net.mask.cpu()):
        return "its connection mask is not the one these settings build"
    return meta, tensors


def restore_checkpoint(
    trial: Trial, meta: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Load a checkpoint that :func:`read_checkpoint` accepted."""
    stream = meta["stream"]
    trial.net.weights.copy_(tensors["weights"])
    trial.net.biases.copy_(tensors["biases"])
    trial.train_particles.copy_(tensors["train_particles"])
    trial.test_particles.copy_(tensors["test_particles"])
    trial.mean_abs_dw.copy_(tensors["mean_abs_dw"])
    key = tensors["stream_key"].numpy().astype(np.uint32)
    trial.stream.set_state(("MT19937", key, stream["pos"], stream["has_gauss"], stream["gauss"]))
    trial.beta = float(meta["beta"])
    trial.epoch = int(meta["epoch"])
    trial.history = History(
        rows=list(meta["rows"]),
        rates=list(tensors["rates"].numpy()) if "rates" in tensors else [],
    )
    trial.engine.refresh()


def state_bytes(trial: Trial) -> int:
    """Size of a trial's kept state file: parameters, mask, particles, mean |dW| (float32)."""
    tensors = (
        trial.net.weights,
        trial.net.biases,
        trial.net.mask,
        trial.train_particles,
        trial.test_particles,
        trial.mean_abs_dw,
    )
    return sum(t.numel() * t.element_size() for t in tensors)
