"""Clustering with scikit-learn-style configs: K-means, DBSCAN, HDBSCAN, optional reduction first.

CONTRACT (used by ``purify_assets.assets.cluster``):

- ``ClusterParams.from_dict(d)``: the ``cluster`` section of the parameters; every field documented
  with its default (algorithm="kmeans", k=8, seed=0, ...). Unknown keys raise ``ValueError``.
- ``fit_clusters(vectors, params) -> ClusterResult``: ``labels`` int32 (n,), -1 = noise;
  ``strength`` float32 (n,) in [0, 1] (membership strength / closeness to centre); ``centers``
  (n_clusters, dim) float32 in the input space; ``info`` dict of what was done (timings, sample size).
  Deterministic for a given seed.
- ``k_sweep(vectors, ks, seed, sample_size) -> list[dict]``: K-means for every k with silhouette,
  Davies-Bouldin, Calinski-Harabasz, inertia and stability, so "how many clusters" has evidence.
- ``stability(vectors, params, n_runs, sample_size) -> float``: mean pairwise adjusted Rand index
  between runs that differ in seed and in the random 80 % subsample they were fitted on.

How a fit runs (the same for every algorithm):

1. Draw the fit sample: ``fit_sample`` rows chosen uniformly with ``numpy.random.default_rng(seed)``
   (all rows when n <= fit_sample).
2. Reduce (optional): PCA or UMAP fitted on the sample, then every row transformed in chunks.
3. Cluster the sample in the (reduced) space.
4. Assign the rest: K-means -> nearest centre; HDBSCAN -> ``hdbscan.approximate_predict``
   (the model is fitted with ``prediction_data=True``); DBSCAN -> the label of the nearest core
   point when it lies within ``eps``, else noise. That is DBSCAN's own rule for border points.
5. Relabel clusters by size, largest first (0 = largest; -1 stays noise), so labels are stable and
   readable, and compute every centre as the mean of its members in the *input* space.

Memory stays O(n * (dim + k)): no n x n matrix is ever built; distances to centres and nearest
neighbours are computed in chunks of ``CHUNK`` rows. 700k x 384 float32 is 1.1 GB of input; the
working set on top of it is the reduced copy (n x reduce_dims) and one chunk.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

# rows per chunk for distance computations and transforms: 16 MB of 512-d float32. Temporaries of that
# size are reused by the allocator; 128 MB ones (65,536 rows) were fresh pages every time, which the
# VMs here charge 2.5-4 ms per MB for
CHUNK = 8192

ALGORITHMS = ("kmeans", "dbscan", "hdbscan")
REDUCERS = ("auto", "none", "pca", "umap")


@dataclass
class ClusterResult:
    labels: np.ndarray
    strength: np.ndarray
    centers: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        return int(self.centers.shape[0])


@dataclass
class ClusterParams:
    """Parameters of ``fit_clusters`` (the ``cluster`` section of the parameter store).

    algorithm: "kmeans" (default) | "dbscan" | "hdbscan".
    k: number of clusters for K-means. Default 8. Ignored by DBSCAN/HDBSCAN.
    seed: seed for the fit sample, K-means initialisation and UMAP. Default 0.
    minibatch_above: use ``MiniBatchKMeans`` when the fit sample has more rows than this.
        Default 20000.
    minibatch_size: batch size of ``MiniBatchKMeans``. Default 4096.
    n_init: K-means restarts (best inertia kept). Default 3.
    reduce: "auto" (default) | "none" | "pca" | "umap". "auto" means "none" for K-means and
        "umap" for DBSCAN/HDBSCAN: density clustering on raw 384-d vectors is both slow
        (HDBSCAN on 20k raw rows took 245 s here, 3 s on 10-d UMAP) and poor, because distances
        concentrate in high dimensions.
    reduce_dims: target dimensions of the reduction. Default 10 (BERTopic uses 5; 10 kept more
        task-type signal in our KoBEST runs).
    umap_n_neighbors: UMAP neighbourhood size for the reduction. Default 15.
    umap_min_dist: UMAP ``min_dist`` for the reduction. Default 0.0 (tight clumps help density
        clustering; this is a reduction for clustering, not a picture).
    umap_metric: UMAP input metric. Default "cosine".
    fit_sample: fit on at most this many rows and assign the rest. Default 50000.
    refit_share: read by the cycle's clustering stage, not by ``fit_clusters``: while at most this
        share of the rows a K-means fit was made on are new, assigned since or gone, and nothing
        else changed, the next cycle keeps the fit (old rows keep their labels, new rows go to the
        nearest stored centre: ``assign_to_centers``) instead of refitting. Default 0.2.
    eps: DBSCAN radius. Default None: chosen at the knee of the sorted k-distance curve
        (distance of a point to its ``min_samples``-th neighbour, itself counted as DBSCAN does),
        measured for up to ``eps_sample`` query points against the whole fit sample.
    eps_sample: query points used for the k-distance curve. Default 5000.
    min_samples: DBSCAN ``min_samples`` (default None -> 10) and HDBSCAN ``min_samples``
        (default None -> ``min_cluster_size``, HDBSCAN's own default).
    min_cluster_size: HDBSCAN ``min_cluster_size``. Default None -> max(10, 1 % of the fit sample),
        the setting that gave the best KoBEST agreement in our baselines.
    cluster_selection_method: HDBSCAN "eom" (default) | "leaf".
    """

    algorithm: str = "kmeans"
    k: int = 8
    seed: int = 0
    minibatch_above: int = 20000
    minibatch_size: int = 4096
    n_init: int = 3
    reduce: str = "auto"
    reduce_dims: int = 10
    umap_n_neighbors: int = 15
    umap_min_dist: float = 0.0
    umap_metric: str = "cosine"
    fit_sample: int = 50000
    refit_share: float = 0.2
    eps: float | None = None
    eps_sample: int = 5000
    min_samples: int | None = None
    min_cluster_size: int | None = None
    cluster_selection_method: str = "eom"

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ClusterParams":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"cluster parameters: unknown key(s) {unknown}; known keys: {sorted(known)}"
            )
        p = cls(**d)
        p.validate()
        return p

    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"cluster parameter {name}={getattr(self, name)!r}: {why}")

        if self.algorithm not in ALGORITHMS:
            raise bad("algorithm", f"must be one of {ALGORITHMS}")
        if self.reduce is None:
            self.reduce = "none"
        if self.reduce not in REDUCERS:
            raise bad("reduce", f"must be one of {REDUCERS}")
        if self.cluster_selection_method not in ("eom", "leaf"):
            raise bad("cluster_selection_method", "must be 'eom' or 'leaf'")
        for name in ("k", "minibatch_above", "minibatch_size", "n_init", "reduce_dims", "umap_n_neighbors",
                     "fit_sample", "eps_sample"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise bad(name, "must be a positive integer")
        for name in ("min_samples", "min_cluster_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise bad(name, "must be a positive integer or null")
        if self.min_cluster_size is not None and self.min_cluster_size < 2:
            raise bad("min_cluster_size", "must be at least 2")
        if self.eps is not None and not (isinstance(self.eps, (int, float)) and self.eps > 0):
            raise bad("eps", "must be a positive number or null (auto)")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise bad("seed", "must be an integer")

    @property
    def effective_reduce(self) -> str:
        if self.reduce == "auto":
            return "none" if self.algorithm == "kmeans" else "umap"
        return self.reduce

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def params_hash(d: dict[str, Any]) -> str:
    blob = json.dumps(d, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# helpers


def _as_matrix(vectors: Any) -> np.ndarray:
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array (rows x dims), got shape {x.shape}")
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    # every row, in chunks (checking only a prefix let a NaN row further down be assigned a
    # cluster and turn that cluster's centre into NaN when the fit ran on a sample)
    for s in range(0, x.shape[0], CHUNK):
        if not np.isfinite(x[s : s + CHUNK]).all():
            bad = np.where(~np.isfinite(x).all(axis=1))[0]
            raise ValueError(f"vectors contain NaN/inf in {len(bad)} row(s), first at row {int(bad[0])}")
    return x


def sample_indices(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a uniform sample without replacement (all rows when n <= size)."""
    if n <= size:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=size, replace=False))


def nearest_centers(x: np.ndarray, centers: np.ndarray, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every row: index of the nearest centre, its distance, and the distance to the second
    nearest (inf when there is one centre). Euclidean, chunked: O(chunk x k) memory."""
    n = x.shape[0]
    k = centers.shape[0]
    idx = np.empty(n, dtype=np.int32)
    d1 = np.empty(n, dtype=np.float32)
    d2 = np.full(n, np.inf, dtype=np.float32)
    c = centers.astype(np.float32)
    cc = (c * c).sum(axis=1)
    for s in range(0, n, chunk):
        xb = x[s : s + chunk]
        d = (xb * xb).sum(axis=1)[:, None] - 2.0 * (xb @ c.T) + cc[None, :]
        np.maximum(d, 0.0, out=d)
        if k == 1:
            idx[s : s + len(xb)] = 0
            d1[s : s + len(xb)] = np.sqrt(d[:, 0])
            continue
        part = np.argpartition(d, 1, axis=1)[:, :2]
        rows = np.arange(len(xb))
        a, b = d[rows, part[:, 0]], d[rows, part[:, 1]]
        swap = b < a
        first = np.where(swap, part[:, 1], part[:, 0])
        idx[s : s + len(xb)] = first
        d1[s : s + len(xb)] = np.sqrt(np.where(swap, b, a))
        d2[s : s + len(xb)] = np.sqrt(np.where(swap, a, b))
    return idx, d1, d2


def assign_to_centers(vectors: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and strengths for rows placed onto an existing K-means fit: the nearest centre, and
    the strength ``fit_clusters`` gives K-means members (1 at the centre, 0 on the boundary with the
    second-nearest centre)."""
    x = _as_matrix(vectors)
    c = np.asarray(centers, dtype=np.float32)
    if len(x) == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    if c.ndim != 2 or len(c) == 0 or c.shape[1] != x.shape[1]:
        raise ValueError(f"centres of shape {c.shape} do not fit rows of dimension {x.shape[1]}")
    idx, d1, d2 = nearest_centers(x, c)
    strength = 1.0 - d1 / max(float(d1.max()), 1e-12) if len(c) == 1 else 1.0 - d1 / np.maximum(d2, 1e-12)
    return idx.astype(np.int32), np.clip(strength, 0.0, 1.0).astype(np.float32)


def label_means(x: np.ndarray, labels: np.ndarray, n_clusters: int, chunk: int = CHUNK) -> np.ndarray:
    """Mean vector of every label 0..n_clusters-1 (noise -1 ignored), float32, chunked."""
    from scipy import sparse

    d = x.shape[1]
    sums = np.zeros((n_clusters, d), dtype=np.float64)
    counts = np.zeros(n_clusters, dtype=np.int64)
    for s in range(0, x.shape[0], chunk):
        lb = labels[s : s + chunk]
        keep = lb >= 0
        if not keep.any():
            continue
        rows = lb[keep]
        onehot = sparse.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, np.arange(len(rows)))), shape=(n_clusters, len(rows))
        )
        # float32 products per chunk (no float64 copy of the rows: that copy was most of the time),
        # summed across chunks in float64
        sums += np.asarray(onehot @ np.asarray(x[s : s + chunk][keep], dtype=np.float32), dtype=np.float64)
        counts += np.bincount(rows, minlength=n_clusters)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0..m-1 by size, largest first (ties: smaller old label first); -1 stays."""
    labels = np.asarray(labels)
    out = np.full(labels.shape, -1, dtype=np.int32)
    keep = labels >= 0
    if not keep.any():
        return out
    uniq, counts = np.unique(labels[keep], return_counts=True)
    order = np.lexsort((uniq, -counts))
    mapping = np.full(int(uniq.max()) + 1, -1, dtype=np.int32)
    mapping[uniq[order]] = np.arange(len(uniq), dtype=np.int32)
    out[keep] = mapping[labels[keep]]
    return out


def knee_eps(kdist: np.ndarray) -> float:
    """Knee of a k-distance curve: sort ascending, scale both axes to [0, 1], take the point
    farthest below the chord from first to last point (the Kneedle rule for a convex increasing
    curve). Falls back to the 90th percentile when the curve is flat."""
    y = np.sort(np.asarray(kdist, dtype=np.float64))
    y = y[np.isfinite(y)]
    if len(y) == 0:
        raise ValueError("cannot choose eps: empty k-distance curve")
    lo, hi = y[0], y[-1]
    if hi - lo <= 1e-12 or len(y) < 3:
        eps = float(np.quantile(y, 0.9))
    else:
        xn = np.linspace(0.0, 1.0, len(y))
        yn = (y - lo) / (hi - lo)
        eps = float(y[int(np.argmax(xn - yn))])
    if eps <= 0:
        pos = y[y > 0]
        eps = float(pos[0]) if len(pos) else 1e-6
    return eps


def _reducer(p: ClusterParams, method: str, n_fit: int, dim: int):
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=min(p.reduce_dims, dim, n_fit), random_state=p.seed)
    if method == "umap":
        from purify_assets.core.projection import import_umap

        return import_umap().UMAP(
            n_components=p.reduce_dims,
            n_neighbors=min(p.umap_n_neighbors, n_fit - 1),
            min_dist=p.umap_min_dist,
            metric=p.umap_metric,
            random_state=p.seed,
            init="spectral" if n_fit > p.reduce_dims + 1 else "random",
        )
    raise ValueError(f"unknown reduction {method!r}")


def _transform_chunks(model, x: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    parts = [np.asarray(model.transform(x[s : s + chunk]), dtype=np.float32) for s in range(0, len(x), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# the three algorithms: each takes the (reduced) space, the fit-sample indices and returns
# labels + strength for every row


def _run_kmeans(z: np.ndarray, fit_idx: np.ndarray, p: ClusterParams, info: dict) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    zf = z[fit_idx]
    k = min(p.k, len(zf))
    if k < p.k:
        info["warnings"].append(f"k={p.k} exceeds the {len(zf)} fitted rows; using k={k}")
    t = time.perf_counter()
    if len(zf) > p.minibatch_above:
        model = MiniBatchKMeans(n_clusters=k, random_state=p.seed, n_init=p.n_init,
                                batch_size=p.minibatch_size)
        info["kmeans_variant"] = "minibatch"
    else:
        model = KMeans(n_clusters=k, random_state=p.seed, n_init=p.n_init)
        info["kmeans_variant"] = "full"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on duplicate points
        model.fit(zf)
    info["timings"]["cluster_fit"] = time.perf_counter() - t
    t = time.perf_counter()
    idx, d1, d2 = nearest_centers(z, model.cluster_centers_)
    info["timings"]["assign"] = time.perf_counter() - t
    info["inertia_fit"] = float(model.inertia_)
    # strength: 1 at the centre, 0 on the boundary with the second-nearest centre
    if k == 1:
        strength = 1.0 - d1 / max(float(d1.max()), 1e-12)
    else:
        strength = 1.0 - d1 / np.maximum(d2, 1e-12)
    return idx.astype(np.int32), np.clip(strength, 0.0, 1.0).astype(np.float32)


def _run_hdbscan(z: np.ndarray, fit_idx: np.ndarray, p: ClusterParams, info: dict) -> tuple[np.ndarray, np.ndarray]:
    import hdbscan

    n_fit = len(fit_idx)
    mcs = p.min_cluster_size if p.min_cluster_size is not None else max(10, int(round(0.01 * n_fit)))
    mcs = max(2, min(mcs, n_fit))
    ms = p.min_samples if p.min_samples is not None else mcs
    ms = max(1, min(ms, n_fit - 1))
    info["effective_params"]["min_cluster_size"] = int(mcs)
    info["effective_params"]["min_samples"] = int(ms)
    need_predict = n_fit < len(z)
    t = time.perf_counter()
    model = hdbscan.HDBSCAN(min_cluster_size=int(mcs), min_samples=int(ms),
                            cluster_selection_method=p.cluster_selection_method,
                            prediction_data=need_predict, core_dist_n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(z[fit_idx].astype(np.float64))
    info["timings"]["cluster_fit"] = time.perf_counter() - t
    labels = np.full(len(z), -1, dtype=np.int32)
    strength = np.zeros(len(z), dtype=np.float32)
    labels[fit_idx] = model.labels_
    strength[fit_idx] = model.probabilities_
    t = time.perf_counter()
    if need_predict:
        rest = np.setdiff1d(np.arange(len(z)), fit_idx, assume_unique=True)
        for s in range(0, len(rest), CHUNK):
            r = rest[s : s + CHUNK]
            lab, prob = hdbscan.approximate_predict(model, z[r].astype(np.float64))
            labels[r] = lab
            strength[r] = prob
    info["timings"]["assign"] = time.perf_counter() - t
    return labels, np.clip(strength, 0.0, 1.0)


def _run_dbscan(z: np.ndarray, fit_idx: np.ndarray, p: ClusterParams, info: dict) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import DBSCAN
    from sklearn.neighbors import NearestNeighbors

    zf = z[fit_idx]
    n_fit = len(zf)
    ms = p.min_samples if p.min_samples is not None else 10
    ms = max(1, min(ms, n_fit))
    info["effective_params"]["min_samples"] = int(ms)
    t = time.perf_counter()
    if p.eps is None:
        nn = NearestNeighbors(n_neighbors=ms).fit(zf)
        q = sample_indices(n_fit, p.eps_sample, p.seed + 1)
        kd = nn.kneighbors(zf[q], n_neighbors=ms, return_distance=True)[0][:, -1]
        eps = knee_eps(kd)
        info["eps_source"] = f"knee of the k-distance curve (k={ms}, {len(q)} query points)"
        info["kdist_quantiles"] = {str(qq): float(np.quantile(kd, qq)) for qq in (0.1, 0.5, 0.9, 0.99)}
    else:
        eps = float(p.eps)
        info["eps_source"] = "given"
    info["eps"] = eps
    info["effective_params"]["eps"] = eps
    info["timings"]["eps"] = time.perf_counter() - t
    t = time.perf_counter()
    model = DBSCAN(eps=eps, min_samples=ms).fit(zf)
    info["timings"]["cluster_fit"] = time.perf_counter() - t
    t = time.perf_counter()
    labels = np.full(len(z), -1, dtype=np.int32)
    strength = np.zeros(len(z), dtype=np.float32)
    labels[fit_idx] = model.labels_
    core = fit_idx[model.core_sample_indices_]
    strength[core] = 1.0
    if len(core):
        is_core = np.zeros(len(z), dtype=bool)
        is_core[core] = True
        others = np.where(~is_core)[0]
        in_fit = np.zeros(len(z), dtype=bool)
        in_fit[fit_idx] = True
        nn = NearestNeighbors(n_neighbors=1).fit(z[core])
        for s in range(0, len(others), CHUNK):
            r = others[s : s + CHUNK]
            dist, j = nn.kneighbors(z[r], n_neighbors=1)
            dist, j = dist[:, 0], j[:, 0]
            near = dist <= eps
            # border points of the fit keep DBSCAN's own label; unfitted rows take the nearest core's
            new = r[~in_fit[r] & near]
            labels[new] = labels[core[j[~in_fit[r] & near]]]
            member = near & (labels[r] >= 0)
            strength[r[member]] = 1.0 - dist[member] / eps
    info["n_core_points"] = int(len(core))
    info["timings"]["assign"] = time.perf_counter() - t
    return labels, np.clip(strength, 0.0, 1.0).astype(np.float32)


_RUNNERS = {"kmeans": _run_kmeans, "hdbscan": _run_hdbscan, "dbscan": _run_dbscan}


def fit_clusters(vectors: np.ndarray, params: dict[str, Any] | ClusterParams | None) -> ClusterResult:
    """Cluster ``vectors`` (n x dim) with ``params`` (a dict of ``ClusterParams`` fields).

    Returns labels (-1 = noise) ordered by cluster size, membership strength in [0, 1], centres in
    the input space and an ``info`` dict: effective parameters and their hash, sample sizes,
    timings per stage (seconds), eps (DBSCAN), warnings.
    """
    t0 = time.perf_counter()
    p = params if isinstance(params, ClusterParams) else ClusterParams.from_dict(params)
    x = _as_matrix(vectors)
    n, dim = x.shape
    reduce = p.effective_reduce
    eff = p.to_dict()
    eff["reduce"] = reduce
    info: dict[str, Any] = {"algorithm": p.algorithm, "n": n, "dim": dim, "timings": {}, "warnings": [],
                            "effective_params": eff}
    if n == 0:
        info["fit_sample_size"] = 0
        info["params_hash"] = params_hash(eff)
        return ClusterResult(np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros((0, dim), np.float32), info)

    fit_idx = sample_indices(n, p.fit_sample, p.seed)
    info["fit_sample_size"] = int(len(fit_idx))
    info["assigned_size"] = int(n - len(fit_idx))

    # reduction: UMAP needs a few rows to build a graph; fall back to PCA on tiny inputs
    if reduce == "umap" and len(fit_idx) <= max(p.reduce_dims + 2, 16):
        info["warnings"].append(f"only {len(fit_idx)} rows: UMAP reduction replaced by PCA")
        reduce = eff["reduce"] = "pca"
    if reduce != "none" and p.reduce_dims >= dim:
        info["warnings"].append(f"reduce_dims={p.reduce_dims} >= input dims {dim}: no reduction")
        reduce = eff["reduce"] = "none"
    if reduce == "none":
        z = x
    else:
        t = time.perf_counter()
        model = _reducer(p, reduce, len(fit_idx), dim)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # UMAP: "n_jobs overridden by random_state"
            zf = np.asarray(model.fit_transform(x[fit_idx]), dtype=np.float32)
        info["timings"]["reduce_fit"] = time.perf_counter() - t
        t = time.perf_counter()
        if len(fit_idx) == n:
            z = zf
        else:
            z = np.empty((n, zf.shape[1]), dtype=np.float32)
            z[fit_idx] = zf
            rest = np.setdiff1d(np.arange(n), fit_idx, assume_unique=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                z[rest] = _transform_chunks(model, x[rest])
        info["timings"]["reduce_transform"] = time.perf_counter() - t
        info["reduced_dims"] = int(z.shape[1])
    if p.algorithm != "kmeans" and reduce == "none" and dim > 50:
        info["warnings"].append(f"{p.algorithm} on raw {dim}-d vectors is slow and usually poor; consider reduce='umap'")

    labels, strength = _RUNNERS[p.algorithm](z, fit_idx, p, info)
    labels = relabel_by_size(labels)
    strength = np.where(labels >= 0, strength, 0.0).astype(np.float32)
    n_clusters = int(labels.max()) + 1 if (labels >= 0).any() else 0
    t = time.perf_counter()
    centers = label_means(x, labels, n_clusters)
    info["timings"]["centers"] = time.perf_counter() - t
    info["n_clusters"] = n_clusters
    info["noise_fraction"] = float((labels < 0).mean())
    info["params_hash"] = params_hash(eff)
    info["timings"]["total"] = time.perf_counter() - t0
    return ClusterResult(labels=labels, strength=strength, centers=centers, info=info)


# --------------------------------------------------------------------------------------------
# how many clusters: stability and the k sweep


def stability(vectors: np.ndarray, params: dict[str, Any] | None = None, n_runs: int = 3,
              sample_size: int = 5000, subsample: float = 0.8) -> float:
    """Agreement of repeated fits: mean pairwise adjusted Rand index (ARI) over ``n_runs`` runs.

    An evaluation set of at most ``sample_size`` rows is drawn once (with ``params['seed']``). Run r
    uses seed ``seed + r`` and is fitted on a different random ``subsample`` fraction (80 %) of that
    set; the other rows are assigned the algorithm's usual way (nearest centre, approximate_predict,
    nearest core point). ARIs compare the labels of the whole evaluation set, noise included as
    its own label. 1.0 = the same partition every time; near 0 = no better than chance.
    """
    from sklearn.metrics import adjusted_rand_score

    if n_runs < 2:
        raise ValueError("stability needs n_runs >= 2")
    base = ClusterParams.from_dict(params).to_dict()
    x = _as_matrix(vectors)
    ev = x[sample_indices(len(x), sample_size, base["seed"])]
    if len(ev) < 3:
        return float("nan")
    runs = []
    for r in range(n_runs):
        pr = dict(base, seed=base["seed"] + r, fit_sample=max(2, int(round(subsample * len(ev)))))
        runs.append(fit_clusters(ev, pr).labels)
    scores = [adjusted_rand_score(runs[i], runs[j]) for i in range(n_runs) for j in range(i + 1, n_runs)]
    return float(np.mean(scores))


def k_sweep(vectors: np.ndarray, ks: list[int] | range, seed: int = 0, sample_size: int = 20000,
            params: dict[str, Any] | None = None, silhouette_sample: int = 5000, n_runs: int = 3,
            stability_sample: int = 3000, threads: int | None = 1) -> list[dict[str, Any]]:
    """K-means for every k in ``ks`` on a sample of at most ``sample_size`` rows.

    Per k: ``silhouette`` (on at most ``silhouette_sample`` of those rows; ``silhouette_sample_size``),
    ``davies_bouldin`` (lower is better), ``calinski_harabasz`` (higher is better), ``inertia``
    (sum of squared distances to the centres, on the sample), ``stability`` (see ``stability``,
    on ``stability_sample`` rows), ``seconds``. ``params`` may carry other K-means settings
    (reduce, n_init ...); ``algorithm`` and ``k`` are set here. Use ``best_k`` to pick one.

    ``threads`` caps the BLAS/OpenMP threads of the sweep's many small fits (default 1; None keeps
    the libraries' defaults). On the shared 2-core machine here K-means's threads spin whenever
    another job holds a core: a sweep of 8 ks on 10,000 rows took 47 s with the default threads and
    10 s with one, under the same load.
    """
    if threads:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads):
            return k_sweep(vectors, ks, seed=seed, sample_size=sample_size, params=params,
                           silhouette_sample=silhouette_sample, n_runs=n_runs, stability_sample=stability_sample,
                           threads=None)
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    x = _as_matrix(vectors)
    xs = x[sample_indices(len(x), sample_size, seed)]
    sil_idx = sample_indices(len(xs), silhouette_sample, seed + 7)
    base = dict(params or {})
    base.update(algorithm="kmeans", seed=seed, fit_sample=max(len(xs), 1))
    out = []
    for k in ks:
        t = time.perf_counter()
        row: dict[str, Any] = {"k": int(k)}
        if k < 2 or k >= len(xs):
            row.update(silhouette=float("nan"), davies_bouldin=float("nan"), calinski_harabasz=float("nan"),
                       inertia=float("nan"), stability=float("nan"), n_clusters=0, seconds=0.0,
                       note=f"k must be in [2, {len(xs) - 1}]")
            out.append(row)
            continue
        res = fit_clusters(xs, dict(base, k=int(k)))
        lab = res.labels
        m = res.n_clusters
        _, d1, _ = nearest_centers(xs, res.centers)
        row["n_clusters"] = m
        row["inertia"] = float((d1.astype(np.float64) ** 2).sum())
        if m >= 2:
            sl = lab[sil_idx]
            row["silhouette"] = float(silhouette_score(xs[sil_idx], sl)) if len(np.unique(sl)) >= 2 else float("nan")
            row["davies_bouldin"] = float(davies_bouldin_score(xs, lab))
            row["calinski_harabasz"] = float(calinski_harabasz_score(xs, lab))
        else:
            row.update(silhouette=float("nan"), davies_bouldin=float("nan"), calinski_harabasz=float("nan"))
        row["silhouette_sample_size"] = int(len(sil_idx))
        row["stability"] = stability(xs, dict(base, k=int(k)), n_runs=n_runs, sample_size=stability_sample) if n_runs >= 2 else float("nan")
        row["sample_size"] = int(len(xs))
        row["seconds"] = time.perf_counter() - t
        out.append(row)
    return out


def best_k(sweep: list[dict[str, Any]], by: str = "silhouette") -> int | None:
    """The k with the best ``by`` score in a ``k_sweep`` result (lowest for davies_bouldin)."""
    rows = [r for r in sweep if np.isfinite(r.get(by, float("nan")))]
    if not rows:
        return None
    pick = min if by == "davies_bouldin" else max
    return int(pick(rows, key=lambda r: r[by])["k"])
