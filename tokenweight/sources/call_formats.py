"""How tool calls are written: the formats agent data is trained in, for BFCL and for users' files.

One call list (`[(name, args), ...]`) and one tool list render three ways; `prepare.source.call_format`
picks one, and the eval stage parses answers back in the same format (evals/call_answers.py).

- `python` (the default, BFCL's own): `[name(arg=value, ...)]` with Python literals; the system
  message lists the tools one line each (tools_text.system_with_tools). Compact: most target
  tokens are names and values.
- `hermes`: each call as JSON inside tags, as Hermes/Qwen-style function-calling data is written,
  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per call; the system
  message holds the function-calling instruction and the tools inside `<tools></tools>`.
- `react`: `Thought: ...\\nAction: name\\nAction Input: {json}` as ReAct/ToolBench-style data is
  written; parallel calls are one thought, then one `Action`/`Action Input` pair per call. The
  thought is a generic sentence picked by a hash of the sample's id (stable across runs); it names
  no tool and no value, so it is boilerplate by construction, as most of a ToolBench thought is.

The instruction texts are the role suite's (role_suite.py draws per sample from the same sets), so
the role suite measures the token classes on exactly the texts these formats train on.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, get_args

from tokenweight.config import CallFormat
from tokenweight.sources.tools_text import compact_tools, format_calls, system_with_tools

CALL_FORMATS: tuple[str, ...] = get_args(CallFormat)

HERMES_INSTRUCTIONS = (
    "You are a function calling AI model. You are provided with function signatures within <tools></tools> "
    "XML tags. Call one function to assist with the user query.",
    "You can call functions. Their signatures are listed within <tools></tools> XML tags.",
    "You are a helpful assistant with access to the functions listed within <tools></tools> XML tags.",
)
HERMES_CALL_HOWTO = (
    "For each function call return a JSON object with the function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-dict>}\n"
    "</tool_call>",
    "Return the call as JSON inside <tool_call></tool_call> tags, with keys \"name\" and \"arguments\".",
)
REACT_INSTRUCTIONS = (
    "Use the tools below. Reply in this format:\nThought: what you need to do\nAction: the tool to use\n"
    "Action Input: the arguments as a JSON object",
    "Answer with a short thought, the tool to call and its arguments in JSON:\nThought: ...\nAction: ...\n"
    "Action Input: {...}",
    "You have access to these tools. Always answer as\nThought: your reasoning\nAction: one tool name\n"
    "Action Input: a JSON object of arguments",
)
TOOL_LIST_HEADERS = ("Tools:", "Available tools:", "You can use:")
# Thoughts that name neither the tool nor a value (the role suite adds some that restate a value).
PLAIN_THOUGHTS = (
    "I need to call a tool for this.",
    "I should use a tool to answer.",
    "A single tool call answers this.",
)
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
REACT_THOUGHT, REACT_ACTION, REACT_INPUT = "Thought: ", "Action: ", "Action Input: "


def pick(options: tuple[str, ...], sample_id: str, what: str) -> str:
    """One of `options`, by a hash of the sample's id: the same sample always gets the same text,
    and different samples spread over all of them (fixed phrases vary, as in real data)."""
    digest = hashlib.sha256(f"{what}:{sample_id}".encode()).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


def system_text(system: str | None, tools: list[dict], call_format: str, sample_id: str) -> str:
    """The system message: the caller's own text (if any), then the tools and how to call them."""
    if call_format == "python":
        return system_with_tools(system, tools)
    listed = compact_tools(tools)  # raises ValueError on a bad tool, as system_with_tools does
    if call_format == "hermes":
        body = (f"{pick(HERMES_INSTRUCTIONS, sample_id, 'hermes-instruction')}\n<tools>\n{listed}\n</tools>\n"
                f"{pick(HERMES_CALL_HOWTO, sample_id, 'hermes-howto')}")
    elif call_format == "react":
        body = (f"{pick(REACT_INSTRUCTIONS, sample_id, 'react-instruction')}\n\n"
                f"{pick(TOOL_LIST_HEADERS, sample_id, 'react-header')}\n{listed}")
    else:
        raise ValueError(_unknown(call_format))
    own = system.strip() if system and system.strip() else ""
    return f"{own}\n\n{body}" if own else body


def assistant_text(content: str | None, calls: list[tuple[str, dict[str, Any]]], call_format: str,
                   sample_id: str) -> str:
    """An assistant turn: its own text (if any) and its calls in `call_format`. Under `react` the
    turn's own text is the thought (a generic one where it has none); under `python` and `hermes`
    it stands before the calls, on its own line."""
    if not calls:
        raise ValueError("no call to render")
    own = content.strip() if content and content.strip() else ""
    if call_format == "react":
        actions = "\n".join(f"{REACT_ACTION}{name}\n{REACT_INPUT}{json.dumps(args, ensure_ascii=False)}"
                            for name, args in calls)
        return f"{REACT_THOUGHT}{own or pick(PLAIN_THOUGHTS, sample_id, 'react-thought')}\n{actions}"
    if call_format == "python":
        rendered = format_calls(calls)
    elif call_format == "hermes":
        rendered = "\n".join(f"{HERMES_OPEN}\n{json.dumps({'name': name, 'arguments': args}, ensure_ascii=False)}\n"
                             f"{HERMES_CLOSE}" for name, args in calls)
    else:
        raise ValueError(_unknown(call_format))
    return f"{content.rstrip()}\n{rendered}" if own else rendered


def _unknown(call_format: str) -> str:
    return f"unknown call format {call_format!r}; valid: {', '.join(CALL_FORMATS)}"
