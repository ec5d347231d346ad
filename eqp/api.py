"""The authors' Python API (their README, "How to use") on this project's engines.

A script written for the published code runs with only its import line changed
(``from framework import eqp, datasets`` becomes ``import eqp; from eqp import datasets``)::

    network = eqp.Network(topology, hyperparameters, configuration, datasets.Wine)
    network.calculate_test_error()
    for epoch in range(10):
        network.train_epoch()
        network.calculate_test_error()
        print(network.training_error, network.test_error)

The dictionaries take the authors' keys and values; this project's own options (``settle``,
``threads``, ``data dir``, example subsets, ...) are further keys, spelt with spaces or
underscores, or keyword arguments. Everything is validated by eqp.settings, so a bad value
is the CLI's one-line SettingsError. The arithmetic is eqp.trainer.Trainer's: the same
settings give bit for bit what ``python -m eqp train`` gives, when the test error is computed
before training and after every epoch (as the authors' run_trials.py and the CLI do).
:meth:`Network.save` writes a trial folder (the CLI's files plus ``state.safetensors``) and
:meth:`Network.load` continues it exactly, as does ``python -m eqp train --epochs N``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eqp.config.settings import SettingsError, TrialSettings, trial_from_dict
from eqp.datasets import DATASETS, Dataset
from eqp.outputs import records
from eqp.training.checkpoint import STATE_FILE
from eqp.training.run import finish_trial_folder, record_epoch, record_initial
from eqp.training.scoring import Evaluation
from eqp.training.trainer import Trainer

DEFAULT_DATA_ROOT = "resources/datasets"
DEFAULT_NAME = "api"
# Keys that say how to run rather than what to compute: options of Trainer, not settings.
_RUN_OPTIONS = ("data_root", "threads", "engine", "layout", "eval_chunk", "name")
_SPELLINGS = {"data_dir": "data_root", "data_folder": "data_root"}
# The authors' README calls SW_intra 'SW'; their code accepts 'SW_intra'.
_NETWORK_TYPES = {"SW": "SW_intra"}


def _snake(key: Any) -> Any:
    if not isinstance(key, str):
        return key
    key = key.strip().replace(" ", "_").replace("-", "_")
    return _SPELLINGS.get(key, key)


def _dataset_of(dataset: Any) -> Dataset:
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, type) and issubclass(dataset, Dataset) and dataset.key:
        return dataset()
    if isinstance(dataset, str) and dataset.lower() in DATASETS:
        return DATASETS[dataset.lower()]()
    raise SettingsError(
        f"dataset {dataset!r} is not one of eqp.datasets.MNIST, FashionMNIST, Diabetes, Wine "
        "(pass the class, as the authors' scripts do, or an instance)"
    )


def settings_from_dictionaries(
    topology: Mapping[str, Any],
    hyperparameters: Mapping[str, Any],
    configuration: Mapping[str, Any],
    dataset: Any,
    **options: Any,
) -> tuple[TrialSettings, dict[str, Any]]:
    """The authors' three dictionaries (and keyword options) as validated TrialSettings plus
    the run options (data root, threads, engine, layout, eval chunk, name)."""
    merged: dict[str, Any] = {}
    for part, what in (
        (topology, "topology"),
        (hyperparameters, "hyperparameters"),
        (configuration, "configuration"),
    ):
        if not isinstance(part, Mapping):
            raise SettingsError(f"the {what} settings must be a dictionary, got {part!r}")
        merged.update({_snake(k): v for k, v in part.items()})
    merged.update({_snake(k): v for k, v in options.items()})
    data = _dataset_of(dataset)
    run = {key: merged.pop(key) for key in _RUN_OPTIONS if key in merged}
    name = run.get("name", DEFAULT_NAME)
    if not isinstance(name, str) or not name:
        raise SettingsError(f"name = {name!r} is invalid; give a non-empty string")
    if merged.get("network_type") in _NETWORK_TYPES:
        merged["network_type"] = _NETWORK_TYPES[merged["network_type"]]
    if isinstance(merged.get("device"), str):
        merged["device"] = merged["device"].lower()
    if merged.get("network_type") == "MLFF":
        # the authors' dictionaries give None for these with MLFF
        for key in ("bypass_p", "bypass_mag"):
            if merged.get(key) is None:
                merged.pop(key, None)
    merged["dataset"] = data.key
    for key in ("train_examples", "test_examples"):
        if getattr(data, key) is not None:
            merged.setdefault(key, getattr(data, key))
    merged.setdefault("epochs", 0)
    if data.root is not None:
        run.setdefault("data_root", data.root)
    return trial_from_dict(name, merged), run


@dataclass(frozen=True)
class DatasetInfo:
    """What the authors' ``network.dataset`` told about the data (names as theirs)."""

    name: str
    n_in: int
    n_out: int
    n_trainb: int
    n_testb: int
    batch_size: int
    classification: bool


class Network:
    """An equilibrium-propagation network with the authors' API (see the module docstring).

    Attributes after the calls of the authors' README: ``training_error`` (the error counted
    during the last ``train_epoch``, before each batch's update), ``true_training_error``
    (``calculate_training_error``: all training batches at once, particles untouched),
    ``test_error``, ``per_layer_rates`` (a list per batch of the last epoch, one unscaled rate
    per layer pair) and ``mean_dW`` (mean |dW| over the last epoch, N x N). ``trainer`` is
    the eqp.trainer.Trainer underneath.
    """

    def __init__(
        self,
        topology: Mapping[str, Any],
        hyperparameters: Mapping[str, Any],
        configuration: Mapping[str, Any],
        dataset: Any,
        **options: Any,
    ) -> None:
        settings, run = settings_from_dictionaries(
            topology, hyperparameters, configuration, dataset, **options
        )
        self._build(settings, run)

    def _build(self, settings: TrialSettings, run: Mapping[str, Any]) -> None:
        data_root = run.get("data_root")
        if settings.dataset in ("mnist", "fashion_mnist"):
            data_root = Path(data_root or DEFAULT_DATA_ROOT)
            _fetch_if_absent(settings.dataset, data_root)
        # as the CLI: torch on one thread, so results do not depend on the thread count
        torch.set_num_threads(1)
        self.trainer = Trainer.build(
            settings,
            data_root,
            engine=run.get("engine", "fast"),
            eval_chunk=int(run.get("eval_chunk", 50)),
            layout=run.get("layout", "auto"),
            threads=int(run.get("threads", 1)),
        )
        self.data_root = data_root
        self._run = dict(run)
        self._started = time.perf_counter()
        self._pending: tuple[float, np.ndarray, float] | None = None
        self._last_phase = "test"
        self.training_error: float | None = None
        self.true_training_error: float | None = None
        self.test_error: float | None = None
        self.per_layer_rates: list[list[float]] = []
        self.mean_dW: torch.Tensor | None = None

    # -- the authors' methods ------------------------------------------------------------

    def train_epoch(self) -> None:
        """One epoch over the training batches; sets training_error, per_layer_rates, mean_dW."""
        self._flush_pending()
        tick = time.perf_counter()
        error, rates = self.trainer.train_epoch()
        self.trainer.settings = replace(self.trainer.settings, epochs=self.trainer.epoch)
        self.training_error = error
        self.per_layer_rates = rates.tolist()
        self.mean_dW = self._symmetric(self.trainer.last_epoch_abs_dw)
        self._pending = (error, rates, time.perf_counter() - tick)
        self._last_phase = "train"

    def calculate_training_error(self) -> None:
        """Error of the whole training set at once (no update); sets true_training_error."""
        self.true_training_error = self.trainer.training_set_error().error

    def calculate_test_error(self) -> None:
        """Free phase on every test batch (test particles persist); sets test_error.

        Called before training and after every epoch, it also records the history that
        :meth:`save` writes, exactly as ``python -m eqp train`` records it.
        """
        tick = time.perf_counter()
        evaluation = self.trainer.evaluate()
        seconds = time.perf_counter() - tick
        self.test_error = evaluation.error
        self._last_phase = "test"
        history = self.trainer.history
        if not history.rows and self.trainer.epoch == 0:
            record_initial(self.trainer, evaluation, seconds, _quiet)
        elif self._pending is not None:
            self._ensure_initial_row()
            error, rates, train_seconds = self._pending
            self._pending = None
            record_epoch(self.trainer, error, rates, evaluation, train_seconds + seconds, _quiet)

    # -- beyond the authors' API ---------------------------------------------------------

    def train(self, epochs: int) -> list[dict[str, Any]]:
        """Train up to ``epochs`` epochs in all, as ``python -m eqp train`` does (test error
        before training and after each epoch); return the history's rows."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise SettingsError(f"epochs = {epochs!r} is invalid; it must be an integer >= 0")
        if not self.trainer.history.rows and self.trainer.epoch == 0:
            self.calculate_test_error()
        while self.trainer.epoch < epochs:
            self.train_epoch()
            self.calculate_test_error()
        return self.history

    def save(self, folder: str | Path, preset: str | None = None) -> Path:
        """Write a trial folder (the CLI's files and state.safetensors) that :meth:`load` and
        ``python -m eqp train --epochs N --out FOLDER`` continue exactly."""
        self._flush_pending()
        self._ensure_initial_row()
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise records.RecordError(f"{folder} is an existing file; give a folder path")
        self.trainer.settings = replace(self.trainer.settings, epochs=self.trainer.epoch)
        finish_trial_folder(
            self.trainer, folder, preset, time.perf_counter() - self._started, keep_state=True
        )
        return folder

    @classmethod
    def load(cls, path: str | Path, **options: Any) -> Network:
        """A network continued from a saved folder (or its state.safetensors): weights,
        biases, particles, random stream, beta's sign, epoch and history as they were.
        Options are the run options of the constructor (data_root, threads, ...)."""
        path = Path(path)
        state = path / STATE_FILE if path.is_dir() else path
        if not state.is_file():
            raise records.RecordError(
                f"{state} does not exist: save a network with Network.save(folder), or train a "
                "trial with python -m eqp train (its state is kept unless --no-keep-state)"
            )
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(state), framework="pt") as handle:
                meta = json.loads(handle.metadata()["state"])
            stored = dict(meta["settings"])
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise records.RecordError(f"{state} is not a saved network ({reason})") from None
        run = {_snake(k): v for k, v in options.items()}
        unknown = sorted(set(run) - set(_RUN_OPTIONS))
        if unknown:
            raise SettingsError(
                f"Network.load takes only run options ({', '.join(_RUN_OPTIONS)}), not "
                f"{', '.join(unknown)}: the settings are the saved network's"
            )
        name = stored.pop("name")
        run.setdefault("name", name)
        network = cls.__new__(cls)
        network._build(trial_from_dict(name, stored), run)
        problem = network.trainer.resume_from(state)
        if problem is not None:
            raise records.RecordError(f"{state} cannot be continued here: {problem}")
        network._restore_attributes()
        return network

    # -- attributes as the authors' code named them ---------------------------------------

    @property
    def settings(self) -> TrialSettings:
        return self.trainer.settings

    @property
    def epoch(self) -> int:
        """Epochs trained so far."""
        return self.trainer.epoch

    @property
    def history(self) -> list[dict[str, Any]]:
        """One row per recorded epoch (epoch 0 = before training), as metrics.csv holds."""
        return list(self.trainer.history.rows)

    @property
    def dataset(self) -> DatasetInfo:
        s = self.settings
        return DatasetInfo(
            name=DATASETS[s.dataset].name,
            n_in=s.layer_sizes[0],
            n_out=s.layer_sizes[-1],
            n_trainb=len(self.trainer.data.train),
            n_testb=len(self.trainer.data.test),
            batch_size=s.batch_size,
            classification=s.classification,
        )

    @property
    def layer_sizes(self) -> list[int]:
        return list(self.settings.layer_sizes)

    @property
    def network_type(self) -> str:
        return self.settings.network_type

    @property
    def bypass_p(self) -> float | None:
        return self.settings.bypass_p

    @property
    def bypass_mag(self) -> float | None:
        return self.settings.bypass_mag

    @property
    def p_actual(self) -> float:
        """The realised fraction of rewired connections."""
        return self.trainer.topology.realised_p

    @property
    def learning_rate(self) -> float | list[float]:
        rate = self.settings.learning_rate
        return list(rate) if isinstance(rate, tuple) else rate

    @property
    def epsilon(self) -> float:
        return self.settings.epsilon

    @property
    def beta(self) -> float:
        """Beta with its current sign (a random walk over the batches)."""
        return self.trainer.beta

    @property
    def free_iterations(self) -> int:
        return self.settings.free_iterations

    @property
    def weakly_clamped_iterations(self) -> int:
        return self.settings.weakly_clamped_iterations

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def device(self) -> str:
        return self.settings.device

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def W(self) -> torch.Tensor:  # noqa: N802 - the authors' name
        """The symmetric N x N weight matrix (read it; train through the methods)."""
        return self.trainer.net.weights

    @property
    def W_mask(self) -> torch.Tensor:  # noqa: N802 - the authors' name
        return self.trainer.net.mask

    @property
    def B(self) -> torch.Tensor:  # noqa: N802 - the authors' name
        return self.trainer.net.biases

    @property
    def s(self) -> torch.Tensor:
        """The free-phase state (B x N) of the last batch of the latest pass over the test
        set (or over the training set, after train_epoch)."""
        split, particles = (
            (self.trainer.data.test, self.trainer.test_particles)
            if self._last_phase == "test"
            else (self.trainer.data.train, self.trainer.train_particles)
        )
        return torch.cat([split.x[-1].to(torch.float32), particles[-1]], 1)

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"eqp.Network({s.dataset}, {'-'.join(map(str, s.layer_sizes))}, {s.network_type}, "
            f"seed {s.seed}, epoch {self.epoch}, settle {s.settle})"
        )

    # -- helpers -------------------------------------------------------------------------

    def _symmetric(self, columns: torch.Tensor) -> torch.Tensor:
        n_in = self.trainer.net.n_inputs
        n = self.trainer.net.n_neurons
        full = torch.zeros(n, n, dtype=columns.dtype, device=columns.device)
        full[:, n_in:] = columns
        full[n_in:, :n_in] = columns[:n_in].T
        return full

    def _flush_pending(self) -> None:
        """An epoch trained but never tested is recorded with a NaN test error."""
        if self._pending is None:
            return
        self._ensure_initial_row()
        error, rates, seconds = self._pending
        self._pending = None
        record_epoch(self.trainer, error, rates, _untested(), seconds, _quiet)

    def _ensure_initial_row(self) -> None:
        if not self.trainer.history.rows:
            record_initial(self.trainer, _untested(), 0.0, _quiet)

    def _restore_attributes(self) -> None:
        rows = self.trainer.history.rows
        if rows:
            self.test_error = rows[-1]["test_error"]
            if self.trainer.epoch:
                self.training_error = rows[-1]["train_error"]
        if self.trainer.history.rates:
            self.per_layer_rates = np.asarray(self.trainer.history.rates[-1]).tolist()


def _untested() -> Evaluation:
    return Evaluation(error=math.nan, saturated_low=0, saturated_high=0)


def _quiet(_: str) -> None:
    pass


def _fetch_if_absent(dataset: str, root: Path) -> None:
    """As the authors' data sets did: download on first use (here verified by md5)."""
    from eqp.data.sources import FILES, ensure_dataset, raw_dir

    if not all((raw_dir(dataset, root) / name).is_file() for name in FILES):
        ensure_dataset(dataset, root)
