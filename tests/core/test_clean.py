"""Clean-up: normalization steps, every filter's reason code, PII, language, templates, config."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from purify_assets.core.clean import (REASON_CODES, REJECTION_CODES, CleanConfig, clean_row, compose_text,
                                      detect_language, row_hash, text_hash)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CFG = CleanConfig()


def c(ins, inp="", out="A perfectly ordinary answer.", cfg=CFG, has_output=True):
    return clean_row(ins, inp, out, cfg, has_output)


def test_config_defaults_and_from_dict():
    cfg = CleanConfig.from_dict({"min_chars": 5, "target_languages": "ko"})
    assert cfg.min_chars == 5 and cfg.target_languages == ["ko"] and cfg.nfkc and cfg.redact_pii
    assert CleanConfig.from_dict(None) == CleanConfig()
    with pytest.raises(ValueError, match="unknown clean parameter"):
        CleanConfig.from_dict({"min_char": 5})
    with pytest.raises(ValueError):
        CleanConfig(max_symbol_ratio=2)
    assert "<noinput>" in CleanConfig().null_like and "N/A" in CleanConfig().null_like


def test_reason_codes_cover_everything():
    for code in REJECTION_CODES:
        assert code in REASON_CODES
    for t in ("email", "phone", "rrn", "card", "ip"):
        assert f"pii:{t}" in REASON_CODES
    for f in ("instruction", "input", "output"):
        assert f"null_like:{f}" in REASON_CODES


def test_nfkc_control_zero_width_bom():
    o = c("\ufeffＨｅｌｌｏ\u200b wor\x07ld\r\nnext", out="ok fine")
    assert o.instruction == "Hello world\nnext"
    assert "nfkc" in o.modifications and "control_chars_removed" in o.modifications
    off = c("Ｈｅｌｌｏ there", cfg=CleanConfig(nfkc=False))
    assert off.instruction == "Ｈｅｌｌｏ there"


def test_korean_compat_jamo_survive_nfkc():
    o = clean_row("ㅋㅋㅋ 재밌다 ㅠㅠ ＡＢＣ", None, None, CFG, has_output=False)
    assert o.instruction == "ㅋㅋㅋ 재밌다 ㅠㅠ ABC"


def test_html_tags_and_entities_but_not_code_like_angles():
    o = c("<p>Explain <b>photosynthesis</b> &amp; respiration.</p><br>Thanks<!-- x -->")
    assert o.instruction == "Explain photosynthesis & respiration.\n\nThanks"  # </p><br>: a paragraph break
    assert {"html_stripped", "html_entities_unescaped"} <= set(o.modifications)
    o = c("Fix this: #include <iostream> and List<String> and a <noinput> marker")
    assert "<iostream>" in o.instruction and "List<String>" in o.instruction and "html_stripped" not in o.modifications


def test_html_answers_kept_whole():
    o = c("Write an HTML tag for a table", out='<table class="x"><tr><td>a</td></tr></table>')
    assert o.output == '<table class="x"><tr><td>a</td></tr></table>' and o.kept
    o = c("Draw a pie chart of the data", out='<img src="pie.png" width="500">')
    assert o.output == '<img src="pie.png" width="500">' and o.kept


def test_markdown_stripped_code_kept():
    text = ("## Title\n**Bold** words, a [link](https://x.org) and ![alt](a.png)\n---\n> quoted\n"
            "2**3 and snake_case stay\n```python\n# comment\nx  =  **kw\n```\nuse `a  **b**` inline")
    o = c(text)
    assert o.instruction.startswith("Title\nBold words, a link and alt\nquoted\n2**3 and snake_case stay")
    assert "```python\n# comment\nx  =  **kw\n```" in o.instruction and "`a  **b**`" in o.instruction
    assert "markdown_stripped" in o.modifications


def test_code_field_keeps_indentation_and_comments():
    code = "def f(x):\n    # add one\n    y  =  x + 1\n    return y   "
    o = c("Implement the algorithm", out=code)
    assert o.output == "def f(x):\n    # add one\n    y  =  x + 1\n    return y"


def test_whitespace_collapse_keeps_paragraphs():
    o = c("a  lot   of\tspace  \n\n\n\nnew paragraph  ")
    assert o.instruction == "a lot of space\n\nnew paragraph" and "whitespace_normalized" in o.modifications


@pytest.mark.parametrize("value", ["<noinput>", "<No Input>", "No input.", '"<noinput>"', "N/A", "none", "-", "`<noinput>`"])
def test_null_like_inputs_normalized(value):
    o = c("Summarize the text below.", inp=value)
    assert o.input == "" and "null_like:input" in o.modifications and o.kept


def test_null_like_output_rejected_as_empty():
    o = c("Say something.", out="<nooutput>")
    assert o.output == "" and o.reasons == ["empty_output"] and not o.kept


def test_empty_instruction_and_text_layout():
    assert c("   ").reasons[0] == "empty_instruction"
    o = clean_row("", None, None, CFG, has_output=False)
    assert o.reasons == ["empty_instruction"] and o.output is None
    o = clean_row("just a review", None, None, CFG, has_output=False)
    assert o.kept and o.output is None  # no empty_output for layouts without output


def test_too_short_and_too_long():
    assert clean_row("굿", None, None, CFG, has_output=False).reasons == ["too_short"]
    assert clean_row("번역", None, "Hi", CFG).reasons == ["too_short"]  # 4 characters in total
    assert clean_row("정말 재미있어요", None, None, CFG, has_output=False).kept  # 8 characters
    assert clean_row("굿굿", None, None, CleanConfig(min_chars=2), has_output=False).kept
    long = "word " * 5000
    assert "too_long" in c(long).reasons
    o = c("x" * 100, cfg=CleanConfig(max_approx_tokens=10))
    assert "too_long" in o.reasons and o.approx_tokens > 10


def test_repetitive():
    o = c("Write a poem.", out="buy now cheap pills " * 20)
    assert "repetitive" in o.reasons
    lines = "\n".join(["this same line again"] * 6 + ["and a different closing line"])
    assert "repetitive" in c("Write lines.", out=lines).reasons
    prose = ("The committee reviewed the proposal in detail and asked for a revised budget, "
             "a clearer timeline and evidence that the pilot had reached its targets before approving it.")
    assert c("Summarize.", out=prose).kept


def test_output_equals_or_in_input():
    assert c("Repeat", inp="The cat sat.", out="The  cat sat.").reasons == ["output_equals_input"]
    assert c("Capitalize each word.", inp="the sun shone", out="The Sun Shone").kept  # case matters
    o = c("Fix grammar", inp="Please save the file before closing it today.", out="save the file before closing it today.")
    assert o.reasons == ["output_in_input"]
    assert c("Which name?", inp="John went to the shop with Mary and Bob.", out="John").kept


def test_symbol_heavy():
    assert "symbol_heavy" in clean_row("♥♥♥♥♥♥ ~~~~~ ^^", None, None, CFG, has_output=False).reasons
    assert c("6 + 3 = ?", out="6 + 3 = 9.").kept


def test_pii_redacted_and_optional():
    o = c("Mail kim@naver.com or call 010-1234-5678", out="Card 4111 1111 1111 1111")
    assert o.instruction == "Mail [EMAIL] or call [PHONE]" and o.output == "Card [CARD]"
    assert o.pii_counts == {"email": 1, "phone": 1, "card": 1}
    assert {"pii:email", "pii:phone", "pii:card"} <= set(o.modifications)
    o = c("Mail kim@naver.com", cfg=CleanConfig(redact_pii=False))
    assert "kim@naver.com" in o.instruction and not o.pii_counts


def test_language_detection_and_filter():
    assert detect_language("오늘 날씨가 좋네요") == "ko"
    assert detect_language("今天天气很好") == "zh"
    assert detect_language("今日はいい天気ですね") == "ja"
    assert detect_language("Describe the structure of an atom.") == "en"
    assert detect_language("Le chat est sur la table et il dort profondément.") == "fr"
    assert detect_language("12 + 7") is None
    assert detect_language("Le chat dort", CleanConfig(language_detection="script")) is None
    cfg = CleanConfig(target_languages=["ko"])
    assert c("What is the capital of France?", cfg=cfg).reasons == ["wrong_language"]
    o = c("프랑스의 수도는 어디인가요?", out="Paris", cfg=cfg)
    assert o.kept and o.lang == "ko"


def test_compose_text_templates():
    assert compose_text("I", "N", "O") == "I"
    assert compose_text("I", "N", "O", "instruction+input") == "I\nN"
    assert compose_text("I", "", "O", "instruction+input") == "I"
    assert compose_text("I", None, "O", "output") == "O"
    assert compose_text("I", "", "O", "all") == "I\nO"
    assert compose_text("I", "N", "O", "Q: {instruction} A: {output}") == "Q: I A: O"
    with pytest.raises(ValueError):
        compose_text("I", "N", "O", "bogus")
    with pytest.raises(ValueError):
        compose_text("I", "N", "O", "{nope}")


def test_hashes_stable_and_distinct():
    assert row_hash("a", "", "b") == row_hash("a", None, "b") != row_hash("a", "b", "")
    assert text_hash("x") == text_hash("x") != text_hash("y") and len(text_hash("x")) == 32


# ---- shared data ----------------------------------------------------------------------------

def need(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"shared data {p} not present")
    return p


def test_shared_alpaca_empty_outputs_and_noinput():
    from purify_assets.core.fields import detect_mapping, map_record
    from purify_assets.core.ingest import BatchReader, ParsedRecord

    p = need("alpaca/alpaca_data.json")
    cfg = CleanConfig(language_detection="script")  # speed: language is not what this test checks
    empty_raw = noinput = noinput_normalized = 0
    m = None
    for item in itertools.islice(BatchReader(p), 20000):
        assert isinstance(item, ParsedRecord)
        m = m or detect_mapping(item.record)
        row = map_record(item.record, m)
        o = clean_row(row.instruction, row.input, row.output, cfg, m.has_output)
        if row.output == "":
            empty_raw += 1
            assert o.reasons[0] == "empty_output" and not o.kept
        if row.input and "noinput" in row.input.lower().replace(" ", "") and len(row.input) < 15:
            noinput += 1
            noinput_normalized += o.input == ""
    assert empty_raw > 0 and noinput > 20
    assert noinput_normalized >= 0.9 * noinput


def test_shared_nsmc_sample_rate_of_rejections():
    p = need("nsmc/nsmc_raw_reviews.jsonl")
    kept = rejected = 0
    with p.open(encoding="utf-8") as f:
        for line in itertools.islice(f, 5000):
            o = clean_row(json.loads(line)["review"], None, None, CFG, has_output=False)
            kept += o.kept
            rejected += not o.kept
            assert o.lang in (None, "ko") or o.lang.isalpha()
    assert kept > 0.9 * 5000 and rejected > 0
