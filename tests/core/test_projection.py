"""Projections: shapes and dtype for every method, tiny-input fallbacks, fit-on-a-sample placement,
determinism. One small UMAP fit for the whole file (numba compiles on first use)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from purify_assets.core.projection import METHODS, fit_indices, knn_neighbours, knn_place, place, project, rest_indices


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One BLAS/OpenMP thread: on a busy 2-core machine t-SNE's threads spin and a 0.2 s fit
    takes 5-10 s (measured here); one thread is also what the results are compared under."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_blobs(n_samples=200, centers=4, n_features=32, cluster_std=1.0, random_state=0)
    return unit(x), y


def fit_rows(n: int, fit_sample: int, seed: int) -> np.ndarray:
    """The rows ``project`` fits on (same draw as the module: default_rng(seed), sorted)."""
    return np.sort(np.random.default_rng(seed).choice(n, size=fit_sample, replace=False))


def placed_near_own_cluster(coords: np.ndarray, y: np.ndarray, fit_idx: np.ndarray) -> float:
    """Share of placed (not fitted) rows whose nearest fitted row, in the projection, has the
    same true cluster."""
    rest = np.setdiff1d(np.arange(len(y)), fit_idx)
    d = ((coords[rest][:, None, :] - coords[fit_idx][None, :, :]) ** 2).sum(axis=2)
    nearest = fit_idx[np.argmin(d, axis=1)]
    return float((y[nearest] == y[rest]).mean())


@pytest.fixture(scope="module")
def tsne2(data):
    x, _ = data
    return project(x, "tsne", 2, seed=0, fit_sample=80)


@pytest.fixture(scope="module")
def umap3(data):
    """The file's only UMAP fit: 3-D, fitted on 120 of 200 rows, the rest placed by k-NN."""
    x, _ = data
    return project(x, "umap", 3, seed=0, fit_sample=120)


@pytest.mark.parametrize("d", [2, 3])
def test_pca_shape_dtype_and_variance_order(data, d):
    x, _ = data
    out = project(x, "pca", d)
    assert out.shape == (len(x), d) and out.dtype == np.float32
    assert np.isfinite(out).all()
    var = out.var(axis=0)
    assert (np.diff(var) <= 1e-6).all()  # components come in order of explained variance


def test_tsne_2d_places_every_row_near_its_cluster(data, tsne2):
    x, y = data
    assert tsne2.shape == (len(x), 2) and tsne2.dtype == np.float32 and np.isfinite(tsne2).all()
    assert placed_near_own_cluster(tsne2, y, fit_rows(len(x), 80, 0)) > 0.95


def test_tsne_3d_shape(data):
    x, y = data
    out = project(x[:60], "tsne", 3, seed=0)
    assert out.shape == (60, 3) and out.dtype == np.float32 and np.isfinite(out).all()
    assert out.std(axis=0).min() > 0  # a real third axis, not zero padding


def test_tsne_fits_under_one_thread_unless_told_otherwise(data, monkeypatch):
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_info, threadpool_limits

    x, _ = data
    seen = []

    def fake_fit(self, xs):  # records the thread limits in force during the fit; cheap stand-in
        seen.append({p["num_threads"] for p in threadpool_info()})
        return np.random.default_rng(0).normal(size=(len(xs), self.n_components))

    monkeypatch.setattr(TSNE, "fit_transform", fake_fit)
    with threadpool_limits(limits=2):
        before = [p["num_threads"] for p in threadpool_info()]
        project(x[:60], "tsne", 2)
        project(x[:60], "tsne", 2, tsne_threads=None)
        after = [p["num_threads"] for p in threadpool_info()]
    assert seen == [{1}, {2}]
    assert before == after  # the limit is lifted after the fit


def test_umap_3d_places_every_row_near_its_cluster(data, umap3):
    x, y = data
    assert umap3.shape == (len(x), 3) and umap3.dtype == np.float32 and np.isfinite(umap3).all()
    assert umap3.std(axis=0).min() > 0
    assert placed_near_own_cluster(umap3, y, fit_rows(len(x), 120, 0)) > 0.95


def test_pca_on_a_sample_transforms_the_rest(data):
    x, _ = data
    full = project(x, "pca", 2, fit_sample=len(x))
    part = project(x, "pca", 2, fit_sample=100)
    assert part.shape == full.shape
    # the same plane up to sign/rotation: distances between rows are nearly preserved
    i, j = np.triu_indices(50, 1)
    df = np.linalg.norm(full[i] - full[j], axis=1)
    dp = np.linalg.norm(part[i] - part[j], axis=1)
    assert np.corrcoef(df, dp)[0, 1] > 0.95


def test_same_seed_same_projection(data, tsne2):
    x, _ = data
    np.testing.assert_array_equal(project(x, "tsne", 2, seed=0, fit_sample=80), tsne2)
    np.testing.assert_array_equal(project(x, "pca", 3, seed=1, fit_sample=50), project(x, "pca", 3, seed=1, fit_sample=50))
    assert not np.array_equal(project(x, "pca", 2, seed=1, fit_sample=50), project(x, "pca", 2, seed=2, fit_sample=50))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # PCA of a single row
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [1, 2, 5])
def test_tiny_inputs_fall_back_to_padded_pca(data, method, n):
    x, _ = data
    for d in (2, 3):
        out = project(x[:n], method, d)
        assert out.shape == (n, d) and out.dtype == np.float32 and np.isfinite(out).all()
        expect = project(x[:n], "pca", d)
        np.testing.assert_array_equal(out, expect)
    if n == 1:
        assert (out == 0).all()  # one row: nothing to spread, zero-padded


def test_empty_input_and_bad_arguments(data):
    x, _ = data
    assert project(np.zeros((0, 8), np.float32), "umap", 3).shape == (0, 3)
    with pytest.raises(ValueError, match="unknown"):
        project(x, "mds", 2)
    with pytest.raises(ValueError, match="n_components"):
        project(x, "pca", 0)
    with pytest.raises(ValueError, match="fit_sample"):
        project(x, "pca", 2, fit_sample=0)
    with pytest.raises(ValueError, match="2-D"):
        project(x[0], "pca", 2)


def test_knn_place_lands_on_the_weighted_neighbours():
    x_fit = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=np.float32)
    y_fit = np.array([[1.0, 1.0], [5.0, 5.0], [9.0, 9.0]], dtype=np.float32)
    # a row on top of a fitted row takes its position; k=1 copies the nearest
    out = knn_place(x_fit, y_fit, np.array([[0.0, 0.0], [9.0, 1.0]], np.float32), knn=3)
    np.testing.assert_allclose(out[0], [1.0, 1.0], atol=1e-4)
    out1 = knn_place(x_fit, y_fit, np.array([[9.0, 1.0]], np.float32), knn=1)
    np.testing.assert_allclose(out1[0], [5.0, 5.0])
    # knn larger than the fitted rows is clipped
    assert knn_place(x_fit, y_fit, np.ones((4, 2), np.float32), knn=50).shape == (4, 2)


def test_knn_neighbours_match_an_exact_search_and_put_duplicates_first():
    """The BLAS search picks the same neighbours as scikit-learn's exact one, in the same order, and a
    row equal to a fitted row gets it at distance 0 (weight ~1), not float32 cancellation noise."""
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(5)
    x_fit = rng.standard_normal((700, 48)).astype(np.float32) * 3 + 10  # far from the origin: |a|^2 large
    x_new = np.vstack([rng.standard_normal((300, 48)).astype(np.float32) * 3 + 10, x_fit[[4, 99, 650]]])
    j, w = knn_neighbours(x_fit, x_new, knn=7)
    dist, ref = NearestNeighbors(n_neighbors=7).fit(x_fit).kneighbors(x_new)
    np.testing.assert_array_equal(j, ref)
    expected = 1.0 / (dist + 1e-6)
    np.testing.assert_allclose(w, expected / expected.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(j[-3:, 0], [4, 99, 650])
    assert (w[-3:, 0] > 0.999).all()
    # more neighbours asked than fitted rows: every fitted row, nearest first
    j_all, _ = knn_neighbours(x_fit[:5], x_new[:3], knn=9)
    assert j_all.shape == (3, 5) and all(sorted(r) == [0, 1, 2, 3, 4] for r in j_all.tolist())


def test_pca_place_recovers_the_fitted_components():
    """PCA coordinates of new rows from the fitted rows and their coordinates alone match a PCA
    fitted on those rows, also for a fit with fewer rows than dimensions and a zero-padded axis."""
    from sklearn.decomposition import PCA

    from purify_assets.core.projection import pca_place

    rng = np.random.default_rng(2)
    x = (rng.standard_normal((400, 32)) * np.linspace(5, 0.5, 32)).astype(np.float32)
    model = PCA(n_components=3, random_state=0).fit(x[:300])
    np.testing.assert_allclose(pca_place(x[:300], model.transform(x[:300]), x[300:]), model.transform(x[300:]), atol=1e-4)
    tiny = PCA(n_components=2).fit(x[:2])  # 2 rows: one real component, the second is zero
    y_tiny = np.hstack([tiny.transform(x[:2])[:, :1], np.zeros((2, 1))])
    out = pca_place(x[:2], y_tiny, x[2:6])
    np.testing.assert_allclose(out[:, 0], tiny.transform(x[2:6])[:, 0], atol=1e-4)
    assert (out[:, 1] == 0).all()


# ----------------------------------------------------------------- adding rows to an existing map


def test_fit_indices_are_the_rows_project_fits_on(data):
    x, _ = data
    np.testing.assert_array_equal(fit_indices(len(x), "umap", fit_sample=120, seed=0), fit_rows(len(x), 120, 0))
    # t-SNE is capped further by tsne_max_fit; below the cap every row is fitted
    np.testing.assert_array_equal(fit_indices(len(x), "tsne", fit_sample=150, tsne_max_fit=80, seed=3), fit_rows(len(x), 80, 3))
    np.testing.assert_array_equal(fit_indices(50, "pca", fit_sample=120), np.arange(50))


def test_place_reproduces_project_for_rows_outside_the_fit(data, tsne2):
    """Placing the rows a projection left out of its fit gives the coordinates ``project`` gave
    them: exactly for t-SNE / UMAP (the same k-NN placement), to float precision for PCA (the same
    components refitted on the same rows)."""
    x, _ = data
    fit = fit_indices(len(x), "tsne", fit_sample=80)
    rest = np.setdiff1d(np.arange(len(x)), fit)
    np.testing.assert_array_equal(place(x[fit], tsne2[fit], x[rest], "tsne", 2), tsne2[rest])
    # one neighbour search serves every map fitted on the same rows
    shared = knn_neighbours(x[fit], x[rest])
    assert shared[0].shape == shared[1].shape == (len(rest), 10)
    np.testing.assert_allclose(shared[1].sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(place(x[fit], tsne2[fit], x[rest], "tsne", 2, neighbours=shared), tsne2[rest], atol=1e-6)
    for d in (2, 3):
        pca = project(x, "pca", d, seed=4, fit_sample=60)
        fit = fit_indices(len(x), "pca", fit_sample=60, seed=4)
        rest = np.setdiff1d(np.arange(len(x)), fit)
        out = place(x[fit], pca[fit], x[rest], "pca", d)
        assert out.shape == (len(rest), d) and out.dtype == np.float32
        np.testing.assert_allclose(out, pca[rest], atol=1e-5)


def test_place_on_a_tiny_fit_uses_its_pca_and_checks_shapes(data):
    x, _ = data
    y = project(x[:4], "umap", 2)  # 4 rows: project fell back to PCA
    from sklearn.decomposition import PCA

    expected = PCA(n_components=2, random_state=0).fit(x[:4]).transform(x[4:10])
    np.testing.assert_allclose(place(x[:4], y, x[4:10], "umap", 2), expected, atol=1e-5)
    assert place(x[:4], y, np.zeros((0, x.shape[1]), np.float32), "umap", 2).shape == (0, 2)
    with pytest.raises(ValueError, match="y_fit"):
        place(x[:4], y[:, :1], x[4:6], "tsne", 2)
    with pytest.raises(ValueError, match="dimension"):
        place(x[:4], y, x[4:6, :5], "tsne", 2)
    with pytest.raises(ValueError, match="unknown"):
        place(x[:4], y, x[4:6], "mds", 2)


def test_project_takes_a_shared_neighbour_search_and_gives_the_same_map(data, tsne2):
    """The projection stage searches the placement neighbours once for the 2-D and 3-D maps fitted on
    the same rows; handing them to ``project`` changes nothing in the result."""
    x, _ = data
    fit = fit_indices(len(x), "tsne", fit_sample=80)
    rest = rest_indices(len(x), fit)
    np.testing.assert_array_equal(rest, np.setdiff1d(np.arange(len(x)), fit))
    shared = knn_neighbours(x[fit], x, rows=rest)
    alone = knn_neighbours(x[fit], x[rest])
    np.testing.assert_array_equal(shared[0], alone[0])
    np.testing.assert_allclose(project(x, "tsne", 2, seed=0, fit_sample=80, neighbours=shared), tsne2, atol=1e-6)
    with pytest.raises(ValueError, match="neighbours cover 5 rows, but 120 rows lie outside"):
        project(x, "tsne", 2, seed=0, fit_sample=80, neighbours=(shared[0][:5], shared[1][:5]))


def test_umap_functions_use_numba_disk_cache():
    """umap's numba functions are declared without cache=True; import_umap switches the disk cache
    on for them, so a new process (every Dagster run is one) reuses what an earlier one compiled."""
    from numba.core.caching import FunctionCache
    from numba.core.registry import CPUDispatcher

    from purify_assets.core.projection import import_umap

    umap = import_umap()
    assert isinstance(umap.umap_.smooth_knn_dist._cache, FunctionCache)  # declared without cache=True
    dispatchers = [obj for name, mod in list(__import__("sys").modules.items()) if name.startswith("umap.")
                   for obj in vars(mod).values() if isinstance(obj, CPUDispatcher)]
    assert len(dispatchers) > 50 and all(isinstance(d._cache, FunctionCache) for d in dispatchers)
    assert import_umap() is umap  # once per process


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_umap_neighbours_match_an_exact_search(metric):
    """The exact graph handed to UMAP: every row first, then its k - 1 nearest others, with
    sklearn's distances; blocks of any size give the same graph."""
    from sklearn.neighbors import NearestNeighbors

    from purify_assets.core.projection import umap_neighbours

    x, _ = make_blobs(n_samples=300, centers=5, n_features=16, random_state=1)
    x = x.astype(np.float32)
    idx, dist = umap_neighbours(x, 8, metric)
    ref_d, ref_i = NearestNeighbors(n_neighbors=8, metric=metric, algorithm="brute").fit(x).kneighbors(x)
    assert idx.shape == dist.shape == (300, 8) and idx.dtype == np.int32 and dist.dtype == np.float32
    np.testing.assert_array_equal(idx[:, 0], np.arange(300))
    assert (dist[:, 0] == 0).all() and (np.diff(dist, axis=1) >= -1e-6).all()
    np.testing.assert_allclose(dist, ref_d, atol=2e-4)
    assert (np.sort(idx, axis=1) == np.sort(ref_i, axis=1)).mean() > 0.99  # ties aside
    small = umap_neighbours(x, 8, metric, block_floats=1000)  # 3 rows per block
    np.testing.assert_array_equal(small[0], idx)
    dup = np.vstack([x[:1], x[:1], x[1:20]])  # duplicates: each copy still lists itself first
    np.testing.assert_array_equal(umap_neighbours(dup, 3, metric)[0][:2, 0], [0, 1])
    with pytest.raises(ValueError, match="exact neighbours support"):
        umap_neighbours(x, 8, "manhattan")
    with pytest.raises(ValueError, match="k must be between 1 and the number of rows"):
        umap_neighbours(x[:5], 6, metric)


def test_umap_fits_on_the_exact_graph_and_takes_a_shared_one(data, umap3):
    """With k-NN placement UMAP fits on the exact neighbour graph instead of running NN-descent:
    a graph computed once outside (as the stage does for the 2-D and 3-D maps) gives the same map,
    and a graph of the wrong shape is refused."""
    from purify_assets.core.projection import umap_neighbours

    x, _ = data
    fit = fit_indices(len(x), "umap", fit_sample=120)
    graph = umap_neighbours(x[fit], 15, "cosine")
    np.testing.assert_allclose(project(x, "umap", 3, seed=0, fit_sample=120, umap_knn=graph), umap3, atol=1e-5)
    with pytest.raises(ValueError, match=r"umap_knn has shape \(120, 10\); the fit needs \(120, 15\)"):
        project(x, "umap", 3, seed=0, fit_sample=120, umap_knn=umap_neighbours(x[fit], 10, "cosine"))


@pytest.mark.parametrize("n", [300, 20])
def test_pca_components_match_scikit_learns_exact_pca_with_its_signs(n):
    """The exact PCA (scatter or Gram eigenvectors) gives scikit-learn's full-SVD PCA coordinates,
    signs included, for more rows than dimensions and for fewer."""
    from sklearn.decomposition import PCA

    from purify_assets.core.projection import pca_components

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((n, 32)) * np.linspace(6, 0.5, 32) + 3.0).astype(np.float32)
    want = PCA(n_components=3, svd_solver="full").fit(x)
    mean, components = pca_components(x, 3)
    np.testing.assert_allclose(components, want.components_, atol=1e-5)
    np.testing.assert_allclose((x - mean) @ components.T, want.transform(x), atol=1e-3)
    np.testing.assert_allclose(project(x, "pca", 3, fit_sample=n), want.transform(x), atol=1e-3)


def test_only_a_search_large_enough_to_repay_numba_asks_for_the_compiled_selection(monkeypatch):
    import purify_assets.core.projection as projection

    asked: list = []
    real = projection.k_smallest
    monkeypatch.setattr(projection, "k_smallest", lambda score, k, compiled=None: asked.append(compiled) or real(score, k, compiled))
    rng = np.random.default_rng(8)
    x_fit, x_new = rng.standard_normal((200, 8)).astype(np.float32), rng.standard_normal((50, 8)).astype(np.float32)
    monkeypatch.setattr(projection, "COMPILED_WORTH_FROM_SCORES", 50 * 200)  # this search's 10,000 scores
    big = knn_neighbours(x_fit, x_new, knn=5)
    assert asked and set(asked) == {True}
    asked.clear()
    monkeypatch.setattr(projection, "COMPILED_WORTH_FROM_SCORES", 50 * 200 + 1)
    small = knn_neighbours(x_fit, x_new, knn=5)
    assert asked and set(asked) == {None}  # left to k_smallest: compiled only if numba is loaded already
    np.testing.assert_array_equal(big[0], small[0])
