"""BFCL source: real records from the installed bfcl-eval data, ground-truth answer rendering."""

import ast
import json

import pytest

from tokenweight.samples import Reject, Sample
from tokenweight.sources.bfcl import (
    answer_text,
    available_bfcl_categories,
    bfcl_data_dir,
    read_bfcl,
)
from tokenweight.sources.tools_text import TOOLS_INSTRUCTION

SINGLE_TURN = ["simple_python", "multiple", "parallel", "parallel_multiple",
               "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"]


def by_id(category, limit=None):
    return {item.id: item for item in read_bfcl([category], limit)}


def raw_answer(category, record_id):
    path = bfcl_data_dir() / "possible_answer" / f"BFCL_v4_{category}.json"
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["id"] == record_id:
            return record["ground_truth"]
    raise KeyError(record_id)


def test_single_turn_categories_are_available():
    assert available_bfcl_categories() == SINGLE_TURN


# Expected strings checked by hand against data/possible_answer/BFCL_v4_<category>.json:
#   simple_python_0: base [10], height [5], unit ["units", ""]  -> first value "units" kept
#   multiple_0: side1..3 = 5, 4, 3; get_area/get_perimeter/get_angles = ["", true] -> omitted
#   parallel_0: two spotify.play calls in order
#   live_simple_0-0-0: user_id [7890], special ["black"]
@pytest.mark.parametrize(
    ("category", "record_id", "expected"),
    [
        ("simple_python", "simple_python_0", "[calculate_triangle_area(base=10, height=5, unit='units')]"),
        ("multiple", "multiple_0", "[triangle_properties.get(side1=5, side2=4, side3=3)]"),
        ("parallel", "parallel_0",
         "[spotify.play(artist='Taylor Swift', duration=20), spotify.play(artist='Maroon 5', duration=15)]"),
        ("live_simple", "live_simple_0-0-0", "[get_user_info(user_id=7890, special='black')]"),
    ],
)
def test_known_records_give_expected_answer(category, record_id, expected):
    sample = by_id(category, limit=3)[record_id]
    assert isinstance(sample, Sample)
    assert [m["role"] for m in sample.messages] == ["system", "user", "assistant"]
    assert sample.messages[-1]["content"] == expected
    assert sample.origin == f"bfcl:{category}:1"
    assert sample.meta["category"] == category
    assert sample.meta["ground_truth"] == raw_answer(category, record_id)
    assert sample.meta["functions"][0]["name"] in sample.messages[0]["content"]
    assert sample.messages[0]["content"].startswith(TOOLS_INSTRUCTION)


def test_multiple_lists_every_function_one_line_each():
    sample = by_id("multiple", limit=1)["multiple_0"]
    tool_lines = sample.messages[0]["content"].split("\n")[1:]
    assert [line.split("(")[0] for line in tool_lines] == [f["name"] for f in sample.meta["functions"]]


def test_question_system_text_is_merged_before_the_tools():
    # live_simple_58-27-0 opens with its own system message about movie tickets.
    sample = by_id("live_simple", limit=60)["live_simple_58-27-0"]
    system = sample.messages[0]["content"]
    assert system.startswith("You are an AI chatbot who helps users")
    assert system.index("You are an AI chatbot") < system.index(TOOLS_INSTRUCTION)
    assert [m["role"] for m in sample.messages] == ["system", "user", "assistant"]
    # Every other argument's first acceptable value is "" (omittable), so only city remains.
    assert sample.messages[-1]["content"] == "[get_movies(city='Mumbai')]"


def test_nested_dict_ground_truth_takes_first_values_recursively():
    # live_multiple_0-0-0: new_preferences is a dict whose fields are lists of acceptable values;
    # special_instructions offers four spellings, the first is "served boiling hot".
    sample = by_id("live_multiple", limit=1)["live_multiple_0-0-0"]
    assert sample.messages[-1]["content"] == (
        "[ChaDri.change_drink(drink_id='latte', new_preferences={'size': 'large', 'milk_type': 'coconut', "
        "'sweetness_level': 'extra', 'temperature': 'hot', 'special_instructions': 'served boiling hot'})]"
    )


def test_list_of_dicts_ground_truth_is_resolved_per_element():
    sample = by_id("simple_python", limit=97)["simple_python_96"]
    assert sample.messages[-1]["content"] == (
        "[database.query(table='user', conditions=[{'field': 'age', 'operation': '>', 'value': '25'}, "
        "{'field': 'job', 'operation': '=', 'value': 'engineer'}])]"
    )


def test_answer_text_skips_omittable_fields_at_every_depth():
    ground_truth = [
        {"f": {"d": [{"x": [1, 2], "y": ["", 3], "z": [[{"k": ["a", "b"], "gone": [""]}]]}], "opt": ["", 5]}},
        {"g": {"flag": [False], "none": [None]}},
    ]
    assert answer_text(ground_truth) == "[f(d={'x': 1, 'z': [{'k': 'a'}]}), g(flag=False, none=None)]"


@pytest.mark.parametrize(
    ("ground_truth", "needle"),
    [
        ([], "non-empty list"),
        ([{"f": {}, "g": {}}], "single {name: args}"),
        ([{"f": [1]}], "not an object"),
        ([{"f": {"a": []}}], "f.a lists no acceptable value"),
        ([{"f": {"a": [{"b": 3}]}}], "f.a.b lists no acceptable value"),
    ],
)
def test_malformed_ground_truth_raises_value_error(ground_truth, needle):
    with pytest.raises(ValueError, match=needle.replace("{", r"\{").replace("}", r"\}")):
        answer_text(ground_truth)


def test_record_without_acceptable_value_becomes_reject():
    # live_simple_112-68-0 gives acc_routing_start an empty list of acceptable values.
    reject = by_id("live_simple", limit=113)["live_simple_112-68-0"]
    assert isinstance(reject, Reject)
    assert reject.line == 113 and "acc_routing_start lists no acceptable value" in reject.reason


@pytest.mark.parametrize(
    ("category", "needle"),
    [("irrelevance", "no ground-truth answers"), ("live_irrelevance", "no ground-truth answers"),
     ("multi_turn_base", "not a supported single-turn"), ("nonsense", "unknown BFCL category")],
)
def test_unsupported_categories_raise(category, needle):
    with pytest.raises(ValueError, match=needle):
        list(read_bfcl(["simple_python", category]))


def test_limit_applies_per_category_and_all_answers_parse_as_python():
    items = list(read_bfcl(SINGLE_TURN, limit_per_category=5))
    assert len(items) == 5 * len(SINGLE_TURN)
    for item in items:
        assert isinstance(item, Sample)
        call = ast.parse(item.messages[-1]["content"], mode="eval").body
        assert isinstance(call, ast.List) and all(isinstance(c, ast.Call) for c in call.elts)
