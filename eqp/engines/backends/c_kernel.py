"""The fused settling kernels (``eqp/engines/backends/csrc/settle.c``), reached through ctypes.

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

ABI = 5
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


class _UpdatePlan(ctypes.Structure):
    _fields_ = [
        ("n", ctypes.c_int32),
        ("n_in", ctypes.c_int32),
        ("k", ctypes.c_int32),
        ("n_tasks", ctypes.c_int32),
        *[
            (name, ctypes.c_void_p)
            for name in (
                "blk_row",
                "blk_rows",
                "blk_col",
                "blk_cols",
                "blk_pack",
                "blk_pack_t",
                "blk_record",
                "blk_full",
                "task_block",
                "task_row",
                "task_rows",
                "task_cost",
                "crow",
                "ccol",
                "cpack",
                "cpack_t",
            )
        ],
    ]


class _UpdateArgs(ctypes.Structure):
    _fields_ = [
        ("beta", ctypes.c_float),
        ("size", ctypes.c_float),
        ("rate", ctypes.c_float),
        ("eps", ctypes.c_float),
        *[
            (name, ctypes.c_void_p)
            for name in (
                "both",
                "sgn",
                "mask",
                "factor",
                "weights",
                "packed",
                "values",
                "record",
                "abs_sum",
            )
        ],
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
    lib.eqp_update.restype = ctypes.c_int
    lib.eqp_update.argtypes = [
        ctypes.POINTER(_UpdatePlan),
        ctypes.POINTER(_UpdateArgs),
        ctypes.c_int,
    ]
    lib.eqp_update_dots.restype = ctypes.c_int
    lib.eqp_update_dots.argtypes = [*[ctypes.c_void_p] * 3, *[ctypes.c_int] * 3]
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
        self.block_offsets: dict[tuple[int, int], int] = {}
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
                    self.block_offsets[(i, j)] = offset
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


# A layer pair's block is updated as a dense tile grid from this share of connections on (the
# fused kernel's own rule); sparser pairs go to the CSR list.
_DENSE_SHARE = 0.25
_SPARSE_TASK = 256  # CSR entries per task of the update
_GATHER_COST = 3  # a CSR entry's dot product (scattered columns) against a dense tile entry's


def update_available() -> bool:
    """Whether the built kernel has the AVX2+FMA update this CPU can run."""
    lib = _load()[0]
    return lib is not None and instruction_set() == "avx2+fma"


@functools.cache
def update_matches_torch(n: int, k: int, n_in: int) -> bool:
    """Whether the update's dot products equal torch's CPU product bit for bit at this shape.

    The torch path forms dW with MKL; the kernel reproduces its rounding (one FMA chain per
    entry, measured) only where MKL computes it that way, so this checks it on random data of
    the trainer's own shape (every entry of an n x (n - n_in) product, K = k) before the
    kernel may replace it; where it differs the trainer keeps the torch path.
    """
    if not update_available():
        return False
    generator = torch.Generator().manual_seed(k * 7919 + n)
    both = torch.rand(k, n, generator=generator)
    both[both < 0.3] = 0  # exact zeros, as saturated neurons and blank pixels give
    sgn = torch.rand(k, n - n_in, generator=generator)
    sgn[k // 2 :] *= -1
    sgn[sgn.abs() < 0.1] = 0
    expected = both.T @ sgn
    ours = torch.empty_like(expected)
    used = _load()[0].eqp_update_dots(both.data_ptr(), sgn.data_ptr(), ours.data_ptr(), k, n, n_in)
    return used > 0 and torch.equal(ours.view(torch.int32), expected.view(torch.int32))


def _i32(values: torch.Tensor | list[int]) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.int32).contiguous()


def _i64(values: torch.Tensor | list[int]) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.int64).contiguous()


class FusedUpdate:
    """The EqProp weight update on the connections that exist, by the compiled kernel.

    It does what ``WeightUpdate.apply``'s torch path does to every entry of dW, with the same
    float32 operations in the same order (see ``csrc/update.h``), but visits only the
    upper triangle's connections, once each, and writes W, its mirror, the fused kernel's
    packed copies (``steps``, so its refresh need not repack) and the |dW| sums directly.
    ``record`` receives d of the blocks in ``record_blocks`` (the per-layer rates' blocks)
    and of the CSR list; nothing else of it is written.
    """

    def __init__(
        self,
        mask: torch.Tensor,
        offsets: list[int],
        batch: int,
        steps: FusedSteps | None,
        record_blocks: list[tuple[int, int]],
        library: ctypes.CDLL | None = None,
    ) -> None:
        lib, reason = (library, None) if library is not None else _load()
        if lib is None:
            raise RuntimeError(reason)
        self._lib = lib
        self.steps = steps
        n = mask.shape[0]
        n_in = offsets[1]
        upper = torch.triu(mask != 0, diagonal=1)
        covered = torch.zeros_like(upper)
        fused_blocks = steps.block_offsets if steps is not None else {}
        layers = len(offsets) - 1
        blocks: list[tuple[int, int, int, int, int, int, int, int]] = []
        for la in range(layers):
            for lb in range(max(la + 1, 1), layers):
                a, b, c, d = offsets[la], offsets[la + 1], offsets[lb], offsets[lb + 1]
                count = int(upper[a:b, c:d].sum())
                if count == 0 or count < _DENSE_SHARE * (b - a) * (d - c):
                    continue
                pack = pack_t = -1
                if la >= 1 and steps is not None:
                    pair, mirror = (la - 1, lb - 1), (lb - 1, la - 1)
                    if pair not in fused_blocks or mirror not in fused_blocks:
                        continue  # the kernel keeps this pair in its CSR list: so do we
                    pack, pack_t = fused_blocks[pair], fused_blocks[mirror]
                record = int((la, lb) in record_blocks)
                full = int(count == (b - a) * (d - c))
                blocks.append((a, b - a, c, d - c, pack, pack_t, record, full))
                covered[a:b, c:d] = True
        rows, cols, crow = csr_index(upper & ~covered)
        cpack = torch.full((len(rows),), -1, dtype=torch.int64)
        cpack_t = cpack.clone()
        if steps is not None and len(rows):
            position = _packed_positions(steps, n - n_in)
            hidden = rows >= n_in
            hr, hc = rows[hidden] - n_in, cols[hidden] - n_in
            cpack[hidden] = position[hr, hc]
            cpack_t[hidden] = position[hc, hr]
            if bool((cpack[hidden] == -1).any() | (cpack_t[hidden] == -1).any()):
                raise ValueError("a connection is missing from the fused kernel's layout")
        tasks: list[tuple[int, int, int, int]] = []
        for index, (a, r, _c, w, *_) in enumerate(blocks):
            tasks += [
                (index, i, min(4, a + r - i), min(4, a + r - i) * w) for i in range(a, a + r, 4)
            ]
        start, pending = 0, 0
        for i in range(n):
            pending += int(crow[i + 1] - crow[i])
            if pending >= _SPARSE_TASK or (i == n - 1 and pending):
                tasks.append((-1, start, i + 1 - start, _GATHER_COST * pending))
                start, pending = i + 1, 0
            elif not pending:
                start = i + 1
        columns = list(zip(*blocks, strict=True)) if blocks else [[]] * 8
        cost = torch.tensor([0] + [t[3] for t in tasks], dtype=torch.int64).cumsum(0)
        self._keep = [
            _i32(list(columns[0])),
            _i32(list(columns[1])),
            _i32(list(columns[2])),
            _i32(list(columns[3])),
            _i64(list(columns[4])),
            _i64(list(columns[5])),
            _i32(list(columns[6])),
            _i32(list(columns[7])),
            _i32([t[0] for t in tasks]),
            _i32([t[1] for t in tasks]),
            _i32([t[2] for t in tasks]),
            cost.contiguous(),
            _i32(crow),
            _i32(cols),
            cpack,
            cpack_t,
        ]
        self.n, self.n_in, self.k = n, n_in, 2 * batch
        self.connections = int(upper.sum())
        self._plan = _UpdatePlan(
            n, n_in, self.k, len(tasks), *[t.data_ptr() if t.numel() else None for t in self._keep]
        )

    def apply(
        self,
        both: torch.Tensor,
        sgn: torch.Tensor,
        beta: float,
        rate: float,
        eps: float,
        weights: torch.Tensor,
        mask: torch.Tensor,
        factor: torch.Tensor | None,
        record: torch.Tensor,
        abs_sum: torch.Tensor,
        threads: int,
    ) -> int:
        """Update ``weights`` (n x n) in place from ``both`` (k x n) and ``sgn`` (k x h), add
        |dW| to ``abs_sum`` and write the fused kernel's packed copies; the threads used."""
        for tensor in (both, sgn, weights, mask, record, abs_sum, factor):
            if tensor is not None and not (
                tensor.is_contiguous() and tensor.dtype == torch.float32
            ):
                raise ValueError("the update needs contiguous float32 CPU tensors")
        if both.shape != (self.k, self.n) or sgn.shape != (self.k, self.n - self.n_in):
            raise ValueError(f"the update was planned for {self.k} products per entry")
        steps = self.steps
        args = _UpdateArgs(
            beta,
            float(both.shape[0] // 2),
            rate,
            eps,
            both.data_ptr(),
            sgn.data_ptr(),
            mask.data_ptr(),
            None if factor is None else factor.data_ptr(),
            weights.data_ptr(),
            steps.weights.data_ptr() if steps is not None and steps.weights.numel() else None,
            steps.values.data_ptr() if steps is not None and steps.values.numel() else None,
            record.data_ptr(),
            abs_sum.data_ptr(),
        )
        used = self._lib.eqp_update(ctypes.byref(self._plan), ctypes.byref(args), threads)
        if used == -1:
            raise MemoryError("the compiled update could not allocate its scratch buffer")
        if used < 0:
            raise RuntimeError("the compiled update needs AVX2+FMA, which this CPU lacks")
        return used


def _packed_positions(steps: FusedSteps, hidden: int) -> torch.Tensor:
    """Where each hidden x hidden entry lives in the fused kernel's layout: i >= 0 at
    ``values[i]`` (CSR), i <= -2 at ``weights[-(i + 2)]`` (dense blocks), -1 nowhere."""
    position = torch.full((hidden, hidden), -1, dtype=torch.int64)
    for (rows, cols), offset in zip(steps._slices, steps.block_offsets.values(), strict=True):
        height, width = rows.stop - rows.start, cols.stop - cols.start
        block = torch.arange(offset, offset + height * width, dtype=torch.int64)
        position[rows, cols] = -(block.view(height, width) + 2)
    rest_rows, rest_cols = steps._rest
    position[rest_rows, rest_cols] = torch.arange(len(rest_rows), dtype=torch.int64)
    return position
