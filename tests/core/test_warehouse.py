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


def test_matrix_from_query_fills_rows_by_position_in_batches(tmp_path):
    import numpy as np

    with wh.connect(tmp_path / "w.duckdb") as con:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1000, 7)).astype(np.float32)
        src = pl.DataFrame({"pos": np.arange(1000)[::-1] * 2, "v": pl.Series(x).cast(pl.List(pl.Float32))})
        con.register("src", src)
        # 1000 rows into 2000 slots, streamed in batches of 64 (not a multiple of anything here)
        out, filled = wh.matrix_from_query(con, "SELECT pos, v FROM src WHERE pos % 3 <> 1", None, 2000, batch_rows=64)
        keep = (src["pos"].to_numpy() % 3) != 1
        assert out.dtype == np.float32 and out.shape == (2000, 7)
        np.testing.assert_array_equal(out[src["pos"].to_numpy()[keep]], x[keep])
        assert filled.sum() == keep.sum() and not filled[1::2].any()
        assert not out[~filled].any()  # rows the query does not return stay zero
        empty, none = wh.matrix_from_query(con, "SELECT pos, v FROM src WHERE false", None, 5)
        assert empty.shape == (5, 0) and not none.any()
        sig, _ = wh.matrix_from_query(con, "SELECT 0, [1, 2, 18446744073709551615]::UBIGINT[]", None, 1, np.uint64)
        assert sig.tolist() == [[1, 2, 2**64 - 1]]  # unsigned 64-bit values pass through exactly


def test_matrix_from_query_names_the_row_of_a_ragged_or_null_list(tmp_path):
    with wh.connect(tmp_path / "w.duckdb") as con:
        with pytest.raises(ValueError, match="row 2: a list of 2 values where the others have 3"):
            wh.matrix_from_query(con, "SELECT * FROM (VALUES (0, [1.0, 2, 3]), (2, [1.0, 2])) t(p, v)", None, 3)
        with pytest.raises(ValueError, match="row 1: the list is NULL"):
            wh.matrix_from_query(con, "SELECT * FROM (VALUES (0, [1.0]), (1, NULL)) t(p, v)", None, 2)


def test_matrix_by_rowid_checks_lists_in_batches_where_some_rows_are_skipped(tmp_path):
    """A batch with skipped rows is read as one block when every list has the matrix's width; a
    ragged or NULL list among the skipped rows sends it to the row-by-row gather, and one among the
    wanted rows is an error that names the row."""
    import numpy as np

    with wh.connect(tmp_path / "w.duckdb") as con:
        wh.run(con, "CREATE TABLE t AS SELECT i AS id, [i::FLOAT, 0, 1] AS v FROM range(40) r(i)")
        wh.run(con, "UPDATE t SET v = [1.0, 2] WHERE id = 21")  # ragged, in the second batch, not wanted
        wh.run(con, "UPDATE t SET v = NULL WHERE id = 30")  # NULL, in the second batch, not wanted
        rid = con.sql("SELECT rowid AS rid, id FROM t ORDER BY id").fetchnumpy()
        keep = (rid["id"] != 21) & (rid["id"] != 30) & (rid["id"] % 4 != 1)
        out, filled = wh.matrix_by_rowid(con, "t", "v", rid["rid"][keep], np.arange(int(keep.sum())), int(keep.sum()),
                                         batch_rows=16)
        assert filled.all()
        np.testing.assert_array_equal(out[:, 0], rid["id"][keep].astype(np.float32))
        np.testing.assert_array_equal(out[:, 1:], np.tile([0.0, 1.0], (int(keep.sum()), 1)))
        wanted = rid["id"] != 30  # now 21 is wanted: its row is named
        with pytest.raises(ValueError, match="row 21: a list of 2 values where the others have 3"):
            wh.matrix_by_rowid(con, "t", "v", rid["rid"][wanted], rid["id"][wanted], 40, batch_rows=16)
        wanted = rid["id"] != 21  # now the NULL list is wanted
        with pytest.raises(ValueError, match="row 30: the list is NULL"):
            wh.matrix_by_rowid(con, "t", "v", rid["rid"][wanted], rid["id"][wanted], 40, batch_rows=16)


def test_matrix_reads_do_not_import_pandas(tmp_path):
    """pyarrow's to_numpy imports pandas on first use (0.7 s here): every Dagster run of a stage is a
    fresh process, so the matrix reads take the lists from the Arrow buffers instead."""
    import subprocess
    import sys

    code = f"""
import sys
import numpy as np
from purify_assets.core import warehouse as wh
with wh.connect({str(tmp_path / "w.duckdb")!r}) as con:
    wh.run(con, "CREATE TABLE t AS SELECT i AS id, [i::FLOAT, 1] AS v, [i::UBIGINT] AS s FROM range(5000) r(i)")
    rid = con.sql("SELECT rowid AS rid FROM t ORDER BY id").fetchnumpy()["rid"]
    x, found = wh.matrix_by_rowid(con, "t", "v", rid[::2], np.arange(2500), 2500, batch_rows=512)
    s, _ = wh.matrix_from_query(con, "SELECT id AS pos, s FROM t", None, 5000, dtype=np.uint32)
assert found.all() and x[-1, 0] == 4998.0 and s[4999, 0] == 4999 and s.dtype == np.uint32
print("pandas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_connections_set_the_memory_limit_and_refuse_a_bad_one(tmp_path, monkeypatch):
    path = tmp_path / "w.duckdb"
    monkeypatch.delenv("PURIFY_DUCKDB_MEMORY_LIMIT", raising=False)
    with wh.connect(path) as con:
        # DuckDB's own default here would be 80 % of RAM; 1GB is printed in binary units
        assert wh.scalar(con, "SELECT current_setting('memory_limit')") == "953.6 MiB"
    monkeypatch.setenv("PURIFY_DUCKDB_MEMORY_LIMIT", "512MB")
    with wh.connect(path, read_only=True) as con:
        assert wh.scalar(con, "SELECT current_setting('memory_limit')") == "488.2 MiB"
    monkeypatch.setenv("PURIFY_DUCKDB_MEMORY_LIMIT", "default")
    assert wh.memory_limit_setting() is None
    monkeypatch.setenv("PURIFY_DUCKDB_MEMORY_LIMIT", "1GB'; DROP TABLE cycles; --")
    with pytest.raises(wh.WarehouseError, match="PURIFY_DUCKDB_MEMORY_LIMIT"):
        wh.connect(path).__enter__()


def test_matrix_by_rowid_reads_the_named_rows_in_one_scan(tmp_path):
    import numpy as np

    with wh.connect(tmp_path / "w.duckdb") as con:
        rng = np.random.default_rng(1)
        x = rng.standard_normal((300, 5)).astype(np.float32)
        con.register("src", pl.DataFrame({"id": np.arange(300), "v": pl.Series(x).cast(pl.List(pl.Float32))}))
        wh.run(con, "CREATE TABLE t AS SELECT * FROM src")
        wh.run(con, "DELETE FROM t WHERE id % 7 = 0")  # gaps in the rowids
        got = con.sql("SELECT id, rowid AS rid FROM t WHERE id % 2 = 1").fetchnumpy()
        order = np.argsort(-got["id"])  # ask for them in another order than the table's
        out, filled = wh.matrix_by_rowid(con, "t", "v", got["rid"][order], np.arange(len(order)), len(order) + 3,
                                         batch_rows=16)
        np.testing.assert_array_equal(out[:len(order)], x[got["id"][order]])
        assert filled[:len(order)].all() and not filled[len(order):].any()
        with pytest.raises(wh.WarehouseError, match="plain table"):
            wh.matrix_by_rowid(con, "t; DROP TABLE t", "v", got["rid"], np.arange(len(got["rid"])), 5)


def test_matrix_by_rowid_fills_every_position_of_a_repeated_rowid(tmp_path):
    import numpy as np

    with wh.connect(tmp_path / "w.duckdb") as con:
        wh.run(con, "CREATE TABLE t AS SELECT i AS id, [i, i + 1]::FLOAT[] AS v FROM range(10) r(i)")
        rid = wh.frame(con, "SELECT rowid AS rid, id FROM t ORDER BY id")["rid"].to_numpy()
        # rows 3 and 7 each wanted at two matrix rows (two keys sharing one table row)
        want = np.array([rid[3], rid[7], rid[3], rid[0], rid[7]])
        out, filled = wh.matrix_by_rowid(con, "t", "v", want, np.array([0, 1, 2, 3, 5]), 6)
        assert filled.tolist() == [True, True, True, True, False, True]
        np.testing.assert_array_equal(out[[0, 1, 2, 3, 5], 0], [3, 7, 3, 0, 7])
        assert not out[4].any()


def test_vector_matrix_gives_the_same_rows_through_the_scan_and_through_the_join(tmp_path, monkeypatch):
    import numpy as np

    from purify_assets.stages.cycle import _vector_matrix

    monkeypatch.setenv("PURIFY_LIST_CACHE", "0")  # DuckDB's own two paths (the flat-file copies: test_list_cache)

    with wh.connect(tmp_path / "w.duckdb") as con:
        rng = np.random.default_rng(2)
        x = rng.standard_normal((90, 4)).astype(np.float32)
        frame = pl.DataFrame({"batch_id": ["b"] * 90, "row_id": [f"r{i:03d}" for i in range(90)],
                              "model_id": ["m" if i % 3 else "other" for i in range(90)],
                              "text_hash": [f"h{i}" for i in range(90)], "vector": pl.Series(x).cast(pl.List(pl.Float32))})
        wh.insert_frame(con, "embeddings", frame)
        keys = frame.select("row_id", "text_hash")[::-1]  # every row, newest first; a third is another model's
        many, found = _vector_matrix(con, keys, "m")  # 60 of 90 rows wanted: one scan by rowid
        few, found_few = _vector_matrix(con, keys.head(20), "m")  # 13 of 90: through the join
        mine = np.array([i % 3 != 0 for i in range(90)][::-1])
        np.testing.assert_array_equal(found, mine)
        np.testing.assert_array_equal(many[found], x[::-1][mine])
        assert not many[~found].any()
        np.testing.assert_array_equal(few, many[:20])
        np.testing.assert_array_equal(found_few, found[:20])
        stale = keys.with_columns(pl.lit("changed").alias("text_hash"))  # a row whose text changed has no vector
        assert not _vector_matrix(con, stale, "m")[1].any()


def test_arrow_numpy_and_fill_matrix_read_sliced_arrays():
    """Arrow batches can be slices of larger arrays (an offset into shared buffers): the values
    read from the buffers must be the slice's, for plain and for list arrays."""
    import numpy as np
    import pyarrow as pa

    ints = pa.array(np.arange(100, dtype=np.int64)).slice(37, 5)
    np.testing.assert_array_equal(wh.arrow_numpy(ints), np.arange(37, 42))
    floats = pa.array(np.linspace(0, 1, 11, dtype=np.float32)).slice(3, 4)
    np.testing.assert_array_equal(wh.arrow_numpy(floats), np.linspace(0, 1, 11, dtype=np.float32)[3:7])
    with_null = pa.array([1, None, 3], type=pa.int64())
    assert wh.arrow_numpy(with_null).tolist()[0] == 1 and np.isnan(wh.arrow_numpy(with_null)[1])  # pyarrow's path
    assert wh.arrow_numpy(pa.array([], type=pa.int32())).dtype == np.int32

    lists = pa.array([[float(i), float(-i)] for i in range(50)], type=pa.list_(pa.float32()))
    keys = pa.array(np.arange(50, dtype=np.int64))
    batch = pa.RecordBatch.from_arrays([keys, lists], names=["pos", "v"]).slice(20, 10)  # rows 20..29
    reader = pa.RecordBatchReader.from_batches(batch.schema, [batch])
    out, filled = wh._fill_matrix(reader, 50, np.dtype(np.float32),
                                  lambda first: np.where(wh.arrow_numpy(first) % 2 == 0, wh.arrow_numpy(first), -1))
    assert np.flatnonzero(filled).tolist() == [20, 22, 24, 26, 28]
    np.testing.assert_array_equal(out[filled], [[i, -i] for i in (20, 22, 24, 26, 28)])
    assert not out[~filled].any()


def test_background_write_commits_beside_the_body_and_reports_its_errors(tmp_path):
    frame = pl.DataFrame({"batch_id": ["b1"] * 3, "source_file": ["f"] * 3, "line_no": [1, 2, 3],
                          "error": ["e"] * 3, "raw": ["x", "y", "z"]})
    with wh.connect(tmp_path / "w.duckdb") as con:
        timings: dict[str, float] = {}
        with wh.background_write(con, lambda cur: wh.replace_batch(cur, "quarantine", "b1", frame), timings) as stored:
            seen_by_body = wh.scalar(con, "SELECT count(*) FROM quarantine")  # the body reads on its own connection
            assert stored() == 3
        assert seen_by_body in (0, 3) and wh.table_counts(con)["quarantine"] == 3 and timings["store"] >= 0

        def half_then_fail(cur):
            wh.replace_batch(cur, "quarantine", "b1", frame.head(1))
            raise ValueError("disk full")

        with pytest.raises(ValueError, match="disk full"):
            with wh.background_write(con, half_then_fail) as stored:
                stored()
        assert wh.table_counts(con)["quarantine"] == 3  # rolled back whole

        # a failing body still waits for the write to finish (and commit) before the error leaves the block
        with pytest.raises(KeyError):
            with wh.background_write(con, lambda cur: wh.replace_batch(cur, "quarantine", "b1", frame.head(2))):
                raise KeyError("body failed")
        assert wh.table_counts(con)["quarantine"] == 2


def test_background_write_runs_after_commit_once_the_rows_are_committed(tmp_path):
    frame = pl.DataFrame({"batch_id": ["b1"] * 3, "source_file": ["f"] * 3, "line_no": [1, 2, 3],
                          "error": ["e"] * 3, "raw": ["x", "y", "z"]})
    with wh.connect(tmp_path / "w.duckdb") as con:
        seen: list[int] = []

        def after(cur):  # on its own connection: only committed rows are visible to the main one
            seen.append(int(wh.scalar(con.cursor(), "SELECT count(*) FROM quarantine")))
            return "ignored"

        with wh.background_write(con, lambda cur: wh.replace_batch(cur, "quarantine", "b1", frame),
                                 after_commit=after) as stored:
            assert stored() == 3  # the write's result, not after_commit's
        assert seen == [3]

        def failing_after(cur):
            raise OSError("cache folder gone")

        # the rows stay committed; the follow-up's error is the one wait() raises
        with pytest.raises(OSError, match="cache folder gone"):
            with wh.background_write(con, lambda cur: wh.replace_batch(cur, "quarantine", "b1", frame.head(1)),
                                     after_commit=failing_after) as stored:
                stored()
        assert wh.table_counts(con)["quarantine"] == 1
