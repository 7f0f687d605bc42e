import numpy as np
import pytest

from purify_assets.core.nearest import k_smallest


def kth_values(score: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """The picked scores of each row, sorted: equal to the k smallest whatever ties were broken."""
    return np.sort(np.take_along_axis(score, picked, axis=1), axis=1)


def reference(score: np.ndarray, k: int) -> np.ndarray:
    return np.sort(score, axis=1)[:, :k]


@pytest.mark.parametrize("shape,k", [((300, 20_000), 10), ((50, 4_000), 15), ((7, 1_000), 1), ((40, 5_000), 60)])
def test_picks_the_k_smallest_of_every_row(shape, k):
    rng = np.random.default_rng(3)
    score = rng.standard_normal(shape).astype(np.float32)
    picked = k_smallest(score, k)
    assert picked.shape == (shape[0], k) and picked.dtype == np.int64
    assert (np.sort(picked, axis=1)[:, 1:] != np.sort(picked, axis=1)[:, :-1]).all()  # no column twice
    np.testing.assert_array_equal(kth_values(score, picked), reference(score, k))


def test_rows_whose_nearest_are_clustered_in_few_columns():
    # the subset sees every 16th column: a row whose 10 nearest all sit between two sampled columns
    # must still get them (the bound only ever admits more candidates, never fewer)
    rng = np.random.default_rng(5)
    score = rng.uniform(1.0, 2.0, size=(20, 8_000)).astype(np.float32)
    for r in range(20):
        score[r, 100 * r + 1 : 100 * r + 11] = -np.arange(10, dtype=np.float32)
    picked = k_smallest(score, 10)
    for r in range(20):
        assert sorted(picked[r].tolist()) == list(range(100 * r + 1, 100 * r + 11))


def test_ties_and_special_values_fall_back_or_stay_exact():
    rng = np.random.default_rng(7)
    score = rng.standard_normal((6, 3_000)).astype(np.float32)
    score[0] = 1.0  # every column ties: too many candidates, argpartition takes over
    score[1, ::2] = np.nan  # NaN in half the row
    score[2, 17] = -np.inf  # a row's own column, as the UMAP graph marks it
    score[3, :] = np.inf
    score[3, 5:9] = 0.0
    picked = k_smallest(score, 4)
    np.testing.assert_array_equal(kth_values(score, picked)[[0, 2, 4, 5]], reference(score, 4)[[0, 2, 4, 5]])
    assert not np.isnan(np.take_along_axis(score[1:2], picked[1:2], axis=1)).any()
    assert 17 in picked[2]
    assert sorted(picked[3].tolist()) == [5, 6, 7, 8]


def test_narrow_and_empty_inputs_and_bad_k():
    score = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]], dtype=np.float32)
    assert [sorted(r) for r in k_smallest(score, 2).tolist()] == [[1, 2], [0, 2]]
    assert k_smallest(np.zeros((0, 50), np.float32), 3).shape == (0, 3)
    with pytest.raises(ValueError, match="between 1 and the number of columns"):
        k_smallest(score, 4)
    with pytest.raises(ValueError, match="between 1 and the number of columns"):
        k_smallest(score, 0)
