"""Masks, rewiring and initial weights, drawn exactly as the published code draws them.

Every draw comes from one ``numpy.random.RandomState(seed)`` in the published order, so a
network built here is bit-identical to the authors'. Their rewiring walk drew one number at a
time over Python lists; here the same stream is read ahead in bulk, the walk jumps from hit to
hit, and the candidate list is an order-statistic tree: identical masks, far faster.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from eqp.config.settings import TrialSettings


@dataclass(frozen=True)
class Topology:
    """A built network: symmetric mask and float32 weights with zero diagonal."""

    layer_sizes: tuple[int, ...]
    mask: np.ndarray
    weights: np.ndarray
    rewired: int
    listed: int

    @property
    def offsets(self) -> np.ndarray:
        return layer_offsets(self.layer_sizes)

    @property
    def realised_p(self) -> float:
        return self.rewired / self.listed if self.listed else 0.0


def layer_offsets(sizes: tuple[int, ...] | list[int]) -> np.ndarray:
    return np.cumsum([0, *sizes])


def adjacent_mask(sizes: tuple[int, ...]) -> np.ndarray:
    """The union of the adjacent-pair blocks ``conn_k`` (every neuron of k to every one of k+1)."""
    offsets = layer_offsets(sizes)
    n = int(offsets[-1])
    mask = np.zeros((n, n), dtype=np.int8)
    for k in range(len(sizes) - 1):
        a, b, c = offsets[k], offsets[k + 1], offsets[k + 2]
        mask[a:b, b:c] = 1
        mask[b:c, a:b] = 1
    return mask


def skip_candidates(sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Every layer-skipping position, in the published list order (rows, cols)."""
    offsets = layer_offsets(sizes)
    n = int(offsets[-1])
    rows, cols = [], []
    for i in range(2, len(sizes)):
        r = np.arange(offsets[i], n)
        c = np.arange(offsets[i - 2], offsets[i - 1])
        rows.append(np.repeat(r, len(c)))
        cols.append(np.tile(c, len(r)))
    return np.concatenate(rows), np.concatenate(cols)


class _AliveList:
    """A list supporting "k-th alive entry", "delete entry" and "append" in O(log n).

    It stands for the published candidate list, where ``del list[k]`` and ``append`` keep
    the order of the survivors; a Fenwick tree over alive flags finds the k-th survivor.
    """

    def __init__(self, initial: int, capacity: int) -> None:
        self.size = capacity
        index = np.arange(1, capacity + 1)
        low = index - (index & -index)
        self.tree = (np.minimum(index, initial) - np.minimum(low, initial)).tolist()
        self.tree.insert(0, 0)
        self.length = initial
        self.top = 1 << (capacity.bit_length())

    def _add(self, slot: int, delta: int) -> None:
        i = slot + 1
        tree, size = self.tree, self.size
        while i <= size:
            tree[i] += delta
            i += i & -i

    def find(self, k: int) -> int:
        """Slot of the k-th (0-based) alive entry."""
        pos, remaining, step = 0, k + 1, self.top
        tree, size = self.tree, self.size
        while step:
            nxt = pos + step
            if nxt <= size and tree[nxt] < remaining:
                pos = nxt
                remaining -= tree[nxt]
            step >>= 1
        return pos

    def delete(self, slot: int) -> None:
        self._add(slot, -1)

    def append(self, slot: int) -> None:
        self._add(slot, 1)


class _WordStream:
    """The RandomState's raw 32-bit outputs, read ahead so the walk can be replayed in bulk.

    ``uniform(0, 1)`` consumes two words (MT19937's 53-bit double) and a legacy bounded
    ``randint`` one word per masked-rejection attempt, so the walk is a pure function of this
    stream; afterwards the RandomState is advanced by exactly the words the walk used.
    """

    def __init__(self, rng: np.random.RandomState, p: float, expected: int) -> None:
        self.bitgen = rng._bit_generator
        self.start = self.bitgen.state
        self.p = p
        self.words = np.empty(0, dtype=np.uint64)
        self._grow(expected)

    def _grow(self, extra: int) -> None:
        self.words = np.concatenate([self.words, self.bitgen.random_raw(extra).astype(np.uint64)])
        a = (self.words[:-1] >> np.uint64(5)).astype(np.float64)
        b = (self.words[1:] >> np.uint64(6)).astype(np.float64)
        doubles = (a * 67108864.0 + b) / 9007199254740992.0
        hits = np.flatnonzero(doubles < self.p)
        self.hits = (hits[hits % 2 == 0].tolist(), hits[hits % 2 == 1].tolist())

    def next_hit(self, ptr: int, limit: int) -> int | None:
        """Word position of the first uniform below p among the next ``limit`` uniforms."""
        while True:
            same_parity = self.hits[ptr & 1]
            index = bisect.bisect_left(same_parity, ptr)
            if index < len(same_parity):
                hit = same_parity[index]
                return hit if (hit - ptr) // 2 < limit else None
            if ptr + 2 * limit < len(self.words):
                return None
            self._grow(len(self.words))

    def word(self, ptr: int) -> int:
        if ptr >= len(self.words):
            self._grow(len(self.words))
        return int(self.words[ptr])

    def commit(self, used: int) -> None:
        self.bitgen.state = self.start
        self.bitgen.random_raw(used)


def _rewire(
    rng: np.random.RandomState,
    mask: np.ndarray,
    connections: tuple[np.ndarray, np.ndarray],
    candidates: tuple[np.ndarray, np.ndarray],
    p: float,
) -> int:
    """Replay the published walk: one uniform per listed connection, a randint per rewiring."""
    conn_rows, conn_cols = connections
    n_listed = len(conn_rows)
    n_cand = len(candidates[0])
    if n_cand >= 2**32:
        raise ValueError("too many layer-skipping candidates for a 32-bit bounded draw")
    capacity = n_cand + n_listed
    cand_rows = np.empty(capacity, dtype=np.int64)
    cand_cols = np.empty(capacity, dtype=np.int64)
    cand_rows[:n_cand] = candidates[0]
    cand_cols[:n_cand] = candidates[1]
    alive = _AliveList(n_cand, capacity)
    high = n_cand - 1
    word_mask = (1 << high.bit_length()) - 1
    stream = _WordStream(rng, p, 2 * n_listed + int(3 * p * n_listed) + 4096)
    next_slot = n_cand
    ptr = i = rewired = 0
    while i < n_listed:
        hit = stream.next_hit(ptr, n_listed - i)
        if hit is None:
            ptr += 2 * (n_listed - i)
            break
        i += (hit - ptr) // 2
        ptr = hit + 2
        k = 0
        if high > 0:
            while True:
                k = stream.word(ptr) & word_mask
                ptr += 1
                if k <= high:
                    break
        slot = alive.find(k)
        r, c = int(conn_rows[i]), int(conn_cols[i])
        cr, cc = int(cand_rows[slot]), int(cand_cols[slot])
        mask[r, c] = mask[c, r] = 0
        mask[cr, cc] = mask[cc, cr] = 1
        cand_rows[next_slot], cand_cols[next_slot] = r, c
        alive.append(next_slot)
        alive.delete(slot)
        next_slot += 1
        rewired += 1
        i += 1
    stream.commit(ptr)
    return rewired


def build_topology(settings: TrialSettings, rng: np.random.RandomState) -> Topology:
    """Mask, initial weights and rewiring count for ``settings`` (spec section 3)."""
    sizes = settings.layer_sizes
    offsets = layer_offsets(sizes)
    n = int(offsets[-1])
    conn = adjacent_mask(sizes)
    mask = conn.copy()
    rewired = listed = 0
    if settings.network_type == "MLFF":
        weights = np.zeros((n, n), dtype=np.float32)
    else:
        if settings.network_type == "SW_intra":
            for k in range(1, len(sizes) - 1):
                mask[offsets[k] : offsets[k + 1], offsets[k] : offsets[k + 1]] = 1
            cols, rows = np.nonzero(np.tril(mask).T)
        else:
            rows, cols = np.nonzero(np.tril(mask, -1))
        listed = len(rows)
        rewired = _rewire(rng, mask, (rows, cols), skip_candidates(sizes), float(settings.bypass_p))
        a = float(settings.bypass_mag)
        weights = rng.uniform(-a, a, size=(n, n)).astype(np.float32)
    for k in range(len(sizes) - 1):
        n_in, n_out = sizes[k], sizes[k + 1]
        bound = np.sqrt(6.0 / (n_in + n_out))
        draw = rng.uniform(-bound, bound, size=(n, n))
        a, b, c = offsets[k], offsets[k + 1], offsets[k + 2]
        weights[a:b, b:c] = draw[a:b, b:c]
        weights[b:c, a:b] = draw[b:c, a:b]
    weights *= mask
    lower = np.tril(weights, -1)
    weights = lower + lower.T
    lower_mask = np.tril(mask, -1)
    mask = (lower_mask + lower_mask.T).astype(np.int8)
    return Topology(tuple(sizes), mask, weights.astype(np.float32), rewired, listed)
