"""Stage runners against a temporary warehouse, without Dagster.

The embedder here is a small deterministic stand-in (hashed character trigrams), so these tests
check the stages' bookkeeping (cache, incremental dedup, drops, flags), not embedding quality; the
real backends are tested in tests/core/test_embedders.py and end to end in tests/assets.
"""

import hashlib
import json
import re
from contextlib import contextmanager

import numpy as np
import polars as pl
import pytest

from purify_assets.core import warehouse as wh
from purify_assets.core.export_files import EXPORT_COLUMNS
from purify_assets.core.landing import archive_file
from purify_assets.core.params import DEFAULT_PARAMS, ParamsStore, set_path
from purify_assets.stages.batch import clean_batch, embed_batch, flagged_by_review, ingest_batch
from purify_assets.stages.cycle import cluster_rows, dedup_rows, measure_clusters, review_clusters, publish_dataset


class TrigramEmbedder:
    model_id = "test:trigram-64"
    dim = 64

    def __init__(self):
        self.calls = 0
        self.texts_embedded = 0

    def embed(self, texts):
        self.calls += 1
        self.texts_embedded += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for r, text in enumerate(texts):
            for i in range(max(len(text) - 2, 1)):
                h = int(hashlib.md5(text[i:i + 3].encode()).hexdigest()[:8], 16)
                out[r, h % self.dim] += 1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
        return out


TEMPLATES = ["Summarize the following passage about {t} in one sentence.",
             "Translate this sentence about {t} into Korean.",
             "Classify the sentiment of this review of {t}."]
TOPICS = ["rivers", "trains", "music", "coffee", "gardens", "chess", "rain", "bridges", "maps", "bread",
          "lamps", "owls", "ships", "snow", "tea", "kites", "forests", "clocks", "stars", "shoes"]


def write_batch(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    return path


def make_rows(offset=0, n_topics=20):
    rows = []
    for t_i, topic in enumerate(TOPICS[:n_topics]):
        for k, tpl in enumerate(TEMPLATES):
            rows.append({"instruction": tpl.format(t=topic),
                         "input": f"Some text number {offset + t_i} about {topic} and its many details.",
                         "output": f"An answer of kind {k} for {topic}, written for row {offset + t_i}."})
    return rows


@pytest.fixture()
def home(tmp_path):
    (tmp_path / "archive").mkdir()
    return tmp_path


def load(con, home, name, rows, embedder, params=DEFAULT_PARAMS):
    batch, _ = archive_file(write_batch(home / name, rows), home / "archive")
    ingest_batch(con, batch)
    clean_batch(con, batch.batch_key, params["clean"], params["embed"]["text_template"])
    return batch.batch_key, embed_batch(con, batch.batch_key, embedder)


@contextmanager
def clustered(home, rows=None):
    """A warehouse with ``rows`` (default ``make_rows()``) loaded, deduplicated and clustered (k = 3)
    in cycle 1: yields (con, embedder, params store, parameter version)."""
    emb = TrigramEmbedder()
    store = ParamsStore(home / "p.sqlite")
    pv = store.write(set_path(DEFAULT_PARAMS, "cluster.k", 3), source="user", reason="test")
    with wh.connect(home / "w.duckdb") as con:
        load(con, home, "a.jsonl", make_rows() if rows is None else rows, emb, pv.params)
        dedup_rows(con, pv.params["dedup"], emb.model_id)
        cluster_rows(con, pv, emb.model_id)
        yield con, emb, store, pv


def test_embedding_cache_reuses_vectors_across_runs_and_batches(home):
    emb = TrigramEmbedder()
    with wh.connect(home / "w.duckdb") as con:
        key, first = load(con, home, "a.jsonl", make_rows(), emb)
        assert first.counts["embedded"] == first.counts["unique_texts"] == 60
        again = embed_batch(con, key, emb)  # re-materialize: nothing new to embed
        assert again.counts["embedded"] == 0 and again.counts["cache_hits"] == 60
        # a second batch sharing 20 instructions with the first embeds only its 40 new texts
        rows = make_rows(offset=100)
        for r in rows[:40]:
            r["instruction"] = r["instruction"].replace("sentence", "short sentence").replace("review", "short review")
        _, second = load(con, home, "b.jsonl", rows, emb)
        assert second.counts["cache_hits"] + second.counts["embedded"] == second.counts["unique_texts"]
        assert second.counts["cache_hits"] > 0 and second.counts["embedded"] < 60
        assert wh.scalar(con, "SELECT count(*) FROM embeddings") == 120
        vec = wh.frame(con, "SELECT vector FROM embeddings LIMIT 1")["vector"][0]
        assert len(vec) == 64


class FailingAfter(TrigramEmbedder):
    """Embeds normally for ``ok_calls`` calls, then raises (a model server going away mid-batch)."""

    def __init__(self, ok_calls):
        super().__init__()
        self.ok_calls = ok_calls

    def embed(self, texts):
        if self.calls >= self.ok_calls:
            raise ConnectionError("embedding server went away")
        return super().embed(texts)


class ProgressTrigramEmbedder(TrigramEmbedder):
    """Takes a ``progress`` callback, as the packaged embedders do, and calls it every 16 texts."""

    def __init__(self):
        super().__init__()
        self.call_sizes = []

    def embed(self, texts, progress=None):
        self.call_sizes.append(len(texts))
        out = super().embed(texts)
        for done in range(16, len(texts) + 16, 16):
            if progress is not None:
                progress(min(done, len(texts)), len(texts))
        return out


def test_the_embed_stage_gives_the_model_a_whole_chunk_per_call_and_logs_through_its_progress(home, monkeypatch):
    from purify_assets.stages import batch as batch_stage

    rows = make_rows()  # 60 distinct texts
    messages = []
    clock = iter(range(0, 10_000, 11))  # every reading of the clock 11 s after the last: each progress call logs
    monkeypatch.setattr(batch_stage.time, "perf_counter", lambda: float(next(clock)))
    with wh.connect(home / "w.duckdb") as con:
        batch, _ = archive_file(write_batch(home / "b.jsonl", rows), home / "archive")
        ingest_batch(con, batch)
        clean_batch(con, batch.batch_key, DEFAULT_PARAMS["clean"], "instruction")
        emb = ProgressTrigramEmbedder()
        report = embed_batch(con, batch.batch_key, emb, log=messages.append, response_vectors=False)
    # one call for the whole batch (a pool of worker processes stays busy to the end only once per call)
    assert emb.call_sizes == [60] and report.counts["embedded"] == 60
    during = [re.search(r"text: ([\d,]+) texts embedded \(", m) for m in messages]
    assert [int(m.group(1)) for m in during if m] == [16, 32, 48, 60]


def test_a_large_batch_is_embedded_in_chunks_each_text_once_and_a_failure_keeps_finished_chunks(home):
    rows = make_rows()  # 60 rows
    rows += [dict(r) for r in rows[:15]]  # 15 exact repeats: the same texts again, later in the file
    with wh.connect(home / "w.duckdb") as con:
        batch, _ = archive_file(write_batch(home / "big.jsonl", rows), home / "archive")
        ingest_batch(con, batch)
        clean_batch(con, batch.batch_key, DEFAULT_PARAMS["clean"], "instruction")
        n_rows = wh.scalar(con, "SELECT count(*) FROM clean_rows")
        n_texts = wh.scalar(con, "SELECT count(DISTINCT text_hash) FROM clean_rows")
        assert n_rows == 75 and n_texts == 60
        # chunks of 8 rows, 4 texts per model call: the third call fails, after the first chunk committed
        failing = FailingAfter(ok_calls=2)
        with pytest.raises(ConnectionError):
            embed_batch(con, batch.batch_key, failing, chunk_texts=4, chunk_rows=8, response_vectors=False)
        # the first chunk (8 rows, stretched to keep a text's repeats together; its texts in 2 calls) is
        # stored, every repeat of its texts included; the failed chunk left nothing
        kept = wh.frame(con, "SELECT text_hash, count(*) AS n FROM embeddings GROUP BY text_hash")
        assert failing.calls == 2 and 0 < len(kept) == failing.texts_embedded < n_texts
        per_text = wh.frame(con, "SELECT text_hash, count(*) AS n FROM clean_rows GROUP BY text_hash")
        assert kept.join(per_text, on="text_hash", suffix="_all").filter(pl.col("n") != pl.col("n_all")).is_empty()
        emb = TrigramEmbedder()
        report = embed_batch(con, batch.batch_key, emb, chunk_texts=4, chunk_rows=8, response_vectors=False)
        assert report.counts["rows_kept_from_before"] == kept["n"].sum() >= 8
        # every distinct text embedded once across both runs: repeats sit in one chunk, never twice
        assert failing.texts_embedded + emb.texts_embedded == n_texts
        assert report.counts["embedded"] == emb.texts_embedded
        assert report.counts["embedded"] + report.counts["cache_hits"] == report.counts["unique_texts"] == n_texts
        stored = wh.frame(con, "SELECT e.row_id, e.vector, c.text FROM embeddings e JOIN clean_rows c USING (row_id, text_hash)")
        assert len(stored) == n_rows and stored["row_id"].n_unique() == n_rows
        expected = TrigramEmbedder().embed(stored["text"].to_list())
        np.testing.assert_allclose(np.array(stored["vector"].to_list(), dtype=np.float32), expected, atol=1e-6)
        assert report.checks["every_row_has_a_vector"][0]
        # a second batch repeating 10 of these instructions with new answers: the instruction vectors
        # are copied inside the warehouse, only the new answers are embedded (as response vectors)
        second = TrigramEmbedder()
        key2, rep2 = load(con, home, "copy.jsonl", [dict(r, output=r["output"] + " (v2)") for r in rows[:10]], second)
        assert rep2.counts["rows_copied_from_cache"] == 10 and rep2.counts["embedded"] == 0
        assert second.texts_embedded == rep2.counts["response.embedded"] > 0
        again = embed_batch(con, key2, second)  # re-materialized: every row kept, nothing embedded or copied
        assert again.counts["rows_kept_from_before"] == 10 and again.counts["rows_copied_from_cache"] == 0
        assert again.counts["embedded"] == again.counts["response.embedded"] == 0


def test_dedup_fails_whole_when_storing_new_signatures_fails(home, monkeypatch):
    emb = TrigramEmbedder()
    dp = DEFAULT_PARAMS["dedup"]
    with wh.connect(home / "w.duckdb") as con:
        load(con, home, "a.jsonl", make_rows(), emb)
        dedup_rows(con, dp, emb.model_id)
        before = wh.frame(con, "SELECT * FROM dedup_sets ORDER BY ALL")
        n_state = wh.table_counts(con)["dedup_state"]
        load(con, home, "b.jsonl", make_rows(offset=500)[:9], emb)
        insert = wh.insert_frame

        def refuse_signatures(cur, table, frame):
            if table == "dedup_signatures":
                raise OSError("no space left on device")
            return insert(cur, table, frame)

        monkeypatch.setattr(wh, "insert_frame", refuse_signatures)
        # the store runs in a thread beside the searches; its error is the stage's, and nothing is half-written
        with pytest.raises(OSError, match="no space left"):
            dedup_rows(con, dp, emb.model_id)
        monkeypatch.setattr(wh, "insert_frame", insert)
        assert wh.frame(con, "SELECT * FROM dedup_sets ORDER BY ALL").equals(before)
        assert wh.table_counts(con)["dedup_state"] == n_state
        again = dedup_rows(con, dp, emb.model_id)  # and the next run completes the work
        assert again.values["mode"] == "incremental" and again.counts["near.signatures_computed"] == 9


@pytest.mark.parametrize("limit", [0, 64 * 2**20], ids=["before_search", "background"])
def test_new_signatures_are_stored_before_the_search_when_large_and_beside_it_when_small(home, monkeypatch, limit):
    from purify_assets.stages import cycle

    emb = TrigramEmbedder()
    dp = DEFAULT_PARAMS["dedup"]
    rows = make_rows()
    near = [dict(r, output=r["output"] + " Yes.") for r in rows[10:14]]
    monkeypatch.setattr(cycle, "SIGNATURES_STORED_IN_BACKGROUND_MAX_BYTES", limit)
    with wh.connect(home / "w.duckdb") as con:
        load(con, home, "a.jsonl", rows + near, emb)
        first = dedup_rows(con, dp, emb.model_id)
        # 64 new signatures of 128 uint32 are 32 KiB: above a limit of 0, below 64 MiB
        assert first.values["signatures_store"] == ("before_search" if limit == 0 else "background")
        assert first.timings["signatures_store"] > 0
        assert first.counts["near.members_beyond_representative"] >= 4
        stored = wh.scalar(con, "SELECT count(*) FROM dedup_signatures")
        assert stored == first.counts["near.signatures_computed"] == 64
        sets = wh.frame(con, "SELECT set_id, kind, row_id, representative_row_id FROM dedup_sets ORDER BY ALL")
        # either way the next run reads every signature back (flat files included) and finds the same sets
        again = dedup_rows(con, dict(dp, incremental=False), emb.model_id)
        assert again.counts["near.signatures_computed"] == 0 and "signatures_store" not in again.values
        assert wh.frame(con, "SELECT set_id, kind, row_id, representative_row_id FROM dedup_sets ORDER BY ALL").equals(sets)


def test_dedup_is_incremental_and_matches_a_full_run(home):
    emb = TrigramEmbedder()
    dp = DEFAULT_PARAMS["dedup"]
    with wh.connect(home / "w.duckdb") as con:
        rows = make_rows()
        load(con, home, "a.jsonl", rows + rows[:5], emb)  # 5 exact copies
        first = dedup_rows(con, dp, emb.model_id)
        assert first.values["mode"] == "full"
        assert first.counts["exact.members_beyond_representative"] == 5
        near = [dict(r, output=r["output"] + " Yes.") for r in rows[10:14]]  # near copies in a new batch
        # and exact copies: one more of a row copied before (its set grows), one of a row never copied
        copies = [dict(rows[0]), dict(rows[30])]
        load(con, home, "b.jsonl", make_rows(offset=500)[:9] + near + copies, emb)
        second = dedup_rows(con, dp, emb.model_id)
        assert second.values["mode"] == "incremental"
        assert second.counts["rows_new_since_last_run"] == 15
        # only the hashes of new rows are grouped again: their 2 copies and the 3 rows they copy, and
        # the 13 rows of new texts; the 4 other old sets are carried over
        assert second.counts["exact.rows_searched"] == 13 + 2 + 3
        assert second.counts["exact.members_beyond_representative"] == 5 + 2
        assert second.counts["near.signatures_cached"] >= 60 - 5
        # only the 13 new row hashes are hashed: the copies share their originals' cached signatures
        assert second.counts["near.signatures_computed"] == 13
        assert wh.run(con, "SELECT count(*) - count(DISTINCT (row_hash, config)) FROM dedup_signatures")[0][0] == 0
        incremental = wh.frame(con, "SELECT * FROM dedup_sets ORDER BY ALL")
        # with no new row every set is carried over, and no signature is read for it
        idle = dedup_rows(con, dp, emb.model_id)
        assert idle.values["mode"] == "incremental" and idle.counts["rows_new_since_last_run"] == 0
        assert idle.values["signatures"].startswith("not read") and "near.signatures_cached" not in idle.counts
        assert "signatures_cached" not in idle.timings
        assert wh.frame(con, "SELECT * FROM dedup_sets ORDER BY ALL").equals(incremental)
        full = dedup_rows(con, dict(dp, incremental=False), emb.model_id)
        assert full.values["mode"] == "full"
        # the signatures the second run stored in its background thread serve the third: none hashed again
        assert full.counts["near.signatures_computed"] == 0 and full.counts["near.signatures_cached"] >= 60 + 13 - 5
        again = wh.frame(con, "SELECT * FROM dedup_sets ORDER BY ALL")
        assert incremental.equals(again)  # every column: sets, representatives, similarities, reasons
        assert second.counts["rows_removed"] >= 5 + 2 + 4
        # a changed old row makes the next run a full one
        wh.run(con, "UPDATE dedup_state SET row_hash = 'changed' WHERE row_id = (SELECT min(row_id) FROM dedup_state)")
        assert dedup_rows(con, dp, emb.model_id).values["mode"] == "full"


def test_removed_duplicates_and_dropped_clusters_leave_the_clustering_input(home):
    emb = TrigramEmbedder()
    store = ParamsStore(home / "p.sqlite")
    pv = store.write(set_path(DEFAULT_PARAMS, "cluster.k", 3), source="user", reason="test")
    with wh.connect(home / "w.duckdb") as con:
        rows = make_rows()
        load(con, home, "a.jsonl", rows + rows[:6], emb, pv.params)
        dedup_rows(con, pv.params["dedup"], emb.model_id)
        first = cluster_rows(con, pv, emb.model_id)
        assert first.counts["rows_clustered"] == 60 and first.counts["cycle"] == 1
        victim = wh.scalar(con, "SELECT cluster FROM cluster_labels WHERE cycle = 1 GROUP BY cluster ORDER BY count(*) LIMIT 1")
        size = wh.scalar(con, "SELECT count(*) FROM cluster_labels WHERE cycle = 1 AND cluster = ?", [victim])
        pv2 = store.write(set_path(pv.params, "review.drop_clusters", [{"cycle": 1, "cluster": victim, "name": "x"}]),
                          source="review", reason="drop", parent=pv.version)
        second = cluster_rows(con, pv2, emb.model_id)
        assert second.counts["cycle"] == 2
        assert second.counts["rows_clustered"] == 60 - size
        assert second.counts["rows_dropped_by_review"] == size


def test_review_flags_send_rows_back_to_cleaning(home):
    emb = TrigramEmbedder()
    with wh.connect(home / "w.duckdb") as con:
        key, _ = load(con, home, "a.jsonl", make_rows(), emb)
        ids = [r[0] for r in wh.run(con, "SELECT row_id FROM clean_rows ORDER BY row_id LIMIT 3")]
        flagged = flagged_by_review([{"cluster": 2, "name": "n", "problem_row_ids": ids, "reasons": ["noise"]}])
        report = clean_batch(con, key, {}, "instruction", flagged=flagged)
        assert report.counts["rejected.review_flagged"] == 3
        assert wh.scalar(con, "SELECT count(*) FROM rejected_rows WHERE reason = 'review_flagged'") == 3
        assert report.counts["rows_in"] == report.counts["kept"] + report.counts["rejected"]


def test_a_cycle_publishes_exports_and_a_card(home):
    with clustered(home) as (con, emb, store, pv):
        metrics = measure_clusters(con, pv.params["measure"], emb.model_id)
        assert metrics.counts["clusters"] == 3 and metrics.images["cluster_sizes"][:4] == b"\x89PNG"
        assert 0.0 <= metrics.values["stability"] <= 1.0  # from the k sweep at the current k
        review = review_clusters(con, pv, store, emb.model_id, home / "cache")
        assert review.counts["clusters_reviewed"] == 3
        published = publish_dataset(con, home / "exports", home / "plots")
        n = published.counts["rows_published"] + published.counts["rows_in_dropped_clusters"]
        assert n == 60
        folder = home / "exports" / "cycle_001"
        card = (folder / "DATASET_CARD.md").read_text("utf-8")
        assert "Row accounting" in card and "## Files" in card
        manifest = json.loads((folder / "MANIFEST.json").read_text("utf-8"))
        assert len(manifest["clusters"]) == published.counts["clusters_published"] == len(list(folder.glob("cluster_*/")))
        # a first publication writes one part per cluster and links nothing
        assert published.counts["export_parts_linked"] == 0
        assert published.counts["export_parts_written"] == published.counts["clusters_published"]
        # every published row once across the clusters' parts, in the table's columns; each part's
        # Parquet holds its JSONL's rows, in row id order, all of the folder's cluster
        parts = sorted(folder.glob("cluster_*/part-c001.jsonl"))
        rows = [json.loads(line) for f in parts for line in f.read_text("utf-8").splitlines()]
        assert len(rows) == published.counts["rows_published"] == sum(c["rows"] for c in manifest["clusters"].values())
        assert list(rows[0]) == EXPORT_COLUMNS
        table = wh.frame(con, f"SELECT {', '.join(EXPORT_COLUMNS)} FROM purified_dataset ORDER BY row_id").to_dicts()
        assert sorted(rows, key=lambda r: r["row_id"]) == table
        for part in parts:
            lines = [json.loads(line) for line in part.read_text("utf-8").splitlines()]
            assert pl.read_parquet(part.with_suffix(".parquet")).to_dicts() == lines
            assert [r["row_id"] for r in lines] == sorted(r["row_id"] for r in lines)
            assert {r["cluster"] for r in lines} == {manifest["clusters"][part.parent.name]["cluster"]}
        latest = home / "exports" / "latest"
        assert latest.is_symlink() and latest.resolve() == folder.resolve()
        # a home copied without links holds a real "latest" folder: publishing goes on and leaves it alone
        latest.unlink()
        latest.mkdir()
        (latest / "mine.txt").write_text("kept", "utf-8")
        again = publish_dataset(con, home / "exports", home / "plots")
        # the table already holds this publication: nothing is rewritten, every part is linked again
        assert published.counts["table_rows_inserted"] == published.counts["rows_published"]
        assert (again.counts["table_rows_deleted"], again.counts["table_rows_updated"], again.counts["table_rows_inserted"]) == (0, 0, 0)
        assert again.counts["export_parts_written"] == 0 and again.counts["export_parts_linked"] == len(parts)
        assert wh.scalar(con, "SELECT count(*) FROM purified_dataset WHERE cycle = 1") == published.counts["rows_published"]
        assert again.values["latest_link"].startswith("not updated:") and "is a directory" in again.values["latest_link"]
        assert (latest / "mine.txt").read_text("utf-8") == "kept" and (folder / "DATASET_CARD.md").exists()
        # the table is written beside the files: when it cannot be stored, the previous export stays
        # whole and no half-written folder is left
        before = sorted(p.name for p in folder.iterdir())
        wh.run(con, "ALTER TABLE purified_dataset ADD COLUMN must_be_set VARCHAR NOT NULL DEFAULT 'x'")
        wh.run(con, "ALTER TABLE purified_dataset ALTER COLUMN must_be_set DROP DEFAULT")
        wh.run(con, "UPDATE purified_dataset SET cluster_name = 'stale'")  # so that every row must be written again
        with pytest.raises(Exception, match="NOT NULL"):  # the statement's own error, not a follow-on one
            publish_dataset(con, home / "exports", home / "plots")
        assert sorted(p.name for p in folder.iterdir()) == before
        assert not list((home / "exports").glob(".cycle_*"))
        assert wh.scalar(con, "SELECT count(*) FROM purified_dataset") == published.counts["rows_published"]


def test_openai_embeddings_and_reviews_through_the_stages(home, monkeypatch):
    """The OpenAI paths end to end: embeddings from a local embeddings server, reviews from a local
    chat server; the model's recommendation becomes the next parameter version."""
    import re

    from purify_assets.core.embedders import make_embedder
    from tests.fake_openai_chat import FakeChatServer
    from tests.fake_openai_embeddings import FakeEmbeddingsServer

    monkeypatch.setenv("PURIFY_TEST_OPENAI_KEY", "sk-test-not-a-real-key-123")

    def answer(body):
        user = body["messages"][-1]["content"]
        m = re.search(r"<cluster_data>\s*\{\"cluster\": (-?\d+)", user)
        if not m:
            return {"content": {"k_recommendation": "increase", "suggested_k": 4, "reasons": ["cluster 0 mixes tasks"]}}
        return {"content": {"cluster": int(m.group(1)), "name": f"model name {m.group(1)}", "task_type": "summarization",
                            "quality": 4, "verdict": "keep", "merge_with": None, "reasons": ["coherent"],
                            "problem_row_ids": []}}

    store = ParamsStore(home / "p.sqlite")
    with FakeEmbeddingsServer(dim=32) as emb_srv, FakeChatServer(default=answer) as chat_srv:
        from purify_assets.core.params import deep_merge

        params = deep_merge(set_path(DEFAULT_PARAMS, "cluster.k", 3), {"embed": {"backend": "openai", "model": "text-embedding-3-small",
                                            "base_url": emb_srv.base_url, "api_key_env": "PURIFY_TEST_OPENAI_KEY",
                                            "text_template": "instruction"}})
        params = deep_merge(params, {"review": {"reviewer": "openai", "model": "gpt-test", "base_url": chat_srv.base_url,
                                             "api_key_env": "PURIFY_TEST_OPENAI_KEY", "timeout": 5, "max_retries": 1}})
        pv = store.write(params, source="user", reason="openai test")
        embedder = make_embedder(pv.params["embed"])
        with wh.connect(home / "w.duckdb") as con:
            _, report = load(con, home, "a.jsonl", make_rows(), embedder, pv.params)
            assert report.counts["embedded"] == 60 and report.values["model_id"].startswith("openai:")
            dedup_rows(con, pv.params["dedup"], embedder.model_id)
            cluster_rows(con, pv, embedder.model_id)
            measure_clusters(con, pv.params["measure"], embedder.model_id)
            review = review_clusters(con, pv, store, embedder.model_id, home / "cache")
            names = [r[0] for r in wh.run(con, "SELECT name FROM cluster_reviews WHERE scope = 'cluster' ORDER BY cluster")]
            stored_reviews = wh.run(con, "SELECT review_json FROM cluster_reviews WHERE scope = 'cluster' ORDER BY cluster")
        assert names == ["model name 0", "model name 1", "model name 2"]
        assert review.values["reviewer"] == "openai:gpt-test" and review.counts["failures"] == 0
        assert len(chat_srv.requests) == 4  # three clusters and the global question
        # what each cluster's review cost is kept with it and shown in the metadata
        per = [json.loads(r[0])["usage"] for r in stored_reviews]
        assert [u["source"] for u in per] == ["openai"] * 3 and all(u["requests"] == 1 for u in per)
        assert all(u["prompt_tokens"] > 0 and u["completion_tokens"] > 0 for u in per)
        assert sum(u["prompt_tokens"] for u in per) < review.values["usage.prompt_tokens"]  # + the global question
        assert review.markdown["usage_per_cluster"].count("| openai |") == 3
    nxt = store.current()
    assert nxt.version == pv.version + 1 and nxt.source == "review" and nxt.params["cluster"]["k"] == 4
    assert review.values["next_state"] == "applied"


def test_openai_embedder_redacts_pii_before_sending_even_when_cleaning_kept_it():
    from purify_assets.core.embedders import make_embedder
    from tests.fake_openai_embeddings import FakeEmbeddingsServer

    text = "Write to kim.minsu@naver.com or call 010-1234-5678 about the order."
    with FakeEmbeddingsServer(dim=16) as srv:
        vectors = make_embedder({"backend": "openai", "model": "text-embedding-3-small", "base_url": srv.base_url}).embed([text])
        sent = json.dumps(srv.requests, ensure_ascii=False)
        assert vectors.shape == (1, 16)
        assert "kim.minsu@naver.com" not in sent and "1234-5678" not in sent and "order" in sent
        make_embedder({"backend": "openai", "model": "text-embedding-3-small", "base_url": srv.base_url,
                       "redact_pii": False}).embed([text])
        assert "kim.minsu@naver.com" in json.dumps(srv.requests[-1], ensure_ascii=False)  # the switch is real


def test_text_only_rows_are_not_dropped_for_missing_outputs(home):
    """A plain-text layout (reviews, no output column) has no outputs: the reviewer must not read
    that as 100% empty outputs and drop every cluster."""
    rows = [{"text": f"{adj} movie number {i}, the {noun} was {adj} and I would watch it again"}
            for i, (adj, noun) in enumerate([(a, n) for a in ("great", "dull", "strange", "lovely")
                                              for n in ("plot", "cast", "music", "ending", "pacing")] * 3)]
    with clustered(home, rows) as (con, emb, store, pv):
        measure_clusters(con, pv.params["measure"], emb.model_id)
        review_clusters(con, pv, store, emb.model_id, home / "cache")
        verdicts = [v for (v,) in wh.run(con, "SELECT verdict FROM cluster_reviews WHERE scope = 'cluster'")]
        published = publish_dataset(con, home / "exports", home / "plots")
    assert verdicts and "drop" not in verdicts
    assert published.counts["rows_published"] > 0


def test_the_rejection_rate_check_threshold_is_a_clean_parameter(home):
    emb = TrigramEmbedder()
    with wh.connect(home / "w.duckdb") as con:
        rows = make_rows(n_topics=4) + [{"instruction": "x", "output": ""}] * 4  # 4 of 16 rows rejected
        key, _ = load(con, home, "a.jsonl", rows, emb)
        lenient = clean_batch(con, key, {}, "instruction")
        strict = clean_batch(con, key, {"max_rejection_rate": 0.1}, "instruction")
    assert lenient.values["rejection_rate"] == strict.values["rejection_rate"] == 0.25
    assert lenient.checks["rejection_rate_below_threshold"][0] is True
    assert strict.checks["rejection_rate_below_threshold"][0] is False


class MeaningEmbedder(TrigramEmbedder):
    """Texts listed in ``meanings`` share the vector of their meaning (a paraphrase embeds like its
    original); any other text gets the trigram vector."""
    model_id = "test:meaning-64"

    def __init__(self, meanings):
        super().__init__()
        self.meanings = meanings

    def embed(self, texts):
        out = super().embed(texts)
        for r, text in enumerate(texts):
            if text in self.meanings:
                v = np.zeros(self.dim, dtype=np.float32)
                v[int(hashlib.md5(self.meanings[text].encode()).hexdigest()[:6], 16) % self.dim] = 1.0
                out[r] = v
        return out


def conflict_rows():
    rain, rain2 = "Will it rain in Seoul tomorrow?", "Will it rain in Seoul tomorrow ?"
    return [
        {"instruction": "What should I pack for a rainy trip?", "output": "Take an umbrella with you."},
        {"instruction": "What should I pack for a rainy trip?", "output": "Bring your umbrella along, definitely."},
        {"instruction": rain, "output": "Yes, heavy rain is expected all day."},
        {"instruction": rain2, "output": "No, it will be sunny and dry."},
        {"instruction": "Summarize this article.", "input": "The river flooded the old town in May.",
         "output": "A May flood hit the old town."},
        {"instruction": "Summarize this article.", "input": "The bakery won a national prize for bread.",
         "output": "The bakery's bread won a prize."},
    ], {
        "Take an umbrella with you.": "umbrella", "Bring your umbrella along, definitely.": "umbrella",
        "Yes, heavy rain is expected all day.": "rain-yes", "No, it will be sunny and dry.": "rain-no",
        rain: "ask-rain", rain2: "ask-rain",
        "Summarize this article.": "summarize",
    }


def test_conflicts_compare_responses_by_their_vectors(home):
    rows, meanings = conflict_rows()
    emb = MeaningEmbedder(meanings)
    with wh.connect(home / "w.duckdb") as con:
        key, report = load(con, home, "a.jsonl", rows, emb)
        assert report.counts["response_vectors"] == 6  # every row has a response
        assert wh.scalar(con, "SELECT count(*) FROM response_embeddings") == 6
        out = dedup_rows(con, DEFAULT_PARAMS["dedup"], emb.model_id)
        assert out.values["conflicts.instruction_match"] == "vector"
        assert out.values["conflicts.response_similarity"] == "cosine of response vectors"
        flagged = wh.frame(con, """SELECT c.output FROM dedup_sets d JOIN clean_rows c USING (row_id)
                                   WHERE d.kind = 'conflict' ORDER BY c.output""")["output"].to_list()
        # the two rain questions differ by one space (no exact match) and answer yes / no: a conflict;
        # the reworded umbrella advice is not; the summaries answer different inputs: not one instruction
        assert flagged == ["No, it will be sunny and dry.", "Yes, heavy rain is expected all day."]
        assert out.counts["rows_removed"] == 0  # conflicts flag rows, they never remove them


def test_conflicts_without_response_vectors_fall_back_to_minhash(home):
    rows, meanings = conflict_rows()
    emb = MeaningEmbedder(meanings)
    with wh.connect(home / "w.duckdb") as con:
        batch, _ = archive_file(write_batch(home / "a.jsonl", rows), home / "archive")
        ingest_batch(con, batch)
        clean_batch(con, batch.batch_key, DEFAULT_PARAMS["clean"], "instruction")
        report = embed_batch(con, batch.batch_key, emb, response_vectors=False)
        assert report.counts["response_vectors"] == 0
        out = dedup_rows(con, DEFAULT_PARAMS["dedup"], emb.model_id)
        assert out.values["conflicts.response_similarity"] == "MinHash Jaccard"
        flagged = set(wh.frame(con, "SELECT c.output FROM dedup_sets d JOIN clean_rows c USING (row_id) "
                                    "WHERE d.kind = 'conflict'")["output"].to_list())
        # character overlap cannot tell a reworded answer from a different one: the umbrella pair is flagged too
        assert "Take an umbrella with you." in flagged and "No, it will be sunny and dry." in flagged
        # exact instruction matching (embedded text is the whole row) misses the respaced rain question
        dedup_rows(con, DEFAULT_PARAMS["dedup"], emb.model_id, embedded_text="all")
        exact = set(wh.frame(con, "SELECT c.output FROM dedup_sets d JOIN clean_rows c USING (row_id) "
                                  "WHERE d.kind = 'conflict'")["output"].to_list())
        assert exact == {"Take an umbrella with you.", "Bring your umbrella along, definitely."}


def test_response_vectors_come_from_the_cache_when_a_response_was_embedded_before(home):
    rows, meanings = conflict_rows()
    emb = MeaningEmbedder(meanings)
    with wh.connect(home / "w.duckdb") as con:
        load(con, home, "a.jsonl", rows, emb)
        # the second batch asks new questions whose answers are texts already embedded as responses
        again = [{"instruction": f"New question {i}?", "output": r["output"]} for i, r in enumerate(rows)]
        _, report = load(con, home, "b.jsonl", again, emb)
        assert report.counts["response.embedded"] == 0 and report.counts["response.cache_hits"] == 6
        assert report.counts["embedded"] == 6  # the new instructions themselves were never seen


def test_cached_vectors_are_copied_from_either_role_unchanged(home):
    """A text embedded before, as an instruction or as a response, is not embedded again: its vector
    is copied from whichever table holds it, bit for bit."""
    emb = TrigramEmbedder()
    first = [{"instruction": f"Describe colour number {i} in one word.", "output": f"Answer {i}: a shade of blue."}
             for i in range(8)]
    with wh.connect(home / "w.duckdb") as con:
        load(con, home, "a.jsonl", first, emb)
        # the new batch asks as instructions what the first batch answered, and asks two old questions again
        second = [{"instruction": r["output"], "output": "Yes."} for r in first] + \
                 [{"instruction": r["instruction"], "output": "Blue."} for r in first[:2]]
        counted = TrigramEmbedder()
        key2, report = load(con, home, "b.jsonl", second, counted)
        assert report.counts["rows_copied_from_cache"] == 10 and report.counts["embedded"] == 0
        copied = wh.frame(con, "SELECT text_hash, vector FROM embeddings WHERE batch_id = ?", [key2])
        before = wh.frame(con, "SELECT text_hash, vector FROM embeddings WHERE batch_id <> ? "
                               "UNION ALL SELECT text_hash, vector FROM response_embeddings WHERE batch_id <> ?", [key2, key2])
        pairs = copied.join(before.unique("text_hash"), on="text_hash", suffix="_before")
        assert len(pairs) == 10
        np.testing.assert_array_equal(np.array(pairs["vector"].to_list(), dtype=np.float32),
                                      np.array(pairs["vector_before"].to_list(), dtype=np.float32))
        # only the two answers never seen before ("Yes." and "Blue.") went to the model
        assert counted.texts_embedded == report.counts["response.embedded"] == 2


def test_a_column_the_first_record_omits_is_still_mapped(home):
    rows = [{"instruction": "Name a colour.", "output": "Blue."},
            {"instruction": "Summarize this.", "input": "The river flooded the town.", "output": "A flood."}]
    with wh.connect(home / "w.duckdb") as con:
        batch, _ = archive_file(write_batch(home / "sparse.jsonl", rows), home / "archive")
        ingest_batch(con, batch)
        got = wh.frame(con, "SELECT instruction, input FROM raw_rows ORDER BY line_no").rows()
        assert got == [("Name a colour.", None), ("Summarize this.", "The river flooded the town.")]


def test_a_review_raises_the_dedup_threshold_when_dedup_merged_template_siblings(home):
    """Arithmetic rows that differ only in their numbers look alike to the embedder: with a low
    cosine threshold dedup removes them as duplicates. The review sees that the removed pairs carry
    different numbers, proposes a higher threshold, and the next dedup run keeps them apart."""
    from purify_assets.core.params import affected_assets, deep_merge

    emb = TrigramEmbedder()
    store = ParamsStore(home / "p.sqlite")
    params = deep_merge(set_path(DEFAULT_PARAMS, "cluster.k", 3),
                        {"dedup": {"semantic_mode": "cosine", "semantic_threshold": 0.6, "near": False}})
    pv = store.write(params, source="user", reason="a threshold far too low")
    sums = [{"instruction": f"Add the numbers {a} and {b} and explain every step of the addition carefully.",
             "output": f"The sum is {a + b}."} for a, b in [(12, 7), (31, 45), (58, 23), (64, 19), (77, 88), (90, 13)]]
    with wh.connect(home / "w.duckdb") as con:
        load(con, home, "a.jsonl", make_rows() + sums, emb, pv.params)
        first = dedup_rows(con, pv.params["dedup"], emb.model_id)
        removed_sums = wh.scalar(con, "SELECT count(*) FROM dedup_sets d JOIN clean_rows c USING (row_id) "
                                      "WHERE NOT d.is_representative AND c.instruction LIKE 'Add the numbers%'")
        assert removed_sums >= 3
        cluster_rows(con, pv, emb.model_id)
        measure_clusters(con, pv.params["measure"], emb.model_id)
        review = review_clusters(con, pv, store, emb.model_id, home / "cache")
        assert review.values["dedup_recommendation"].startswith("semantic_threshold -> ")
        assert review.counts["dedup_evidence.removed_pairs"] > 0
        assert "Least similar pairs removed" in review.markdown["dedup_review"]
        proposed = store.get(review.values["proposed_version"])
        new_threshold = proposed.params["dedup"]["semantic_threshold"]
        assert new_threshold > 0.6
        assert affected_assets(pv.params, proposed.params)[0] == "dedup_sets"  # the sensor re-runs from dedup
        second = dedup_rows(con, proposed.params["dedup"], emb.model_id)
        assert second.counts["rows_removed"] < first.counts["rows_removed"]


def test_dedup_evidence_from_held_vectors_equals_the_warehouse_read(home):
    """The review hands dedup_evidence the vectors it already holds; the near misses it finds that way
    (hybrid score, signatures computed afresh) are the ones found by reading vectors and stored
    signatures' inputs from the warehouse."""
    from purify_assets.stages.cycle import _all_vectors, _labelled, dedup_evidence

    with clustered(home) as (con, emb, store, pv):
        data = _labelled(con, 1, emb.model_id)
        held = _all_vectors(con, data, emb.model_id)
        settings = {"semantic_mode": "hybrid", "semantic_threshold": 0.7, "semantic_weight_cosine": 0.5}
        read = dedup_evidence(con, settings, data, emb.model_id, margin=0.3)
        given = dedup_evidence(con, settings, data, emb.model_id, margin=0.3, vectors=held)
        sampled = dedup_evidence(con, settings, data, emb.model_id, margin=0.3, vectors=held, sample=8)
        # the signatures computed afresh are the ones dedup stored for the same rows
        from purify_assets.core.dedup import compact_signatures, minhash_signatures
        stored = wh.frame(con, "SELECT concat_ws(chr(10), c.instruction, c.input, c.output) AS full_text, s.signature "
                               "FROM clean_rows c JOIN dedup_signatures s USING (row_hash) ORDER BY c.row_id LIMIT 5")
        fresh = compact_signatures(minhash_signatures(stored["full_text"].to_list(), num_perm=128))
        assert stored.schema["signature"] == pl.List(pl.UInt32) and fresh.tolist() == stored["signature"].to_list()
    assert len(read.near_misses) == 30  # template siblings score just below the threshold
    assert all(0.4 <= m["score"] < 0.7 for m in read.near_misses)
    assert given.near_misses == read.near_misses
    # 8 sampled rows: at most 8 distinct texts and 28 pairs among them
    assert len({t for m in sampled.near_misses for t in (m["a"], m["b"])}) <= 8 and len(sampled.near_misses) <= 28


def test_embed_metadata_names_the_encoder_worker_processes(home):
    class Workers(TrigramEmbedder):
        workers = 2

    with wh.connect(home / "w.duckdb") as con:
        _, plain = load(con, home, "a.jsonl", make_rows(n_topics=2), TrigramEmbedder())
        _, parallel = load(con, home, "b.jsonl", make_rows(offset=50, n_topics=2), Workers())
    assert "encoder_workers" not in plain.values and parallel.values["encoder_workers"] == 2
