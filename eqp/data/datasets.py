"""The four data sets, cut into batches exactly as the published code cuts them.

The batch order is shuffled once, with the "global" NumPy stream, and then fixed for the whole
run; the data set's contents never move. Diabetes and Wine stay float64 as published (their
nudged outputs are rounded once from float64, spec quirk 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eqp.config.settings import TrialSettings, batch_counts


class DataError(RuntimeError):
    """A data set cannot be read; the message says how to obtain it."""


@dataclass(frozen=True)
class Batches:
    """Stacked batches in their (shuffled, then fixed) visiting order."""

    x: torch.Tensor  # (batches, B, inputs)
    y: torch.Tensor  # (batches, B, outputs)

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass(frozen=True)
class DataSet:
    train: Batches
    test: Batches
    classification: bool


def _shuffled(n: int, rng: np.random.RandomState) -> list[int]:
    order = list(range(n))
    rng.shuffle(order)
    return order


def _one_hot(labels: np.ndarray, classes: int, dtype: type) -> np.ndarray:
    out = np.zeros((len(labels), classes), dtype=dtype)
    out[np.arange(len(labels)), labels] = 1
    return out


def _minmax_columns(values: np.ndarray) -> np.ndarray:
    values = np.array(values, dtype=np.float64)
    values -= values.min(axis=0)
    values /= values.max(axis=0)
    return values


def check_raw_files(dataset: str, root: Path) -> None:
    """The four raw files, md5-checked before anything reads them (once per process).

    A missing file is a DataError (fetch the data set first); a corrupt or truncated one is
    the one-line DatasetError of eqp.sources, naming the file, its md5 and the fix, instead of
    an IndexError deep inside the reading code.
    """
    from eqp.data.sources import FILES, check_files, raw_dir

    folder = raw_dir(dataset, root)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{dataset} is not under {root} ({folder} lacks {', '.join(missing)}); fetch it "
            f"first with `python -m eqp fetch {dataset} --data-dir {root}` or with snakemake"
        )
    check_files(dataset, root)


def _torchvision_split(dataset: str, root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision import datasets

    cls = datasets.MNIST if dataset == "mnist" else datasets.FashionMNIST
    try:
        data = cls(str(root), train=train, download=False)
    except RuntimeError as exc:
        raise DataError(
            f"{dataset} is not under {root} ({exc}); fetch it first with "
            f"`snakemake {root}/...` or eqp.data.sources.ensure_dataset('{dataset}', '{root}')"
        ) from exc
    pixels = data.data.numpy().reshape(len(data.data), -1)
    return pixels, data.targets.numpy()


def _image_batches(
    pixels: np.ndarray, labels: np.ndarray, batches: int, size: int, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    used = batches * size
    x = (torch.from_numpy(pixels[:used]).to(torch.float32) / 255).numpy()
    y = _one_hot(labels[:used], 10, np.float32)
    x = x.reshape(batches, size, -1)
    y = y.reshape(batches, size, -1)
    order = _shuffled(batches, rng)
    return x[order], y[order]


def load_dataset(
    settings: TrialSettings,
    rng: np.random.RandomState,
    data_root: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> DataSet:
    """Batches of ``settings.dataset``, shuffled with ``rng`` (the spec's global stream)."""
    size = settings.batch_size
    n_train, n_test = batch_counts(
        settings.dataset, size, settings.train_examples, settings.test_examples
    )
    if settings.dataset in ("mnist", "fashion_mnist"):
        if data_root is None:
            raise DataError(f"{settings.dataset} needs a data directory (data_root)")
        root = Path(data_root)
        check_raw_files(settings.dataset, root)
        train = _image_batches(
            *_torchvision_split(settings.dataset, root, True), n_train, size, rng
        )
        test = _image_batches(*_torchvision_split(settings.dataset, root, False), n_test, size, rng)
    else:
        from sklearn import datasets

        if settings.dataset == "diabetes":
            bunch = datasets.load_diabetes()
            x = _minmax_columns(bunch.data)
            y = _minmax_columns(bunch.target.reshape(-1, 1))
        else:
            bunch = datasets.load_wine()
            x = _minmax_columns(bunch.data)
            y = _one_hot(bunch.target, 3, np.float64)
        order = _shuffled(len(x), rng)
        x, y = x[order], y[order]
        full_train = batch_counts(settings.dataset, size)[0]
        train = (x[: n_train * size], y[: n_train * size])
        first = full_train * size
        test = (x[first : first + n_test * size], y[first : first + n_test * size])
        train = tuple(a.reshape(n_train, size, -1) for a in train)
        test = tuple(a.reshape(n_test, size, -1) for a in test)

    def to_batches(pair: tuple[np.ndarray, np.ndarray]) -> Batches:
        return Batches(*(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in pair))

    return DataSet(to_batches(train), to_batches(test), settings.classification)


def synthetic_dataset(
    settings: TrialSettings, batches: int, device: str | torch.device = "cpu", seed: int = 0
) -> DataSet:
    """Random inputs in [0, 1] and one-hot targets of the trial's shapes, for benchmarks.

    Timing does not depend on the pixel values, and benchmarks must not need a download.
    """
    generator = torch.Generator().manual_seed(seed)
    n_in, n_out = settings.layer_sizes[0], settings.layer_sizes[-1]
    shape = (batches, settings.batch_size)
    x = torch.rand(*shape, n_in, generator=generator)
    labels = torch.randint(n_out, shape, generator=generator)
    y = torch.nn.functional.one_hot(labels, n_out).to(torch.float32)
    split = Batches(x.to(device), y.to(device))
    return DataSet(split, split, settings.classification)
