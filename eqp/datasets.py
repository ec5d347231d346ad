"""The data sets of the authors' Python API, named as in their README: MNIST, FashionMNIST,
Diabetes and Wine.

Pass the class, as the authors' scripts do (``eqp.Network(..., datasets.Wine)``), or an
instance, which can also say where MNIST lives and take a subset of the examples
(``datasets.MNIST(root="resources/datasets", train_examples=1000, test_examples=200)``).
Batching, normalisation and the one-time shuffle are eqp.data's, exactly as the CLI's. This
module imports no torch, like ``import eqp``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar


class Dataset:
    """One of the paper's four data sets, with an optional data folder and example subset."""

    key: ClassVar[str] = ""
    name: ClassVar[str] = ""
    downloaded: ClassVar[bool] = False

    def __init__(
        self,
        root: str | Path | None = None,
        train_examples: int | None = None,
        test_examples: int | None = None,
    ) -> None:
        self.root = None if root is None else Path(root)
        self.train_examples = train_examples
        self.test_examples = test_examples

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in vars(self).items() if v is not None]
        return f"{type(self).__name__}({', '.join(parts)})"


class MNIST(Dataset):
    """MNIST, the canonical 60000/10000 split, md5-checked when read (fetched if absent)."""

    key = "mnist"
    name = "MNIST"
    downloaded = True


class FashionMNIST(Dataset):
    """Fashion-MNIST, the canonical 60000/10000 split, md5-checked when read."""

    key = "fashion_mnist"
    name = "Fashion MNIST"
    downloaded = True


class Diabetes(Dataset):
    """scikit-learn's diabetes data: regression, its error is the mean cost."""

    key = "diabetes"
    name = "Diabetes"


class Wine(Dataset):
    """scikit-learn's wine data: three classes."""

    key = "wine"
    name = "Wine"


DATASETS: dict[str, type[Dataset]] = {cls.key: cls for cls in (MNIST, FashionMNIST, Diabetes, Wine)}
