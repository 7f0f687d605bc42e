"""Clustering on synthetic blobs with known truth: recovery, sampling, determinism, noise, k choice.

Data come from ``sklearn.datasets.make_blobs`` and are L2-normalized (the clustering runs in the
cosine space of sentence embeddings). UMAP compiles with numba on first use, so the file makes a
single small UMAP-reduced fit (a module-scoped fixture); everything else uses K-means, DBSCAN or
PCA-reduced HDBSCAN.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from purify_assets.core.clustering import (
    ClusterParams,
    best_k,
    fit_clusters,
    k_sweep,
    knee_eps,
    relabel_by_size,
    stability,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One BLAS/OpenMP thread: on a busy 2-core machine spinning threads make small fits many
    times slower (t-SNE and K-means were measured 5-40x slower under load)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def blobs(n: int = 600, k: int = 5, dim: int = 32, std: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_blobs(n_samples=n, centers=k, n_features=dim, cluster_std=std, random_state=seed)
    return unit(x), y


def blobs_with_far_outliers(seed: int = 0, n_out: int = 8) -> tuple[np.ndarray, np.ndarray, int]:
    """Five tight blobs on one side of the sphere and ``n_out`` scattered points on the far side
    (fewer than any default minimum cluster size, so they cannot form a cluster of their own).
    Returns (vectors, truth of the blob rows, number of blob rows); outliers come last."""
    rng = np.random.default_rng(seed)
    x, y = make_blobs(n_samples=600, centers=5, n_features=32, cluster_std=0.15, center_box=(-1.5, 1.5),
                      random_state=seed)
    x[:, 0] += 6.0
    out = rng.normal(size=(n_out, 32))
    out[:, 0] = -np.abs(out[:, 0]) * 3.0
    return unit(np.vstack([x, out])), y, len(x)


@pytest.fixture(scope="module")
def clean() -> tuple[np.ndarray, np.ndarray]:
    return blobs()


# ------------------------------------------------------------------------------------ K-means


def test_kmeans_recovers_blobs(clean):
    x, y = clean
    res = fit_clusters(x, {"algorithm": "kmeans", "k": 5})
    assert res.labels.dtype == np.int32 and res.labels.shape == (len(x),)
    assert adjusted_rand_score(y, res.labels) > 0.9
    assert res.info["kmeans_variant"] == "full"
    assert res.centers.shape == (5, x.shape[1]) and res.centers.dtype == np.float32
    assert res.strength.dtype == np.float32 and (res.strength >= 0).all() and (res.strength <= 1).all()
    # centres are the members' means in the input space
    for c in range(5):
        np.testing.assert_allclose(res.centers[c], x[res.labels == c].mean(axis=0), atol=1e-5)
    # labels are ordered by size, largest first
    sizes = np.bincount(res.labels)
    assert (np.diff(sizes) <= 0).all()


def test_minibatch_above_threshold_gives_the_same_quality(clean):
    x, y = clean
    res = fit_clusters(x, {"k": 5, "minibatch_above": 100, "minibatch_size": 256})
    assert res.info["kmeans_variant"] == "minibatch"
    assert adjusted_rand_score(y, res.labels) > 0.9
    full = fit_clusters(x, {"k": 5})
    assert adjusted_rand_score(full.labels, res.labels) > 0.9


def test_fit_on_sample_assigns_every_row_and_matches_a_full_fit():
    # wider blobs, so the two fits have something to disagree about
    x, y = blobs(n=900, std=3.0, seed=1)
    full = fit_clusters(x, {"k": 5})
    part = fit_clusters(x, {"k": 5, "fit_sample": 200})
    assert part.info["fit_sample_size"] == 200 and part.info["assigned_size"] == 700
    assert part.labels.shape == (900,) and (part.labels >= 0).all()
    assert adjusted_rand_score(full.labels, part.labels) > 0.95
    assert adjusted_rand_score(y, part.labels) > 0.9


def test_same_seed_same_labels_for_every_algorithm():
    x, _, _ = blobs_with_far_outliers()
    for p in ({"k": 5, "fit_sample": 300}, {"k": 5, "minibatch_above": 100},
              {"algorithm": "dbscan", "reduce": "none", "fit_sample": 400},
              {"algorithm": "hdbscan", "reduce": "pca", "fit_sample": 400}):
        a, b = fit_clusters(x, p), fit_clusters(x, p)
        np.testing.assert_array_equal(a.labels, b.labels, err_msg=str(p))
        np.testing.assert_array_equal(a.strength, b.strength, err_msg=str(p))
        assert a.info["params_hash"] == b.info["params_hash"]


def test_params_hash_changes_with_the_parameters(clean):
    x, _ = clean
    a = fit_clusters(x[:100], {"k": 3})
    b = fit_clusters(x[:100], {"k": 4})
    assert a.info["params_hash"] != b.info["params_hash"]


def test_k_larger_than_rows_is_reduced_with_a_warning():
    x, _ = blobs(n=6, k=2)
    res = fit_clusters(x, {"k": 10})
    assert res.n_clusters <= 6
    assert any("exceeds" in w for w in res.info["warnings"])


def test_empty_input_and_bad_vectors():
    res = fit_clusters(np.zeros((0, 8), np.float32), {"k": 3})
    assert res.labels.shape == (0,) and res.centers.shape == (0, 8)
    with pytest.raises(ValueError, match="2-D"):
        fit_clusters(np.zeros(8, np.float32), {})
    bad = np.ones((5, 4), np.float32)
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        fit_clusters(bad, {"k": 2})
    # a bad row far down, outside the fit sample, is found too (not given a label and a NaN centre)
    big = np.random.default_rng(0).normal(size=(70_000, 2)).astype(np.float32)
    big[69_000, 1] = np.inf
    with pytest.raises(ValueError, match="1 row.*row 69000"):
        fit_clusters(big, {"k": 2, "fit_sample": 500})


# ------------------------------------------------------------------------------------ DBSCAN


def test_dbscan_auto_eps_finds_blobs_and_marks_far_outliers():
    x, y, nb = blobs_with_far_outliers(seed=2)
    res = fit_clusters(x, {"algorithm": "dbscan", "reduce": "none"})
    assert res.info["eps_source"].startswith("knee")
    assert res.info["eps"] > 0
    assert res.n_clusters == 5
    assert adjusted_rand_score(y, res.labels[:nb]) > 0.9
    assert (res.labels[nb:] == -1).all(), res.labels[nb:]
    assert (res.labels[:nb] >= 0).mean() > 0.98
    assert res.info["noise_fraction"] == pytest.approx((res.labels < 0).mean())
    assert (res.strength[res.labels < 0] == 0).all()


def test_dbscan_fit_on_sample_assigns_the_rest_by_nearest_core_point():
    x, y, nb = blobs_with_far_outliers(seed=3)
    res = fit_clusters(x, {"algorithm": "dbscan", "reduce": "none", "fit_sample": 250})
    assert res.info["assigned_size"] == len(x) - 250
    assert adjusted_rand_score(y, res.labels[:nb]) > 0.9
    assert (res.labels[nb:] == -1).all()


def test_dbscan_given_eps_is_used():
    x, _, _ = blobs_with_far_outliers()
    res = fit_clusters(x, {"algorithm": "dbscan", "reduce": "none", "eps": 1e-4})
    assert res.info["eps"] == 1e-4 and res.info["eps_source"] == "given"
    assert res.n_clusters == 0 and (res.labels == -1).all()


def test_knee_eps_picks_the_bend_of_the_curve():
    flat = np.full(95, 0.1)
    steep = np.linspace(1.0, 5.0, 5)
    eps = knee_eps(np.concatenate([flat, steep]))
    assert 0.1 <= eps < 1.0
    assert knee_eps(np.full(10, 0.3)) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        knee_eps(np.array([]))


# ------------------------------------------------------------------------------------ HDBSCAN


@pytest.fixture(scope="module")
def hdbscan_umap():
    """The one UMAP-reduced fit of this file: 300 of 500 rows fitted, the rest transformed and
    assigned with ``approximate_predict``."""
    x, y = blobs(n=500, seed=4)
    return x, y, fit_clusters(x, {"algorithm": "hdbscan", "reduce": "umap", "fit_sample": 300})


def test_hdbscan_with_umap_reduction_finds_the_blobs(hdbscan_umap):
    x, y, res = hdbscan_umap
    assert res.info["reduced_dims"] == 10
    assert res.info["fit_sample_size"] == 300 and res.labels.shape == (500,)
    assert res.info["effective_params"]["min_cluster_size"] == 10
    assert res.n_clusters == 5
    assert adjusted_rand_score(y, res.labels) > 0.9
    assert (res.strength >= 0).all() and (res.strength <= 1).all()
    assert "reduce_fit" in res.info["timings"] and "reduce_transform" in res.info["timings"]


def test_hdbscan_with_pca_reduction_finds_blobs_and_noise():
    x, y, nb = blobs_with_far_outliers(seed=5)
    res = fit_clusters(x, {"algorithm": "hdbscan", "reduce": "pca", "fit_sample": 500})
    assert res.info["reduced_dims"] == 10
    assert res.n_clusters == 5
    assert adjusted_rand_score(y, res.labels[:nb]) > 0.9
    assert (res.labels[nb:] == -1).all(), res.labels[nb:]
    assert res.info["noise_fraction"] > 0


def test_umap_on_tiny_input_falls_back_to_pca():
    x, _ = blobs(n=12, k=2)
    res = fit_clusters(x, {"algorithm": "hdbscan"})
    assert any("replaced by PCA" in w for w in res.info["warnings"])
    assert res.info["effective_params"]["reduce"] == "pca"
    assert res.labels.shape == (12,)


# --------------------------------------------------------------------------------- parameters


def test_from_dict_refuses_unknown_keys_with_a_clear_message():
    with pytest.raises(ValueError) as err:
        ClusterParams.from_dict({"k": 5, "n_clusters": 5, "algoritm": "kmeans"})
    msg = str(err.value)
    assert "n_clusters" in msg and "algoritm" in msg and "known keys" in msg and "'k'" in msg
    with pytest.raises(ValueError, match="unknown key"):
        fit_clusters(np.eye(4, dtype=np.float32), {"clusters": 2})


@pytest.mark.parametrize("bad, field", [
    ({"algorithm": "spectral"}, "algorithm"), ({"k": 0}, "k"), ({"k": 2.5}, "k"), ({"reduce": "tsne"}, "reduce"),
    ({"eps": -1.0}, "eps"), ({"min_cluster_size": 1}, "min_cluster_size"), ({"seed": "x"}, "seed"),
    ({"cluster_selection_method": "best"}, "cluster_selection_method"),
])
def test_from_dict_refuses_bad_values_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        ClusterParams.from_dict(bad)


def test_defaults_and_effective_reduction():
    p = ClusterParams.from_dict(None)
    assert (p.algorithm, p.k, p.seed, p.fit_sample, p.minibatch_above) == ("kmeans", 8, 0, 50000, 20000)
    assert p.effective_reduce == "none"
    assert ClusterParams.from_dict({"algorithm": "hdbscan"}).effective_reduce == "umap"
    assert ClusterParams.from_dict({"algorithm": "dbscan", "reduce": "pca"}).effective_reduce == "pca"
    assert ClusterParams.from_dict(p.to_dict()) == p


def test_relabel_by_size_keeps_noise_and_orders_by_size():
    out = relabel_by_size(np.array([7, 7, 3, -1, 3, 3, 9]))
    np.testing.assert_array_equal(out, [1, 1, 0, -1, 0, 0, 2])


# ------------------------------------------------------------------------- k sweep, stability


def test_k_sweep_and_best_k_pick_the_true_k(clean):
    x, _ = clean
    sweep = k_sweep(x, range(1, 10), seed=0, n_runs=2, stability_sample=300)
    assert [r["k"] for r in sweep] == list(range(1, 10))
    assert "note" in sweep[0] and np.isnan(sweep[0]["silhouette"])  # k=1 is refused, not fitted
    for r in sweep[1:]:
        assert {"silhouette", "davies_bouldin", "calinski_harabasz", "inertia", "stability", "seconds"} <= set(r)
        assert r["silhouette_sample_size"] == len(x)
    assert best_k(sweep) == 5
    assert best_k(sweep, by="davies_bouldin") == 5
    assert best_k(sweep, by="calinski_harabasz") == 5
    # inertia falls as k grows
    inertia = [r["inertia"] for r in sweep[1:]]
    assert all(b <= a * 1.001 for a, b in zip(inertia, inertia[1:]))
    assert best_k([{"k": 2, "silhouette": float("nan")}]) is None


def test_stability_is_high_for_blobs_and_low_for_uniform_noise(clean):
    x, _ = clean
    high = stability(x, {"k": 5}, n_runs=3, sample_size=400)
    noise = unit(np.random.default_rng(0).uniform(-1, 1, size=(400, 32)))
    low = stability(noise, {"k": 5}, n_runs=3, sample_size=400)
    assert high > 0.95
    assert low < 0.6
    assert high > low + 0.3
    with pytest.raises(ValueError):
        stability(x, {"k": 5}, n_runs=1)


def test_k_sweep_runs_under_the_thread_cap_and_lifts_it_afterwards(clean, monkeypatch):
    """The sweep's fits run with ``threads`` BLAS/OpenMP threads (1 by default), with the same
    figures as under the libraries' defaults; the cap is gone once the sweep returns."""
    from threadpoolctl import threadpool_info

    import purify_assets.core.clustering as cl

    x, _ = clean
    seen = []
    real_fit = cl.fit_clusters

    def spy(*args, **kwargs):
        seen.append({p["num_threads"] for p in threadpool_info()})
        return real_fit(*args, **kwargs)

    before = [p["num_threads"] for p in threadpool_info()]
    monkeypatch.setattr(cl, "fit_clusters", spy)
    capped = k_sweep(x, [4, 5, 6], seed=0, n_runs=2, stability_sample=300)
    assert seen and all(s == {1} for s in seen)
    assert [p["num_threads"] for p in threadpool_info()] == before
    seen.clear()
    free = k_sweep(x, [4, 5, 6], seed=0, n_runs=2, stability_sample=300, threads=None)
    assert seen and all(s == set(before) for s in seen)
    for a, b in zip(capped, free):
        for key in ("silhouette", "davies_bouldin", "calinski_harabasz", "stability"):
            assert a[key] == pytest.approx(b[key], abs=1e-6)
