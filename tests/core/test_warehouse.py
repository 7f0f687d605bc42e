import multiprocessing as mp
import time

import polars as pl
import pytest

from purify_assets.core import warehouse as wh


def test_schema_and_transactional_replace(tmp_path):
    path = tmp_path / "w.duckdb"
    with wh.connect(path) as con:
        frame = pl.DataFrame({"batch_id": ["b1", "b1"], "source_file": ["f", "f"], "line_no": [1, 2],
                              "error": ["e", "e"], "raw": ["x", "y"]})
        with wh.transaction(con):
            wh.replace_batch(con, "quarantine", "b1", frame)
        with pytest.raises(RuntimeError):
            with wh.transaction(con):
                wh.replace_batch(con, "quarantine", "b1", frame.head(1))
                raise RuntimeError("killed half-way")
        assert wh.table_counts(con)["quarantine"] == 2  # the failed replace left the previous state
        assert wh.frame(con, "SELECT count(*) AS n FROM quarantine WHERE batch_id = ?", ["b1'); DROP TABLE x; --"])["n"][0] == 0


def _hold_lock(path: str, seconds: float, ready) -> None:
    con = wh.open_connection(path)
    ready.set()
    time.sleep(seconds)
    con.close()


def test_second_writer_waits_instead_of_failing(tmp_path):
    path = str(tmp_path / "w.duckdb")
    ready = mp.get_context("spawn").Event()
    proc = mp.get_context("spawn").Process(target=_hold_lock, args=(path, 2.0, ready))
    proc.start()
    assert ready.wait(60)
    start = time.monotonic()
    with wh.connect(path, wait_seconds=60) as con:
        waited = time.monotonic() - start
        assert con.execute("SELECT 1").fetchone() == (1,)
    proc.join(30)
    assert waited > 0.5  # it really had to wait for the other process


def test_lock_wait_has_a_limit_and_names_the_file(tmp_path):
    path = str(tmp_path / "w.duckdb")
    ready = mp.get_context("spawn").Event()
    proc = mp.get_context("spawn").Process(target=_hold_lock, args=(path, 4.0, ready))
    proc.start()
    assert ready.wait(60)
    with pytest.raises(wh.WarehouseError, match="w.duckdb"):
        wh.open_connection(path, wait_seconds=0.5)
    proc.join(30)


def test_read_only_open_of_missing_warehouse_is_clear(tmp_path):
    with pytest.raises(wh.WarehouseError, match="nothing has been materialized"):
        wh.open_connection(tmp_path / "none.duckdb", read_only=True)
