"""A model's answer, written in one of the call formats (sources/call_formats.py), read back as
BFCL's decoded calls `[{name: {arg: value}}]` for its AST checker.

How strict each reader is:
- `python`: bfcl_match.parse_calls (`ast` over the answer, literal values only, arguments by name).
- `hermes`: every `<tool_call>...</tool_call>` block in the answer, in order, must hold exactly one
  JSON object with a string `name` and an object `arguments` (JSON, so `true`, not `True`); text
  outside the blocks is ignored. An unclosed block, or none at all, is no answer. Against BFCL's
  own Hermes reader (its Qwen-FC handler; benchmarks/hermes_reader_agreement.py): same verdict on
  every answer of results/bfcl-agent; more lenient on whitespace inside the tags, stricter on a
  block that is not JSON or holds keys beside `name` and `arguments`.
- `react`: every `Action:` line names one call and must be followed by an `Action Input:` holding
  one JSON object (it may run over several lines); the thought and any text after the object are
  ignored. No `Action:` at all is no answer.
Values then go to the checker as JSON gives them (a tuple arrives as a list).
"""

from __future__ import annotations

import json
import re
from typing import Any

from tokenweight.sources.call_formats import CALL_FORMATS, HERMES_CLOSE, HERMES_OPEN, REACT_ACTION, REACT_INPUT

from .bfcl_match import CallParseError, parse_calls

_HERMES_BLOCK = re.compile(re.escape(HERMES_OPEN) + r"(.*?)" + re.escape(HERMES_CLOSE), re.DOTALL)
_REACT_ACTION = re.compile(r"^[ \t]*" + re.escape(REACT_ACTION.strip()) + r"[ \t]*(.*)$", re.MULTILINE)


def parse_answer(text: str, call_format: str) -> list[dict[str, dict[str, Any]]]:
    """The calls of an answer in `call_format`; CallParseError says why there are none."""
    if call_format == "python":
        return parse_calls(text)
    if call_format == "hermes":
        return _hermes_calls(text)
    if call_format == "react":
        return _react_calls(text)
    raise ValueError(f"unknown call format {call_format!r}; valid: {', '.join(CALL_FORMATS)}")


def _hermes_calls(text: str) -> list[dict[str, dict[str, Any]]]:
    blocks = _HERMES_BLOCK.findall(text)
    if not blocks:
        raise CallParseError(f"no {HERMES_OPEN}...{HERMES_CLOSE} block found")
    calls = []
    for number, block in enumerate(blocks):
        try:
            call = json.loads(block)
        except json.JSONDecodeError as error:
            raise CallParseError(f"tool call {number} is not valid JSON: {error}") from None
        if not isinstance(call, dict) or set(call) != {"name", "arguments"}:
            raise CallParseError(f"tool call {number} is not an object with exactly 'name' and 'arguments'")
        calls.append(_call(number, call["name"], call["arguments"]))
    return calls


def _react_calls(text: str) -> list[dict[str, dict[str, Any]]]:
    actions = list(_REACT_ACTION.finditer(text))
    if not actions:
        raise CallParseError(f"no '{REACT_ACTION.strip()}' line found")
    calls = []
    for number, action in enumerate(actions):
        rest = text[action.end():]
        start = rest.find(REACT_INPUT.strip())
        next_action = actions[number + 1].start() - action.end() if number + 1 < len(actions) else len(rest)
        if start < 0 or start > next_action:
            raise CallParseError(f"action {number} ({action.group(1).strip()!r}) has no '{REACT_INPUT.strip()}'")
        body = rest[start + len(REACT_INPUT.strip()):].lstrip()
        try:
            arguments, _ = json.JSONDecoder().raw_decode(body)
        except json.JSONDecodeError as error:
            raise CallParseError(f"action {number} input is not valid JSON: {error}") from None
        calls.append(_call(number, action.group(1).strip(), arguments))
    return calls


def _call(number: int, name: Any, arguments: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(name, str) or not name:
        raise CallParseError(f"call {number} has no function name")
    if not isinstance(arguments, dict):
        raise CallParseError(f"call {number} ({name}) arguments are not a JSON object")
    return {name: arguments}
