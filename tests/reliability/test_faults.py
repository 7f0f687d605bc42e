"""Faults: kill -9 inside a write transaction, two writers at once, read-only and full disks, and the
review endpoint being down. Each ends by re-opening the warehouse and checking the counts."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from purify_assets.core import warehouse as wh
from purify_assets.core.landing import archive_file
from purify_assets.stages.batch import clean_batch, ingest_batch
from tests.reliability.conftest import PROJECT_ROOT, batch_counts, land_bytes, make_rows, small_pipeline

N_ROWS, BAD_EVERY = 12_000, 97  # a batch big enough to write in several chunks


@pytest.fixture()
def big_batch(tmp_path):
    data, bad = make_rows(N_ROWS, bad_every=BAD_EVERY)
    batch = land_bytes(tmp_path, "big.jsonl", data)
    return batch, N_ROWS - bad, bad


def _reopen_counts(path: Path, batch_id: str) -> dict[str, int]:
    # read-write: the killed process must have released the lock, and the WAL must replay
    with wh.connect(path, wait_seconds=10) as con:
        return batch_counts(con, batch_id)


# --------------------------------------------------------------------------------------- kill -9
@pytest.mark.parametrize("previous", ["none", "complete"])
def test_kill9_during_ingest_leaves_the_previous_state(tmp_path, big_batch, child_factory, previous):
    batch, rows, bad = big_batch
    warehouse = tmp_path / "warehouse.duckdb"
    before = {"raw_rows": 0, "quarantine": 0, "clean_rows": 0, "rejected_rows": 0, "batches": 0, "distinct_raw_ids": 0}
    if previous == "complete":
        with wh.connect(warehouse) as con:
            ingest_batch(con, batch)
            before = batch_counts(con, batch.batch_key)
        assert before["raw_rows"] == rows
    child = child_factory({"stage": "ingest", "warehouse": str(warehouse), "batch": batch.as_dict(),
                           "chunk_rows": 2_000, "pause_after": 3})
    assert child.wait_for("IN_TRANSACTION").endswith("raw_rows")  # deleted the batch, inserted 3 chunks
    assert child.kill9() == -9 and not child.has("DONE")
    assert _reopen_counts(warehouse, batch.batch_key) == before  # no partial, no duplicated rows
    with wh.connect(warehouse) as con:  # the re-run completes with the right counts
        report = ingest_batch(con, batch)
        after = batch_counts(con, batch.batch_key)
    assert report.counts["rows"] == rows and report.counts["quarantined"] == bad
    assert after["raw_rows"] == after["distinct_raw_ids"] == rows and after["quarantine"] == bad and after["batches"] == 1


def test_kill9_during_clean_leaves_the_previous_state(tmp_path, big_batch, child_factory):
    batch, rows, bad = big_batch
    warehouse = tmp_path / "warehouse.duckdb"
    with wh.connect(warehouse) as con:
        ingest_batch(con, batch)
        clean_batch(con, batch.batch_key, {}, "instruction")
        before = batch_counts(con, batch.batch_key)
    assert before["clean_rows"] + before["rejected_rows"] == rows
    child = child_factory({"stage": "clean", "warehouse": str(warehouse), "batch_id": batch.batch_key,
                           "chunk_rows": 1_000, "pause_after": 4})
    child.wait_for("IN_TRANSACTION")
    assert child.kill9() == -9 and not child.has("DONE")
    assert _reopen_counts(warehouse, batch.batch_key) == before
    with wh.connect(warehouse) as con:
        report = clean_batch(con, batch.batch_key, {}, "instruction")
        after = batch_counts(con, batch.batch_key)
    assert report.counts["rows_in"] == rows == after["clean_rows"] + after["rejected_rows"]
    assert after == before


def test_kill9_during_a_global_stage_leaves_the_previous_sets(tmp_path, child_factory):
    from purify_assets.stages.cycle import dedup_rows

    params = {"exact": True, "near": False, "semantic": False, "semantic_mode": "cosine", "conflicts": True,
              "incremental": False}
    warehouse = tmp_path / "warehouse.duckdb"
    first = land_bytes(tmp_path, "first.jsonl", make_rows(3_000, dup_every=7)[0])
    second = land_bytes(tmp_path, "second.jsonl", make_rows(3_000, seed=1, dup_every=5)[0])
    with wh.connect(warehouse) as con:
        for b in (first, second):
            ingest_batch(con, b)
            clean_batch(con, b.batch_key, {}, "instruction")
        dedup_rows(con, params, "none")
        before = wh.frame(con, "SELECT * FROM dedup_sets ORDER BY set_id, row_id")
        state_before = wh.scalar(con, "SELECT count(*) FROM dedup_state")
        # a third batch arrives; the next dedup run is killed between its two table replaces
        third = land_bytes(tmp_path, "third.jsonl", make_rows(3_000, seed=2, dup_every=3)[0])
        ingest_batch(con, third)
        clean_batch(con, third.batch_key, {}, "instruction")
    assert len(before) > 0
    child = child_factory({"stage": "dedup", "warehouse": str(warehouse), "dedup": params, "model_id": "none",
                           "pause_after": 1})
    assert child.wait_for("IN_TRANSACTION").endswith("dedup_sets")
    assert child.kill9() == -9
    with wh.connect(warehouse, wait_seconds=10) as con:
        assert wh.frame(con, "SELECT * FROM dedup_sets ORDER BY set_id, row_id").equals(before)
        assert wh.scalar(con, "SELECT count(*) FROM dedup_state") == state_before
        report = dedup_rows(con, params, "none")
        kept = wh.scalar(con, "SELECT count(*) FROM clean_rows")
        assert wh.scalar(con, "SELECT count(*) FROM dedup_state") == kept
        assert report.counts["rows_considered"] == kept
        assert wh.scalar(con, "SELECT count(*) FROM dedup_sets WHERE row_id LIKE ?", [third.batch_key + "%"]) > 0
        assert wh.scalar(con, "SELECT count(*) - count(DISTINCT (set_id, row_id)) FROM dedup_sets") == 0


# ------------------------------------------------------------------------------ two writers at once
def test_dagster_yaml_serializes_runs_and_warehouse_steps():
    config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text("utf-8"))
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 1
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    from purify_assets.assets import ALL_ASSETS
    from purify_assets.assets._report import WAREHOUSE_POOL

    for asset in ALL_ASSETS:  # every asset writes the DuckDB file: all share the one pool
        assert asset.op.pool == WAREHOUSE_POOL, asset.keys


@pytest.mark.slow
def test_two_runs_at_once_wait_for_the_lock(tmp_path, child_factory):
    """Two Dagster runs of different batches against one warehouse: the second waits for the first's
    write lock (it never fails with "could not set lock on file") and both succeed."""
    from dagster import DagsterInstance

    from purify_assets.automation.partitions import BATCHES

    home = tmp_path / "home"
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    a = land_bytes(home, "a.jsonl", make_rows(4_000, bad_every=50)[0])
    b = land_bytes(home, "b.jsonl", make_rows(3_000, seed=3, bad_every=40)[0])
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_dynamic_partitions(BATCHES, [a.batch_key, b.batch_key])
    release = tmp_path / "release"
    common = {"stage": "materialize", "home": str(home), "dagster_home": str(dagster_home)}
    first = child_factory({**common, "partition_key": a.batch_key, "pause_after": 1, "release_file": str(release),
                           "hold_seconds": 90})
    first.wait_for("IN_TRANSACTION", timeout=90)
    second = child_factory({**common, "partition_key": b.batch_key})
    second.wait_for("STARTED", timeout=60)
    time.sleep(4)  # long enough for the second run to reach the warehouse and find it locked
    assert not second.has("OPENED"), "the second writer got in while the first held the lock"
    release.touch()
    assert first.finish() == 0 and second.finish() == 0, first.stderr[-2000:] + second.stderr[-2000:]
    for c in (first, second):
        assert json.loads(c.wait_for("DONE").split(" ", 1)[1]) == {"success": True}, c.stderr[-3000:]
        assert "could not set lock" not in c.stderr.lower()
    with wh.connect(home / "warehouse.duckdb", read_only=True) as con:
        for batch, n, every in ((a, 4_000, 50), (b, 3_000, 40)):
            counts = batch_counts(con, batch.batch_key)
            assert counts["raw_rows"] == n - n // every and counts["quarantine"] == n // every
            assert counts["clean_rows"] + counts["rejected_rows"] == counts["raw_rows"]
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 2 and all(r.is_success for r in runs)


# --------------------------------------------------------------------------- read-only / disk full
@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "1m"):
    """A real small file system at ``path`` (tmpfs; needs root). Yields a function that remounts it read-only."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield lambda: subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def read_only_folder(path: Path, prepare):
    """``path`` made read-only for real: a read-only tmpfs as root (root ignores permissions), chmod otherwise."""
    if os.geteuid() == 0:
        with small_filesystem(path, "8m") as make_read_only:
            prepare(path)
            make_read_only()
            yield
    else:
        path.mkdir(parents=True)
        prepare(path)
        for p in [path, *path.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p in [path, *path.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)


def test_read_only_data_folder_gives_clear_errors_naming_the_path(tmp_path, capsys, monkeypatch):
    from purify_assets import cli
    from purify_assets.settings import PurifyPaths

    home = tmp_path / "ro_home"
    src = tmp_path / "new.jsonl"
    src.write_bytes(make_rows(20)[0])

    def prepare(root: Path):
        paths = PurifyPaths(root).ensure()
        with wh.connect(paths.warehouse) as con:
            wh.run(con, "CHECKPOINT")

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    with read_only_folder(home, prepare):
        paths = PurifyPaths(home)
        with pytest.raises(wh.WarehouseError) as err:  # the existing warehouse cannot be opened for writing
            wh.open_connection(paths.warehouse, wait_seconds=2)
        assert str(paths.warehouse) in str(err.value)
        with pytest.raises(wh.WarehouseError) as err:  # nor can a new one be created
            wh.open_connection(home / "sub" / "other.duckdb", wait_seconds=2)
        assert str(home / "sub") in str(err.value)
        with wh.connect(paths.warehouse, read_only=True) as con:  # reading still works
            assert wh.scalar(con, "SELECT count(*) FROM raw_rows") == 0
        with pytest.raises(OSError) as err:
            archive_file(src, paths.archive)
        assert str(paths.archive) in str(err.value)
        capsys.readouterr()
        assert cli.main(["--home", str(home), "land", str(src)]) == 1
        stderr = capsys.readouterr().err
        assert stderr.startswith("purify: ") and str(paths.archive) in stderr and "Traceback" not in stderr


def test_disk_full_fails_cleanly_and_keeps_the_previous_state(tmp_path):
    full = tmp_path / "full"
    with small_filesystem(full, "1m"):
        warehouse = full / "warehouse.duckdb"
        small = land_bytes(tmp_path, "small.jsonl", make_rows(50)[0])
        big = land_bytes(tmp_path, "big.jsonl", make_rows(20_000)[0])  # ~3 MB: does not fit
        with wh.connect(warehouse) as con:
            ingest_batch(con, small)
        # archiving onto the full disk: a clear error naming the path, no half-copied file left
        with pytest.raises(OSError) as err:
            archive_file(Path(big.archived_path), full / "archive")
        assert "No space left on device" in str(err.value) and str(full / "archive") in str(err.value)
        assert not list((full / "archive").rglob("*.part"))
        # a write that fills the disk fails with the file named, and is rolled back
        with pytest.raises(Exception) as err:
            with wh.connect(warehouse) as con:
                ingest_batch(con, big)
        assert "No space left on device" in str(err.value) and str(warehouse) in str(err.value)
        for leftover in full.glob("*.tmp"):
            leftover.unlink()
        with wh.connect(warehouse, wait_seconds=5) as con:
            assert batch_counts(con, big.batch_key)["raw_rows"] == 0
            assert batch_counts(con, small.batch_key)["raw_rows"] == 50


# --------------------------------------------------------------------------- review endpoint down
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_review_with_the_endpoint_down_is_recorded_as_failed_and_the_stage_finishes(tmp_path, monkeypatch):
    from purify_assets.stages.cycle import review_clusters

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    review = {"reviewer": "openai", "base_url": f"http://127.0.0.1:{_closed_port()}/v1", "max_retries": 1,
              "retry_budget_seconds": 0.5, "backoff_base": 0.01, "backoff_max": 0.05, "timeout": 2}
    warehouse, store, pv, embedder, _ = small_pipeline(tmp_path, review)
    with wh.connect(warehouse) as con:
        clusters = wh.scalar(con, "SELECT count(DISTINCT cluster) FROM cluster_labels WHERE cycle = 1")
        report = review_clusters(con, pv, store, embedder.model_id, tmp_path / "cache")
        rows = wh.frame(con, "SELECT scope, cluster, verdict, reviewer, review_json FROM cluster_reviews WHERE cycle = 1")
        state = wh.run(con, "SELECT state, note FROM cycles WHERE cycle = 1")[0]
    assert report.counts["failures"] >= 1
    assert report.counts["clusters_reviewed"] == clusters
    assert len(rows.filter(rows["scope"] == "cluster")) == clusters and rows["verdict"].null_count() <= 1
    assert set(rows["reviewer"]) == {report.values["reviewer"]} and report.values["reviewer"].startswith("openai:")
    global_json = json.loads(rows.filter(rows["scope"] == "global")["review_json"][0])
    assert global_json["failures"], "the failed review is not recorded"
    assert any("connect" in json.dumps(f).lower() for f in global_json["failures"])
    assert state[0] in {"applied", "awaiting_approval", "converged", "cycle_cap_reached", "stopped_metrics_worse"}
