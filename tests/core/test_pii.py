"""PII detection and redaction: true positives per type and ordinary numbers left alone."""

from __future__ import annotations

import pytest

from purify_assets.core.pii import find, redact


@pytest.mark.parametrize("text,kind", [
    ("연락처 kim.minsu@naver.com 입니다", "email"),
    ("전화 010-1234-5678 주세요", "phone"),
    ("폰 01098765432", "phone"),
    ("call +82 10-1234-5678", "phone"),
    ("US +1 (555) 123-4567", "phone"),
    ("office 02-123-4567", "phone"),
    ("번호 900101-1234567", "rrn"),
    ("masked 850505-2******", "rrn"),
    ("visa 4111 1111 1111 1111", "card"),
    ("mc 5500-0000-0000-0004", "card"),
    ("amex 378282246310005", "card"),
    ("server 192.168.10.24", "ip"),
    ("v6 2001:db8:85a3::8a2e:370:7334", "ip"),
])
def test_detects(text, kind):
    out, counts = redact(text)
    assert counts == {kind: 1}, (text, out)
    assert f"[{kind.upper()}]" in out


@pytest.mark.parametrize("text", [
    "date 2023-01-15 and 2023.01.15, time 12:30:45",
    "price 1,234,567 won, id 12345678, 20230115",
    "pi 3.14159, version 1.2.3 and parts 1.2.3.4",
    "std::vector<int> v; a::b; score 2::8",
    "MAC 00:1A:2B:3C:4D:5E",
    "order 4111111111111112 fails Luhn; 43242343424141341 has no issuer length",
    "loopback 127.0.0.1 and ::1 and mask 255.255.255.0",
    "docs use test@example.com and a@b.test",
    "890101-9234567 has gender digit 9; 901301-1234567 has month 13",
    "1 + 1 = 2, +10 points",
])
def test_leaves_ordinary_text(text):
    out, counts = redact(text)
    assert counts == {} and out == text


def test_counts_per_type_and_type_filter():
    text = "a@mail.co.kr b@mail.co.kr 010-1111-2222 4111111111111111"
    out, counts = redact(text)
    assert counts == {"email": 2, "phone": 1, "card": 1}
    assert out == "[EMAIL] [EMAIL] [PHONE] [CARD]"
    out, counts = redact(text, types=["phone"])
    assert counts == {"phone": 1} and "a@mail.co.kr" in out
    with pytest.raises(ValueError):
        redact(text, types=["ssn"])


def test_rrn_without_hyphen_needs_checksum():
    # 900101-1234568: checksum digit for 900101123456 is 8
    assert redact("9001011234568")[1] == {"rrn": 1}
    assert redact("9001011234567")[1] == {}


def test_find_reports_spans():
    text = "mail x@corp.io now"
    (m,) = find(text)
    assert m.type == "email" and text[m.start:m.end] == "x@corp.io"
