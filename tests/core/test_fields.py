"""Field mapping: layout detection, overrides, conversations, value conversion."""

from __future__ import annotations

import json

import pytest

from purify_assets.core.fields import FieldMapping, UnmappableError, detect_mapping, map_record


@pytest.mark.parametrize("cols,layout,ins,inp,out", [
    (["instruction", "input", "output"], "instruction/input/output", "instruction", "input", "output"),
    (["Instruction", "Input", "Output"], "instruction/input/output", "Instruction", "Input", "Output"),
    (["instruction", "input", "response"], "instruction/response", "instruction", "input", "response"),
    (["prompt", "completion"], "prompt/completion", "prompt", None, "completion"),
    (["question", "std_answer", "class"], "question/answer", "question", None, "std_answer"),
    (["ID", "Text", "Question", "Answer"], "question/answer", "Question", "Text", "Answer"),
    (["Q", "A", "label"], "question/answer", "Q", None, "A"),
    (["review_id", "movie_id", "review", "rating"], "text", "review", None, None),
    (["ID", "Target", "SENTENCE1", "SENTENCE2", "ANSWER"], "text", "SENTENCE1", None, None),
    (["content"], "text", "content", None, None),
])
def test_detect_layouts(cols, layout, ins, inp, out):
    m = detect_mapping(cols)
    assert (m.layout, m.instruction, m.input, m.output) == (layout, ins, inp, out)
    assert m.has_output == (out is not None)


def test_chat_columns_detected():
    assert detect_mapping(["conversations", "id"]) == FieldMapping("chat", None, None, None, chat="conversations")
    assert detect_mapping(["Messages"]).chat == "Messages"


def test_override_wins_and_is_case_insensitive():
    m = detect_mapping(["col1", "col2", "col3"], {"instruction": "COL3", "output": "col1"})
    assert (m.layout, m.instruction, m.output, m.input) == ("custom", "col3", "col1", None)
    with pytest.raises(UnmappableError, match="no such column"):
        detect_mapping(["a"], {"instruction": "b"})
    with pytest.raises(ValueError, match="unknown role"):
        detect_mapping(["a"], {"question": "a"})


def test_unmappable_lists_columns_and_layouts():
    with pytest.raises(UnmappableError) as e:
        detect_mapping(["foo", "bar"])
    msg = str(e.value)
    assert "'foo'" in msg and "'bar'" in msg and "prompt/completion" in msg and "chat" in msg


def test_map_record_values_converted():
    m = detect_mapping(["instruction", "input", "output"])
    row = map_record({"instruction": "Add", "input": {"b": 2, "a": 1}, "output": 3}, m)
    assert row.instruction == "Add" and row.input == '{"a": 1, "b": 2}' and row.output == "3"
    row = map_record({"instruction": "x"}, m)
    assert row.input is None and row.output is None
    assert map_record({"instruction": True, "output": 2.5}, m).instruction == "true"
    assert map_record({"instruction": "x", "output": float("nan")}, m).output is None


def test_text_layout_has_no_output():
    m = detect_mapping(["text"])
    row = map_record({"text": "hello"}, m)
    assert row.instruction == "hello" and row.output is None and not m.has_output


def test_sharegpt_multi_turn_flattened():
    m = detect_mapping(["conversations"])
    conv = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
            {"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"},
            {"from": "human", "value": "And 3+3?"}, {"from": "gpt", "value": "6"}]
    row = map_record({"conversations": conv}, m)
    assert row.instruction == "Hi\n\nWhat is 2+2?" and row.output == "4" and row.input == "Be brief."
    assert row.turns == 2 and not row.problems


def test_openai_messages_as_json_string_and_content_parts():
    m = detect_mapping(["messages"])
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Name a color"}]},
            {"role": "assistant", "content": "Blue"}, {"role": "tool", "content": "ignored"}]
    row = map_record({"messages": json.dumps(msgs)}, m)
    assert (row.instruction, row.output, row.turns) == ("Name a color", "Blue", 1)


def test_bad_chat_value_reported_not_raised():
    m = detect_mapping(["messages"])
    row = map_record({"messages": 42}, m)
    assert row.instruction is None and row.turns == 0 and "not a list" in row.problems[0]
    row = map_record({"messages": ["question?", "answer!"]}, m)
    assert (row.instruction, row.output) == ("question?", "answer!")
