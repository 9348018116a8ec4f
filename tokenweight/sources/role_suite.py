"""The role suite: agent answers in the formats real agent data uses, with known token roles.

Every sample draws one tool family of `synthetic.FAMILIES` (its values, requests, results and
answer sentences; the suite adds only the formats) and renders the assistant side in one format:

- `react`: `Thought: <thought>\\nAction: <tool>\\nAction Input: {"arg": value, ...}` (JSON). The
  thought is a generic sentence and sometimes restates one argument value; it never names the
  tool.
- `hermes`: an optional generic preface line, then
  `<tool_call>\\n{"name": "<tool>", "arguments": {...}}\\n</tool_call>`; the system message lists
  the tools as JSON inside `<tools></tools>`, as Hermes-style data does.
- `python`: BFCL style `[tool(arg=value, ...)]` with Python literals, nothing around it.
- `multiturn`: the call (hermes or python form, `meta["call_form"]`) -> a `tool` message with
  the JSON result -> a final answer in sentences (the family's final templates) that uses the
  result, after an optional generic opener.
- `prose`: no tools and no call: the user message holds the request and the data that answers it
  (as JSON or `key: value` lines), and the answer states values from both in sentences, after an
  optional generic opener.

`generate_role_suite(n, seed, "all")` gives an equal mix (sample i has format
`FORMATS[i % 5]`); every sample records its format in `meta["format"]` (and its family in
`meta["family"]`). Fixed phrases (system instructions, thoughts, prefaces, openers, the intro of
the prose data) are drawn per sample from small sets, so boilerplate is predictable but not one
constant string; none of the phrases before the call depends on which tool is asked for.

Roles, as character spans of each assistant message (`Sample.reasoning_spans`):

- reasoning: the chosen tool's name, and each value the answer takes from its input at the first
  place the assistant states it: an argument value copied from the user request (in a thought,
  a prose sentence or the call's arguments), and in a final answer a field of the tool result
  (the tool message is input to that turn). A string value's span is its text inside the quotes
  (JSON-escaped or Python-`repr`-escaped as it is written); a number, a boolean, its literal.
- boilerplate: everything else: the format (`Thought:`, `Action:`, `Action Input:`, tags,
  brackets, `=`, `, `), JSON punctuation and keys, argument names, quotes, fixed phrases and the
  words of the answer templates, and also a value the assistant **repeats from its own earlier
  text**: stated before in an earlier assistant turn (the city the final answer restates after
  its own call put it there) or earlier in the same message (the react thought's value again in
  Action Input). Once the answer has said it, the value no longer depends on the input beyond
  what the answer already said, so a model reading that answer can copy it. Values are told
  apart by what they are (which argument, which result field), not by their text: two arguments
  that happen to be equal are both reasoning.
- result fields that never vary (`get_stock_price`'s currency, `send_email`'s status: see
  `CONSTANT_RESULT_FIELDS`) are boilerplate: they do not depend on the input at all.
- unscored (`Sample.unscored_spans`: trained, but neither class in the role scores), as in
  BFCL's syntax-tree rules (`sources/bfcl_roles.py`), since both depend on the input without
  being a value: inside a call, the character that ends a reasoning value (its closing quote, or
  the `,` `}` `)` or newline right after it: whether the value ended there is itself
  information; after a repeated value it is boilerplate), and the name of an optional argument
  (whether the answer gives it depends on the request; a required argument's name follows from
  the tool and is boilerplate). Any token that holds such a character is unscored.
  (Version 1 of these rules counted both as boilerplate.)

Known limits of these rules: in the prose format the first words of the answer sentence are
family-specific template words ("It's ... degrees"), so they depend on which request was made,
but count as boilerplate (as synthetic.py's prefaces do); and in `format: all` the first token
of an answer reveals its format, which the system message chose, but counts as boilerplate too.
"""

from __future__ import annotations

import json
import random
from string import Formatter
from typing import Any

from tokenweight.samples import Sample
from tokenweight.sources.call_formats import (
    HERMES_CALL_HOWTO,
    HERMES_INSTRUCTIONS,
    PLAIN_THOUGHTS,
    REACT_INSTRUCTIONS,
    TOOL_LIST_HEADERS,
)
from tokenweight.sources.synthetic import FAMILIES, SYSTEM_TEXTS, Family
from tokenweight.sources.tools_text import compact_tools, system_with_tools

# Bump when the samples a (format, n, seed) gives change; the prepare key holds it (and a hash
# of this file and the modules it draws from, see tasks/prepare.py).
VERSION = "2"
FORMATS = ("react", "hermes", "python", "multiturn", "prose")
CONSTANT_RESULT_FIELDS = {"get_stock_price": frozenset({"currency"}), "send_email": frozenset({"status"})}

# `{value}` is one argument value of the call (its first statement, so reasoning).
THOUGHTS = (
    *PLAIN_THOUGHTS,
    "The user mentioned {value}; a tool can handle that.",
    "This request involves {value}, so I will call the matching tool.",
    "To answer, I need a tool call with {value}.",
)
PREFACES = ("Sure, let me check.", "I'll call a tool for that.", "One moment.", "Let me handle that.",
            "Calling the tool now.")
OPENERS = ("Here's what I found.", "Done.", "Sure.", "All right.", "Here you go.")
PROSE_SYSTEMS = ("You are a helpful assistant.", "Answer the user's question from the data they give.",
                 "You are a concise assistant. Use only the information provided.")
DATA_INTROS = ("Data:", "Here is what the service returned:", "Context:", "Lookup result:", "For reference:")


def generate_role_suite(n: int, seed: int, format: str = "all") -> list[Sample]:
    """`n` samples of one format (or an equal mix, `all`); the same arguments give the same samples."""
    if format != "all" and format not in FORMATS:
        raise ValueError(f"unknown role-suite format {format!r} (one of {', '.join(FORMATS)}, or all)")
    rng = random.Random(f"role-suite:{format}:{seed}")
    out = []
    for index in range(n):
        fmt = FORMATS[index % len(FORMATS)] if format == "all" else format
        out.append(_sample(rng, fmt, f"roles-{format}-{seed}-{index:05d}", f"roles:{format}:{seed}:{index}"))
    return out


class _Answer:
    """Assistant text built piece by piece: reasoning spans, and the values already stated.

    `stated` is shared by every assistant message of one conversation: a value is reasoning only
    where it is stated first (and only if it is not a constant).
    """

    def __init__(self, stated: set) -> None:
        self.text = ""
        self.spans: list[tuple[int, int]] = []
        self.unscored: list[tuple[int, int]] = []
        self.stated = stated

    def fixed(self, piece: str) -> None:
        self.text += piece

    def unscored_piece(self, piece: str) -> None:
        """Text that is neither class (see the module docstring: what ends a value, optional keys)."""
        self.unscored.append((len(self.text), len(self.text) + len(piece)))
        self.text += piece

    def value(self, key: tuple, piece: str, constant: bool = False) -> bool:
        """Append a value; True where it is reasoning (its first statement, not a constant)."""
        if key in self.stated or constant or not piece:
            self.fixed(piece)
            return False
        self.stated.add(key)
        self.spans.append((len(self.text), len(self.text) + len(piece)))
        self.text += piece
        return True

    def call_value(self, key: tuple, piece: str, end: str) -> None:
        """A value inside a call and the character that ends it (closing quote, `,`, `)`, newline):
        after a reasoning value that character is unscored, since whether the value ended there
        is itself information (as in BFCL's rules); after a repeated value it is boilerplate."""
        if self.value(key, piece) and end:
            self.unscored_piece(end[0])
            self.fixed(end[1:])
        else:
            self.fixed(end)

    def template(self, template: str, keys: dict[str, tuple], values: dict[str, Any],
                 constant: frozenset = frozenset()) -> None:
        for literal, field, _, _ in Formatter().parse(template):
            self.fixed(literal)
            if field is not None:
                self.value(keys[field], _shown(values[field]), constant=field in constant)

    def key(self, name: str, optional: bool) -> None:
        """An argument's name: boilerplate for a required one (it follows from the tool), unscored
        for an optional one (whether the answer gives it depends on the request)."""
        (self.unscored_piece if optional else self.fixed)(name)

    def json_args(self, args: dict[str, Any], optional: frozenset) -> None:
        """`{"arg": value, ...}`, the text json.dumps gives; a string's span is its (escaped)
        text inside the quotes."""
        self.fixed("{")
        for number, (name, arg) in enumerate(args.items()):
            self.fixed(' "' if number else '"')  # the `,` before it ended the previous value
            self.key(name, name in optional)
            self.fixed('": ')
            text = json.dumps(arg, ensure_ascii=False)
            close = "}" if number == len(args) - 1 else ","
            if isinstance(arg, str):
                self.fixed('"')
                self.call_value(("arg", name), text[1:-1], '"' + close)
            else:
                self.call_value(("arg", name), text, close)
        if not args:
            self.fixed("}")

    def python_call(self, name: str, args: dict[str, Any], optional: frozenset) -> None:
        """`[name(arg='value', n=3)]`, the text tools_text.format_calls gives."""
        self.fixed("[")
        self.call_value(("tool",), name, "(")
        for number, (key, arg) in enumerate(args.items()):
            self.fixed(" " if number else "")  # the `,` before it ended the previous value
            self.key(key, key in optional)
            self.fixed("=")
            text = repr(arg)
            end = ")]" if number == len(args) - 1 else ","
            if isinstance(arg, str):
                self.fixed(text[0])
                self.call_value(("arg", key), text[1:-1], text[-1] + end)
            else:
                self.call_value(("arg", key), text, end)
        if not args:
            self.fixed(")]")

    def hermes_call(self, name: str, args: dict[str, Any], optional: frozenset) -> None:
        self.fixed('<tool_call>\n{"name": "')
        self.call_value(("tool",), name, '", "arguments": ')
        self.json_args(args, optional)
        self.fixed("}\n</tool_call>")


def _shown(value: Any) -> str:
    """A value as a sentence shows it: strings bare, numbers as their Python literal."""
    return value if isinstance(value, str) else repr(value)


def _fields(template: str) -> set[str]:
    return {field for _, field, _, _ in Formatter().parse(template) if field}


def _usable(templates: tuple[str, ...], available: set[str]) -> list[str]:
    return [t for t in templates if _fields(t) <= available]


def _sample(rng: random.Random, fmt: str, sample_id: str, origin: str) -> Sample:
    family = rng.choice(FAMILIES)
    values = family.values(rng)
    request = rng.choice(family.requests)
    args = {p.name: values[p.name] for p in family.params if p.name in _fields(request)}
    user = request.format_map({k: _shown(v) for k, v in values.items()})
    stated: set = set()
    meta: dict[str, Any] = {"format": fmt, "family": family.name}
    if fmt == "prose":
        result = family.result(rng, values)
        messages = [{"role": "system", "content": rng.choice(PROSE_SYSTEMS)},
                    {"role": "user", "content": f"{user}\n\n{_data_text(rng, result)}"}]
        answer = _final(rng, family, args, result, stated)
        messages.append({"role": "assistant", "content": answer.text})
        return Sample(sample_id, messages, origin, reasoning_spans={2: answer.spans}, meta=meta)
    tools = _tools(rng, family)
    form = rng.choice(("hermes", "python")) if fmt == "multiturn" else fmt
    messages = [{"role": "system", "content": _system(rng, form, tools)}, {"role": "user", "content": user}]
    call = _Answer(stated)
    optional = frozenset(p.name for p in family.params if not p.required)
    if form == "react":
        call.fixed("Thought: ")
        thought = rng.choice(THOUGHTS if args else [t for t in THOUGHTS if "{value}" not in t])
        if "{value}" in thought:
            field = rng.choice(sorted(args))
            call.template(thought.replace("{value}", "{" + field + "}"), {field: ("arg", field)}, args)
        else:
            call.fixed(thought)
        call.fixed("\nAction: ")
        call.call_value(("tool",), family.name, "\nAction Input: ")
        call.json_args(args, optional)
    elif form == "hermes":
        if rng.random() < 0.5:
            call.fixed(rng.choice(PREFACES) + "\n")
        call.hermes_call(family.name, args, optional)
    else:
        call.python_call(family.name, args, optional)
    messages.append({"role": "assistant", "content": call.text})
    spans, unscored = {2: call.spans}, {2: call.unscored}
    if fmt == "multiturn":
        meta["call_form"] = form
        result = family.result(rng, values)
        messages.append({"role": "tool", "content": json.dumps(result, ensure_ascii=False)})
        final = _final(rng, family, args, result, stated)
        messages.append({"role": "assistant", "content": final.text})
        spans[4] = final.spans
    return Sample(sample_id, messages, origin, reasoning_spans=spans, meta=meta, unscored_spans=unscored)


def _tools(rng: random.Random, family: Family) -> list[dict]:
    others = rng.sample([f for f in FAMILIES if f is not family], rng.randint(1, 3))
    return [f.tool() for f in rng.sample([family, *others], len(others) + 1)]


def _system(rng: random.Random, form: str, tools: list[dict]) -> str:
    text = rng.choice(SYSTEM_TEXTS)
    if form == "python":
        return system_with_tools(text, tools)
    if form == "react":
        body = f"{rng.choice(REACT_INSTRUCTIONS)}\n\n{rng.choice(TOOL_LIST_HEADERS)}\n{compact_tools(tools)}"
    else:
        listed = "\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)
        body = f"{rng.choice(HERMES_INSTRUCTIONS)}\n<tools>\n{listed}\n</tools>\n{rng.choice(HERMES_CALL_HOWTO)}"
    return f"{text}\n\n{body}" if text else body


def _data_text(rng: random.Random, result: dict[str, Any]) -> str:
    """The data a prose answer draws on, as JSON or as `key: value` lines."""
    if rng.random() < 0.5:
        shown = json.dumps(result, ensure_ascii=False)
    else:
        shown = "\n".join(f"{key}: {_shown(value)}" for key, value in result.items())
    return f"{rng.choice(DATA_INTROS)}\n{shown}"


def _final(rng: random.Random, family: Family, args: dict[str, Any], result: dict[str, Any],
           stated: set) -> _Answer:
    """Sentences from the family's final templates: argument values (boilerplate where `stated`
    holds them, as after the call) and result fields; an optional generic opener first."""
    answer = _Answer(stated)
    if rng.random() < 0.5:
        answer.fixed(rng.choice(OPENERS) + " ")
    template = rng.choice(_usable(family.finals, set(args) | set(result)))
    keys = {**{name: ("arg", name) for name in args}, **{name: ("result", name) for name in result}}
    answer.template(template, keys, {**args, **result}, CONSTANT_RESULT_FIELDS.get(family.name, frozenset()))
    return answer
