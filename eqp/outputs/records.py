"""Writing and reading a trial folder: the one interface between training and what follows.

Figures and the table read only these files; they never import the trainer. Every file is
written to a temporary name in the same folder and renamed into place, so a killed job leaves
either the previous complete file or none, never a half-written one.

Layout of a trial folder::

    metrics.csv        one row per epoch (epoch 0 = before training)
    layer_rates.npz    rates[epoch-1, batch, pair]: raw per-layer rates; learning_rates[pair]
    mean_dw.npz        final running mean |dW| over the mask (COO: rows, cols, values, shape)
    initial.npz        initial W (float32) and mask (uint8), N x N
    model.safetensors  final W, b and mask
    summary.json       settings, final errors, realised p, log-spread, versions
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

METRICS_FIELDS = (
    "epoch",
    "train_error",
    "test_error",
    "saturated_low",
    "saturated_high",
    "seconds",
)
# The columns of METRICS_FIELDS that count (written and read as integers)
INTEGER_METRICS = frozenset({"epoch", "saturated_low", "saturated_high"})
# Free-phase work per example (Euler steps or SOR passes): mean, max and how many examples
# stopped at the cap, for the epoch's training and test phases. Folders written before these
# columns existed lack them; an empty cell (no training phase at epoch 0) reads as NaN.
WORK_FIELDS = (
    "train_work_mean",
    "train_work_max",
    "train_capped",
    "test_work_mean",
    "test_work_max",
    "test_capped",
)
FILES = (
    "metrics.csv",
    "layer_rates.npz",
    "mean_dw.npz",
    "initial.npz",
    "model.safetensors",
    "summary.json",
)


class RecordError(RuntimeError):
    """A trial folder is missing a file or holds one that cannot be read."""


def _file_mode() -> int:
    """The mode a plain ``open`` would give (mkstemp's 0600 would hide results from others)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporaries a killed :func:`atomic_write_bytes` left in ``folder`` (of the
    file ``name`` only, if given); a rerun of the job calls it before it writes again."""
    removed = []
    for path in Path(folder).glob(f".{name or '*'}.*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


def json_safe(value: Any) -> Any:
    """NaN and infinities become null, so that a JSON file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def atomic_write_npz(path: str | os.PathLike, compress: bool = True, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def metrics_csv_text(rows: Iterable[Mapping[str, float]]) -> str:
    """Render metric rows; floats use repr so that a re-read value is bit-identical."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(METRICS_FIELDS + WORK_FIELDS)
    for row in rows:
        writer.writerow([_format_cell(row.get(name)) for name in METRICS_FIELDS + WORK_FIELDS])
    return out.getvalue()


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(int(value))


def write_metrics(folder: str | os.PathLike, rows: Iterable[Mapping[str, float]]) -> None:
    atomic_write_text(Path(folder) / "metrics.csv", metrics_csv_text(rows))


def _integers(cells: list[str], path: Path, name: str) -> np.ndarray:
    """A count column; "3.0" is read as 3 (snapshots of unfinished runs wrote counts so)."""
    values = np.array(cells, dtype=np.float64)
    if not np.all(np.isfinite(values) & (values == np.round(values))):
        raise RecordError(f"{path}: the column {name} holds values that are not whole numbers")
    return values.astype(np.int64)


def read_metrics(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns of ``metrics.csv`` as arrays (epoch and counts as int64, the rest float64;
    the work columns where present, as float64 with NaN for empty cells)."""
    path = Path(folder) / "metrics.csv"
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError as exc:
        raise RecordError(f"{path} is missing; run the trial that writes it first") from exc
    if not rows or set(METRICS_FIELDS) - set(rows[0]):
        raise RecordError(f"{path} lacks rows or the columns {', '.join(METRICS_FIELDS)}")
    columns = {
        name: _integers([row[name] for row in rows], path, name)
        if name in INTEGER_METRICS
        else np.array([row[name] for row in rows], dtype=np.float64)
        for name in METRICS_FIELDS
    }
    for name in WORK_FIELDS:
        if name in rows[0]:
            columns[name] = np.array([row[name] or "nan" for row in rows], dtype=np.float64)
    return columns


def log_spread(rates: np.ndarray) -> float:
    """Population sd of log10 of each pair's mean rate over all batches of all epochs (the
    paper's log-spread; NaN where a pair has no connections left)."""
    if rates.size == 0:
        return float("nan")
    means = rates.reshape(-1, rates.shape[-1]).mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.std(np.log10(means)))


def sparse_from_dense(matrix: np.ndarray, where: np.ndarray) -> dict[str, np.ndarray]:
    rows, cols = np.nonzero(where)
    return {
        "rows": rows.astype(np.int32),
        "cols": cols.astype(np.int32),
        "values": matrix[rows, cols].astype(np.float32),
        "shape": np.asarray(matrix.shape, dtype=np.int64),
    }


def dense_from_sparse(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    out = np.zeros(tuple(int(n) for n in arrays["shape"]), dtype=np.float32)
    out[arrays["rows"], arrays["cols"]] = arrays["values"]
    return out


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError as exc:
        raise RecordError(f"{path} is missing; run the trial that writes it first") from exc
    except (ValueError, OSError) as exc:
        raise RecordError(f"{path} is not a readable NPZ file ({exc}); rerun its trial") from exc


@dataclass(frozen=True)
class TrialRecord:
    """A finished trial folder, read lazily file by file."""

    folder: Path

    @classmethod
    def open(cls, folder: str | os.PathLike) -> TrialRecord:
        folder = Path(folder)
        if not (folder / "summary.json").is_file():
            raise RecordError(f"{folder} holds no summary.json; it is not a finished trial folder")
        return cls(folder)

    @cached_property
    def summary(self) -> dict[str, Any]:
        """summary.json, read once (a finished folder does not change)."""
        with open(self.folder / "summary.json") as handle:
            return json.load(handle)

    def number(self, key: str) -> float:
        """A numeric summary value; NaN where summary.json stores null (an undefined value,
        e.g. the log-spread when rewiring emptied a layer pair)."""
        value = self.summary.get(key)
        return float("nan") if value is None else float(value)

    @property
    def metrics(self) -> dict[str, np.ndarray]:
        return read_metrics(self.folder)

    @cached_property
    def _rates_file(self) -> dict[str, np.ndarray]:
        return _load_npz(self.folder / "layer_rates.npz")

    @property
    def layer_rates(self) -> np.ndarray:
        """Raw per-layer rates, shape (epochs, batches per epoch, adjacent pairs)."""
        return self._rates_file["rates"]

    @property
    def learning_rates(self) -> np.ndarray:
        """The learning rate applied to each adjacent pair, shape (pairs,)."""
        return self._rates_file["learning_rates"]

    @property
    def mean_dw(self) -> np.ndarray:
        """Final mean |dW| as a dense N x N float32 matrix (zero off the mask)."""
        return dense_from_sparse(_load_npz(self.folder / "mean_dw.npz"))

    @property
    def initial(self) -> dict[str, np.ndarray]:
        return _load_npz(self.folder / "initial.npz")

    @property
    def layer_sizes(self) -> list[int]:
        return list(self.summary["settings"]["layer_sizes"])
