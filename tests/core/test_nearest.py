import sys

import numpy as np
import pytest

import purify_assets.core.nearest as nearest
from purify_assets.core.nearest import k_smallest

# every test of the selection runs on both ways of making it: the two numpy passes and the compiled loop
both_ways = pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "compiled"])


def kth_values(score: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """The picked scores of each row, sorted: equal to the k smallest whatever ties were broken."""
    return np.sort(np.take_along_axis(score, picked, axis=1), axis=1)


def reference(score: np.ndarray, k: int) -> np.ndarray:
    return np.sort(score, axis=1)[:, :k]


@both_ways
@pytest.mark.parametrize("shape,k", [((300, 20_000), 10), ((50, 4_000), 15), ((7, 1_000), 1), ((40, 5_000), 60)])
def test_picks_the_k_smallest_of_every_row(shape, k, compiled):
    rng = np.random.default_rng(3)
    score = rng.standard_normal(shape).astype(np.float32)
    picked = k_smallest(score, k, compiled)
    assert picked.shape == (shape[0], k) and picked.dtype == np.int64
    assert (np.sort(picked, axis=1)[:, 1:] != np.sort(picked, axis=1)[:, :-1]).all()  # no column twice
    np.testing.assert_array_equal(kth_values(score, picked), reference(score, k))


@both_ways
def test_rows_whose_nearest_are_clustered_in_few_columns(compiled):
    # the subset sees every 16th column: a row whose 10 nearest all sit between two sampled columns
    # must still get them (the bound only ever admits more candidates, never fewer)
    rng = np.random.default_rng(5)
    score = rng.uniform(1.0, 2.0, size=(20, 8_000)).astype(np.float32)
    for r in range(20):
        score[r, 100 * r + 1 : 100 * r + 11] = -np.arange(10, dtype=np.float32)
    picked = k_smallest(score, 10, compiled)
    for r in range(20):
        assert sorted(picked[r].tolist()) == list(range(100 * r + 1, 100 * r + 11))


@both_ways
def test_ties_and_special_values_fall_back_or_stay_exact(compiled):
    rng = np.random.default_rng(7)
    score = rng.standard_normal((6, 3_000)).astype(np.float32)
    score[0] = 1.0  # every column ties: too many candidates, argpartition takes over
    score[1, ::2] = np.nan  # NaN in half the row
    score[2, 17] = -np.inf  # a row's own column, as the UMAP graph marks it
    score[3, :] = np.inf
    score[3, 5:9] = 0.0
    picked = k_smallest(score, 4, compiled)
    np.testing.assert_array_equal(kth_values(score, picked)[[0, 2, 4, 5]], reference(score, 4)[[0, 2, 4, 5]])
    assert not np.isnan(np.take_along_axis(score[1:2], picked[1:2], axis=1)).any()
    assert 17 in picked[2]
    assert sorted(picked[3].tolist()) == [5, 6, 7, 8]


@both_ways
def test_narrow_and_empty_inputs_and_bad_k(compiled):
    score = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]], dtype=np.float32)
    assert [sorted(r) for r in k_smallest(score, 2, compiled).tolist()] == [[1, 2], [0, 2]]
    assert k_smallest(np.zeros((0, 50), np.float32), 3, compiled).shape == (0, 3)
    with pytest.raises(ValueError, match="between 1 and the number of columns"):
        k_smallest(score, 4, compiled)
    with pytest.raises(ValueError, match="between 1 and the number of columns"):
        k_smallest(score, 0, compiled)


def _spy_on_the_numpy_passes(monkeypatch) -> list:
    calls: list = []
    real = nearest._strided_k_smallest

    def spy(score, k, *args):
        calls.append(score.shape)
        return real(score, k, *args)

    monkeypatch.setattr(nearest, "_strided_k_smallest", spy)
    return calls


def test_the_default_uses_the_compiled_loop_only_where_numba_is_already_loaded(monkeypatch):
    score = np.random.default_rng(1).standard_normal((30, 2_000)).astype(np.float32)
    calls = _spy_on_the_numpy_passes(monkeypatch)
    import numba  # noqa: F401 - loaded: the default takes the compiled loop

    first = k_smallest(score, 5)
    assert calls == []
    np.testing.assert_array_equal(kth_values(score, first), reference(score, 5))
    monkeypatch.delitem(sys.modules, "numba")  # as in a process that never imported it
    second = k_smallest(score, 5)
    assert calls == [(30, 2_000)]
    np.testing.assert_array_equal(kth_values(score, second), kth_values(score, first))
    k_smallest(score, 5, compiled=True)  # asked for: used whether or not numba was loaded before
    assert calls == [(30, 2_000)]


def test_without_numba_or_when_its_loop_fails_the_numpy_passes_answer(monkeypatch):
    score = np.random.default_rng(2).standard_normal((25, 3_000)).astype(np.float32)
    calls = _spy_on_the_numpy_passes(monkeypatch)
    monkeypatch.setattr(nearest, "_KERNEL", None)
    monkeypatch.setattr(nearest, "_KERNEL_FAILED", True)  # numba could not be imported
    np.testing.assert_array_equal(kth_values(score, k_smallest(score, 7, compiled=True)), reference(score, 7))
    assert len(calls) == 1

    def broken(*args):
        raise RuntimeError("no LLVM target for this CPU")

    monkeypatch.setattr(nearest, "_KERNEL", broken)
    monkeypatch.setattr(nearest, "_KERNEL_FAILED", False)
    with pytest.warns(UserWarning, match="compiled selection failed"):
        picked = k_smallest(score, 7, compiled=True)
    np.testing.assert_array_equal(kth_values(score, picked), reference(score, 7))
    assert len(calls) == 2 and nearest._KERNEL_FAILED and nearest._KERNEL is None  # not tried again


def test_integer_scores_take_the_numpy_passes(monkeypatch):
    score = np.random.default_rng(4).integers(0, 1_000_000, size=(10, 4_000))
    calls = _spy_on_the_numpy_passes(monkeypatch)
    np.testing.assert_array_equal(kth_values(score, k_smallest(score, 3, compiled=True)), reference(score, 3))
    assert calls == [(10, 4_000)]
