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
  every point in lockstep, :mod:`eqp.ensemble`) or one job per point, and which named trials
  are stacked the same way (``trial_ensembles``: one job per group of stackable trials and
  seed);
* the resources of a training job (memory, wall time, a GPU when the device is CUDA);
* the thin entry points that the ``scripts/`` call (train, train an ensemble, draw a figure,
  write Table 1).

Nothing here imports torch or matplotlib at module level: the workflow imports this module
every time it builds its DAG.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .records import FILES, TrialRecord
from .settings import (
    SettingsError,
    TrialSettings,
    load_settings_yaml,
    trial_from_dict,
    trials_from_config,
    with_seed,
)
from .stacking import stack_groups

# Data sets fetched into ``data_dir`` (torchvision layout); the others ship with scikit-learn.
DOWNLOADED = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
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
# Ensembles (sweep.ensemble, eqp.ensemble). On a CPU: the members' single-thread estimates
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


class PipelineError(SettingsError):
    """The pipeline config is inconsistent; the message says which key and how to fix it."""


def typed_cli_values(value: Any) -> Any:
    """Values of ``snakemake --config k=v`` with their YAML types back.

    Snakemake parses ``--config seeds=[0,1]`` with YAML's BaseLoader, which keeps every
    nested scalar a string (``['0', '1']``); this turns such strings into the int, float
    (``1e-3`` included), bool or null they spell and leaves every other string alone.
    """
    import yaml

    if isinstance(value, Mapping):
        return {key: typed_cli_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [typed_cli_values(item) for item in value]
    if isinstance(value, str):
        try:
            parsed = load_settings_yaml(value)
        except yaml.YAMLError:
            return value
        if parsed is None or isinstance(parsed, (bool, int, float)):
            return parsed
    return value


def dataset_of_folder(folder: str) -> str:
    """``mnist`` for ``MNIST``, ``fashion_mnist`` for ``FashionMNIST`` (torchvision folders)."""
    for name, known in DOWNLOADED.items():
        if known == folder:
            return name
    raise PipelineError(f"no data set is fetched into a folder named {folder!r}")


def p_label(p: float) -> str:
    """The folder label of a sweep point, as the published code named it (``%0.6f``)."""
    return f"{p:.6f}"


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
            preset=str(config.get("preset", "demo")),
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

    def trial_params(self, trial: str, seed: int) -> dict[str, Any]:
        return self.job_params(self.trial_settings(trial, seed))

    def sweep_params(self, label: str, seed: int) -> dict[str, Any]:
        return self.job_params(self.sweep_settings(label, seed))

    def ensemble_params(self, seed: int) -> list[dict[str, Any]]:
        """The job params of every sweep point of one seed, the members of its ensemble."""
        return [self.sweep_params(label, seed) for label in self.sweep_points]

    def trial_group_params(self, group: str, seed: int | str) -> list[dict[str, Any]]:
        """The job params of the trials of one group (trial_ensembles) and seed."""
        return [self.trial_params(name, int(seed)) for name in self.trial_groups[group]]

    # -- names and paths ----------------------------------------------------------------

    @property
    def trial_names(self) -> list[str]:
        return list(self.trials)

    @property
    def sweep_labels(self) -> list[str]:
        return list(self.sweep_points)

    def trial_folder(self, trial: str, seed: int) -> str:
        return f"{self.results_dir}/trials/{trial}/seed{seed}"

    def sweep_folder(self, label: str, seed: int) -> str:
        return f"{self.results_dir}/sweep/p{label}/seed{seed}"

    def trial_checkpoint(self, trial: str, seed: int) -> str:
        return f"{self.results_dir}/checkpoints/trials/{trial}/seed{seed}.safetensors"

    def sweep_checkpoint(self, label: str, seed: int) -> str:
        return f"{self.results_dir}/checkpoints/sweep/p{label}/seed{seed}.safetensors"

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

    def ensemble_outputs(self, seed: int | str) -> list[str]:
        """Every file of every sweep folder of one seed (``"{seed}"`` gives the pattern)."""
        return [f for p in self.sweep_points for f in self.sweep_outputs(p, seed)]

    def ensemble_folders(self, seed: int) -> list[str]:
        return [self.sweep_folder(p, seed) for p in self.sweep_points]

    def ensemble_checkpoints(self, seed: int) -> list[str]:
        return [self.sweep_checkpoint(p, seed) for p in self.sweep_points]

    @property
    def solo_trials(self) -> list[str]:
        """The named trials that train_trial trains (one job each): those in no group."""
        grouped = {name for names in self.trial_groups.values() for name in names}
        return [name for name in self.trials if name not in grouped]

    def trial_group_outputs(self, group: str, seed: int | str) -> list[str]:
        """Every file of every trial folder of one group (``"{seed}"`` gives the pattern)."""
        return [f for name in self.trial_groups[group] for f in self.trial_outputs(name, seed)]

    def trial_group_folders(self, group: str, seed: int | str) -> list[str]:
        return [self.trial_folder(name, seed) for name in self.trial_groups[group]]

    def trial_group_checkpoints(self, group: str, seed: int | str) -> list[str]:
        return [self.trial_checkpoint(name, seed) for name in self.trial_groups[group]]

    def trial_group_settings(self, group: str, seed: int | str) -> list[TrialSettings]:
        return [self.trial_settings(name, int(seed)) for name in self.trial_groups[group]]

    def trial_group_data_inputs(self, group: str, seed: int | str) -> list[str]:
        """The fetch rule's outputs the group's job waits for (MNIST and Fashion-MNIST, say)."""
        inputs = [f for s in self.trial_group_settings(group, seed) for f in self.data_inputs(s)]
        return list(dict.fromkeys(inputs))

    def trial_group_data_root(self, group: str, seed: int | str) -> str | None:
        return self.data_root(self.trial_group_settings(group, seed)[0])

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
        from .table import load_published

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

    def trial_resources(self, trial: str, seed: int) -> dict[str, int]:
        settings = self.trial_settings(trial, seed)
        return estimate_resources(settings, self.eval_chunk, self.threads_per_job)

    def sweep_resources(self, label: str, seed: int) -> dict[str, int]:
        settings = self.sweep_settings(label, seed)
        return estimate_resources(settings, self.eval_chunk, self.threads_per_job)

    def ensemble_resources(self, seed: int) -> dict[str, int]:
        members = [self.sweep_settings(label, seed) for label in self.sweep_points]
        return estimate_ensemble_resources(members, self.eval_chunk)

    def trial_group_resources(self, group: str, seed: int | str) -> dict[str, int]:
        members = self.trial_group_settings(group, seed)
        return estimate_ensemble_resources(members, self.eval_chunk)


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
    """A generous estimate of the wall time of one ensemble of ``members`` (eqp.ensemble).

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


# -- entry points for scripts/ ----------------------------------------------------------


class DiskFullError(RuntimeError):
    """A write failed for lack of space; the message names where, and to free space."""


def _device_of(path: Path) -> int | None:
    """The filesystem (st_dev) that holds ``path`` or would hold it once created."""
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            return os.stat(candidate).st_dev
    return None


def disk_full_error(exc: OSError, writes_to: Sequence[str | os.PathLike | None]) -> DiskFullError:
    """One line for ENOSPC: the file (or else each filesystem written to) and what to do."""
    paths = [Path(exc.filename)] if exc.filename else [Path(p) for p in writes_to if p]
    by_device: dict[int | None, Path] = {}
    for path in paths:
        by_device.setdefault(_device_of(path), path)
    where = " and ".join(str(p) for p in by_device.values()) or "the outputs"
    return DiskFullError(
        f"no space left on the device holding {where}: free space there, then run again "
        "(a training job resumes after its last finished epoch)"
    )


@contextlib.contextmanager
def logged(
    log_path: str | Path, writes_to: Sequence[str | os.PathLike | None] = ()
) -> Iterator[None]:
    """Send logging, warnings and print output of the block to ``log_path``; log a failure.

    A full disk while writing ``writes_to`` ends the job with one line (in the log and on
    stderr, via SystemExit) instead of a traceback: the fix is the same whatever the stack.
    """
    import errno
    import logging
    import traceback

    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    failure: DiskFullError | None = None
    with open(log_path, "a", buffering=1) as handle:
        handler = logging.StreamHandler(handle)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        previous_level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        try:
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                yield
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                handle.write(traceback.format_exc())
                raise
            failure = disk_full_error(exc, writes_to)
            handle.write(f"error: {failure}\n")
        except BaseException:
            handle.write(traceback.format_exc())
            raise
        finally:
            logging.captureWarnings(False)
            root.removeHandler(handler)
            root.setLevel(previous_level)
    if failure is not None:
        raise SystemExit(f"error: {failure}")


def train(
    params: Mapping[str, Any],
    out_dir: str | Path,
    *,
    data_root: str | None,
    checkpoint: str | Path | None,
    log_path: str | Path,
    threads: int,
    keep_state: bool | str | None = "auto",
) -> Any:
    """Run one training job described by :meth:`Plan.job_params`; progress goes to ``log_path``.

    ``keep_state`` (the config's: auto, True or False) says whether the finished trial keeps
    its final state, which a later job asking for more epochs continues."""
    import warnings

    from .trainer import run_trial

    settings = trial_from_dict(params["name"], params["settings"])
    with logged(log_path, writes_to=(out_dir, checkpoint)), warnings.catch_warnings():
        # torch's notes on its beta sparse tensors, once per job, are noise in a job log
        warnings.filterwarnings("ignore", message=".*[Ss]parse")
        print(f"settings: {settings.to_dict()}")
        return run_trial(
            settings,
            out_dir,
            data_root,
            engine=params.get("engine", "fast"),
            checkpoint=checkpoint,
            progress=False,
            log=print,
            preset=params.get("preset"),
            threads=threads,
            eval_chunk=int(params.get("eval_chunk", 50)),
            keep_state=None if keep_state in (None, "auto") else bool(keep_state),
        )


def train_ensemble(
    members: Sequence[Mapping[str, Any]],
    out_dirs: Sequence[str | Path],
    *,
    data_root: str | None,
    checkpoints: Sequence[str | Path | None],
    log_path: str | Path,
) -> list[Any]:
    """Train the jobs of :meth:`Plan.ensemble_params` as one ensemble (eqp.ensemble).

    Every member's folder is written as :func:`train` writes one (summary.json last). Members
    that cannot be stacked end the job with one line (in the log and via SystemExit).
    """
    import warnings

    if not members or len(out_dirs) != len(members) or len(checkpoints) != len(members):
        raise PipelineError(
            f"an ensemble needs one folder and one checkpoint per member: {len(members)} "
            f"member(s), {len(out_dirs)} folder(s), {len(checkpoints)} checkpoint(s)"
        )
    from .ensemble import EnsembleError, run_ensemble

    settings = [trial_from_dict(job["name"], job["settings"]) for job in members]
    first = members[0]
    failure: EnsembleError | None = None
    with logged(log_path, writes_to=(*out_dirs, *checkpoints)), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse")
        print(f"ensemble of {len(settings)} member(s)")
        for member, folder in zip(settings, out_dirs, strict=True):
            print(f"{folder}: {member.to_dict()}")
        try:
            return run_ensemble(
                settings,
                out_dirs,
                data_root,
                checkpoints=checkpoints,
                log=print,
                preset=first.get("preset"),
                eval_chunk=int(first.get("eval_chunk", 50)),
            )
        except EnsembleError as exc:
            failure = exc
            print(f"error: {exc}")
    raise SystemExit(
        f"error: the members cannot be trained as one ensemble: {failure} "
        "(set sweep.ensemble: false, or trial_ensembles: false, to train one job per folder)"
    )


def draw_figure(
    figure: str,
    inputs: Mapping[str, Sequence[str]] | Sequence[str],
    out: str | Path,
    preset: str | None,
) -> None:
    """Draw fig2/fig3/fig5 from label -> seed folders, or fig4 from the sweep folders."""
    from . import figures

    if figure not in FIGURES:
        raise ValueError(f"unknown figure {figure!r}; known: {', '.join(FIGURES)}")
    getattr(figures, figure)(inputs, out, preset=preset)


def write_table(
    groups: Mapping[str, Sequence[str]],
    csv_path: str | Path,
    md_path: str | Path,
    tex_path: str | Path,
) -> None:
    """Table 1 from trial -> seed folders, in CSV, Markdown and LaTeX."""
    from .table import build_table1, write_table1

    records = {name: [TrialRecord.open(f) for f in folders] for name, folders in groups.items()}
    write_table1(build_table1(records), csv_path, md_path, tex_path)


def schema_error_message(error: Any) -> str:
    """One line for a jsonschema ValidationError: where in the config, and what is wrong."""
    path = ""
    for part in getattr(error, "absolute_path", []):
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    where = path or "top level"
    return f"invalid config at {where}: {getattr(error, 'message', error)}"


# -- the parameter tables of config/README.md, generated from the schema ----------------

DOC_BEGIN = (
    "<!-- parameter tables: generated from workflow/schemas/config.schema.yaml by "
    "`python -m eqp config-doc --write config/README.md`; edit the schema, not this -->"
)
DOC_END = "<!-- end of the generated parameter tables -->"


def load_schema(path: str | Path) -> dict[str, Any]:
    """The pipeline config's JSON schema (YAML)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return load_settings_yaml(handle)
    except FileNotFoundError as exc:
        raise SettingsError(
            f"schema {path} does not exist; run from the repository root or pass --schema"
        ) from exc


def _resolve(node: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """``node`` with a local ``$ref`` replaced by its definition (sibling keywords kept)."""
    while str(node.get("$ref", "")).startswith("#/$defs/"):
        target = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
        node = {**target, **{key: value for key, value in node.items() if key != "$ref"}}
    return node


def _literal(value: Any) -> str:
    import json

    return f"`{value}`" if isinstance(value, str) else f"`{json.dumps(value)}`"


def _kind(node: Mapping[str, Any], schema: Mapping[str, Any]) -> str:
    """What a schema node allows, in words: 'integer >= 1', 'one of `a`, `b`', ..."""
    ref = node.get("$ref", "")
    if ref.endswith(("/settings", "/trial")):
        return "trial settings (table below)"
    node = _resolve(node, schema)
    if "enum" in node:
        return "one of " + ", ".join(_literal(v) for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(_kind(option, schema) for option in node["oneOf"])
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    words = []
    for name in types:
        if name == "array":
            words.append(f"list, each {_kind(node.get('items', {}), schema)}")
        elif name == "object":
            extra = node.get("additionalProperties")
            words.append(
                f"mapping of names to {_kind(extra, schema)}"
                if isinstance(extra, Mapping)
                else "mapping"
            )
        else:
            words.append(name)
    text = " or ".join(words) or "any"
    limits = [
        f"{symbol} {node[key]}"
        for key, symbol in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
        )
        if key in node
    ]
    if "minItems" in node:
        count = node["minItems"]
        limits.append("non-empty" if count == 1 else f"{count} or more entries")
    if "pattern" in node:
        limits.append(f"matching `{node['pattern']}`")
    if node.get("uniqueItems"):
        limits.append("distinct")
    return f"{text} ({', '.join(limits)})" if limits else text


def _rows(
    properties: Mapping[str, Any], required: Sequence[str], prefix: str, schema: Mapping[str, Any]
) -> list[tuple[str, str, str, str]]:
    rows = []
    for key, node in properties.items():
        name = f"{prefix}{key}"
        if "default" in node:
            default = _literal(node["default"])
        else:
            default = "required" if key in required else ""
        description = " ".join(str(node.get("description", "")).split())
        rows.append((f"`{name}`", _kind(node, schema), default, description))
        if "$ref" not in node and "properties" in node:
            rows += _rows(node["properties"], node.get("required", []), f"{name}.", schema)
    return rows


def _table(rows: Sequence[tuple[str, str, str, str]]) -> str:
    lines = ["| key | allowed values | default | description |", "|---|---|---|---|"]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


def config_doc(schema: Mapping[str, Any]) -> str:
    """config/README.md's two parameter tables (pipeline keys, trial settings) as Markdown."""
    settings = schema["$defs"]["settings"]
    trial = schema["$defs"]["trial"]
    pipeline_rows = _rows(schema["properties"], schema.get("required", []), "", schema)
    settings_rows = _rows(settings["properties"], trial.get("required", []), "", schema)
    settings_rows = [
        (key, kind, "required in `trials`" if default == "required" else default, text)
        for key, kind, default, text in settings_rows
    ]
    return (
        "### Pipeline keys\n\n"
        + _table(pipeline_rows)
        + "\n### Trial settings\n\n"
        + " ".join(str(settings.get("description", "")).split())
        + "\n\n"
        + _table(settings_rows)
    )


def generated_section(text: str, source: str | Path = "config/README.md") -> str:
    """The part of ``text`` between the generated section's markers."""
    begin, end = text.find(DOC_BEGIN), text.find(DOC_END)
    if begin < 0 or end < begin:
        raise SettingsError(
            f"{source} lacks the markers of the generated parameter tables; put the lines "
            f"{DOC_BEGIN!r} and {DOC_END!r} where the tables belong"
        )
    return text[begin + len(DOC_BEGIN) : end].strip("\n") + "\n"


def with_generated_section(text: str, tables: str, source: str | Path = "config/README.md") -> str:
    """``text`` with the generated section replaced by ``tables``."""
    generated_section(text, source)  # the markers must be there
    head, _, rest = text.partition(DOC_BEGIN)
    _, _, tail = rest.partition(DOC_END)
    return f"{head}{DOC_BEGIN}\n\n{tables}\n{DOC_END}{tail}"
