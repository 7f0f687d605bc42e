"""Global stages, one purification cycle: dedup -> cluster -> project / measure -> review -> publish.

Every cycle starts at ``cluster_rows``, which numbers it (``cycles`` table) and records the
parameter version and hash it ran with. Later stages work on the latest cycle.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import duckdb
import numpy as np
import polars as pl

from purify_assets.core import warehouse as wh
from purify_assets.core.params import ParamsStore, ParamsVersion
from purify_assets.stages import Log, StageReport, _no_log, releases_memory

REMOVING_KINDS = ("exact", "near", "semantic")
# row ids that dedup removes: non-representative members of exact / near / semantic sets
REMOVED_ROW_IDS_SQL = ("SELECT row_id FROM dedup_sets WHERE NOT is_representative AND kind IN ("
                       + ", ".join(f"'{k}'" for k in REMOVING_KINDS) + ")")


def _lists_for(con: duckdb.DuckDBPyConnection, keys: pl.DataFrame, table: str, column: str, on: list[str],
               condition: str, params: list[Any], dtype: Any = np.float32, lazy: bool = False) -> tuple[Any, np.ndarray]:
    """The list ``column`` of the ``table`` row matching each row of ``keys`` on the columns ``on``
    (and ``condition`` on ``e``), as one matrix in the order of ``keys``, plus a found mask. The
    rows are matched on keys alone (with their rowid and, for a cached table, the hash of their key
    columns). With a warehouse file, the lists come from its flat-file copies
    (``core.list_cache``: a quarter of the time of a DuckDB read), and rows not copied yet are read
    from DuckDB and added to them. Without one: when the rows are a good part of the table, in one
    scan by rowid (``warehouse.matrix_by_rowid``: 1.6M vectors in 5 s instead of 17 s through the
    join), otherwise through the join itself. Nothing passes through a polars list column. ``lazy``:
    with a warehouse file, a ``list_cache.CachedRows`` (rows gathered when indexed) instead of a matrix."""
    from purify_assets.core import list_cache

    k = keys.select(on).with_row_index("_pos")
    match = " AND ".join([f"e.{c} = k.{c}" for c in on] + [condition])
    key_hash = list_cache.key_hash_sql(table)
    con.register("_list_keys", k)
    try:
        with wh.lean_reads(con):  # the pages read end up in the matrix: DuckDB need not cache them too
            found = con.sql(f"SELECT k._pos, e.rowid AS rid{', ' + key_hash + ' AS kh' if key_hash else ''} "
                            f"FROM _list_keys k JOIN {table} e ON {match}", params=params).fetchnumpy()
            table_rows = None

            def from_warehouse(rid: np.ndarray, pos: np.ndarray, out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
                nonlocal table_rows
                if table_rows is None:
                    table_rows = int(wh.scalar(con, f"SELECT count(*) FROM {table}"))
                # a good part of the table, or rows close together (a new batch): one scan of their rowid range
                if len(rid) and (len(rid) * 3 >= table_rows or int(rid.max() - rid.min()) < 3 * len(rid)):
                    return wh.matrix_by_rowid(con, table, column, rid, pos, len(k), dtype, out=out)
                con.register("_list_some", k.filter(pl.col("_pos").is_in(pl.Series(pos, dtype=pl.UInt32).implode())))
                try:
                    return wh.matrix_from_query(con, f"SELECT k._pos, e.{column} FROM _list_some k JOIN {table} e ON {match}",
                                                params, len(k), dtype, out=out)
                finally:
                    con.unregister("_list_some")

            folder = list_cache.folder_for(wh.database_path(con), table, column, dtype) if key_hash else None
            if folder is not None:
                cache = list_cache.ListCache(folder, dtype)
                if lazy:
                    rows = cache.view(found["rid"], found["kh"], found["_pos"], len(k), from_warehouse)
                    if rows is not None:
                        return rows, rows.filled
                return cache.read(found["rid"], found["kh"], found["_pos"], len(k), from_warehouse)
            return from_warehouse(found["rid"], found["_pos"], None)
    finally:
        con.unregister("_list_keys")


def _vector_matrix(con: duckdb.DuckDBPyConnection, keys: pl.DataFrame, model_id: str, table: str = "embeddings",
                   by_text: bool = True, lazy: bool = False) -> tuple[Any, np.ndarray]:
    """The vectors ``model_id`` made for the rows of ``keys``, as one float32 matrix in the order of
    ``keys``, and a bool per row saying whether it has one (rows without stay zero). ``by_text``
    matches (row_id, text_hash), so a row whose text changed since it was embedded has no vector;
    otherwise row_id alone (response vectors carry the response's hash). See ``_lists_for``."""
    return _lists_for(con, keys, table, "vector", ["row_id", "text_hash"] if by_text else ["row_id"],
                      "e.model_id = ?", [model_id], lazy=lazy)


def _all_vectors(con: duckdb.DuckDBPyConnection, keys: pl.DataFrame, model_id: str, lazy: bool = False) -> Any:
    """``_vector_matrix`` for rows that must all have a vector (they were selected by a join on
    ``embeddings``); a row without one means the warehouse changed under the stage. ``lazy``: see
    ``_lists_for`` (an array when the warehouse has no cache files)."""
    x, found = _vector_matrix(con, keys, model_id, lazy=lazy)
    if not found.all():
        missing = keys["row_id"].gather(np.flatnonzero(~found)[:3]).to_list()
        raise RuntimeError(f"{int((~found).sum()):,} rows lost their {model_id!r} vectors while the stage ran "
                           f"(e.g. {missing}); re-run the stage")
    return x


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


# --------------------------------------------------------------------------------------------- dedup
def _dedup_config(dedup_params: dict[str, Any], model_id: str) -> str:
    from purify_assets.core.params import params_hash

    return params_hash({"dedup": dedup_params, "model": model_id})


# New MinHash signatures up to this size (uint32; 64 MiB is 131k rows at 128 permutations) are stored in a
# thread while the searches run (a backfill saves the commit's seconds); larger ones, a full run at
# scale, are stored first and freed, since the store's copies would otherwise add to the stage's peak
SIGNATURES_STORED_IN_BACKGROUND_MAX_BYTES = 64 * 2**20


def _signatures(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame, num_perm: int, report: StageReport,
                background: contextlib.ExitStack) -> tuple[np.ndarray, Callable[[], Any]]:
    """MinHash signatures of every row of ``rows`` (one matrix row each, in order), in the compact
    uint32 form (``dedup.compact_signatures``: half the memory of uint64, at 1.7M rows 0.8 GB less
    at the stage's peak); cached in ``dedup_signatures`` (UINTEGER[]; UBIGINT[] in older warehouses)
    by (row hash, shingle config), so only row hashes never seen are hashed. The cached ones stream straight into the matrix.

    New signatures up to ``SIGNATURES_STORED_IN_BACKGROUND_MAX_BYTES`` are stored in a thread
    (``warehouse.background_write``, entered on ``background``) while the searches run: their commit
    often takes the checkpoint of the embed stage's writes (0.3 s of a 10k-row backfill); larger ones
    are stored before this returns. Returns (signatures, ``wait``): ``wait()`` blocks
    until they are committed and copied to the flat files, and raises the store's error."""
    from purify_assets.core.dedup import compact_signatures, minhash_signatures

    config = f"minhash-auto-{num_perm}"
    # stored values are below 2**32 (or the empty marker, which the cast maps to 2**32 - 1, as compact_signatures does)
    with report.timed("signatures_cached"):
        sig, found = _lists_for(con, rows, "dedup_signatures", "signature", ["row_hash"], "e.config = ?", [config], np.uint32)
    if sig.shape[1] != num_perm:
        sig = np.zeros((len(rows), num_perm), dtype=np.uint32)  # nothing cached yet
    missing_pos = np.flatnonzero(~found)
    missing = rows.select("row_hash").with_row_index("_pos")[missing_pos] if len(missing_pos) else None
    unique = None
    wait: Callable[[], Any] = lambda: None  # noqa: E731 - nothing stored in the background
    if missing is not None:
        # the whole row's text (what near dedup compares) for each row hash never hashed before
        con.register("_sig_missing", missing.select("row_hash").unique())
        try:
            unique = wh.frame(con, "SELECT c.row_hash, min(concat_ws(chr(10), c.instruction, c.input, c.output)) AS full_text "
                                   "FROM clean_rows c JOIN _sig_missing USING (row_hash) GROUP BY c.row_hash ORDER BY c.row_hash")
        finally:
            con.unregister("_sig_missing")
    report.counts["near.signatures_cached"] = int(rows["row_hash"].gather(np.flatnonzero(found)).n_unique()) if found.any() else 0
    report.counts["near.signatures_computed"] = 0 if unique is None else len(unique)
    if unique is not None and len(unique):
        with report.timed("near_hashing"):
            fresh_sig = minhash_signatures(unique["full_text"].to_list(), num_perm=num_perm)
        # stored compact (uint32): half the bytes of uint64 to write and to log before the checkpoint
        # (10k new rows: 5 MB instead of 10 MB)
        compact = compact_signatures(fresh_sig)
        fresh = pl.DataFrame({"row_hash": unique["row_hash"], "config": [config] * len(unique),
                              "signature": pl.Series(compact).cast(pl.List(pl.UInt32))})
        keys = unique.select("row_hash")

        # one transaction (a cache keyed by (row hash, config): all of a batch of signatures or none),
        # then into the flat files, which the next run reads them from
        def store(cur: duckdb.DuckDBPyConnection) -> None:
            wh.insert_frame(cur, "dedup_signatures", fresh)

        def to_flat_files(cur: duckdb.DuckDBPyConnection) -> None:
            wh.cache_lists(cur, "dedup_signatures", "signature", keys, ["row_hash"], compact, np.uint32,
                           "e.config = ?", [config])

        if compact.nbytes <= SIGNATURES_STORED_IN_BACKGROUND_MAX_BYTES:
            report.values["signatures_store"] = "background"
            wait = background.enter_context(wh.background_write(con, store, report.timings, "signatures_store",
                                                                after_commit=to_flat_files))
        else:
            # a full run at scale: stored before the searches, so that neither the frame nor DuckDB's
            # insert buffers stay alive beside the LSH index and the vectors (the stage's peak)
            report.values["signatures_store"] = "before_search"
            with report.timed("signatures_store"):
                with wh.transaction(con):
                    store(con)
                to_flat_files(con)
            del fresh
        # every missing row (copies of one hash included) takes its hash's new signature
        where = missing.select("_pos", "row_hash").join(unique.select("row_hash").with_row_index("_new"), on="row_hash",
                                                        how="left", maintain_order="left")
        sig[where["_pos"].to_numpy()] = compact[where["_new"].to_numpy()]
    return sig, wait


@releases_memory
def dedup_rows(con: duckdb.DuckDBPyConnection, dedup_params: dict[str, Any], model_id: str, log: Log = _no_log, *,
               embedded_text: str = "instruction") -> StageReport:
    """Duplicate sets over every kept row of every batch: exact, near (MinHash), semantic (cosine), and
    conflicts (flagged only). Incremental: with the same settings as last time and no old row changed,
    only pairs involving rows new since the last run are searched (the old sets are carried over).
    ``embedded_text`` is the embed.text_template the vectors were made from (the conflict check
    matches instructions by vector only when the vectors are of the instruction)."""
    from purify_assets.core import dedup

    report = StageReport()
    # keys only: texts are read where a step needs them (hashing new rows, conflicts), so that at 1.7M
    # rows the frame stays small beside the vectors and signatures
    config = _dedup_config(dedup_params, model_id)
    with report.timed("load"):
        # what the last run saw (dedup_state), summed up first: one config, one row per row id
        n_state, n_state_ids, n_configs, state_config = wh.run(
            con, "SELECT count(*), count(DISTINCT row_id), count(DISTINCT config), any_value(config) FROM dedup_state")[0]
        comparable = bool(dedup_params.get("incremental", True)) and n_state > 0 and n_state == n_state_ids \
            and n_configs == 1 and state_config == config
        # then every row with its state row joined in the same scan (at 660k rows the state read into
        # polars and anti-joined there on three string columns cost 0.9 s): a row is new when it has
        # no state row; the old rows are unchanged when each state row met its row with the same hashes
        state_sql = ("s.row_id IS NULL AS is_new, s.row_id IS NOT NULL AND (s.row_hash IS DISTINCT FROM c.row_hash "
                     "OR s.text_hash IS DISTINCT FROM c.text_hash) AS changed" if comparable else
                     "TRUE AS is_new, FALSE AS changed")
        rows = wh.frame(con, f"""
            SELECT c.row_id, c.row_hash, c.text_hash, coalesce(length(c.output), 0) AS response_length,
                   e.row_id IS NOT NULL AS has_vector, {state_sql}
            FROM clean_rows c LEFT JOIN embeddings e ON e.row_id = c.row_id AND e.text_hash = c.text_hash AND e.model_id = ?
            {"LEFT JOIN dedup_state s ON s.row_id = c.row_id" if comparable else ""}
            ORDER BY c.row_id""", [model_id])
        n = len(rows)
        # vectors of the rows that have one, in row order; ``vector_pos`` is each row's index into them
        rows = rows.with_columns(pl.when(pl.col("has_vector")).then(pl.col("has_vector").cast(pl.Int64).cum_sum() - 1)
                                 .otherwise(None).alias("vector_pos"))
        ids = rows["row_id"].to_list()
        lengths = rows["response_length"].to_numpy()
        previous = wh.frame(con, "SELECT * FROM dedup_sets")
    with report.timed("plan"):
        new_mask = None
        if comparable:
            is_new = rows["is_new"].to_numpy()
            # every state row met its row (none gone) and no old row's text changed
            if int(n - is_new.sum()) == n_state and not rows["changed"].any():
                new_mask = is_new
    if new_mask is not None:
        report.values["mode"] = "incremental"
        report.counts["rows_new_since_last_run"] = int(new_mask.sum())
    else:
        report.values["mode"] = "full"
    log(f"dedup over {n:,} rows ({report.values['mode']})")

    def prev(kind: str) -> pl.DataFrame | None:
        return previous.filter(pl.col("kind") == kind).select(dedup.DEDUP_COLUMNS) if new_mask is not None else None

    frames: list[pl.DataFrame] = []
    if n and dedup_params.get("exact", True):
        with report.timed("exact"):
            if new_mask is None:
                frames.append(dedup.exact_duplicates(ids, rows["row_hash"].to_list(), lengths))
            else:
                # exact sets are the rows of one hash: only the hashes of new rows can have new sets or
                # new members; every other set is the last run's, carried over as it is
                touched = rows.filter(pl.col("row_hash").is_in(rows.filter(pl.Series(new_mask))["row_hash"].implode()))
                kept = prev("exact").filter(~pl.col("row_id").is_in(touched["row_id"].implode()))
                fresh = dedup.exact_duplicates(touched["row_id"], touched["row_hash"], touched["response_length"].to_numpy())
                frames.append(pl.concat([kept, fresh.select(dedup.DEDUP_COLUMNS)], how="vertical_relaxed"))
                report.counts["exact.rows_searched"] = len(touched)
    num_perm = int(dedup_params.get("num_perm", 128))
    sigs = None
    signatures_stored: Callable[[], Any] = lambda: None  # noqa: E731
    # an incremental run without new rows carries every near and semantic set over: no search reads a
    # signature (at 660k rows reading them cost 1.3 s)
    searches_carried = new_mask is not None and not new_mask.any()
    with contextlib.ExitStack() as background:  # the new signatures are stored while the searches run
        if n and not searches_carried and (dedup_params.get("near", True)
                                           or dedup_params.get("semantic_mode", "hybrid") == "hybrid"):
            sigs, signatures_stored = _signatures(con, rows, num_perm, report, background)
        elif n and searches_carried:
            report.values["signatures"] = "not read: no row is new since the last run, every set is carried over"
        if n and dedup_params.get("near", True):
            with report.timed("near"):
                if searches_carried:
                    frames.append(prev("near"))
                else:
                    frames.append(dedup.near_duplicates(ids, sigs, threshold=float(dedup_params.get("near_threshold", 0.8)),
                                                        num_perm=num_perm, response_lengths=lengths, new_mask=new_mask,
                                                        previous_sets=prev("near")))
        vectors = np.zeros((0, 0), dtype=np.float32)
        if n and (dedup_params.get("semantic", True) or dedup_params.get("conflicts", True)):
            # the hybrid search scores only its LSH candidates, and conflicts only rows sharing an input: with
            # the flat-file cache the vectors stay in it (memory-mapped) and only those rows are gathered
            lazy = dedup_params.get("semantic_mode", "hybrid") == "hybrid" or not dedup_params.get("semantic", True)
            with report.timed("load_vectors"):
                vectors, _ = _vector_matrix(con, rows.filter(pl.col("has_vector")), model_id, lazy=lazy)
        if n and dedup_params.get("semantic", True):
            has_vec = rows["has_vector"].to_numpy()
            every = bool(has_vec.all())
            emb = rows.filter(pl.col("has_vector")).select("row_id", "response_length") if not every else rows
            if len(emb):
                mask = (new_mask if every else new_mask[has_vec]) if new_mask is not None else None
                with report.timed("semantic"):
                    if mask is not None and not mask.any():
                        frames.append(prev("semantic"))
                    elif dedup_params.get("semantic_mode", "hybrid") == "hybrid":
                        t = float(dedup_params.get("semantic_threshold", 0.85))
                        w = float(dedup_params.get("semantic_weight_cosine", 0.5))
                        # exact lower bounds: w*cos + (1-w)*J >= t needs cos >= (t-(1-w))/w and J >= (t-w)/(1-w)
                        frames.append(dedup.hybrid_duplicates(
                            emb["row_id"].to_list(), vectors, sigs if every else sigs[has_vec], threshold=t, weight_cosine=w,
                            candidate_cosine=max(0.0, (t - (1 - w)) / w) if w > 0 else 1.0,
                            candidate_jaccard=max(0.0, (t - w) / (1 - w)) if w < 1 else 1.0,
                            response_lengths=emb["response_length"].to_numpy(), new_mask=mask, previous_sets=prev("semantic")))
                    else:
                        frames.append(dedup.semantic_duplicates(
                            emb["row_id"].to_list(), vectors, threshold=float(dedup_params.get("semantic_threshold", 0.95)),
                            response_lengths=emb["response_length"].to_numpy(), new_mask=mask, previous_sets=prev("semantic")))
            report.counts["semantic.rows_without_vector"] = int(n - len(emb))
        if n and dedup_params.get("conflicts", True):
            with report.timed("conflicts"):
                frames.append(_conflict_sets(con, rows, vectors, dedup_params, model_id, embedded_text, report))
        signatures_stored()  # committed (or its error raised) before the sets that use them are stored
    del vectors, sigs  # the largest arrays of the stage: gone before the sets are combined and stored
    frames = [f for f in frames if f is not None and len(f)]
    sets = dedup.combine_sets(*frames).select(dedup.DEDUP_COLUMNS) if frames else None
    state_now = rows.select("row_id", "row_hash", "text_hash").with_columns(pl.lit(config).alias("config"))
    with report.timed("store"), wh.transaction(con):
        wh.replace_table(con, "dedup_sets", sets)
        if new_mask is not None:  # every old row is stored as it is now: only the new ones go in
            if new_mask.any():
                wh.insert_frame(con, "dedup_state", state_now.filter(pl.Series(new_mask)))
        else:
            wh.replace_table(con, "dedup_state", state_now)
    with report.timed("summary"):
        summary = wh.frame(con, "SELECT kind, count(DISTINCT set_id) AS sets, count(*) FILTER (WHERE NOT is_representative) "
                                "AS members_beyond_representative FROM dedup_sets GROUP BY kind ORDER BY kind")
        report.counts["rows_considered"] = n
        for kind, n_sets, n_members in summary.iter_rows():
            report.counts[f"{kind}.sets"] = int(n_sets)
            report.counts[f"{kind}.members_beyond_representative"] = int(n_members)
        removed = wh.scalar(con, f"SELECT count(DISTINCT row_id) FROM ({REMOVED_ROW_IDS_SQL})")
        report.counts["rows_removed"] = int(removed)
        report.counts["rows_kept"] = n - int(removed)
        report.counts["rows_flagged_conflict"] = int(wh.scalar(con, "SELECT count(DISTINCT row_id) FROM dedup_sets WHERE kind = 'conflict'"))
        report.values["config_hash"] = config
        report.markdown["sets_by_kind"] = wh.markdown_table(summary)
        report.markdown["largest_sets"] = wh.markdown_table(wh.frame(con, """
            SELECT d.set_id, d.kind, count(*) AS members, any_value(c.text) FILTER (WHERE d.is_representative) AS representative
            FROM dedup_sets d JOIN clean_rows c USING (row_id) GROUP BY d.set_id, d.kind ORDER BY members DESC, d.set_id LIMIT 10"""))
        report.markdown["removed_examples"] = wh.markdown_table(wh.frame(con, """
            SELECT d.kind, round(d.similarity, 3) AS similarity, c.text AS removed, r.text AS kept
            FROM dedup_sets d JOIN clean_rows c ON c.row_id = d.row_id JOIN clean_rows r ON r.row_id = d.representative_row_id
            WHERE NOT d.is_representative ORDER BY d.kind DESC, d.similarity LIMIT 10"""))
    return report


def _conflict_sets(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame, vectors: np.ndarray, dedup_params: dict[str, Any],
                   model_id: str, embedded_text: str, report: StageReport) -> pl.DataFrame | None:
    """Rows with the same input and the same or nearly the same instruction whose responses differ
    materially: ``conflict`` sets (flagged, never removed).

    Instructions match exactly (normalized instruction + input) or, with
    ``dedup.conflict_instruction_match`` "vector" ("auto" picks it when the row vectors are of the
    instruction), when their vectors have cosine >= ``conflict_instruction_cosine`` and their inputs
    are equal: "Summarize this" over two different inputs is not one instruction. Responses differ
    when the cosine of their vectors (``response_embeddings``) is below
    ``conflict_max_response_cosine``; rows without response vectors fall back to MinHash Jaccard below
    ``conflict_max_response_similarity``, which also calls a reworded answer different. ``vectors``
    are the row vectors, ``rows["vector_pos"]`` each row's index into them (null: no vector)."""
    from purify_assets.core import dedup

    answered = wh.frame(con, "SELECT row_id, instruction, coalesce(input, '') AS input, output FROM clean_rows "
                             "WHERE output IS NOT NULL AND output <> '' ORDER BY row_id")
    answered = answered.filter(pl.col("output").str.strip_chars().str.len_chars() > 0).join(
        rows.select("row_id", "response_length", "vector_pos"), on="row_id", how="inner", maintain_order="left")
    report.counts["conflicts.rows_with_a_response"] = len(answered)
    if len(answered) < 2:
        return None
    match = str(dedup_params.get("conflict_instruction_match", "auto"))
    if match not in ("auto", "exact", "vector"):
        raise ValueError(f"dedup.conflict_instruction_match must be auto, exact or vector, got {match!r}")
    if match == "auto":
        match = "vector" if embedded_text in ("instruction", "instruction+input") else "exact"
    answered = answered.with_columns(
        pl.col("input").hash().cast(pl.String).alias("input_key"),
        pl.concat_str([pl.col("instruction"), pl.col("input")], separator="\x1f").hash().cast(pl.String).alias("exact_key"))
    if match == "vector" and answered["vector_pos"].null_count():
        match = "exact"  # some rows have no instruction vector (yet): compare those instructions as text
    # candidate groups: rows sharing the exact key, or (vector matching) rows sharing an input
    group_col = "input_key" if match == "vector" else "exact_key"
    shared = answered.filter(pl.len().over(group_col) >= 2).with_row_index("shared_pos")
    report.values["conflicts.instruction_match"] = match
    responses_x, has_response = _vector_matrix(con, shared, model_id, table="response_embeddings", by_text=False)
    use_vectors = len(shared) > 0 and bool(has_response.all())
    report.values["conflicts.response_similarity"] = "cosine of response vectors" if use_vectors else "MinHash Jaccard"
    report.counts["conflicts.candidate_rows"] = len(shared)
    limit = float(dedup_params.get("conflict_max_response_cosine", 0.5) if use_vectors
                  else dedup_params.get("conflict_max_response_similarity", 0.5))

    def find(part: pl.DataFrame, instructions: Any, threshold: float | None) -> pl.DataFrame:
        responses = responses_x[part["shared_pos"].to_numpy()] if use_vectors else part["output"].to_list()
        return dedup.conflicting_responses(part["row_id"].to_list(), instructions, responses, part["response_length"].to_list(),
                                           instruction_threshold=threshold, max_response_similarity=limit)

    if match == "exact":  # one call: the finder groups the rows by their key itself
        return find(shared, shared["exact_key"].to_list(), None) if len(shared) else None
    cosine = float(dedup_params.get("conflict_instruction_cosine", 0.95))
    out = [find(part, vectors[part["vector_pos"].to_numpy()], cosine)
           for (_,), part in shared.group_by(group_col, maintain_order=True)]
    out = [f for f in out if len(f)]
    return pl.concat(out) if out else None


def kept_rows_sql() -> str:
    """Rows that enter clustering: cleaned, embedded by the current model, not a removed duplicate."""
    return """
        SELECT e.row_id, e.text_hash FROM embeddings e
        JOIN clean_rows c USING (row_id, text_hash)
        WHERE e.model_id = $model_id
          AND e.row_id NOT IN ({removed})
          AND e.row_id NOT IN (SELECT l.row_id FROM cluster_labels l JOIN _dropped d ON l.cycle = d.cycle AND l.cluster = d.cluster)
        ORDER BY e.row_id""".format(removed=REMOVED_ROW_IDS_SQL)


# ------------------------------------------------------------------------------------------- cluster
def _store_fit_state(con: duckdb.DuckDBPyConnection, stage: str, state: pl.DataFrame,
                     kept: tuple[np.ndarray, pl.DataFrame] | None = None) -> None:
    """Write ``state`` (one row per row of the data, see ``_fit_drift``) as the ``fit_state`` of ``stage``.
    A kept fit (``kept``: which rows of ``state`` are new, and the stored rows that are stale, row_id
    and text_hash of rows gone or whose text changed, from ``_fit_drift``) leaves the rows it already
    describes as they are stored (same config, fit cycle, size and ``since_fit``): the stale ones are
    deleted and the new ones inserted, by themselves, instead of rewriting every row each cycle or
    comparing every stored row (0.15-0.2 s per stage at 660k rows). Call inside the stage's
    transaction."""
    if kept is None:
        wh.replace_table(con, "fit_state", state, "stage = ?", [stage])
        return
    new_mask, stale = kept
    if len(stale):
        with wh.registered(con, _stale=stale.select("row_id", "text_hash")):
            wh.run(con, "DELETE FROM fit_state f USING _stale s WHERE f.stage = ? AND f.row_id = s.row_id "
                        "AND f.text_hash = s.text_hash", [stage])
    wh.insert_frame(con, "fit_state", state.filter(pl.Series(new_mask)))


def _fit_drift(con: duckdb.DuckDBPyConnection, stage: str, label: str, data: pl.DataFrame, config: str,
               config_changed: str, setting: str, refit_share: float) -> dict[str, Any]:
    """How far the rows ``data`` (row_id, text_hash) moved from the last fit of ``stage`` in
    ``fit_state`` (a clustering, a projection or a k sweep, named ``label`` in the reasons).

    The fit is usable when it was made with this ``config`` (else the reason is ``config_changed``)
    and the rows that changed since it are at most ``refit_share`` (the parameter ``setting``) of the
    rows it was made on: new rows, rows placed onto it in later cycles (``since_fit``), and its rows
    that are gone or whose text changed. Returns {"usable", "reason"} and, when a fit exists,
    fit_cycle, rows_at_fit, changed_share, rows_new, rows_placed_before, rows_gone, ``known`` (row_id,
    text_hash, since_fit of the rows of ``data`` the fit covers) and ``stale`` (row_id, text_hash of
    the stored rows that match no row of ``data``: gone, or their text changed)."""
    n_state, n_configs, state_config, fit_cycle, rows_at_fit = wh.run(
        con, "SELECT count(*), count(DISTINCT config), any_value(config), any_value(fit_cycle), any_value(rows_at_fit) "
             "FROM fit_state WHERE stage = ?", [stage])[0]
    if not n_state:
        return {"usable": False, "reason": f"no earlier {label}"}
    if n_configs != 1 or state_config != config:
        return {"usable": False, "reason": config_changed}
    fit_cycle, rows_at_fit = int(fit_cycle), int(rows_at_fit)
    # rows the fit still describes: same row, same text (hence the same vector); joined in DuckDB, where
    # reading the state into polars and joining there on two string columns cost 0.5 s of 660k rows
    # the stored rows that match none (gone, or their text changed) come out of the same join
    with wh.registered(con, _drift_rows=data.select("row_id", "text_hash")):
        matched = wh.frame(con, "SELECT f.row_id, f.text_hash, f.since_fit, d.row_id IS NOT NULL AS current "
                                "FROM fit_state f LEFT JOIN _drift_rows d ON f.row_id = d.row_id AND f.text_hash = d.text_hash "
                                "WHERE f.stage = ?", [stage])
    known = matched.filter(pl.col("current")).drop("current")
    stale = matched.filter(~pl.col("current")).select("row_id", "text_hash")
    del matched
    placed_before = int(known["since_fit"].sum())
    new = len(data) - len(known)
    gone = rows_at_fit - (len(known) - placed_before)
    changed = new + placed_before + gone
    share = changed / max(rows_at_fit, 1)
    usable = share <= refit_share
    reason = (f"{changed:,} rows new, placed or gone since the {label} of cycle {fit_cycle}: {share:.1%} of its "
              f"{rows_at_fit:,} rows, {'within' if usable else 'above'} {setting} {refit_share:.0%}")
    return {"usable": usable, "reason": reason, "fit_cycle": fit_cycle, "rows_at_fit": rows_at_fit, "changed_share": share,
            "rows_new": new, "rows_placed_before": placed_before, "rows_gone": gone, "known": known, "stale": stale}


def _cluster_plan(con: duckdb.DuckDBPyConnection, data: pl.DataFrame, config: str, cluster_params: dict[str, Any],
                  refit_share: float) -> dict[str, Any]:
    """Whether the last K-means fit still serves the kept rows ``data`` (row_id, text_hash): same
    cluster parameters, review drops and model (``config``), K-means on the raw vectors, and at most
    ``refit_share`` of the rows it was fitted on are new, assigned since, or gone. When it does,
    also the stored centres and the previous cycle's labels of the rows that keep them."""
    from purify_assets.core.clustering import ClusterParams

    plan: dict[str, Any] = {"reuse": False}
    cp = ClusterParams.from_dict(cluster_params)
    if cp.algorithm != "kmeans" or cp.effective_reduce != "none":
        return dict(plan, reason=f"only K-means fits on the raw vectors are kept ({cp.algorithm}, reduce {cp.effective_reduce})")
    drift = _fit_drift(con, "clusters", "clustering fit", data, config,
                       "the cluster parameters, the review's dropped clusters or the embedding model changed",
                       "cluster.refit_share", refit_share)
    plan.update({k: v for k, v in drift.items() if k not in ("usable", "known")})
    if not drift["usable"]:
        return plan
    previous = wh.frame(con, "SELECT row_id, cluster, strength FROM cluster_labels WHERE cycle = ?", [wh.current_cycle(con)])
    known = drift["known"].join(previous, on="row_id", how="inner")
    if len(known) < len(drift["known"]):
        return dict(plan, reason="the last cycle's labels do not cover every row of the fit")
    fit = wh.frame(con, "SELECT cluster FROM cluster_fit WHERE config = ? ORDER BY cluster", [config])
    centers, found = wh.matrix_from_query(con, "SELECT cluster, center FROM cluster_fit WHERE config = ?", [config],
                                          len(fit))
    if len(fit) == 0 or not found.all() or fit["cluster"].to_list() != list(range(len(fit))):
        return dict(plan, reason="the centres of the last fit are not stored")
    return dict(plan, reuse=True, known=known, centers=centers)


@releases_memory
def cluster_rows(con: duckdb.DuckDBPyConnection, params: ParamsVersion, model_id: str, log: Log = _no_log) -> StageReport:
    """Cluster the kept rows; opens a new cycle numbered after the last one.

    A K-means fit is kept across cycles while nothing but the rows changed, and few of them (see
    ``_cluster_plan`` and ``cluster.refit_share``): the rows labelled before keep their cluster and
    strength, new rows go to the nearest stored centre. A backfill of a few percent therefore does not
    re-run K-means over every row; a change of k, of any other cluster parameter, of the review's
    dropped clusters or of the model refits. ``mode`` and ``refit_reason`` say which happened."""
    from purify_assets.core.clustering import assign_to_centers, fit_clusters

    report = StageReport()
    cluster_params = dict(params.params["cluster"])
    refit_share = float(cluster_params.get("refit_share", 0.2))
    drops = [d for d in (params.params.get("review", {}).get("drop_clusters") or [])
             if isinstance(d, dict) and d.get("cycle") is not None and d.get("cluster") is not None]
    dropped = pl.DataFrame(
        {"cycle": [int(d["cycle"]) for d in drops], "cluster": [int(d["cluster"]) for d in drops]},
        schema={"cycle": pl.Int32, "cluster": pl.Int32})
    con.register("_dropped", dropped)
    try:
        with report.timed("load"):
            data = con.sql(kept_rows_sql(), params={"model_id": model_id}).pl()
    finally:
        con.unregister("_dropped")
    if data.is_empty():
        raise ValueError(f"no rows to cluster: no kept row has an embedding from model {model_id!r}; "
                         "materialize raw_rows, clean_rows and embeddings for at least one batch first")
    algorithm = str(cluster_params.get("algorithm", "kmeans"))
    config = _fit_config("clusters", {"cluster": {k: v for k, v in cluster_params.items() if k != "refit_share"},
                                      "drops": sorted((int(d["cycle"]), int(d["cluster"])) for d in drops)}, model_id)
    with report.timed("plan"):
        plan = _cluster_plan(con, data, config, cluster_params, refit_share)
    cycle = wh.current_cycle(con) + 1
    n = len(data)
    info: dict[str, Any] = {}
    fit_rows = None
    if plan["reuse"]:
        known = plan["known"]
        is_new = ~data["row_id"].is_in(known["row_id"].implode()).to_numpy()
        new_rows = data.filter(pl.Series(is_new))
        log(f"clustering: keeping the K-means fit of cycle {plan['fit_cycle']} for {len(known):,} rows, "
            f"assigning {len(new_rows):,} new rows to its {len(plan['centers'])} centres")
        with report.timed("load_vectors"):
            x_new = _all_vectors(con, new_rows, model_id)
        with report.timed("assign"):
            lab_new, str_new = assign_to_centers(x_new, plan["centers"])
        assigned = pl.concat([known.select("row_id", pl.col("cluster").cast(pl.Int32), pl.col("strength").cast(pl.Float32)),
                              pl.DataFrame({"row_id": new_rows["row_id"], "cluster": lab_new, "strength": str_new},
                                           schema={"row_id": pl.String, "cluster": pl.Int32, "strength": pl.Float32})])
        table = data.select("row_id").join(assigned, on="row_id", how="left", maintain_order="left")
        label_values, strength_values = table["cluster"].to_numpy(), table["strength"].to_numpy()
        since = data.join(known.select("row_id", "since_fit"), on="row_id", how="left", maintain_order="left")["since_fit"].fill_null(True)
        state = pl.DataFrame({"stage": ["clusters"] * n, "config": [config] * n,
                              "fit_cycle": pl.Series([plan["fit_cycle"]] * n, dtype=pl.Int32),
                              "rows_at_fit": pl.Series([plan["rows_at_fit"]] * n, dtype=pl.Int64),
                              "row_id": data["row_id"], "text_hash": data["text_hash"], "since_fit": since})
        report.counts.update(rows_reused=len(known), rows_assigned=len(new_rows), rows_refit=0)
    else:
        with report.timed("load_vectors"):
            vectors = _all_vectors(con, data, model_id)
        log(f"clustering {n:,} rows of dimension {vectors.shape[1]} with {algorithm} ({plan['reason']})")
        with report.timed("fit"):
            result = fit_clusters(vectors, cluster_params)
        del vectors
        info = result.info
        label_values, strength_values = result.labels.astype(np.int32), result.strength.astype(np.float32)
        state = pl.DataFrame({"stage": ["clusters"] * n, "config": [config] * n, "fit_cycle": pl.Series([cycle] * n, dtype=pl.Int32),
                              "rows_at_fit": pl.Series([n] * n, dtype=pl.Int64), "row_id": data["row_id"],
                              "text_hash": data["text_hash"], "since_fit": pl.Series([False] * n, dtype=pl.Boolean)})
        fit_rows = pl.DataFrame({"config": [config] * result.n_clusters,
                                 "fit_cycle": pl.Series([cycle] * result.n_clusters, dtype=pl.Int32),
                                 "cluster": pl.Series(list(range(result.n_clusters)), dtype=pl.Int32),
                                 "center": pl.Series(result.centers.astype(np.float32)).cast(pl.List(pl.Float32))})
        report.counts.update(rows_reused=0, rows_assigned=0, rows_refit=n)
    labels = pl.DataFrame({
        "cycle": pl.Series([cycle] * n, dtype=pl.Int32), "row_id": data["row_id"],
        "cluster": pl.Series(label_values, dtype=pl.Int32), "strength": pl.Series(strength_values, dtype=pl.Float32),
    }).with_columns(pl.lit(algorithm).alias("algorithm"), pl.lit(params.hash).alias("params_hash"))
    sizes = Counter(label_values.tolist())
    with report.timed("store"), wh.transaction(con):
        wh.replace_table(con, "cluster_labels", labels, "cycle = ?", [cycle])
        wh.run(con, "INSERT INTO cycles (cycle, params_version, params_hash, started_at, rows_clustered, n_clusters, state) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'clustered')",
                    [cycle, params.version, params.hash, _now(), n, len([c for c in sizes if c >= 0])])
        if algorithm == "kmeans":
            _store_fit_state(con, "clusters", state, (is_new, plan["stale"]) if plan["reuse"] else None)
            if fit_rows is not None:
                wh.replace_table(con, "cluster_fit", fit_rows)
        else:  # density clusterings are refitted every cycle: no state to keep
            wh.run(con, "DELETE FROM fit_state WHERE stage = 'clusters'")
            wh.run(con, "DELETE FROM cluster_fit")
    con.register("_dropped", dropped)
    try:
        n_dropped = wh.scalar(con, "SELECT count(*) FROM cluster_labels l JOIN _dropped d USING (cycle, cluster)")
    finally:
        con.unregister("_dropped")
    report.counts.update(cycle=cycle, rows_clustered=n, clusters=len([c for c in sizes if c >= 0]),
                         noise_rows=int(sizes.get(-1, 0)), rows_dropped_by_review=int(n_dropped))
    report.values.update(params_version=params.version, params_hash=params.hash, model_id=model_id, algorithm=algorithm,
                         mode="reused" if plan["reuse"] else "refit", refit_reason="" if plan["reuse"] else plan["reason"],
                         reuse_reason=plan["reason"] if plan["reuse"] else "",
                         fit_cycle=int(plan["fit_cycle"]) if plan["reuse"] else cycle)
    if "changed_share" in plan:
        report.values["changed_share"] = round(float(plan["changed_share"]), 4)
    report.values.update({f"info.{k}": v for k, v in info.items() if isinstance(v, (int, float, str, bool))})
    size_table = pl.DataFrame({"cluster": list(sizes), "rows": list(sizes.values())}).sort("cluster")
    report.markdown["cluster_sizes"] = wh.markdown_table(size_table, max_rows=50)
    return report


def latest_cycle_or_fail(con: duckdb.DuckDBPyConnection) -> int:
    cycle = wh.current_cycle(con)
    if cycle == 0:
        raise ValueError("no clustering cycle yet: materialize cluster_labels first")
    return cycle


def _labelled(con: duckdb.DuckDBPyConnection, cycle: int, model_id: str, with_text: bool = False) -> pl.DataFrame:
    """The rows labelled in ``cycle``, by row id: cluster, strength, the text hash their vector was
    made from, and (optionally) the texts. Their vectors: ``_all_vectors(con, frame, model_id)``."""
    extra = ", c.text, c.instruction, c.input, c.output, c.lang" if with_text else ""
    return wh.frame(con, f"""
        SELECT l.row_id, l.cluster, l.strength, c.text_hash{extra} FROM cluster_labels l
        JOIN embeddings e ON e.row_id = l.row_id AND e.model_id = ?
        JOIN clean_rows c ON c.row_id = l.row_id AND c.text_hash = e.text_hash
        WHERE l.cycle = ? ORDER BY l.row_id""", [model_id, cycle])


def _fit_config(kind: str, settings: dict[str, Any], model_id: str) -> str:
    """Hash of what a reusable fit depends on besides the rows: its settings and the model."""
    from purify_assets.core.params import params_hash

    return params_hash({"kind": kind, "model": model_id, "settings": settings})


# ------------------------------------------------------------------------------------------- project
#: ``project`` parameters passed on to core.projection.project; with methods, seed and fit_sample they
#: decide the coordinates, so a change in any of them means a refit
_PROJECT_FIT_KEYS = ("tsne_max_fit", "perplexity", "n_neighbors", "min_dist", "metric", "knn", "umap_place")


def _projection_settings(project_params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"methods": [str(m) for m in project_params.get("methods", ["pca", "umap"])],
                           "seed": int(project_params.get("seed", 0)),
                           "fit_sample": int(project_params.get("fit_sample", 20000))}
    out.update({k: project_params[k] for k in _PROJECT_FIT_KEYS if project_params.get(k) is not None})
    return out


def _projection_plan(con: duckdb.DuckDBPyConnection, data: pl.DataFrame, config: str, combos: list[tuple[str, int]],
                     settings: dict[str, Any], refit_share: float, model_id: str) -> dict[str, Any]:
    """Decide whether the last projection fit still serves the rows of ``data`` (row_id, text_hash).

    It does when it was made with the same model and settings (``config``), its fitted rows still
    have the same vectors, and the rows that changed since it (new rows, rows placed onto it in
    later cycles, rows of the fit that are gone) are at most ``refit_share`` of the rows it was fitted
    for. Returns {"reuse": bool, "reason": str, ...}; when reusing, also the fitted rows with their
    coordinates and vectors, the previous coordinates of the rows that keep them, and which those are.
    """
    plan: dict[str, Any] = {"reuse": False}
    if settings.get("umap_place") == "transform" and "umap" in settings["methods"]:
        return dict(plan, reason="umap_place=transform places rows with the fitted UMAP model, which is not kept")
    drift = _fit_drift(con, "projections", "projection fit", data, config,
                       "the projection parameters or the embedding model changed since the last fit",
                       "project.refit_share", refit_share)
    plan.update({k: v for k, v in drift.items() if k not in ("usable", "known")})
    if not drift["usable"]:
        return plan
    known = drift["known"]
    fit = wh.frame(con, "SELECT method, dims, row_id, text_hash, x, y, z FROM projection_fit WHERE config = ? "
                        "ORDER BY method, dims, row_id", [config])
    stored = set(zip(fit["method"].to_list(), fit["dims"].to_list()))
    missing = [f"{m} {d}-D" for m, d in combos if (m, d) not in stored]
    if missing:
        return dict(plan, reason=f"no stored fit for {', '.join(missing)}")
    fit_keys = fit.select("row_id", "text_hash").unique(maintain_order=True)
    fit_x, found = _vector_matrix(con, fit_keys, model_id)
    if not found.all():
        return dict(plan, reason=f"{int((~found).sum()):,} rows the projection was fitted on changed "
                                 "their text or left the warehouse")
    # the stored coordinates are counted here and read by position later (``_stored_coordinates``):
    # at 660k rows, 2.6M coordinate rows read into polars and joined there cost over a second
    old_cycle = wh.scalar(con, "SELECT max(cycle) FROM projections")
    with wh.registered(con, _plan_known=known.select("row_id")):
        counted = wh.run(con, "SELECT p.method, p.dims, count(*) FROM projections p JOIN _plan_known k USING (row_id) "
                              "WHERE p.cycle = ? GROUP BY ALL", [old_cycle])
    per_combo = {(m, int(d)): int(n) for m, d, n in counted}
    short = [f"{m} {d}-D" for m, d in combos if per_combo.get((m, d), 0) != len(known)]
    if short:
        return dict(plan, reason=f"the stored coordinates do not cover every earlier row ({', '.join(short)})")
    # the other stored rows should be the fit state's stale rows (gone since, or their text changed):
    # then exactly those are deleted when the new coordinates are stored
    stored_rows = wh.run(con, "SELECT count(*) FROM projections WHERE cycle = ?", [old_cycle])[0][0]
    stale = plan["stale"]
    exact = int(stored_rows) == (len(known) + stale["row_id"].n_unique()) * len(per_combo)
    return dict(plan, reuse=True, fit=fit, fit_keys=fit_keys.with_row_index("_fit_pos"), fit_x=fit_x,
                old_cycle=old_cycle, known=known, stale_coordinates=stale if exact else None)


def _stored_coordinates(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame, cycle: int, method: str, dims: int,
                        out: np.ndarray) -> None:
    """Fill ``out[pos]`` with the stored (method, dims) coordinates of cycle ``cycle`` for each row of
    ``rows`` (row_id, pos); DuckDB joins, numpy scatters (no string join in polars)."""
    with wh.registered(con, _stored_pos=rows):
        got = con.sql("SELECT k.pos, p.x, p.y, p.z FROM projections p JOIN _stored_pos k USING (row_id) "
                      "WHERE p.cycle = $cycle AND p.method = $method AND p.dims = $dims",
                      params={"cycle": cycle, "method": method, "dims": dims}).fetchnumpy()
    pos = np.asarray(got["pos"], dtype=np.int64)
    for axis, column in enumerate(["x", "y", "z"][:dims]):
        out[pos, axis] = np.asarray(got[column], dtype=np.float32)


def _store_kept_projection(cur: duckdb.DuckDBPyConnection, cycle: int, labelled: pl.DataFrame,
                           placed: pl.DataFrame | None, stale: pl.DataFrame | None = None) -> None:
    """The ``projections`` of a cycle that kept the last fit, written as changes, in the caller's
    transaction: rows no longer labelled are deleted, so are the stored rows of the rows placed now (a
    row whose text changed), the rows placed now are inserted, and every other row keeps its
    coordinates and takes this cycle's number and label. ``labelled``: (row_id, cluster) of every
    row of the cycle. Comparing a frame of every coordinate with the table instead (delete what differs,
    insert what is missing) took 2.9 s of 2.6M rows at 660k rows, most of it in the two joins over every row.
    ``stale``: when the caller knows exactly which stored rows are gone or changed (row_id), only
    those are deleted, without the comparison of every stored row with ``labelled`` (0.2 s at 660k
    rows)."""
    with wh.registered(cur, _kept_labels=labelled, _kept_placed=placed):
        if stale is None:
            wh.run(cur, "DELETE FROM projections WHERE row_id NOT IN (SELECT row_id FROM _kept_labels)"
                   + (" OR row_id IN (SELECT row_id FROM _kept_placed)" if placed is not None else ""))
        elif len(stale):
            with wh.registered(cur, _stale_rows=stale.select("row_id")):
                wh.run(cur, "DELETE FROM projections WHERE row_id IN (SELECT row_id FROM _stale_rows)")
        wh.run(cur, "UPDATE projections p SET cluster = l.cluster FROM _kept_labels l "
                    "WHERE l.row_id = p.row_id AND p.cluster IS DISTINCT FROM l.cluster")
        wh.run(cur, "UPDATE projections SET cycle = ? WHERE cycle IS DISTINCT FROM ?", [cycle, cycle])
        if placed is not None:
            wh.insert_frame(cur, "projections", placed)


def _hover_texts(con: duckdb.DuckDBPyConnection, row_ids: pl.Series, positions: np.ndarray, max_chars: int) -> list[str | None]:
    """One item per row of ``row_ids``: the first ``max_chars`` characters of the embedded text for
    the rows at ``positions`` (the points a plot draws, ``plots.drawn_points``), None elsewhere. At
    712k rows a plot of 20,000 points needs 3 % of the texts; reading every row's texts (and copying
    them into a list) raised the stage's peak from 3,200 to 3,371 MiB."""
    out: list[str | None] = [None] * len(row_ids)
    if len(positions) == 0:
        return out
    con.register("_hover_rows", pl.DataFrame({"row_id": row_ids.gather(positions), "_pos": np.asarray(positions, np.int64)}))
    try:
        found = wh.frame(con, "SELECT k._pos, left(c.text, ?) AS text FROM _hover_rows k JOIN clean_rows c USING (row_id)",
                         [max_chars])
    finally:
        con.unregister("_hover_rows")
    for pos, text in found.iter_rows():
        out[pos] = text
    return out


@releases_memory
def project_rows(con: duckdb.DuckDBPyConnection, project_params: dict[str, Any], model_id: str, plots_dir: Path,
                 log: Log = _no_log) -> StageReport:
    """2-D and 3-D coordinates per method for the latest cycle, with a PNG and an HTML plot per method.

    Coordinates depend on the vectors and the projection settings, not on the cluster labels. So
    when the last fit still holds (see ``_projection_plan``: same model and settings, its rows
    unchanged, at most ``project.refit_share`` (default 0.2) of the rows changed since), the rows
    projected before keep their coordinates and only the rows new to the map are placed onto the
    stored fit (``core.projection.place``); the current labels are joined and the plots redrawn.
    Otherwise every method is refitted. ``mode``, ``refit_reason`` and the row counts say which.
    """
    from purify_assets.core.plots import drawn_points, scatter_3d_html, scatter_png
    from purify_assets.core.projection import fit_indices, knn_neighbours, place, project, rest_indices, umap_graph

    report = StageReport()
    cycle = latest_cycle_or_fail(con)
    settings = _projection_settings(project_params)
    config = _fit_config("projections", settings, model_id)
    refit_share = float(project_params.get("refit_share", 0.2))
    methods, seed, fit_sample = settings["methods"], settings["seed"], settings["fit_sample"]
    combos = [(method, dims) for method in methods for dims in (2, 3)]
    with report.timed("load"):
        data = _labelled(con, cycle, model_id)  # texts only for the points the 3-D plots draw, read below
        plan = _projection_plan(con, data, config, combos, settings, refit_share, model_id)
    n = len(data)
    labels = data["cluster"].to_numpy()
    ids = data.select("row_id")
    coords: dict[tuple[str, int], np.ndarray] = {}
    fit_frames: list[pl.DataFrame] = []
    new_frames: list[pl.DataFrame] = []  # reuse: the coordinates of the rows placed now, the only ones written
    if plan["reuse"]:
        known = plan["known"]
        positions = data.select("row_id").with_row_index("pos")
        is_known = data["row_id"].is_in(known["row_id"].implode())
        known_pos = positions.filter(is_known)
        new_pos = positions.filter(~is_known)["pos"].to_numpy()
        new_rows = data.filter(~is_known).select("row_id", "text_hash")
        x_new = _all_vectors(con, new_rows, model_id)
        log(f"projection: keeping the fit of cycle {plan['fit_cycle']} for {len(known):,} rows, placing {len(new_rows):,} new rows")
        knn = int(settings.get("knn", 10))
        searched: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # fitted row ids -> neighbours of the new rows
        for method, dims in combos:
            with report.timed(f"{method}_{dims}d"):
                fitted = plan["fit"].filter((pl.col("method") == method) & (pl.col("dims") == dims)).join(
                    plan["fit_keys"], on=["row_id", "text_hash"], how="left", maintain_order="left")
                y_fit = fitted.select(["x", "y", "z"][:dims]).to_numpy().astype(np.float32)
                x_fit = plan["fit_x"][fitted["_fit_pos"].to_numpy()]
                neighbours = None
                if method != "pca" and len(new_rows):
                    # 2-D and 3-D maps (and UMAP and t-SNE below tsne_max_fit) share their fitted rows
                    key = tuple(fitted["row_id"].to_list())
                    if key not in searched:
                        searched[key] = knn_neighbours(x_fit, x_new, knn=knn)
                    neighbours = searched[key]
                placed = place(x_fit, y_fit, x_new, method, dims, knn=knn, neighbours=neighbours) \
                    if len(new_rows) else np.zeros((0, dims), dtype=np.float32)
                c = np.full((n, dims), np.nan, dtype=np.float32)
                _stored_coordinates(con, known_pos, plan["old_cycle"], method, dims, c)
                c[new_pos] = placed[:, :dims]
                coords[(method, dims)] = c
                new_frames.append(pl.DataFrame({
                    "cycle": pl.Series([cycle] * len(new_rows), dtype=pl.Int32), "row_id": new_rows["row_id"],
                    "method": [method] * len(new_rows), "dims": pl.Series([dims] * len(new_rows), dtype=pl.Int32),
                    "x": placed[:, 0], "y": placed[:, 1],
                    "z": placed[:, 2] if dims == 3 else pl.Series([None] * len(new_rows), dtype=pl.Float32),
                    "cluster": pl.Series(labels[new_pos].astype(np.int32), dtype=pl.Int32)}))
        report.counts.update(rows_reused=len(known), rows_placed=len(new_rows), rows_refit=0)
    else:
        with report.timed("load_vectors"):
            vectors = _all_vectors(con, data, model_id)
        extra = {k: settings[k] for k in _PROJECT_FIT_KEYS if k in settings}
        log(f"projection: refitting ({plan['reason']})")
        searched = {}  # fit rows -> k-NN of the other rows among them, shared by the maps fitted on them
        for method, dims in combos:
            log(f"projecting {n:,} rows with {method} to {dims}-D")
            idx = fit_indices(n, method, fit_sample=fit_sample, tsne_max_fit=int(settings.get("tsne_max_fit", 5000)), seed=seed)
            neighbours = None
            places_by_knn = method == "tsne" or (method == "umap" and settings.get("umap_place", "knn") == "knn")
            if places_by_knn and len(idx) < n:
                key = (len(idx), hash(idx.tobytes()))
                if key not in searched:
                    with report.timed("knn_placement_search"):
                        searched[key] = knn_neighbours(vectors[idx], vectors, knn=int(settings.get("knn", 10)),
                                                       rows=rest_indices(n, idx))
                neighbours = searched[key]
            umap_knn = None
            if method == "umap":
                key = ("umap_graph", len(idx), hash(idx.tobytes()))
                if key not in searched:  # UMAP's neighbour graph, shared by its 2-D and 3-D maps
                    with report.timed("umap_neighbour_graph"):
                        graph_settings = {k: extra[k] for k in ("n_neighbors", "metric", "umap_place") if k in extra}
                        searched[key] = umap_graph(vectors[idx], **graph_settings)
                umap_knn = searched[key]
            with report.timed(f"{method}_{dims}d"):
                c = project(vectors, method, dims, seed=seed, fit_sample=fit_sample, neighbours=neighbours,
                            umap_knn=umap_knn, **extra)
            coords[(method, dims)] = c
            fit_frames.append(pl.DataFrame({
                "config": [config] * len(idx), "method": [method] * len(idx), "dims": pl.Series([dims] * len(idx), dtype=pl.Int32),
                "row_id": data["row_id"].gather(idx), "text_hash": data["text_hash"].gather(idx),
                "x": c[idx, 0], "y": c[idx, 1],
                "z": c[idx, 2] if dims == 3 else pl.Series([None] * len(idx), dtype=pl.Float32)}))
        report.counts.update(rows_reused=0, rows_placed=0, rows_refit=n)
    frames = [] if plan["reuse"] else [pl.DataFrame({
        "cycle": pl.Series([cycle] * n, dtype=pl.Int32), "row_id": data["row_id"],
        "method": [method] * n, "dims": pl.Series([dims] * n, dtype=pl.Int32),
        "x": c[:, 0], "y": c[:, 1], "z": c[:, 2] if dims == 3 else pl.Series([None] * n, dtype=pl.Float32),
        "cluster": pl.Series(labels.astype(np.int32)),
    }) for (method, dims), c in ((combo, coords[combo]) for combo in combos)]
    if plan["reuse"]:
        known_since = plan["known"].select("row_id", "since_fit")
        since = ids.join(known_since, on="row_id", how="left", maintain_order="left")["since_fit"].fill_null(True)
        fit_cycle, rows_at_fit = plan["fit_cycle"], plan["rows_at_fit"]
    else:
        since = pl.Series([False] * n, dtype=pl.Boolean)
        fit_cycle, rows_at_fit = cycle, n
    state = pl.DataFrame({"stage": ["projections"] * n, "config": [config] * n,
                          "fit_cycle": pl.Series([fit_cycle] * n, dtype=pl.Int32),
                          "rows_at_fit": pl.Series([rows_at_fit] * n, dtype=pl.Int64),
                          "row_id": data["row_id"], "text_hash": data["text_hash"], "since_fit": since})

    def store(cur: duckdb.DuckDBPyConnection) -> None:
        if plan["reuse"]:  # most rows keep their coordinates and cluster: only changes are written
            _store_kept_projection(cur, cycle, data.select("row_id", pl.Series("cluster", labels.astype(np.int32))),
                                   pl.concat(new_frames) if new_frames else None, stale=plan["stale_coordinates"])
        else:
            wh.replace_table(cur, "projections", pl.concat(frames) if frames else None)
        _store_fit_state(cur, "projections", state, ((~is_known).to_numpy(), plan["stale"]) if plan["reuse"] else None)
        if not plan["reuse"]:
            wh.replace_table(cur, "projection_fit", pl.concat(fit_frames) if fit_frames else None)

    plots_dir.mkdir(parents=True, exist_ok=True)
    note = (f"; map fitted in cycle {plan['fit_cycle']}, {report.counts['rows_placed'] + plan.get('rows_placed_before', 0):,} "
            "rows placed onto it since" if plan["reuse"] else "")
    # plots draw a seeded sample above these sizes and say so in their titles ("showing m of n points");
    # at 11k rows a PNG takes ~0.1 s and an HTML ~0.1 s to build here, so the plots' own caps stand
    png_points = int(project_params.get("plot_points", 50000))
    html_points = int(project_params.get("plot_points_3d", 20000))
    hover = _hover_texts(con, data["row_id"], drawn_points(n, html_points), 120) if any(d == 3 for _, d in combos) else None
    # the table is written (and committed) in a thread while the plots are drawn here: DuckDB writes
    # without the GIL, matplotlib and plotly hold it (at 110k rows 0.45 s of store beside 0.75 s of plots)
    with wh.background_write(con, store, report.timings) as stored:
        with report.timed("plots"):
            for method, dims in combos:
                c = coords[(method, dims)]
                if dims == 2:
                    png = scatter_png(c, labels, f"cycle {cycle}: {method.upper()} 2-D, {n:,} rows{note}", max_points=png_points)
                    report.images[f"{method}_2d"] = png
                    (plots_dir / f"cycle{cycle}_{method}_2d.png").write_bytes(png)
                else:
                    html = scatter_3d_html(c, labels, hover, f"cycle {cycle}: {method.upper()} 3-D{note}", max_points=html_points)
                    path = plots_dir / f"cycle{cycle}_{method}_3d.html"
                    path.write_text(html, "utf-8")
                    report.files[f"{method}_3d_html"] = str(path)
        with report.timed("store_wait"):  # how long the plots left the store to finish alone
            stored()  # the write's error, if any, is the stage's
    report.counts.update(cycle=cycle, rows=n, projections=len(combos), fit_cycle=fit_cycle, rows_at_fit=rows_at_fit)
    report.values.update(mode="reused" if plan["reuse"] else "refit", refit_reason="" if plan["reuse"] else plan["reason"],
                         reuse_reason=plan["reason"] if plan["reuse"] else "", config_hash=config)
    if "changed_share" in plan:
        report.values["changed_share"] = round(float(plan["changed_share"]), 4)
    return report


# ------------------------------------------------------------------------------------------- measure
def _long_metrics(cycle: int, scope: str, setting: str, cluster: int | None, values: dict[str, Any], params_hash: str) -> list[tuple]:
    out = []
    for name, value in values.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float, np.floating, np.integer)):
            out.append((cycle, scope, setting, cluster, name, float(value), params_hash))
    return out


METRIC_SCHEMA = {"cycle": pl.Int32, "scope": pl.String, "setting": pl.String, "cluster": pl.Int32,
                 "metric": pl.String, "value": pl.Float64, "params_hash": pl.String}


def _sweep_settings(measure_params: dict[str, Any], silhouette_sample: int) -> dict[str, Any]:
    """What a k sweep's figures depend on besides the rows and the ks (see ``measure_clusters``)."""
    return {"sweep_sample": int(measure_params.get("sweep_sample", 10000)),
            "silhouette_sample": min(silhouette_sample, 3000),
            "stability_runs": int(measure_params.get("sweep_stability_runs", 2)), "seed": 0}


def _reusable_sweep(con: duckdb.DuckDBPyConnection, data: pl.DataFrame, config: str, ks: list[int],
                    refit_share: float) -> dict[str, Any]:
    """What of the last k sweep still describes the rows of ``data`` (row_id, text_hash): it must
    have the same model and sweep settings (``config``), and at most ``refit_share`` of the rows it
    saw may be new, changed or gone. Each k's figures are independent of the other ks (same sample
    and seeds), so the ks it tried are reused and only the others of ``ks`` need computing.
    Returns {"results": {k: figures} or None, "missing": [ks], "from_cycle", "reason"}."""
    none: dict[str, Any] = {"results": None, "missing": list(ks), "from_cycle": None}
    drift = _fit_drift(con, "k_sweep", "k sweep", data, config, "the sweep settings or the embedding model changed",
                       "measure.sweep_refit_share", refit_share)
    out = dict(none, reason=drift["reason"])
    if "fit_cycle" in drift:
        out.update(from_cycle=drift["fit_cycle"], changed_share=drift["changed_share"])
    if not drift["usable"]:
        return out
    from_cycle = drift["fit_cycle"]
    # every k computed since that sweep (same settings: a change of settings starts a new sweep), each
    # from the latest cycle that wrote it
    stored = wh.frame(con, """
        SELECT setting, metric, value FROM cluster_metrics m
        WHERE scope = 'sweep' AND cycle = (SELECT max(cycle) FROM cluster_metrics o
                                           WHERE o.scope = 'sweep' AND o.setting = m.setting AND o.cycle >= ?)""", [from_cycle])
    by_k: dict[int, dict[str, Any]] = {}
    for setting, metric, value in stored.iter_rows():
        if setting.startswith("k="):
            k = int(setting[2:])
            by_k.setdefault(k, {})[metric] = value
    found = {k: dict(by_k[k], k=k) for k in ks if k in by_k}
    missing = [k for k in ks if k not in by_k]
    if not found:
        return dict(out, reason=f"the sweep of cycle {from_cycle} tried none of k = {', '.join(map(str, ks))}")
    reason = drift["reason"]
    if missing:
        reason += f"; k = {', '.join(map(str, missing))} not tried before, computed now"
    return dict(out, results=found, missing=missing, reason=reason)


@releases_memory
def measure_clusters(con: duckdb.DuckDBPyConnection, measure_params: dict[str, Any], model_id: str,
                     log: Log = _no_log) -> StageReport:
    """Global and per-cluster metrics for the latest cycle (and a k sweep when configured).

    The metrics of the current labels are always computed (one stratified silhouette sample serves
    the global and the per-cluster figures). The k sweep does not depend on the labels, only on the
    kept rows and the sweep settings, and it is the expensive part: the last computed sweep is reused
    while the model and settings are the same, it covers the ks wanted, and at most
    ``measure.sweep_refit_share`` (default 0.2) of the rows it saw are new, changed or gone. Reused
    sweep rows are written again under this cycle with ``sweep_from_cycle`` = the cycle that
    computed them (the same metric holds this cycle's number when computed now).
    """
    from purify_assets.core import metrics as m
    from purify_assets.core.plots import sizes_bar_png

    report = StageReport()
    cycle = latest_cycle_or_fail(con)
    params_hash = wh.scalar(con, "SELECT params_hash FROM cycles WHERE cycle = ?", [cycle])
    with report.timed("load"):
        data = _labelled(con, cycle, model_id)
        # rows stay in the cache files and every figure reads them in chunks or by index: at 110,000
        # rows no 225 MB matrix to fill (reading it was half of a re-run's metrics stage), at 1.7M
        # no 3.5 GB one
        vectors = _all_vectors(con, data, model_id, lazy=True)
    labels = data["cluster"].to_numpy()
    sample = int(measure_params.get("silhouette_sample", 5000))
    with report.timed("silhouette"):
        sampled = m.sample_silhouettes(vectors, labels, sample_size=sample, seed=0)
    with report.timed("geometry"):  # every row's distances to the centroids: read by both figures below
        geometry = m.cluster_geometry(vectors, labels)
    with report.timed("global"):
        glob = m.global_metrics(vectors, labels, sample_size=sample, seed=0, silhouettes=sampled, geometry=geometry)
    with report.timed("per_cluster"):
        per = m.per_cluster_metrics(vectors, labels, sample_size=sample, seed=0, silhouettes=sampled, geometry=geometry)
    del geometry
    rows = _long_metrics(cycle, "global", "current", None, glob, params_hash)
    for item in per:
        rows += _long_metrics(cycle, "cluster", "current", int(item["cluster"]), item, params_hash)
    sweep = sweep_ks(measure_params.get("k_sweep", "auto"), int(glob.get("n_clusters") or 0), len(data))
    sweep_state = None
    if sweep:
        from purify_assets.core.clustering import best_k, k_sweep, sample_indices
        from purify_assets.core.plots import line_chart_png

        settings = _sweep_settings(measure_params, sample)
        config = _fit_config("k_sweep", settings, model_id)
        with report.timed("k_sweep_check"):
            found = _reusable_sweep(con, data, config, sweep, float(measure_params.get("sweep_refit_share", 0.2)))
        reused = found["results"] or {}
        todo = found["missing"]
        if reused:
            log(f"k sweep over {sweep}: reusing k = {sorted(reused)} from the sweep of cycle {found['from_cycle']} ({found['reason']})")
        else:
            log(f"k sweep over {sweep} on at most {settings['sweep_sample']:,} rows ({found['reason']})")
        computed: list[dict[str, Any]] = []
        if todo:
            with report.timed("k_sweep"):
                # a sweep only has to rank ks: sampled rows, two stability runs (one K-means restart picked
                # k = 7 on 8 clean blobs, so restarts stay at the clustering default)
                threads = measure_params.get("sweep_threads", 1)  # speed only: one thread does not spin on busy cores
                matrix = vectors
                if not isinstance(vectors, np.ndarray):  # only the rows the sweep samples (k_sweep draws the same)
                    matrix = vectors[sample_indices(len(vectors), settings["sweep_sample"], settings["seed"])]
                computed = k_sweep(matrix, todo, seed=settings["seed"], sample_size=settings["sweep_sample"],
                                   silhouette_sample=settings["silhouette_sample"], n_runs=settings["stability_runs"],
                                   threads=int(threads) if threads else None)
                del matrix
            for item in computed:
                item["sweep_from_cycle"] = cycle
        if not reused:  # a fresh sweep: the rows it saw are the reference for the next cycles
            n = len(data)
            sweep_state = pl.DataFrame({
                "stage": ["k_sweep"] * n, "config": [config] * n, "fit_cycle": pl.Series([cycle] * n, dtype=pl.Int32),
                "rows_at_fit": pl.Series([n] * n, dtype=pl.Int64), "row_id": data["row_id"], "text_hash": data["text_hash"],
                "since_fit": pl.Series([False] * n, dtype=pl.Boolean)})
        by_k_all = {int(r["k"]): r for r in computed}
        for k, item in reused.items():
            item.setdefault("sweep_from_cycle", found["from_cycle"])
            by_k_all[k] = item
        results = [by_k_all[k] for k in sweep]
        from_cycle = min(int(r["sweep_from_cycle"]) for r in results)
        for item in results:
            rows += _long_metrics(cycle, "sweep", f"k={item['k']}", None, item, params_hash)
        mode = "computed" if not reused else ("reused" if not todo else "partly reused")
        report.values.update(k_sweep_mode=mode, k_sweep_reason=found["reason"], sweep_from_cycle=from_cycle)
        report.counts.update(k_sweep_ks_reused=len(reused), k_sweep_ks_computed=len(computed))
        if found.get("changed_share") is not None:
            report.values["k_sweep_changed_share"] = round(float(found["changed_share"]), 4)
        best = best_k(results)
        extra: dict[str, Any] = {"sweep_from_cycle": from_cycle}
        if best is not None:
            by_k = {int(r["k"]): r for r in results}
            extra.update(sweep_best_k=best, sweep_best_silhouette=by_k[best]["silhouette"])
            current = by_k.get(int(glob.get("n_clusters") or 0))
            if current is not None:
                extra["sweep_current_silhouette"] = current["silhouette"]
                # agreement (ARI) between K-means runs at the current k on different seeds / subsamples
                extra["stability"] = current.get("stability", float("nan"))
        glob.update(extra)
        rows += _long_metrics(cycle, "global", "current", None, extra, params_hash)
        table = pl.DataFrame([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                               if k in ("k", "silhouette", "davies_bouldin", "calinski_harabasz", "stability")} for r in results])
        report.markdown["k_sweep"] = wh.markdown_table(table, max_rows=40)
        ks = [int(r["k"]) for r in results]
        series = {"silhouette": [r["silhouette"] for r in results],
                  "stability (ARI)": [r.get("stability", float("nan")) for r in results]}
        title = f"K-means k sweep of cycle {from_cycle}"  # a reused sweep draws the same chart: drawn once
        with report.timed("k_sweep_chart"):
            report.images["k_sweep"], reused_chart = wh.cached_chart(
                con, "k_sweep", {"title": title, "ks": ks, "series": series}, lambda: line_chart_png(ks, series, title))
        report.values["k_sweep_chart"] = "reused" if reused_chart else "drawn"
    frame = pl.DataFrame(rows, schema=METRIC_SCHEMA, orient="row")
    with report.timed("store"), wh.transaction(con):
        wh.replace_table(con, "cluster_metrics", frame, "cycle = ?", [cycle])
        if sweep_state is not None:
            wh.replace_table(con, "fit_state", sweep_state, "stage = 'k_sweep'")
        wh.run(con, "UPDATE cycles SET silhouette = ?, davies_bouldin = ?, calinski_harabasz = ?, state = 'measured' "
                    "WHERE cycle = ?", [_f(glob.get("silhouette")), _f(glob.get("davies_bouldin")),
                                        _f(glob.get("calinski_harabasz")), cycle])
    report.counts.update(cycle=cycle, rows=len(data), clusters=len(per))
    report.values.update({k: _f(v) for k, v in glob.items() if isinstance(v, (int, float, np.floating, np.integer))})
    per_frame = pl.DataFrame([{k: v for k, v in item.items() if not isinstance(v, (list, dict, np.ndarray))} for item in per])
    report.markdown["per_cluster"] = wh.markdown_table(per_frame, max_rows=60)
    report.markdown["cycles"] = wh.markdown_table(cycle_history(con))
    if len(data):
        with report.timed("plot"):
            # the balance of the clusters (rows per cluster, noise grey): the maps of the clusters are
            # the projection stage's. A PCA map drawn here as well repeated that stage's PCA 2-D picture
            # and cost a re-run 0.19-0.26 s at 110,000 rows (20,000 vectors gathered, then projected)
            report.images["cluster_sizes"] = sizes_bar_png(labels, f"cycle {cycle}: rows per cluster")
    sil = glob.get("silhouette")
    min_sil = float(measure_params.get("min_silhouette", 0.02))
    report.checks["silhouette_above_minimum"] = (sil is not None and sil == sil and sil >= min_sil,
                                                 f"silhouette {sil} (minimum {min_sil})")
    noise = float(glob.get("noise_fraction", 0.0))
    max_noise = float(measure_params.get("max_noise_fraction", 0.3))
    report.checks["noise_fraction_below_maximum"] = (noise <= max_noise, f"noise fraction {noise:.1%} (maximum {max_noise:.0%})")
    return report


def sweep_ks(setting: Any, current_k: int, n_rows: int) -> list[int]:
    """The ks to sweep: "auto" = current k - 3 .. current k + 4 (at least 2, fewer than the rows)."""
    if not setting:
        return []
    if setting == "auto":
        if current_k < 1:
            return []
        ks = list(range(max(2, current_k - 3), current_k + 5))
    elif isinstance(setting, (list, tuple)):
        ks = sorted({int(k) for k in setting})
    else:
        raise ValueError(f"measure.k_sweep must be \"auto\", a list of ks or []; got {setting!r}")
    return [k for k in ks if 2 <= k < max(n_rows, 2)]


def _f(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if value != value else value


def cycle_history(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    return wh.frame(con, "SELECT cycle, params_version, rows_clustered, n_clusters, round(silhouette, 4) AS silhouette, "
                         "round(davies_bouldin, 3) AS davies_bouldin, round(calinski_harabasz, 1) AS calinski_harabasz, "
                         "recommendation, proposed_version, state FROM cycles ORDER BY cycle")


# -------------------------------------------------------------------------------------------- review
#: the columns of ``cluster_reviews`` as the review stage writes them
REVIEW_SCHEMA = {"cycle": pl.Int32, "scope": pl.String, "cluster": pl.Int32, "name": pl.String, "task_type": pl.String,
                 "quality": pl.Int32, "verdict": pl.String, "merge_with": pl.Int32, "reasons": pl.String,
                 "problem_row_ids": pl.String, "reviewer": pl.String, "prompt_hash": pl.String, "review_json": pl.String}


def _report_reviews(report: StageReport, frame: pl.DataFrame, glob: dict[str, Any]) -> None:
    """What both a fresh and a carried-over review report from the rows written (``frame``) and the
    global judgement ``glob``: verdict counts, the review table, the reasons, the dedup advice."""
    clusters = frame.filter(pl.col("scope") == "cluster")
    verdicts = Counter(clusters["verdict"].to_list())
    report.counts.update({f"verdict.{k}": v for k, v in sorted(verdicts.items())})
    report.markdown["reviews"] = wh.markdown_table(clusters.select(
        "cluster", "name", "task_type", "quality", "verdict", "merge_with", "reasons"), max_rows=60, max_chars=120)
    report.markdown["global"] = "\n".join(f"- {r}" for r in glob.get("reasons", [])) or "_no reasons given_"
    dr = glob.get("dedup_recommendation")
    report.values["dedup_recommendation"] = f"{dr['parameter']} -> {dr['value']}" if dr else "none"


@releases_memory
def review_clusters(con: duckdb.DuckDBPyConnection, params: ParamsVersion, store: ParamsStore, model_id: str,
                    cache_dir: Path, log: Log = _no_log) -> StageReport:
    """Review every cluster of the latest cycle and turn the recommendations into the next parameters."""
    from purify_assets.core import metrics as m
    from purify_assets.core import review as rv

    report = StageReport()
    cycle = latest_cycle_or_fail(con)
    review_cfg = dict(params.params.get("review", {}))
    review_cfg.setdefault("cache_dir", str(cache_dir))
    reviewer = rv.make_reviewer(review_cfg)
    reviewer_id = getattr(reviewer, "reviewer_id", type(reviewer).__name__)
    with report.timed("carry_check"):
        carry = _review_to_carry(con, cycle, reviewer_id, reviewer.prompt_hash,
                                 float(review_cfg.get("rereview_share", 0.2)))
    if carry["carry"]:
        log(f"review: carrying over the review of cycle {carry['from_cycle']} ({carry['reason']})")
        return _carry_review(con, cycle, carry, params, report)
    report.values.update(mode="reviewed", rereview_reason=carry["reason"])
    with report.timed("load"):
        data = _labelled(con, cycle, model_id, with_text=True)
        vectors = _all_vectors(con, data, model_id)
    labels = data["cluster"].to_numpy()
    metric_rows = wh.frame(con, "SELECT scope, cluster, metric, value FROM cluster_metrics WHERE cycle = ? AND setting = 'current'", [cycle])
    glob = {r["metric"]: r["value"] for r in metric_rows.filter(pl.col("scope") == "global").iter_rows(named=True)}
    per: dict[int, dict[str, float]] = {}
    for r in metric_rows.filter(pl.col("scope") == "cluster").iter_rows(named=True):
        per.setdefault(int(r["cluster"]), {})[r["metric"]] = r["value"]
    with report.timed("evidence"):
        cards = m.cluster_cards(vectors, labels, data["row_id"].to_list(), data["text"].to_list(),
                                n_central=int(review_cfg.get("n_central", 5)), n_boundary=int(review_cfg.get("n_boundary", 3)))
        evidence = build_evidence(data, cards, per)
    with report.timed("dedup_evidence"):
        dedup_ev = dedup_evidence(con, params.params.get("dedup") or {}, data, model_id, vectors=vectors)
    log(f"reviewing {len(evidence)} clusters with {reviewer_id}")
    with report.timed("review"):
        outcome = reviewer.review(evidence, glob, dedup=dedup_ev)
    review = outcome.review
    # what each cluster's review cost: source (model, cache, offline, fallback), tokens, cost, requests
    spent = {int(u["cluster"]): {k: v for k, v in u.items() if k != "cluster"} for u in outcome.per_cluster if "cluster" in u}
    rows = []
    for c in review["clusters"]:
        stored = dict(c, usage=spent.get(int(c["cluster"]), {}))
        rows.append((cycle, "cluster", int(c["cluster"]), c.get("name"), c.get("task_type"), c.get("quality"), c.get("verdict"),
                     c.get("merge_with"), json.dumps(c.get("reasons", []), ensure_ascii=False),
                     json.dumps(c.get("problem_row_ids", []), ensure_ascii=False), outcome.reviewer_id, outcome.prompt_hash,
                     json.dumps(stored, ensure_ascii=False)))
    g = review["global"]
    rows.append((cycle, "global", None, None, None, None, g.get("k_recommendation"), None,
                 json.dumps(g.get("reasons", []), ensure_ascii=False), "[]", outcome.reviewer_id, outcome.prompt_hash,
                 json.dumps({"global": g, "usage": outcome.usage, "failures": outcome.failures}, ensure_ascii=False)))
    frame = pl.DataFrame(rows, orient="row", schema=REVIEW_SCHEMA)

    decision = decide_next_params(con, cycle, params, store, review)
    with report.timed("store"), wh.transaction(con):
        wh.replace_table(con, "cluster_reviews", frame, "cycle = ?", [cycle])
        wh.run(con, "UPDATE cycles SET recommendation = ?, proposed_version = ?, state = ?, note = ? WHERE cycle = ?",
                    [g.get("k_recommendation"), decision["version"], decision["state"], decision["note"], cycle])
    report.counts.update(cycle=cycle, clusters_reviewed=len(review["clusters"]), failures=len(outcome.failures))
    _report_reviews(report, frame, g)
    report.values.update(reviewer=outcome.reviewer_id, prompt_hash=outcome.prompt_hash, params_version=params.version,
                         k_recommendation=str(g.get("k_recommendation")), next_state=decision["state"],
                         proposed_version=decision["version"] or 0, note=decision["note"])
    report.values.update({f"usage.{k}": v for k, v in (outcome.usage or {}).items() if isinstance(v, (int, float))})
    if spent:
        report.markdown["usage_per_cluster"] = wh.markdown_table(pl.DataFrame(
            [{"cluster": c, "source": u.get("source"), "prompt_tokens": u.get("prompt_tokens", 0),
              "completion_tokens": u.get("completion_tokens", 0), "cost_usd": u.get("cost_usd"),
              "requests": u.get("requests", 0)} for c, u in sorted(spent.items())],
            schema={"cluster": pl.Int64, "source": pl.String, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64,
                    "cost_usd": pl.Float64, "requests": pl.Int64}), max_rows=60)
    report.counts["dedup_evidence.removed_pairs"] = len(dedup_ev.removed_pairs)
    report.counts["dedup_evidence.near_misses"] = len(dedup_ev.near_misses)
    report.markdown["dedup_review"] = _dedup_review_markdown(dedup_ev, g.get("dedup_recommendation"))
    report.markdown["cluster_cards"] = cluster_cards_markdown(evidence, {int(c["cluster"]): c for c in review["clusters"]})
    report.markdown["cycles"] = wh.markdown_table(cycle_history(con))
    return report


def _review_to_carry(con: duckdb.DuckDBPyConnection, cycle: int, reviewer_id: str, prompt_hash: str,
                     rereview_share: float) -> dict[str, Any]:
    """Whether the last review still describes the clusters of ``cycle``, so that it is carried over
    instead of rebuilding every cluster's evidence and asking the reviewer again.

    It does when the last review had no failures, was made by the same reviewer with the same prompt,
    the cycle it judged (``from_cycle``: the cycle whose evidence was built, followed through earlier
    carry-overs) ran on the same parameters, the clusters still come from the K-means fit used then,
    and the rows new since, gone since or labelled differently are at most ``review.rereview_share``
    of the rows judged (drift adds up over carry-overs: it is counted against ``from_cycle``).
    Returns {"carry", "reason"} and, when carried, from_cycle, previous_cycle and the row counts."""
    if rereview_share <= 0:
        return {"carry": False, "reason": "review.rereview_share is 0: every cycle is reviewed"}
    last = wh.run(con, "SELECT cycle, reviewer, prompt_hash, review_json FROM cluster_reviews "
                       "WHERE scope = 'global' AND cycle < ? ORDER BY cycle DESC LIMIT 1", [cycle])
    if not last:
        return {"carry": False, "reason": "no earlier review"}
    previous, last_reviewer, last_prompt, blob = last[0]
    info = json.loads(blob or "{}")
    if info.get("failures"):
        return {"carry": False, "reason": f"the review of cycle {previous} had failures"}
    if (last_reviewer, last_prompt) != (reviewer_id, prompt_hash):
        return {"carry": False, "reason": f"the reviewer or its prompt changed since cycle {previous}"}
    source = int(info.get("carried_from") or previous)
    hashes = dict(wh.run(con, "SELECT cycle, params_hash FROM cycles WHERE cycle IN (?, ?)", [source, cycle]))
    if hashes.get(source) is None or hashes.get(source) != hashes.get(cycle):
        return {"carry": False, "reason": f"the parameters changed since the review of cycle {source}"}
    fit = wh.run(con, "SELECT min(fit_cycle), max(fit_cycle) FROM fit_state WHERE stage = 'clusters'")
    if not fit or fit[0][0] is None or fit[0][1] > source:
        return {"carry": False, "reason": f"the clusters were refitted since the review of cycle {source}"}
    new, gone, moved, judged = wh.run(con, """
        SELECT count(*) FILTER (WHERE r.row_id IS NULL), count(*) FILTER (WHERE c.row_id IS NULL),
               count(*) FILTER (WHERE r.cluster <> c.cluster), count(r.row_id)
        FROM (SELECT row_id, cluster FROM cluster_labels WHERE cycle = ?) r
        FULL JOIN (SELECT row_id, cluster FROM cluster_labels WHERE cycle = ?) c ON c.row_id = r.row_id""",
                                       [source, cycle])[0]
    share = (new + gone + moved) / max(judged, 1)
    carry = share <= rereview_share
    reason = (f"{new:,} rows new, {gone:,} gone and {moved:,} in another cluster since the review of cycle {source}: "
              f"{share:.1%} of its {judged:,} rows, {'within' if carry else 'above'} review.rereview_share {rereview_share:.0%}")
    return {"carry": carry, "reason": reason, "from_cycle": source, "previous_cycle": int(previous), "rows_new": int(new),
            "rows_gone": int(gone), "rows_moved": int(moved), "changed_share": share}


def _carry_review(con: duckdb.DuckDBPyConnection, cycle: int, carry: dict[str, Any], params: ParamsVersion,
                  report: StageReport) -> StageReport:
    """Write the last cycle's reviews again under ``cycle``, each marked with ``carried_from``; the
    parameters are not touched (that review's recommendation was acted on when it was made)."""
    source, previous = carry["from_cycle"], carry["previous_cycle"]

    def marked(blob: str | None) -> str:
        value = json.loads(blob or "{}")
        value["carried_from"] = source
        return json.dumps(value, ensure_ascii=False)

    frame = wh.frame(con, f"SELECT {', '.join(REVIEW_SCHEMA)} FROM cluster_reviews WHERE cycle = ? ORDER BY scope DESC, cluster",
                     [previous])
    frame = frame.with_columns(pl.lit(cycle, dtype=pl.Int32).alias("cycle"),
                               pl.col("review_json").map_elements(marked, return_dtype=pl.String))
    glob = frame.filter(pl.col("scope") == "global")
    k_rec = glob["verdict"][0] if len(glob) else None
    note = f"review of cycle {source} carried over: {carry['reason']}"
    with report.timed("store"), wh.transaction(con):
        wh.replace_table(con, "cluster_reviews", frame, "cycle = ?", [cycle])
        wh.run(con, "UPDATE cycles SET recommendation = ?, proposed_version = NULL, state = 'review_carried_over', note = ? "
                    "WHERE cycle = ?", [k_rec, note, cycle])
    report.counts.update(cycle=cycle, clusters_reviewed=0, clusters_carried_over=int((frame["scope"] == "cluster").sum()),
                         failures=0, rows_new_since_review=carry["rows_new"], rows_gone_since_review=carry["rows_gone"],
                         rows_moved_since_review=carry["rows_moved"])
    _report_reviews(report, frame, json.loads(glob["review_json"][0] or "{}").get("global", {}) if len(glob) else {})
    reviewer = glob["reviewer"][0] if len(glob) else None
    report.values.update(mode="carried_over", carried_from=source, reuse_reason=carry["reason"], reviewer=reviewer,
                         prompt_hash=glob["prompt_hash"][0] if len(glob) else None, params_version=params.version,
                         k_recommendation=str(k_rec), next_state="review_carried_over", proposed_version=0, note=note,
                         changed_share=round(float(carry["changed_share"]), 4))
    report.markdown["cluster_cards"] = (f"_The review of cycle {source} was carried over; its materialization holds the "
                                        "cluster cards it was made from._")
    report.markdown["cycles"] = wh.markdown_table(cycle_history(con))
    return report


def dedup_evidence(con: duckdb.DuckDBPyConnection, dedup_params: dict[str, Any], clustered: pl.DataFrame,
                   model_id: str, n_pairs: int = 30, sample: int = 4000, margin: float = 0.1,
                   vectors: np.ndarray | None = None) -> Any:
    """What the reviewer sees of dedup: thresholds, rows removed per kind, the ``n_pairs`` least
    similar pairs near and semantic dedup removed, and the ``n_pairs`` most similar pairs of kept
    rows that scored within ``margin`` below the semantic threshold. Near misses are searched among
    up to ``sample`` of the clustered rows (``clustered``: row_id and text_hash), scored the way
    semantic dedup scores (hybrid: w x cosine + (1 - w) x MinHash Jaccard of the whole row).
    ``vectors``: the ``model_id`` vectors of ``clustered``, row for row, when the caller holds them
    already (the sample's rows are taken from it instead of being read again: at 1.7M rows a read of
    4,000 vectors through a join scans the whole table). The sample's MinHash signatures are
    computed afresh, the way dedup computes them, rather than looked up in its cache (same reason)."""
    from purify_assets.core.dedup import REMOVING_KINDS, minhash_signatures, semantic_pairs
    from purify_assets.core.review import DedupEvidence

    mode = str(dedup_params.get("semantic_mode", "hybrid"))
    t = float(dedup_params.get("semantic_threshold", 0.85 if mode == "hybrid" else 0.95))
    w = float(dedup_params.get("semantic_weight_cosine", 0.5)) if mode == "hybrid" else 1.0
    settings = {"near_threshold": float(dedup_params.get("near_threshold", 0.8)), "semantic_mode": mode,
                "semantic_threshold": t, "semantic_weight_cosine": w}
    removed = {k: int(v) for k, v in wh.run(con, "SELECT kind, count(DISTINCT row_id) FROM dedup_sets WHERE NOT is_representative "
                                                 f"AND kind IN ({', '.join(repr(k) for k in REMOVING_KINDS)}) GROUP BY kind")}
    full = "concat_ws(chr(10), {0}.instruction, {0}.input, {0}.output)"
    pairs = wh.frame(con, f"""
        SELECT kind, similarity, removed, kept FROM (
            SELECT d.kind, d.similarity, {full.format('c')} AS removed, {full.format('r')} AS kept,
                   row_number() OVER (PARTITION BY d.kind ORDER BY d.similarity, d.row_id) AS nth
            FROM dedup_sets d JOIN clean_rows c ON c.row_id = d.row_id JOIN clean_rows r ON r.row_id = d.representative_row_id
            WHERE NOT d.is_representative AND d.kind IN ('near', 'semantic'))
        WHERE nth <= ? ORDER BY kind, similarity""", [n_pairs])
    misses: list[dict[str, Any]] = []
    if len(clustered) >= 2 and dedup_params.get("semantic", True):
        rows = clustered.select("row_id", "text_hash").with_row_index("_pos")
        if len(rows) > sample:
            rows = rows.sort(pl.col("row_id").hash(7)).head(sample).sort("row_id")
        con.register("_sample", rows.select("row_id"))
        try:
            info = wh.frame(con, f"SELECT c.row_id, {full.format('c')} AS full_text FROM clean_rows c "
                                 "JOIN _sample USING (row_id)")
        finally:
            con.unregister("_sample")
        rows = rows.join(info, on="row_id", how="inner").sort("row_id")
        if vectors is not None and len(vectors) == len(clustered):
            x = vectors[rows["_pos"].to_numpy()]
        else:
            x = _all_vectors(con, rows, model_id)
        floor = max(0.0, (t - margin - (1 - w)) / w) if w > 0 else 1.0
        i, j, cos = semantic_pairs(x, floor, method="exact")
        score = cos.astype(np.float64)
        if mode == "hybrid" and len(i):
            sig = minhash_signatures(rows["full_text"].to_list(), num_perm=int(dedup_params.get("num_perm", 128)))
            score = w * cos + (1 - w) * (sig[i] == sig[j]).mean(axis=1)
        if len(score):
            keep = np.flatnonzero((score >= t - margin) & (score < t))
            keep = keep[np.argsort(-score[keep], kind="stable")][:n_pairs]
            texts = rows["full_text"].to_list()
            misses = [{"score": round(float(score[k]), 4), "a": texts[i[k]], "b": texts[j[k]]} for k in keep]
    return DedupEvidence(settings=settings, removed=removed,
                         removed_pairs=[dict(r, similarity=round(float(r["similarity"]), 4)) for r in pairs.iter_rows(named=True)],
                         near_misses=misses)


def _dedup_review_markdown(ev: Any, recommendation: dict[str, Any] | None) -> str:
    lines = [f"Settings: {ev.settings}; rows removed: {ev.removed or 'none'}.", "",
             "**Recommendation:** " + (f"`dedup.{recommendation['parameter']}` -> {recommendation['value']}: "
                                        + "; ".join(recommendation["reasons"]) if recommendation else "none")]
    if ev.removed_pairs:
        lines += ["", "Least similar pairs removed:", "", wh.markdown_table(pl.DataFrame(ev.removed_pairs), max_rows=8)]
    if ev.near_misses:
        lines += ["", "Kept pairs just below the semantic threshold:", "", wh.markdown_table(pl.DataFrame(ev.near_misses), max_rows=8)]
    return "\n".join(lines)


def cluster_text_stats(data: pl.DataFrame) -> dict[int, dict[str, Any]]:
    """``text_stats`` of every cluster of ``data`` (cluster, text, instruction, input, output, lang),
    with two duplicate shares of the cycle's own: ``duplicate_share`` counts whole rows (rows that
    share an instruction template are not duplicates), ``embedded_text_duplicate_share`` the text
    that was embedded."""
    from purify_assets.core import review as rv

    whole = pl.concat_str([pl.col("instruction"), pl.col("input"), pl.col("output")], separator="\x1f",
                          ignore_nulls=True).str.to_lowercase()
    stats = rv.text_stats_by_group(data, "cluster", duplicate_key=whole)
    for c, n, texts in data.group_by("cluster").agg(pl.len(), pl.col("text").n_unique()).iter_rows():
        stats[c]["embedded_text_duplicate_share"] = round(1 - texts / max(n, 1), 4)
    return {int(c): v for c, v in stats.items()}


def build_evidence(data: pl.DataFrame, cards: dict[int, dict[str, Any]], per: dict[int, dict[str, float]],
                   max_examples: int = 8) -> list[Any]:
    """What the reviewer reads per cluster: size, metrics, central and boundary rows, terms, text stats."""
    from purify_assets.core import review as rv

    n = max(len(data), 1)
    by_cluster = {int(c): part for (c,), part in data.group_by(["cluster"], maintain_order=True)}
    terms = rv.cluster_top_terms({c: part["text"].to_list() for c, part in by_cluster.items()})
    text_stats = cluster_text_stats(data)
    evidence = []
    for c in sorted(by_cluster):
        part = by_cluster[c]
        card = cards.get(c, {})
        evidence.append(rv.ClusterEvidence(
            cluster=c, size=len(part), share=len(part) / n, metrics=dict(per.get(c, {})),
            central=list(card.get("central", []))[:max_examples], boundary=list(card.get("boundary", []))[:max_examples],
            top_terms=terms.get(c, []),
            text_stats=text_stats[c],
        ))
    return evidence


def cluster_cards_markdown(evidence: list[Any], verdicts: dict[int, dict[str, Any]], n_central: int = 3,
                           n_boundary: int = 2, max_chars: int = 140) -> str:
    """Per cluster: name, verdict, size, the rows nearest its centre and rows at its boundary."""
    def clip(text: str) -> str:
        text = " ".join(str(text).split()).replace("|", "\\|")
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    parts = []
    for ev in evidence:
        v = verdicts.get(int(ev.cluster), {})
        parts.append(f"**Cluster {ev.cluster}: {v.get('name', '')}** ({ev.size:,} rows, {ev.share:.1%}; "
                     f"{v.get('task_type', '?')}; verdict **{v.get('verdict', '?')}**)")
        parts += [f"- centre: `{r.get('row_id')}` {clip(r.get('text', ''))}" for r in ev.central[:n_central]]
        parts += [f"- boundary: `{r.get('row_id')}` {clip(r.get('text', ''))}" for r in ev.boundary[:n_boundary]]
        parts.append("")
    return "\n".join(parts)


def review_chain_length(store: ParamsStore, version: int) -> int:
    """How many review-sourced versions lead to ``version`` since the last user or default version."""
    n = 0
    current = store.get(version)
    while current.source == "review" and current.parent is not None:
        n += 1
        current = store.get(current.parent)
    return n


def decide_next_params(con: duckdb.DuckDBPyConnection, cycle: int, params: ParamsVersion, store: ParamsStore,
                       review: dict[str, Any]) -> dict[str, Any]:
    """Apply the cycle policy to a review: propose, auto-approve, or stop (converged / capped / worse)."""
    from purify_assets.core.review import propose_params

    cycle_cfg = params.params.get("cycle", {})
    max_cycles = int(cycle_cfg.get("max_cycles", 3))
    policy = str(cycle_cfg.get("policy", "auto"))
    prev = ((wh.run(con, "SELECT silhouette FROM cycles WHERE cycle < ? AND silhouette IS NOT NULL ORDER BY cycle DESC LIMIT 1",
                       [cycle]) or [None])[0])
    now = ((wh.run(con, "SELECT silhouette FROM cycles WHERE cycle = ?", [cycle]) or [None])[0])
    tolerance = float(cycle_cfg.get("min_improvement", -0.01))
    if (params.source == "review" and prev and now and prev[0] is not None and now[0] is not None
            and now[0] - prev[0] < tolerance and cycle_cfg.get("stop_if_worse", True)):
        return {"version": None, "state": "stopped_metrics_worse",
                "note": f"silhouette went from {prev[0]:.4f} to {now[0]:.4f}; not applying further recommendations"}
    proposal = propose_params(review, params.params)
    if proposal is None:
        return {"version": None, "state": "converged", "note": "the reviewer recommends no change"}
    new_params, reasons = proposal
    for drop in new_params.get("review", {}).get("drop_clusters", []):
        if isinstance(drop, dict):
            drop.setdefault("cycle", cycle)  # (cycle, cluster) names the rows exactly in cluster_labels
    if review_chain_length(store, params.version) + 1 >= max_cycles:
        return {"version": None, "state": "cycle_cap_reached",
                "note": f"{max_cycles} cycles reached (cycle.max_cycles); recommendation not applied: {'; '.join(reasons)}"}
    status = "approved" if policy == "auto" else "proposed"
    pv = store.write(new_params, source="review", reason=f"cycle {cycle}: " + "; ".join(reasons), status=status,
                     parent=params.version)
    state = "applied" if status == "approved" else "awaiting_approval"
    return {"version": pv.version, "state": state, "note": "; ".join(reasons)}


# ------------------------------------------------------------------------------------------- publish
#: the publication's rows compared with the table's on these columns (with ``row_id``): a row whose
#: texts changed has another ``row_hash``, so no text is read to find the rows to write again
PUBLICATION_COMPARED = ["batch_id", "cluster", "cluster_name", "task_type", "row_hash"]


def _store_publication(con: duckdb.DuckDBPyConnection, kept: pl.DataFrame, cycle: int) -> tuple[np.ndarray, int, pl.DataFrame]:
    """Bring ``purified_dataset`` to the publication ``kept`` (row_id and ``PUBLICATION_COMPARED``),
    in the caller's transaction: rows that are gone or differ are deleted and every row takes the
    cycle number. Returns (the cluster of every deleted row, the number of rows whose cycle changed,
    the rows the table now lacks with their texts, in cluster and row id order): the caller inserts
    those. At 660k published NSMC rows comparing every text of the table with a frame of them took
    0.5 s and reading those texts 0.9 s, while a backfill inserts a tenth of them."""
    same = " AND ".join(f"s.{c} IS NOT DISTINCT FROM t.{c}" for c in PUBLICATION_COMPARED)
    with wh.registered(con, _publication=kept):
        gone = con.execute(f"DELETE FROM purified_dataset t WHERE NOT EXISTS (SELECT 1 FROM _publication s "
                           f"WHERE s.row_id = t.row_id AND {same}) RETURNING t.cluster").fetchnumpy()["cluster"]
        updated = int(wh.run(con, "UPDATE purified_dataset SET cycle = ? WHERE cycle IS DISTINCT FROM ?", [cycle, cycle])[0][0])
        fresh = wh.frame(con, """
            SELECT ?::INT AS cycle, s.row_id, s.batch_id, s.cluster, s.cluster_name, s.task_type, c.instruction, c.input,
                   c.output, raw.record_json, s.row_hash
            FROM _publication s JOIN clean_rows c USING (row_id) LEFT JOIN raw_rows raw USING (row_id)
            WHERE NOT EXISTS (SELECT 1 FROM purified_dataset t WHERE t.row_id = s.row_id)
            ORDER BY s.cluster, s.row_id""", [cycle])
    return np.asarray(gone, dtype=np.int64), updated, fresh


def _cluster_slices(frame: pl.DataFrame) -> dict[int, pl.DataFrame]:
    """Each cluster's rows of ``frame`` (sorted by cluster) as a slice of it: no copy, where a
    partition or group-by gathered every cluster's rows, texts included, into new frames (0.75 s of
    660k rows' export)."""
    if not len(frame):
        return {}
    clusters = frame["cluster"].to_numpy()
    if (np.diff(clusters) < 0).any():
        raise ValueError("the rows must be sorted by cluster")
    starts = np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1]])
    ends = np.r_[starts[1:], len(clusters)]
    return {int(clusters[lo]): frame.slice(int(lo), int(hi - lo)) for lo, hi in zip(starts, ends)}


def _write_export(con: duckdb.DuckDBPyConnection, staging: Path, previous_folder: Path | None, plans: list[Any],
                  fresh: pl.DataFrame, cycle: int, report: StageReport,
                  table_ready: Callable[[], Any] = lambda: None) -> dict[str, dict[str, Any]]:
    """The export of ``plans`` (``export_files.plan_export``) into ``staging``: earlier parts linked
    from ``previous_folder``, the new rows (from ``fresh``) or a cluster's every row (read from the
    table, in the caller's transaction, once ``table_ready()`` has returned) written as one part.
    Returns the part written per cluster folder."""
    from purify_assets.core import export_files as ex

    ex.unlink_missing_parts(plans, previous_folder)  # a part file gone: that cluster is written whole
    new_by_cluster = _cluster_slices(fresh)
    reread = [p.cluster for p in plans if p.write == "all" and p.new_rows < p.rows]
    whole_by_cluster: dict[Any, pl.DataFrame] = {}
    if reread:
        table_ready()
        with wh.registered(con, _rewrite=pl.DataFrame({"cluster": reread}, schema={"cluster": pl.Int32})):
            whole = wh.frame(con, "SELECT t.* FROM purified_dataset t JOIN _rewrite USING (cluster) ORDER BY t.cluster, t.row_id")
        whole_by_cluster = _cluster_slices(whole)
    parts: list[tuple[Path, pl.DataFrame]] = []
    written: dict[str, dict[str, Any]] = {}
    linked = 0
    for plan in plans:
        target = staging / plan.folder
        target.mkdir()
        if plan.linked:
            linked += ex.link_parts(plan, previous_folder, target)
        source = whole_by_cluster if plan.cluster in reread else new_by_cluster
        rows = source.get(plan.cluster)
        if rows is not None and len(rows):
            stem = ex.part_stem(cycle)
            parts.append((target / stem, rows))
            written[plan.folder] = {"stem": stem, "rows": len(rows), "cycle": int(cycle)}
    ex.write_parts(parts)
    report.counts.update(export_parts_linked=linked, export_parts_written=len(parts),
                         export_rows_written=sum(len(r) for _, r in parts),
                         export_clusters_written_whole=sum(1 for p in plans if p.write == "all"))
    return written


@releases_memory
def publish_dataset(con: duckdb.DuckDBPyConnection, exports_dir: Path, plots_dir: Path, log: Log = _no_log) -> StageReport:
    """The purified rows of the latest reviewed cycle: stored in ``purified_dataset`` and exported
    per cluster in parts (``core.export_files``), with a dataset card.

    Only what changed since the last publication is written. The table's rows are compared on their
    cluster, name, task type, batch and row hash, not their texts (``_store_publication``); the
    texts are read for the rows inserted alone. A cluster that only gained rows keeps its earlier
    part files (hard links into the new folder) and gets one part with the new rows; any other
    cluster is written whole. The export is written into a sibling folder while the table's
    transaction is open, and swapped in once that has committed: a failure on either side leaves
    the previous export and table as they were."""
    from purify_assets.core import export_files as ex

    report = StageReport()
    cycle = latest_cycle_or_fail(con)
    reviews = wh.frame(con, "SELECT cluster, name, task_type, verdict FROM cluster_reviews WHERE cycle = ? AND scope = 'cluster'", [cycle])
    if reviews.is_empty():
        raise ValueError(f"cycle {cycle} has no cluster reviews yet: materialize cluster_reviews first")
    with report.timed("load"), wh.registered(con, _reviews=reviews):
        previous_cycle = wh.scalar(con, "SELECT max(cycle) FROM purified_dataset")
        # keys and hashes only, the texts read later for the rows the table and the export lack; into an
        # empty table every row goes, so a first publication reads them with their texts at once
        texts = ("?::INT AS cycle, c.instruction, c.input, c.output, raw.record_json,", "LEFT JOIN raw_rows raw USING (row_id)") \
            if previous_cycle is None else ("", "")
        rows = wh.frame(con, f"""
            SELECT {texts[0]} l.row_id, c.batch_id, l.cluster, r.name AS cluster_name, r.task_type, c.row_hash, r.verdict
            FROM cluster_labels l JOIN clean_rows c USING (row_id) {texts[1]} LEFT JOIN _reviews r ON r.cluster = l.cluster
            WHERE l.cycle = ? ORDER BY l.cluster, l.row_id""", ([cycle] if previous_cycle is None else []) + [cycle])
    n_dropped = int((rows["verdict"] == "drop").sum())
    kept = rows.filter((pl.col("verdict") != "drop") | pl.col("verdict").is_null()).drop("verdict")
    del rows
    counts = kept.group_by(["cluster", "cluster_name", "task_type"]).len("rows").sort("cluster")
    folder = exports_dir / f"cycle_{cycle:03d}"
    previous_folder = exports_dir / f"cycle_{int(previous_cycle):03d}" if previous_cycle is not None else None
    # write a sibling folder, then swap it in: a run killed mid-export leaves the previous export whole
    staging = exports_dir / f".{folder.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        with wh.transaction(con):
            with report.timed("store"):
                if previous_cycle is None:
                    gone, updated, fresh = np.zeros(0, dtype=np.int64), 0, kept
                else:
                    gone, updated, fresh = _store_publication(con, kept, cycle)
            # the new rows go into the table in a thread while their files are written: DuckDB and polars
            # both write without the GIL (every row of 555k written again: publish 4.5 s against 6.0 s one
            # after the other, one run each; of 95k: 0.75 against 0.81 s, median of 3; committing in the
            # thread as well measured no faster); nothing else uses the connection until it is joined
            inserted = wh.in_thread(lambda: wh.insert_frame(con, "purified_dataset", fresh), report.timings, "store_insert")
            try:
                with report.timed("export"):
                    new_counts = {int(c): int(k) for c, k in fresh.group_by("cluster").len().iter_rows()} if len(fresh) else {}
                    plans = ex.plan_export(counts, new_counts, {int(c) for c in np.unique(gone)},
                                           ex.read_manifest(previous_folder) if previous_folder is not None else None,
                                           previous_cycle, cycle)
                    written = _write_export(con, staging, previous_folder, plans, fresh, cycle, report, inserted)
                    ex.write_manifest(staging, cycle, plans, written)
            finally:
                inserted(raise_error=False)  # joined before the connection is used again (or rolled back)
            with report.timed("store_wait"):
                inserted()  # its error, if any, is the stage's
            del fresh
            with report.timed("card"):
                card = dataset_card(con, cycle, counts, len(kept), n_dropped, plots_dir, report.counts)
                (staging / "DATASET_CARD.md").write_text(card, "utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if folder.exists():
        retired = exports_dir / f".{folder.name}.old"
        if retired.exists():
            shutil.rmtree(retired)
        os.replace(folder, retired)
        os.replace(staging, folder)
        shutil.rmtree(retired)
    else:
        os.replace(staging, folder)
    latest = exports_dir / "latest"
    if latest.is_dir() and not latest.is_symlink():
        # not the link purify keeps (a copy made without links, or the user's own folder): left alone
        report.values["latest_link"] = f"not updated: {latest} is a directory, not a link; the export is in {folder}"
    else:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        try:
            latest.symlink_to(folder.name)
            report.values["latest_link"] = f"{latest} -> {folder.name}"
        except OSError as exc:
            report.values["latest_link"] = f"not updated: {exc}"
    report.counts.update(table_rows_deleted=len(gone), table_rows_updated=updated,
                         table_rows_inserted=sum(int(k) for k in new_counts.values()))
    report.counts.update(cycle=cycle, rows_published=len(kept), rows_in_dropped_clusters=n_dropped,
                         clusters_published=len(counts))
    report.files.update(export_folder=str(folder), dataset_card=str(folder / "DATASET_CARD.md"),
                        manifest=str(folder / ex.MANIFEST_NAME))
    report.markdown["dataset_card"] = card
    report.markdown["export_plan"] = wh.markdown_table(pl.DataFrame(
        [{"folder": p.folder, "rows": p.rows, "parts_linked": len(p.linked), "rows_written": written.get(p.folder, {}).get("rows", 0),
          "why": p.reason} for p in plans]), max_rows=60, max_chars=90) if plans else "_(no clusters)_"
    report.checks["every_published_row_has_a_cluster"] = (kept["cluster"].null_count() == 0, "published rows without a cluster")
    return report


def dataset_card(con: duckdb.DuckDBPyConnection, cycle: int, per_cluster: pl.DataFrame, published: int, dropped: int,
                 plots_dir: Path, export_counts: dict[str, Any] | None = None) -> str:
    """The card of a publication: row accounting, removals, duplicates, clusters (``per_cluster``:
    cluster, cluster_name, task_type, rows), cycles, the export's layout and what it wrote."""
    counts = wh.table_counts(con)
    reasons = wh.frame(con, "SELECT reason, count(*) AS rows FROM rejected_rows GROUP BY reason ORDER BY rows DESC")
    dups = wh.frame(con, "SELECT kind, count(*) FILTER (WHERE NOT is_representative) AS rows FROM dedup_sets GROUP BY kind ORDER BY kind")
    ec = export_counts or {}
    lines = [
        f"# Purified dataset, cycle {cycle}", "",
        f"Generated {_now():%Y-%m-%d %H:%M} UTC by purify.", "",
        "## Row accounting", "",
        f"- raw rows: {counts['raw_rows']:,}; quarantined lines: {counts['quarantine']:,}",
        f"- rejected by cleaning: {counts['rejected_rows']:,}; kept after cleaning: {counts['clean_rows']:,}",
        f"- rows in clusters the review dropped: {dropped:,}; published: {published:,}", "",
        "## Removed by cleaning, per reason", "", wh.markdown_table(reasons, max_rows=50), "",
        "## Duplicates, per kind", "", wh.markdown_table(dups), "",
        "## Clusters (task types)", "", wh.markdown_table(per_cluster, max_rows=100), "",
        "## Cycles", "", wh.markdown_table(cycle_history(con)), "",
        "## Files", "",
        "One folder per cluster (`cluster_<id>_<name>/`), its rows in parts: `part-c<cycle>.jsonl` and `.parquet`",
        "hold the same rows. `cat cluster_*/*.jsonl` gives every published row once; `MANIFEST.json` lists",
        "each folder's parts and row counts. A part of an earlier cycle is a hard link to that cycle's file:",
        "edit copies, not these files.",
        f"This publication linked {ec.get('export_parts_linked', 0):,} earlier parts and wrote "
        f"{ec.get('export_parts_written', 0):,} ({ec.get('export_rows_written', 0):,} rows).", "",
    ]
    png = sorted(plots_dir.glob(f"cycle{cycle}_*_2d.png"))
    if png:
        lines += ["## 2-D projection", "", f"![2-D projection]({png[0].resolve()})", ""]
    return "\n".join(lines)
