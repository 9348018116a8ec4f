"""BFCL (Berkeley Function Calling Leaderboard) single-turn categories as `Sample`s.

Reads the data files shipped in the installed `bfcl-eval` package without importing it (its
import pulls in heavy dependencies). Each record becomes: a system message with the tool list,
the question's messages, and an assistant answer built from the ground truth, taking the first
acceptable value of every argument, written in the call format asked for (call_formats.py: BFCL's
own `[name(arg=value, ...)]` by default, or Hermes tags or ReAct). The raw ground truth, function
docs and (where not python) the call format go into `meta` so the eval stage can parse the answer
back and check it the BFCL way.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokenweight.samples import Sample, Reject
from tokenweight.sources.call_formats import assistant_text, system_text

# The single-turn categories whose ground truth is a list of calls with acceptable values.
# Others either have no ground truth (irrelevance) or use other formats (multi_turn, memory).
SUPPORTED_CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
)
# BFCL marks an optional argument that may be left out with "" among its acceptable values.
OMIT = ""


class _BadRecord(ValueError):
    """A record-level problem; its message is the Reject reason."""


def bfcl_data_dir() -> Path:
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bfcl-eval package is not installed")
    return Path(spec.submodule_search_locations[0]) / "data"


def available_bfcl_categories() -> list[str]:
    """Supported categories whose question and answer files are present in the installed data."""
    data = bfcl_data_dir()
    return [
        category for category in SUPPORTED_CATEGORIES
        if _question_file(data, category).is_file() and _answer_file(data, category).is_file()
    ]


def category_files(category: str) -> list[Path]:
    """The question and answer files a category is read from (for content fingerprints)."""
    data = bfcl_data_dir()
    if category not in available_bfcl_categories():
        raise ValueError(_unsupported(category, available_bfcl_categories()))
    return [_question_file(data, category), _answer_file(data, category)]


def read_bfcl(
    categories: list[str], limit_per_category: int | None = None, call_format: str = "python"
) -> Iterator[Sample | Reject]:
    """Samples (and rejects) for the first `limit_per_category` records of each category.

    Unknown or unsupported categories raise ValueError here, before anything is read.
    """
    available = available_bfcl_categories()
    for category in categories:
        if category not in available:
            raise ValueError(_unsupported(category, available))
    if limit_per_category is not None and limit_per_category < 0:
        raise ValueError(f"limit_per_category must be >= 0, got {limit_per_category}")
    return _read_categories(bfcl_data_dir(), categories, limit_per_category, call_format)


def answer_text(ground_truth: list[dict[str, dict[str, list]]], call_format: str = "python",
                sample_id: str = "") -> str:
    """The assistant answer for a ground-truth list in `call_format` (python: `[f(a=1), g(b='x')]`);
    the sample id picks a ReAct answer's generic thought."""
    if not isinstance(ground_truth, list) or not ground_truth:
        raise _BadRecord("ground truth is not a non-empty list of calls")
    calls = [_call(number, call) for number, call in enumerate(ground_truth)]
    return assistant_text(None, calls, call_format, sample_id)


def _unsupported(category: str, available: list[str]) -> str:
    data = bfcl_data_dir()
    supported = ", ".join(available)
    if not _question_file(data, category).is_file():
        return f"unknown BFCL category {category!r} (supported: {supported})"
    if not _answer_file(data, category).is_file():
        return f"BFCL category {category!r} has no ground-truth answers (supported: {supported})"
    return f"BFCL category {category!r} is not a supported single-turn category (supported: {supported})"


def _question_file(data: Path, category: str) -> Path:
    return data / f"BFCL_v4_{category}.json"


def _answer_file(data: Path, category: str) -> Path:
    return data / "possible_answer" / f"BFCL_v4_{category}.json"


def _read_categories(
    data: Path, categories: list[str], limit: int | None, call_format: str
) -> Iterator[Sample | Reject]:
    for category in categories:
        answers = _load_answers(_answer_file(data, category))
        questions = _question_file(data, category)
        with open(questions, encoding="utf-8") as handle:
            for line, text in enumerate(handle, start=1):
                if limit is not None and line > limit:
                    break
                yield _record(str(questions), category, line, text, answers, call_format)


def _load_answers(path: Path) -> dict[str, Any]:
    answers = {}
    with open(path, encoding="utf-8") as handle:
        for text in handle:
            if text.strip():
                record = json.loads(text)
                answers[record["id"]] = record.get("ground_truth")
    return answers


def _record(
    file: str, category: str, line: int, text: str, answers: dict[str, Any], call_format: str
) -> Sample | Reject:
    record_id = None
    try:
        record = json.loads(text)
        if not isinstance(record, dict):
            raise _BadRecord("record is not an object")
        record_id = record.get("id")
        if not isinstance(record_id, str) or not record_id:
            raise _BadRecord("record has no id")
        if record_id not in answers:
            raise _BadRecord(f"no ground truth for {record_id!r}")
        ground_truth = answers[record_id]
        functions = record.get("function")
        messages = _messages(record.get("question"), functions, call_format, record_id)
        messages.append({"role": "assistant", "content": answer_text(ground_truth, call_format, record_id)})
    except json.JSONDecodeError as error:
        return Reject(file, line, None, f"invalid JSON: {error}")
    except _BadRecord as error:
        return Reject(file, line, record_id, str(error))
    meta = {"category": category, "ground_truth": ground_truth, "functions": functions}
    if call_format != "python":  # absent for python, so python samples stay what they were
        meta["call_format"] = call_format
    return Sample(record_id, messages, f"bfcl:{category}:{line}", meta=meta)


def _messages(question: Any, functions: Any, call_format: str, sample_id: str) -> list[dict[str, str]]:
    """System message with the tools (and any system text of the question), then the rest."""
    if not isinstance(question, list) or len(question) != 1 or not isinstance(question[0], list):
        raise _BadRecord("question is not a single turn (a list holding one list of messages)")
    system_parts, rest = [], []
    for message in question[0]:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise _BadRecord(f"malformed question message: {message!r}"[:200])
        role = message.get("role")
        if role == "system":
            system_parts.append(message["content"])
        elif role == "user":
            rest.append({"role": role, "content": message["content"]})
        else:
            raise _BadRecord(f"unexpected role {role!r} in question")
    if not rest:
        raise _BadRecord("question has no user message")
    try:
        system = system_text("\n\n".join(system_parts) or None, functions, call_format, sample_id)
    except ValueError as error:
        raise _BadRecord(f"bad function docs: {error}") from None
    return [{"role": "system", "content": system}, *rest]


def _call(number: int, call: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(call, dict) or len(call) != 1:
        raise _BadRecord(f"ground truth call {number} is not a single {{name: args}} object")
    (name, args), = call.items()
    if not isinstance(args, dict):
        raise _BadRecord(f"ground truth arguments of {name!r} are not an object")
    return name, _first_values(name, args)


def _first_values(where: str, acceptable: dict[str, Any]) -> dict[str, Any]:
    """{arg: [acceptable, ...]} -> {arg: first acceptable}, leaving out omittable arguments."""
    chosen = {}
    for arg, options in acceptable.items():
        if not isinstance(options, list) or not options:
            raise _BadRecord(f"ground truth for {where}.{arg} lists no acceptable value")
        if options[0] != OMIT:
            chosen[arg] = _resolve(f"{where}.{arg}", options[0])
    return chosen


def _resolve(where: str, value: Any) -> Any:
    """A chosen value with its nested dicts (whose fields are again option lists) resolved."""
    if isinstance(value, dict):
        return _first_values(where, value)
    if isinstance(value, list):
        return [_resolve(f"{where}[{i}]", item) for i, item in enumerate(value)]
    return value
