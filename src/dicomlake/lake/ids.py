"""Sorted int64 id arrays: membership and de-duplication for millions of row ids.

No Python object per id: ten million ids are 80 MB of numpy, searched in sorted order.
"""

from __future__ import annotations

import numpy as np


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct int64 values.

    np.sort plus a neighbour comparison: numpy 2's np.unique hashes and is ten times
    slower on ten million random 64-bit ids.
    """
    out = np.sort(np.asarray(values, dtype=np.int64))
    if len(out) > 1:
        keep = np.empty(len(out), dtype=bool)
        keep[0] = True
        np.not_equal(out[1:], out[:-1], out=keep[1:])
        out = out[keep]
    return out


def positions(sorted_values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index into ``sorted_values`` where each query is, or would be (clipped in range).

    Binary searches in random order miss the cache on every step; for many queries,
    searching them in sorted order and scattering the answers back is several times
    faster.
    """
    if len(queries) > 1 << 16:
        order = np.argsort(queries)
        idx = np.empty(len(queries), dtype=np.intp)
        idx[order] = np.searchsorted(sorted_values, queries[order])
    else:
        idx = np.searchsorted(sorted_values, queries)
    np.minimum(idx, len(sorted_values) - 1, out=idx)
    return idx


def member_of(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """A bool mask: which ``values`` are in ``sorted_set`` (sorted, distinct)."""
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    found: np.ndarray = sorted_set[positions(sorted_set, values)] == values
    return found
