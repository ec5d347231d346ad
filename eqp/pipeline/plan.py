"""What the Snakemake workflow runs: a pipeline config resolved into jobs, paths and resources.

The Snakefile stays declarative; every decision it needs lives here, in plain Python that the
tests import without Snakemake:

* which named trials and seeds exist, and the fully resolved :class:`TrialSettings` of each
  (``trials``/``trials_file``, then ``overrides``, ``dataset_overrides``, ``trial_overrides``,
  then the config-wide ``device``);
* the bypass-p sweep: ``[0] + numpy.logspace(start, stop, num)`` on the settings of the base
  trial, each point a folder ``p{p:.6f}`` (checked unique);
* the settings of one job as a plain dict, handed to the rule as ``params`` so that Snakemake
  reruns exactly the jobs whose settings changed;
* whether the sweep is trained as ensembles (``sweep.ensemble``: one job per seed that trains
  every point in lockstep, :mod:`eqp.training.ensemble`) or one job per point, and which named
  trials are stacked the same way (``trial_ensembles``: one job per group of stackable trials and
  seed);
* the resources of a training job (memory, wall time, a GPU when the device is CUDA);
* the thin entry points that the ``scripts/`` call (train, train an ensemble, draw a figure,
  write Table 1).

Nothing here imports torch or matplotlib at module level: the workflow imports this module
every time it builds its DAG.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eqp.config.settings import (
    DOWNLOADED,
    PipelineError,
    TrialSettings,
    p_label,
    trials_from_config,
    with_seed,
)
from eqp.config.stacking import stack_groups
from eqp.outputs.records import FILES
from eqp.pipeline.resources import (
    estimate_ensemble_resources,
    estimate_resources,
)

TRIAL_FILES = FILES
FIGURES = ("fig2", "fig3", "fig4", "fig5")
# Memory of a figure job (MB): Figure 5 holds two N x N mean |dW| matrices per seed.
FIGURE_MEM_MB = {"fig2": 2000, "fig3": 2000, "fig4": 2000, "fig5": 4000}
# The named trials each figure draws (fig4 draws the sweep instead).
FIGURE_TRIALS = {
    "fig2": ("mnist_3layer_mlff", "mnist_3layer_mlffpl", "mnist_3layer_swni"),
    "fig3": ("mnist_3layer_mlff", "mnist_3layer_mlffpl", "mnist_3layer_swni"),
    "fig5": ("mnist_5layer_mlff", "mnist_5layer_swni"),
}


def dataset_of_folder(folder: str) -> str:
    """``mnist`` for ``MNIST``, ``fashion_mnist`` for ``FashionMNIST`` (torchvision folders)."""
    for name, known in DOWNLOADED.items():
        if known == folder:
            return name
    raise PipelineError(f"no data set is fetched into a folder named {folder!r}")


def sweep_values(sweep: Mapping[str, Any]) -> list[float]:
    """``[0] + logspace(start, stop, num)`` (the zero only with ``include_zero``)."""
    import numpy as np

    spec = sweep.get("logspace") or {}
    try:
        start, stop, num = float(spec["start"]), float(spec["stop"]), int(spec["num"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PipelineError(
            f"sweep.logspace must give numbers start and stop and an integer num, got {spec!r}"
        ) from exc
    values = [float(v) for v in np.logspace(start, stop, num)] if num > 0 else []
    if sweep.get("include_zero", True):
        values = [0.0, *values]
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise PipelineError(
            f"sweep.logspace gives p = {bad[0]:g}, outside [0, 1]; use start, stop <= 0"
        )
    if not values:
        raise PipelineError("the sweep has no points: set sweep.logspace.num >= 1")
    return values


def _sweep_labels(values: Sequence[float]) -> list[str]:
    labels = [p_label(p) for p in values]
    seen: dict[str, float] = {}
    for label, p in zip(labels, values, strict=True):
        if label in seen:
            raise PipelineError(
                f"sweep points p = {seen[label]!r} and p = {p!r} share the folder p{label} "
                "(six decimals); use fewer points (sweep.logspace.num) or a narrower range"
            )
        seen[label] = p
    return labels


@dataclass(frozen=True)
class Job:
    """One training job, resolved once: the trials it trains (one, or an ensemble's
    members), the folders and checkpoints it writes, the data it waits for and the resources
    it asks for. The rules read it; none of them resolves settings again."""

    members: tuple[TrialSettings, ...]
    folders: tuple[str, ...]
    checkpoints: tuple[str, ...]
    params: tuple[dict[str, Any], ...]
    data_inputs: tuple[str, ...]
    data_root: str | None
    resources: Mapping[str, int]

    @property
    def outputs(self) -> list[str]:
        return [f"{folder}/{name}" for folder in self.folders for name in TRIAL_FILES]


@dataclass(frozen=True)
class Plan:
    """Every job of one pipeline config, resolved and validated."""

    preset: str
    data_dir: str
    dataset_source_dir: str | None
    results_dir: str
    seeds: tuple[int, ...]
    device: str
    engine: str
    threads_per_job: int
    eval_chunk: int
    trials: Mapping[str, TrialSettings]
    sweep_base: str
    sweep_epochs: int
    sweep_points: Mapping[str, float]  # label -> p, in sweep order
    sweep_overrides: Mapping[str, Any]
    # One job per seed trains every sweep point as one ensemble (sweep.ensemble, resolved).
    sweep_ensemble: bool = False
    # Named trials trained as one ensemble per seed (trial_ensembles, resolved): group name
    # (its first trial) -> its trials, in config order; only groups of two or more.
    trial_groups: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # The jobs resolved so far, by (kind, name, seed): each is built once, then read.
    _jobs: dict[tuple[str, str, int], Job] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any], base_dir: str | Path = ".") -> Plan:
        """Resolve ``config`` (already schema-checked); raise SettingsError on a bad value."""
        base_dir = Path(base_dir)
        device = str(config.get("device", "cpu"))
        common = {**(config.get("overrides") or {}), "device": device}
        trials = trials_from_config({**config, "overrides": common}, base_dir)

        sweep = dict(config.get("sweep") or {})
        base = sweep.get("base", "mnist_5layer_swni")
        if base not in trials:
            raise PipelineError(
                f"sweep.base names unknown trial '{base}'; known: {', '.join(trials)}"
            )
        if trials[base].network_type == "MLFF":
            raise PipelineError(
                f"sweep.base '{base}' is an MLFF network, which has no rewiring probability to "
                "sweep; choose an SW trial such as mnist_5layer_swni"
            )
        values = sweep_values(sweep)
        labels = _sweep_labels(values)
        seeds = tuple(int(s) for s in config.get("seeds", [0]))
        if not seeds or len(set(seeds)) != len(seeds):
            raise PipelineError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
        plan = cls(
            preset=str(config.get("preset", "findings")),
            data_dir=os.path.normpath(str(config.get("data_dir", "resources/datasets"))),
            dataset_source_dir=config.get("dataset_source_dir") or None,
            results_dir=os.path.normpath(str(config.get("results_dir", "results"))),
            seeds=seeds,
            device=device,
            engine=str(config.get("engine", "fast")),
            threads_per_job=int(config.get("threads_per_job", 1)),
            eval_chunk=int(config.get("eval_chunk", 50)),
            trials=trials,
            sweep_base=base,
            sweep_epochs=int(sweep.get("epochs", trials[base].epochs)),
            sweep_points=dict(zip(labels, values, strict=True)),
            sweep_overrides=dict(sweep.get("overrides") or {}),
        )
        for seed in seeds:  # every job's settings must build; fail now, not mid-run
            for name in trials:
                plan.trial_settings(name, seed)
            for label in labels:
                plan.sweep_settings(label, seed)
        ensemble = plan.resolve_ensemble(sweep.get("ensemble", "auto"))
        groups = plan.resolve_trial_groups(config.get("trial_ensembles", "auto"))
        return dataclasses.replace(plan, sweep_ensemble=ensemble, trial_groups=groups)

    def ensemble_obstacle(self) -> str | None:
        """Why the sweep points cannot be trained as one ensemble; None when they can.

        The points of one seed differ only in bypass_p, so layer sizes, batch size, steps,
        epochs, data and device always agree; what an ensemble cannot do is converged
        settling (it runs the published Euler steps) or the dense reference engine.
        """
        settings = self.sweep_settings(self.sweep_labels[0], self.seeds[0])
        if settings.settle != "euler":
            return (
                f"the sweep points settle with '{settings.settle}' and an ensemble runs Euler "
                "steps only; set sweep.overrides.settle: euler"
            )
        if self.engine != "fast":
            return (
                f"engine is '{self.engine}' (the reference dynamics), which an ensemble does not "
                "use; set engine: fast"
            )
        return None

    def resolve_ensemble(self, choice: Any) -> bool:
        """``sweep.ensemble`` as a yes or no: auto is yes on a CUDA device where possible."""
        if not (isinstance(choice, bool) or choice == "auto"):
            raise PipelineError(f"sweep.ensemble must be auto, true or false, got {choice!r}")
        if choice is False:
            return False
        obstacle = self.ensemble_obstacle()
        if choice == "auto":
            return self.uses_gpu and obstacle is None
        if obstacle is not None:
            raise PipelineError(
                f"sweep.ensemble is true, but {obstacle} (or set sweep.ensemble: auto or false)"
            )
        return True

    def resolve_trial_groups(self, choice: Any) -> dict[str, tuple[str, ...]]:
        """``trial_ensembles`` as groups of named trials: auto stacks on a CUDA device, true
        on any; a trial that stacks with no other (another shape, ``settle: sor``) trains
        alone either way."""
        if not (isinstance(choice, bool) or choice == "auto"):
            raise PipelineError(f"trial_ensembles must be auto, true or false, got {choice!r}")
        if choice is False or (choice == "auto" and not self.uses_gpu):
            return {}
        if self.engine != "fast":
            if choice is True:
                raise PipelineError(
                    f"trial_ensembles is true, but engine is '{self.engine}' (the reference "
                    "dynamics), which an ensemble does not use; set engine: fast (or "
                    "trial_ensembles: auto or false)"
                )
            return {}
        return stack_groups(
            {n: self.trial_settings(n, self.seeds[0]) for n in self.trials},
            key=self.data_root,
        )

    # -- settings -----------------------------------------------------------------------

    def trial_settings(self, trial: str, seed: int) -> TrialSettings:
        if trial not in self.trials:
            raise PipelineError(f"unknown trial '{trial}'; known: {', '.join(self.trials)}")
        return with_seed(self.trials[trial], int(seed))

    def sweep_settings(self, label: str, seed: int) -> TrialSettings:
        """The base trial with bypass_p = p, the sweep's epochs and ``sweep.overrides``."""
        if label not in self.sweep_points:
            raise PipelineError(
                f"p{label} is not a point of the configured sweep; points: "
                + ", ".join(f"p{x}" for x in self.sweep_points)
            )
        base = self.trials[self.sweep_base]
        overrides = {
            **self.sweep_overrides,
            "bypass_p": self.sweep_points[label],
            "epochs": self.sweep_epochs,
            "seed": int(seed),
        }
        return base.with_overrides(overrides)

    def job_params(self, settings: TrialSettings) -> dict[str, Any]:
        """Everything that determines a training job's numbers, as plain data for ``params``."""
        return {
            "name": settings.name,
            "settings": {k: v for k, v in settings.to_dict().items() if k != "name"},
            "engine": self.engine,
            "eval_chunk": self.eval_chunk,
            "preset": self.preset,
        }

    # -- training jobs, each resolved once ------------------------------------------------

    def trial_job(self, trial: str, seed: int | str) -> Job:
        """The job of one named trial and seed (rule train_trial)."""
        return self._job(("trial", trial, int(seed)))

    def sweep_job(self, label: str, seed: int | str) -> Job:
        """The job of one sweep point and seed (rule train_sweep_point)."""
        return self._job(("sweep", label, int(seed)))

    def sweep_ensemble_job(self, seed: int | str) -> Job:
        """Every sweep point of one seed as one ensemble (rule train_sweep_ensemble)."""
        return self._job(("sweep ensemble", "", int(seed)))

    def trial_group_job(self, group: str, seed: int | str) -> Job:
        """The trials of one group and seed as one ensemble (rule train_trial_ensemble_*)."""
        return self._job(("trial group", group, int(seed)))

    def _job(self, key: tuple[str, str, int]) -> Job:
        if key not in self._jobs:
            self._jobs[key] = self._resolve_job(*key)
        return self._jobs[key]

    def _resolve_job(self, kind: str, name: str, seed: int) -> Job:
        if kind == "trial":
            points = [(self.trial_settings(name, seed), self.trial_folder(name, seed))]
        elif kind == "sweep":
            points = [(self.sweep_settings(name, seed), self.sweep_folder(name, seed))]
        elif kind == "sweep ensemble":
            points = [
                (self.sweep_settings(label, seed), self.sweep_folder(label, seed))
                for label in self.sweep_points
            ]
        else:
            points = [
                (self.trial_settings(trial, seed), self.trial_folder(trial, seed))
                for trial in self.trial_groups[name]
            ]
        members = tuple(settings for settings, _ in points)
        if kind in ("trial", "sweep"):
            resources = estimate_resources(members[0], self.eval_chunk, self.threads_per_job)
        else:
            resources = estimate_ensemble_resources(members, self.eval_chunk)
        inputs = [f for settings in members for f in self.data_inputs(settings)]
        return Job(
            members=members,
            folders=tuple(folder for _, folder in points),
            checkpoints=tuple(self.checkpoint_of(folder) for _, folder in points),
            params=tuple(self.job_params(settings) for settings in members),
            data_inputs=tuple(dict.fromkeys(inputs)),
            data_root=self.data_root(members[0]),
            resources={**resources, **self.gpu_resources()},
        )

    # -- names and paths ----------------------------------------------------------------

    @property
    def trial_names(self) -> list[str]:
        return list(self.trials)

    @property
    def sweep_labels(self) -> list[str]:
        return list(self.sweep_points)

    def trial_folder(self, trial: str, seed: int | str) -> str:
        return f"{self.results_dir}/trials/{trial}/seed{seed}"

    def sweep_folder(self, label: str, seed: int | str) -> str:
        return f"{self.results_dir}/sweep/p{label}/seed{seed}"

    def ensemble_outputs(self, group: str | None) -> list[str]:
        """The output patterns (``{seed}`` a wildcard) of an ensemble job: every file of the
        folders of a trial group, or of every sweep point where ``group`` is None."""
        if group is None:
            folders = [self.sweep_folder(label, "{seed}") for label in self.sweep_points]
        else:
            folders = [self.trial_folder(name, "{seed}") for name in self.trial_groups[group]]
        return [f"{folder}/{name}" for folder in folders for name in TRIAL_FILES]

    def checkpoint_of(self, folder: str) -> str:
        """A folder's checkpoint: its mirror under ``results/checkpoints`` (not an output)."""
        relative = os.path.relpath(folder, self.results_dir)
        return f"{self.results_dir}/checkpoints/{relative}.safetensors"

    def trial_checkpoint(self, trial: str, seed: int) -> str:
        return self.checkpoint_of(self.trial_folder(trial, seed))

    def sweep_checkpoint(self, label: str, seed: int) -> str:
        return self.checkpoint_of(self.sweep_folder(label, seed))

    def dataset_marker(self, dataset: str) -> str:
        """The file the fetch rule writes last for a downloaded data set."""
        return f"{self.data_dir}/{DOWNLOADED[dataset]}/raw/checksums.json"

    def data_inputs(self, settings: TrialSettings) -> list[str]:
        """The fetch rule's output a training job waits for; none for scikit-learn data."""
        return [self.dataset_marker(settings.dataset)] if settings.dataset in DOWNLOADED else []

    def data_root(self, settings: TrialSettings) -> str | None:
        return self.data_dir if settings.dataset in DOWNLOADED else None

    def trial_outputs(self, trial: str, seed: int) -> list[str]:
        return [f"{self.trial_folder(trial, seed)}/{f}" for f in TRIAL_FILES]

    def sweep_outputs(self, label: str, seed: int) -> list[str]:
        return [f"{self.sweep_folder(label, seed)}/{f}" for f in TRIAL_FILES]

    @property
    def solo_trials(self) -> list[str]:
        """The named trials that train_trial trains (one job each): those in no group."""
        grouped = {name for names in self.trial_groups.values() for name in names}
        return [name for name in self.trials if name not in grouped]

    def all_trial_outputs(self) -> list[str]:
        return [f for t in self.trials for s in self.seeds for f in self.trial_outputs(t, s)]

    def all_sweep_outputs(self) -> list[str]:
        return [f for p in self.sweep_points for s in self.seeds for f in self.sweep_outputs(p, s)]

    # -- figures and table --------------------------------------------------------------

    def _require(self, names: Sequence[str], what: str) -> None:
        missing = [n for n in names if n not in self.trials]
        if missing:
            raise PipelineError(f"{what} needs trial(s) {', '.join(missing)}, absent from config")

    def figure_groups(self, figure: str) -> dict[str, list[str]]:
        """Label -> seed folders of the trials a figure draws (fig2, fig3, fig5)."""
        names = FIGURE_TRIALS[figure]
        self._require(names, figure)
        return {n: [self.trial_folder(n, s) for s in self.seeds] for n in names}

    def sweep_folders(self) -> list[str]:
        return [self.sweep_folder(p, s) for p in self.sweep_points for s in self.seeds]

    def figure_sources(self, figure: str) -> dict[str, list[str]] | list[str]:
        """What :func:`draw_figure` reads: the sweep folders for fig4, else label -> folders."""
        return self.sweep_folders() if figure == "fig4" else self.figure_groups(figure)

    def fetched_folders(self) -> list[str]:
        """The data folders the fetch rule fills for this config (MNIST, FashionMNIST)."""
        used = {settings.dataset for settings in self.trials.values()}
        return [folder for name, folder in DOWNLOADED.items() if name in used]

    def run_folders(self) -> list[str]:
        """Every trial and sweep folder of the config, in the runs index's source order."""
        trials = [self.trial_folder(t, s) for t in self.trials for s in self.seeds]
        return trials + self.sweep_folders()

    def figure_inputs(self, figure: str) -> list[str]:
        if figure == "fig4":
            return self.all_sweep_outputs()
        return [
            f for n in FIGURE_TRIALS[figure] for s in self.seeds for f in self.trial_outputs(n, s)
        ]

    def table_trials(self) -> list[str]:
        from eqp.outputs.published import load_published

        order = list(load_published()["table1_order"])
        self._require(order, "Table 1")
        return order

    def table_groups(self) -> dict[str, list[str]]:
        return {n: [self.trial_folder(n, s) for s in self.seeds] for n in self.table_trials()}

    def table_inputs(self) -> list[str]:
        return [
            f for n in self.table_trials() for s in self.seeds for f in self.trial_outputs(n, s)
        ]

    # -- resources ----------------------------------------------------------------------

    @property
    def uses_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def gpu_resources(self) -> dict[str, int]:
        """``gpu: 1`` (``sbatch --gpus=1`` under the Slurm plugin) when training on CUDA."""
        return {"gpu": 1} if self.uses_gpu else {}
