"""Tests for the generated demo dataset (purify_assets.core.demo)."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from purify_assets.core import demo
from purify_assets.core.demo import DEMO_LANGS, DEMO_PLANTED, DEMO_TASK_TYPES, demo_planted, write_demo_batches

NULL_LIKE = {"<noinput>", "N/A", ""}
HTML_MARKS = ("<p>", "<br/>", "&nbsp;", "<div class=")
CONTROL = re.compile("[\u200b\u200d\ufeff\x07\x1b]")
# no \b: in Chinese rows the address sits right next to CJK characters, which count as word characters
EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])user\d+@example\.com(?![A-Za-z0-9])")
PHONE = re.compile(r"(?<!\d)010-\d{4}-\d{4}(?!\d)")


def _read(paths: list[Path]) -> dict:
    """Parse the three files the way an ingester would; returns records per file plus bad JSONL lines."""
    jsonl, bad = [], []
    for no, line in enumerate(paths[0].read_text(encoding="utf-8").splitlines(), 1):
        try:
            jsonl.append(json.loads(line))
        except json.JSONDecodeError:
            bad.append((no, line))
    array = json.loads(paths[1].read_text(encoding="utf-8"))
    with paths[2].open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        table = [dict(zip(header, row, strict=True)) for row in reader]
    return {"jsonl": jsonl, "bad": bad, "json": array, "csv": table, "csv_header": header}


def _mapped(parsed: dict) -> list[dict]:
    """All rows in one shape: instruction / input / output, plus labels and batch number."""
    rows = [dict(instruction=r["instruction"], input=r["input"], output=r["output"], task_type=r["task_type"],
                 lang=r["lang"], batch=1) for r in parsed["jsonl"]]
    rows += [dict(instruction=r["prompt"], input=None, output=r["completion"], task_type=r["task_type"],
                  lang=r["lang"], batch=2) for r in parsed["json"]]
    rows += [dict(instruction=r["question"], input=None, output=r["answer"], task_type=r["task_type"],
                  lang=r["lang"], batch=3) for r in parsed["csv"]]
    return rows


def _text(r: dict) -> str:
    return "\n".join(x for x in (r["instruction"], r["input"], r["output"]) if x)


@pytest.fixture(scope="module")
def default_files(tmp_path_factory) -> list[Path]:
    return write_demo_batches(tmp_path_factory.mktemp("demo"), seed=0)


@pytest.fixture(scope="module")
def parsed(default_files) -> dict:
    return _read(default_files)


def test_writes_three_named_files(default_files, tmp_path):
    assert [p.name for p in default_files] == ["demo_batch_1.jsonl", "demo_batch_2.json", "demo_batch_3.csv"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in default_files)
    # a folder that does not exist yet is created
    out = write_demo_batches(tmp_path / "a" / "b", rows_per_batch=60)
    assert all(p.parent == tmp_path / "a" / "b" and p.is_file() for p in out)


def test_deterministic_for_a_seed_and_different_for_another(tmp_path, default_files):
    again = write_demo_batches(tmp_path / "again", seed=0)
    other = write_demo_batches(tmp_path / "other", seed=1)
    for a, b, c in zip(default_files, again, other):
        assert a.read_bytes() == b.read_bytes(), a.name
        assert a.read_bytes() != c.read_bytes(), a.name


def test_formats_parse_and_hold_rows_per_batch(parsed):
    n = 240
    assert len(parsed["jsonl"]) == n
    assert len(parsed["bad"]) == DEMO_PLANTED["malformed_jsonl_lines"] == 3
    assert all(no > 5 for no, _ in parsed["bad"])  # format sniffing sees valid lines first
    assert all(set(r) == {"instruction", "input", "output", "task_type", "lang"} for r in parsed["jsonl"])
    assert isinstance(parsed["json"], list) and len(parsed["json"]) == n
    assert all(set(r) == {"prompt", "completion", "task_type", "lang"} for r in parsed["json"])
    assert parsed["csv_header"] == ["question", "answer", "task_type", "lang"]
    assert len(parsed["csv"]) == n
    # multi-line fields survive the CSV quoting
    assert sum("\n" in r["question"] for r in parsed["csv"]) > n // 2


def test_every_task_type_and_language_in_every_file(parsed):
    rows = _mapped(parsed)
    for batch in (1, 2, 3):
        in_batch = [r for r in rows if r["batch"] == batch]
        assert {r["task_type"] for r in in_batch} == set(DEMO_TASK_TYPES)
        assert {r["lang"] for r in in_batch} == set(DEMO_LANGS)
        assert {(r["task_type"], r["lang"]) for r in in_batch} == {(t, lg) for t in DEMO_TASK_TYPES
                                                                   for lg in DEMO_LANGS}
    shares = Counter(r["lang"] for r in rows)
    total = len(rows)
    assert 0.45 <= shares["ko"] / total <= 0.55
    assert 0.25 <= shares["en"] / total <= 0.35
    assert 0.15 <= shares["zh"] / total <= 0.25


def test_language_field_matches_the_script(parsed):
    hangul = re.compile("[\uac00-\ud7a3]")
    han = re.compile("[\u4e00-\u9fff]")
    for r in parsed["jsonl"]:
        if len(r["instruction"]) < 12:  # the planted too-short rows
            continue
        if r["lang"] == "ko":
            assert hangul.search(r["instruction"]), r
        elif r["lang"] == "zh":
            assert han.search(r["instruction"]) and not hangul.search(r["instruction"]), r
        else:
            assert not hangul.search(r["instruction"]) and not han.search(r["instruction"]), r


def test_instruction_templates_separate_task_types_but_content_varies(parsed):
    rows = [r for r in parsed["jsonl"] if not CONTROL.search(r["instruction"]) and len(r["instruction"]) >= 12]
    task_of: dict[str, set] = {}
    for r in rows:
        task_of.setdefault(r["instruction"], set()).add(r["task_type"])
    assert all(len(t) == 1 for t in task_of.values()), {k: v for k, v in task_of.items() if len(v) > 1}
    # a handful of templates per task and language (translation also names the target language)
    per_task = Counter(next(iter(t)) for t in task_of.values())
    for task in DEMO_TASK_TYPES:  # 3 languages x 3 templates (x 2 target languages for translation)
        assert 3 <= per_task[task] <= (18 if task == "translation" else 9), (task, per_task[task])
    for task in DEMO_TASK_TYPES:
        inputs = {r["input"] for r in rows if r["task_type"] == task}
        assert len(inputs) > 15, task


def test_planted_counts(parsed):
    rows = _mapped(parsed)
    p = DEMO_PLANTED

    key_counts = Counter((r["instruction"], r["input"], r["output"]) for r in rows)
    assert sum(c - 1 for c in key_counts.values()) == p["exact_duplicate_copies"] == 36
    b2 = Counter((r["instruction"], r["output"]) for r in rows if r["batch"] == 2)
    b3 = Counter((r["instruction"], r["output"]) for r in rows if r["batch"] == 3)
    assert sum(min(b2[k], b3[k]) for k in b2) == p["cross_batch_duplicates"]
    b1_as_prompt = {(r["instruction"] + "\n\n" + r["input"], r["output"]) for r in rows if r["batch"] == 1}
    assert sum(b2[k] for k in b1_as_prompt) == p["cross_layout_copies"]

    assert sum(1 for r in rows if not r["output"].strip()) == p["empty_outputs"]
    assert sum(1 for r in parsed["jsonl"] if r["input"] in NULL_LIKE and len(r["instruction"]) >= 12) \
        == p["null_like_inputs"]
    assert {r["input"] for r in parsed["jsonl"] if len(r["instruction"]) >= 12} >= NULL_LIKE
    assert sum(1 for r in rows if any(m in _text(r) for m in HTML_MARKS)) == p["html_junk"]
    assert {m for r in rows for m in HTML_MARKS if m in _text(r)} == set(HTML_MARKS)
    assert sum(1 for r in rows if CONTROL.search(_text(r))) == p["control_chars"]
    assert sum(1 for r in rows if EMAIL.search(_text(r)) or PHONE.search(_text(r))) == p["pii_rows"]
    assert sum(len(EMAIL.findall(_text(r))) for r in rows) == p["pii_emails"]
    assert sum(len(PHONE.findall(_text(r))) for r in rows) == p["pii_phones"]
    same = sum(1 for r in parsed["jsonl"] if r["input"] and r["output"] == r["input"])
    same += sum(1 for r in parsed["json"] if r["completion"] == r["prompt"])
    same += sum(1 for r in parsed["csv"] if r["answer"] == r["question"])
    assert same == p["output_equals_input"]
    too_short = [r for r in rows if sum(len(r[k] or "") for k in ("instruction", "input", "output")) < 16]
    assert len(too_short) == p["too_short"]
    assert Counter(r["lang"] for r in too_short) == {"ko": 3, "en": 3, "zh": 3}


def test_docstring_states_the_planted_counts():
    for key, value in DEMO_PLANTED.items():
        if key != "rows_total":
            assert f"``{key}``: {value}" in demo.__doc__, key


def test_smaller_batches_scale_and_keep_planted_problems(tmp_path):
    n = 90
    parsed = _read(write_demo_batches(tmp_path, seed=7, rows_per_batch=n))
    expected = demo_planted(n)
    assert len(parsed["jsonl"]) == len(parsed["json"]) == len(parsed["csv"]) == n
    assert len(parsed["bad"]) == expected["malformed_jsonl_lines"]
    rows = _mapped(parsed)
    key_counts = Counter((r["instruction"], r["input"], r["output"]) for r in rows)
    assert sum(c - 1 for c in key_counts.values()) == expected["exact_duplicate_copies"]
    assert expected["exact_duplicate_copies"] < DEMO_PLANTED["exact_duplicate_copies"]
    assert {r["task_type"] for r in rows} == set(DEMO_TASK_TYPES)


@pytest.mark.parametrize("bad", [10, 0, -5])
def test_too_few_rows_is_a_clear_error(tmp_path, bad):
    with pytest.raises(ValueError, match="rows_per_batch must be at least"):
        write_demo_batches(tmp_path, rows_per_batch=bad)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_korean_particles_follow_the_word():
    assert demo._josa("민수", "은") == "는" and demo._josa("지현", "은") == "은"
    assert demo._josa("서울", "로") == "로" and demo._josa("깻잎", "로") == "으로" and demo._josa("부산", "로") == "으로"
    assert demo._josa("두부", "과") == "와" and demo._josa("달걀", "과") == "과"
    assert demo._josa("10킬로미터", "을") == "를"
