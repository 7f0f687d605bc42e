"""Find and redact personal data with typed placeholders.

``redact(text, types=None) -> (text, counts)`` replaces every match with its placeholder and counts
matches per type; ``find(text, types=None) -> list[PiiMatch]`` only reports. Types, in the order
they are applied (an earlier type's placeholder can never match a later pattern):

| type  | placeholder | what matches | what is deliberately left alone |
|-------|-------------|--------------|---------------------------------|
| email | ``[EMAIL]`` | ``local@domain.tld`` (ASCII) | RFC 2606/6761 reserved names: ``example.com/.org/.net``, ``*.example``, ``*.test``, ``*.invalid``, ``*.localhost`` (documentation addresses, not people) |
| rrn   | ``[RRN]``   | Korean resident registration number ``YYMMDD-Gxxxxxx`` with a valid month/day and G in 1-8 (also ``YYMMDD-G******`` masked forms); 13 digits without the hyphen only when the pre-2020 checksum holds | 13-digit numbers with an impossible date or a failed checksum |
| card  | ``[CARD]``  | 13-19 digits, optionally grouped by single spaces or hyphens (4-4-4-4(-3), Amex 4-6-5), with a known issuer prefix and length (Visa, Mastercard, Amex, Diners, JCB, Discover, UnionPay, Korean 9xxx) and passing the Luhn check | digit runs failing Luhn or the issuer check; numbers inside longer digit runs |
| phone | ``[PHONE]`` | Korean mobile ``01X-XXXX-XXXX`` (separators optional), Korean landline ``0XX-XXX(X)-XXXX`` (separators required), international ``+CC ...`` (8-15 digits in all, separators allowed), North-American ``(XXX) XXX-XXXX`` / ``XXX-XXX-XXXX`` | dates (``2023-01-15``), times, version numbers, amounts, plain 8-digit numbers |
| ip    | ``[IP]``    | IPv4 with octets 0-255 (no leading zeros), IPv6 validated by ``ipaddress`` with at least three groups and one digit | loopback, unspecified (0.0.0.0, ::), netmasks (255.x), all-single-digit quads (``1.2.3.4``: series parts, outline numbers), longer dotted runs (``1.2.3.4.5``), ``2::8``-like scores and ``a::b`` code |
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

PII_TYPES: tuple[str, ...] = ("email", "rrn", "card", "phone", "ip")
PLACEHOLDERS: dict[str, str] = {"email": "[EMAIL]", "rrn": "[RRN]", "card": "[CARD]", "phone": "[PHONE]", "ip": "[IP]"}


@dataclass(frozen=True)
class PiiMatch:
    type: str
    start: int
    end: int
    text: str


_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                    r"[A-Za-z]{2,24})(?![\w-])")
_RESERVED_DOMAIN = re.compile(r"(?:^|\.)(?:example\.(?:com|org|net)|example|test|invalid|localhost)$", re.I)

_RRN = re.compile(r"(?<![\d-])(\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(\s?-\s?)?([1-8])([\d*]{6})(?![\d-])")

_CARD = re.compile(r"(?<![\d-])(?:[2-69]\d{12,18}"  # contiguous
                   r"|[2-69]\d{3}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{3})?"  # 4-4-4-4(-3)
                   r"|3[47]\d{2}([ -])\d{6}\2\d{5})(?!\d)")  # Amex 4-6-5

_PHONE = re.compile(
    r"(?<![\w+-])(?:"
    r"\+[1-9]\d{0,2}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # international
    r"|01[016789][ .-]?\d{3,4}[ .-]?\d{4}"  # Korean mobile
    r"|0(?:2|[3-6][1-5]|70)[ .-]\d{3,4}[ .-]\d{4}"  # Korean landline / internet phone
    r"|\(0(?:2|[3-6][1-5])\)\s?\d{3,4}-\d{4}"
    r"|\([2-9]\d{2}\)\s?\d{3}[ .-]\d{4}"  # North America (XXX) XXX-XXXX
    r"|[2-9]\d{2}-\d{3}-\d{4}"  # North America XXX-XXX-XXXX
    r")(?![\w-])")

_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})(?![\w:])")

_QUICK = re.compile(r"[@\d]")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _rrn_checksum(d: str) -> bool:
    weights = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)
    s = sum(int(a) * w for a, w in zip(d[:12], weights))
    return (11 - s % 11) % 10 == int(d[12])


def _ok_email(m: re.Match) -> bool:
    return _RESERVED_DOMAIN.search(m.group(1)) is None


def _ok_rrn(m: re.Match) -> bool:
    tail = m.group(6)
    if m.group(4):  # written with the hyphen: a valid date and gender digit are enough; masked tails count
        return re.fullmatch(r"\d*\**", tail) is not None
    if not tail.isdigit():
        return False
    return _rrn_checksum(m.group(1) + m.group(2) + m.group(3) + m.group(5) + tail)


# issuer prefixes (IIN) and the lengths they issue: a random digit run passes Luhn one time in ten,
# so the issuer check is what keeps long numbers (order ids, phone-less digit strings) safe
_IIN = (
    (re.compile(r"4"), (13, 16, 19)),  # Visa
    (re.compile(r"5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)"), (16,)),  # Mastercard
    (re.compile(r"3[47]"), (15,)),  # American Express
    (re.compile(r"3(?:0[0-5]|[68])"), (14, 16, 19)),  # Diners Club
    (re.compile(r"35(?:2[89]|[3-8]\d)"), (16, 17, 18, 19)),  # JCB
    (re.compile(r"6(?:011|4[4-9]|5)"), (16, 17, 18, 19)),  # Discover
    (re.compile(r"62"), (16, 17, 18, 19)),  # UnionPay
    (re.compile(r"9\d{3}"), (16,)),  # Korean domestic cards
)


def _ok_card(m: re.Match) -> bool:
    digits = re.sub(r"[ -]", "", m.group())
    if not 13 <= len(digits) <= 19 or not _luhn(digits):
        return False
    return any(p.match(digits) and len(digits) in lengths for p, lengths in _IIN)


def _ok_phone(m: re.Match) -> bool:
    s = m.group()
    digits = sum(ch.isdigit() for ch in s)
    if s.startswith("+"):
        return 8 <= digits <= 15
    return 9 <= digits <= 12


def _ok_ipv4(m: re.Match) -> bool:
    parts = m.group().split(".")
    if parts[0] in ("0", "127", "255"):
        return False
    # "1.2.3.4" (parts of a series, outline numbers) is far more often not an address
    return not all(len(p) == 1 for p in parts)


def _ok_ipv6(m: re.Match) -> bool:
    s = m.group()
    groups = [g for g in re.split(r"[:.]", s) if g]
    if len(groups) < 3 or not any(ch.isdigit() for ch in s):  # "2::8" is a score, "a::b" is code
        return False
    try:
        ip = ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified)


_PATTERNS = {
    "email": ((_EMAIL, _ok_email),),
    "rrn": ((_RRN, _ok_rrn),),
    "card": ((_CARD, _ok_card),),
    "phone": ((_PHONE, _ok_phone),),
    "ip": ((_IPV4, _ok_ipv4), (_IPV6, _ok_ipv6)),
}


def _check_types(types) -> tuple[str, ...]:
    if types is None:
        return PII_TYPES
    bad = [t for t in types if t not in PLACEHOLDERS]
    if bad:
        raise ValueError(f"unknown PII type(s) {bad}; known: {list(PII_TYPES)}")
    return tuple(t for t in PII_TYPES if t in types)


def find(text: str, types=None) -> list[PiiMatch]:
    """All PII matches in ``text`` (positions refer to the original text; overlaps resolved in type order)."""
    out: list[PiiMatch] = []
    if not text or _QUICK.search(text) is None and ":" not in text:
        return out
    taken: list[tuple[int, int]] = []
    for t in _check_types(types):
        for pat, ok in _PATTERNS[t]:
            for m in pat.finditer(text):
                if not ok(m):
                    continue
                a, b = m.span()
                if any(a < y and x < b for x, y in taken):
                    continue
                taken.append((a, b))
                out.append(PiiMatch(t, a, b, m.group()))
    out.sort(key=lambda p: p.start)
    return out


def redact(text: str, types=None) -> tuple[str, dict[str, int]]:
    """Replace PII with typed placeholders; return the new text and counts per type (only types found)."""
    counts: dict[str, int] = {}
    if not text:
        return text, counts
    has_digit_or_at = _QUICK.search(text) is not None
    if not has_digit_or_at and ":" not in text:
        return text, counts
    for t in _check_types(types):
        if t != "ip" and not has_digit_or_at:
            continue
        if t == "email" and "@" not in text:
            continue
        for pat, ok in _PATTERNS[t]:
            n = 0

            def sub(m: re.Match, _ok=ok, _ph=PLACEHOLDERS[t]) -> str:
                nonlocal n
                if _ok(m):
                    n += 1
                    return _ph
                return m.group()

            text = pat.sub(sub, text)
            if n:
                counts[t] = counts.get(t, 0) + n
    return text, counts
