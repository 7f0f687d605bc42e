"""2-D and 3-D projections: PCA, t-SNE, UMAP; fit on a sample for large n.

CONTRACT (used by ``purify_assets.assets.project``):

- ``project(vectors, method, n_components, seed=0, fit_sample=...) -> np.ndarray`` float32
  (n, n_components). method in "pca" | "tsne" | "umap".

How each method scales (n rows, fit on a sample, place the rest):

- ``pca``: fitted on at most ``fit_sample`` rows (``numpy.random.default_rng(seed)``), every row
  transformed in chunks. Cheap at any n.
- ``umap``: fitted on at most ``fit_sample`` rows; the rest are placed like t-SNE's (below: k nearest
  fitted rows, distance-weighted), or with ``UMAP.transform`` when ``umap_place="transform"``.
  ``transform`` re-runs layout epochs for every placed row: at 100k rows it took 104 s of a 2-D
  projection here, the k-NN placement a few seconds; for plots the difference is not visible.
  ``random_state=seed`` makes it deterministic but single-threaded; the first UMAP fit in a process
  also pays a numba compile (~10-35 s here).
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

import warnings

import numpy as np

METHODS = ("pca", "tsne", "umap")
CHUNK = 65536


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _pad(y: np.ndarray, n_components: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32)
    if y.shape[1] < n_components:
        y = np.hstack([y, np.zeros((y.shape[0], n_components - y.shape[1]), dtype=np.float32)])
    return y


def _pca(x: np.ndarray, n_components: int, seed: int, fit_idx: np.ndarray) -> np.ndarray:
    from sklearn.decomposition import PCA

    nc = max(1, min(n_components, x.shape[1], len(fit_idx)))
    model = PCA(n_components=nc, random_state=seed).fit(x[fit_idx])
    out = np.concatenate([model.transform(x[s : s + CHUNK]) for s in range(0, len(x), CHUNK)])
    return _pad(out, n_components)


def knn_place(x_fit: np.ndarray, y_fit: np.ndarray, x_rest: np.ndarray, knn: int = 10) -> np.ndarray:
    """Place rows by the inverse-distance-weighted mean of their ``knn`` nearest fitted rows."""
    from sklearn.neighbors import NearestNeighbors

    k = max(1, min(knn, len(x_fit)))
    nn = NearestNeighbors(n_neighbors=k).fit(x_fit)
    out = np.empty((len(x_rest), y_fit.shape[1]), dtype=np.float32)
    for s in range(0, len(x_rest), CHUNK):
        d, j = nn.kneighbors(x_rest[s : s + CHUNK], n_neighbors=k)
        w = 1.0 / (d + 1e-6)
        w /= w.sum(axis=1, keepdims=True)
        out[s : s + len(d)] = np.einsum("ij,ijc->ic", w, y_fit[j])
    return out


def project(vectors: np.ndarray, method: str, n_components: int, seed: int = 0, fit_sample: int = 20000,
            tsne_max_fit: int = 5000, perplexity: float = 30.0, n_neighbors: int = 15, min_dist: float = 0.1,
            metric: str = "cosine", knn: int = 10, umap_place: str = "knn",
            tsne_threads: int | None = 1) -> np.ndarray:
    """Project ``vectors`` (n x dim) to (n x n_components) float32 with ``method``.

    ``fit_sample`` caps the rows a method is fitted on (see the module docstring for how the rest
    is placed); ``tsne_max_fit`` caps t-SNE further. ``perplexity`` (t-SNE, lowered for small
    samples), ``n_neighbors``/``min_dist``/``metric`` (UMAP; t-SNE uses ``metric`` too) keep their
    usual meanings. Deterministic for a seed.
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

    cap = min(fit_sample, tsne_max_fit) if method == "tsne" else fit_sample
    fit_idx = _sample(n, cap, seed)
    n_fit = len(fit_idx)
    # t-SNE needs perplexity < n; UMAP needs a neighbour graph and n_components + 1 < n
    if method == "pca" or n_fit < max(n_components + 2, 6):
        return _pca(x, n_components, seed, fit_idx)

    rest = np.setdiff1d(np.arange(n), fit_idx, assume_unique=True)
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
            out[rest] = knn_place(x[fit_idx], y_fit, x[rest], knn=knn)
        return out

    import umap

    model = umap.UMAP(n_components=n_components, n_neighbors=min(n_neighbors, n_fit - 1), min_dist=min_dist,
                      metric=metric, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs value 1 overridden ... by setting random_state"
        out[fit_idx] = np.asarray(model.fit_transform(x[fit_idx]), dtype=np.float32)
        if umap_place == "knn":
            if len(rest):
                out[rest] = knn_place(x[fit_idx], out[fit_idx], x[rest], knn=knn)
            return out
        for s in range(0, len(rest), CHUNK):
            r = rest[s : s + CHUNK]
            out[r] = np.asarray(model.transform(x[r]), dtype=np.float32)
    return out
