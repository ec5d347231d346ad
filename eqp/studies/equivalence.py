"""Is converged settling (settle: sor) equivalent to the faithful Euler phases? Measured.

``python -m eqp equivalence`` runs three studies and prints their tables (Markdown, as in the
README) and writes them with every number behind them to ``OUT/equivalence.json``:

* **small**: the 8 Diabetes/Wine trials of Table 1 x 5 seeds, at published settings, once
  with Euler and once with SOR: final train and test error, mean +- sd per trial and method,
  and whether the SOR mean lies within 2 sd of the Euler one.
* **mnist**: mnist_5layer_swni and mnist_5layer_mlff, one epoch on the full data sets, Euler
  against SOR: test errors, and the SW-against-MLFF gap each method shows.
* **states**: on a sample of MNIST batches (mnist_5layer_swni, cold starts of a first epoch
  and warm starts of a second), how often the SOR fixed point differs from a long Euler run's
  state (more than 1e-3 away, and with another argmax), and from the faithful 1000 steps.

Trial folders go under ``OUT/small`` and ``OUT/mnist`` (a rerun reuses finished ones).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eqp.config.settings import TrialSettings, load_yaml, trials_from_config

SMALL_TRIALS = (
    "diabetes_5layer_mlff",
    "diabetes_5layer_swni",
    "diabetes_8layer_mlff",
    "diabetes_8layer_swni",
    "wine_5layer_mlff",
    "wine_5layer_swni",
    "wine_8layer_mlff",
    "wine_8layer_swni",
)
MNIST_TRIALS = ("mnist_5layer_swni", "mnist_5layer_mlff")
METHODS = ("euler", "sor")
LONG_EULER_STEPS = 20000
FAR = 1e-3


@dataclass(frozen=True)
class Job:
    settings: TrialSettings
    folder: str
    data_root: str | None


def _run(job: Job) -> dict[str, Any]:
    """Train one trial (or reuse its finished folder); return its summary."""
    from eqp.training.run import run_trial

    summary = Path(job.folder) / "summary.json"
    if not summary.is_file():
        run_trial(job.settings, job.folder, job.data_root, log=lambda _: None, threads=1)
    return json.loads(summary.read_text())


def _run_all(jobs: Sequence[Job], workers: int) -> list[dict[str, Any]]:
    if workers <= 1:
        return [_run(job) for job in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_run, jobs))


def _scale(dataset: str) -> float:
    return 1.0 if dataset == "diabetes" else 100.0


def small_study(
    trials: dict[str, TrialSettings], out: Path, seeds: Sequence[int], workers: int
) -> dict[str, Any]:
    jobs = [
        Job(
            trials[name].with_overrides({"seed": seed, "settle": method}),
            str(out / "small" / name / method / f"seed{seed}"),
            None,
        )
        for name in SMALL_TRIALS
        for method in METHODS
        for seed in seeds
    ]
    summaries = _run_all(jobs, workers)
    rows = []
    for name in SMALL_TRIALS:
        row: dict[str, Any] = {"trial": name}
        scale = _scale(trials[name].dataset)
        for method in METHODS:
            found = [
                s for s in summaries if s["trial"] == name and s["settings"]["settle"] == method
            ]
            for split in ("train_error", "test_error"):
                values = [scale * s[split] for s in found]
                row[f"{method}_{split}"] = values
                row[f"{method}_{split}_mean"] = statistics.fmean(values)
                row[f"{method}_{split}_sd"] = statistics.stdev(values)
            row[f"{method}_seconds"] = statistics.fmean(s["seconds"] for s in found)
        for split in ("train_error", "test_error"):
            gap = row[f"sor_{split}_mean"] - row[f"euler_{split}_mean"]
            row[f"{split}_within_2sd"] = abs(gap) <= 2 * row[f"euler_{split}_sd"]
        rows.append(row)
    return {"seeds": list(seeds), "rows": rows}


def mnist_study(
    trials: dict[str, TrialSettings],
    out: Path,
    data_root: str,
    epochs: int,
    workers: int,
    seeds: Sequence[int] = (0,),
) -> dict[str, Any]:
    jobs = [
        Job(
            trials[name].with_overrides({"epochs": epochs, "settle": method, "seed": seed}),
            str(out / "mnist" / name / method / f"seed{seed}"),
            data_root,
        )
        for name in MNIST_TRIALS
        for seed in seeds
        for method in METHODS
    ]
    summaries = _run_all(jobs, workers)
    rows = []
    for job, summary in zip(jobs, summaries, strict=True):
        rows.append(
            {
                "trial": summary["trial"],
                "seed": summary["seed"],
                "settle": job.settings.settle,
                "epochs": summary["epochs_run"],
                "train_error": 100 * summary["train_error"],
                "test_error": 100 * summary["test_error"],
                "seconds": summary["seconds"],
            }
        )
    return {"epochs": epochs, "seeds": list(seeds), "rows": rows}


def states_study(
    trials: dict[str, TrialSettings], data_root: str, batches: int, every: int
) -> dict[str, Any]:
    """Fixed points of SOR against Euler on sampled batches of a first and a second epoch."""
    import torch

    from eqp.training.trainer import Trainer

    torch.set_num_threads(1)
    settings = trials["mnist_5layer_swni"].with_overrides(
        {"settle": "sor", "train_examples": batches * 20, "test_examples": 20}
    )
    trainer = Trainer.build(settings, data_root)
    inner = trainer.engine.inner
    counts = {
        start: {
            "examples": 0,
            "far_long": 0,
            "argmax_long": 0,
            "far_faithful": 0,
            "argmax_faithful": 0,
            "work": [],
        }
        for start in ("cold", "warm")
    }
    for start in ("cold", "warm"):
        for j in range(len(trainer.data.train)):
            if j % every == 0:
                x, state = trainer.data.train.x[j], trainer.train_particles[j].clone()
                settled = trainer.engine.free(x, state, settings.free_iterations)
                long = inner.free(x, state, LONG_EULER_STEPS)
                faithful = inner.free(x, state, settings.free_iterations)
                c = counts[start]
                c["examples"] += len(x)
                c["work"] += trainer.engine.last_work.tolist()
                for label, other in (("long", long), ("faithful", faithful)):
                    far = (settled - other).abs().amax(1) > FAR
                    moved = settled[:, -10:].argmax(1) != other[:, -10:].argmax(1)
                    c[f"far_{label}"] += int(far.sum())
                    c[f"argmax_{label}"] += int((far & moved).sum())
            trainer.train_batch(j)
    for c in counts.values():
        work = c.pop("work")
        c["work_mean"] = statistics.fmean(work)
        c["work_max"] = max(work)
    return {"batches_per_epoch": batches, "sampled_every": every, **counts}


def _pm(mean: float, sd: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    lines = []
    if "small" in report:
        small = report["small"]
        lines += [
            f"Diabetes/Wine, published settings, seeds {small['seeds']} (mean ± sd; errors in "
            "% for wine, mean cost for diabetes):",
            "",
            "| trial | train (euler) | train (sor) | test (euler) | test (sor) | "
            "sor within 2 sd (train / test) | s per trial (euler / sor) |",
            "|---|---:|---:|---:|---:|:---:|---:|",
        ]
        for row in small["rows"]:
            digits = 4 if row["trial"].startswith("diabetes") else 2
            cells = [row["trial"]]
            for split in ("train_error", "test_error"):
                for method in METHODS:
                    cells.append(
                        _pm(row[f"{method}_{split}_mean"], row[f"{method}_{split}_sd"], digits)
                    )
            cells.append(
                " / ".join(
                    "yes" if row[f"{s}_within_2sd"] else "**no**"
                    for s in ("train_error", "test_error")
                )
            )
            cells.append(f"{row['euler_seconds']:.1f} / {row['sor_seconds']:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if "mnist" in report:
        mnist = report["mnist"]
        lines += [
            f"MNIST, full data sets, {mnist['epochs']} epoch(s) (% error):",
            "",
            "| trial | seed | settle | train error | test error | seconds |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for row in mnist["rows"]:
            lines.append(
                f"| {row['trial']} | {row['seed']} | {row['settle']} | {row['train_error']:.2f} | "
                f"{row['test_error']:.2f} | {row['seconds']:.0f} |"
            )
        lines.append("")
    if "states" in report:
        states = report["states"]
        lines += [
            f"Free-phase states, mnist_5layer_swni, every {states['sampled_every']}th of "
            f"{states['batches_per_epoch']} training batches (SOR against Euler from the same "
            f"start; 'far' = more than {FAR:g} apart):",
            "",
            "| start | examples | SOR passes (mean / max) | far from "
            f"{LONG_EULER_STEPS} Euler steps | of which argmax differs | far from the faithful "
            "steps | of which argmax differs |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for start in ("cold", "warm"):
            c = states[start]
            n = c["examples"]

            def share(count: int, n: int = n) -> str:
                return f"{count} ({100 * count / n:.2f}%)"

            lines.append(
                f"| {start} | {n} | {c['work_mean']:.1f} / {c['work_max']} | "
                f"{share(c['far_long'])} | {share(c['argmax_long'])} | "
                f"{share(c['far_faithful'])} | {share(c['argmax_faithful'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def run(
    parts: Sequence[str],
    out: str | Path,
    config: str | Path = "config/paper.yaml",
    data_root: str = "resources/datasets",
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    mnist_epochs: int = 1,
    mnist_seeds: Sequence[int] = (0,),
    workers: int = 2,
    emit: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the chosen studies, write OUT/equivalence.json and print the tables."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trials = trials_from_config(load_yaml(config))
    path = out / "equivalence.json"
    report: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    if "small" in parts:
        report["small"] = small_study(trials, out, seeds, workers)
    if "mnist" in parts:
        report["mnist"] = mnist_study(trials, out, data_root, mnist_epochs, workers, mnist_seeds)
    if "states" in parts:
        report["states"] = states_study(trials, data_root, batches=3000, every=60)
    from eqp.outputs.records import atomic_write_json, json_safe

    atomic_write_json(path, json_safe(report))
    emit(markdown(report))
    return report
