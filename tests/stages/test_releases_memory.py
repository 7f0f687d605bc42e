"""``releases_memory``: what a stage held is gone once it returns, even when a library it called left
an exception in a reference cycle (which pins the stage's frame, and so its arrays, through the
traceback's frames until Python's cyclic collector runs)."""

import gc
import weakref

import duckdb
import numpy as np
import pytest

from purify_assets.stages import releases_memory


def _library_call_that_keeps_an_exception_in_a_cycle() -> None:
    # what pyparsing's packrat cache did inside matplotlib's first import: a caught exception stays
    # reachable from a cycle, and its traceback's frame links back to the caller's frame
    try:
        raise ValueError("parse failed, try the next rule")
    except ValueError as exc:
        cache: list = [exc]
        cache.append(cache)


def _stage_body(con, seen: list) -> str:
    vectors = np.ones((256, 64), dtype=np.float32)  # stands for the stage's large matrix
    seen.append(weakref.ref(vectors))
    _library_call_that_keeps_an_exception_in_a_cycle()
    return "stored"


@pytest.fixture
def con():
    c = duckdb.connect()
    yield c
    c.close()


@pytest.fixture
def collector_off():
    """The automatic collector off, so only the decorator's collection can free the cycle."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def test_a_plain_stage_leaves_its_matrix_pinned_by_the_cycle(con, collector_off):
    # the control: without the decorator the matrix outlives the call (so the next test can fail)
    seen: list = []
    assert _stage_body(con, seen) == "stored"
    assert seen[0]() is not None
    gc.collect()
    assert seen[0]() is None


def test_releases_memory_frees_what_a_cycle_pins(con, collector_off):
    seen: list = []
    assert releases_memory(_stage_body)(con, seen) == "stored"
    assert seen[0]() is None
    assert gc.get_freeze_count() == 0  # the objects set aside during the stage are back


def test_releases_memory_frees_it_when_the_stage_fails(con, collector_off):
    seen: list = []

    def failing(con, seen):
        _stage_body(con, seen)
        raise RuntimeError("store failed")

    with pytest.raises(RuntimeError, match="store failed"):
        releases_memory(failing)(con, seen)
    # the traceback pytest holds keeps the frames of the failing call; the body's own frame is gone
    assert seen[0]() is None
    assert gc.get_freeze_count() == 0


def test_an_outer_freeze_is_left_in_place(con, collector_off):
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        seen: list = []
        assert releases_memory(_stage_body)(con, seen) == "stored"
        assert seen[0]() is None
        # not unfrozen by the stage: an unfreeze empties the permanent generation, while frozen objects
        # that reference counting frees meanwhile (a few, in a process that ran other tests) only lower it
        assert frozen > 1000 and gc.get_freeze_count() >= frozen - 100
    finally:
        gc.unfreeze()
