"""Per-batch stages: ingest (raw_rows + quarantine), clean (clean_rows + rejected_rows), embed."""

from __future__ import annotations

import inspect
import json
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import duckdb
import numpy as np
import polars as pl

from purify_assets.core import warehouse as wh
from purify_assets.core.clean import CleanConfig, REASON_CODES, clean_row, compose_text, row_hash, text_hash
from purify_assets.core.fields import FieldMapping, UnmappableError, detect_mapping, map_record
from purify_assets.core.ingest import BatchReader, ParsedRecord, QuarantinedLine
from purify_assets.core.landing import LandedBatch
from purify_assets.stages import Log, StageReport, _no_log, releases_memory

RAW_SCHEMA = {
    "batch_id": pl.String, "row_id": pl.String, "source_file": pl.String, "line_no": pl.Int32,
    "record_json": pl.String, "instruction": pl.String, "input": pl.String, "output": pl.String,
    "turns": pl.Int32, "has_output": pl.Boolean,
}
QUARANTINE_SCHEMA = {"batch_id": pl.String, "source_file": pl.String, "line_no": pl.Int32, "error": pl.String, "raw": pl.String}


class IngestError(ValueError):
    """A batch that cannot be loaded at all (e.g. no column maps to an instruction)."""


def row_id_for(batch_key: str, line_no: int, nth_on_line: int = 0) -> str:
    """``<batch>:<line>``; further records starting on the same line (a one-line JSON array) get
    ``.<n>`` so every row id stays unique and sorts in file order."""
    base = f"{batch_key}:{line_no:09d}"
    return base if nth_on_line == 0 else f"{base}.{nth_on_line:06d}"


MAPPING_PROBE_RECORDS = 1000  # records whose columns together decide the field mapping


@releases_memory
def ingest_batch(con: duckdb.DuckDBPyConnection, batch: LandedBatch, mapping_override: dict | None = None,
                 chunk_rows: int = 50_000, log: Log = _no_log) -> StageReport:
    """Parse the archived file of ``batch`` into ``raw_rows``; unparseable lines go to ``quarantine``."""
    report = StageReport()
    override = batch.mapping or mapping_override
    reader = BatchReader(batch.archived_path)
    mapping: FieldMapping | None = None
    rows: list[tuple] = []
    bad: list[tuple] = []
    n_rows = n_bad = 0
    waiting: list[ParsedRecord] = []  # records read before any record's columns could be mapped
    last_line, nth = -1, 0
    started = time.perf_counter()

    def flush() -> None:
        nonlocal rows, bad
        if rows:
            wh.insert_frame(con, "raw_rows", pl.DataFrame(rows, schema=RAW_SCHEMA, orient="row"))
        if bad:
            wh.insert_frame(con, "quarantine", pl.DataFrame(bad, schema=QUARANTINE_SCHEMA, orient="row"))
        rows, bad = [], []

    def add_row(item: ParsedRecord) -> None:
        nonlocal n_rows, last_line, nth
        nth = nth + 1 if item.line_no == last_line else 0
        last_line = item.line_no
        mapped = map_record(item.record, mapping)
        rows.append((
            batch.batch_key, row_id_for(batch.batch_key, item.line_no, nth), batch.original_name, item.line_no,
            json.dumps(item.record, ensure_ascii=False, default=str), mapped.instruction, mapped.input,
            mapped.output, mapped.turns, mapping.has_output,
        ))
        n_rows += 1

    def unmappable(line_no: int, exc: Exception) -> IngestError:
        return IngestError(f"{batch.original_name} (batch {batch.batch_key}), line {line_no}: {exc}")

    def settle_mapping() -> FieldMapping:
        """Map the union of the columns of the records read so far (in order of first appearance),
        then store those records."""
        columns = list(dict.fromkeys(k for early in waiting for k in early.record.keys()))
        try:
            found = detect_mapping(columns, override)
        except UnmappableError as exc:
            raise unmappable(waiting[0].line_no, exc) from exc
        nonlocal mapping
        mapping = found
        for early in waiting:
            add_row(early)
        waiting.clear()
        return found

    with report.timed("parse_and_store"), wh.transaction(con):
        for table in ("raw_rows", "quarantine", "batches"):
            wh.run(con, f"DELETE FROM {table} WHERE batch_id = ?", [batch.batch_key])
        for item in reader:
            if isinstance(item, QuarantinedLine):
                bad.append((batch.batch_key, batch.original_name, item.line_no, item.error, item.raw))
                n_bad += 1
            else:
                assert isinstance(item, ParsedRecord)
                if mapping is None:
                    # the layout is decided on the columns of the first records together, so an optional
                    # column the first record omits (JSONL often drops an empty "input") is still mapped
                    waiting.append(item)
                    if len(waiting) >= MAPPING_PROBE_RECORDS:
                        mapping = settle_mapping()
                    continue
                add_row(item)
            if len(rows) + len(bad) >= chunk_rows:
                flush()
                log(f"{batch.batch_key}: {n_rows:,} rows parsed, {n_bad:,} quarantined")
        if mapping is None and waiting:
            mapping = settle_mapping()
        flush()
        info = reader.info
        wh.run(con, "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [batch.batch_key, batch.original_name, batch.sha256, batch.bytes, batch.archived_path, info.format,
             info.encoding, info.compression, mapping.layout if mapping else None, n_rows, n_bad,
             info.mojibake_repaired, datetime.now(timezone.utc).replace(tzinfo=None)],
        )
    elapsed = time.perf_counter() - started
    report.counts.update(rows=n_rows, quarantined=n_bad, mojibake_repaired=info.mojibake_repaired)
    report.values.update(
        source_file=batch.original_name, sha256=batch.sha256, format=info.format, encoding=info.encoding,
        compression=info.compression or "none", layout=mapping.layout if mapping else "none",
        rows_per_second=round(n_rows / elapsed, 1) if elapsed > 0 else 0.0,
    )
    if info.notes:
        report.markdown["reader_notes"] = "\n".join(f"- {n}" for n in info.notes)
    report.markdown["preview"] = wh.markdown_table(wh.frame(con, "SELECT line_no, instruction, input, output FROM raw_rows WHERE batch_id = ? ORDER BY line_no LIMIT 5",
        [batch.batch_key]))
    if n_bad:
        report.markdown["quarantine_preview"] = wh.markdown_table(wh.frame(con, "SELECT line_no, error, raw FROM quarantine WHERE batch_id = ? ORDER BY line_no LIMIT 10",
            [batch.batch_key]))
    return report


CLEAN_SCHEMA = {
    "batch_id": pl.String, "row_id": pl.String, "instruction": pl.String, "input": pl.String,
    "output": pl.String, "text": pl.String, "text_hash": pl.String, "row_hash": pl.String, "lang": pl.String,
    "n_chars": pl.Int32, "modifications": pl.List(pl.String), "pii_counts": pl.String,
}
REJECT_SCHEMA = {
    "batch_id": pl.String, "row_id": pl.String, "reason": pl.String, "reasons": pl.List(pl.String),
    "instruction": pl.String, "input": pl.String, "output": pl.String,
}


REVIEW_FLAGGED = "review_flagged"


def flagged_by_review(clean_requests: list[dict[str, Any]] | None) -> dict[str, str]:
    """row id -> why, for every row a review sent back to cleaning (``review.clean_requests``)."""
    out: dict[str, str] = {}
    for request in clean_requests or []:
        if not isinstance(request, dict):
            continue
        why = f"review of cluster {request.get('cluster')} {request.get('name')!r}: " + "; ".join(request.get("reasons") or [])
        for row_id in request.get("problem_row_ids") or []:
            out.setdefault(str(row_id), why)
    return out


@releases_memory
def clean_batch(con: duckdb.DuckDBPyConnection, batch_id: str, clean_params: dict[str, Any], text_template: str,
                chunk_rows: int = 50_000, log: Log = _no_log, flagged: dict[str, str] | None = None) -> StageReport:
    """Normalize and filter one batch: kept rows to ``clean_rows``, removed rows to ``rejected_rows``.

    ``flagged`` (row id -> why) removes rows a review sent back to cleaning, with reason ``review_flagged``.
    """
    flagged = flagged or {}
    report = StageReport()
    config = CleanConfig.from_dict(clean_params)
    reasons: Counter[str] = Counter()
    modifications: Counter[str] = Counter()
    pii: Counter[str] = Counter()
    examples: dict[str, list[tuple]] = {}
    n_in = n_kept = n_rejected = 0
    reader = con.cursor()
    started = time.perf_counter()
    with report.timed("clean"), wh.transaction(con):
        wh.run(con, "DELETE FROM clean_rows WHERE batch_id = ?", [batch_id])
        wh.run(con, "DELETE FROM rejected_rows WHERE batch_id = ?", [batch_id])
        result = reader.execute(
            "SELECT row_id, instruction, input, output, has_output FROM raw_rows WHERE batch_id = ? ORDER BY row_id",
            [batch_id])
        while True:
            chunk = result.fetchmany(chunk_rows)
            if not chunk:
                break
            kept: list[tuple] = []
            rejected: list[tuple] = []
            for row_id, instruction, input_, output, has_output in chunk:
                n_in += 1
                out = clean_row(instruction, input_, output, config, has_output=bool(has_output))
                if row_id in flagged and out.kept:
                    out.kept, out.reasons = False, [REVIEW_FLAGGED]
                modifications.update(out.modifications)
                pii.update(out.pii_counts)
                if out.kept:
                    text = compose_text(out.instruction, out.input, out.output, text_template)
                    kept.append((batch_id, row_id, out.instruction, out.input, out.output, text, text_hash(text),
                                 row_hash(out.instruction, out.input, out.output), out.lang, len(text),
                                 list(out.modifications), json.dumps(out.pii_counts) if out.pii_counts else None))
                else:
                    reasons.update(out.reasons[:1])
                    rejected.append((batch_id, row_id, out.reasons[0], list(out.reasons), out.instruction, out.input, out.output))
                    bucket = examples.setdefault(out.reasons[0], [])
                    if len(bucket) < 3:
                        bucket.append((row_id, out.instruction, out.output))
            wh.insert_frame(con, "clean_rows", pl.DataFrame(kept, schema=CLEAN_SCHEMA, orient="row"))
            wh.insert_frame(con, "rejected_rows", pl.DataFrame(rejected, schema=REJECT_SCHEMA, orient="row"))
            n_kept += len(kept)
            n_rejected += len(rejected)
            log(f"{batch_id}: cleaned {n_in:,} rows ({n_kept:,} kept, {n_rejected:,} rejected)")
    reader.close()
    elapsed = time.perf_counter() - started
    report.counts.update(rows_in=n_in, kept=n_kept, rejected=n_rejected)
    report.counts.update({f"rejected.{k}": v for k, v in sorted(reasons.items())})
    report.counts.update({f"modified.{k}": v for k, v in sorted(modifications.items())})
    report.counts.update({f"pii.{k}": v for k, v in sorted(pii.items())})
    report.values["rows_per_second"] = round(n_in / elapsed, 1) if elapsed > 0 else 0.0
    report.values["rejection_rate"] = round(n_rejected / n_in, 4) if n_in else 0.0
    if reasons:
        lines = ["| reason | rows | meaning |", "|---|---|---|"]
        lines += [f"| `{r}` | {c} | {REASON_CODES.get(r, 'removed because a cluster review flagged it' if r == REVIEW_FLAGGED else '')} |"
                  for r, c in reasons.most_common()]
        report.markdown["rejections_by_reason"] = "\n".join(lines)
        ex = [(reason, *e) for reason, items in examples.items() for e in items]
        report.markdown["rejection_examples"] = wh.markdown_table(
            pl.DataFrame(ex, schema=["reason", "row_id", "instruction", "output"], orient="row"), max_rows=30)
    report.markdown["preview"] = wh.markdown_table(wh.frame(con, "SELECT row_id, lang, text FROM clean_rows WHERE batch_id = ? ORDER BY row_id LIMIT 5", [batch_id]))
    empty_kept = wh.scalar(con, "SELECT count(*) FROM clean_rows WHERE batch_id = ? AND (text IS NULL OR trim(text) = '')", [batch_id])
    report.checks["no_empty_text_kept"] = (empty_kept == 0, f"{empty_kept} kept rows have empty text")
    max_rate = config.max_rejection_rate
    rate = report.values["rejection_rate"]
    report.checks["rejection_rate_below_threshold"] = (rate <= max_rate, f"rejection rate {rate:.1%} (threshold {max_rate:.0%})")
    report.checks["rows_accounted_for"] = (n_in == n_kept + n_rejected, f"{n_in} in = {n_kept} kept + {n_rejected} rejected")
    return report


def vectors_to_frame(vectors: np.ndarray) -> pl.Series:
    return pl.Series("vector", vectors.astype(np.float32, copy=False)).cast(pl.List(pl.Float32))


#: where each kind of vector is kept: the embedded row text, and (optionally) the response alone.
VECTOR_TABLES = {"text": "embeddings", "response": "response_embeddings"}


def _embed_into(con: duckdb.DuckDBPyConnection, batch_id: str, table: str, wanted: pl.DataFrame, embedder: Any,
                label: str, chunk_rows: int, chunk_texts: int, report: StageReport, log: Log) -> int:
    """Store a vector in ``table`` for every row of ``wanted`` (row_id, text_hash, text) of one batch.

    Rows already stored for this batch and model with the same text are kept; stored rows whose row
    or text is gone are deleted. Rows whose text the model embedded before (any batch, either role)
    get that vector copied inside DuckDB (one INSERT ... SELECT: no vector passes through Python).
    The rest are sorted by text hash (repeats of a text sit together and are embedded once) and go
    in chunks of about ``chunk_rows`` rows, embedded ``chunk_texts`` at a time; each chunk commits.
    Model calls are large on purpose (16,384 texts by default, progress logged through the model's
    ``progress`` callback when it takes one): a model that shares a call among worker processes
    keeps them all busy to the call's end only once per call, and the short last call of a batch
    cut into 2,048-text calls ran in the main process at 2/3 of the workers' rate.
    Memory stays at one chunk whatever the batch size, and a run that fails half-way keeps the
    chunks it committed: the re-run embeds only the rest. Returns the number of rows written."""
    model_id = embedder.model_id
    stored = wh.frame(con, f"SELECT row_id, text_hash FROM {table} WHERE batch_id = ? AND model_id = ?", [batch_id, model_id])
    stale = stored.join(wanted.select("row_id", "text_hash"), on=["row_id", "text_hash"], how="anti")
    todo = wanted.join(stored, on=["row_id", "text_hash"], how="anti", maintain_order="left")
    n_unique = wanted["text_hash"].n_unique()
    # where an earlier vector of each wanted text is (table and rowid), found on the text hashes alone
    sources = " UNION ALL ".join(f"SELECT '{t}' AS source, rowid AS rid, text_hash FROM {t} WHERE model_id = $model"
                                 for t in VECTOR_TABLES.values())
    con.register("_todo", todo.select("row_id", "text_hash"))
    con.register("_stale", stale)
    try:
        with wh.transaction(con):
            if len(stale):
                wh.run(con, f"DELETE FROM {table} t USING _stale s WHERE t.row_id = s.row_id AND t.text_hash = s.text_hash "
                            "AND t.batch_id = $batch AND t.model_id = $model", {"batch": batch_id, "model": model_id})
            with report.timed(f"copy_cached_{label}"):
                # two steps: the lookup reads the text hashes only, and vectors are read for the hits
                # alone. One join that carried the vector column read every stored vector, a cost that
                # grows with every row embedded before: 0.15-0.16 s of a 10,000-row batch landing on
                # 96,000 embedded rows, 0.08-0.09 s this way (37 hits; the lookup alone 0.02 s)
                hits = wh.run(con, f"""
                    SELECT source, rid, text_hash FROM ({sources}) WHERE text_hash IN (SELECT text_hash FROM _todo)
                    QUALIFY row_number() OVER (PARTITION BY text_hash ORDER BY source, rid) = 1""", {"model": model_id})
                n_copied = 0
                for source in sorted({h[0] for h in hits}):
                    con.register("_hits", pl.DataFrame([h[1:] for h in hits if h[0] == source], schema=["rid", "text_hash"],
                                                       orient="row", schema_overrides={"rid": pl.Int64}))
                    try:
                        copied = wh.run(con, f"""
                            INSERT INTO {table} (batch_id, row_id, model_id, text_hash, vector)
                            SELECT $batch, t.row_id, $model, t.text_hash, v.vector
                            FROM _todo t JOIN _hits h USING (text_hash) JOIN {source} v ON v.rowid = h.rid""",
                                        {"batch": batch_id, "model": model_id})
                    finally:
                        wh.unregister(con, "_hits")  # in an aborted transaction the INSERT's error must surface
                    n_copied += int(copied[0][0]) if copied else 0
        copied_rows = wh.frame(con, f"SELECT row_id, text_hash FROM {table} WHERE batch_id = ? AND model_id = ?",
                               [batch_id, model_id])
    finally:
        con.unregister("_todo")
        con.unregister("_stale")
    rest = todo.join(copied_rows, on=["row_id", "text_hash"], how="anti").sort("text_hash", maintain_order=True)
    hashes = rest["text_hash"]
    takes_progress = "progress" in inspect.signature(embedder.embed).parameters
    embedded = 0
    started = time.perf_counter()
    embed_seconds = 0.0
    last_log, log_every = started, 10.0
    lo = t0 = 0

    def progress(done_in_call: int, _total: int, first: int = 0) -> None:
        """Log every ~10 s however slow the model (``first``: texts of this chunk in earlier calls)."""
        nonlocal last_log
        if time.perf_counter() - last_log >= log_every:
            last_log = time.perf_counter()
            now = embedded + first + done_in_call
            log(f"{label}: {now:,} texts embedded ({now / max(embed_seconds + last_log - t0, 1e-9):,.0f} texts/s), "
                f"{lo:,}/{len(rest):,} rows stored")

    while lo < len(rest):
        hi = min(lo + chunk_rows, len(rest))
        while hi < len(rest) and hashes[hi] == hashes[hi - 1]:  # a text's repeats stay in one chunk
            hi += 1
        chunk = rest.slice(lo, hi - lo)
        unique = chunk.unique("text_hash", keep="first", maintain_order=True)
        texts = unique["text"].to_list()
        t0 = time.perf_counter()
        parts = []
        with report.timed(f"embed_{label}"):
            for i in range(0, len(texts), chunk_texts):
                part = texts[i:i + chunk_texts]
                if takes_progress:
                    got = embedder.embed(part, progress=lambda d, t, i=i: progress(d, t, i))
                else:
                    got = embedder.embed(part)
                    progress(len(part), len(part), i)
                parts.append(np.asarray(got, dtype=np.float32))
            vectors = np.vstack(parts)
        embed_seconds += time.perf_counter() - t0
        embedded += len(texts)
        # stored in row id order, the order the cycle stages read rows in: a batch that fits one chunk then
        # lies in the table and in the cache files as one run, which readers copy as slices
        rows = chunk.select("row_id", "text_hash").join(unique.select("text_hash").with_row_index("_u"), on="text_hash",
                                                        how="left").sort("row_id")
        stored = vectors[rows["_u"].to_numpy()]
        frame = rows.select(pl.lit(batch_id).alias("batch_id"), "row_id", pl.lit(model_id).alias("model_id"),
                            "text_hash").with_columns(vectors_to_frame(stored))
        with report.timed("store"):
            with wh.transaction(con):
                wh.insert_frame(con, table, frame)
            # once committed, into the flat files the cycle stages read vectors from: no read back from DuckDB
            wh.cache_lists(con, table, "vector", rows.select("row_id", "text_hash"), ["row_id", "text_hash"],
                           stored, np.float32, "e.model_id = ?", [model_id])
        del stored, frame
        lo = hi
        rate = embedded / embed_seconds if embed_seconds > 0 else 0.0
        left = len(rest) - lo
        eta = f", ETA {left / (lo / max(time.perf_counter() - started, 1e-9)):,.0f}s" if left else ""
        log(f"{label}: {lo:,}/{len(rest):,} rows stored, {embedded:,} texts embedded ({rate:,.0f} texts/s{eta})")
    prefix = "" if label == "text" else f"{label}."
    report.counts.update({f"{prefix}unique_texts": n_unique, f"{prefix}cache_hits": n_unique - embedded,
                          f"{prefix}embedded": embedded, f"{prefix}rows_kept_from_before": len(wanted) - len(todo),
                          f"{prefix}rows_copied_from_cache": n_copied})
    report.values[f"{prefix}rows_per_second"] = round(embedded / embed_seconds, 1) if embed_seconds > 0 else 0.0
    return len(todo)


@releases_memory
def embed_batch(con: duckdb.DuckDBPyConnection, batch_id: str, embedder: Any, chunk_texts: int = 16_384,
                log: Log = _no_log, *, response_vectors: bool = True,
                chunk_rows: int = wh.ROW_GROUP_ROWS) -> StageReport:
    """Vectors for one batch: the composed row text of every row (``embeddings``) and, with
    ``response_vectors``, the response of every row that has one (``response_embeddings``; the
    conflict check compares responses by meaning). Texts this model already embedded, in any batch
    and in either role, come from the warehouse instead of the model. Written ``chunk_rows`` rows at
    a time (see ``_embed_into``; by default one DuckDB row group, ``warehouse.ROW_GROUP_ROWS``, about
    250 MB of 512-float vectors); switching ``response_vectors`` off deletes the batch's response
    vectors of this model."""
    report = StageReport()
    model_id = embedder.model_id
    rows = wh.frame(con, "SELECT row_id, text_hash, text, output FROM clean_rows WHERE batch_id = ? ORDER BY row_id", [batch_id])
    batch_log = lambda m: log(f"{batch_id}: {m}")  # noqa: E731
    _embed_into(con, batch_id, "embeddings", rows.select("row_id", "text_hash", "text"), embedder, "text",
                chunk_rows, chunk_texts, report, batch_log)
    answered = rows.filter(pl.col("output").str.strip_chars().str.len_chars() > 0) if response_vectors else rows.clear()
    answered = answered.select("row_id", pl.col("output").map_elements(text_hash, return_dtype=pl.String).alias("text_hash"),
                               pl.col("output").alias("text"))
    _embed_into(con, batch_id, "response_embeddings", answered, embedder, "response", chunk_rows, chunk_texts, report,
                batch_log)
    if not response_vectors:
        for key in ("unique_texts", "cache_hits", "embedded", "rows_kept_from_before", "rows_copied_from_cache"):
            report.counts.pop(f"response.{key}", None)
        report.values.pop("response.rows_per_second", None)
    report.counts["rows"] = len(rows)
    report.counts["response_vectors"] = len(answered)
    report.values.update(model_id=model_id, dim=int(getattr(embedder, "dim", 0) or 0), response_vectors=bool(response_vectors))
    if getattr(embedder, "workers", None):  # the USE encoder's worker processes (1: in the run's own process)
        report.values["encoder_workers"] = int(embedder.workers)
    usage = getattr(embedder, "usage", None)
    if usage:
        report.values.update({f"usage.{k}": v for k, v in usage.items()})
    missing_vectors = int(wh.scalar(con, "SELECT count(*) FROM clean_rows c WHERE c.batch_id = ? AND NOT EXISTS ("
                                         "SELECT 1 FROM embeddings e WHERE e.row_id = c.row_id AND e.text_hash = c.text_hash "
                                         "AND e.model_id = ?)", [batch_id, model_id]))
    report.checks["every_row_has_a_vector"] = (missing_vectors == 0, f"{missing_vectors} rows without a vector")
    return report
