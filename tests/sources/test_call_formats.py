"""Call formats: BFCL and users' tool_calls written as python, Hermes or ReAct, and read back for
BFCL's own checker; the prepare key of the default format is what it was."""

import json

import pytest

from tokenweight.config import PipelineConfig
from tokenweight.evals.answer_check import check_answer
from tokenweight.evals.bfcl_match import CallParseError
from tokenweight.evals.call_answers import parse_answer
from tokenweight.samples import Reject, Sample
from tokenweight.sources.bfcl import available_bfcl_categories, read_bfcl
from tokenweight.sources.call_formats import CALL_FORMATS, PLAIN_THOUGHTS, assistant_text, system_text
from tokenweight.sources.chat_files import read_chat_file
from tokenweight.tasks.prepare import PREPARE

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather now.",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}
CALLS = [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET", "h24": True})]


def test_each_format_writes_its_calls():
    assert assistant_text(None, CALLS, "python", "s1") == "[get_weather(city='Paris'), get_time(zone='CET', h24=True)]"
    assert assistant_text("Checking.", CALLS[:1], "hermes", "s1") == (
        'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    react = assistant_text(None, CALLS, "react", "s1")
    thought, *actions = react.split("\n")
    assert thought.removeprefix("Thought: ") in PLAIN_THOUGHTS
    assert actions == ["Action: get_weather", 'Action Input: {"city": "Paris"}',
                       "Action: get_time", 'Action Input: {"zone": "CET", "h24": true}']
    # The turn's own text is the thought; the same sample always gets the same generic one.
    assert assistant_text("Look it up.", CALLS[:1], "react", "s1").startswith("Thought: Look it up.\nAction:")
    assert assistant_text(None, CALLS, "react", "s1") == react


def test_system_message_lists_tools_in_each_format():
    hermes = system_text("Be brief.", [TOOL], "hermes", "s1")
    assert hermes.startswith("Be brief.\n\n") and "<tools>\nget_weather(city: string) - Weather now.\n</tools>" in hermes
    assert "<tool_call>" in hermes
    react = system_text(None, [TOOL], "react", "s1")
    assert "Action Input:" in react and react.endswith("get_weather(city: string) - Weather now.")
    with pytest.raises(ValueError, match="unknown call format 'xml'"):
        system_text(None, [TOOL], "xml", "s1")


@pytest.mark.parametrize("call_format", CALL_FORMATS)
def test_every_bfcl_answer_reads_back_as_the_checker_accepts_it(call_format):
    """Each ground-truth answer, written in the format and parsed back, gets BFCL's verdict for the
    python answer: the same valid count, the same few ground truths that fail BFCL's own checker."""
    verdicts, python = {}, {}
    for fmt in ("python", call_format):
        for item in read_bfcl(available_bfcl_categories(), 40, fmt):
            if isinstance(item, Sample):
                verdicts.setdefault(fmt, {})[item.id] = check_answer(item.messages[-1]["content"], item.meta)[1]
    python = verdicts["python"]
    assert verdicts[call_format] == python
    assert sum(python.values()) >= 0.95 * len(python) > 100


def test_hermes_and_react_samples_record_their_format_and_python_ones_do_not():
    (hermes, *_), (python, *_) = (list(read_bfcl(["simple_python"], 1, fmt)) for fmt in ("hermes", "python"))
    assert hermes.meta["call_format"] == "hermes" and "call_format" not in python.meta
    assert hermes.messages[-1]["content"].startswith("<tool_call>\n{")
    assert "<tools>" in hermes.messages[0]["content"]


@pytest.mark.parametrize("text, reason", [
    ("no tags here", "no <tool_call>"),
    ('<tool_call>\n{"name": "f", "arguments": {"a": 1}}', "no <tool_call>"),  # never closed
    ('<tool_call>\n{"name": "f", "arguments": {"a": True}}\n</tool_call>', "not valid JSON"),
    ('<tool_call>\n{"name": "f", "args": {}}\n</tool_call>', "exactly 'name' and 'arguments'"),
    ('<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>', "not a JSON object"),
])
def test_hermes_reader_says_why_an_answer_is_none(text, reason):
    with pytest.raises(CallParseError, match=reason):
        parse_answer(text, "hermes")


@pytest.mark.parametrize("text, reason", [
    ("Thought: hmm", "no 'Action:' line"),
    ("Action: f\nAction: g\nAction Input: {}", r"action 0 \('f'\) has no 'Action Input:'"),
    ("Action: f\nAction Input: {'a': 1}", "not valid JSON"),
    ("Action: f\nAction Input: [1, 2]", "not a JSON object"),
])
def test_react_reader_says_why_an_answer_is_none(text, reason):
    with pytest.raises(CallParseError, match=reason):
        parse_answer(text, "react")


def test_readers_ignore_what_surrounds_the_calls():
    hermes = 'Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\nDone.'
    react = 'Thought: go\nAction: f\nAction Input: {"a": {"b": [1,\n 2]}}\nObservation: ...'
    assert parse_answer(hermes, "hermes") == [{"f": {"a": 1}}]
    assert parse_answer(react, "react") == [{"f": {"a": {"b": [1, 2]}}}]


@pytest.mark.parametrize("call_format", CALL_FORMATS)
def test_users_tool_calls_are_written_in_the_chosen_format(tmp_path, call_format):
    row = {"id": "u1", "tools": [TOOL], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}]}
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (sample,) = [s for s in read_chat_file(str(path), call_format) if not isinstance(s, Reject)]
    assert sample.messages[0]["content"] == system_text(None, [TOOL], call_format, "u1")
    answer = sample.messages[-1]["content"]
    assert answer == assistant_text(None, [("get_weather", {"city": "Paris"})], call_format, "u1")
    assert parse_answer(answer, call_format) == [{"get_weather": {"city": "Paris"}}]


def test_python_keeps_the_prepare_key_and_other_formats_change_it():
    """A store made before call formats existed keeps its prepare output (python is left out of the key)."""
    base = {"prepare": {"source": {"kind": "bfcl", "categories": ["simple_python"]}}}
    key = PREPARE.config(PipelineConfig.model_validate(base))
    assert "call_format" not in key["source"]
    hermes = PipelineConfig.model_validate({"prepare": {"source": {**base["prepare"]["source"], "call_format": "hermes"}}})
    assert PREPARE.config(hermes)["source"]["call_format"] == "hermes"
