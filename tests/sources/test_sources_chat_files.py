"""read_chat_file: accepted row shapes, rendering, and one test per reject reason."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenweight.samples import Reject, Sample
from tokenweight.sources.chat_files import read_chat_file
from tokenweight.sources.tools_text import TOOLS_INSTRUCTION

USER = {"role": "user", "content": "Hi"}
ASSISTANT = {"role": "assistant", "content": "Hello!"}
GOOD = {"messages": [USER, ASSISTANT]}


def write_jsonl(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def read(path):
    items = list(read_chat_file(path))
    return [i for i in items if isinstance(i, Sample)], [i for i in items if isinstance(i, Reject)]


def only_reject(tmp_path, row):
    samples, rejects = read(write_jsonl(tmp_path, [row]))
    assert samples == [] and len(rejects) == 1
    return rejects[0]


def test_messages_row_becomes_sample_with_origin(tmp_path):
    path = write_jsonl(tmp_path, [{"id": "a1", **GOOD}])
    samples, rejects = read(path)
    assert rejects == []
    assert samples == [Sample("a1", [USER, ASSISTANT], f"{path}:1")]


def test_prompt_completion_row_becomes_user_and_assistant(tmp_path):
    samples, _ = read(write_jsonl(tmp_path, [{"prompt": "2+2?", "completion": "4"}]))
    assert samples[0].messages == [{"role": "user", "content": "2+2?"},
                                   {"role": "assistant", "content": "4"}]


def test_rows_without_id_get_stable_id_from_file_stem_and_line(tmp_path):
    samples, _ = read(write_jsonl(tmp_path, [GOOD, GOOD], name="my data.v2.jsonl"))
    assert [s.id for s in samples] == ["my_data_v2-L1", "my_data_v2-L2"]


def test_invalid_json_rejects_only_that_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n" + json.dumps(GOOD) + "\n")
    samples, rejects = read(str(path))
    assert len(samples) == 2
    assert [(r.line, r.reason.split(":")[0]) for r in rejects] == [(2, "invalid JSON")]


def test_bad_utf8_byte_rejects_only_its_line(tmp_path):
    good = json.dumps(GOOD).encode()
    bad = b'{"messages": [{"role": "user", "content": "caf\xff"}, {"role": "assistant", "content": "x"}]}'
    path = tmp_path / "data.jsonl"
    path.write_bytes(good + b"\n" + bad + b"\n" + good + b"\n")
    samples, rejects = read(str(path))
    assert [s.origin.rsplit(":", 1)[1] for s in samples] == ["1", "3"]
    assert len(rejects) == 1 and rejects[0].line == 2 and "invalid UTF-8" in rejects[0].reason


def test_bom_and_crlf_are_accepted_and_blank_lines_skipped(tmp_path):
    rows = [json.dumps({"id": f"r{i}", "messages": [{"role": "user", "content": "a\nb"}, ASSISTANT]})
            for i in range(3)]
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join([rows[0].encode(), b"", rows[1].encode(), rows[2].encode()]) + b"\r\n")
    samples, rejects = read(str(path))
    assert rejects == []
    assert [(s.id, s.origin.rsplit(":", 1)[1]) for s in samples] == [("r0", "1"), ("r1", "3"), ("r2", "4")]
    assert samples[0].messages[0]["content"] == "a\nb"


def test_empty_file_yields_nothing(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b"\n  \r\n")
    assert list(read_chat_file(str(empty))) == []
    assert list(read_chat_file(str(blank))) == []


def test_missing_file_raises_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_chat_file(str(tmp_path / "nope.jsonl"))


def test_unsupported_suffix_raises(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        read_chat_file(str(path))


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ([1, 2], "row is list, expected object"),
        ({"id": "x"}, "no messages and no prompt/completion"),
        ({"messages": []}, "messages is empty and no prompt/completion"),
        ({"messages": "hi"}, "messages is str, expected list"),
        ({"prompt": "q"}, "completion is missing"),
        ({"prompt": "q", "completion": 4}, "completion is int, expected string"),
        ({"messages": ["hi", ASSISTANT]}, "message 0 is str, expected object"),
        ({"messages": [{"content": "x"}, ASSISTANT]}, "message 0 has no role"),
        ({"messages": [USER, {"role": "assistant"}]}, "message 1 (assistant) has empty content and no tool_calls"),
        ({"messages": [USER, {"role": "assistant", "content": "  "}]},
         "message 1 (assistant) has empty content and no tool_calls"),
        ({"messages": [USER, {"role": "assistant", "content": ["part"]}]}, "message 1 content is list, expected string"),
        ({"messages": [USER, {"role": "user", "content": "more"}]}, "no assistant turn"),
        ({"messages": [{"role": "user", "content": None}, ASSISTANT]}, "message 0 has no content"),
    ],
)
def test_row_level_problems_become_rejects(tmp_path, row, reason):
    assert only_reject(tmp_path, row).reason == reason


def test_unknown_role_is_named(tmp_path):
    reject = only_reject(tmp_path, {"id": "r", "messages": [{"role": "robot", "content": "beep"}, ASSISTANT]})
    assert "unknown role 'robot'" in reject.reason
    assert reject.id == "r"


def test_int_content_is_rejected_not_converted(tmp_path):
    row = {"messages": [{"role": "system", "content": "s"}, USER, {"role": "user", "content": 42}, ASSISTANT]}
    assert only_reject(tmp_path, row).reason == "message 2 content is int, expected string"


def test_duplicate_ids_rejected_after_first_naming_its_line(tmp_path):
    rows = [{"id": "a", **GOOD}, {"id": "b", **GOOD}, {"id": "a", **GOOD}, {"id": "a", **GOOD}]
    samples, rejects = read(write_jsonl(tmp_path, rows))
    assert [s.id for s in samples] == ["a", "b"]
    assert [(r.line, r.id) for r in rejects] == [(3, "a"), (4, "a")]
    assert all("first seen on line 1" in r.reason for r in rejects)


def test_rejected_row_does_not_claim_its_id(tmp_path):
    rows = [{"id": "a", "messages": [USER]}, {"id": "a", **GOOD}]
    samples, rejects = read(write_jsonl(tmp_path, rows))
    assert [s.origin.rsplit(":", 1)[1] for s in samples] == ["2"]
    assert [r.reason for r in rejects] == ["no assistant turn"]


@pytest.mark.parametrize(
    ("bad_id", "needle"),
    [
        ("../escape", "path separator or '..'"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "'..'"),
        ("tab\there", "control character"),
        ("", "id is empty"),
        (7, "id is int, expected string"),
        ("x" * 201, "longer than 200"),
    ],
)
def test_unsafe_or_non_string_ids_are_rejected(tmp_path, bad_id, needle):
    reject = only_reject(tmp_path, {"id": bad_id, **GOOD})
    assert needle in reject.reason
    assert reject.id is None


def test_tool_calls_render_as_python_call_text(tmp_path):
    calls = [
        {"type": "function", "function": {"name": "get_weather", "arguments": json.dumps(
            {"city": "Paris", "days": 3, "metric": True, "tags": ["a", "b"], "opts": {"x": 1.5}, "note": None})}},
        {"type": "function", "function": {"name": "get_time", "arguments": {"tz": "UTC"}}},
    ]
    rows = [
        {"id": "bare", "messages": [USER, {"role": "assistant", "content": None, "tool_calls": calls}]},
        {"id": "with_text", "messages": [USER, {"role": "assistant", "content": "Let me check.", "tool_calls": calls[1:]}]},
    ]
    samples, rejects = read(write_jsonl(tmp_path, rows))
    assert rejects == []
    assert samples[0].messages[1] == {"role": "assistant", "content":
        "[get_weather(city='Paris', days=3, metric=True, tags=['a', 'b'], opts={'x': 1.5}, note=None), "
        "get_time(tz='UTC')]"}
    assert samples[1].messages[1]["content"] == "Let me check.\n[get_time(tz='UTC')]"


def test_tool_messages_are_kept(tmp_path):
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    row = {"messages": [USER, {"role": "assistant", "content": "", "tool_calls": [call]},
                        {"role": "tool", "content": "{\"ok\": true}"}, ASSISTANT]}
    samples, _ = read(write_jsonl(tmp_path, [row]))
    assert [m["role"] for m in samples[0].messages] == ["user", "assistant", "tool", "assistant"]
    assert samples[0].messages[1]["content"] == "[f()]"


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [("{oops", "arguments are not valid JSON"), ("[1]", "arguments are list, expected object")],
)
def test_bad_tool_call_arguments_are_rejected(tmp_path, arguments, needle):
    call = {"type": "function", "function": {"name": "f", "arguments": arguments}}
    row = {"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [call]}]}
    assert only_reject(tmp_path, row).reason == f"message 1 tool_call 0 {needle}"


TOOL = {"type": "function", "function": {"name": "lookup", "description": "Look it up.",
                                         "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                                                        "required": ["q"]}}}


def test_tools_go_into_a_new_or_existing_system_message(tmp_path):
    rows = [{"id": "new", "tools": [TOOL], **GOOD},
            {"id": "merged", "tools": [TOOL], "messages": [{"role": "system", "content": "Be kind."}, USER, ASSISTANT]}]
    samples, _ = read(write_jsonl(tmp_path, rows))
    new, merged = samples
    assert new.messages[0]["role"] == "system" and new.messages[1:] == [USER, ASSISTANT]
    assert new.messages[0]["content"] == f"{TOOLS_INSTRUCTION}\nlookup(q: string) - Look it up."
    assert merged.messages[0]["content"] == f"Be kind.\n\n{TOOLS_INSTRUCTION}\nlookup(q: string) - Look it up."
    assert len(merged.messages) == 3


def test_malformed_tools_are_rejected(tmp_path):
    assert only_reject(tmp_path, {"tools": [{"description": "nameless"}], **GOOD}).reason.startswith("bad tools:")
    assert only_reject(tmp_path, {"tools": "lookup", **GOOD}).reason.startswith("bad tools:")


def test_reasoning_spans_are_kept_and_follow_an_inserted_system_message(tmp_path):
    rows = [{"id": "plain", **GOOD, "reasoning_spans": {"1": [[0, 2], [2, 5]]}},
            {"id": "shifted", **GOOD, "tools": [TOOL], "reasoning_spans": {"1": [[0, 5]]}}]
    samples, rejects = read(write_jsonl(tmp_path, rows))
    assert rejects == []
    assert samples[0].reasoning_spans == {1: [(0, 2), (2, 5)]}
    assert samples[1].reasoning_spans == {2: [(0, 5)]}
    assert samples[1].messages[2]["content"][0:5] == "Hello"


@pytest.mark.parametrize(
    ("spans", "needle"),
    [
        ({"1": [[0, 99]]}, "outside the content"),
        ({"1": [[3, 3]]}, "empty or outside"),
        ({"1": [[-1, 2]]}, "outside"),
        ({"1": [[0, 3], [2, 4]]}, "overlaps"),
        ({"1": [[3, 4], [0, 2]]}, "overlaps or precedes"),
        ({"1": [[0, 1.5]]}, "not a pair of integers"),
        ({"1": [[True, 2]]}, "not a pair of integers"),
        ({"1": [[0, 1, 2]]}, "not a pair of integers"),
        ({"2": [[0, 1]]}, "past the last message"),
        ({"x": [[0, 1]]}, "not a message index"),
        ({"1": "0-2"}, "is str, expected list"),
        ([[0, 1]], "reasoning_spans is list"),
    ],
)
def test_bad_reasoning_spans_are_rejected(tmp_path, spans, needle):
    assert needle in only_reject(tmp_path, {**GOOD, "reasoning_spans": spans}).reason


def test_parquet_with_list_of_struct_messages(tmp_path):
    call = {"type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}
    table = pa.Table.from_pylist([
        {"id": "a", "messages": [USER, ASSISTANT]},
        {"id": "b", "messages": [USER, {"role": "assistant", "content": None, "tool_calls": [call]}]},
        {"id": "c", "messages": [{"role": "robot", "content": "x"}, ASSISTANT]},
        {"id": "a", "messages": [USER, ASSISTANT]},
    ])
    assert pa.types.is_struct(table.schema.field("messages").type.value_type)
    path = tmp_path / "chat.parquet"
    pq.write_table(table, path)
    samples, rejects = read(str(path))
    assert [s.id for s in samples] == ["a", "b"]
    assert samples[0].messages == [USER, ASSISTANT]
    assert samples[1].messages[1]["content"] == "[f(x=1)]"
    assert samples[1].origin == f"{path}:2"
    assert [(r.line, r.id) for r in rejects] == [(3, "c"), (4, "a")]
    assert "unknown role 'robot'" in rejects[0].reason and "first seen on line 1" in rejects[1].reason


def test_parquet_with_json_text_messages_and_prompt_completion(tmp_path):
    table = pa.table({
        "messages": [json.dumps([USER, ASSISTANT]), "[not json", None],
        "prompt": [None, None, "p"],
        "completion": [None, None, "c"],
    })
    path = tmp_path / "mixed.parquet"
    pq.write_table(table, path)
    samples, rejects = read(str(path))
    assert [s.id for s in samples] == ["mixed-L1", "mixed-L3"]
    assert samples[0].messages == [USER, ASSISTANT]
    assert samples[1].messages == [{"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}]
    assert len(rejects) == 1 and rejects[0].line == 2 and "messages is text but not valid JSON" in rejects[0].reason


def test_parquet_without_usable_columns_names_file_and_columns(tmp_path):
    path = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"text": ["a"], "label": [1], "prompt": ["p"]}), path)
    with pytest.raises(ValueError) as error:
        read_chat_file(str(path))
    message = str(error.value)
    assert "wrong.parquet" in message and "text, label, prompt" in message


def test_a_final_answer_is_kept_for_the_checkers_in_canonical_form(tmp_path):
    rows = [{"id": "n", **GOOD, "answer": 1234.50}, {"id": "s", **GOOD, "answer": "$1,600"}, {"id": "none", **GOOD}]
    samples, rejects = read(write_jsonl(tmp_path, rows))
    assert rejects == []
    assert [s.meta for s in samples] == [{"answer": "1234.5"}, {"answer": "1600"}, {}]


@pytest.mark.parametrize(("answer", "needle"), [("twelve", "answer 'twelve' is not a number"),
                                                ([3], "answer is list"), (True, "answer is bool")])
def test_an_answer_that_is_not_a_number_is_rejected(tmp_path, answer, needle):
    assert needle in only_reject(tmp_path, {**GOOD, "answer": answer}).reason
