"""Per-batch stages: ingest (raw_rows + quarantine), clean (clean_rows + rejected_rows), embed."""

from __future__ import annotations

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
from purify_assets.stages import Log, StageReport, _no_log

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


def _vectors_for(con: duckdb.DuckDBPyConnection, wanted: pl.DataFrame, embedder: Any, label: str, chunk_texts: int,
                 report: StageReport, log: Log) -> pl.DataFrame:
    """``wanted`` (text_hash, text) -> (text_hash, vector) for every distinct hash. A text this model
    has embedded before, as a row text or as a response in any batch, comes from the warehouse."""
    model_id = embedder.model_id
    unique = wanted.unique("text_hash", keep="first", maintain_order=True)
    con.register("_wanted", unique.select("text_hash"))
    try:
        cached = wh.frame(con, " UNION ALL ".join(
            f"SELECT e.text_hash, any_value(e.vector) AS vector FROM {table} e JOIN _wanted w USING (text_hash) "
            "WHERE e.model_id = ? GROUP BY e.text_hash" for table in VECTOR_TABLES.values()), [model_id] * len(VECTOR_TABLES))
    finally:
        con.unregister("_wanted")
    cached = cached.unique("text_hash", keep="first").with_columns(pl.col("vector").cast(pl.List(pl.Float32)))
    missing = unique.join(cached.select("text_hash"), on="text_hash", how="anti")
    texts = missing["text"].to_list()
    started = time.perf_counter()
    parts: list[np.ndarray] = []
    with report.timed(f"embed_{label}"):
        for i in range(0, len(texts), chunk_texts):
            parts.append(embedder.embed(texts[i:i + chunk_texts]))
            done = min(i + chunk_texts, len(texts))
            rate = done / max(time.perf_counter() - started, 1e-9)
            log(f"{label}: embedded {done:,}/{len(texts):,} texts ({rate:,.0f}/s, ETA {(len(texts) - done) / rate:,.0f}s)")
    elapsed = time.perf_counter() - started
    new = pl.DataFrame({"text_hash": missing["text_hash"]})
    if texts:
        new = new.with_columns(vectors_to_frame(np.vstack(parts)))
    else:
        new = new.with_columns(pl.Series("vector", [], dtype=pl.List(pl.Float32)))
    prefix = "" if label == "text" else f"{label}."
    report.counts.update({f"{prefix}unique_texts": len(unique), f"{prefix}cache_hits": len(cached),
                          f"{prefix}embedded": len(texts)})
    report.values[f"{prefix}rows_per_second"] = round(len(texts) / elapsed, 1) if texts and elapsed > 0 else 0.0
    return pl.concat([cached, new])


def embed_batch(con: duckdb.DuckDBPyConnection, batch_id: str, embedder: Any, chunk_texts: int = 2048,
                log: Log = _no_log, *, response_vectors: bool = True) -> StageReport:
    """Vectors for one batch: the composed row text of every row (``embeddings``) and, with
    ``response_vectors``, the response of every row that has one (``response_embeddings``; the
    conflict check compares responses by meaning). Texts this model already embedded, in any batch
    and in either role, come from the warehouse instead of the model."""
    report = StageReport()
    model_id = embedder.model_id
    rows = wh.frame(con, "SELECT row_id, text_hash, text, output FROM clean_rows WHERE batch_id = ? ORDER BY row_id", [batch_id])
    lookup = _vectors_for(con, rows.select("text_hash", "text"), embedder, "text", chunk_texts, report,
                          lambda m: log(f"{batch_id}: {m}"))
    frame = rows.select("row_id", "text_hash").join(lookup, on="text_hash", how="left").select(
        pl.lit(batch_id).alias("batch_id"), "row_id", pl.lit(model_id).alias("model_id"), "text_hash", "vector")
    responses = None
    if response_vectors:
        answered = rows.filter(pl.col("output").str.strip_chars().str.len_chars() > 0)
        answered = answered.with_columns(pl.col("output").map_elements(text_hash, return_dtype=pl.String).alias("response_hash"))
        found = _vectors_for(con, answered.select(pl.col("response_hash").alias("text_hash"), pl.col("output").alias("text")),
                             embedder, "response", chunk_texts, report, lambda m: log(f"{batch_id}: {m}"))
        responses = answered.select("row_id", pl.col("response_hash").alias("text_hash")).join(
            found, on="text_hash", how="left").select(
            pl.lit(batch_id).alias("batch_id"), "row_id", pl.lit(model_id).alias("model_id"), "text_hash", "vector")
    with report.timed("store"), wh.transaction(con):
        for table, part in (("embeddings", frame), ("response_embeddings", responses)):
            wh.run(con, f"DELETE FROM {table} WHERE batch_id = ? AND model_id = ?", [batch_id, model_id])
            if part is not None:
                wh.insert_frame(con, table, part)
    report.counts["rows"] = len(rows)
    report.counts["response_vectors"] = 0 if responses is None else len(responses)
    report.values.update(model_id=model_id, dim=int(getattr(embedder, "dim", 0) or 0), response_vectors=bool(response_vectors))
    usage = getattr(embedder, "usage", None)
    if usage:
        report.values.update({f"usage.{k}": v for k, v in usage.items()})
    missing_vectors = frame["vector"].null_count()
    report.checks["every_row_has_a_vector"] = (missing_vectors == 0, f"{missing_vectors} rows without a vector")
    return report
