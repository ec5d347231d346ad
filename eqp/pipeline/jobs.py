"""The entry points the scripts/ call: train a trial or an ensemble, draw a figure, write
Table 1, each with its log and one clear line for a full disk."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from eqp.config.settings import (
    PipelineError,
    trial_from_dict,
)
from eqp.outputs.records import TrialRecord, remove_temporaries
from eqp.pipeline.plan import FIGURES


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
    Temporaries that an earlier, killed attempt of the job left beside ``writes_to`` (a folder:
    all of its own; a file: that file's) are removed first.
    """
    import errno
    import logging
    import traceback

    for target in writes_to:
        if target is not None:
            place = Path(target)
            if place.is_dir():
                remove_temporaries(place)
            else:
                remove_temporaries(place.parent, place.name)

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


def run_training_job(smk: Any) -> Any:
    """The script of every training rule: one trial, or an ensemble's members in lockstep.

    ``smk`` is Snakemake's ``snakemake`` object; its params are a :class:`Job`'s (members'
    params, folders, checkpoints, data root) and whether the members train stacked.
    """
    params = smk.params
    if params.stacked:
        return train_ensemble(
            params.members,
            params.folders,
            data_root=params.data_root,
            checkpoints=params.checkpoints,
            log_path=smk.log[0],
        )
    return train(
        params.members[0],
        params.folders[0],
        data_root=params.data_root,
        checkpoint=params.checkpoints[0],
        log_path=smk.log[0],
        threads=smk.threads,
        # read from the config, not a param: whether the state is kept changes no result
        keep_state=smk.config.get("keep_state", "auto"),
    )


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

    from eqp.training.run import run_trial

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
    """Train the jobs of :meth:`Plan.ensemble_params` as one ensemble (eqp.training.ensemble).

    Every member's folder is written as :func:`train` writes one (summary.json last). Members
    that cannot be stacked end the job with one line (in the log and via SystemExit).
    """
    import warnings

    if not members or len(out_dirs) != len(members) or len(checkpoints) != len(members):
        raise PipelineError(
            f"an ensemble needs one folder and one checkpoint per member: {len(members)} "
            f"member(s), {len(out_dirs)} folder(s), {len(checkpoints)} checkpoint(s)"
        )
    from eqp.training.ensemble import EnsembleError, run_ensemble

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
    from eqp.outputs import figures

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
    from eqp.outputs.table import build_table1, write_table1

    records = {name: [TrialRecord.open(f) for f in folders] for name, folders in groups.items()}
    write_table1(build_table1(records), csv_path, md_path, tex_path)
