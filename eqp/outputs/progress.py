"""Where a long run is: the trials and sweep points that started but have not finished.

A training job leaves two traces before its folder is complete: a checkpoint after every
epoch (``results/checkpoints/<kind>/.../seed<seed>.safetensors``, mirroring the folder it will
write) and, in the pipeline, its log (``logs/<kind>/.../seed<seed>.log``). Both are read
here without torch: the checkpoint's JSON header holds the rows of metrics.csv so far (and,
from checkpoints of this version on, the trial's settings); a log gives the epochs of a job
that has no checkpoint yet. :class:`PartialRecord` presents a checkpoint as a trial record,
so that the figure and table code can draw a run at the epoch it reached.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eqp.outputs.records import INTEGER_METRICS, RecordError, TrialRecord, log_spread

CHECKPOINT_SUFFIX = ".safetensors"
# "epoch 3: train error 0.1, test error 0.2 (41.2 s" as written by eqp.training.run.record_epoch
EPOCH_LINE = re.compile(
    r"epoch (?P<epoch>\d+): (?:train error (?P<train>\S+), )?test error (?P<test>[^\s,(]+)"
    r"(?: \((?P<seconds>[\d.]+) s)?"
)
# the job log's first line, "settings: {... 'epochs': 10, ...}" (eqp.pipeline.train)
SETTINGS_EPOCHS = re.compile(r"^settings: .*'epochs': (\d+)", re.MULTILINE)
PROGRESS_COLUMNS = (
    "folder",
    "kind",
    "name",
    "seed",
    "p",
    "source",
    "epoch",
    "epochs",
    "train_error",
    "test_error",
    "seconds_per_epoch",
    "hours_left",
    "updated_minutes_ago",
)


def read_checkpoint_header(path: str | os.PathLike) -> dict[str, Any]:
    """The state a checkpoint's safetensors header holds (metadata only; no tensor is read)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                raise ValueError(f"header length {length} is implausible")
            header = json.loads(handle.read(length))
        return json.loads(header["__metadata__"]["state"])
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise RecordError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc}); a running job "
            "rewrites it after its next epoch, else delete it"
        ) from exc


def _trained_seconds(rows: Sequence[Mapping[str, Any]]) -> float:
    """Mean wall time of the trained epochs (epoch 0 is the first evaluation only)."""
    seconds = [float(r["seconds"]) for r in rows if int(r["epoch"]) >= 1 and r.get("seconds")]
    return float(np.mean(seconds)) if seconds else float("nan")


@dataclass(frozen=True)
class PartialRecord(TrialRecord):
    """An unfinished trial read from its checkpoint, shaped like a finished folder's record.

    ``folder`` is where the trial will write its folder; ``settings`` (from the pipeline's
    plan) stands in where an older checkpoint does not carry its own.
    """

    checkpoint: Path = Path()
    settings: Mapping[str, Any] | None = None

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        folder: str | os.PathLike,
        settings: Mapping[str, Any] | None = None,
    ) -> PartialRecord:
        record = cls(Path(folder), Path(checkpoint), settings)
        if not record.state.get("rows") or int(record.state.get("epoch", 0)) < 1:
            raise RecordError(f"{checkpoint} holds no trained epoch yet")
        if not record.trial_settings:
            raise RecordError(
                f"{checkpoint} does not say its trial's settings (an older checkpoint); "
                "give the config it was run with"
            )
        return record

    @cached_property
    def state(self) -> dict[str, Any]:
        return read_checkpoint_header(self.checkpoint)

    @cached_property
    def trial_settings(self) -> dict[str, Any]:
        """The checkpoint's own record of its settings, else those it was opened with."""
        return dict(self.state.get("settings") or self.settings or {})

    @cached_property
    def summary(self) -> dict[str, Any]:
        """What summary.json would say of the epochs finished so far (``partial`` is true)."""
        state = self.state
        rows = state["rows"]
        settings = self.trial_settings
        last = rows[-1]
        rates = self.layer_rates if rows[-1]["epoch"] >= 1 else np.zeros((0, 0, 0))
        return {
            "trial": settings.get("name", self.folder.parent.name),
            "seed": settings.get("seed"),
            "preset": state.get("preset"),
            "settings": settings,
            "settle": {"method": settings.get("settle", "euler")},
            "epochs_run": int(state["epoch"]),
            "initial_test_error": rows[0]["test_error"],
            "train_error": last["train_error"],
            "test_error": last["test_error"],
            "log_spread": log_spread(rates),
            "partial": True,
        }

    @property
    def metrics(self) -> dict[str, np.ndarray]:
        """As a finished folder's metrics.csv reads: epoch and counts int64, the rest float64."""
        frame = pd.DataFrame(self.state["rows"])
        return {
            c: frame[c].to_numpy(dtype=np.int64)
            if c in INTEGER_METRICS
            else frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
            for c in frame.columns
        }

    @cached_property
    def _rates_file(self) -> dict[str, np.ndarray]:
        from safetensors import safe_open

        with safe_open(str(self.checkpoint), framework="numpy") as handle:
            names = set(handle.keys())
            rates = handle.get_tensor("rates") if "rates" in names else np.zeros((0, 0, 0))
        learning = self.state.get("learning_rates")
        if learning is None:
            learning = _pair_learning_rates(self.trial_settings)
        return {"rates": np.asarray(rates), "learning_rates": np.asarray(learning, float)}

    @property
    def mean_dw(self) -> np.ndarray:
        raise RecordError(
            f"{self.folder} is not finished: the mean |dW| matrix (Figure 5) is written when "
            "its trial ends"
        )

    @property
    def initial(self) -> dict[str, np.ndarray]:
        raise RecordError(f"{self.folder} is not finished: initial.npz is written when it ends")


def _pair_learning_rates(settings: Mapping[str, Any]) -> list[float]:
    rate = settings["learning_rate"]
    pairs = len(settings["layer_sizes"]) - 1
    return [float(r) for r in rate] if isinstance(rate, list) else [float(rate)] * pairs


def checkpoint_of(folder: str | os.PathLike, results_dir: str | os.PathLike) -> Path:
    """The pipeline's checkpoint path of a folder under ``results_dir`` (its mirror image)."""
    relative = Path(folder).relative_to(results_dir)
    return Path(results_dir, "checkpoints", relative.parent, relative.name + CHECKPOINT_SUFFIX)


def _folder_of(checkpoint: Path, root: Path) -> Path:
    relative = checkpoint.relative_to(root / "checkpoints")
    return root / relative.parent / relative.name.removesuffix(CHECKPOINT_SUFFIX)


def record_so_far(
    folder: str | os.PathLike, results_dir: str | os.PathLike, settings: Mapping | None = None
) -> TrialRecord:
    """The finished folder's record, else its checkpoint's epochs so far."""
    folder = Path(folder)
    if (folder / "summary.json").is_file():
        return TrialRecord.open(folder)
    checkpoint = checkpoint_of(folder, results_dir)
    if not checkpoint.is_file():
        raise RecordError(f"{folder} has neither finished nor written a checkpoint yet")
    return PartialRecord.from_checkpoint(checkpoint, folder, settings)


def _log_epochs(log: Path) -> tuple[list[dict[str, Any]], int | None]:
    """The epochs a job log reports, and the epochs its settings line asks for."""
    text = log.read_text(errors="replace")
    asked = SETTINGS_EPOCHS.search(text)
    rows = []
    for line in text.splitlines():
        match = EPOCH_LINE.search(line)
        if match:
            rows.append(
                {
                    "epoch": int(match["epoch"]),
                    "train_error": float(match["train"]) if match["train"] else math.nan,
                    "test_error": float(match["test"]),
                    "seconds": float(match["seconds"]) if match["seconds"] else math.nan,
                }
            )
    return rows, int(asked[1]) if asked else None


def _identity(relative: Path) -> dict[str, Any]:
    """kind, name, seed and p of a folder path relative to the results (or logs) folder."""
    parts = relative.parts
    seed = int(parts[-1].removeprefix("seed")) if parts[-1].startswith("seed") else None
    if "sweep" in parts:
        label = parts[-2].removeprefix("p")
        return {"kind": "sweep", "name": f"p{label}", "seed": seed, "p": float(label)}
    return {"kind": "trial", "name": parts[-2] if len(parts) > 1 else parts[-1], "seed": seed}


def progress_table(
    results_dir: str | os.PathLike,
    logs_dir: str | os.PathLike | None = None,
    now: float | None = None,
) -> pd.DataFrame:
    """One row per unfinished trial or sweep point that has a checkpoint or a log.

    The row gives the last finished epoch, its errors, the mean seconds of the trained
    epochs and, where the total epochs are known, an estimate of the hours left at that
    pace. ``logs_dir`` defaults to ``logs`` beside ``results_dir`` (the pipeline's layout).
    """
    root = Path(results_dir)
    logs = Path(logs_dir) if logs_dir is not None else root.parent / "logs"
    now = time.time() if now is None else now
    found: dict[Path, dict[str, Any]] = {}
    for checkpoint in sorted((root / "checkpoints").rglob(f"seed*{CHECKPOINT_SUFFIX}")):
        folder = _folder_of(checkpoint, root)
        if (folder / "summary.json").is_file():
            continue
        try:
            state = read_checkpoint_header(checkpoint)
        except RecordError:
            continue  # being rewritten this instant, or broken: the log still says
        epochs = (state.get("settings") or {}).get("epochs")
        found[folder] = {
            "source": "checkpoint",
            "rows": state.get("rows") or [],
            "epochs": epochs,
            "updated": checkpoint.stat().st_mtime,
        }
    if logs.is_dir():
        for log in sorted(logs.rglob("seed*.log")):
            relative = log.relative_to(logs).with_suffix("")
            folder = root / relative
            if (folder / "summary.json").is_file():
                continue
            if not relative.parts or relative.parts[0] not in ("trials", "sweep"):
                continue
            entry = found.setdefault(
                folder, {"source": "log", "rows": [], "epochs": None, "updated": 0.0}
            )
            rows, asked = _log_epochs(log)
            if len(rows) > len(entry["rows"]):
                entry["rows"], entry["source"] = rows, "log"
            if entry["epochs"] is None:
                entry["epochs"] = asked
            entry["updated"] = max(entry["updated"], log.stat().st_mtime)
    table = []
    for folder, entry in sorted(found.items(), key=lambda item: item[0].as_posix()):
        rows = entry["rows"]
        last = rows[-1] if rows else {}
        per_epoch = _trained_seconds(rows)
        epoch = int(last["epoch"]) if rows else None
        left = None
        if entry["epochs"] is not None and epoch is not None and not math.isnan(per_epoch):
            left = max(0, int(entry["epochs"]) - epoch) * per_epoch / 3600
        table.append(
            {
                "folder": folder.relative_to(root).as_posix(),
                **_identity(folder.relative_to(root)),
                "source": entry["source"],
                "epoch": epoch,
                "epochs": entry["epochs"],
                "train_error": last.get("train_error"),
                "test_error": last.get("test_error"),
                "seconds_per_epoch": per_epoch,
                "hours_left": left,
                "updated_minutes_ago": (now - entry["updated"]) / 60,
            }
        )
    frame = pd.DataFrame(table, columns=list(PROGRESS_COLUMNS))
    for column in ("seed", "epoch", "epochs"):
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    for column in ("p", "train_error", "test_error", "seconds_per_epoch", "hours_left"):
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    frame["updated_minutes_ago"] = frame["updated_minutes_ago"].astype(float).round(1)
    return frame
