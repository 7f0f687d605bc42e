"""The DuckDB warehouse: schema, connections that wait for the single writer, transactional writes.

DuckDB allows one read-write process per file. Dagster runs each run in its own process and the CLI
may run beside ``dagster dev``, so ``connect`` retries while another process holds the lock instead
of failing with "could not set lock on file". Every write replaces a well-defined slice (one batch,
or one whole global table) inside a single transaction: a run killed half-way leaves the previous
state, never a partial one.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import duckdb
import numpy as np
import polars as pl

# Every table the pipeline writes, in graph order. ``purify status`` reports these counts.
TABLE_DDL: dict[str, str] = {
    "batches": """
        batch_id VARCHAR PRIMARY KEY, source_file VARCHAR, sha256 VARCHAR, bytes BIGINT,
        archived_path VARCHAR, format VARCHAR, encoding VARCHAR, compression VARCHAR, layout VARCHAR,
        rows_parsed BIGINT, rows_quarantined BIGINT, mojibake_repaired BIGINT, loaded_at TIMESTAMP""",
    "raw_rows": """
        batch_id VARCHAR, row_id VARCHAR, source_file VARCHAR, line_no INTEGER, record_json VARCHAR,
        instruction VARCHAR, input VARCHAR, output VARCHAR, turns INTEGER, has_output BOOLEAN""",
    "quarantine": """
        batch_id VARCHAR, source_file VARCHAR, line_no INTEGER, error VARCHAR, raw VARCHAR""",
    "clean_rows": """
        batch_id VARCHAR, row_id VARCHAR, instruction VARCHAR, input VARCHAR, output VARCHAR,
        text VARCHAR, text_hash VARCHAR, row_hash VARCHAR, lang VARCHAR, n_chars INTEGER,
        modifications VARCHAR[], pii_counts VARCHAR""",
    "rejected_rows": """
        batch_id VARCHAR, row_id VARCHAR, reason VARCHAR, reasons VARCHAR[], instruction VARCHAR,
        input VARCHAR, output VARCHAR""",
    "embeddings": """
        batch_id VARCHAR, row_id VARCHAR, model_id VARCHAR, text_hash VARCHAR, vector FLOAT[]""",
    # the response (output) alone, embedded when embed.response_vectors is on; text_hash is the response's
    "response_embeddings": """
        batch_id VARCHAR, row_id VARCHAR, model_id VARCHAR, text_hash VARCHAR, vector FLOAT[]""",
    "dedup_sets": """
        set_id VARCHAR, kind VARCHAR, row_id VARCHAR, representative_row_id VARCHAR,
        is_representative BOOLEAN, similarity FLOAT, reason VARCHAR""",
    # MinHash signatures in the compact form (dedup.compact_signatures: every value below 2**32, the
    # empty-text marker 2**32 - 1); warehouses made before hold UBIGINT[], read the same way
    "dedup_signatures": """
        row_hash VARCHAR, config VARCHAR, signature UINTEGER[]""",
    "dedup_state": """
        row_id VARCHAR, row_hash VARCHAR, text_hash VARCHAR, config VARCHAR""",
    "cluster_labels": """
        cycle INTEGER, row_id VARCHAR, cluster INTEGER, strength FLOAT, algorithm VARCHAR, params_hash VARCHAR""",
    "projections": """
        cycle INTEGER, row_id VARCHAR, method VARCHAR, dims INTEGER, x FLOAT, y FLOAT, z FLOAT, cluster INTEGER""",
    # What a reusable fit was computed on, so the next cycle can tell whether to keep or redo it:
    # stage 'projections' or 'clusters' (rows at the last fit, and rows placed onto it since) or
    # 'k_sweep' (rows the last computed k sweep saw). One row per (stage, row); config hashes the
    # model and the parameters the fit depends on.
    "fit_state": """
        stage VARCHAR, config VARCHAR, fit_cycle INTEGER, rows_at_fit BIGINT, row_id VARCHAR, text_hash VARCHAR,
        since_fit BOOLEAN""",
    # the rows each projection (method, dims) was fitted on, with their fitted coordinates: new rows
    # are placed onto these (core/projection.place) while the fit is reused
    "projection_fit": """
        config VARCHAR, method VARCHAR, dims INTEGER, row_id VARCHAR, text_hash VARCHAR, x FLOAT, y FLOAT, z FLOAT""",
    # the centres of the last K-means fit (stage 'clusters' in fit_state): new rows are assigned to
    # these while the fit is reused
    "cluster_fit": """
        config VARCHAR, fit_cycle INTEGER, cluster INTEGER, center FLOAT[]""",
    "cluster_metrics": """
        cycle INTEGER, scope VARCHAR, setting VARCHAR, cluster INTEGER, metric VARCHAR, value DOUBLE, params_hash VARCHAR""",
    "cluster_reviews": """
        cycle INTEGER, scope VARCHAR, cluster INTEGER, name VARCHAR, task_type VARCHAR, quality INTEGER,
        verdict VARCHAR, merge_with INTEGER, reasons VARCHAR, problem_row_ids VARCHAR, reviewer VARCHAR,
        prompt_hash VARCHAR, review_json VARCHAR""",
    # row_hash: clean_rows' hash of the row's texts, so that a publication finds the rows it must
    # write again without comparing their texts
    "purified_dataset": """
        cycle INTEGER, row_id VARCHAR, batch_id VARCHAR, cluster INTEGER, cluster_name VARCHAR,
        task_type VARCHAR, instruction VARCHAR, input VARCHAR, output VARCHAR, record_json VARCHAR, row_hash VARCHAR""",
    # charts whose content a later cycle may repeat (a reused k sweep): one PNG per kind, keyed by a
    # hash of what it shows, so an identical chart is not drawn again
    "chart_cache": """
        kind VARCHAR, key VARCHAR, png BLOB""",
    "cycles": """
        cycle INTEGER PRIMARY KEY, params_version INTEGER, params_hash VARCHAR, started_at TIMESTAMP,
        rows_clustered BIGINT, n_clusters INTEGER, silhouette DOUBLE, davies_bouldin DOUBLE,
        calinski_harabasz DOUBLE, recommendation VARCHAR, proposed_version INTEGER, state VARCHAR, note VARCHAR""",
}

# The asset tables and the tables of rejected input: what ``purify status`` lists.
ASSET_TABLES = [
    "raw_rows", "clean_rows", "embeddings", "dedup_sets", "cluster_labels", "projections",
    "cluster_metrics", "cluster_reviews", "purified_dataset",
]
REJECTED_INPUT_TABLES = ["quarantine", "rejected_rows"]


class WarehouseError(RuntimeError):
    pass


#: DuckDB's memory limit for warehouse connections, unless ``PURIFY_DUCKDB_MEMORY_LIMIT`` says
#: otherwise ("default" keeps DuckDB's own, 80 % of RAM). DuckDB's buffer pool keeps the pages it
#: has read up to its limit; with the default, reading 1.6M vectors left ~12 GB resident beside
#: the stage's own numpy copy. Sorts, joins and aggregates beyond the limit spill to
#: ``<warehouse>.tmp``.
DEFAULT_MEMORY_LIMIT = "1GB"

#: DuckDB's row group size. A stage that commits a large table in chunks commits whole row groups:
#: a chunk of another size leaves part-filled row groups, and a later checkpoint merges them by
#: rewriting every one it touches. Vectors committed 50,000 rows at a time left a 600k table in
#: 100,000-row groups; the checkpoint after a 57,000-row batch then rewrote 4 of its 6 row groups
#: (about 420,000 vectors) in 4.7-5.9 s, against 0.6 s with the table in whole row groups.
ROW_GROUP_ROWS = 122_880
_MEMORY_LIMIT_RE = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)


def memory_limit_setting() -> str | None:
    """The memory limit warehouse connections set (None: DuckDB's default). Raises on a value
    DuckDB would not understand, naming the variable."""
    value = os.environ.get("PURIFY_DUCKDB_MEMORY_LIMIT", DEFAULT_MEMORY_LIMIT).strip()
    if value.lower() in ("", "default"):
        return None
    if not _MEMORY_LIMIT_RE.match(value):
        raise WarehouseError(f"PURIFY_DUCKDB_MEMORY_LIMIT={value!r} is not a size such as 1GB, 512MB or 'default'")
    return value


def release_memory(con: duckdb.DuckDBPyConnection) -> None:
    """Give back what DuckDB keeps cached once a stage is done with it: the limit drops for a moment
    (DuckDB evicts its cached blocks) and comes back. A connection that runs stage after stage (the
    CLI, the benchmarks, the tests) otherwise carries up to the limit of cached table pages, plus
    what its allocator holds, into every later stage: 0.7 GB after embedding 712k rows here. Then
    glibc returns its free heap pages to the system. Errors are ignored: this only saves memory."""
    limit = memory_limit_setting()
    if limit:
        try:
            run(con, "SET memory_limit = '32MB'")
        except duckdb.Error:
            pass
        finally:
            try:
                run(con, f"SET memory_limit = '{limit}'")
            except duckdb.Error:
                pass
    _trim_heap()


@contextlib.contextmanager
def lean_reads(con: duckdb.DuckDBPyConnection, limit: str = "256MB") -> Iterator[None]:
    """Read a large table with DuckDB's memory limit lowered to ``limit`` (when it is set at all and
    higher), then give the cache back (``release_memory``). A scan that streams a whole vectors
    table into a numpy matrix gains nothing from cached pages, and with the 1 GB limit the cache
    grew by up to 1 GB beside the matrix while it was filled."""
    configured = memory_limit_setting()
    lowered = False
    if configured:
        try:
            run(con, f"SET memory_limit = '{limit}'")  # a literal of ours or a validated setting
            lowered = True
        except duckdb.Error:
            pass
    try:
        yield
    finally:
        if lowered:
            release_memory(con)


def _trim_heap() -> None:
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def open_connection(path: Path | str, *, read_only: bool = False, wait_seconds: float = 600.0) -> duckdb.DuckDBPyConnection:
    """Open the warehouse, waiting (with backoff) while another process holds the write lock."""
    path = Path(path)
    if not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WarehouseError(f"cannot create the warehouse folder {path.parent}: {exc.strerror}") from exc
    elif not path.exists():
        raise WarehouseError(f"no warehouse at {path}: nothing has been materialized yet")
    deadline = time.monotonic() + wait_seconds
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if _is_lock_error(exc) and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            raise WarehouseError(f"cannot open the warehouse {path}: {exc}") from exc
    limit = memory_limit_setting()
    if limit:
        run(con, f"SET memory_limit = '{limit}'")  # validated above: digits and a unit
    if not read_only:
        ensure_schema(con)
    return con


@contextlib.contextmanager
def connect(path: Path | str, *, read_only: bool = False, wait_seconds: float = 600.0) -> Iterator[duckdb.DuckDBPyConnection]:
    con = open_connection(path, read_only=read_only, wait_seconds=wait_seconds)
    try:
        yield con
    finally:
        con.close()


def run(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | dict | None = None) -> list[tuple]:
    """Execute one statement and consume its whole result (DuckDB 2 refuses new work on a
    connection while a result is unfinished). Parameters are bound, never formatted into the SQL."""
    return con.execute(sql, params if params is not None else []).fetchall()


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> Any:
    rows = run(con, sql, params)
    return rows[0][0] if rows else None


#: columns added to a table after warehouses were made without them: added (empty) when such a
#: warehouse is opened
ADDED_COLUMNS: dict[str, list[tuple[str, str]]] = {"purified_dataset": [("row_hash", "VARCHAR")]}


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    for name, columns in TABLE_DDL.items():
        run(con, f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
    for name, added in ADDED_COLUMNS.items():
        for column, kind in added:
            run(con, f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {column} {kind}")


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    run(con, "BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        run(con, "ROLLBACK")
        raise
    else:
        run(con, "COMMIT")


@contextlib.contextmanager
def background_write(con: duckdb.DuckDBPyConnection, write: Callable[[duckdb.DuckDBPyConnection], Any],
                     timings: dict[str, float] | None = None, name: str = "store",
                     after_commit: Callable[[duckdb.DuckDBPyConnection], Any] | None = None) -> Iterator[Callable[[], Any]]:
    """Run ``write(cursor)`` in one transaction on a cursor of ``con`` (its own connection to the same
    database) in a thread, while the body does other work (files, plots): DuckDB releases the GIL
    while it writes and commits, so the two share the cores. Yields ``wait()``, which blocks until
    the write is committed and returns its result or raises its error; the body calls it before it
    publishes anything that must follow the write. Leaving the block always waits for the write
    (a failed body does not leave a transaction running); the write's seconds go to ``timings[name]``.
    ``after_commit(cursor)``, when given, runs in the same thread once the write is committed (such
    as copying what was written into the flat-file cache, which needs the committed row ids)."""
    cursor = con.cursor()

    def write_and_commit() -> Any:
        with transaction(cursor):
            value = write(cursor)
        if after_commit is not None:
            after_commit(cursor)
        return value

    wait = in_thread(write_and_commit, timings, name)
    try:
        yield wait
    finally:
        wait(raise_error=False)
        cursor.close()


def in_thread(work: Callable[[], Any], timings: dict[str, float] | None = None, name: str = "work") -> Callable[..., Any]:
    """``work()`` started in a thread (``purify-<name>``); returns ``wait(raise_error=True)``, which
    joins it and returns its result or raises its error (``raise_error=False``: only joins). The
    thread's seconds are added to ``timings[name]``."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.perf_counter()
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc
        finally:
            if timings is not None:
                timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - started, 4)

    thread = threading.Thread(target=run, name=f"purify-{name}", daemon=True)
    thread.start()

    def wait(raise_error: bool = True) -> Any:
        thread.join()
        if raise_error and "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    return wait


def unregister(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop a frame registered on ``con``. In a transaction a failed statement aborted, DuckDB refuses
    even this; the caller's ``transaction`` rolls back, and the statement's own error is the one
    that must reach the user, not this refusal."""
    with contextlib.suppress(duckdb.TransactionException):
        con.unregister(name)


@contextlib.contextmanager
def registered(con: duckdb.DuckDBPyConnection, **frames: Any) -> Iterator[duckdb.DuckDBPyConnection]:
    """The frames (name=frame; None skipped) visible to SQL on ``con`` for the block, then dropped
    with ``unregister``, so that a failed statement's own error is what the block raises."""
    names: list[str] = []
    try:
        for name, frame in frames.items():
            if frame is not None:
                con.register(name, frame)
                names.append(name)
        yield con
    finally:
        for name in names:
            unregister(con, name)


def insert_frame(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame | Any) -> int:
    """Insert a polars/arrow frame by column name; returns the number of rows inserted."""
    if table not in TABLE_DDL:
        raise WarehouseError(f"unknown table {table!r}")
    n = len(frame)
    if n == 0:
        return 0
    columns = list(frame.columns)
    con.register("_purify_insert", frame)
    try:
        cols = ", ".join(f'"{c}"' for c in columns)
        run(con, f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _purify_insert")
    finally:
        unregister(con, "_purify_insert")
    return n


def replace_batch(con: duckdb.DuckDBPyConnection, table: str, batch_id: str, frame: pl.DataFrame | None) -> int:
    """Delete one batch's rows of ``table`` and insert ``frame``, in the caller's transaction."""
    run(con, f"DELETE FROM {table} WHERE batch_id = ?", [batch_id])
    return 0 if frame is None else insert_frame(con, table, frame)


def replace_table(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame | None, where: str = "", params: Sequence[Any] = ()) -> int:
    """Delete rows of ``table`` (all, or those matching ``where``) and insert ``frame``."""
    run(con, f"DELETE FROM {table} {('WHERE ' + where) if where else ''}", list(params))
    return 0 if frame is None else insert_frame(con, table, frame)


def table_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {t: int(scalar(con, f"SELECT count(*) FROM {t}")) for t in TABLE_DDL}


def current_cycle(con: duckdb.DuckDBPyConnection) -> int:
    """The latest cycle number (0 before the first clustering)."""
    return int(scalar(con, "SELECT COALESCE(MAX(cycle), 0) FROM cycles"))


def markdown_table(frame: pl.DataFrame, max_rows: int = 10, max_chars: int = 80) -> str:
    """A small markdown preview of a frame for Dagster metadata."""
    if frame.is_empty():
        return "_(no rows)_"
    head = frame.head(max_rows)

    def cell(value: Any) -> str:
        text = "" if value is None else str(value)
        text = text.replace("\n", " ").replace("|", "\\|")
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    for row in head.iter_rows():
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    if len(frame) > max_rows:
        lines.append(f"\n_{len(frame) - max_rows} more rows_")
    return "\n".join(lines)


def matrix_from_query(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | dict | None, n_rows: int,
                      dtype: Any = np.float32, batch_rows: int = 65536,
                      out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fill an ``(n_rows, width)`` matrix from a query returning ``(pos, values)``: each result row's
    list ``values`` becomes row ``pos`` of the matrix. Returns (matrix, filled), ``filled`` a bool per
    row. The result is streamed in Arrow batches of ``batch_rows``, so a large list column never
    exists as one Python, Arrow or polars object: the matrix is the only full-size copy (1.6M x 512
    float32 vectors: 3.3 GB instead of 12 GB through a polars frame). Rows the query does not
    return stay zero. Every list must have the same length and no nulls (ValueError naming the row)."""
    reader = con.sql(sql, params=(params if isinstance(params, dict) else list(params)) if params else None).to_arrow_reader(batch_rows)
    return _fill_matrix(reader, n_rows, np.dtype(dtype), lambda first: arrow_numpy(first).astype(np.int64, copy=False), out)


def matrix_by_rowid(con: duckdb.DuckDBPyConnection, table: str, column: str, rowids: np.ndarray, positions: np.ndarray,
                    n_rows: int, dtype: Any = np.float32, batch_rows: int = 16384,
                    out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``matrix_from_query`` for rows of ``table`` named by their ``rowid``: table row ``rowids[i]``'s
    list ``column`` becomes matrix row ``positions[i]``. One sequential scan over the rowid range
    instead of a join that carries every list through a hash table: 1.7M vectors of 512 floats
    load several times faster. The rowids must come from the same unchanged table (read them
    and call this with no write in between). ``out``: an ``(n_rows, width)`` matrix to fill in
    place (rows not named keep their values; the filled mask covers only the rows named)."""
    rowids = np.asarray(rowids, dtype=np.int64)
    if len(rowids) == 0:
        empty = out if out is not None else np.zeros((n_rows, 0), dtype=np.dtype(dtype))
        return empty, np.zeros(n_rows, dtype=bool)
    positions = np.asarray(positions, dtype=np.int64)
    uniq, first, inverse = np.unique(rowids, return_index=True, return_inverse=True)
    if len(uniq) < len(rowids):
        # one table row wanted at several matrix rows (keys that share a row hash share its
        # signature): read it once, then copy it to the others
        out, filled = matrix_by_rowid(con, table, column, uniq, positions[first], n_rows, dtype, batch_rows, out)
        src = positions[first][inverse]
        again = src != positions
        out[positions[again]] = out[src[again]]
        filled[positions[again]] = filled[src[again]]
        return out, filled
    lo, hi = int(rowids.min()), int(rowids.max())
    lookup = np.full(hi - lo + 1, -1, dtype=np.int64)
    lookup[rowids - lo] = positions
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", column):
        raise WarehouseError(f"not a plain table/column name: {table}.{column}")
    reader = con.sql(f"SELECT rowid, {column} FROM {table} WHERE rowid BETWEEN {lo} AND {hi}").to_arrow_reader(batch_rows)
    return _fill_matrix(reader, n_rows, np.dtype(dtype),
                        lambda first: lookup[arrow_numpy(first).astype(np.int64, copy=False) - lo], out)


_ARROW_TO_NUMPY = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8,
                   "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "halffloat": np.float16,
                   "float": np.float32, "double": np.float64}


def arrow_numpy(arr: Any) -> np.ndarray:
    """A numeric Arrow array without nulls as a read-only numpy view of its data buffer; anything
    else through pyarrow's ``to_numpy``. pyarrow's ``to_numpy`` imports pandas on its first call,
    even for int64: 0.7 s in every fresh process, and every Dagster run of a stage is one."""
    dtype = _ARROW_TO_NUMPY.get(str(arr.type))
    if dtype is None or arr.null_count:
        return arr.to_numpy(zero_copy_only=False)
    if len(arr) == 0:
        return np.empty(0, dtype=dtype)
    return np.frombuffer(arr.buffers()[1], dtype=dtype)[arr.offset:arr.offset + len(arr)]


def _fill_matrix(reader: Any, n_rows: int, dtype: np.dtype, positions_of: Any,
                 out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Arrow batches of (key, list) -> rows of one matrix; ``positions_of(key column)`` gives each
    batch row's matrix row, or -1 to skip it. The lists are read from the batch's offsets and
    values buffers in numpy (``arrow_numpy``): no Arrow take or conversion that would import pandas.
    Every wanted list must be non-NULL and as long as the first one (ValueError naming the row);
    lists of rows that are skipped are not checked. ``out``: fill this matrix instead of a new one
    (its width is then the width every list must have)."""
    if out is not None and out.shape[0] != n_rows:
        raise ValueError(f"the matrix to fill has {out.shape[0]} rows, expected {n_rows}")
    filled = np.zeros(n_rows, dtype=bool)
    for batch in reader:
        if batch.num_rows == 0:
            continue
        pos = positions_of(batch.column(0))
        values = batch.column(1)
        wanted = pos >= 0
        if not wanted.any():
            continue
        sel = None if wanted.all() else np.flatnonzero(wanted)
        if values.null_count:
            nulls = values.is_null().to_numpy(zero_copy_only=False) & wanted
            if nulls.any():
                raise ValueError(f"row {int(pos[np.flatnonzero(nulls)[0]])}: the list is NULL")
        offsets = arrow_numpy(values.offsets).astype(np.int64, copy=False)
        starts, lengths = offsets[:-1], np.diff(offsets)
        uniform = bool(len(lengths)) and (lengths == lengths[0]).all()  # every list of the batch, wanted or not
        if sel is not None:
            pos, starts, lengths = pos[sel], starts[sel], lengths[sel]
        width = int(lengths[0]) if out is None else out.shape[1]
        if (lengths != width).any():
            bad = np.flatnonzero(lengths != width)[0]
            raise ValueError(f"row {int(pos[bad])}: a list of {int(lengths[bad])} values where the others have {width}")
        if out is None:
            out = np.zeros((n_rows, width), dtype=dtype)  # calloc: pages are touched only when filled
        flat = arrow_numpy(values.values)
        if sel is None or uniform:
            # every list of the batch has the width: the batch is one (rows x width) block
            block = flat[int(offsets[0]):int(offsets[-1])].reshape(len(values), width)
            out[pos] = block if sel is None else block[sel]
        else:  # lists of other widths among the skipped rows: gather the wanted ones
            out[pos] = flat[starts[:, None] + np.arange(width)]
        filled[pos] = True
    if out is None:
        out = np.zeros((n_rows, 0), dtype=dtype)
    return out, filled


def cached_chart(con: duckdb.DuckDBPyConnection, kind: str, content: Any, draw: Any) -> tuple[bytes, bool]:
    """The PNG ``draw()`` makes for ``content`` (anything JSON can hold: the chart's title and data),
    from ``chart_cache`` when the last chart of this ``kind`` showed the same content; otherwise
    drawn and stored in its place. Returns (png, whether it came from the cache)."""
    import hashlib
    import json

    key = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    found = run(con, "SELECT png FROM chart_cache WHERE kind = ? AND key = ?", [kind, key])
    if found:
        return bytes(found[0][0]), True
    png = draw()
    with transaction(con):
        run(con, "DELETE FROM chart_cache WHERE kind = ?", [kind])
        run(con, "INSERT INTO chart_cache VALUES (?, ?, ?)", [kind, key, png])
    return png, False


def cache_lists(con: duckdb.DuckDBPyConnection, table: str, column: str, keys: pl.DataFrame, on: Sequence[str],
                values: np.ndarray, dtype: Any, condition: str = "TRUE", params: Sequence[Any] = ()) -> int:
    """Copy lists a stage has just inserted into ``table`` (row ``i`` of ``keys``, matched on the
    columns ``on`` and ``condition`` on ``e``, holds ``values[i]``) into the flat-file cache of
    ``table.column`` (``core.list_cache``), so that the next reader does not read them back from
    DuckDB. Returns the rows copied; 0 without a cache (in-memory warehouse, switched off). The
    cache is only a cache: a failure to write it is ignored."""
    from purify_assets.core import list_cache

    folder = list_cache.folder_for(database_path(con), table, column, dtype)
    key_hash = list_cache.key_hash_sql(table)
    if folder is None or key_hash is None or not len(keys):
        return 0
    match = " AND ".join([f"e.{c} = k.{c}" for c in on] + [condition])
    con.register("_cache_keys", keys.select(list(on)).with_row_index("_pos"))
    try:
        found = con.sql(f"SELECT k._pos, e.rowid AS rid, {key_hash} AS kh FROM _cache_keys k JOIN {table} e ON {match}",
                        params=list(params) or None).fetchnumpy()
    finally:
        con.unregister("_cache_keys")
    try:
        list_cache.ListCache(folder, dtype).add(found["rid"], found["kh"], np.asarray(values, dtype=dtype), found["_pos"])
    except OSError:
        return 0
    return len(found["rid"])


def database_path(con: duckdb.DuckDBPyConnection) -> str | None:
    """The file of the connection's current database, or None for an in-memory one."""
    rows = run(con, "SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
    return rows[0][0] if rows and rows[0][0] else None


def frame(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
    """Run a query and return a polars frame (parameters bound, never formatted into the SQL)."""
    return con.sql(sql, params=list(params) if params else None).pl()
