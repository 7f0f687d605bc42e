"""Cluster metrics on planted structure: separated blobs, random labels, an adjacent pair, a tiny
cluster, a planted outlier, noise rows, and cluster cards ordered by distance to the centre."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import silhouette_score

from purify_assets.core.metrics import (cluster_cards, global_metrics, per_cluster_metrics, sample_silhouettes,
                                        silhouette_values)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One BLAS thread: pairwise distances on a busy 2-core machine are faster without spinning."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_blobs(n_samples=600, centers=5, n_features=32, cluster_std=1.0, random_state=0)
    return unit(x), y


@pytest.fixture(scope="module")
def planted() -> dict:
    """Clusters in 16-d cosine space: 0 and 1 adjacent (centres at cosine 0.89), 2 and 3 far from
    everything, 4 tiny (3 rows); row ``outlier`` is labelled 2 but lies far from 2's centre."""
    rng = np.random.default_rng(0)
    e = np.eye(16)
    centres = [e[0], unit((e[0] + 0.5 * e[1])[None])[0], e[2], e[3]]
    xs, ys = [], []
    for c, centre in enumerate(centres):
        xs.append(centre + rng.normal(scale=0.05, size=(100, 16)))
        ys += [c] * 100
    xs.append(e[5] + rng.normal(scale=0.05, size=(3, 16)))
    ys += [4] * 3
    xs.append((e[2] + 1.5 * e[7])[None])
    ys.append(2)
    return {"x": unit(np.vstack(xs)), "y": np.array(ys), "outlier": len(ys) - 1}


# -------------------------------------------------------------------------------- global


def test_silhouette_high_for_separated_blobs_near_zero_for_random_labels(blobs):
    x, y = blobs
    good = global_metrics(x, y, sample_size=300)
    rand = global_metrics(x, np.random.default_rng(0).integers(0, 5, len(y)), sample_size=300)
    assert good["silhouette"] > 0.6
    assert abs(rand["silhouette"]) < 0.1
    assert good["davies_bouldin"] < rand["davies_bouldin"]
    assert good["calinski_harabasz"] > 10 * rand["calinski_harabasz"]
    assert good["n_clusters"] == 5 and good["noise_fraction"] == 0.0
    assert good["balance_entropy"] == pytest.approx(1.0) and good["gini"] == pytest.approx(0.0, abs=1e-9)


def test_silhouette_is_sampled_with_a_ci_around_the_estimate(blobs):
    x, _ = blobs
    y = np.random.default_rng(1).integers(0, 3, len(x))  # a labelling with a wide spread of values
    g = global_metrics(x, y, sample_size=200, seed=3)
    assert g["silhouette_sample_size"] == 200
    assert g["silhouette_ci_low"] <= g["silhouette"] <= g["silhouette_ci_high"]
    assert g["silhouette_ci_high"] - g["silhouette_ci_low"] > 0
    full = global_metrics(x, y, sample_size=10_000)
    assert full["silhouette_sample_size"] == len(x)
    assert full["silhouette"] == pytest.approx(silhouette_score(x, y), abs=1e-5)


def test_noise_is_counted_and_left_out_of_the_scores(blobs):
    x, y = blobs
    lab = y.copy()
    lab[::10] = -1
    g = global_metrics(x, lab, sample_size=10_000)
    assert g["n_noise"] == 60 and g["noise_fraction"] == pytest.approx(0.1) and g["n"] == 600
    assert g["n_clusters"] == 5
    keep = lab >= 0
    assert g["silhouette"] == pytest.approx(silhouette_score(x[keep], lab[keep]), abs=1e-5)


def test_one_cluster_leaves_scores_undefined(blobs):
    x, _ = blobs
    g = global_metrics(x, np.zeros(len(x), dtype=int))
    assert g["n_clusters"] == 1 and np.isnan(g["silhouette"]) and np.isnan(g["davies_bouldin"])
    g = global_metrics(x, np.full(len(x), -1))
    assert g["n_clusters"] == 0 and g["noise_fraction"] == 1.0


def test_balance_reflects_uneven_sizes(planted):
    g = global_metrics(planted["x"], planted["y"])
    assert g["balance_entropy"] < 0.95 and g["gini"] > 0.1
    assert g["min_size"] == 3 and g["max_size"] == 101


@pytest.mark.parametrize("labels, match", [
    (np.zeros(5, dtype=int), "shape"), (np.zeros(600), "integers"), (np.full(600, -2), ">= -1"),
])
def test_bad_labels_are_refused(blobs, labels, match):
    x, _ = blobs
    with pytest.raises(ValueError, match=match):
        global_metrics(x, labels)


# ----------------------------------------------------------------------------- per cluster


def test_per_cluster_sizes_sum_to_n_with_a_noise_row(blobs):
    x, y = blobs
    lab = y.copy()
    lab[:7] = -1
    rows = per_cluster_metrics(x, lab)
    assert rows[-1]["cluster"] == -1 and rows[-1]["is_noise"] and rows[-1]["size"] == 7
    assert sum(r["size"] for r in rows) == len(x)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert [r["cluster"] for r in rows[:-1]] == [0, 1, 2, 3, 4]
    assert all(r["mean_silhouette"] > 0.5 for r in rows[:-1])
    assert len(per_cluster_metrics(x, lab, include_noise=False)) == 5


def test_nearest_cluster_tiny_and_outlier_flags(planted):
    x, y = planted["x"], planted["y"]
    rows = {r["cluster"]: r for r in per_cluster_metrics(x, y, include_centroid=True)}
    assert rows[0]["nearest_cluster"] == 1 and rows[1]["nearest_cluster"] == 0
    assert rows[0]["nearest_distance"] == pytest.approx(rows[1]["nearest_distance"])
    assert rows[0]["nearest_distance"] < 0.2 < rows[2]["nearest_distance"]
    # the adjacent pair separates less well than the lone clusters
    assert max(rows[0]["mean_silhouette"], rows[1]["mean_silhouette"]) < min(rows[2]["mean_silhouette"],
                                                                            rows[3]["mean_silhouette"])
    assert [c for c, r in rows.items() if r["tiny"]] == [4]
    assert rows[4]["silhouette_sample_size"] == 3
    # the planted far member of cluster 2, and nothing comparable elsewhere
    assert rows[2]["outlier_fraction"] == pytest.approx(1 / 101)
    assert rows[0]["outlier_fraction"] == 0 and rows[3]["outlier_fraction"] == 0
    assert len(rows[2]["centroid"]) == 16
    assert all(r["overlap"] == 0 for r in rows.values())  # true labels: every row nearest its own centre


def test_overlap_shows_rows_that_lean_to_another_cluster(planted):
    x, y = planted["x"], planted["y"].copy()
    y[:10] = 1  # ten rows of cluster 0 labelled as its neighbour 1
    rows = {r["cluster"]: r for r in per_cluster_metrics(x, y)}
    assert rows[1]["overlap"] == pytest.approx(10 / 110)
    assert rows[1]["overlap_cluster"] == 0
    assert rows[1]["overlap_with_nearest"] == pytest.approx(10 / 110)
    assert rows[0]["overlap"] == 0 and rows[0]["overlap_cluster"] is None


def test_per_cluster_all_noise_and_single_cluster(blobs):
    x, _ = blobs
    assert per_cluster_metrics(x, np.full(len(x), -1)) == [{"cluster": -1, "is_noise": True, "size": len(x),
                                                            "share": 1.0}]
    (row,) = per_cluster_metrics(x, np.zeros(len(x), dtype=int))
    assert row["nearest_cluster"] is None and np.isnan(row["mean_silhouette"])


# ---------------------------------------------------------------------------------- cards


def test_cluster_cards_put_the_rows_nearest_the_centre_first(planted):
    x, y = planted["x"].copy(), planted["y"].copy()
    # a row at the exact mean of cluster 3 (adding it leaves the mean unchanged)
    x = np.vstack([x, x[y == 3].mean(axis=0, keepdims=True)])
    y = np.append(y, 3)
    ids = [f"r{i}" for i in range(len(y))]
    texts = [f"text {i}" for i in range(len(y))]
    cards = cluster_cards(x, y, ids, texts, n_central=5, n_boundary=3, n_outliers=2)
    assert set(cards) == {0, 1, 2, 3, 4}
    for c, card in cards.items():
        members = np.where(y == c)[0]
        centre = x[members].mean(axis=0)
        d = np.linalg.norm(x[members] - centre, axis=1)
        expect = [f"r{i}" for i in members[np.argsort(d, kind="stable")][:5]]
        got = [e["row_id"] for e in card["central"]]
        assert got == expect, c
        dist = [e["distance"] for e in card["central"]]
        assert dist == sorted(dist)
        assert card["size"] == len(members)
        far = [e["distance"] for e in card["outliers"]]
        assert far == sorted(far, reverse=True) and far[0] == pytest.approx(d.max(), abs=1e-5)
    assert cards[3]["central"][0]["row_id"] == f"r{len(y) - 1}" and cards[3]["central"][0]["distance"] < 1e-3
    assert cards[3]["central"][0]["text"] == f"text {len(y) - 1}"
    assert cards[2]["outliers"][0]["row_id"] == f"r{planted['outlier']}"


def test_cluster_cards_boundary_and_noise(planted):
    x, y = planted["x"].copy(), planted["y"].copy()
    c0, c1 = x[y == 0].mean(axis=0), x[y == 1].mean(axis=0)
    mid = unit((0.52 * c0 + 0.48 * c1)[None])  # labelled 0, almost halfway to 1
    x = np.vstack([x, mid, unit(np.eye(16)[9:12])])
    y = np.concatenate([y, [0, -1, -1, -1]])
    n = len(y)
    cards = cluster_cards(x, y, np.arange(n), ["t"] * (n - 1) + ["x" * 50], n_noise=2, max_chars=10, seed=0)
    first = cards[0]["boundary"][0]
    assert first["row_id"] == n - 4 and first["other_cluster"] == 1 and first["margin"] < 0.05
    noise = cards[-1]
    assert noise["is_noise"] and noise["size"] == 3 and len(noise["examples"]) == 2
    assert {e["row_id"] for e in noise["examples"]} <= {n - 3, n - 2, n - 1}
    assert isinstance(noise["examples"][0]["row_id"], int)  # numpy ids come back as plain ints
    long = cluster_cards(x, y, np.arange(n), ["t"] * (n - 1) + ["x" * 50], n_noise=3, max_chars=10)
    texts = [e["text"] for e in long[-1]["examples"]]
    assert "x" * 9 + "\u2026" in texts
    with pytest.raises(ValueError, match="row_ids"):
        cluster_cards(x, y, np.arange(n - 1), ["t"] * n)


# ------------------------------------------------------------------ one silhouette pass for both


def test_shared_silhouettes_give_the_same_per_cluster_figures(planted):
    x, y = planted["x"], planted["y"]
    shared = sample_silhouettes(x, y, sample_size=150, seed=2)
    assert 150 <= len(shared[0]) <= 150 + 5 * 30 and len(shared[0]) == len(shared[1])
    assert per_cluster_metrics(x, y, sample_size=150, seed=2, silhouettes=shared) == \
        per_cluster_metrics(x, y, sample_size=150, seed=2)


def test_shared_silhouettes_weight_clusters_by_their_share():
    """Uneven clusters: the stratified sample over-draws the small ones (30 rows at least), and the
    global estimate weights each cluster by its size, so it lands on the silhouette of all rows."""
    x, y = make_blobs(n_samples=[1500, 600, 60, 40], n_features=16, cluster_std=[1.0, 1.0, 4.0, 4.0], random_state=1)
    x = unit(x)
    truth = silhouette_score(x, y)
    idx, values = sample_silhouettes(x, y, sample_size=300, seed=0)
    assert len(idx) < len(y) and (y[idx] == 3).sum() == 30  # 40-row cluster: 30 rows drawn, not 300 * 40 / 2200
    out = global_metrics(x, y, sample_size=300, seed=0, silhouettes=(idx, values))
    assert out["silhouette_sample_size"] == len(idx)
    assert abs(out["silhouette"] - truth) < 0.03
    assert out["silhouette_ci_low"] <= truth <= out["silhouette_ci_high"]
    unweighted = float(values.mean())
    assert abs(out["silhouette"] - truth) < abs(unweighted - truth)
    # noise is left out; fewer than two clusters leaves nothing to share
    assert len(sample_silhouettes(x, np.zeros(len(y), dtype=int))[0]) == 0
    noisy = y.copy()
    noisy[:100] = -1
    idx, _ = sample_silhouettes(x, noisy, sample_size=300)
    assert (noisy[idx] >= 0).all()


def test_separation_scores_match_scikit_learn(planted, blobs):
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    for x, y in ((planted["x"], planted["y"]), blobs):
        g = global_metrics(x, y)
        assert g["davies_bouldin"] == pytest.approx(davies_bouldin_score(x, y), rel=1e-4)
        assert g["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(x, y), rel=1e-4)
        assert g["score_sample_size"] == len(y)
    # noise rows are left out; a sample of the rows scores only the sample
    x, y = blobs
    noisy = y.copy()
    noisy[::7] = -1
    keep = noisy >= 0
    g = global_metrics(x, noisy)
    assert g["davies_bouldin"] == pytest.approx(davies_bouldin_score(x[keep], noisy[keep]), rel=1e-4)
    assert g["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(x[keep], noisy[keep]), rel=1e-4)
    part = global_metrics(x, y, score_sample=200, seed=3)
    rows = part_rows = np.sort(np.random.default_rng(4).choice(len(y), size=200, replace=False))
    assert part["score_sample_size"] == 200
    assert part["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(x[rows], y[part_rows]), rel=1e-4)


def test_silhouette_values_match_scikit_learn(blobs):
    from sklearn.metrics import silhouette_samples

    x, y = blobs
    np.testing.assert_allclose(silhouette_values(x, y, chunk=128), silhouette_samples(x, y), atol=1e-5)
    # random labels, a cluster of one row (its silhouette is 0) and duplicate rows
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 4, len(y))
    lab[7] = 4
    xd = x.copy()
    xd[1] = xd[0]
    got = silhouette_values(xd, lab)
    np.testing.assert_allclose(got, silhouette_samples(xd, lab), atol=1e-5)
    assert got[7] == 0.0
    # label ids with gaps: an id no row carries is nobody's neighbour
    gappy = np.where(y == 1, 3, y)
    np.testing.assert_allclose(silhouette_values(x, gappy), silhouette_samples(x, gappy), atol=1e-5)


# -------------------------------------------------------------------------------- shared geometry, row sources


class GatheredRows:
    """A row source like ``list_cache.CachedRows``: rows handed out only when indexed, each read
    recorded, so a test sees how many rows a function holds at once."""

    ndim = 2

    def __init__(self, x: np.ndarray):
        self._x, self.shape, self.dtype, self.reads = x, x.shape, x.dtype, []

    def __len__(self) -> int:
        return len(self._x)

    def __getitem__(self, idx):
        out = np.array(self._x[idx])
        self.reads.append(len(out))
        return out


def test_one_geometry_serves_both_figures_and_scores_every_row(blobs):
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    from purify_assets.core.metrics import cluster_geometry

    x, y = blobs
    noisy = y.copy()
    noisy[::9] = -1
    keep = noisy >= 0
    g = cluster_geometry(x, noisy)
    shared = global_metrics(x, noisy, sample_size=300, geometry=g)
    assert shared["davies_bouldin"] == pytest.approx(davies_bouldin_score(x[keep], noisy[keep]), rel=1e-4)
    assert shared["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(x[keep], noisy[keep]), rel=1e-4)
    assert shared["score_sample_size"] == int(keep.sum())
    # the geometry covers every row, also where the scores alone would take a sample
    sampled = global_metrics(x, noisy, sample_size=300, score_sample=100)
    assert sampled["score_sample_size"] == 100
    assert global_metrics(x, noisy, sample_size=300, score_sample=100, geometry=g)["score_sample_size"] == int(keep.sum())
    assert per_cluster_metrics(x, noisy, geometry=g) == per_cluster_metrics(x, noisy)
    other = noisy.copy()
    other[:5] = (other[:5] + 1) % 5
    with pytest.raises(ValueError, match="other labels"):
        per_cluster_metrics(x, other, geometry=g)


def test_a_row_source_gives_the_same_figures_read_in_chunks():
    from purify_assets.core.clustering import CHUNK
    from purify_assets.core.metrics import cluster_geometry

    x, y = make_blobs(n_samples=CHUNK * 2 + 500, centers=4, n_features=8, random_state=1)
    x = unit(x)
    rows = GatheredRows(x)
    sampled = sample_silhouettes(rows, y, sample_size=200)
    g = cluster_geometry(rows, y)
    got_global = global_metrics(rows, y, sample_size=200, silhouettes=sampled, geometry=g)
    got_per = per_cluster_metrics(rows, y, sample_size=200, silhouettes=sampled, geometry=g)
    assert max(rows.reads) == CHUNK  # never the whole matrix: chunks, and the sampled rows
    assert sum(rows.reads) == 2 * len(x) + len(sampled[0])  # two passes (centroids, distances) and the sample
    want_sampled = sample_silhouettes(x, y, sample_size=200)
    np.testing.assert_array_equal(sampled[0], want_sampled[0])
    np.testing.assert_allclose(sampled[1], want_sampled[1], rtol=1e-6)
    want_g = cluster_geometry(x, y)
    assert got_global == global_metrics(x, y, sample_size=200, silhouettes=want_sampled, geometry=want_g)
    assert got_per == per_cluster_metrics(x, y, sample_size=200, silhouettes=want_sampled, geometry=want_g)
    with pytest.raises(ValueError, match="float32"):
        global_metrics(GatheredRows(x.astype(np.float64)), y)
