"""Map a source record's columns onto the purify row shape: instruction / input / output.

CONTRACT (used by ``purify_assets.assets.ingest``):

- ``detect_mapping(columns, override=None) -> FieldMapping``: pick the layout from the column names
  (instruction/input/output, prompt/completion, question/answer, ShareGPT ``conversations`` /
  OpenAI ``messages``, plain ``text``, ...). ``override`` is a dict such as
  ``{"instruction": "Q", "output": "A"}`` and wins. Raises ``UnmappableError`` whose message lists
  the columns found and the layouts tried.
- ``map_record(record, mapping) -> MappedRow``. Values that are not strings (numbers, nested
  objects) are converted to text deterministically (JSON for objects); missing fields are ``None``.
  For a plain-text layout the text goes to ``instruction`` and ``output`` is ``None`` (the layout
  has no output; the empty-output filter does not apply: ``mapping.has_output`` is False).

Matching is case-insensitive and ignores surrounding blanks (``Question`` matches ``question``);
the mapping keeps the column's real spelling. Layouts are tried in the order of ``LAYOUTS``; the
first whose required columns are all present wins. Optional columns (``input``, or a context
column such as KoBEST's ``Text``) are used when present.

Conversations (layout ``chat``; ShareGPT ``[{"from", "value"}]``, OpenAI ``[{"role", "content"}]``,
or a JSON string holding such a list; a plain list of strings alternates user/assistant starting
with the user) are flattened by this rule:

- system turns (``system``) are joined into ``input`` (the context the instruction is given in);
- the first run of consecutive user turns (``human``/``user``/``prompter``) is joined with a blank
  line into ``instruction``;
- the assistant turns (``gpt``/``assistant``/``model``/``bot``/...) that answer it are joined into
  ``output``;
- later exchanges are not flattened (they stay in the original record, kept by ``raw_rows``);
  ``turns`` counts the user->assistant exchanges in the whole conversation (at least 1 when any
  user turn exists, 0 for an empty conversation); tool/function turns are skipped.

A chat value that is not a list of turns does not raise: the row gets ``instruction=None`` and a
message in ``MappedRow.problems`` (so the clean step rejects it as empty, with the cause visible).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable


class UnmappableError(ValueError):
    pass


@dataclass(frozen=True)
class FieldMapping:
    layout: str  # e.g. "instruction/input/output", "prompt/completion", "chat", "text", "custom"
    instruction: str | None
    input: str | None = None
    output: str | None = None
    chat: str | None = None  # column holding a conversation list, when layout == "chat"

    @property
    def has_output(self) -> bool:
        return self.output is not None or self.chat is not None


@dataclass
class MappedRow:
    instruction: str | None
    input: str | None
    output: str | None
    turns: int = 1
    problems: list[str] = field(default_factory=list)


# (layout name, instruction candidates, input candidates, output candidates). Candidates are
# lower-case; the first present candidate of each role is used. An empty output tuple means the
# layout has no output (plain text). A layout needs its instruction and (if any) output column.
LAYOUTS: list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = [
    ("instruction/input/output", ("instruction",), ("input", "context"), ("output",)),
    ("instruction/response", ("instruction",), ("input", "context"), ("response", "answer", "completion")),
    ("prompt/completion", ("prompt",), ("input", "context"), ("completion", "response", "chosen", "output")),
    ("question/answer", ("question", "q", "query"),
     ("context", "text", "passage", "sentence", "document", "input"),
     ("answer", "std_answer", "a", "response", "answers", "output")),
    ("input/output", ("input", "source"), (), ("output", "target")),
    ("text", ("text", "review", "sentence", "content", "document", "body", "context", "passage",
              "sentence1", "question", "prompt", "instruction"), (), ()),
]
CHAT_COLUMNS = ("conversations", "messages", "conversation", "dialogue", "dialog", "chat")

_USER = {"human", "user", "prompter", "usr", "question", "customer"}
_ASSISTANT = {"gpt", "assistant", "model", "bot", "chatgpt", "bard", "bing", "ai", "answer", "claude", "gpt-4"}
_SYSTEM = {"system", "developer"}
_ROLE_KEYS = ("from", "role", "speaker", "author")
_TEXT_KEYS = ("value", "content", "text", "message")

_OVERRIDE_KEYS = ("instruction", "input", "output", "chat", "text")


def _describe_tried() -> str:
    parts = [f"chat ({'|'.join(CHAT_COLUMNS)})"]
    for name, ins, inp, out in LAYOUTS:
        req = "|".join(ins) + (" + " + "|".join(out) if out else "")
        parts.append(f"{name} ({req})")
    return "; ".join(parts)


def detect_mapping(columns: Iterable[str], override: dict[str, str] | None = None) -> FieldMapping:
    cols = [str(c) for c in columns]
    by_lower: dict[str, str] = {}
    for c in cols:
        by_lower.setdefault(c.strip().lower(), c)

    if override:
        unknown = [k for k in override if k not in _OVERRIDE_KEYS]
        if unknown:
            raise ValueError(f"field mapping override: unknown role(s) {unknown}; allowed: {list(_OVERRIDE_KEYS)}")
        resolved: dict[str, str | None] = {}
        for role, col in override.items():
            if col is None or col == "":
                resolved[role] = None
                continue
            real = by_lower.get(str(col).strip().lower())
            if real is None:
                raise UnmappableError(f"field mapping override {role}={col!r}: no such column; columns found: {cols}")
            resolved[role] = real
        if resolved.get("chat"):
            return FieldMapping("chat", None, None, None, chat=resolved["chat"])
        instr = resolved.get("instruction") or resolved.get("text")
        if not instr:
            raise UnmappableError(f"field mapping override {override} names no instruction/text/chat column; "
                                  f"columns found: {cols}")
        return FieldMapping("custom", instr, resolved.get("input"), resolved.get("output"))

    for c in CHAT_COLUMNS:
        if c in by_lower and not any(k in by_lower for k in ("instruction", "prompt", "question")):
            return FieldMapping("chat", None, None, None, chat=by_lower[c])
    for name, ins, inp, out in LAYOUTS:
        i_col = next((by_lower[c] for c in ins if c in by_lower), None)
        if i_col is None:
            continue
        o_col = next((by_lower[c] for c in out if c in by_lower and by_lower[c] != i_col), None)
        if out and o_col is None:
            continue
        in_col = next((by_lower[c] for c in inp if c in by_lower and by_lower[c] not in (i_col, o_col)), None)
        return FieldMapping(name, i_col, in_col, o_col)
    raise UnmappableError(f"cannot map columns {cols} onto instruction/input/output; layouts tried (case-insensitive): "
                          f"{_describe_tried()}. Give a mapping such as {{\"instruction\": \"<col>\", "
                          f"\"output\": \"<col>\"}}")


def to_text(v: Any) -> str | None:
    """Deterministic text for any parsed value: None stays None; objects become sorted JSON."""
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return None
        return repr(v) if not v.is_integer() or abs(v) >= 1e16 else str(int(v))
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "replace")
    try:
        return json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(v)


def _get(record: dict[str, Any], col: str | None) -> Any:
    if col is None:
        return None
    if col in record:
        return record[col]
    low = col.strip().lower()  # tolerate records whose key spelling varies per row
    for k, v in record.items():
        if str(k).strip().lower() == low:
            return v
    return None


def _role_of(turn: Any, index: int) -> tuple[str, str | None]:
    if isinstance(turn, str):
        return ("user" if index % 2 == 0 else "assistant"), turn
    if not isinstance(turn, dict):
        return "unknown", to_text(turn)
    role = next((str(turn[k]).strip().lower() for k in _ROLE_KEYS if k in turn and turn[k] is not None), "")
    text = next((turn[k] for k in _TEXT_KEYS if k in turn), None)
    if isinstance(text, list):  # OpenAI content parts: [{"type": "text", "text": ...}]
        text = "\n".join(to_text(p.get("text") if isinstance(p, dict) else p) or "" for p in text)
    text = to_text(text)
    if role in _USER:
        return "user", text
    if role in _ASSISTANT:
        return "assistant", text
    if role in _SYSTEM:
        return "system", text
    if role in ("tool", "function", "ipython", "observation"):
        return "tool", text
    return "unknown", text


def flatten_chat(value: Any, column: str = "conversations") -> MappedRow:
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if not isinstance(value, list):
        return MappedRow(None, None, None, turns=0,
                         problems=[f"chat field {column!r} is {type(value).__name__}, not a list of turns"])
    system: list[str] = []
    instr: list[str] = []
    out: list[str] = []
    problems: list[str] = []
    turns = 0
    stage = 0  # 0: before/in first user run, 1: in first assistant run, 2: later exchanges
    prev = None
    for i, t in enumerate(value):
        role, text = _role_of(t, i)
        if role == "unknown":
            problems.append(f"chat turn {i} in {column!r}: unknown role, skipped")
            continue
        if role == "tool":
            continue
        if role == "user" and prev != "user":
            turns += 1
        if role == "system":
            if text:
                system.append(text)
        elif role == "user":
            if stage == 0:
                if text:
                    instr.append(text)
            elif stage == 1:
                stage = 2
        elif role == "assistant":
            if stage == 0 and instr:
                stage = 1
            if stage == 1 and text:
                out.append(text)
            elif stage == 0 and not instr:
                problems.append(f"chat in {column!r} starts with an assistant turn; it is not used as output")
        prev = role
    return MappedRow("\n\n".join(instr) if instr else None,
                     "\n\n".join(system) if system else None,
                     "\n\n".join(out) if out else None,
                     turns=turns, problems=problems)


def map_record(record: dict[str, Any], mapping: FieldMapping) -> MappedRow:
    if mapping.chat is not None:
        return flatten_chat(_get(record, mapping.chat), mapping.chat)
    return MappedRow(
        to_text(_get(record, mapping.instruction)),
        to_text(_get(record, mapping.input)),
        to_text(_get(record, mapping.output)) if mapping.output is not None else None,
        turns=1,
    )
