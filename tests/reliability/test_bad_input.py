"""Bad input, end to end: archive_file -> ingest_batch -> clean_batch on a temporary warehouse.

Every case asserts the same invariants (``check_accounting``): what is loadable is loaded, every other
line is in ``quarantine`` with the file, a line number and a reason, raw rows = kept + rejected, row
ids are unique, and (for line formats) the loaded and quarantined line numbers together cover every
non-blank line of the file. Files that cannot be loaded at all raise ``IngestError`` naming the file
and what was tried, and leave nothing half-written.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import polars as pl
import pytest

from purify_assets.core import warehouse as wh
from purify_assets.core.landing import BATCH_KEY_RE, LandingError, archive_file, find_batch
from purify_assets.stages.batch import IngestError, clean_batch, ingest_batch


def good(i: int) -> dict[str, str]:
    return {"instruction": f"Explain topic number {i} in two sentences please",
            "output": f"Topic {i} is about things that matter a lot. It has several parts."}


def jsonl(rows: list[Any], end: bytes = b"\n") -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + end for r in rows)


GOOD5 = [good(i) for i in range(5)]
KO_CSV = "instruction,output\n" + "\n".join(
    f"다음 문장을 요약해 주세요 번호 {i} 입니다,이 문장은 {i}번째 요약 결과입니다 감사합니다" for i in range(5)) + "\n"
ZH_CSV = "instruction,output\n" + "\n".join(
    f"这是第{i}个中文问题请详细解释一下,这是第{i}个回答内容非常详细而且完整" for i in range(5)) + "\n"


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


@dataclass
class Case:
    id: str
    filename: str
    data: bytes
    rows: int  # raw rows expected
    quarantined: int  # quarantine entries expected
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, substring of the reason)
    encoding: str | None = None  # for the line-coverage check (None: no line check)
    csv_header: bool = False  # line 1 is a header (not a row)
    kept_at_least: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    extra: Callable[[Any, Any], None] | None = None  # extra assertions (con, batch)
    mapping: dict | None = None  # written as <file>.mapping.json


def _record_json(con, batch, line: int) -> dict:
    return json.loads(wh.scalar(con, "SELECT record_json FROM raw_rows WHERE batch_id = ? AND line_no = ?",
                                [batch.batch_key, line]))


def _one_line_array_ids(con, batch):
    ids = [r[0] for r in wh.run(con, "SELECT row_id FROM raw_rows WHERE batch_id = ? ORDER BY row_id", [batch.batch_key])]
    assert len(ids) == 5 and len(set(ids)) == 5
    lines = {r[0] for r in wh.run(con, "SELECT line_no FROM raw_rows WHERE batch_id = ?", [batch.batch_key])}
    assert lines == {1}


def _extra_fields_kept(con, batch):
    rec = _record_json(con, batch, 2)
    assert rec["source"] == "web" and rec["meta"] == {"lang": "en", "score": 0.5}


def _numbers_as_text(con, batch):
    assert wh.run(con, "SELECT instruction, output FROM raw_rows WHERE batch_id = ? ORDER BY line_no",
                  [batch.batch_key])[0] == ("12345", "67890")


def _nested_as_json_text(con, batch):
    instruction = wh.scalar(con, "SELECT instruction FROM raw_rows WHERE batch_id = ? AND line_no = 1", [batch.batch_key])
    assert json.loads(instruction) == {"question": "what is two plus two", "tags": ["math", "easy"]}


def _duplicate_columns_kept(con, batch):
    rec = _record_json(con, batch, 2)
    assert rec["output"] == "first answer column text" and rec["output_2"] == "second answer column text"


def _encoding_is(expected):
    def check(con, batch):
        assert wh.scalar(con, "SELECT encoding FROM batches WHERE batch_id = ?", [batch.batch_key]) == expected
        text = wh.scalar(con, "SELECT instruction FROM raw_rows WHERE batch_id = ? ORDER BY line_no LIMIT 1", [batch.batch_key])
        assert "\ufffd" not in text and ("번호" in text or "中文" in text)
    return check


def _mapping_applied(con, batch):
    assert wh.run(con, "SELECT instruction, output FROM raw_rows WHERE batch_id = ? ORDER BY line_no LIMIT 1",
                  [batch.batch_key])[0] == ("What is the capital of France in Europe?", "Paris is the capital.")


def _gzip_big() -> bytes:
    rows = [{"instruction": f"Explain topic number {i} in two sentences please", "output": f"Answer {i} " + "x" * (i % 50)}
            for i in range(3000)]
    return gzip.compress(jsonl(rows))[:-400]


def _korean_with_one_bad_byte() -> bytes:
    lines = [json.dumps({"instruction": f"다음 문장을 요약해 주세요 번호 {i}", "output": f"요약 결과 {i} 입니다 감사합니다"},
                        ensure_ascii=False).encode() for i in range(30)]
    lines[7] = lines[7].replace("요약".encode(), b"caf\xe9", 1)  # one Latin-1 byte in a UTF-8 file
    return b"\n".join(lines) + b"\n"


def _padded_row(con, batch):
    assert wh.scalar(con, "SELECT output FROM raw_rows WHERE batch_id = ? AND line_no = 3", [batch.batch_key]) is None


ARRAY5 = json.dumps(GOOD5, indent=1).encode()
BIG_LINE = "word " * (2 * 1024 * 1024)  # a 10 MB single line

CASES = [
    Case("truncated_jsonl", "trunc.jsonl", jsonl(GOOD5)[:-30], 4, 1, [(5, "invalid JSON")], "utf-8", kept_at_least=4),
    Case("json_array_cut_in_half", "half.json", ARRAY5[: len(ARRAY5) // 2], 2, 2,
         [(10, "runs to the end of the file"), (12, "JSON array not closed")], kept_at_least=2),
    Case("json_array_trailing_comma", "comma.json", json.dumps(GOOD5).encode()[:-1] + b",]", 5, 1,
         [(1, "trailing comma")], kept_at_least=5),
    Case("one_line_json_array_unique_row_ids", "mini.json", json.dumps(GOOD5).encode(), 5, 0, kept_at_least=5,
         extra=_one_line_array_ids),
    Case("binary_garbage", "garbage.jsonl", bytes(range(256)) * 64, 0, 1, [(1, "binary")]),
    Case("nul_bytes_in_a_line", "nul.jsonl", jsonl(GOOD5[:2]) + b'{"instruction": "a\x00b", "output": "x"}\n' + jsonl(GOOD5[2:]),
         5, 1, [(3, "NUL byte")], "utf-8", kept_at_least=5),
    Case("ten_mb_single_line", "big.jsonl", jsonl(GOOD5[:2]) + jsonl([{"instruction": "long " + BIG_LINE, "output": "ok answer"}])
         + jsonl(GOOD5[2:]), 6, 0, [], "utf-8", kept_at_least=5, rejected_reasons={"too_long": 1}),
    Case("cp949_without_declared_encoding", "ko.csv", KO_CSV.encode("cp949"), 5, 0, [], "cp949", csv_header=True,
         kept_at_least=5, extra=_encoding_is("cp949")),
    Case("gb18030_without_declared_encoding", "zh.csv", ZH_CSV.encode("gb18030"), 5, 0, [], "gb18030", csv_header=True,
         kept_at_least=5, extra=_encoding_is("gb18030")),
    Case("utf16_le_with_bom", "u16.jsonl", codecs.BOM_UTF16_LE + jsonl(GOOD5).decode().encode("utf-16-le"), 5, 0, [],
         kept_at_least=5),
    Case("utf16_be_with_bom_csv", "u16be.csv", codecs.BOM_UTF16_BE + KO_CSV.encode("utf-16-be"), 5, 0, [], kept_at_least=5),
    Case("utf8_bom_csv", "bom.csv", codecs.BOM_UTF8 + KO_CSV.encode(), 5, 0, [], "utf-8-sig", csv_header=True, kept_at_least=5),
    Case("mixed_line_endings", "mixed.jsonl",
         b"".join(json.dumps(r).encode() + e for r, e in zip(GOOD5, [b"\r\n", b"\n", b"\r", b"\r\n", b"\n"])),
         5, 0, [], "utf-8", kept_at_least=5),
    Case("classic_mac_cr_only", "cr.jsonl", jsonl(GOOD5, b"\r"), 5, 0, [], "utf-8", kept_at_least=5),
    Case("empty_file", "empty.jsonl", b"", 0, 1, [(1, "empty")]),
    Case("whitespace_only", "blank.jsonl", b"\n\n   \n\t\r\n", 0, 1, [(1, "only whitespace")]),
    Case("header_only_csv", "header.csv", b"instruction,output\n", 0, 1, [(1, "header only")]),
    Case("missing_output_field", "missing.jsonl", jsonl([good(0), {"instruction": "Explain topic number one please now"}, good(2)]),
         3, 0, [], "utf-8", kept_at_least=2, rejected_reasons={"empty_output": 1}),
    Case("extra_fields", "extra.jsonl", jsonl([good(0), {**good(1), "source": "web", "meta": {"lang": "en", "score": 0.5}}]),
         2, 0, [], "utf-8", kept_at_least=2, extra=_extra_fields_kept),
    Case("numbers_where_text_expected", "numbers.jsonl", jsonl([{"instruction": 12345, "output": 67890},
                                                                 {"instruction": True, "output": [1, 2]}]),
         2, 0, [], "utf-8", extra=_numbers_as_text),
    Case("nested_object_in_text_field", "nested.jsonl",
         jsonl([{"instruction": {"question": "what is two plus two", "tags": ["math", "easy"]}, "output": "four is the answer"}]),
         1, 0, [], "utf-8", extra=_nested_as_json_text),
    Case("duplicate_csv_column_names", "dupcols.csv",
         b"instruction,output,output\nExplain topic number one please now,first answer column text,second answer column text\n",
         1, 0, [], "utf-8", csv_header=True, kept_at_least=1, extra=_duplicate_columns_kept),
    Case("non_object_records", "scalars.jsonl", jsonl([good(0), 42, [1, 2], None, "a plain string record here", good(1)]),
         3, 3, [(2, "is a number"), (3, "is an array"), (4, "null")], "utf-8"),
    Case("unpaired_surrogate_escape", "surrogate.jsonl",
         jsonl(GOOD5[:2]) + b'{"instruction": "bad \\ud800 text here please", "output": "answer"}\n' + jsonl(GOOD5[2:]),
         5, 1, [(3, "unpaired UTF-16 surrogate")], "utf-8", kept_at_least=5),
    Case("surrogate_in_json_array", "surrogate.json",
         b"[" + json.dumps(good(0)).encode() + b',\n{"instruction": "x", "\\udc00": "y"}]', 1, 1,
         [(2, "surrogate")]),
    Case("json_nested_too_deep", "deep.jsonl",
         jsonl(GOOD5[:2]) + b'{"instruction": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n" + jsonl(GOOD5[2:]),
         5, 1, [(3, "nested too deeply")], "utf-8"),
    Case("json_array_nested_too_deep", "deep.json",
         b"[" + json.dumps(good(0)).encode() + b",\n" + b"[" * 100_000 + b"]" * 100_000 + b",\n" + json.dumps(good(1)).encode() + b"]",
         2, 1, [(2, "nested too deeply")]),
    Case("integer_with_5000_digits", "bigint.jsonl", jsonl(GOOD5[:1]) + b'{"instruction": ' + b"9" * 5000 + b"}\n",
         1, 1, [(2, "4300 digits")], "utf-8"),
    Case("nan_and_infinity", "nan.jsonl", jsonl([good(0)]) + b'{"instruction": NaN, "output": Infinity}\n', 2, 0, [], "utf-8",
         rejected_reasons={"empty_instruction": 1}),
    Case("invalid_utf8_byte_in_korean_file", "ko_bad.jsonl", _korean_with_one_bad_byte(), 29, 1, [(8, "not valid utf-8")], "utf-8-lenient"),
    Case("gzip_truncated_early", "small.jsonl.gz", gzip.compress(jsonl(GOOD5 * 40))[:-200], 0, 1,
         [(1, "gzip stream truncated or corrupt")]),
    Case("csv_row_with_too_many_fields", "wide.csv",
         b"instruction,output\nExplain topic number one please now,an answer here\nq two,a,b,c\n", 1, 1,
         [(3, "4 fields, the header has 2")], "utf-8", csv_header=True),
    Case("csv_row_with_too_few_fields", "narrow.csv",
         b"instruction,output\nExplain topic number one please now,an answer here\nExplain topic number two please now\n",
         2, 0, [], "utf-8", csv_header=True, rejected_reasons={"empty_output": 1}, extra=_padded_row),
    Case("tsv_with_stray_quote", "stray.tsv", b'instruction\toutput\n"quoted start only\tanswer one here\nsecond row q\t"answer"\n',
         2, 0, [], "utf-8", csv_header=True),
    Case("first_record_unmappable_rest_good", "oddfirst.jsonl", jsonl([{"foo": "bar"}] + GOOD5), 6, 0, [], "utf-8",
         kept_at_least=5, rejected_reasons={"empty_instruction": 1}),
    Case("parquet_with_struct_and_numbers", "typed.parquet",
         parquet_bytes(pl.DataFrame({"instruction": ["Explain topic number one please now", "Explain topic two please now"],
                                     "output": ["an answer that is long enough", "another answer long enough"],
                                     "meta": [{"x": 1}, {"x": 2}], "n": [1, 2]})), 2, 0, [], kept_at_least=2),
    Case("corrupt_parquet", "corrupt.parquet", b"PAR1" + b"\x00garbage" * 100, 0, 1, [(1, "unreadable Parquet")]),
    Case("mapping_override_beside_file", "qa.csv",
         b"Q,A\nWhat is the capital of France in Europe?,Paris is the capital.\n", 1, 0, [], "utf-8", csv_header=True,
         mapping={"instruction": "Q", "output": "A"}, extra=_mapping_applied),
]


def land(tmp_path: Path, filename: str, data: bytes, mapping: dict | None = None):
    landing = tmp_path / "landing"
    landing.mkdir(exist_ok=True)
    path = landing / filename
    path.write_bytes(data)
    if mapping is not None:
        path.with_name(path.name + ".mapping.json").write_text(json.dumps(mapping), "utf-8")
    batch, created = archive_file(path, tmp_path / "archive")
    assert created
    assert Path(batch.archived_path).read_bytes() == data  # archived byte for byte
    return batch


def run_batch(tmp_path: Path, batch):
    with wh.connect(tmp_path / "warehouse.duckdb", wait_seconds=30) as con:
        ingest = ingest_batch(con, batch)
        clean = clean_batch(con, batch.batch_key, {}, "instruction")
    return ingest, clean


def check_accounting(con, batch, ingest=None, clean=None) -> dict[str, int]:
    """The invariants every batch must satisfy, whatever its input."""
    key = batch.batch_key
    raw = wh.scalar(con, "SELECT count(*) FROM raw_rows WHERE batch_id = ?", [key])
    quarantined = wh.scalar(con, "SELECT count(*) FROM quarantine WHERE batch_id = ?", [key])
    kept = wh.scalar(con, "SELECT count(*) FROM clean_rows WHERE batch_id = ?", [key])
    rejected = wh.scalar(con, "SELECT count(*) FROM rejected_rows WHERE batch_id = ?", [key])
    assert raw == kept + rejected, f"raw {raw} != kept {kept} + rejected {rejected}"
    # each raw row id exactly once, and exactly once across kept + rejected
    assert wh.scalar(con, "SELECT count(DISTINCT row_id) FROM raw_rows WHERE batch_id = ?", [key]) == raw
    assert wh.scalar(con, """SELECT count(*) FROM (SELECT row_id FROM clean_rows WHERE batch_id = $b UNION ALL
                             SELECT row_id FROM rejected_rows WHERE batch_id = $b) x
                             JOIN raw_rows r USING (row_id)""", {"b": key}) == raw
    assert wh.scalar(con, "SELECT count(*) FROM rejected_rows WHERE batch_id = ? AND coalesce(reason, '') = ''", [key]) == 0
    # every quarantine entry names the file, its line and a reason
    for source, line, error in wh.run(con, "SELECT source_file, line_no, error FROM quarantine WHERE batch_id = ?", [key]):
        assert source == batch.original_name
        assert line is not None and line >= 1
        assert error and error.startswith(f"{Path(batch.archived_path).name}: line {line}: "), error
        assert "Traceback" not in error
    # the batch record agrees with the tables
    n_rows, n_bad = wh.run(con, "SELECT rows_parsed, rows_quarantined FROM batches WHERE batch_id = ?", [key])[0]
    assert (n_rows, n_bad) == (raw, quarantined)
    if ingest is not None:
        assert (ingest.counts["rows"], ingest.counts["quarantined"]) == (raw, quarantined)
    if clean is not None:
        assert clean.checks["rows_accounted_for"][0]
        assert (clean.counts["kept"], clean.counts["rejected"]) == (kept, rejected)
    return {"raw": raw, "quarantined": quarantined, "kept": kept, "rejected": rejected}


def _nonblank_lines(data: bytes, encoding: str) -> set[int]:
    if encoding == "utf-8-lenient":
        text = data.decode("utf-8", "replace")
    else:
        text = data.decode(encoding)
    lines = re.split(r"\r\n|\r|\n", text)
    return {i + 1 for i, line in enumerate(lines) if line.strip()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_loaded_or_quarantined(tmp_path, case: Case):
    batch = land(tmp_path, case.filename, case.data, case.mapping)
    ingest, clean = run_batch(tmp_path, batch)
    with wh.connect(tmp_path / "warehouse.duckdb", read_only=True) as con:
        counts = check_accounting(con, batch, ingest, clean)
        assert counts["raw"] == case.rows, counts
        assert counts["quarantined"] == case.quarantined, wh.run(con, "SELECT line_no, error FROM quarantine")
        errors = wh.run(con, "SELECT line_no, error FROM quarantine WHERE batch_id = ? ORDER BY line_no", [batch.batch_key])
        for line, needle in case.errors:
            assert any(ln == line and needle in err for ln, err in errors), (line, needle, errors)
        assert counts["kept"] >= case.kept_at_least
        reasons = dict(wh.run(con, "SELECT reason, count(*) FROM rejected_rows WHERE batch_id = ? GROUP BY reason",
                              [batch.batch_key]))
        for reason, n in case.rejected_reasons.items():
            assert reasons.get(reason, 0) == n, reasons
        if case.encoding:
            # parsed + quarantined lines cover every non-blank line of the file, and never overlap
            parsed = {r[0] for r in wh.run(con, "SELECT line_no FROM raw_rows WHERE batch_id = ?", [batch.batch_key])}
            bad = {r[0] for r in errors}
            expected = _nonblank_lines(case.data, case.encoding)
            if case.csv_header:
                expected.discard(1)
            assert parsed | bad == expected
            assert not parsed & bad
        if case.extra:
            case.extra(con, batch)


def test_truncated_gzip_keeps_what_decompresses(tmp_path):
    """A gzip cut short: every line decodable before the damage loads (up to one 8 KiB read), the
    cut line and the point where reading stopped are quarantined."""
    import zlib

    data = _gzip_big()
    decoded = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    complete = decoded.count(b"\n")
    shortest = min(len(line) + 1 for line in decoded.split(b"\n")[:-1])
    batch = land(tmp_path, "big.jsonl.gz", data)
    ingest, clean = run_batch(tmp_path, batch)
    with wh.connect(tmp_path / "warehouse.duckdb", read_only=True) as con:
        counts = check_accounting(con, batch, ingest, clean)
        lines = [r[0] for r in wh.run(con, "SELECT line_no FROM raw_rows WHERE batch_id = ? ORDER BY line_no", [batch.batch_key])]
        errors = wh.run(con, "SELECT line_no, error FROM quarantine WHERE batch_id = ? ORDER BY line_no", [batch.batch_key])
    assert lines == list(range(1, counts["raw"] + 1))  # a prefix of the file, nothing skipped
    assert complete - 8192 // shortest - 1 <= counts["raw"] <= complete
    assert "gzip stream truncated or corrupt" in errors[-1][1] and errors[-1][0] == counts["raw"] + counts["quarantined"]


def test_rerunning_a_batch_replaces_it(tmp_path):
    """Ingest and clean twice: the second run replaces the batch, nothing doubles."""
    batch = land(tmp_path, "twice.jsonl", jsonl(GOOD5) + b"{broken\n")
    first = run_batch(tmp_path, batch)
    second = run_batch(tmp_path, batch)
    assert first[0].counts == second[0].counts
    with wh.connect(tmp_path / "warehouse.duckdb", read_only=True) as con:
        assert check_accounting(con, batch) == {"raw": 5, "quarantined": 1, "kept": 5, "rejected": 0}


# ------------------------------------------------------------------------------- unloadable files
UNLOADABLE = [
    ("no_mappable_column", "columns.jsonl", jsonl([{"foo": 1, "bar": "x"}, {"foo": 2, "bar": "y"}])),
    ("numbers_only_csv", "numbers.csv", b"1,2\n3,4\n5,6\n"),
    ("parquet_without_text_columns", "ints.parquet", parquet_bytes(pl.DataFrame({"a": [1, 2], "b": [3.0, 4.0]}))),
]


@pytest.mark.parametrize("case_id,filename,data", UNLOADABLE, ids=[u[0] for u in UNLOADABLE])
def test_unloadable_file_gives_a_clear_error_and_writes_nothing(tmp_path, case_id, filename, data):
    batch = land(tmp_path, filename, data)
    ok = land(tmp_path, "ok.jsonl", jsonl(GOOD5))
    run_batch(tmp_path, ok)
    with wh.connect(tmp_path / "warehouse.duckdb", wait_seconds=30) as con:
        with pytest.raises(IngestError) as err:
            ingest_batch(con, batch)
        message = str(err.value)
        assert filename in message and batch.batch_key in message
        assert "layouts tried" in message and "instruction" in message  # what was tried, and how to fix it
        assert "line 1" in message
        for table in ("raw_rows", "quarantine", "batches"):
            assert wh.scalar(con, f"SELECT count(*) FROM {table} WHERE batch_id = ?", [batch.batch_key]) == 0
        # the other batch is untouched by the rolled-back transaction
        assert check_accounting(con, ok)["raw"] == 5


def test_invalid_mapping_file_is_refused_naming_it(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    path = landing / "data.csv"
    path.write_bytes(b"Q,A\nx,y\n")
    path.with_name("data.csv.mapping.json").write_text("{not json", "utf-8")
    with pytest.raises(LandingError, match=r"data\.csv\.mapping\.json: not valid JSON"):
        archive_file(path, tmp_path / "archive")
    path.with_name("data.csv.mapping.json").write_text('["Q", "A"]', "utf-8")
    with pytest.raises(LandingError, match=r"data\.csv\.mapping\.json: expected an object"):
        archive_file(path, tmp_path / "archive")


# ------------------------------------------------------------------------------ hostile file names
HOSTILE_NAMES = [
    "it's \"quoted\".jsonl",
    "  spaces in   name .jsonl",
    "데이터 파일 한국어.jsonl",
    "données_中文_ñ.jsonl",
    "..dots..jsonl",
    "x'); DROP TABLE raw_rows; --.jsonl",
    "semi;colon$HOME`whoami`.jsonl",
    "new\nline\ttab.jsonl",
    "a" * 249 + ".jsonl",  # 255 bytes: the longest name the file system takes
    "%2e%2e%2f..%2fetc%2fpasswd.jsonl",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=[f"name{i}" for i in range(len(HOSTILE_NAMES))])
def test_hostile_file_names_load_verbatim(tmp_path, name):
    batch = land(tmp_path, name, jsonl(GOOD5) + b"{bad line\n")
    assert BATCH_KEY_RE.match(batch.batch_key), batch.batch_key
    assert find_batch(tmp_path / "archive", batch.batch_key) == batch
    archived = Path(batch.archived_path).resolve()
    assert (tmp_path / "archive").resolve() in archived.parents
    run_batch(tmp_path, batch)
    with wh.connect(tmp_path / "warehouse.duckdb", read_only=True) as con:
        assert check_accounting(con, batch) == {"raw": 5, "quarantined": 1, "kept": 5, "rejected": 0}
        assert wh.scalar(con, "SELECT source_file FROM batches WHERE batch_id = ?", [batch.batch_key]) == name
        assert {r[0] for r in wh.run(con, "SELECT DISTINCT source_file FROM raw_rows")} == {name}
        assert set(wh.table_counts(con)) == set(wh.TABLE_DDL)  # every table still there


HOSTILE_KEYS = ["b'); DROP TABLE raw_rows; --", 'b" OR 1=1 --', "b\\'; DELETE FROM batches; --", "배치 키 ; --", "$1 ?"]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=[f"key{i}" for i in range(len(HOSTILE_KEYS))])
def test_batch_ids_that_would_break_sql_are_data(tmp_path, key):
    normal = land(tmp_path, "normal.jsonl", jsonl(GOOD5))
    run_batch(tmp_path, normal)
    hostile = dataclasses.replace(land(tmp_path, "hostile.jsonl", jsonl(GOOD5[:3]) + b"{x\n"), batch_key=key)
    run_batch(tmp_path, hostile)
    with wh.connect(tmp_path / "warehouse.duckdb", read_only=True) as con:
        assert check_accounting(con, hostile) == {"raw": 3, "quarantined": 1, "kept": 3, "rejected": 0}
        assert check_accounting(con, normal) == {"raw": 5, "quarantined": 0, "kept": 5, "rejected": 0}
        assert wh.scalar(con, "SELECT count(*) FROM raw_rows") == 8
    # and the partition-key lookup refuses a key that is not a purify batch key
    with pytest.raises(LandingError, match="not a purify batch key"):
        find_batch(tmp_path / "archive", key)
