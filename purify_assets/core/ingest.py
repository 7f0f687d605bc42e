"""Parse a landed file into records, streaming, without ever losing a line.

CONTRACT (used by ``purify_assets.assets.ingest``):

``BatchReader(path, fmt=None, encoding=None)`` is an iterable. Iterating yields, in file order,
``ParsedRecord`` for every record that parsed and ``QuarantinedLine`` for every line (or chunk) that
did not. It streams: memory must not grow with the file size. After iteration ``reader.info``
(``BatchReadInfo``) is complete (format, encoding, compression, counts, mojibake repairs).

Formats: JSONL, JSON array, CSV/TSV (with or without header), Parquet, and gzip/zstd-compressed
variants; format from content sniffing plus extension. Encodings: UTF-8 (BOM or not), UTF-16 (BOM),
CP949/EUC-KR, GB18030/GBK, detected not guessed silently.

Decisions (documented here because the asset layer relies on them):

- **Format** comes from the content first (Parquet magic, first non-blank character, whether the
  first line is a complete JSON value), the extension second. ``fmt`` overrides both. Besides the
  contract's ``jsonl | json | csv | tsv | parquet`` the reader reports ``text`` for a file of plain
  lines (each non-blank line becomes ``{"text": line}``) and ``unknown`` for binary garbage.
- **JSON arrays stream**: elements are decoded one at a time from a bounded window with
  ``json.JSONDecoder.raw_decode``. An element that does not decode is quarantined with the line it
  starts on and the rest of the array still loads. A structural slip between elements (a trailing
  comma before ``]``, a missing comma) loses no record; it is reported as a quarantine entry too so
  the defect is visible with its position. A sequence of concatenated pretty-printed objects (not
  wrapped in an array) is read the same way.
- **Records that are not objects**: a string becomes ``{"text": value}`` (a JSON array of strings is
  a common plain-text corpus) and is counted in ``info.notes``; numbers, booleans, null and nested
  arrays are quarantined with a message naming the line and the type found.
- **Encodings**: explicit ``encoding`` wins; then a BOM (UTF-8, UTF-16/32); then UTF-16 without BOM
  when every other byte is NUL; then strict UTF-8 on a sample; otherwise charset-normalizer chooses
  among ``cp949`` (a superset of EUC-KR) and ``gb18030`` (a superset of GBK). The choice and how it
  was made go to ``info.notes``; when nothing fits, UTF-8 is used and that is said in the notes.
  In line formats (JSONL, CSV, text) a line that does not decode in the chosen encoding is
  quarantined. Inside a JSON array (where a line is not a unit) undecodable bytes become U+FFFD,
  and the count and first line numbers go to ``info.notes``.
- **Mojibake** (UTF-8 read as Latin-1/cp1252, e.g. ``Â°``) in string values is repaired with
  ``ftfy.fix_encoding``; only strings with characters from the affected ranges are looked at (fast
  path). Each repaired record lists the repaired fields in ``ParsedRecord.repaired`` and counts once
  in ``info.mojibake_repaired``.
- **Bad input** never raises from iteration: an empty file, a header-only CSV and a binary file
  each yield one ``QuarantinedLine`` saying so; NUL bytes in a line quarantine that line; a line
  longer than ``max_line_bytes`` (default 64 MiB, so a 10 MB line still parses) is quarantined
  without being held in memory whole; a truncated or corrupt gzip/zstd stream keeps every record
  read before the damage and ends with a quarantine entry saying where reading stopped. Only a
  missing file raises (``FileNotFoundError``).
- **CSV/TSV**: delimiter sniffed among tab, comma, semicolon and pipe (the extension breaks ties);
  header detected (``header=`` overrides); duplicate or blank column names made unique (``a``,
  ``a_2``; ``col3``); without a header columns are ``col1..colN`` (a single column is ``text``).
  A row with more fields than the header is quarantined; a shorter row is padded with ``None`` and
  counted in the notes. ``line_no`` is the physical line the row starts on.
- **Parquet** is read one row group (batch) at a time; ``line_no`` is the 1-based row number.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

RAW_LIMIT = 10_000  # characters of raw text kept in a quarantine entry
SAMPLE_BYTES = 256 * 1024  # bytes looked at for format and encoding sniffing


@dataclass
class ParsedRecord:
    line_no: int  # 1-based line where the record starts (JSON array: line of the element's opening)
    record: dict[str, Any]  # the original record, every field as parsed
    repaired: list[str] = field(default_factory=list)  # fields whose mojibake ftfy repaired


@dataclass
class QuarantinedLine:
    line_no: int  # 1-based line (or start line of the bad chunk)
    error: str  # human message: what was wrong, naming line and field where possible
    raw: str  # the raw text of the bad line or chunk, truncated to 10,000 characters


@dataclass
class BatchReadInfo:
    format: str = "unknown"  # jsonl | json | csv | tsv | parquet  (also: text | unknown)
    encoding: str = "utf-8"
    compression: str | None = None  # gzip | zstd | None
    records: int = 0
    quarantined: int = 0
    mojibake_repaired: int = 0
    notes: list[str] = field(default_factory=list)
    encoding_detected_by: str = "default"  # explicit | bom | utf16-nul-pattern | utf-8-strict | charset-normalizer | fallback | binary
    delimiter: str | None = None  # CSV/TSV only
    header: bool | None = None  # CSV/TSV only
    columns: list[str] = field(default_factory=list)  # CSV/TSV/Parquet column names (after dedup)
    blank_lines: int = 0
    strings_wrapped: int = 0  # JSON strings wrapped as {"text": ...}


# --------------------------------------------------------------------------------------------
# helpers


def _trunc(s: str) -> str:
    return s if len(s) <= RAW_LIMIT else s[:RAW_LIMIT] + f"...[{len(s) - RAW_LIMIT} more chars]"


def _bytes_preview(b: bytes) -> str:
    return _trunc(b.decode("utf-8", "backslashreplace"))


# characters that show up when UTF-8 bytes were decoded as Latin-1 / cp1252
_MOJIBAKE_HINT = re.compile("[\u00c0-\u00ff\u0080-\u009f\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192"
                            "\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]"
                            "[\u0080-\u00ff\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
                            "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]")


def _fix_value(v: Any, fix) -> tuple[Any, bool]:
    if isinstance(v, str):
        if _MOJIBAKE_HINT.search(v) is None:
            return v, False
        fixed = fix(v)
        return fixed, fixed != v
    if isinstance(v, list):
        changed = False
        out = []
        for x in v:
            y, c = _fix_value(x, fix)
            changed |= c
            out.append(y)
        return (out, True) if changed else (v, False)
    if isinstance(v, dict):
        changed = False
        out = {}
        for k, x in v.items():
            y, c = _fix_value(x, fix)
            changed |= c
            out[k] = y
        return (out, True) if changed else (v, False)
    return v, False


_CODEC_CANON = {"utf_8": "utf-8", "utf8": "utf-8", "utf_8_sig": "utf-8-sig", "utf_16": "utf-16",
                "utf_16_le": "utf-16-le", "utf_16_be": "utf-16-be", "cp949": "cp949", "euc_kr": "euc-kr",
                "gb18030": "gb18030", "gbk": "gbk", "gb2312": "gb2312", "big5": "big5",
                "utf_32": "utf-32", "utf_32_le": "utf-32-le", "utf_32_be": "utf-32-be"}


def _canon(enc: str) -> str:
    try:
        name = codecs.lookup(enc).name
    except LookupError:
        return enc
    return _CODEC_CANON.get(name.replace("-", "_"), name)


class _LineTooLong(Exception):
    pass


# --------------------------------------------------------------------------------------------
# the reader


class BatchReader:
    def __init__(self, path: Path | str, fmt: str | None = None, encoding: str | None = None, *,
                 header: bool | None = None, delimiter: str | None = None,
                 repair_mojibake: bool = True, max_line_bytes: int = 64 * 1024 * 1024,
                 max_element_chars: int = 64 * 1024 * 1024, parquet_batch_rows: int = 8192):
        self.path = Path(path)
        self.fmt = fmt.lower() if fmt else None
        if self.fmt == "ndjson":
            self.fmt = "jsonl"
        self.encoding = encoding
        self.header = header
        self.delimiter = delimiter
        self.repair_mojibake = repair_mojibake
        self.max_line_bytes = max_line_bytes
        self.max_element_chars = max_element_chars
        self.parquet_batch_rows = parquet_batch_rows
        self.info = BatchReadInfo()
        self._fix = None

    # ---- public -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[ParsedRecord | QuarantinedLine]:
        self.info = BatchReadInfo()
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such file")
        if self.repair_mojibake:
            import ftfy  # light, but only needed while reading

            self._fix = ftfy.fix_encoding
        for item in self._iter_all():
            if isinstance(item, ParsedRecord):
                self.info.records += 1
            else:
                self.info.quarantined += 1
            yield item

    # ---- plumbing ---------------------------------------------------------------------------

    def _q(self, line_no: int, error: str, raw: str | bytes) -> QuarantinedLine:
        if isinstance(raw, bytes):
            raw = _bytes_preview(raw)
        return QuarantinedLine(line_no, f"{self.path.name}: line {line_no}: {error}", _trunc(raw))

    def _open_binary(self) -> BinaryIO:
        f = open(self.path, "rb")
        magic = f.read(4)
        f.seek(0)
        name = self.path.name.lower()
        if magic[:2] == b"\x1f\x8b" or (name.endswith((".gz", ".gzip")) and not magic):
            self.info.compression = "gzip"
            return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
        if magic == b"\x28\xb5\x2f\xfd":
            import zstandard

            self.info.compression = "zstd"
            return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(f, closefd=True))  # type: ignore[return-value]
        return f  # type: ignore[return-value]

    def _logical_name(self) -> str:
        name = self.path.name.lower()
        for ext in (".gz", ".gzip", ".zst", ".zstd"):
            if name.endswith(ext):
                return name[: -len(ext)]
        return name

    def _iter_all(self) -> Iterator[ParsedRecord | QuarantinedLine]:
        self._stream_error = None
        try:
            raw_stream = self._open_binary()
        except (OSError, ValueError) as exc:
            self.info.notes.append(f"cannot open: {exc}")
            yield self._q(1, f"cannot read file: {exc}", b"")
            return
        stream = _Guarded(raw_stream, self)
        sample = _read_fully(stream, SAMPLE_BYTES)
        try:
            if sample[:4] == b"PAR1" and self.fmt in (None, "parquet"):
                self.info.format = "parquet"
                self.info.encoding = "binary"
                self.info.encoding_detected_by = "binary"
                yield from self._parquet(stream, sample)
                return
            if self.fmt == "parquet":
                self.info.format = "parquet"
                yield self._q(1, "not a Parquet file (missing PAR1 magic)", sample[:200])
                return
            if not sample and self._stream_error is not None:
                self.info.format = self.fmt or "unknown"
                self.info.notes.append(f"stream unreadable from the start: {self._stream_error}")
                yield self._q(1, f"cannot read the file: {self.info.compression or 'plain'} stream truncated or "
                                 f"corrupt before the first complete block ({self._stream_error}); nothing parsed", b"")
                return
            if not sample.strip(b" \t\r\n\x00") and not sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                self.info.format = self.fmt or "unknown"
                self.info.notes.append("empty file" if not sample else "file holds only whitespace")
                yield self._q(1, "file is empty (no records)" if not sample else "file holds only whitespace (no records)",
                              sample[:200])
                return
            enc, offset = self._detect_encoding(sample)
            if enc is None:
                self.info.format = "unknown"
                yield self._q(1, "file looks binary (many control bytes, no known encoding or format); nothing parsed",
                              sample[:200])
                return
            fmt = self.fmt or self._sniff_format(sample, enc, offset)
            self.info.format = fmt
            parse = {"json": self._json_stream, "jsonl": self._jsonl, "csv": self._csv, "tsv": self._csv,
                     "text": self._text}.get(fmt)
            if parse is None:
                yield self._q(1, f"unsupported format {fmt!r} (use jsonl, json, csv, tsv, parquet or text)", b"")
                return
            last = 0
            for item in parse(stream, sample, enc, offset):
                last = item.line_no
                yield item
            if self._stream_error is not None:
                exc = self._stream_error
                self.info.notes.append(f"stream ended abnormally after line {last}: {exc}")
                yield self._q(last + 1, f"cannot read past line {last} ({self.info.compression or 'plain'} "
                                        f"stream truncated or corrupt): {exc}; the last record may be cut", b"")
        finally:
            try:
                raw_stream.close()
            except Exception:
                pass

    # ---- encoding ---------------------------------------------------------------------------

    def _detect_encoding(self, sample: bytes) -> tuple[str | None, int]:
        """Return (codec, bytes of BOM to skip) or (None, 0) for binary garbage."""
        info = self.info
        if self.encoding:
            enc = _canon(self.encoding)
            info.encoding, info.encoding_detected_by = enc, "explicit"
            skip = 0
            if enc in ("utf-8", "utf-8-sig") and sample.startswith(codecs.BOM_UTF8):
                skip = 3
                enc = "utf-8"
                info.encoding = enc
            info.notes.append(f"encoding {enc} given by caller")
            return enc, skip
        for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
                         (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                         (codecs.BOM_UTF16_BE, "utf-16-be")):
            if sample.startswith(bom):
                info.encoding, info.encoding_detected_by = enc, "bom"
                info.notes.append(f"encoding {enc} from byte-order mark")
                return enc, len(bom)
        head = sample[:4096]
        if len(head) >= 8:
            even_nul = head[0::2].count(0) / len(head[0::2])
            odd_nul = head[1::2].count(0) / len(head[1::2])
            if odd_nul > 0.4 and even_nul < 0.05:
                info.encoding, info.encoding_detected_by = "utf-16-le", "utf16-nul-pattern"
                info.notes.append("encoding utf-16-le without BOM (NUL in every odd byte)")
                return "utf-16-le", 0
            if even_nul > 0.4 and odd_nul < 0.05:
                info.encoding, info.encoding_detected_by = "utf-16-be", "utf16-nul-pattern"
                info.notes.append("encoding utf-16-be without BOM (NUL in every even byte)")
                return "utf-16-be", 0
        ctrl = sum(1 for b in head if b < 9 or 13 < b < 32 and b != 27)
        if head and ctrl / len(head) > 0.05:
            info.encoding, info.encoding_detected_by = "binary", "binary"
            info.notes.append(f"{ctrl} of the first {len(head)} bytes are control bytes: binary")
            return None, 0
        try:
            codecs.getincrementaldecoder("utf-8")("strict").decode(sample, final=False)
            info.encoding, info.encoding_detected_by = "utf-8", "utf-8-strict"
            return "utf-8", 0
        except UnicodeDecodeError as exc:
            first_bad = exc.start
        from charset_normalizer import from_bytes

        candidates = ["cp949", "euc_kr", "gb18030", "gbk"]
        best = from_bytes(sample, cp_isolation=candidates, explain=False).best()
        if best is not None:
            enc = _canon(best.encoding)
            if enc in ("euc-kr",):
                enc = "cp949"  # strict superset: the same text decodes, plus the extended Hangul
            if enc in ("gbk", "gb2312"):
                enc = "gb18030"
            info.encoding, info.encoding_detected_by = enc, "charset-normalizer"
            info.notes.append(f"not valid UTF-8 (first bad byte at offset {first_bad}); charset-normalizer "
                              f"chose {best.encoding} among {', '.join(candidates)}; decoding as {enc}")
            return enc, 0
        info.encoding, info.encoding_detected_by = "utf-8", "fallback"
        info.notes.append(f"not valid UTF-8 (first bad byte at offset {first_bad}) and no legacy Korean/Chinese "
                          "encoding fits: decoding as UTF-8, undecodable lines are quarantined")
        return "utf-8", 0

    # ---- format sniffing --------------------------------------------------------------------

    def _sniff_format(self, sample: bytes, enc: str, offset: int) -> str:
        text = sample[offset:].decode(enc, "replace")
        if len(sample) == SAMPLE_BYTES:
            text = text[:-8]  # the cut may split a character
        stripped = text.lstrip()
        name = self._logical_name()
        first = stripped[:1]
        if first in "[{":
            line = stripped.split("\n", 1)[0].strip()
            complete = False
            try:
                json.loads(line)
                complete = True
            except (ValueError, RecursionError):
                pass
            if not complete and "\n" not in stripped.rstrip("\r\n") and name.endswith((".jsonl", ".ndjson")):
                return "jsonl"  # the first line is longer than the sniffing sample
            if first == "{":
                if complete:
                    if name.endswith(".json"):
                        self.info.notes.append("content is JSON Lines although the name ends in .json")
                    return "jsonl"
                return "json"  # pretty-printed object(s)
            # '[': a JSON array, unless every one of the first lines is a whole JSON value (JSONL of arrays)
            if complete:
                lines = [x for x in stripped.split("\n")[:5] if x.strip()]
                ok = 0
                for x in lines[1:]:
                    try:
                        json.loads(x)
                        ok += 1
                    except (ValueError, RecursionError):
                        break
                if ok >= 1 and ok == len(lines) - 1 and len(lines) > 1:
                    return "jsonl"
            return "json"
        if name.endswith((".jsonl", ".ndjson")):
            return "jsonl"
        if name.endswith(".tsv"):
            return "tsv"
        if name.endswith(".csv"):
            return "csv"
        delim = self._sniff_delimiter(text)
        if delim is None:
            return "text"
        return "tsv" if delim == "\t" else "csv"

    def _sniff_delimiter(self, text: str) -> str | None:
        lines = [x for x in text.split("\n")[:50] if x.strip()]
        if len(text) >= SAMPLE_BYTES // 2 and len(lines) > 1:
            lines = lines[:-1]  # last line may be cut
        if not lines:
            return None
        best, best_score = None, 0.0
        for d in ("\t", ",", ";", "|"):
            try:
                rows = list(csv.reader(lines, delimiter=d))
            except csv.Error:
                continue
            counts = [len(r) for r in rows]
            if not counts or max(counts) < 2:
                continue
            mode = max(set(counts), key=counts.count)
            if mode < 2:
                continue
            consistency = counts.count(mode) / len(counts)
            score = consistency + (0.01 if d == "\t" else 0)
            if consistency >= 0.8 and score > best_score:
                best, best_score = d, score
        return best

    # ---- line reading -----------------------------------------------------------------------

    def _byte_lines(self, stream: BinaryIO, sample: bytes, offset: int) -> Iterator[tuple[int, bytes | None]]:
        """Yield (line_no, bytes) for ASCII-compatible encodings; bytes None = line too long (skipped)."""
        buf = io.BufferedReader(_Prefixed(sample[offset:], stream), buffer_size=1 << 20)  # type: ignore[arg-type]
        limit = self.max_line_bytes
        line_no = 0
        while True:
            line = buf.readline(limit + 1)
            if not line:
                return
            line_no += 1
            if len(line) > limit and not line.endswith(b"\n"):
                # too long: skip to the end of this physical line without keeping it
                self._too_long_prefix = line[:2000]
                while True:
                    more = buf.readline(1 << 20)
                    if not more or more.endswith(b"\n"):
                        break
                yield line_no, None
                continue
            yield line_no, line

    def _text_lines(self, stream: BinaryIO, sample: bytes, enc: str, offset: int, *, lenient: bool
                    ) -> Iterator[tuple[int, str | None, str | bytes]]:
        """Yield (line_no, text or None, raw or error) with the line ending kept in text.

        text None means the line is bad: raw holds the raw bytes and the error is in self._line_error.
        """
        if enc.startswith(("utf-16", "utf-32")):
            dec = codecs.getincrementaldecoder(enc)("replace")
            src = _Prefixed(sample[offset:], stream)
            pending = ""
            line_no = 0
            replaced = 0
            while True:
                chunk = src.read(1 << 20)
                text = dec.decode(chunk, final=not chunk)
                replaced += text.count("\ufffd")
                pending += text
                parts = pending.split("\n")
                pending = parts.pop()
                for p in parts:
                    line_no += 1
                    yield line_no, p + "\n", ""
                if len(pending) > self.max_line_bytes:
                    line_no += 1
                    self._line_error = f"line longer than {self.max_line_bytes} characters"
                    yield line_no, None, pending[:2000]
                    pending = ""
                if not chunk:
                    break
            if pending:
                line_no += 1
                yield line_no, pending, ""
            if replaced:
                self.info.notes.append(f"{replaced} undecodable {enc} sequence(s) replaced by U+FFFD")
            return
        bad_lines: list[int] = []
        for line_no, raw in self._byte_lines(stream, sample, offset):
            if raw is None:
                self._line_error = f"line longer than {self.max_line_bytes} bytes, skipped"
                yield line_no, None, self._too_long_prefix
                continue
            try:
                yield line_no, raw.decode(enc), ""
            except UnicodeDecodeError as exc:
                if lenient:
                    bad_lines.append(line_no)
                    yield line_no, raw.decode(enc, "replace"), ""
                else:
                    self._line_error = (f"bytes not valid {enc} at column {exc.start + 1} "
                                        f"({raw[exc.start:exc.start + 4]!r})")
                    yield line_no, None, raw
        if bad_lines:
            self.info.notes.append(f"{len(bad_lines)} line(s) held bytes not valid {enc}; replaced by U+FFFD "
                                   f"(first lines: {bad_lines[:10]})")

    # ---- records ----------------------------------------------------------------------------

    def _emit(self, line_no: int, value: Any, where: str = "") -> ParsedRecord | QuarantinedLine:
        if isinstance(value, dict):
            rec = value
        elif isinstance(value, str):
            rec = {"text": value}
            self.info.strings_wrapped += 1
        else:
            kind = {bool: "a boolean", int: "a number", float: "a number", list: "an array",
                    type(None): "null"}.get(type(value), type(value).__name__)
            return self._q(line_no, f"record{where} is {kind}, expected a JSON object (or a string)",
                           json.dumps(value, ensure_ascii=False)[:RAW_LIMIT])
        repaired: list[str] = []
        if self._fix is not None:
            for k, v in list(rec.items()):
                nv, changed = _fix_value(v, self._fix)
                if changed:
                    rec[k] = nv
                    repaired.append(str(k))
            if repaired:
                self.info.mojibake_repaired += 1
        return ParsedRecord(line_no, rec, repaired)

    def _finish_notes(self) -> None:
        if self.info.strings_wrapped:
            self.info.notes.append(f"{self.info.strings_wrapped} JSON string record(s) wrapped as {{\"text\": ...}}")
        if self.info.blank_lines:
            self.info.notes.append(f"{self.info.blank_lines} blank line(s) skipped")

    def _jsonl(self, stream, sample, enc, offset):
        loads = json.loads
        for line_no, s, raw in _split_cr(self._text_lines(stream, sample, enc, offset, lenient=False)):
            if s is None:
                yield self._q(line_no, self._line_error, raw)
                continue
            s = s.strip()
            if not s:
                self.info.blank_lines += 1
                continue
            if "\x00" in s:
                yield self._q(line_no, f"NUL byte at column {s.index(chr(0)) + 1}", s)
                continue
            try:
                value = loads(s)
            except RecursionError:
                yield self._q(line_no, "invalid JSON: nested too deeply to decode", s)
                continue
            except ValueError as exc:
                yield self._q(line_no, f"invalid JSON: {exc}", s)
                continue
            problem = _surrogate_problem(value) if _SURROGATE_ESCAPE.search(s) else None
            if problem:
                yield self._q(line_no, problem, s)
                continue
            yield self._emit(line_no, value)
        self._finish_notes()

    def _text(self, stream, sample, enc, offset):
        self.info.notes.append("plain text: each non-blank line is one record {\"text\": line}")
        for line_no, text, raw in _split_cr(self._text_lines(stream, sample, enc, offset, lenient=False)):
            if text is None:
                yield self._q(line_no, self._line_error, raw)
                continue
            s = text.rstrip("\r\n")
            if not s.strip():
                self.info.blank_lines += 1
                continue
            if "\x00" in s:
                yield self._q(line_no, f"NUL byte at column {s.index(chr(0)) + 1}", s)
                continue
            yield self._emit(line_no, {"text": s})
        self._finish_notes()

    # ---- JSON array / concatenated JSON -----------------------------------------------------

    def _json_stream(self, stream, sample, enc, offset):
        """Stream the elements of a top-level JSON array (or a sequence of top-level values)."""
        decoder = json.JSONDecoder()
        lines = self._text_lines(stream, sample, enc, offset, lenient=True)
        buf = ""
        eof = False
        chunk_chars = 1 << 20

        def more(min_chars: int = chunk_chars) -> bool:
            nonlocal buf, eof
            if eof:
                return False
            parts = []
            got = 0
            for line_no, text, raw in lines:
                if text is None:  # only "line too long" reaches here in lenient mode
                    text = "\n"
                    pending.append(self._q(line_no, self._line_error, raw))
                parts.append(text)
                got += len(text)
                if got >= min_chars:
                    break
            else:
                eof = True
            if parts:
                buf += "".join(parts)
                return True
            return False

        ws = re.compile(r"[ \t\r\n]*")
        pos = 0
        pending: list[QuarantinedLine] = []
        more()

        def skip_ws() -> None:
            nonlocal pos
            while True:
                pos = ws.match(buf, pos).end()
                if pos < len(buf) or not more():
                    return

        mark = [0, 1]  # (position in buf, line number there): line counting moves forward only

        def line_at(p: int) -> int:
            mp, ml = mark
            if p >= mp:
                ml += buf.count("\n", mp, p)
            else:
                ml -= buf.count("\n", p, mp)
            mark[0], mark[1] = p, ml
            return ml

        def compact() -> None:
            nonlocal buf, pos
            if pos > chunk_chars:
                ln = line_at(pos)
                buf = buf[pos:]
                pos = 0
                mark[0], mark[1] = 0, ln

        skip_ws()
        in_array = pos < len(buf) and buf[pos] == "["
        if in_array:
            pos += 1
        else:
            self.info.notes.append("JSON content is not an array: reading a sequence of top-level values")
        index = 0  # elements decoded
        seen = 0  # elements seen, good or bad
        expect_value = True  # after '[' or ','
        comma_line = 0
        while True:
            if pending:
                yield from pending
                pending.clear()
            compact()
            skip_ws()
            if pos >= len(buf):
                if in_array:
                    ln = line_at(pos)
                    yield self._q(ln, "JSON array not closed: ']' missing at end of file (no record lost)", "")
                break
            ch = buf[pos]
            if in_array and ch == "]":
                if not expect_value or seen == 0:
                    pass
                else:
                    ln = line_at(pos)
                    yield self._q(comma_line, f"malformed JSON array: trailing comma at line {comma_line} before "
                                              f"']' at line {ln} (after element {seen}); no record lost",
                                  buf[max(0, pos - 200):pos + 1])
                pos += 1
                skip_ws()
                if pos < len(buf):
                    ln = line_at(pos)
                    rest = buf[pos:pos + RAW_LIMIT]
                    yield self._q(ln, "unexpected content after the closing ']' of the JSON array", rest)
                    # keep reading whatever follows as further values
                    in_array = False
                    continue
                break
            if ch == ",":
                ln = comma_line = line_at(pos)
                if expect_value:
                    yield self._q(ln, "malformed JSON array: empty element (',,' or '[,'); no record lost", ",")
                pos += 1
                expect_value = True
                continue
            if in_array and not expect_value:
                ln = line_at(pos)
                yield self._q(ln, f"malformed JSON array: missing ',' before the element at line {ln}; "
                                  "the element is still read", buf[max(0, pos - 100):pos + 100])
            start_line = line_at(pos)
            # decode one element; grow the window while the element may simply be incomplete
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as exc:
                    status, bad_end = _scan_element(buf, pos)
                    if status == "incomplete" and not eof and len(buf) - pos < self.max_element_chars:
                        more(max(chunk_chars, len(buf) - pos))
                        continue
                    if status == "incomplete":
                        bad_end = len(buf)
                        why = ("element runs to the end of the file" if eof
                               else f"element longer than {self.max_element_chars} characters")
                        err = f"{why}: {exc.msg}"
                    else:
                        err = f"invalid JSON element #{seen + 1}: {exc.msg} (line {line_at(exc.pos)})"
                    if bad_end <= pos:  # never stand still: drop at least the rest of the line
                        nl = buf.find("\n", pos)
                        bad_end = nl + 1 if nl != -1 else len(buf)
                    value, end = _BAD, bad_end
                    yield self._q(start_line, err, buf[pos:bad_end])
                    break
                except (RecursionError, ValueError) as exc:  # nesting too deep, integer too long
                    status, bad_end = _scan_element(buf, pos)
                    if status == "incomplete" and not eof and len(buf) - pos < self.max_element_chars:
                        more(max(chunk_chars, len(buf) - pos))
                        continue
                    if bad_end <= pos:
                        nl = buf.find("\n", pos)
                        bad_end = nl + 1 if nl != -1 else len(buf)
                    why = "nested too deeply to decode" if isinstance(exc, RecursionError) else str(exc)
                    value, end = _BAD, bad_end
                    yield self._q(start_line, f"invalid JSON element #{seen + 1}: {why}", buf[pos:bad_end])
                    break
            if value is not _BAD and _SURROGATE_ESCAPE.search(buf, pos, end):
                problem = _surrogate_problem(value)
                if problem:
                    yield self._q(start_line, f"element #{seen + 1}: {problem}", buf[pos:end])
                    value = _BAD
            pos = end
            seen += 1
            if value is not _BAD:
                index += 1
                yield self._emit(start_line, value, f" (element #{index})")
            expect_value = False
        yield from pending
        self._finish_notes()

    # ---- CSV / TSV --------------------------------------------------------------------------

    def _csv(self, stream, sample, enc, offset):
        info = self.info
        head_text = sample[offset:].decode(enc, "replace")
        delim = self.delimiter
        if delim is None:
            sniffed = self._sniff_delimiter(head_text)
            ext_delim = "\t" if info.format == "tsv" else ","
            delim = sniffed or ext_delim
            if sniffed and sniffed != ext_delim and self.fmt is None:
                info.notes.append(f"delimiter {sniffed!r} sniffed from content (extension suggests {ext_delim!r})")
        info.delimiter = delim
        info.format = "tsv" if delim == "\t" else "csv"
        pending_q: list[QuarantinedLine] = []
        cur_line = [0]

        def text_iter():
            for line_no, text, raw in self._text_lines(stream, sample, enc, offset, lenient=False):
                cur_line[0] = line_no
                if text is None:
                    pending_q.append(self._q(line_no, self._line_error, raw))
                    continue
                if "\x00" in text:
                    pending_q.append(self._q(line_no, f"NUL byte at column {text.index(chr(0)) + 1}", text))
                    continue
                yield text

        csv.field_size_limit(max(self.max_line_bytes, 1 << 20))
        if delim == "\t":
            # real TSVs mix proper quoting with text that merely starts with a quote: no quote
            # processing while splitting (a stray quote can never swallow the following lines)
            reader = csv.reader(text_iter(), delimiter=delim, quoting=csv.QUOTE_NONE, strict=False)
        else:
            reader = csv.reader(text_iter(), delimiter=delim, strict=False)
        unq = _unquote_tsv if delim == "\t" else None
        columns: list[str] | None = None
        header_line = 0
        short_rows = 0
        first_rows: list[tuple[int, list[str]]] = []
        it = iter(reader)

        def next_row():
            while True:
                start = cur_line[0] + 1
                try:
                    row = next(it)
                except StopIteration:
                    return None
                except csv.Error as exc:
                    pending_q.append(self._q(cur_line[0], f"CSV error: {exc}", ""))
                    continue
                if not row or all(not c.strip() for c in row):
                    info.blank_lines += 1
                    continue
                if unq is not None:
                    row = [unq(c) for c in row]
                return start, row

        # header detection on the first few rows
        while len(first_rows) < 20:
            r = next_row()
            if r is None:
                break
            first_rows.append(r)
        yield from pending_q
        pending_q.clear()
        if not first_rows:
            yield self._q(1, "no rows (only blank or unreadable lines)", "")
            self._finish_notes()
            return
        has_header = self.header if self.header is not None else _looks_like_header(
            first_rows[0][1], [r for _, r in first_rows[1:]])
        info.header = has_header
        width = max(len(r) for _, r in first_rows)
        if has_header:
            header_line, hdr = first_rows.pop(0)
            columns = _unique_columns(hdr)
            if columns != [h.strip() for h in hdr]:
                info.notes.append(f"column names made unique/non-blank: {hdr} -> {columns}")
        else:
            columns = ["text"] if width == 1 else [f"col{i + 1}" for i in range(width)]
            info.notes.append(f"no header row detected: columns named {columns[:5]}{'...' if len(columns) > 5 else ''}")
        info.columns = list(columns)
        n = len(columns)
        rows_seen = 0

        def handle(start: int, row: list[str]):
            nonlocal short_rows
            if len(row) > n:
                return self._q(start, f"row has {len(row)} fields, the header has {n} "
                                      f"(unquoted {delim!r} inside a field?)", delim.join(row))
            if len(row) < n:
                short_rows += 1
                row = row + [None] * (n - len(row))  # type: ignore[list-item]
            return self._emit(start, dict(zip(columns, row)))

        for start, row in first_rows:
            rows_seen += 1
            yield handle(start, row)
        while True:
            r = next_row()
            if pending_q:
                yield from pending_q
                pending_q.clear()
            if r is None:
                break
            rows_seen += 1
            yield handle(*r)
        if rows_seen == 0 and has_header:
            info.notes.append("header only, no data rows")
            yield self._q(header_line, "header only: no data rows", delim.join(columns))
        if short_rows:
            info.notes.append(f"{short_rows} row(s) had fewer fields than the header; padded with null")
        self._finish_notes()

    # ---- Parquet ----------------------------------------------------------------------------

    def _parquet(self, stream, sample):
        import pyarrow.parquet as pq

        tmp = None
        try:
            if self.info.compression:
                tmp = tempfile.NamedTemporaryFile(prefix="purify-", suffix=".parquet", delete=False)
                tmp.write(sample)
                shutil.copyfileobj(stream, tmp, 1 << 20)
                tmp.close()
                src = tmp.name
                self.info.notes.append("compressed Parquet spooled to a temporary file")
            else:
                src = str(self.path)
            try:
                pf = pq.ParquetFile(src)
            except Exception as exc:  # corrupt footer etc.
                yield self._q(1, f"unreadable Parquet file: {exc}", sample[:200])
                return
            self.info.columns = list(pf.schema_arrow.names)
            row = 0
            for gi in range(pf.num_row_groups):
                try:
                    for batch in pf.iter_batches(batch_size=self.parquet_batch_rows, row_groups=[gi]):
                        for rec in batch.to_pylist():
                            row += 1
                            yield self._emit(row, rec)
                except Exception as exc:
                    n = pf.metadata.row_group(gi).num_rows
                    yield self._q(row + 1, f"row group {gi} ({n} rows) unreadable: {exc}", "")
                    row += n
            if row == 0:
                yield self._q(1, "Parquet file has no rows", ",".join(self.info.columns))
        finally:
            if tmp is not None:
                Path(tmp.name).unlink(missing_ok=True)


_BAD = object()

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate_problem(value: Any, path: str = "") -> str | None:
    """A message when a decoded JSON value holds an unpaired UTF-16 surrogate (from a ``\\udXXX``
    escape): such text is not valid Unicode and cannot be stored, so the record is quarantined."""
    if isinstance(value, str):
        m = _LONE_SURROGATE.search(value)
        if m:
            where = f"field {path!r}" if path else "the value"
            return (f"{where} holds an unpaired UTF-16 surrogate escape (\\u{ord(m.group()):04x}) at character "
                    f"{m.start() + 1}: not valid Unicode text")
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and _LONE_SURROGATE.search(k):
                return f"a field name holds an unpaired UTF-16 surrogate escape ({k.encode('utf-8', 'backslashreplace').decode()!r})"
            found = _surrogate_problem(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _surrogate_problem(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _split_cr(lines: Iterator[tuple[int, str | None, Any]]) -> Iterator[tuple[int, str | None, Any]]:
    """Treat a lone CR (classic Mac line ending, or CR mixed with LF) as a line break, as text mode does.

    Line numbers then count every CR, LF or CRLF break, so they stay unique (row ids use them) and
    match what an editor shows. Raw CR cannot occur inside a JSON string, so JSONL loses nothing.
    """
    extra = 0
    for line_no, text, raw in lines:
        if text is None or "\r" not in text.rstrip("\r\n"):
            yield line_no + extra, text, raw
            continue
        pieces = text.replace("\r\n", "\n").rstrip("\n").split("\r")
        if pieces and pieces[-1] == "":
            pieces.pop()  # the line ended in a lone CR
        for i, piece in enumerate(pieces):
            yield line_no + extra + i, piece, raw
        extra += len(pieces) - 1


class _Guarded(io.RawIOBase):
    """Wraps the (possibly decompressing) stream: a read error ends the stream and is remembered."""

    def __init__(self, stream, owner: "BatchReader"):
        self._stream = stream
        self._owner = owner

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if self._owner._stream_error is not None:
            return b""
        if self._owner.info.compression and (n is None or n < 0 or n > 8192):
            n = 8192  # small reads: a truncated stream loses at most this much decoded data before the damage
        try:
            return self._stream.read(n)
        except Exception as exc:  # EOFError/OSError (gzip), ZstdError, zlib.error
            self._owner._stream_error = exc
            return b""

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _read_fully(stream, n: int) -> bytes:
    parts = []
    got = 0
    while got < n:
        chunk = stream.read(min(65536, n - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


class _Prefixed(io.RawIOBase):
    """A raw stream that first returns ``prefix`` and then continues with ``stream``."""

    def __init__(self, prefix: bytes, stream: BinaryIO):
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = len(b)
        if self._prefix:
            k = min(n, len(self._prefix))
            b[:k] = self._prefix[:k]
            self._prefix = self._prefix[k:]
            return k
        data = self._stream.read(n)
        k = len(data)
        b[:k] = data
        return k

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if self._prefix:
            if n < 0:
                out, self._prefix = self._prefix + self._stream.read(), b""
                return out
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            return out
        return self._stream.read(n)


_SCAN = re.compile(r'["\\{}\[\],\n]')
_SCAN_STR = re.compile(r'["\\\n]')


def _scan_element(buf: str, pos: int) -> tuple[str, int]:
    """Find where the JSON element starting at ``pos`` ends, tolerating errors inside it.

    Returns ("complete", end) when brackets balance (or a top-level ',' / ']' ends a scalar),
    ("broken", resync) when a raw newline appears inside a string (the element is malformed; resync
    is the start of the next line that opens an object at the element's indentation), or
    ("incomplete", len(buf)) when the buffer ends first.
    """
    depth = 0
    i = pos
    n = len(buf)
    line_start = buf.rfind("\n", 0, pos) + 1
    indent = buf[line_start:pos]
    while i < n:
        m = _SCAN.search(buf, i)
        if m is None:
            return "incomplete", n
        c = m.group()
        i = m.end()
        if c == '"':
            while True:
                m2 = _SCAN_STR.search(buf, i)
                if m2 is None:
                    return "incomplete", n
                c2 = m2.group()
                if c2 == "\\":
                    i = m2.end() + 1
                    continue
                if c2 == "\n":
                    # strings cannot hold raw newlines: resync to the next sibling's opening line
                    nxt = _find_resync(buf, m2.end(), indent)
                    if nxt is None:
                        return "incomplete", n
                    return "broken", nxt
                i = m2.end()
                break
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return "complete", i
            if depth < 0:
                return "complete", m.start()
        elif c == "," and depth == 0:
            return "complete", m.start()
        elif c == "\n" and depth == 0 and i - 1 > pos:
            return "complete", i - 1
    return "incomplete", n


def _find_resync(buf: str, start: int, indent: str) -> int | None:
    pat = re.compile(r"\n" + re.escape(indent) + r"[{\[]")
    m = pat.search(buf, start)
    if m is None:
        return None
    # end the bad chunk just before the separating comma, if any
    j = m.start()
    k = buf.rfind(",", start, j + 1)
    return k if k != -1 and not buf[k + 1:j].strip() else j


_NUMERIC = re.compile(r"^\s*[-+]?(\d+([.,]\d+)*|\d*\.\d+)([eE][-+]?\d+)?\s*$")
_IDENT = re.compile(r"^[^\W\d][\w .\-/()]{0,47}$")
_KNOWN = {"instruction", "input", "output", "prompt", "completion", "question", "answer", "q", "a", "text",
          "label", "id", "response", "context", "sentence", "review", "content", "title", "category", "class",
          "std_answer", "document", "query", "target", "source", "messages", "conversations"}


def _looks_like_header(first: list[str], rest: list[list[str]]) -> bool:
    cells = [c.strip().lstrip("\ufeff") for c in first]
    known = sum(1 for c in cells if c.lower() in _KNOWN)
    if known >= 2 or (known and len(cells) <= 2):
        return True  # even with blank or repeated names: they are made unique later
    if not cells or any(not c for c in cells) or len(set(cells)) != len(cells):
        return False
    if any(_NUMERIC.match(c) for c in cells):
        return False
    if not rest:
        return all(_IDENT.match(c) for c in cells)
    # a column whose values are mostly numbers under a non-numeric first cell: a header
    for j in range(len(cells)):
        vals = [r[j] for r in rest if j < len(r) and r[j].strip()]
        if vals and sum(1 for v in vals if _NUMERIC.match(v)) / len(vals) >= 0.8:
            return True
    # identifier-like first cells much shorter than the data below them
    if all(_IDENT.match(c) for c in cells):
        avg_first = sum(len(c) for c in cells) / len(cells)
        lens = [len(v) for r in rest for v in r]
        avg_rest = sum(lens) / max(1, len(lens))
        return avg_first * 2 <= avg_rest
    return False


def _unique_columns(hdr: list[str]) -> list[str]:
    """Blank names become colN; repeated names (case-insensitive) get _2, _3, ..."""
    out: list[str] = []
    used: set[str] = set()
    for i, h in enumerate(hdr):
        base = (h or "").strip().lstrip("\ufeff").strip() or f"col{i + 1}"
        name, k = base, 1
        while name.lower() in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name.lower())
        out.append(name)
    return out


def _unquote_tsv(v: str) -> str:
    """TSV is read without quote processing; a field wholly enclosed in quotes is unquoted ('""' -> '"')."""
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        inner = v[1:-1]
        if '"' not in inner.replace('""', ""):
            return inner.replace('""', '"')
    return v
