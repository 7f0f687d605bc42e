"""2-D and 3-D projections: PCA, t-SNE, UMAP; fit on a sample for large n.

CONTRACT (used by ``purify_assets.stages.cycle.project_rows``):

- ``project(vectors, method, n_components, seed=0, fit_sample=...) -> np.ndarray`` float32
  (n, n_components). method in "pca" | "tsne" | "umap".
- ``fit_indices(n, method, fit_sample=..., tsne_max_fit=..., seed=0) -> np.ndarray``: the rows
  ``project`` fits on for those arguments (sorted positions), so a caller can keep the fit.
- ``place(x_fit, y_fit, x_new, method, n_components, knn=10, neighbours=None) -> np.ndarray``:
  coordinates for rows that were not part of an earlier ``project`` call, consistent with it, from
  the fitted rows' vectors ``x_fit`` and their coordinates ``y_fit``. PCA's components are recovered
  from ``x_fit`` and ``y_fit`` (``pca_place``: no refit) and transform ``x_new``; t-SNE and UMAP place
  ``x_new`` by k-NN onto the fitted rows, which is what ``project`` does itself for rows outside its
  fit sample. This is how an incremental cycle adds a few new rows to an existing map without
  refitting.

How each method scales (n rows, fit on a sample, place the rest):

- ``pca``: exact (``pca_components``: eigenvectors of the scatter matrix), fitted on at most
  ``fit_sample`` rows (``numpy.random.default_rng(seed)``), every row transformed in chunks. Cheap
  at any n.
- ``umap``: fitted on at most ``fit_sample`` rows; the rest are placed like t-SNE's (below: k nearest
  fitted rows, distance-weighted), or with ``UMAP.transform`` when ``umap_place="transform"``.
  ``transform`` re-runs layout epochs for every placed row: at 100k rows it took 104 s of a 2-D
  projection here, the k-NN placement a few seconds; for plots the difference is not visible.
  ``random_state=seed`` makes it deterministic but single-threaded. With k-NN placement (the
  default) and a cosine or euclidean metric, UMAP's neighbour graph is an exact search
  (``umap_neighbours``) passed in as ``precomputed_knn``: NN-descent's numba code, compiled afresh
  in every process, cost more than the fit itself; a caller can compute the graph once for the 2-D
  and 3-D maps (``umap_knn``). ``transform`` placement needs UMAP's own NN-descent index.
- ``tsne``: scikit-learn's t-SNE has no ``transform``, and its cost grows quickly with n, so it is
  fitted on at most ``min(fit_sample, tsne_max_fit)`` rows (default 5000). Every other row is placed
  at the distance-weighted mean of the 2-D/3-D positions of its ``knn`` (default 10) nearest
  fitted rows in the input space (weights 1 / (distance + 1e-6)). Placed rows therefore land
  inside the fitted map, never creating new islands: read t-SNE pictures of large n as "where the
  sample is", and prefer UMAP for the global picture. t-SNE runs with ``tsne_threads`` (default 1)
  BLAS/OpenMP threads: on the busy 2-core machines here the libraries' default threads spin, and
  a 2-D t-SNE took 59 s instead of 22 s on 5,000 rows, 40 s instead of 3 s on 1,000
  (``bench/bench_cluster.py``). Pass ``tsne_threads=None`` to keep the libraries' defaults.

Tiny inputs (fewer rows than the method needs) fall back to PCA and zero-pad missing components,
so every method returns (n, n_components).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

from purify_assets.core.clustering import CHUNK  # rows per block of the passes over vectors
from purify_assets.core.nearest import COMPILED_WORTH_FROM_SCORES, k_smallest

_UMAP_COMPILE_CACHE = False  # numba's disk cache switched on for umap's functions in this process


def import_umap():
    """``umap``, with numba's on-disk cache switched on for its compiled functions.

    umap-learn declares most of its numba functions without ``cache=True``, so every new process
    compiled them again before its first fit, and Dagster runs every materialization in a new
    process. With the cache, a fresh process's first UMAP fit of 3,000 rows took 23 s here instead
    of 42 s (the first process to compile writes the cache; functions umap compiles inside its own
    closures are still compiled per process). The cache lives beside umap's sources or under
    ``NUMBA_CACHE_DIR``, and numba drops it when those sources change. Where numba's internals differ
    from what this expects, umap simply compiles as before.
    """
    global _UMAP_COMPILE_CACHE
    import umap

    if not _UMAP_COMPILE_CACHE:
        _UMAP_COMPILE_CACHE = True
        try:
            from numba.core.caching import NullCache
            from numba.core.registry import CPUDispatcher

            for name, module in list(sys.modules.items()):
                if name == "umap" or name.startswith("umap."):
                    for obj in list(vars(module).values()):
                        if isinstance(obj, CPUDispatcher) and isinstance(obj._cache, NullCache):
                            obj.enable_caching()
        except (ImportError, AttributeError) as exc:  # pragma: no cover - depends on numba's internals
            warnings.warn(f"numba's disk cache could not be switched on for umap ({exc}); it compiles per process")
    return umap

METHODS = ("pca", "tsne", "umap")


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _pad(y: np.ndarray, n_components: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32)
    if y.shape[1] < n_components:
        y = np.hstack([y, np.zeros((y.shape[0], n_components - y.shape[1]), dtype=np.float32)])
    return y


def pca_components(x_fit: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components): the exact PCA of the rows ``x_fit``, components as rows (at most
    ``n_components``, the rows' count and their dimension), in order of explained variance, each
    signed so that its largest entry is positive (scikit-learn's convention, so the maps look the
    same). From the eigenvectors of the d x d scatter matrix (of the n x n Gram matrix when there
    are fewer rows than dimensions), in float64: on 3,000 x 512 rows 0.02-0.05 s here against
    0.21-0.24 s for scikit-learn's randomized solver, which its ``auto`` picks at that shape, and
    no ~2 s import of sklearn.decomposition in a new process."""
    x = np.asarray(x_fit, dtype=np.float64)
    n, d = x.shape
    nc = max(1, min(n_components, d, n))
    mean = x.mean(axis=0)
    xc = x - mean
    if n >= d:
        values, vectors = np.linalg.eigh(xc.T @ xc)
        order = np.argsort(values)[::-1][:nc]
        components = vectors[:, order].T
    else:  # right singular vectors from the left ones: v = X^T u / sigma
        values, vectors = np.linalg.eigh(xc @ xc.T)
        order = np.argsort(values)[::-1][:nc]
        sigma = np.sqrt(np.maximum(values[order], 0.0))
        components = (xc.T @ vectors[:, order] / np.where(sigma > 1e-12, sigma, 1.0)).T
        components[sigma <= 1e-12] = 0.0  # no variance left: a zero axis, as a padded one
    big = np.argmax(np.abs(components), axis=1)
    components *= np.where(components[np.arange(nc), big] < 0, -1.0, 1.0)[:, None]
    return mean, components


def _pca(x: np.ndarray, n_components: int, seed: int, fit_idx: np.ndarray) -> np.ndarray:
    """Rows of ``x`` on the PCA of its rows ``fit_idx`` (``seed`` only chose those rows)."""
    if len(x) == 0:
        return np.zeros((0, n_components), dtype=np.float32)
    mean, components = pca_components(x[fit_idx], n_components)
    w32, shift = components.T.astype(np.float32), (mean @ components.T).astype(np.float32)
    out = np.concatenate([np.asarray(x[s : s + CHUNK], dtype=np.float32) @ w32 - shift for s in range(0, len(x), CHUNK)])
    return _pad(out, n_components)


def pca_place(x_fit: np.ndarray, y_fit: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    """``x_new`` through the PCA that gave the fitted rows ``x_fit`` their coordinates ``y_fit``,
    without fitting it again. For centred rows X and coordinates Y = X C^T (C: orthonormal
    components, eigenvectors of X^T X), X^T Y = C^T diag(|y_k|^2), so C^T = X^T Y (Y^T Y)^+: one
    product of the fitted rows with their coordinates. A zero column of Y (a component the fit did
    not have, zero-padded) gives a zero column here too. A refit of sklearn's PCA on the same rows
    gives the same coordinates to float32 precision; this costs a few milliseconds instead of the
    fit and, in a new process, the ~2 s import of sklearn.decomposition."""
    x_fit = np.asarray(x_fit, dtype=np.float64)
    y_fit = np.asarray(y_fit, dtype=np.float64)
    mean = x_fit.mean(axis=0)
    weights = (x_fit - mean).T @ y_fit @ np.linalg.pinv(y_fit.T @ y_fit)
    # the new rows in float32: the first float64 product of this size in a process took 0.2-0.4 s here
    w32 = weights.astype(np.float32)
    shift = (mean @ weights).astype(np.float32)
    out = np.empty((len(x_new), y_fit.shape[1]), dtype=np.float32)
    for s in range(0, len(x_new), CHUNK):
        out[s : s + CHUNK] = np.asarray(x_new[s : s + CHUNK], dtype=np.float32) @ w32 - shift
    return out


def fit_indices(n: int, method: str, fit_sample: int = 20000, tsne_max_fit: int = 5000, seed: int = 0) -> np.ndarray:
    """Sorted positions of the rows ``project`` fits ``method`` on, for ``n`` rows and these arguments."""
    cap = min(fit_sample, tsne_max_fit) if method == "tsne" else fit_sample
    return _sample(n, cap, seed)


def rest_indices(n: int, fit_idx: np.ndarray) -> np.ndarray:
    """Sorted positions of the rows outside ``fit_idx``: the rows ``project`` places by k-NN."""
    return np.setdiff1d(np.arange(n), fit_idx, assume_unique=True)


def _uses_pca(method: str, n_fit: int, n_components: int) -> bool:
    # t-SNE needs perplexity < n; UMAP needs a neighbour graph and n_components + 1 < n
    return method == "pca" or n_fit < max(n_components + 2, 6)


def _neighbour_chunks(x_fit: np.ndarray, x_rest: np.ndarray, knn: int, rows: np.ndarray | None = None,
                      block: int = 256):
    """Per chunk of ``x_rest`` (or of its rows ``rows``, gathered a chunk at a time so that no copy of
    all of them is made): (start, indices of the ``knn`` nearest fitted rows in euclidean distance,
    their weights 1 / (distance + 1e-6), normalized to sum to 1).

    An exact search through float32 BLAS, ``block`` rows at a time: the candidates are ranked by
    2 a.b - |b|^2 (the same order as the distance), and the distances of the k chosen are then
    computed from the differences, so a row on top of a fitted row gets distance 0, not float32
    cancellation noise. scikit-learn's brute-force search widens float32 to float64 blocks: placing
    9,756 new rows onto a 5,000-row fit (512-D) took it 0.8-1.0 s here, this 0.5-0.8 s."""
    x_fit = np.asarray(x_fit, dtype=np.float32)
    k = max(1, min(knn, len(x_fit)))
    fit_sq = np.einsum("ij,ij->i", x_fit, x_fit)
    total = len(x_rest) if rows is None else len(rows)
    # the compiled selection where the search is large enough to repay loading numba (nearest.py)
    compiled = True if total * len(x_fit) >= COMPILED_WORTH_FROM_SCORES else None
    for s in range(0, total, CHUNK):
        part = x_rest[s : s + CHUNK] if rows is None else x_rest[rows[s : s + CHUNK]]
        part = np.asarray(part, dtype=np.float32)
        j = np.empty((len(part), k), dtype=np.int64)
        d = np.empty((len(part), k), dtype=np.float32)
        for b in range(0, len(part), block):
            q = part[b : b + block]
            score = q @ x_fit.T
            score *= -2.0
            score += fit_sq  # |b|^2 - 2 a.b: the squared distance less |a|^2, smallest first
            pick = k_smallest(score, k, compiled) if k < len(x_fit) else \
                np.broadcast_to(np.arange(k), (len(q), k))
            diff = x_fit[pick] - q[:, None, :]
            dist = np.sqrt(np.einsum("ijd,ijd->ij", diff, diff))
            order = np.argsort(dist, axis=1, kind="stable")
            j[b : b + len(q)] = np.take_along_axis(pick, order, axis=1)
            d[b : b + len(q)] = np.take_along_axis(dist, order, axis=1)
        w = 1.0 / (d.astype(np.float64) + 1e-6)
        yield s, j, w / w.sum(axis=1, keepdims=True)


def knn_neighbours(x_fit: np.ndarray, x_rest: np.ndarray, knn: int = 10,
                   rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each (len(x_rest) or len(rows), k): what ``knn_place`` averages over.
    Computed once, it serves every map fitted on the same rows (2-D and 3-D, UMAP and t-SNE): at
    700k rows the search is ~30 s of the projection stage. ``rows`` searches only those rows of
    ``x_rest``, gathered a chunk at a time."""
    parts = list(_neighbour_chunks(np.asarray(x_fit, dtype=np.float32), np.asarray(x_rest, dtype=np.float32), knn, rows))
    if not parts:
        k = max(1, min(knn, len(x_fit)))
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k))
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def knn_place(x_fit: np.ndarray, y_fit: np.ndarray, x_rest: np.ndarray, knn: int = 10,
              neighbours: tuple[np.ndarray, np.ndarray] | None = None, rows: np.ndarray | None = None) -> np.ndarray:
    """Place rows by the inverse-distance-weighted mean of their ``knn`` nearest fitted rows
    (``neighbours`` from ``knn_neighbours`` skips the search). ``rows`` places only those rows of
    ``x_rest`` (in that order) without copying them out first."""
    out = np.empty((len(x_rest) if rows is None else len(rows), y_fit.shape[1]), dtype=np.float32)
    if neighbours is not None:
        j, w = neighbours
        out[:] = np.einsum("ij,ijc->ic", w, y_fit[j])
        return out
    for s, j, w in _neighbour_chunks(x_fit, x_rest, knn, rows):
        out[s : s + len(j)] = np.einsum("ij,ijc->ic", w, y_fit[j])
    return out


def project(vectors: np.ndarray, method: str, n_components: int, seed: int = 0, fit_sample: int = 20000,
            tsne_max_fit: int = 5000, perplexity: float = 30.0, n_neighbors: int = 15, min_dist: float = 0.1,
            metric: str = "cosine", knn: int = 10, umap_place: str = "knn",
            tsne_threads: int | None = 1, neighbours: tuple[np.ndarray, np.ndarray] | None = None,
            umap_knn: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Project ``vectors`` (n x dim) to (n x n_components) float32 with ``method``.

    ``fit_sample`` caps the rows a method is fitted on (see the module docstring for how the rest
    is placed); ``tsne_max_fit`` caps t-SNE further. ``perplexity`` (t-SNE, lowered for small
    samples), ``n_neighbors``/``min_dist``/``metric`` (UMAP; t-SNE uses ``metric`` too) keep their
    usual meanings. Deterministic for a seed. ``neighbours`` (``knn_neighbours(x[fit], x, knn,
    rows=rest_indices(n, fit))`` for ``fit = fit_indices(...)``) skips the k-NN search that places
    the rows outside the fit sample, when another map on the same fit rows already did it.
    ``umap_knn`` (``umap_graph(x[fit], n_neighbors, metric, umap_place)``) does the same for UMAP's
    own neighbour graph, which the 2-D and 3-D maps share.
    """
    if method not in METHODS:
        raise ValueError(f"projection method {method!r} unknown; choose one of {METHODS}")
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    if fit_sample < 1:
        raise ValueError(f"fit_sample must be positive, got {fit_sample}")
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array, got shape {x.shape}")
    x = x.astype(np.float32, copy=False)
    n = len(x)
    if n == 0:
        return np.zeros((0, n_components), dtype=np.float32)

    fit_idx = fit_indices(n, method, fit_sample, tsne_max_fit, seed)
    n_fit = len(fit_idx)
    if _uses_pca(method, n_fit, n_components):
        return _pca(x, n_components, seed, fit_idx)

    rest = rest_indices(n, fit_idx)
    if neighbours is not None and len(neighbours[0]) != len(rest):
        raise ValueError(f"neighbours cover {len(neighbours[0])} rows, but {len(rest)} rows lie outside the fit sample")
    out = np.empty((n, n_components), dtype=np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perp = float(min(perplexity, max(2.0, (n_fit - 1) / 3.0)))
        model = TSNE(n_components=n_components, perplexity=perp, random_state=seed, init="pca",
                     metric=metric, method="barnes_hut" if n_components <= 3 else "exact")
        from contextlib import nullcontext

        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=tsne_threads) if tsne_threads else nullcontext():
            y_fit = np.asarray(model.fit_transform(x[fit_idx]), dtype=np.float32)
        out[fit_idx] = y_fit
        if len(rest):
            out[rest] = knn_place(x[fit_idx], y_fit, x, knn=knn, rows=rest, neighbours=neighbours)
        return out

    umap = import_umap()
    k = min(n_neighbors, n_fit - 1)
    extra = {}
    graph = umap_knn if umap_knn is not None else umap_graph(x[fit_idx], n_neighbors, metric, umap_place)
    if graph is not None:
        if graph[0].shape != (n_fit, k):
            raise ValueError(f"umap_knn has shape {graph[0].shape}; the fit needs ({n_fit}, {k})")
        extra["precomputed_knn"] = (graph[0], graph[1], None)
    model = umap.UMAP(n_components=n_components, n_neighbors=k, min_dist=min_dist,
                      metric=metric, random_state=seed, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs value 1 overridden ... by setting random_state"
        out[fit_idx] = np.asarray(model.fit_transform(x[fit_idx]), dtype=np.float32)
        if umap_place == "knn":
            if len(rest):
                out[rest] = knn_place(x[fit_idx], out[fit_idx], x, knn=knn, rows=rest, neighbours=neighbours)
            return out
        for s in range(0, len(rest), CHUNK):
            r = rest[s : s + CHUNK]
            out[r] = np.asarray(model.transform(x[r]), dtype=np.float32)
    return out


EXACT_KNN_METRICS = ("cosine", "euclidean")


def umap_graph(x_fit: np.ndarray, n_neighbors: int = 15, metric: str = "cosine",
               umap_place: str = "knn") -> tuple[np.ndarray, np.ndarray] | None:
    """The neighbour graph ``project`` hands a UMAP fit on the rows ``x_fit`` with these settings, or
    None where it lets UMAP build its own: ``transform`` placement (it needs UMAP's NN-descent
    index), a metric other than ``EXACT_KNN_METRICS``, or a fit so small it falls back to PCA.
    Computed once, it serves the 2-D and the 3-D map (``project(..., umap_knn=...)``)."""
    n_fit = len(x_fit)
    if umap_place != "knn" or metric not in EXACT_KNN_METRICS or _uses_pca("umap", n_fit, 2):
        return None
    return umap_neighbours(x_fit, min(n_neighbors, n_fit - 1), metric)


def umap_neighbours(x_fit: np.ndarray, k: int, metric: str = "cosine",
                    block_floats: int = 1 << 23) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest neighbours of every row of ``x_fit`` among those rows (itself first), as
    UMAP takes them in ``precomputed_knn``: (indices int32, distances float32), each (n, k).

    UMAP otherwise builds this graph with NN-descent (pynndescent), whose numba functions compile
    afresh in every process: on 20,000 x 512 vectors here a new process spent ~74 s in the first
    2-D fit and ~17 s in the 3-D one; with this exact search (~8 s, blocks of rows against all
    rows through BLAS) the two fits took ~13 and ~14 s, and the graph is exact rather than
    approximate. ``metric`` is "cosine" (1 - cosine similarity) or "euclidean". Blocks hold at most
    ``block_floats`` scores (32 MiB, plus an 8 MiB mask while the k nearest are picked, which
    matters because the projection stage holds every vector while it runs: at 712k rows it is the
    stage with the highest peak).
    """
    if metric not in EXACT_KNN_METRICS:
        raise ValueError(f"exact neighbours support {EXACT_KNN_METRICS}, not {metric!r}")
    x = np.asarray(x_fit, dtype=np.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of rows ({n}), got {k}")
    sq = np.einsum("ij,ij->i", x, x)
    if metric == "cosine":
        norms = np.sqrt(sq)
        x = x / np.where(norms > 0, norms, 1.0)[:, None]
    idx = np.empty((n, k), dtype=np.int32)
    dist = np.empty((n, k), dtype=np.float32)
    step = max(1, min(n, block_floats // max(n, 1)))
    for s in range(0, n, step):
        e = min(n, s + step)
        score = x[s:e] @ x.T  # cosine similarity, or the dot product for euclidean
        if metric == "euclidean":
            score = 2.0 * score - sq[None, :]  # = |a|^2 - |a - b|^2: ranks b by distance to a
        rows = np.arange(e - s)
        score[rows, np.arange(s, e)] = np.inf  # each row is its own first neighbour, even among duplicates
        np.negative(score, out=score)  # in place: the k smallest are now the k nearest
        part = k_smallest(score, k, compiled=True)  # UMAP's fit, which loads numba, comes next
        top = -np.take_along_axis(score, part, axis=1)
        del score
        order = np.argsort(-top, axis=1, kind="stable")
        part = np.take_along_axis(part, order, axis=1)
        top = np.take_along_axis(top, order, axis=1)
        if metric == "cosine":
            d = np.maximum(0.0, 1.0 - top)
        else:
            d = np.sqrt(np.maximum(0.0, sq[s:e, None] - top))
        idx[s:e] = part
        dist[s:e] = d
    dist[:, 0] = 0.0  # the row itself (its score was set to infinity above)
    return idx, dist


def place(x_fit: np.ndarray, y_fit: np.ndarray, x_new: np.ndarray, method: str, n_components: int,
          knn: int = 10, neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Coordinates for ``x_new`` in a map made earlier by ``project``: ``x_fit`` are the vectors of the
    rows that map was fitted on (``fit_indices``, in the same order) and ``y_fit`` their coordinates.

    PCA (and the tiny-input PCA fallback of the other methods) recovers the earlier components from
    ``x_fit`` and ``y_fit`` (``pca_place``) and transforms ``x_new``; t-SNE and UMAP place each new
    row at the distance-weighted mean of its ``knn`` nearest fitted rows, as ``project`` does for
    every row outside its fit sample. ``neighbours`` (``knn_neighbours(x_fit, x_new, knn)``) reuses
    one neighbour search for several maps fitted on the same rows. Returns float32
    (len(x_new), n_components).
    """
    if method not in METHODS:
        raise ValueError(f"projection method {method!r} unknown; choose one of {METHODS}")
    x_fit = np.asarray(x_fit, dtype=np.float32)
    x_new = np.asarray(x_new, dtype=np.float32)
    y_fit = np.asarray(y_fit, dtype=np.float32)
    if x_fit.ndim != 2 or len(x_fit) == 0:
        raise ValueError(f"place needs the fitted rows' vectors, got shape {x_fit.shape}")
    if y_fit.shape != (len(x_fit), n_components):
        raise ValueError(f"y_fit has shape {y_fit.shape}, expected ({len(x_fit)}, {n_components})")
    if len(x_new) == 0:
        return np.zeros((0, n_components), dtype=np.float32)
    if x_new.ndim != 2 or x_new.shape[1] != x_fit.shape[1]:
        raise ValueError(f"x_new has shape {x_new.shape}; the fitted rows have dimension {x_fit.shape[1]}")
    if _uses_pca(method, len(x_fit), n_components):
        return pca_place(x_fit, y_fit, x_new)
    return knn_place(x_fit, y_fit, x_new, knn=knn, neighbours=neighbours)
