"""Plain-text rendering of tool lists and function calls for prompts and answers.

Tool specs arrive in two shapes, OpenAI (`{"type": "function", "function": {...}}`) and BFCL
(`{"name", "description", "parameters": {"type": "dict", ...}}`). Both are rendered as one
short line per function, because every prompt token costs CPU time in the later stages.
Calls are rendered the way BFCL expects them: `[name(arg=value, ...)]` with Python literals.
"""

from __future__ import annotations

import json
from typing import Any

TOOLS_INSTRUCTION = (
    "You can call these functions. Answer with the calls as [name(arg=value, ...)]."
)

MAX_DESCRIPTION_CHARS = 100
# BFCL enums reach 29 values and its answers may pick any of them, so nearly all are shown.
MAX_ENUM_VALUES = 32
# Deeper nesting is shown as a bare type: the first level tells the model the shape, the rest
# would mostly add tokens.
MAX_NESTING = 2


def compact_tools(tools: list[dict]) -> str:
    """One line per function: `name(arg: type, opt?: type ["a","b"]) - First sentence.`"""
    if not isinstance(tools, list):
        raise ValueError(f"tools must be a list, got {type(tools).__name__}")
    return "\n".join(_function_line(i, tool) for i, tool in enumerate(tools))


def system_with_tools(system_text: str | None, tools: list[dict]) -> str:
    """The system message: the caller's own text (if any), the call instruction, the tools."""
    if not isinstance(tools, list) or not tools:
        raise ValueError("tools must be a non-empty list")
    parts = [system_text.strip()] if system_text and system_text.strip() else []
    parts.append(f"{TOOLS_INSTRUCTION}\n{compact_tools(tools)}")
    return "\n\n".join(parts)


def format_call(name: str, args: dict[str, Any]) -> str:
    """`name(arg=value, ...)` with each value as a Python literal (repr of JSON data)."""
    return f"{name}({', '.join(f'{key}={value!r}' for key, value in args.items())})"


def format_calls(calls: list[tuple[str, dict[str, Any]]]) -> str:
    """`[f(a=1), g(b='x')]`: the whole answer for one or more parallel calls."""
    return "[" + ", ".join(format_call(name, args) for name, args in calls) + "]"


def _function_line(index: int, tool: Any) -> str:
    spec = _unwrap(index, tool)
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
        raise ValueError(f"tool {index} has no usable name: {name!r}")
    params = spec.get("parameters", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError(f"tool {name!r}: parameters is {type(params).__name__}, expected object")
    line = f"{name}({_fields(name, params, depth=1)})"
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise ValueError(f"tool {name!r}: description is {type(description).__name__}")
    short = _short_description(description or "")
    return f"{line} - {short}" if short else line


def _unwrap(index: int, tool: Any) -> dict:
    if not isinstance(tool, dict):
        raise ValueError(f"tool {index} is {type(tool).__name__}, expected object")
    if "function" in tool:
        inner = tool["function"]
        if not isinstance(inner, dict):
            raise ValueError(f"tool {index}: 'function' is {type(inner).__name__}, expected object")
        return inner
    return tool


def _fields(where: str, schema: dict, depth: int) -> str:
    """`a: type, b?: type` for an object schema's properties."""
    properties = schema.get("properties") or {}
    if not isinstance(properties, dict):
        raise ValueError(f"{where}: properties is {type(properties).__name__}, expected object")
    required = schema.get("required") or []
    if not isinstance(required, list):
        raise ValueError(f"{where}: required is {type(required).__name__}, expected list")
    rendered = []
    for key, prop in properties.items():
        if not isinstance(prop, dict):
            raise ValueError(f"{where}.{key}: schema is {type(prop).__name__}, expected object")
        mark = "" if key in required else "?"
        rendered.append(f"{key}{mark}: {_type_text(f'{where}.{key}', prop, depth)}")
    return ", ".join(rendered)


def _type_text(where: str, prop: dict, depth: int) -> str:
    kind = prop.get("type", "any")
    if isinstance(kind, list):
        # JSON Schema unions such as ["string", "null"]: null only says "optional".
        kinds = [k for k in kind if k != "null"] or ["null"]
        kind = kinds[0] if len(kinds) == 1 else "|".join(map(str, kinds))
    if not isinstance(kind, str):
        raise ValueError(f"{where}: type is {type(kind).__name__}, expected string")
    text = kind or "any"
    if kind in ("array", "list", "tuple") and isinstance(prop.get("items"), dict):
        text = f"{_type_text(where + '[]', prop['items'], depth)}[]"
    elif kind in ("dict", "object") and prop.get("properties") and depth < MAX_NESTING:
        text = "{" + _fields(where, prop, depth + 1) + "}"
    enum = prop.get("enum")
    if enum is not None:
        if not isinstance(enum, list):
            raise ValueError(f"{where}: enum is {type(enum).__name__}, expected list")
        text += " " + _enum_text(enum)
    return text


def _enum_text(values: list) -> str:
    shown = json.dumps(values[:MAX_ENUM_VALUES], ensure_ascii=False, separators=(",", ":"))
    if len(values) > MAX_ENUM_VALUES:
        shown = shown[:-1] + ",...]"
    return shown


def _short_description(text: str) -> str:
    """The first sentence, cut on a word boundary near MAX_DESCRIPTION_CHARS."""
    text = " ".join(text.split())
    cut = text.find(". ")
    if cut != -1:
        text = text[: cut + 1]
    if len(text) <= MAX_DESCRIPTION_CHARS:
        return text
    head = text[:MAX_DESCRIPTION_CHARS].rsplit(" ", 1)[0]
    return head.rstrip(",;:") + "..."
