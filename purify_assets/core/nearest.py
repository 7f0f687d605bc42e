"""Exact top-k selection over the rows of a score matrix, faster than ``np.argpartition``.

The k-NN searches (placing rows onto a projection fit, UMAP's neighbour graph) compute a block of
scores, queries x fitted rows, with one BLAS product and then keep the k smallest per row. On
2 cores numpy's row-wise ``argpartition`` cost as much as the product itself (profile of the 100k
re-run, 9,756 new rows placed onto the 5,000 fitted: 0.46 s of the projection's 0.86 s search).

Two ways to do it faster, both exact (among tied scores they may keep other, equally small,
columns than ``argpartition`` would):

- **compiled** (``_keep_k_smallest`` through numba, which umap-learn brings): one scan of each row
  that keeps the k smallest seen so far in a sorted list of k; a score enters only when it beats
  the list's largest, which after the first few hundred columns is rare. On 10,000 USE vectors of
  NSMC against 5,000 fitted ones, in blocks of 256: 0.036 s, against 0.16 s for the two passes
  below (the BLAS product of those blocks: 0.27 s); placing 95,000 rows onto the 5,000 (the 100k
  full run's search), median of 5 alternating runs 3.43 s against 4.80 s. The price is numba itself
  in a process that has not loaded it: about 0.4 s to import it (0.15-0.17 s) and read the loop
  from numba's disk cache (0.21-0.33 s), and 0.6 s more to compile it, once per installation. A
  process that imported umap has paid most of it.
- **two numpy passes** (``_strided_k_smallest``): the k-th smallest score of every ``STRIDE``-th
  column bounds the row's k-th smallest from above (a subset's k smallest can only be larger), so
  every row's k smallest are among the entries at or below that bound; a comparison pass finds them
  (about k x stride per row), and ``argpartition`` runs on that short padded list only.

``k_smallest(compiled=None)`` uses the compiled loop when numba is already loaded in the process and
the two passes otherwise; a caller that knows it has enough rows to repay the import (or that
loads umap next anyway) passes ``compiled=True``. Where numba cannot be loaded, the two passes run.
"""

from __future__ import annotations

import sys
import threading
import warnings
from typing import Any, Callable

import numpy as np

#: the subset keeps every STRIDE-th column; 16-32 measured fastest in a microbenchmark on 20,000 columns
#: (0.6 s against 2.2 s for argpartition on 9,800 rows of random 512-d vectors)
STRIDE = 16

#: scores (queries x fitted rows) above which a search is worth loading numba for: the compiled
#: loop saves about 2.5 ns a score over the two passes, numba costs about 0.4 s in a fresh process
COMPILED_WORTH_FROM_SCORES = 150_000_000

_KERNEL: Callable[..., Any] | None = None
_KERNEL_LOCK = threading.Lock()
_KERNEL_FAILED = False


def _keep_k_smallest(score: np.ndarray, k: int, out: np.ndarray) -> None:
    """The row scan ``k_smallest`` compiles: ``out[r]`` gets row r's k smallest columns, smallest
    first, or -1 where fewer than k of its scores are below +inf. Plain Python until compiled."""
    n, m = score.shape
    kept = np.empty(k, score.dtype)
    for r in range(n):
        row = score[r]
        for j in range(k):
            kept[j] = np.inf
            out[r, j] = -1
        worst = kept[k - 1]
        for c in range(m):
            v = row[c]
            if v < worst:  # False for NaN and +inf: those never enter
                p = k - 1
                while p > 0 and kept[p - 1] > v:
                    kept[p] = kept[p - 1]
                    out[r, p] = out[r, p - 1]
                    p -= 1
                kept[p] = v
                out[r, p] = c
                worst = kept[k - 1]


def _build_kernel() -> Callable[..., Any] | None:
    """``_keep_k_smallest`` compiled (and cached on disk), or None where numba is missing or fails."""
    global _KERNEL
    with _KERNEL_LOCK:
        if _KERNEL is not None or _KERNEL_FAILED:
            return _KERNEL
        try:
            import numba

            _KERNEL = numba.njit(cache=True, nogil=True)(_keep_k_smallest)
        except Exception as exc:  # noqa: BLE001 - any failure to import: the two numpy passes instead
            _give_up_compiling("numba unavailable", exc)
        return _KERNEL


def _give_up_compiling(what: str, exc: BaseException) -> None:
    """From now on this process selects with the two numpy passes, and says why once."""
    global _KERNEL, _KERNEL_FAILED
    _KERNEL, _KERNEL_FAILED = None, True
    warnings.warn(f"k_smallest: {what} ({type(exc).__name__}: {exc}); using the numpy passes")


def k_smallest(score: np.ndarray, k: int, compiled: bool | None = None) -> np.ndarray:
    """Column indices (int64) of the ``k`` smallest entries in each row of ``score``.

    Same contract as ``np.argpartition(score, k - 1, axis=1)[:, :k]`` (no order promised; the
    compiled loop happens to give them smallest first). ``compiled``: True loads numba if need be,
    False never uses it, None uses it when numba is already loaded (see the module docstring)."""
    score = np.asarray(score)
    n, m = score.shape
    if not 1 <= k <= m:
        raise ValueError(f"k must be between 1 and the number of columns ({m}), got {k}")
    if n == 0:
        return np.zeros((0, k), dtype=np.int64)
    if compiled is None:
        compiled = "numba" in sys.modules
    kernel = _build_kernel() if compiled and score.dtype in (np.float32, np.float64) else None
    if kernel is None:
        return _strided_k_smallest(score, k)
    out = np.empty((n, k), dtype=np.int64)
    try:
        kernel(np.ascontiguousarray(score), k, out)  # compiled (or read from the cache) on first use
    except Exception as exc:  # noqa: BLE001 - numba failed to compile it here: the two passes from now on
        with _KERNEL_LOCK:
            _give_up_compiling("the compiled selection failed", exc)
        return _strided_k_smallest(score, k)
    short = np.flatnonzero(out[:, k - 1] < 0)  # fewer than k scores below +inf (NaN, +inf)
    if len(short):
        out[short] = _argpartition(score[short], k)
    return out


def _strided_k_smallest(score: np.ndarray, k: int, stride: int = STRIDE) -> np.ndarray:
    """``k_smallest`` without numba, in two numpy passes (see the module docstring; unsorted). Falls back
    to ``argpartition`` when the matrix is too narrow for the subset to help, or when a row's scores
    are not ordered (NaN), reach infinity, or tie so widely that the shortlist is not short."""
    n, m = score.shape
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
