"""Tool-list and call rendering: both spec styles, enums, nesting, truncation, bad specs."""

import pytest

from tokenweight.sources.tools_text import (
    TOOLS_INSTRUCTION,
    compact_tools,
    format_calls,
    system_with_tools,
)

WEATHER_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather. Uses a paid API, so call it sparingly.",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}

QUERY_BFCL = {
    "name": "db.query",
    "description": "Run a query.",
    "parameters": {
        "type": "dict",
        "properties": {
            "ids": {"type": "array", "items": {"type": "integer"}},
            "where": {"type": "dict", "properties": {"field": {"type": "string"}, "value": {"type": "any"}},
                      "required": ["field"]},
        },
        "required": ["ids"],
    },
}


def test_openai_style_line_has_optional_marker_enum_and_first_sentence():
    assert compact_tools([WEATHER_OPENAI]) == (
        'get_weather(location: string, unit?: string ["celsius","fahrenheit"]) - Get the current weather.'
    )


def test_bfcl_style_shows_array_items_and_nested_fields():
    assert compact_tools([QUERY_BFCL]) == (
        "db.query(ids: integer[], where?: {field: string, value?: any}) - Run a query."
    )


def test_long_description_is_cut_on_a_word_boundary():
    tool = {"name": "f", "description": "word " * 60, "parameters": {"type": "dict", "properties": {}}}
    line = compact_tools([tool])
    description = line.split(" - ", 1)[1]
    assert description.endswith("...") and len(description) <= 104
    assert "wor..." not in description


def test_system_with_tools_keeps_user_text_then_instruction_then_tools():
    lines = system_with_tools("Be brief.", [WEATHER_OPENAI, QUERY_BFCL]).split("\n")
    assert lines[:3] == ["Be brief.", "", TOOLS_INSTRUCTION]
    assert [line.split("(")[0] for line in lines[3:]] == ["get_weather", "db.query"]


def test_system_with_tools_without_system_text_starts_with_instruction():
    assert system_with_tools(None, [QUERY_BFCL]).startswith(TOOLS_INSTRUCTION)


@pytest.mark.parametrize(
    ("tools", "needle"),
    [
        ("not a list", "must be a"),
        ([], "non-empty"),
        ([42], "tool 0 is int"),
        ([{"description": "no name"}], "no usable name"),
        ([{"name": "f", "parameters": "x"}], "parameters is str"),
        ([{"name": "f", "parameters": {"properties": {"a": 3}}}], "f.a: schema is int"),
        ([{"name": "f", "parameters": {"properties": {"a": {"type": "string", "enum": "x"}}}}], "enum is str"),
        ([{"type": "function", "function": None}], "'function' is NoneType"),
    ],
)
def test_malformed_specs_raise_value_error_with_reason(tools, needle):
    with pytest.raises(ValueError, match=needle):
        system_with_tools(None, tools)


def test_format_calls_uses_python_literals():
    calls = [("f", {"s": "it's", "n": 3, "x": 0.5, "b": True, "z": None, "l": [1, "a"], "d": {"k": "v"}}),
             ("g", {})]
    assert format_calls(calls) == (
        "[f(s=\"it's\", n=3, x=0.5, b=True, z=None, l=[1, 'a'], d={'k': 'v'}), g()]"
    )
