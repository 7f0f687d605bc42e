"""BatchReader on generated fixtures (every format, encoding and bad-input case) and on ../shared/data."""

from __future__ import annotations

import codecs
import gzip
import itertools
import json
from pathlib import Path

import pytest

from purify_assets.core.ingest import BatchReader, ParsedRecord, QuarantinedLine

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def read(path, **kw):
    r = BatchReader(path, **kw)
    items = list(r)
    recs = [i for i in items if isinstance(i, ParsedRecord)]
    qs = [i for i in items if isinstance(i, QuarantinedLine)]
    return r.info, recs, qs


ROWS = [{"instruction": "첫 번째 질문", "input": "", "output": "답"},
        {"instruction": "second", "input": "ctx", "output": "out"},
        {"instruction": "第三个", "input": "", "output": "回答"}]


def jsonl_bytes(rows=ROWS) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


# ---- formats --------------------------------------------------------------------------------

def test_jsonl_with_bad_line_and_blank_lines(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "one"}\n\n{"text": broken\n{"text": "three"}\n', encoding="utf-8")
    info, recs, qs = read(p)
    assert info.format == "jsonl"
    assert [r.record["text"] for r in recs] == ["one", "three"]
    assert [r.line_no for r in recs] == [1, 4]
    assert len(qs) == 1 and qs[0].line_no == 3 and "invalid JSON" in qs[0].error and "a.jsonl" in qs[0].error
    assert qs[0].raw == '{"text": broken'
    assert info.records == 2 and info.quarantined == 1 and info.blank_lines == 1


def test_json_array_pretty_printed_line_numbers(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps(ROWS, ensure_ascii=False, indent=2), encoding="utf-8")
    info, recs, qs = read(p)
    assert info.format == "json" and not qs
    assert [r.record for r in recs] == ROWS
    assert recs[0].line_no == 2 and recs[1].line_no == 7 and recs[2].line_no == 12


def test_json_array_malformed_element_rest_loads(tmp_path):
    text = ('[\n  {"a": 1},\n  {"a": 2, "b": oops},\n  {"a": 3},\n  {"a": "unterminated\n  },\n  {"a": 5}\n]\n')
    p = tmp_path / "bad.json"
    p.write_text(text, encoding="utf-8")
    info, recs, qs = read(p)
    assert [r.record["a"] for r in recs] == [1, 3, 5]
    assert [q.line_no for q in qs] == [3, 5]
    assert "oops" in qs[0].raw


def test_json_array_trailing_comma_is_reported_not_lost(tmp_path):
    p = tmp_path / "t.json"
    p.write_text('[\n {"a": 1},\n {"a": 2},\n]', encoding="utf-8")
    info, recs, qs = read(p)
    assert [r.record["a"] for r in recs] == [1, 2]
    assert len(qs) == 1 and qs[0].line_no == 3 and "trailing comma" in qs[0].error


def test_json_array_missing_comma_and_unclosed(tmp_path):
    p = tmp_path / "m.json"
    p.write_text('[{"a": 1} {"a": 2}', encoding="utf-8")
    info, recs, qs = read(p)
    assert [r.record["a"] for r in recs] == [1, 2]
    errs = " ".join(q.error for q in qs)
    assert "missing ','" in errs and "not closed" in errs


def test_json_array_streams_many_elements_across_windows(tmp_path):
    p = tmp_path / "big.json"
    n = 30000
    with p.open("w", encoding="utf-8") as f:
        f.write("[\n")
        for i in range(n):
            f.write(json.dumps({"i": i, "pad": "x" * 60}) + (",\n" if i < n - 1 else "\n"))
        f.write("]\n")
    info, recs, qs = read(p)
    assert not qs and len(recs) == n
    assert recs[-1].record["i"] == n - 1 and recs[-1].line_no == n + 1


def test_json_array_of_strings_wrapped_and_numbers_quarantined(tmp_path):
    p = tmp_path / "s.json"
    p.write_text('["hello", 42, null, {"text": "x"}]', encoding="utf-8")
    info, recs, qs = read(p)
    assert [r.record for r in recs] == [{"text": "hello"}, {"text": "x"}]
    assert len(qs) == 2 and "a number" in qs[0].error and "null" in qs[1].error
    assert info.strings_wrapped == 1


def test_concatenated_pretty_objects(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{\n "a": 1\n}\n{\n "a": 2\n}\n', encoding="utf-8")
    info, recs, qs = read(p)
    assert [r.record["a"] for r in recs] == [1, 2] and not qs


def test_jsonl_named_json_is_sniffed(tmp_path):
    p = tmp_path / "eval_set.json"
    p.write_bytes(jsonl_bytes())
    info, recs, qs = read(p)
    assert info.format == "jsonl" and len(recs) == 3
    assert any("JSON Lines" in n for n in info.notes)


def test_csv_with_header_quotes_and_multiline(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text('Q,A,label\n"hello, world","multi\nline",0\nplain,answer,1\n', encoding="utf-8")
    info, recs, qs = read(p)
    assert info.format == "csv" and info.header is True and info.columns == ["Q", "A", "label"]
    assert recs[0].record == {"Q": "hello, world", "A": "multi\nline", "label": "0"}
    assert recs[1].line_no == 4


def test_tsv_without_header_and_stray_quotes(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text('0\t0\t"인용"으로 시작하는 문장\n1\t0\t둘째 문장\n2\t1\t"완전히 인용"\n', encoding="utf-8")
    info, recs, qs = read(p)
    assert info.format == "tsv" and info.header is False
    assert info.columns == ["col1", "col2", "col3"]
    assert recs[0].record["col3"] == '"인용"으로 시작하는 문장'  # a stray quote does not start quoting
    assert recs[2].record["col3"] == "완전히 인용"


def test_csv_duplicate_and_blank_columns_and_ragged_rows(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,Text,,label\na,b,c,1\nshort,row\nx,y,z,2,extra\n", encoding="utf-8")
    info, recs, qs = read(p)
    assert info.columns == ["text", "Text_2", "col3", "label"]
    assert recs[1].record == {"text": "short", "Text_2": "row", "col3": None, "label": None}
    assert len(qs) == 1 and qs[0].line_no == 4 and "5 fields" in qs[0].error


def test_semicolon_delimiter_sniffed(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("question;answer\nwhy;because\nhow;so\n", encoding="utf-8")
    info, recs, qs = read(p)
    assert info.delimiter == ";" and recs[0].record == {"question": "why", "answer": "because"}


def test_header_only_csv(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("instruction,output\n", encoding="utf-8")
    info, recs, qs = read(p)
    assert not recs and len(qs) == 1 and "header only" in qs[0].error


def test_parquet_row_groups(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    t = pa.table({"instruction": [f"q{i}" for i in range(25)], "output": [f"a{i}" for i in range(25)]})
    p = tmp_path / "a.parquet"
    pq.write_table(t, p, row_group_size=10)
    info, recs, qs = read(p, parquet_batch_rows=4)
    assert info.format == "parquet" and len(recs) == 25 and not qs
    assert recs[24].record == {"instruction": "q24", "output": "a24"} and recs[24].line_no == 25


def test_gzip_and_zstd(tmp_path):
    zstd = pytest.importorskip("zstandard")
    g = tmp_path / "a.jsonl.gz"
    g.write_bytes(gzip.compress(jsonl_bytes()))
    z = tmp_path / "a.csv.zst"
    z.write_bytes(zstd.ZstdCompressor().compress("text,label\nhello,1\nworld,0\n".encode()))
    info, recs, _ = read(g)
    assert info.compression == "gzip" and info.format == "jsonl" and len(recs) == 3
    info, recs, _ = read(z)
    assert info.compression == "zstd" and info.format == "csv" and [r.record["text"] for r in recs] == ["hello", "world"]


def test_truncated_gzip_does_not_crash(tmp_path):
    p = tmp_path / "t.jsonl.gz"
    rows = [{"i": i, "t": str(i * 7919 % 100003)} for i in range(20000)]
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    p.write_bytes(data[: len(data) // 2])
    items = list(BatchReader(p))
    recs = [i for i in items if isinstance(i, ParsedRecord)]
    assert 0 < len(recs) < 20000 and [r.record for r in recs] == rows[: len(recs)]
    assert isinstance(items[-1], QuarantinedLine) and "truncated" in items[-1].error


# ---- encodings ------------------------------------------------------------------------------

def test_utf8_bom(tmp_path):
    p = tmp_path / "b.csv"
    p.write_bytes(codecs.BOM_UTF8 + "instruction,output\n안녕,하세요\n".encode())
    info, recs, _ = read(p)
    assert info.encoding == "utf-8" and info.encoding_detected_by == "bom"
    assert recs[0].record == {"instruction": "안녕", "output": "하세요"}


@pytest.mark.parametrize("enc", ["utf-16", "utf-16-be"])
def test_utf16(tmp_path, enc):
    p = tmp_path / "u.jsonl"
    data = jsonl_bytes().decode().encode(enc)
    if enc == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    p.write_bytes(data)
    info, recs, qs = read(p)
    assert info.encoding.startswith("utf-16") and [r.record for r in recs] == ROWS and not qs


def test_utf16_without_bom(tmp_path):
    p = tmp_path / "u.jsonl"
    p.write_bytes(jsonl_bytes().decode().encode("utf-16-le"))
    info, recs, _ = read(p)
    assert info.encoding == "utf-16-le" and info.encoding_detected_by == "utf16-nul-pattern" and len(recs) == 3


def test_cp949_detected(tmp_path):
    p = tmp_path / "k.csv"
    text = "질문,답변\n" + "".join(f"오늘 날씨가 어때요 {i}번,맑고 따뜻한 하루가 될 거예요\n" for i in range(40))
    p.write_bytes(text.encode("cp949"))
    info, recs, qs = read(p)
    assert info.encoding == "cp949" and info.encoding_detected_by == "charset-normalizer"
    assert any("charset-normalizer" in n for n in info.notes)
    assert recs[0].record["질문"] == "오늘 날씨가 어때요 0번" and not qs


def test_gb18030_detected(tmp_path):
    p = tmp_path / "z.jsonl"
    rows = [{"instruction": f"请解释一下什么是机器学习以及它的应用{i}", "output": "机器学习是人工智能的一个分支。"} for i in range(40)]
    p.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("gb18030"))
    info, recs, qs = read(p)
    assert info.encoding == "gb18030" and [r.record for r in recs] == rows


def test_explicit_encoding_wins(tmp_path):
    p = tmp_path / "l.txt"
    p.write_bytes("café au lait\nnaïve\n".encode("latin-1"))
    info, recs, _ = read(p, encoding="latin-1")
    assert info.encoding_detected_by == "explicit" and [r.record["text"] for r in recs] == ["café au lait", "naïve"]


def test_invalid_utf8_line_quarantined(tmp_path):
    p = tmp_path / "x.jsonl"
    good = '{"text": "fine"}\n'.encode() * 3
    p.write_bytes(good + b'{"text": "bad \xff\xfe byte"}\n' + good)
    info, recs, qs = read(p)
    assert len(recs) == 6 and len(qs) == 1 and qs[0].line_no == 4 and "not valid utf-8" in qs[0].error


def test_mojibake_repaired_and_counted(tmp_path):
    p = tmp_path / "m.jsonl"
    bad = "It is 30Â°C and cafÃ© time".encode("utf-8")
    p.write_bytes(b'{"text": "' + bad + b'", "ok": "plain"}\n{"text": "clean"}\n')
    info, recs, _ = read(p)
    assert recs[0].record["text"] == "It is 30°C and café time"
    assert recs[0].repaired == ["text"] and info.mojibake_repaired == 1
    info2, recs2, _ = read(p, repair_mojibake=False)
    assert "Â°" in recs2[0].record["text"] and info2.mojibake_repaired == 0


# ---- bad input ------------------------------------------------------------------------------

def test_empty_file(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_bytes(b"")
    info, recs, qs = read(p)
    assert not recs and len(qs) == 1 and "empty" in qs[0].error


def test_binary_garbage(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_bytes(bytes(range(256)) * 40)
    info, recs, qs = read(p)
    assert not recs and len(qs) == 1 and "binary" in qs[0].error


def test_nul_byte_line(tmp_path):
    p = tmp_path / "n.jsonl"
    p.write_bytes(b'{"text": "a"}\n{"text": "b\x00c"}\n{"text": "d"}\n')
    info, recs, qs = read(p)
    assert [r.record["text"] for r in recs] == ["a", "d"] and qs[0].line_no == 2 and "NUL" in qs[0].error


def test_ten_megabyte_line_parses_and_overlong_line_is_quarantined(tmp_path):
    p = tmp_path / "long.jsonl"
    big = "가" * (10 * 1024 * 1024 // 3)
    p.write_text(json.dumps({"text": big}, ensure_ascii=False) + '\n{"text": "after"}\n', encoding="utf-8")
    info, recs, qs = read(p)
    assert len(recs) == 2 and len(recs[0].record["text"]) == len(big) and not qs
    info, recs, qs = read(p, max_line_bytes=1_000_000)
    assert [r.record["text"] for r in recs] == ["after"] and qs[0].line_no == 1 and "longer than" in qs[0].error
    assert len(qs[0].raw) <= 10_100


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(BatchReader(tmp_path / "nope.jsonl"))


# ---- shared data (skipped when ../shared/data is absent) ------------------------------------

def need(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"shared data {p} not present")
    return p


def test_shared_zh_chunk_malformed_tail_quarantined_rest_loads():
    p = need("alpaca/zh_translated_chunks/alpaca_zh_9407-12345_unfinished.json")
    info, recs, qs = read(p)
    assert len(recs) == 2801
    assert len(qs) == 1 and qs[0].line_no == 14006 and "trailing comma" in qs[0].error


def test_shared_belle_is_jsonl():
    p = need("belle/eval_set.json")
    r = BatchReader(p)
    first = list(itertools.islice(r, 5))
    assert r.info.format == "jsonl" and all(isinstance(x, ParsedRecord) for x in first)
    assert {"question", "std_answer"} <= set(first[0].record)


def test_shared_gpteacher_mojibake_repaired():
    p = need("gpteacher/Toolformer/toolformer-similarity-0.6-dataset.json")
    info, recs, qs = read(p)
    assert info.mojibake_repaired > 0 and not qs
    assert not any("Â°" in json.dumps(r.record, ensure_ascii=False) for r in recs if r.repaired)


def test_shared_nsmc_streams_with_early_stop():
    p = need("nsmc/nsmc_raw_reviews.jsonl")
    r = BatchReader(p)
    got = list(itertools.islice(r, 2000))
    assert len(got) == 2000 and all(isinstance(x, ParsedRecord) for x in got)
    assert got[-1].line_no == 2000 and "review" in got[0].record


def test_shared_kobest_copa_header_with_numeric_columns():
    p = need("kobest/COPA/dev.tsv")
    info, recs, qs = read(p)
    assert info.header is True and info.columns[:3] == ["ID", "sentence", "question"] and len(recs) == 500
