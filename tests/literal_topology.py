"""The published rewiring walk written literally (Python lists, one draw at a time).

Kept only as the test oracle for eqp.model.topology, which must produce identical masks faster.
"""

from __future__ import annotations

import numpy as np


def literal_build(sizes, network_type, p, mag, seed):
    rng = np.random.RandomState(seed)
    offsets = np.cumsum([0, *sizes])
    n = int(offsets[-1])
    L = len(sizes)
    conns = []
    for k in range(L - 1):
        c = np.zeros((n, n), dtype=np.int8)
        c[offsets[k] : offsets[k + 1], offsets[k + 1] : offsets[k + 2]] = 1
        c[offsets[k + 1] : offsets[k + 2], offsets[k] : offsets[k + 1]] = 1
        conns.append(c)
    mask = sum(conns).astype(np.int8)
    rewired = listed = 0
    if network_type == "MLFF":
        W = np.zeros((n, n), dtype=np.float32)
    else:
        candidates = []
        for i in range(2, L):
            for row in range(offsets[i], n):
                for col in range(offsets[i - 2], offsets[i - 1]):
                    candidates.append((row, col))
        existing = []
        if network_type == "SW_intra":
            for k in range(1, L - 1):
                mask[offsets[k] : offsets[k + 1], offsets[k] : offsets[k + 1]] = 1
            for col in range(n):
                for row in range(col, n):
                    if mask[row, col]:
                        existing.append((row, col))
        else:
            for row in range(1, n):
                for col in range(row):
                    if mask[row, col]:
                        existing.append((row, col))
        listed = len(existing)
        for row, col in existing:
            if rng.uniform(0, 1) < p:
                k = rng.randint(len(candidates))
                mask[row, col] = mask[col, row] = 0
                r2, c2 = candidates[k]
                mask[r2, c2] = mask[c2, r2] = 1
                candidates.append((row, col))
                del candidates[k]
                rewired += 1
        W = rng.uniform(-mag, mag, size=(n, n)).astype(np.float32)
    for k in range(L - 1):
        b = np.sqrt(6.0 / (sizes[k] + sizes[k + 1]))
        draw = rng.uniform(-b, b, size=(n, n))
        W[conns[k] == 1] = draw[conns[k] == 1]
    W = W * mask
    W = np.tril(W, -1) + np.tril(W, -1).T
    mask = np.tril(mask, -1) + np.tril(mask, -1).T
    return mask, W, rewired, listed
