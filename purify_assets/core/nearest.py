"""Exact top-k selection over the rows of a score matrix, faster than ``np.argpartition``.

The k-NN searches (placing rows onto a projection fit, UMAP's neighbour graph) compute a block of
scores, queries x fitted rows, with one BLAS product and then keep the k smallest per row. On
2 cores, numpy's row-wise ``argpartition`` cost as much as the product itself (profile of the 100k
re-run, 9,756 new rows placed onto the 5,000 fitted: 0.46 s of the projection's 0.86 s search).

``k_smallest`` does the same selection in two cheaper passes. The k-th smallest score of a strided
subset of the columns bounds the row's k-th smallest from above (a subset's k smallest can only be
larger), so every row's k smallest are among the entries at or below that bound. A comparison
pass finds them (about k x stride per row), and ``argpartition`` runs on that short padded list
only. The result is exact; among tied scores it may keep other (equally near) columns than
``argpartition`` would.
"""

from __future__ import annotations

import numpy as np

#: the subset keeps every STRIDE-th column; 16-32 measured fastest in a microbenchmark on 20,000 columns
#: (0.6 s against 2.2 s for argpartition on 9,800 rows of random 512-d vectors)
STRIDE = 16


def k_smallest(score: np.ndarray, k: int, stride: int = STRIDE) -> np.ndarray:
    """Column indices (int64, unsorted) of the ``k`` smallest entries in each row of ``score``.

    Same contract as ``np.argpartition(score, k - 1, axis=1)[:, :k]``, which it falls back to when
    the matrix is too narrow for the subset to help, or when a row's scores are not ordered
    (NaN), reach infinity, or tie so widely that the shortlist is not short."""
    score = np.asarray(score)
    n, m = score.shape
    if not 1 <= k <= m:
        raise ValueError(f"k must be between 1 and the number of columns ({m}), got {k}")
    if n == 0:
        return np.zeros((0, k), dtype=np.int64)
    if m < 8 * k or m // stride < 2 * k:
        return _argpartition(score, k)
    bound = np.partition(score[:, ::stride], k - 1, axis=1)[:, k - 1]
    if not np.isfinite(bound).all():  # the padding below is +inf: an infinite bound could tie with it
        return _argpartition(score, k)
    mask = score <= bound[:, None]
    counts = np.count_nonzero(mask, axis=1)
    width = int(counts.max())
    if int(counts.min()) < k or width > m // 4:  # NaN in a row, or a flood of ties
        return _argpartition(score, k)
    rows, cols = np.nonzero(mask)
    # position of each candidate within its row's shortlist
    slot = np.arange(len(cols)) - np.repeat(np.cumsum(counts) - counts, counts)
    short = np.full((n, width), np.inf, dtype=np.result_type(score.dtype, np.float32))
    where = np.zeros((n, width), dtype=np.int64)
    short[rows, slot] = score[rows, cols]
    where[rows, slot] = cols
    picked = np.argpartition(short, k - 1, axis=1)[:, :k]
    return np.take_along_axis(where, picked, axis=1)


def _argpartition(score: np.ndarray, k: int) -> np.ndarray:
    """The plain selection ``k_smallest`` stands in for, and falls back to."""
    return np.argpartition(score, k - 1, axis=1)[:, :k]
