"""The flat-file copies of list columns (core.list_cache) read what DuckDB holds, whatever happened since."""

import json

import numpy as np
import polars as pl
import pytest

from purify_assets.core import list_cache
from purify_assets.core import warehouse as wh
from purify_assets.stages.cycle import _lists_for, _vector_matrix


def _rows(start: int, n: int, rng: np.random.Generator, model: str = "m", batch: str = "b") -> tuple[pl.DataFrame, np.ndarray]:
    x = rng.standard_normal((n, 6)).astype(np.float32)
    return pl.DataFrame({"batch_id": [batch] * n, "row_id": [f"r{i:05d}" for i in range(start, start + n)],
                         "model_id": [model] * n, "text_hash": [f"h{i}" for i in range(start, start + n)],
                         "vector": pl.Series(x).cast(pl.List(pl.Float32))}), x


def _cache_dir(path) -> "object":
    return list_cache.folder_for(str(path), "embeddings", "vector", np.float32)


def _read(con, keys):
    stats = {}
    real = list_cache.ListCache.read

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        stats.update(self.stats)
        return out

    list_cache.ListCache.read = spy
    try:
        x, found = _vector_matrix(con, keys, "m")
    finally:
        list_cache.ListCache.read = real
    return x, found, stats


def test_cache_fills_on_first_read_then_serves_new_rows_and_changed_keys(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "w.duckdb"
    with wh.connect(path) as con:
        first, x1 = _rows(0, 3000, rng)
        wh.insert_frame(con, "embeddings", first.sample(fraction=1.0, shuffle=True, seed=1))  # rowid order != row order
        keys = first.select("row_id", "text_hash")
        got, found, stats = _read(con, keys)
        assert found.all() and stats["misses"] == 3000 and stats["hits"] == 0
        np.testing.assert_array_equal(got, x1)
        assert (_cache_dir(path) / "manifest.json").exists()

        got, found, stats = _read(con, keys[::-1])  # all from the files, in any order
        assert stats == {"hits": 3000, "misses": 0, "segments_written": 0, "compacted": 0}
        np.testing.assert_array_equal(got, x1[::-1])

        second, x2 = _rows(3000, 500, rng)  # a new batch lands: only its rows come from DuckDB
        wh.insert_frame(con, "embeddings", second)
        both = pl.concat([first, second]).select("row_id", "text_hash")
        got, found, stats = _read(con, both)
        assert stats["hits"] == 3000 and stats["misses"] == 500 and stats["segments_written"] == 1
        np.testing.assert_array_equal(got, np.vstack([x1, x2]))

        # a row re-embedded under another text keeps its rowid's neighbours but changes its key: a miss
        new_vec = np.full(6, 7.0, dtype=np.float32)
        wh.run(con, "UPDATE embeddings SET text_hash = 'changed', vector = ?::FLOAT[] WHERE row_id = 'r00010'",
               [new_vec.tolist()])
        keys2 = both.with_columns(pl.when(pl.col("row_id") == "r00010").then(pl.lit("changed"))
                                  .otherwise(pl.col("text_hash")).alias("text_hash"))
        got, found, stats = _read(con, keys2)
        assert found.all() and stats["misses"] == 1
        np.testing.assert_array_equal(got[10], new_vec)
        np.testing.assert_array_equal(np.delete(got, 10, axis=0), np.delete(np.vstack([x1, x2]), 10, axis=0))

        # rows without a vector stay zero and unfound, cached or not
        missing = pl.DataFrame({"row_id": ["nope", "r00001"], "text_hash": ["x", "h1"]})
        got, found, _ = _read(con, missing)
        assert found.tolist() == [False, True] and not got[0].any()
        np.testing.assert_array_equal(got[1], x1[1])


def test_damaged_or_deleted_files_fall_back_to_duckdb(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "w.duckdb"
    with wh.connect(path) as con:
        rows, x = _rows(0, 1000, rng)
        wh.insert_frame(con, "embeddings", rows)
        keys = rows.select("row_id", "text_hash")
        _read(con, keys)
        folder = _cache_dir(path)
        seg = json.loads((folder / "manifest.json").read_text())["segments"][0]["name"]
        data = folder / f"{seg}.data"
        data.write_bytes(data.read_bytes()[:-100])  # cut short
        got, found, stats = _read(con, keys)
        assert stats["misses"] == 1000 and found.all()
        np.testing.assert_array_equal(got, x)
        got, found, stats = _read(con, keys)  # rewritten: served from the files again
        assert stats["hits"] == 1000
        (folder / "manifest.json").write_text("{not json")
        got, _, stats = _read(con, keys)
        assert stats["misses"] == 1000
        np.testing.assert_array_equal(got, x)


def test_many_small_appends_are_compacted(tmp_path, monkeypatch):
    monkeypatch.setattr(list_cache, "MAX_SEGMENTS", 3)
    rng = np.random.default_rng(2)
    path = tmp_path / "w.duckdb"
    with wh.connect(path) as con:
        parts = []
        for b in range(5):
            rows, x = _rows(b * 100, 100, rng, batch=f"b{b}")
            wh.insert_frame(con, "embeddings", rows)
            parts.append((rows, x))
            keys = pl.concat([r for r, _ in parts]).select("row_id", "text_hash")
            got, found, stats = _read(con, keys)
            np.testing.assert_array_equal(got, np.vstack([x for _, x in parts]))
        manifest = json.loads((_cache_dir(path) / "manifest.json").read_text())
        assert len(manifest["segments"]) <= 3
        assert sum(s["rows"] for s in manifest["segments"]) == 500
        assert len(list(_cache_dir(path).glob("*.data"))) == len(manifest["segments"])  # dropped segments deleted
        got, _, stats = _read(con, keys)
        assert stats["hits"] == 500


@pytest.mark.parametrize("stored_as", ["UINTEGER[]", "UBIGINT[]"])
def test_signatures_are_cached_in_their_own_dtype_and_the_switch_turns_it_off(tmp_path, monkeypatch, stored_as):
    """Signatures are stored compact (uint32, the empty marker 2**32 - 1); a warehouse made before
    holds them as UBIGINT[] with the uint64 marker, and reads the same."""
    path = tmp_path / "w.duckdb"
    with wh.connect(path) as con:
        sig = np.arange(40, dtype=np.uint64).reshape(10, 4) * 1_000_003
        sig[3, 2] = 2**64 - 1  # the empty marker, read as 2**32 - 1 (``dedup.compact_signatures``)
        if stored_as == "UBIGINT[]":
            wh.run(con, "DROP TABLE dedup_signatures")
            wh.run(con, "CREATE TABLE dedup_signatures (row_hash VARCHAR, config VARCHAR, signature UBIGINT[])")
            column = pl.Series(sig).cast(pl.List(pl.UInt64))
        else:
            column = pl.Series(sig.astype(np.uint32)).cast(pl.List(pl.UInt32))
        wh.insert_frame(con, "dedup_signatures", pl.DataFrame({
            "row_hash": [f"rh{i}" for i in range(10)], "config": ["c"] * 10, "signature": column}))
        keys = pl.DataFrame({"row_hash": [f"rh{i}" for i in range(10)]})
        for _ in range(2):
            got, found = _lists_for(con, keys, "dedup_signatures", "signature", ["row_hash"], "e.config = ?", ["c"], np.uint32)
            assert got.dtype == np.uint32 and found.all()
            assert got[3, 2] == 2**32 - 1 and got[9, 3] == np.uint32(39 * 1_000_003)
        assert list_cache.folder_for(str(path), "dedup_signatures", "signature", np.uint32).exists()
        monkeypatch.setenv("PURIFY_LIST_CACHE", "off")
        assert list_cache.folder_for(str(path), "dedup_signatures", "signature", np.uint32) is None
    assert list_cache.folder_for(None, "embeddings", "vector", np.float32) is None  # in-memory warehouse
    with pytest.raises(KeyError):
        list_cache.KEY_COLUMNS["clean_rows"]


def test_a_lazy_view_gathers_the_same_rows_as_a_read_and_adds_new_rows_first(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "w.duckdb"
    with wh.connect(path) as con:
        (first, x1), (second, x2) = (_rows(start, n, rng) for start, n in ((0, 2000), (2000, 300)))
        wh.insert_frame(con, "embeddings", pl.concat([first, second]))
        _vector_matrix(con, first.select("row_id", "text_hash"), "m")  # only the first batch is in the files
        keys = pl.concat([first, second]).select("row_id", "text_hash")[::-1]  # any order
        ghost = pl.DataFrame({"row_id": ["nowhere"], "text_hash": ["h?"]})  # no vector at all
        view, found = _vector_matrix(con, pl.concat([keys, ghost]), "m", lazy=True)
        assert isinstance(view, list_cache.CachedRows) and view.shape == (2301, 6)
        assert found[:2300].all() and not found[2300]
        expected = np.concatenate([x1, x2])[::-1]
        pick = np.array([0, 5, 299, 300, 1999, 2299, 2300])
        np.testing.assert_array_equal(view[pick][:-1], expected[pick[:-1]])
        assert not view[pick][-1].any()  # the row without a vector reads as zeros
        np.testing.assert_array_equal(view[10:20], expected[10:20])
        np.testing.assert_array_equal(view.materialize()[:2300], expected)
        # the new batch was added to the files before the view was made: a second view reads nothing from DuckDB
        manifest = json.loads((_cache_dir(path) / "manifest.json").read_text())
        assert [s["rows"] for s in manifest["segments"]] == [2000, 300]
        again, _ = _vector_matrix(con, keys, "m", lazy=True)
        np.testing.assert_array_equal(again.materialize(), expected)
        # no cache file (switched off): a plain matrix, as before
        import os

        os.environ["PURIFY_LIST_CACHE"] = "0"
        try:
            plain, _ = _vector_matrix(con, keys, "m", lazy=True)
        finally:
            del os.environ["PURIFY_LIST_CACHE"]
        assert isinstance(plain, np.ndarray)
        np.testing.assert_array_equal(plain, expected)


def test_stages_copy_what_they_store_into_the_files_so_the_next_reader_skips_duckdb(tmp_path):
    from purify_assets.core.params import DEFAULT_PARAMS
    from purify_assets.stages.cycle import dedup_rows
    from tests.stages.test_stages import TrigramEmbedder, load, make_rows

    (tmp_path / "archive").mkdir()
    emb = TrigramEmbedder()
    reads = []
    real = list_cache.ListCache.read

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        reads.append((self.folder.name, dict(self.stats)))
        return out

    with wh.connect(tmp_path / "w.duckdb") as con:
        load(con, tmp_path, "a.jsonl", make_rows(), emb)  # embed_batch stores 60 vectors and copies them
        folder = list_cache.folder_for(str(tmp_path / "w.duckdb"), "embeddings", "vector", np.float32)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert sum(s["rows"] for s in manifest["segments"]) == 60
        keys = wh.frame(con, "SELECT row_id, text_hash FROM clean_rows ORDER BY row_id")
        list_cache.ListCache.read = spy
        try:
            x, found = _vector_matrix(con, keys, emb.model_id)
            dedup_rows(con, DEFAULT_PARAMS["dedup"], emb.model_id)  # hashes every row: signatures copied too
            dedup_rows(con, dict(DEFAULT_PARAMS["dedup"], incremental=False), emb.model_id)  # reads them all back
        finally:
            list_cache.ListCache.read = real
        assert found.all() and reads[0] == ("embeddings.vector.float32", {"hits": 60, "misses": 0, "segments_written": 0,
                                                                          "compacted": 0})
        stored = np.array(wh.frame(con, "SELECT vector FROM embeddings e JOIN clean_rows c USING (row_id, text_hash) "
                                        "ORDER BY row_id")["vector"].to_list(), dtype=np.float32)
        np.testing.assert_array_equal(x, stored)
        signature_reads = [s for name, s in reads if name.startswith("dedup_signatures")]
        assert signature_reads[-1]["misses"] == 0 and signature_reads[-1]["hits"] > 0


def test_cached_rows_gathers_runs_and_scattered_rows_alike():
    # two segments; the wanted rows mix long consecutive runs (copied as slices), scattered rows
    # (gathered) and rows with no list (zeros): every index form gives the reference rows
    rng = np.random.default_rng(3)
    seg_rows = {0: rng.standard_normal((500, 4)).astype(np.float32), 1: rng.standard_normal((300, 4)).astype(np.float32)}
    segment = np.concatenate([np.zeros(500, np.int32), np.ones(300, np.int32), -np.ones(7, np.int32)])
    offset = np.concatenate([np.arange(500), np.arange(300), np.zeros(7)]).astype(np.int64)
    shuffled = rng.permutation(len(segment))
    for order in (np.arange(len(segment)), shuffled):
        rows = list_cache.CachedRows(seg_rows, segment[order], offset[order], 4, np.float32)
        reference = np.zeros((len(order), 4), np.float32)
        for i, (s, o) in enumerate(zip(segment[order], offset[order])):
            if s >= 0:
                reference[i] = seg_rows[int(s)][o]
        for idx in (slice(None), slice(490, 520), np.array([3, 2, 1, 600, 805, 806]), np.arange(795, 807),
                    np.zeros(len(order), bool), rng.random(len(order)) < 0.5):
            np.testing.assert_array_equal(rows[idx], reference[idx])
        assert rows[np.array([], np.int64)].shape == (0, 4)
