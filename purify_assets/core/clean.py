"""Crude clean-up: normalize text, apply heuristic filters, and say why for every row.

CONTRACT (used by ``purify_assets.assets.clean``):

- ``CleanConfig``: every threshold as a field with a documented default; ``CleanConfig.from_dict``
  accepts the ``clean`` section of the parameters (unknown keys raise ``ValueError``).
- ``clean_row(instruction, input, output, config, has_output=True) -> CleanOutcome``: normalized
  fields, ``kept`` False when any filter fired, ``reasons`` (rejection reason codes, first is the
  primary), ``modifications`` (codes of changes applied, e.g. ``html_stripped``, ``pii:email``),
  language, PII counts.
- ``REASON_CODES``: code -> one-line description, for every rejection and modification code.
- ``row_hash(instruction, input, output)``: stable hex digest of the normalized row (exact dedup key).
- ``compose_text(instruction, input, output, template)``: the text to embed. Templates:
  ``"instruction"`` (seed 001's choice), ``"instruction+input"``, ``"output"``, ``"all"``, or a
  format string such as ``"{instruction}\\n{input}"``.
- ``text_hash(text)``: stable hex digest of the composed text (embedding cache key).

Normalization of each field, in order (each step that changes a field adds its modification code):

1. ``nfkc``: Unicode NFKC (full-width forms, compatibility characters, NBSP -> space; note that
   Chinese full-width punctuation such as ``，`` becomes ASCII). Korean compatibility jamo
   (``ㅋㅋ``, ``ㅠㅠ``, ``ㅡ``) are left as they are: NFKC would turn them into conjoining jamo that
   fuse with the neighbouring syllables.
2. ``control_chars_removed``: C0/C1 control characters (tab and newline kept; CR/CRLF, U+2028/9
   become newlines), zero-width characters (U+200B-U+200F, U+2060-U+2064), bidi controls, soft
   hyphen and BOM (U+FEFF) are removed.
3. ``html_stripped`` / ``html_entities_unescaped``: tags of *known HTML elements* only (``<p>``,
   ``<br/>``, ``<div class=..>``, ...; block tags become a newline), ``<script>``/``<style>`` with
   their content, and ``<!-- comments -->`` are removed; then entities are unescaped
   (``&amp;`` -> ``&``). ``#include <iostream>``, ``List<String>`` or ``<noinput>`` are not tags.
4. ``markdown_stripped``: ``**bold**`` markers, ATX heading markers (``## Title`` -> ``Title``;
   a line of only ``#`` is dropped), horizontal rules (a line of only ``---``/``***``/``___``),
   blockquote markers (``> ``), images (``![alt](url)`` -> ``alt``) and links (``[text](url)`` ->
   ``text``). Kept on purpose: list bullets and numbers, tables, ``_underscores_`` and single ``*``
   (identifiers and arithmetic), fenced code blocks and inline code.
5. ``whitespace_normalized``: runs of spaces/tabs inside a line become one space, trailing spaces
   go, three or more newlines become two, the field is stripped. Leading indentation is kept.
6. ``null_like:<field>``: a field whose whole value is null-like (``CleanConfig.null_like``,
   compared case-insensitively after stripping surrounding brackets, quotes, backslashes and
   punctuation, e.g. ``<noinput>``, ``"No input."``, ``N/A``) becomes empty.
7. ``pii:<type>``: PII redacted with typed placeholders (see ``purify_assets.core.pii``).

Code is protected: inside fenced code blocks and inline code nothing is changed by steps 3-5, and
a field that *looks like code* as a whole (several lines ending in ``;``/``{``/``}`` or starting
with ``def``/``class``/``import``/``#include``/``function``/``<?php``/``<!DOCTYPE``...) keeps its
HTML and markdown and its indentation (only trailing spaces and 3+ blank lines are touched).
Markup answers are protected too: when the instruction asks for markup or code (it mentions HTML,
XML, tags, CSS, code, program, function, JSON, SQL, ...) the input and output keep their HTML and
markdown; and a field that stripping would shrink to under 40% of its non-space characters *is*
markup (``<img src="chart.png">``, ``<table>...</table>``) and is left whole.

Filters (rejection reason codes, in the order they are listed in ``reasons``): see ``REASON_CODES``.
The row's length is the sum of its three cleaned fields. The language is the instruction's (the
field seed 001 embeds), or the output's when the instruction has fewer than
``min_letters_for_language`` letters: Hangul-, Kana- or Han-dominated text is decided by script
(``ko``/``ja``/``zh``) without any model, ASCII text rich in English function words is ``en``
(a shortcut: lingua costs about a millisecond per short text); other text goes to lingua (restricted to
``lingua_languages`` plus the targets) unless ``language_detection="script"``.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

from purify_assets.core import pii as _pii

REASON_CODES: dict[str, str] = {
    # rejections (first listed = primary)
    "empty_instruction": "instruction (the text, for plain-text layouts) is empty or null-like after cleaning",
    "empty_output": "output is empty or null-like after cleaning (only for layouts that have an output)",
    "too_short": "row has fewer than min_chars characters in total",
    "too_long": "row has more than max_chars characters or more than max_approx_tokens approximate tokens",
    "symbol_heavy": "more than max_symbol_ratio of the non-space characters are neither letters nor digits",
    "repetitive": "a field repeats itself: duplicate n-gram ratio above max_dup_ngram_ratio or repeated-line "
                  "ratio above max_repeated_line_ratio",
    "output_equals_input": "output is identical to the input or to the instruction (case and spacing ignored)",
    "output_in_input": "output (at least output_in_input_min_chars long) is contained in the input or instruction",
    "wrong_language": "detected language is not one of target_languages",
    # modifications
    "nfkc": "Unicode NFKC normalization changed the text",
    "control_chars_removed": "control, zero-width, bidi or BOM characters removed (line breaks normalized)",
    "html_stripped": "HTML tags, comments or script/style blocks removed",
    "html_entities_unescaped": "HTML entities such as &amp; unescaped",
    "markdown_stripped": "markdown artefacts removed (bold markers, heading markers, rules, quotes, links, images)",
    "whitespace_normalized": "inner runs of spaces, trailing spaces or extra blank lines removed",
    "null_like:instruction": "instruction was a null-like value (e.g. N/A) and was emptied",
    "null_like:input": "input was a null-like value (e.g. <noinput>) and was emptied",
    "null_like:output": "output was a null-like value (e.g. <nooutput>) and was emptied",
    "pii:email": "e-mail address redacted as [EMAIL]",
    "pii:phone": "phone number redacted as [PHONE]",
    "pii:rrn": "Korean resident registration number redacted as [RRN]",
    "pii:card": "credit card number (Luhn-checked) redacted as [CARD]",
    "pii:ip": "IP address redacted as [IP]",
}
REJECTION_CODES: tuple[str, ...] = ("empty_instruction", "empty_output", "too_short", "too_long", "symbol_heavy",
                                    "repetitive", "output_equals_input", "output_in_input", "wrong_language")

DEFAULT_NULL_LIKE: tuple[str, ...] = (
    "", "<noinput>", "noinput", "no input", "<no input>", "no input required", "no input needed",
    "<nooutput>", "no output", "N/A", "n/a", "NA", "null", "none", "nil", "nan", "undefined",
    "-", "--", "—", ".", "...", "无输入", "<无输入>", "无",
)
DEFAULT_LINGUA_LANGUAGES: tuple[str, ...] = (
    "en", "ko", "zh", "ja", "de", "fr", "es", "it", "pt", "nl", "ru", "vi", "id", "tr", "pl", "ar", "hi", "th",
)


@dataclass
class CleanConfig:
    """Every knob of the crude clean-up, with its default.

    Normalization
      nfkc (True): Unicode NFKC normalization.
      strip_control (True): remove control / zero-width / bidi / BOM characters.
      strip_html (True): remove known HTML tags, comments, script/style blocks; unescape entities.
      strip_markdown (True): remove markdown artefacts (see module doc; code is never touched).
      normalize_whitespace (True): collapse inner space runs, trailing spaces, 3+ newlines.
      null_like (DEFAULT_NULL_LIKE): whole-field values treated as empty, compared case-insensitively
        after stripping surrounding brackets/quotes/punctuation ("<noinput>", "N/A", "none", "-", ...).
      redact_pii (True): redact PII with typed placeholders.
      pii_types (None = all of email, rrn, card, phone, ip).
    Filters
      min_chars (8): a row with fewer characters in total (instruction + input + output) is too_short
        (an instruction and its answer under 8 characters teach nothing; NSMC one-word reviews go too).
      max_chars (20000): more characters in total is too_long.
      max_approx_tokens (4096): more approximate tokens is too_long (1 per CJK character, 1 per 4 other
        characters).
      max_dup_ngram_ratio (0.5): repetitive when, in a field of at least repetition_min_tokens tokens,
        more than this share of its word n-grams (n = dup_ngram_n) repeat an earlier n-gram. Tokens
        are words, and single characters for Han/Kana (no spaces in Chinese/Japanese).
      dup_ngram_n (3), repetition_min_tokens (20).
      max_repeated_line_ratio (0.3): repetitive when more than this share of a field's lines (lines of
        more than 3 characters, fields with at least repeated_line_min_lines (4) of them) repeat an
        earlier line.
      max_symbol_ratio (0.5): symbol_heavy when more than this share of the row's non-space
        characters are neither letters nor digits (checked when it has at least symbol_min_chars (3)).
      output_in_input_min_chars (20): output_in_input only fires for outputs at least this long
        (short answers such as "Yes" or an extracted name are legitimately contained in the input).
      check_output_vs_input (True): enable output_equals_input and output_in_input.
      target_languages (None = any): ISO 639-1 codes such as ["ko", "en"]; other languages are
        wrong_language. Rows whose language cannot be told (too few letters) are not rejected.
      language_detection ("auto"): "auto" = script shortcut for Hangul/Kana/Han, lingua for the rest;
        "script" = script shortcut only (Latin text gets no language); "off" = no detection (and no
        wrong_language filter).
      lingua_languages (DEFAULT_LINGUA_LANGUAGES): the languages lingua chooses among (plus targets).
      min_letters_for_language (3): fewer letters -> language unknown (None).
    Checks
      max_rejection_rate (0.5): the clean_rows asset check warns when a batch loses a larger share.
    """

    nfkc: bool = True
    strip_control: bool = True
    strip_html: bool = True
    strip_markdown: bool = True
    normalize_whitespace: bool = True
    null_like: list[str] = field(default_factory=lambda: list(DEFAULT_NULL_LIKE))
    redact_pii: bool = True
    pii_types: list[str] | None = None
    min_chars: int = 8
    max_chars: int = 20000
    max_approx_tokens: int = 4096
    max_dup_ngram_ratio: float = 0.5
    dup_ngram_n: int = 3
    repetition_min_tokens: int = 20
    max_repeated_line_ratio: float = 0.5
    repeated_line_min_lines: int = 4
    repeated_line_min_chars: int = 10
    max_symbol_ratio: float = 0.5
    symbol_min_chars: int = 3
    output_in_input_min_chars: int = 20
    output_in_input_min_share: float = 0.7
    check_output_vs_input: bool = True
    target_languages: list[str] | None = None
    language_detection: str = "auto"
    lingua_languages: list[str] = field(default_factory=lambda: list(DEFAULT_LINGUA_LANGUAGES))
    min_letters_for_language: int = 3
    max_rejection_rate: float = 0.5

    def __post_init__(self) -> None:
        if self.language_detection not in ("auto", "script", "off"):
            raise ValueError(f"clean.language_detection must be auto|script|off, got {self.language_detection!r}")
        if self.target_languages is not None:
            if isinstance(self.target_languages, str):
                self.target_languages = [self.target_languages]
            self.target_languages = [str(x).strip().lower() for x in self.target_languages]
        if self.pii_types is not None:
            _pii._check_types(self.pii_types)
        for name in ("max_dup_ngram_ratio", "max_repeated_line_ratio", "max_symbol_ratio", "max_rejection_rate"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"clean.{name} must be within [0, 1], got {v}")
        self._null_keys = frozenset(_null_key(x) for x in self.null_like)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "CleanConfig":
        if not d:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in d if k not in known)
        if unknown:
            raise ValueError(f"unknown clean parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class CleanOutcome:
    instruction: str
    input: str
    output: str | None
    kept: bool
    reasons: list[str] = field(default_factory=list)
    modifications: list[str] = field(default_factory=list)
    lang: str | None = None
    pii_counts: dict[str, int] = field(default_factory=dict)
    chars: int = 0  # characters of the cleaned row (instruction + input + output)
    approx_tokens: int = 0


# ------------------------------------------------------------------------------------------------
# precompiled patterns

_CTRL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064"
                   "\u2066-\u206f\ufeff\ufff9-\ufffb]")
_NEWLINES = re.compile("\r\n?|[\u2028\u2029\x85]")
_HTML_BLOCK_TAGS = ("p|div|br|hr|li|ul|ol|tr|table|thead|tbody|tfoot|h[1-6]|section|article|header|footer|nav|"
                    "blockquote|pre|dl|dt|dd|form|body|html|head|title|center|figure|figcaption|aside|main")
_HTML_INLINE_TAGS = ("a|b|i|u|s|em|strong|span|font|img|code|sup|sub|small|big|tt|strike|del|ins|mark|abbr|"
                     "label|button|select|option|textarea|td|th|meta|link|iframe|cite|q|kbd|var|time|wbr|nobr|"
                     "col|colgroup|caption|picture|source|video|audio|svg|path|input")
_HTML_SCRIPT = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.I | re.S)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_HTML_BLOCK = re.compile(rf"</?(?:{_HTML_BLOCK_TAGS})(?:\s[^<>]*)?/?>", re.I)
_HTML_INLINE = re.compile(rf"</?(?:{_HTML_INLINE_TAGS})(?:\s[^<>]*)?/?>", re.I)
_HTML_ENTITY = re.compile(r"&(?:#\d{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_CODE_SPANS = re.compile(r"(```[\s\S]*?(?:```|\Z)|~~~[\s\S]*?(?:~~~|\Z)|`[^`\n]+`)")
_MD_IMAGE = re.compile(r"!\[([^\]\n]*)\]\([^)\s]+(?:\s+\"[^\"]*\")?\)")
_MD_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\((?:https?://|www\.|/|#|mailto:)[^)\s]*(?:\s+\"[^\"]*\")?\)")
_MD_BOLD = re.compile(r"(?<![\w*])\*\*(?=\S)([^\n*]+?)(?<=\S)\*\*(?![\w*])")
_MD_HEADING = re.compile(r"^#{1,6}[ \t]+(?=\S)", re.M)
_MD_EMPTY_HEADING = re.compile(r"^#{1,6}[ \t]*$\n?", re.M)
_MD_RULE = re.compile(r"^[ \t]{0,3}(?:[-*_][ \t]*){3,}$\n?", re.M)
_MD_QUOTE = re.compile(r"^[ \t]{0,3}>[ \t]?", re.M)
_MD_HINT = re.compile(r"\*\*|^[ \t]{0,3}(?:#|>|[-*_][ \t]*[-*_])|\]\(", re.M)
_WS_INNER = re.compile(r"(?<=\S)(?:[ \t]{2,}|\t)(?=\S)")
_WS_TRAIL = re.compile(r"[ \t]+(?=\n|\Z)")
_WS_NL = re.compile(r"\n{3,}")
_WS_ANY = re.compile(r"(?<=\S)[ \t]{2,}|\t|[ \t]\n|\n\n\n")
_CODE_LINE = re.compile(
    r"^\s*(?:def |class |import |from \S+ import |#include|#define|function\b|const |let |var |public |private |"
    r"protected |static |return\b|if\s*\(|for\s*\(|while\s*\(|} else|<\?php|<!DOCTYPE|<html|<head|<body|<script|"
    r"SELECT |INSERT |CREATE |package |using |fn |func |#!/|print\(|elif |else:|try:|except\b|with |raise |"
    r"console\.|System\.|[A-Za-z_][\w.\[\]]*\s*[+\-*/]?=\s*\S)|[;{}:]\s*$", re.M | re.I)
# an instruction asking for markup or code: its input/output keep their HTML and markdown
_MARKUP_TASK = re.compile(r"\b(?:html|xml|markup|tags?|css|svg|web ?page|code|program|script|function|markdown|"
                          r"latex|regex|json|sql)\b", re.I)
_NULL_STRIP = " \t\n<>[](){}`\"'\\.,:;!?*_-—–"

_COMPAT_JAMO = re.compile(r"([\u3131-\u318e\uffa0-\uffdc]+)")
_HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LETTER = re.compile(r"[^\W\d_]")
_CJK_ANY = re.compile(r"[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3\uf900-\ufaff]")
# "symbols": anything but letters, digits, spaces and everyday punctuation/arithmetic (combining
# marks count: stacked combining junk such as U+0326 runs is a classic garbage pattern)
_SYMBOL = re.compile(r"[^\w\s.,!?;:'\"()\-+=/*%\u3001\u3002\uff0c\uff01\uff1f]|_|[\u0300-\u036f]")
_SPACE = re.compile(r"\s")
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+")


def _null_key(s: str) -> str:
    return " ".join(s.strip(_NULL_STRIP).split()).casefold()


def _looks_like_code(s: str) -> bool:
    if "\n" not in s:
        return False
    hits = len(_CODE_LINE.findall(s))
    if hits < 2:
        return False
    lines = s.count("\n") + 1
    return hits >= 3 or hits / lines >= 0.3


def _outside_code(s: str, fn) -> str:
    """Apply ``fn`` to the parts of ``s`` outside fenced code blocks and inline code."""
    if "`" not in s and "~~~" not in s:
        return fn(s)
    parts = _CODE_SPANS.split(s)
    for i in range(0, len(parts), 2):
        if parts[i]:
            parts[i] = fn(parts[i])
    return "".join(parts)


def _strip_html(s: str) -> str:
    s = _HTML_SCRIPT.sub("", s)
    s = _HTML_COMMENT.sub("", s)
    s = _HTML_BLOCK.sub("\n", s)
    return _HTML_INLINE.sub("", s)


def _strip_markdown(s: str) -> str:
    s = _MD_IMAGE.sub(r"\1", s)
    s = _MD_LINK.sub(r"\1", s)
    s = _MD_BOLD.sub(r"\1", s)
    s = _MD_EMPTY_HEADING.sub("", s)
    s = _MD_HEADING.sub("", s)
    s = _MD_RULE.sub("", s)
    return _MD_QUOTE.sub("", s)


def _markup_heavy(before: str, after: str) -> bool:
    """True when stripping tags removed most of the text: the field *is* markup (e.g. an HTML answer)."""
    b = len(before) - len(_SPACE.findall(before))
    a = len(after) - len(_SPACE.findall(after))
    return b > 0 and a < 0.4 * b


def _normalize_field(s: str, cfg: CleanConfig, mods: list[str], markup_task: bool = False) -> str:
    if cfg.nfkc and not s.isascii() and not unicodedata.is_normalized("NFKC", s):
        if _COMPAT_JAMO.search(s) is None:
            t = unicodedata.normalize("NFKC", s)
        else:  # keep ㅋㅋ/ㅠㅠ: NFKC would turn them into conjoining jamo that fuse with neighbours
            parts = _COMPAT_JAMO.split(s)
            t = "".join(p if i % 2 else unicodedata.normalize("NFKC", p) for i, p in enumerate(parts))
        if t != s:
            s = t
            mods.append("nfkc")
    if cfg.strip_control:
        t = _NEWLINES.sub("\n", s) if "\r" in s or not s.isascii() else s
        if not t.isascii() or _CTRL.search(t) is not None:
            t = _CTRL.sub("", t)
        if t != s:
            s = t
            mods.append("control_chars_removed")
    code = None
    if cfg.strip_html and ("<" in s or "&" in s):
        code = markup_task or _looks_like_code(s)
        if not code:
            if "<" in s:
                t = _outside_code(s, _strip_html)
                if t != s:
                    if _markup_heavy(s, t):
                        code = True  # the field is HTML, not text with HTML junk: keep it whole
                    else:
                        s = t
                        mods.append("html_stripped")
        if not code and "&" in s and _HTML_ENTITY.search(s):
            t = _outside_code(s, html.unescape)
            if t != s:
                s = t
                mods.append("html_entities_unescaped")
    if cfg.strip_markdown and _MD_HINT.search(s):
        if code is None:
            code = _looks_like_code(s)
        if not code:
            t = _outside_code(s, _strip_markdown)
            if t != s:
                s = t
                mods.append("markdown_stripped")
    if cfg.normalize_whitespace:
        stripped = s.strip()
        if _WS_ANY.search(stripped):
            if code is None:
                code = _looks_like_code(stripped)
            t = _WS_TRAIL.sub("", stripped)
            if not code:
                t = _outside_code(t, lambda x: _WS_INNER.sub(" ", x))
            t = _WS_NL.sub("\n\n", t).strip()
            if t != stripped:
                mods.append("whitespace_normalized")
            s = t
        else:
            s = stripped
    return s


# ------------------------------------------------------------------------------------------------
# language


@lru_cache(maxsize=8)
def _lingua_detector(codes: tuple[str, ...]):
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    isos = []
    for c in codes:
        try:
            isos.append(getattr(IsoCode639_1, c.upper()))
        except AttributeError:
            raise ValueError(f"language code {c!r} is not known to lingua") from None
    if len(isos) < 2:
        isos.append(IsoCode639_1.EN if codes != ("en",) else IsoCode639_1.DE)
    return LanguageDetectorBuilder.from_iso_codes_639_1(*isos).build()


_EN_WORD = re.compile(r"[A-Za-z']+")
# function words that are English and not (as whole words) common German/French/Spanish/Dutch/...
_EN_STOP = frozenset(
    "the of and to is are was were that this with for you your what which how be it its on as by from an have "
    "has will can not they their these those there about would should could into or following given write "
    "describe explain each other than then when who why does do".split())


def _looks_english(sample: str) -> bool:
    """Cheap shortcut: ASCII text with at least 2 English function words making up 20% of its words."""
    words = _EN_WORD.findall(sample.lower())
    if len(words) < 3:
        return False
    hits = sum(1 for w in words if w in _EN_STOP)
    return hits >= 2 and hits * 5 >= len(words)


def detect_language(text: str, config: CleanConfig | None = None) -> str | None:
    """ISO 639-1 code of ``text``'s language, or None when it has too few letters to tell."""
    cfg = config or _DEFAULT
    if cfg.language_detection == "off" or not text:
        return None
    sample = text[:400]
    return _detect(sample, len(_LETTER.findall(sample)), cfg)


def _detect(sample: str, letters: int, cfg: CleanConfig) -> str | None:
    if letters == 0:
        return None
    if not sample.isascii():
        hangul = len(_HANGUL.findall(sample))
        if hangul * 2 >= letters:
            return "ko"
        kana = len(_KANA.findall(sample))
        han = len(_HAN.findall(sample))
        if kana and (kana + han) * 2 >= letters:
            return "ja"
        if han * 2 >= letters:
            return "zh"
    if letters < cfg.min_letters_for_language or cfg.language_detection == "script":
        return None
    if sample.isascii() and _looks_english(sample):
        return "en"
    codes = tuple(sorted(set(cfg.lingua_languages) | set(cfg.target_languages or ())))
    lang = _lingua_detector(codes).detect_language_of(sample)
    return lang.iso_code_639_1.name.lower() if lang is not None else None


# ------------------------------------------------------------------------------------------------
# filters


def approx_tokens(text: str) -> int:
    """1 token per CJK character plus 1 per 4 other characters (rounded up)."""
    if text.isascii():
        return (len(text) + 3) // 4
    cjk = len(_CJK_ANY.findall(text))
    return cjk + (len(text) - cjk + 3) // 4


def dup_ngram_ratio(text: str, n: int = 3, min_tokens: int = 20) -> float:
    """Share of the word n-grams of ``text`` that repeat an earlier n-gram (0 for short texts)."""
    toks = _TOKEN.findall(text)
    if len(toks) < max(min_tokens, n + 1):
        return 0.0
    grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def repeated_line_ratio(text: str, min_lines: int = 4, min_chars: int = 10) -> float:
    """Share of the lines (of at least ``min_chars`` characters) that repeat an earlier line."""
    lines = [x.strip() for x in text.split("\n")]
    lines = [x for x in lines if len(x) >= min_chars]
    if len(lines) < min_lines:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def symbol_ratio(text: str) -> float:
    """Share of the non-space characters that are symbols (see ``_SYMBOL``)."""
    nonspace = sum(map(len, text.split()))
    if nonspace <= 0:
        return 0.0
    return len(_SYMBOL.findall(text)) / nonspace


def _same(a: str) -> str:
    return " ".join(a.split())


# ------------------------------------------------------------------------------------------------
# the row


def clean_row(instruction: str | None, input: str | None, output: str | None,
              config: CleanConfig, has_output: bool = True) -> CleanOutcome:
    cfg = config
    mods: list[str] = []
    null_keys = cfg._null_keys
    pii_counts: dict[str, int] = {}
    vals: list[str] = []
    markup_task = bool(instruction) and cfg.strip_html and _MARKUP_TASK.search(instruction[:2000]) is not None
    for name, raw in (("instruction", instruction), ("input", input), ("output", output)):
        if raw is None or (name == "output" and not has_output):
            vals.append("")
            continue
        s = raw if isinstance(raw, str) else str(raw)
        s = _normalize_field(s, cfg, mods, markup_task and name != "instruction") if s else s
        if s and len(s) <= 40 and _null_key(s) in null_keys:
            s = ""
            mods.append(f"null_like:{name}")
        if s and cfg.redact_pii:
            s, counts = _pii.redact(s, cfg.pii_types)
            for t, k in counts.items():
                pii_counts[t] = pii_counts.get(t, 0) + k
                mods.append(f"pii:{t}")
        vals.append(s)
    ins, inp, out = vals

    reasons: list[str] = []
    if not ins:
        reasons.append("empty_instruction")
    if has_output and not out:
        reasons.append("empty_output")
    chars = len(ins) + len(inp) + len(out)
    joined = ins if not (inp or out) else "\n".join(x for x in (ins, inp, out) if x)
    toks = approx_tokens(joined)
    if not reasons and chars < cfg.min_chars:
        reasons.append("too_short")
    if chars > cfg.max_chars or toks > cfg.max_approx_tokens:
        reasons.append("too_long")
    if chars >= cfg.symbol_min_chars and symbol_ratio(joined) > cfg.max_symbol_ratio:
        reasons.append("symbol_heavy")
    # repetition: only fields long enough to hold repetition_min_tokens tokens are looked at
    for s in (ins, inp, out):
        if len(s) >= cfg.repetition_min_tokens * 2 and (
                dup_ngram_ratio(s, cfg.dup_ngram_n, cfg.repetition_min_tokens) > cfg.max_dup_ngram_ratio
                or repeated_line_ratio(s, cfg.repeated_line_min_lines, cfg.repeated_line_min_chars)
                > cfg.max_repeated_line_ratio):
            reasons.append("repetitive")
            break
    if has_output and out and cfg.check_output_vs_input:
        o = _same(out)
        i1 = _same(ins)
        i2 = _same(inp) if inp else ""
        if o == i1 or (i2 and o == i2):
            reasons.append("output_equals_input")
        elif len(o) >= cfg.output_in_input_min_chars and any(
                o in c and len(o) >= cfg.output_in_input_min_share * len(c) for c in (i1, i2) if c):
            reasons.append("output_in_input")
    lang = None
    if cfg.language_detection != "off":
        sample = ins[:400]
        letters = len(_LETTER.findall(sample))
        if letters < cfg.min_letters_for_language and out:
            sample = out[:400]
            letters = len(_LETTER.findall(sample))
        lang = _detect(sample, letters, cfg)
        if cfg.target_languages and lang is not None and lang not in cfg.target_languages:
            reasons.append("wrong_language")
    seen: set[str] = set()
    mods = [m for m in mods if not (m in seen or seen.add(m))]
    return CleanOutcome(ins, inp, out if has_output else None, not reasons, reasons, mods, lang, pii_counts,
                        chars, toks)


_DEFAULT = CleanConfig()


def _digest(s: str) -> str:
    return hashlib.blake2b(s.encode("utf-8"), digest_size=16).hexdigest()


def row_hash(instruction: str | None, input: str | None, output: str | None) -> str:
    return _digest("\x1f".join(x or "" for x in (instruction, input, output)))


def text_hash(text: str) -> str:
    return _digest(text)


COMPOSE_TEMPLATES = ("instruction", "instruction+input", "output", "all")


def compose_text(instruction: str | None, input: str | None, output: str | None, template: str = "instruction") -> str:
    """The text to embed.

    ``"instruction"``: the instruction; ``"instruction+input"``: instruction, newline, input (when
    non-empty); ``"output"``: the output; ``"all"``: the non-empty fields joined by newlines; any
    other value is a format string over ``{instruction}``, ``{input}``, ``{output}`` (missing fields
    are empty; the result is stripped).
    """
    ins, inp, out = instruction or "", input or "", output or ""
    if template == "instruction":
        return ins
    if template == "instruction+input":
        return f"{ins}\n{inp}" if inp else ins
    if template == "output":
        return out
    if template == "all":
        return "\n".join(x for x in (ins, inp, out) if x)
    if "{" not in template:
        raise ValueError(f"unknown text template {template!r}: use one of {list(COMPOSE_TEMPLATES)} "
                         "or a format string with {instruction}, {input}, {output}")
    try:
        return template.format(instruction=ins, input=inp, output=out).strip()
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"text template {template!r}: {exc!r}; allowed fields: instruction, input, output") from None
