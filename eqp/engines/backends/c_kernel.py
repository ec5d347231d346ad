"""The fused settling kernels (``eqp/csrc/settle.c``), reached through ctypes.

``eqp_settle`` runs a whole phase of Euler steps in C: for each tile of destination rows it
adds the input drive, the kept fraction of the state, every dense layer-to-layer block and
the sparse skip connections in registers, nudges the outputs and clamps, so a step is one
pass over the weights with no temporaries and no per-step dispatch. ``eqp_converge`` runs the
converged free phase (projected layer-wise SOR, see :mod:`eqp.engines.converged`) on the same packed
weights. Both use several cores where built with OpenMP, with results bitwise independent of
the thread count. The kernels are built at install time as the optional extension
``eqp._settle``; where it is missing (no C compiler, a stale build) :func:`unavailable_reason`
says why and the fast engine uses its TorchScript loop.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util

import torch

ABI = 4
_VECTOR = 8  # floats per vector in the kernel
_STRIP = 24  # widest strip of batch columns the kernel keeps in registers (three vectors)


class _Plan(ctypes.Structure):
    _fields_ = [
        ("hidden", ctypes.c_int32),
        ("width", ctypes.c_int32),
        ("strips", ctypes.c_int32),
        ("n_segments", ctypes.c_int32),
        *[
            (name, ctypes.c_void_p)
            for name in (
                "seg_row",
                "seg_rows",
                "seg_term",
                "seg_terms",
                "term_src",
                "term_width",
                "term_offset",
                "weights",
                "crow",
                "ccol",
                "cval",
            )
        ],
    ]


class _ConvergeArgs(ctypes.Structure):
    _fields_ = [
        ("keep", ctypes.c_float),
        ("inv_eps", ctypes.c_float),
        ("omega", ctypes.c_float),
        ("tol", ctypes.c_float),
        ("warm_tol", ctypes.c_float),
        ("cold_tol", ctypes.c_float),
        ("max_work", ctypes.c_int32),
        ("batch", ctypes.c_int32),
    ]


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    spec = importlib.util.find_spec("eqp._settle")
    if spec is None or spec.origin is None:
        return None, (
            "the compiled kernel eqp._settle is not built (no C compiler at install time?); "
            "reinstall with `pip install -e .` where gcc or clang is available"
        )
    return load_library(spec.origin)


def load_library(path: str) -> tuple[ctypes.CDLL | None, str | None]:
    """The kernel in the shared library at ``path``, or None and why it cannot be used."""
    try:
        lib = ctypes.CDLL(path)
        version = lib.eqp_settle_abi()
    except (OSError, AttributeError) as error:
        return None, f"cannot load {path}: {error}"
    if version != ABI:
        return None, (
            f"{path} is a stale build (ABI {version}, expected {ABI}); "
            "rebuild it with `pip install -e .`"
        )
    lib.eqp_settle.restype = ctypes.c_int
    lib.eqp_settle.argtypes = [
        ctypes.POINTER(_Plan),
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_float,
        ctypes.c_void_p,
        ctypes.c_float,
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.eqp_converge.restype = ctypes.c_int
    lib.eqp_converge.argtypes = [
        ctypes.POINTER(_Plan),
        ctypes.POINTER(_ConvergeArgs),
        *[ctypes.c_void_p] * 5,
        ctypes.c_int,
    ]
    lib.eqp_settle_openmp.restype = ctypes.c_int
    lib.eqp_settle_variant.restype = ctypes.c_char_p
    return lib, None


def unavailable_reason() -> str | None:
    """None when the kernel can be used, otherwise why not (and how to fix it)."""
    return _load()[1]


def multithreaded() -> bool:
    """Whether the built kernel can use several cores (it was compiled with OpenMP)."""
    lib = _load()[0]
    return lib is not None and bool(lib.eqp_settle_openmp())


def instruction_set() -> str | None:
    """The instruction set the built kernel's arithmetic runs with on this CPU ("avx2+fma" or
    "portable"), or None where the kernel is not built."""
    lib = _load()[0]
    return lib.eqp_settle_variant().decode() if lib is not None else None


def csr_index(entries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows, columns and row pointers of the true entries of a boolean matrix, row-major."""
    rows, cols = entries.nonzero().T
    counts = torch.bincount(rows, minlength=entries.shape[0])
    return rows, cols, torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _int32(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


class FusedSteps:
    """Euler phases of one network on the CPU, by the compiled kernel.

    ``bounds`` are the layer boundaries of the hidden+output state and ``blocks`` the
    (destination layer, source layer) pairs computed as dense blocks; every other non-zero
    of ``mask`` goes to a CSR list. The mask is fixed, so the plan is built once and
    :meth:`refresh` only copies in new weight values. ``threads`` is how many cores a call may
    use (the kernel uses fewer where a net is too small to gain from more).
    """

    def __init__(
        self,
        mask: torch.Tensor,
        bounds: list[int],
        blocks: list[tuple[int, int]],
        library: ctypes.CDLL | None = None,
        threads: int = 1,
    ) -> None:
        lib, reason = (library, None) if library is not None else _load()
        if lib is None:
            raise RuntimeError(reason)
        self._lib = lib
        self.threads = threads
        self.hidden = mask.shape[0]
        covered = torch.zeros(mask.shape, dtype=torch.bool)
        seg_row, seg_rows, seg_term, seg_terms = [], [], [], []
        term_src, term_width, term_offset = [], [], []
        self._slices: list[tuple[slice, slice]] = []
        offset = 0
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            seg_row.append(a)
            seg_rows.append(b - a)
            seg_term.append(len(term_src))
            for j, (c, d) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                if (i, j) in blocks:
                    term_src.append(c)
                    term_width.append(d - c)
                    term_offset.append(offset)
                    offset += (b - a) * (d - c)
                    covered[a:b, c:d] = True
                    self._slices.append((slice(a, b), slice(c, d)))
            seg_terms.append(len(term_src) - seg_term[-1])
        rows, cols, crow = csr_index((mask != 0) & ~covered)
        self._rest = (rows, cols)
        self._index = [
            _int32(seg_row),
            _int32(seg_rows),
            _int32(seg_term),
            _int32(seg_terms),
            _int32(term_src),
            _int32(term_width),
            torch.tensor(term_offset, dtype=torch.int64),
            crow.to(torch.int32),
            cols.to(torch.int32).contiguous(),
        ]
        self.weights = torch.zeros(offset, dtype=torch.float32)
        self.values = torch.zeros(len(rows), dtype=torch.float32)
        self.nnz_sparse = len(rows)
        self.n_segments = len(seg_row)

    def refresh(self, scaled: torch.Tensor) -> None:
        """Copy ``eps * W_hh`` (hidden x hidden, CPU float32) into the packed layout."""
        parts = [scaled[rows, cols].reshape(-1) for rows, cols in self._slices]
        if parts:
            torch.cat(parts, out=self.weights)
        rows, cols = self._rest
        torch.index_select(scaled.reshape(-1), 0, rows * self.hidden + cols, out=self.values)

    def _plan(self, width: int, strips: int) -> _Plan:
        index = self._index
        has_sparse = self.nnz_sparse > 0
        return _Plan(
            self.hidden,
            width,
            strips,
            self.n_segments,
            *[t.data_ptr() for t in index[:7]],
            self.weights.data_ptr(),
            index[7].data_ptr() if has_sparse else None,
            index[8].data_ptr() if has_sparse else None,
            self.values.data_ptr() if has_sparse else None,
        )

    def settle(
        self,
        drive: torch.Tensor,
        state: torch.Tensor,
        keep: float,
        steps: int,
        target: torch.Tensor | None,
        pull: float,
        first_output: int,
    ) -> torch.Tensor:
        """``steps`` Euler steps from ``state`` (batch x hidden); returns the new state.

        ``drive`` is transposed (hidden x batch): everything of a step that does not move.
        """
        batch = state.shape[0]
        width, strips = _strip_shape(batch)
        s = _to_strips(state.T, width, strips)
        d = _to_strips(drive, width, strips)
        y = None if target is None else _to_strips(target.T, width, strips)
        plan = self._plan(width, strips)
        scratch = torch.empty_like(s)
        used = self._lib.eqp_settle(
            ctypes.byref(plan),
            steps,
            s.data_ptr(),
            scratch.data_ptr(),
            d.data_ptr(),
            keep,
            None if y is None else y.data_ptr(),
            pull,
            first_output,
            self.threads,
        )
        _check(used)
        return _from_strips(s, self.hidden, batch)

    def converge(
        self,
        drive: torch.Tensor,
        state: torch.Tensor,
        epsilon: float,
        omega: float,
        tol: float,
        warm_tol: float,
        cold_tol: float,
        max_work: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Converged free phase (see eqp.engines.converged): the state, passes per example and
        whether each example stopped at ``max_work`` without converging."""
        batch = state.shape[0]
        width, strips = _strip_shape(batch)
        s = _to_strips(state.T, width, strips)
        d = _to_strips(drive, width, strips)
        plan = self._plan(width, strips)
        scratch = torch.empty_like(s)
        work = torch.zeros(batch, dtype=torch.int32)
        capped = torch.zeros(batch, dtype=torch.int32)
        args = _ConvergeArgs(
            1 - epsilon, 1 / epsilon, omega, tol, warm_tol, cold_tol, max_work, batch
        )
        used = self._lib.eqp_converge(
            ctypes.byref(plan),
            ctypes.byref(args),
            s.data_ptr(),
            scratch.data_ptr(),
            d.data_ptr(),
            work.data_ptr(),
            capped.data_ptr(),
            self.threads,
        )
        _check(used)
        return _from_strips(s, self.hidden, batch), work, capped.bool()


def _check(used: int) -> None:
    if used < 0:
        raise MemoryError("the fused kernel could not allocate its tile plan")


def _strip_shape(batch: int) -> tuple[int, int]:
    """Columns per strip (8, 16 or 24) and the number of strips for ``batch`` columns."""
    width = min(_STRIP, -(-batch // _VECTOR) * _VECTOR)
    return width, -(-batch // width)


def _from_strips(strips: torch.Tensor, hidden: int, batch: int) -> torch.Tensor:
    """The kernel's (strips x rows x width) state back as (batch x rows)."""
    return strips.permute(1, 0, 2).reshape(hidden, -1)[:, :batch].T.contiguous()


def _to_strips(columns: torch.Tensor, width: int, strips: int) -> torch.Tensor:
    """(rows x batch) as (strips x rows x width), zero-padded: the kernel's state layout."""
    rows, batch = columns.shape
    padded = torch.zeros(rows, strips * width, dtype=torch.float32)
    padded[:, :batch] = columns
    return padded.view(rows, strips, width).permute(1, 0, 2).contiguous()
