"""BFCL matcher: real records of the installed bfcl-eval data, judged by BFCL's own AST checker."""

import json
import subprocess
import sys
import textwrap
import time

import pytest

from tokenweight.evals.bfcl_match import (
    SUPPORTED_CATEGORIES,
    CallParseError,
    MatchResult,
    match_call,
    parse_calls,
)
from tokenweight.sources.bfcl import answer_text, bfcl_data_dir


def load_records(category, limit=None):
    """[(id, functions, ground_truth)] straight from the package's question and answer files."""
    data = bfcl_data_dir()
    answers = {}
    for line in (data / "possible_answer" / f"BFCL_v4_{category}.json").read_text("utf-8").splitlines():
        record = json.loads(line)
        answers[record["id"]] = record["ground_truth"]
    records = []
    with open(data / f"BFCL_v4_{category}.json", encoding="utf-8") as handle:
        for line in handle:
            if limit is not None and len(records) == limit:
                break
            question = json.loads(line)
            records.append((question["id"], question["function"], answers[question["id"]]))
    return records


def record(category, record_id):
    for found_id, functions, ground_truth in load_records(category):
        if found_id == record_id:
            return functions, ground_truth
    raise KeyError(record_id)


# Checked by hand against the data files:
#   simple_python_0: calculate_triangle_area(base: integer, height: integer, unit?: string),
#                    ground truth base [10], height [5], unit ["units", ""] (may be left out)
#   multiple_0:      triangle_properties.get(side1..3 = 5, 4, 3), circle_properties.get is offered too
#   parallel_0:      spotify.play(artist='Taylor Swift', duration=20) and (artist='Maroon 5', duration=15)
TRIANGLE = ("simple_python", "simple_python_0")


def check(answer, category, record_id):
    functions, ground_truth = record(category, record_id)
    return match_call(answer, functions, ground_truth, category)


@pytest.mark.parametrize(
    ("category", "record_id"),
    [
        TRIANGLE,
        ("multiple", "multiple_0"),
        ("parallel", "parallel_0"),
        ("parallel_multiple", "parallel_multiple_0"),
        ("live_simple", "live_simple_0-0-0"),
        # A dict argument whose fields list acceptable values, and a list of dicts.
        ("live_multiple", "live_multiple_0-0-0"),
        ("simple_python", "simple_python_96"),
    ],
)
def test_ground_truth_answer_is_valid(category, record_id):
    functions, ground_truth = record(category, record_id)
    assert match_call(answer_text(ground_truth), functions, ground_truth, category) == MatchResult(True, None)


@pytest.mark.parametrize("category", SUPPORTED_CATEGORIES)
def test_first_ground_truth_answers_of_every_category_are_valid(category):
    for record_id, functions, ground_truth in load_records(category, limit=10):
        result = match_call(answer_text(ground_truth), functions, ground_truth, category)
        assert result.valid, (record_id, result.error)


def test_optional_argument_may_be_left_out():
    assert check("[calculate_triangle_area(base=10, height=5)]", *TRIANGLE).valid


@pytest.mark.parametrize(
    ("answer", "error_type"),
    [
        ("[calculate_area(base=10, height=5)]", "wrong_func_name"),
        ("[calculate_triangle_area(base=10)]", "missing_required"),
        ("[calculate_triangle_area(base=10, height=6)]", "value_error"),
        ("[calculate_triangle_area(base=10, height=5, unit='meters')]", "value_error:string"),
        ("[calculate_triangle_area(base=10, height=5, color='red')]", "unexpected_param"),
        ("[calculate_triangle_area(base='10', height=5)]", "type_error"),
        ("[calculate_triangle_area(base=10, height=5), calculate_triangle_area(base=10, height=5)]",
         "wrong_count"),
    ],
)
def test_wrong_simple_answers_fail(answer, error_type):
    result = check(answer, *TRIANGLE)
    assert not result.valid
    assert error_type in result.error


def test_multiple_picking_the_other_function_fails():
    result = check("[circle_properties.get(radius=5.0)]", "multiple", "multiple_0")
    assert not result.valid and "wrong_func_name" in result.error
    assert check("[triangle_properties.get(side1=5, side2=4, side3=3, get_area=True)]",
                 "multiple", "multiple_0").valid


def test_parallel_calls_in_another_order_are_valid():
    answer = ("[spotify.play(artist='Maroon 5', duration=15), "
              "spotify.play(artist='Taylor Swift', duration=20)]")
    assert check(answer, "parallel", "parallel_0") == MatchResult(True, None)


@pytest.mark.parametrize(
    "answer",
    [
        "[spotify.play(artist='Taylor Swift', duration=20)]",
        "[spotify.play(artist='Taylor Swift', duration=20), "
        "spotify.play(artist='Taylor Swift', duration=20)]",
        "[spotify.play(artist='Taylor Swift', duration=15), spotify.play(artist='Maroon 5', duration=20)]",
    ],
)
def test_parallel_missing_repeated_or_swapped_values_fail(answer):
    assert not check(answer, "parallel", "parallel_0").valid


@pytest.mark.parametrize(
    "answer",
    [
        "I can't compute that.",
        "[calculate_triangle_area(base=10, height=5",
        "[calculate_triangle_area(10, 5)]",
        "[calculate_triangle_area(base=ten, height=5)]",
        "",
    ],
)
def test_unparseable_answer_is_invalid_not_an_exception(answer):
    result = check(answer, *TRIANGLE)
    assert not result.valid
    assert result.error.startswith("unparseable: ")


@pytest.mark.parametrize(
    "answer",
    [
        "Sure! Here's the call:\n```python\n[calculate_triangle_area(base=10, height=5)]\n```\n"
        "Don't forget units.",
        "  calculate_triangle_area(base=10, height=5)\n",
        "The area [1] is: [calculate_triangle_area(base=10, height=5, unit='units')] (done)",
    ],
)
def test_answer_inside_text_or_without_brackets_is_found(answer):
    assert check(answer, *TRIANGLE) == MatchResult(True, None)


def test_parse_calls_decodes_dotted_names_and_literals():
    text = "[math.factorial(number=5), a.b.c(s='[not a bracket]', n=-1.5, t=(1, 2), d={'k': [None, True]})]"
    assert parse_calls(text) == [
        {"math.factorial": {"number": 5}},
        {"a.b.c": {"s": "[not a bracket]", "n": -1.5, "t": (1, 2), "d": {"k": [None, True]}}},
    ]
    assert parse_calls("[]") == []
    # A nested list of calls is an argument, not the answer.
    with pytest.raises(CallParseError, match="not a Python literal"):
        parse_calls("f(x=[g(y=1)])")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[f(1)]", "positional"),
        ("[f(**kw)]", "unpacking"),
        ("[f(x=1, x=2)]", "given twice"),
        ("[f(x=y)]", "not a Python literal"),
        ("[f()()]", "not a (dotted) name"),
        ("[1, 2]", "not a function call"),
        ("no calls here", "no call list"),
    ],
)
def test_parse_calls_rejects_with_reason(text, reason):
    with pytest.raises(CallParseError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_calls(text)


def test_degenerate_bracket_runs_parse_in_linear_time():
    start = time.perf_counter()
    with pytest.raises(CallParseError):
        parse_calls("[" * 5000)
    # A scan from every "[" to the end would take over a minute; one scan takes milliseconds.
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("category", ["simple_java", "simple_javascript", "irrelevance", "nonsense"])
def test_unsupported_categories_raise(category):
    functions, ground_truth = record(*TRIANGLE)
    with pytest.raises(ValueError, match="unsupported BFCL category"):
        match_call("[calculate_triangle_area(base=10, height=5)]", functions, ground_truth, category)


def run_python(code):
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_matching_loads_the_official_checker_without_model_handlers():
    # Eight threads race to the lazy first import; each must get BFCL's verdict.
    # multiple_0's dotted function name makes the checker look our model up in the config.
    output = run_python(
        """
        import json, sys, threading
        from tokenweight.evals.bfcl_match import match_call
        from tokenweight.sources.bfcl import answer_text, bfcl_data_dir
        data = bfcl_data_dir()
        question = json.loads((data / "BFCL_v4_multiple.json").open().readline())
        truth = json.loads((data / "possible_answer" / "BFCL_v4_multiple.json").open().readline())
        results = []
        def one():
            results.append(match_call(answer_text(truth["ground_truth"]), question["function"],
                                      truth["ground_truth"], "multiple").valid)
        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads: thread.start()
        for thread in threads: thread.join()
        print(results.count(True))
        print("bfcl_eval.eval_checker.ast_eval.ast_checker" in sys.modules)
        print(sorted(name for name in sys.modules if name.startswith("bfcl_eval.model_handler")))
        """
    )
    assert output.split("\n")[:3] == ["8", "True", "[]"]


def test_an_already_loaded_model_config_is_kept():
    output = run_python(
        """
        import json, sys, types
        config = types.ModuleType("bfcl_eval.constants.model_config")
        config.MODEL_CONFIG_MAPPING = {"other": "kept"}
        sys.modules[config.__name__] = config
        from tokenweight.evals.bfcl_match import CHECKER_MODEL_NAME, match_call
        from tokenweight.sources.bfcl import answer_text, bfcl_data_dir
        data = bfcl_data_dir()
        question = json.loads((data / "BFCL_v4_multiple.json").open().readline())
        truth = json.loads((data / "possible_answer" / "BFCL_v4_multiple.json").open().readline())
        print(match_call(answer_text(truth["ground_truth"]), question["function"],
                         truth["ground_truth"], "multiple").valid)
        print(sys.modules[config.__name__] is config)
        print(sorted(config.MODEL_CONFIG_MAPPING) == sorted(["other", CHECKER_MODEL_NAME]))
        print(config.MODEL_CONFIG_MAPPING["other"])
        """
    )
    assert output.split("\n")[:4] == ["True", "True", "True", "kept"]
