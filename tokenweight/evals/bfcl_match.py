"""Check a model's function-call answer against BFCL ground truth with BFCL's own AST checker.

Answers look like `[name(arg=value, ...), other(x=1)]` with Python literals, possibly inside
other text. `parse_calls` turns them into BFCL's decoded form `[{name: {arg: value}}]` and
`match_call` runs the official `ast_checker` of the installed `bfcl-eval` package on it, so the
verdict (types, acceptable values, optional arguments, any order for parallel calls) is BFCL's.
"""

from __future__ import annotations

import ast
import functools
import io
import sys
import threading
import tokenize
import types
from dataclasses import dataclass
from typing import Any, Callable

# The categories our BFCL source reads: Python calls, checked with Language.PYTHON.
from tokenweight.sources.bfcl import SUPPORTED_CATEGORIES

# The model name the checker is told. It only looks the name up in MODEL_CONFIG_MAPPING to ask
# whether dots in function names must become underscores; ours keeps dots. No "_" in it: the
# checker turns "_" into "/" before the lookup.
CHECKER_MODEL_NAME = "tokenweight"
_MODEL_CONFIG_MODULE = "bfcl_eval.constants.model_config"
_checker_lock = threading.Lock()
_checker: Callable[..., dict] | None = None


class CallParseError(ValueError):
    """The text holds no readable `[name(arg=value, ...)]` answer; the message says why."""


@dataclass(frozen=True)
class MatchResult:
    valid: bool
    error: str | None  # short reason when not valid: a parse error or the checker's verdict


def parse_calls(text: str) -> list[dict[str, dict]]:
    """`[f(a=1), m.g(b='x')]` (or a bare `f(a=1)`) -> `[{"f": {"a": 1}}, {"m.g": {"b": "x"}}]`.

    The whole text is read as the answer when it is one; otherwise the first bracketed list of
    calls in it is. Argument values must be Python literals and passed by name.
    """
    expression = _expression(text.strip())
    if isinstance(expression, ast.Call):
        return [_decode_call(expression)]
    if isinstance(expression, ast.List):
        return [_decode_call(item) for item in expression.elts]
    for span in _bracketed_spans(text):
        expression = _expression(span)
        if isinstance(expression, ast.List) and all(
            isinstance(item, ast.Call) for item in expression.elts
        ):
            return [_decode_call(item) for item in expression.elts]
    raise CallParseError("no call list [name(arg=value, ...)] or single call found")


def match_call(
    answer_text: str, functions: list[dict], ground_truth: list[dict], category: str, call_format: str = "python"
) -> MatchResult:
    """BFCL's verdict on one answer, written in `call_format` (call_answers.py), for a record's
    function docs and ground truth.

    Unsupported categories raise ValueError; a bad answer never raises, it is just not valid.
    """
    _require_supported(category)
    from .call_answers import parse_answer  # it imports this module's python reader

    try:
        calls = parse_answer(answer_text, call_format)
    except CallParseError as error:
        return MatchResult(False, f"unparseable: {error}")
    return check_calls(calls, functions, ground_truth, category)


def check_calls(calls: list[dict], functions: list[dict], ground_truth: list[dict], category: str) -> MatchResult:
    """BFCL's verdict on calls already decoded to `[{name: {arg: value}}]`, by whatever reader."""
    _require_supported(category)
    # The category name alone picks the checker's mode: "parallel" (any order), "multiple"
    # (one call among several functions) or simple; live_* names select the same way.
    result = _load_checker()(functions, calls, ground_truth, test_category=category)
    if result["valid"]:
        return MatchResult(True, None)
    return MatchResult(False, _short_error(result))


def _require_supported(category: str) -> None:
    if category not in SUPPORTED_CATEGORIES:
        raise ValueError(
            f"unsupported BFCL category {category!r} (supported: {', '.join(SUPPORTED_CATEGORIES)})"
        )


def _expression(text: str) -> ast.expr | None:
    """The text as one Python expression, or None when it is not one."""
    try:
        return ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError):  # ValueError: a null byte, an int past the digit limit
        return None


def _bracketed_spans(text: str):
    """Each balanced `[...]` in the text, in order of its opening bracket.

    Python's tokenizer finds the closing brackets, so brackets inside string literals don't
    count. Tokenizing starts at a `[`, not at the start of the text, so an apostrophe in the
    prose before the list can't break it.
    """
    closing: dict[int, int | None] = {}
    start = text.find("[")
    while start != -1:
        if start not in closing:
            closing.update(_closing_offsets(text, start))
        end = closing[start]
        if end is not None:
            yield text[start:end]
        start = text.find("[", start + 1)


def _closing_offsets(text: str, start: int) -> dict[int, int | None]:
    """For the `[` at `start` and every `[` token inside it: the offset just past its closing
    bracket, or None if unclosed.

    Recording the nested ones spares a scan from each of them later, which would make text full
    of `[` (a degenerate answer) cost quadratic time.
    """
    line_starts = [start]
    for line in io.StringIO(text[start:]):
        line_starts.append(line_starts[-1] + len(line))
    offsets: dict[int, int | None] = {}
    open_brackets: list[tuple[str, int]] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text[start:]).readline):
            if token.type != tokenize.OP or token.string not in "([{)]}":
                continue
            row, column = token.start
            if token.string in "([{":
                open_brackets.append((token.string, line_starts[row - 1] + column))
                continue
            kind, opened = open_brackets.pop()
            if kind == "[":
                offsets[opened] = line_starts[row - 1] + column + 1
            if not open_brackets:
                break
    except (tokenize.TokenError, SyntaxError):
        pass
    offsets.update((opened, None) for kind, opened in open_brackets if kind == "[")
    return offsets


def _decode_call(node: ast.expr) -> dict[str, dict[str, Any]]:
    if not isinstance(node, ast.Call):
        raise CallParseError(f"list item is not a function call: {_snippet(node)}")
    name = _dotted_name(node.func)
    if node.args:
        raise CallParseError(f"{name}: positional arguments are not allowed, pass name=value")
    args: dict[str, Any] = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise CallParseError(f"{name}: **unpacking is not allowed")
        # Python's parser accepts a repeated keyword; a dict would silently keep the last one.
        if keyword.arg in args:
            raise CallParseError(f"{name}: argument {keyword.arg!r} is given twice")
        try:
            args[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError):  # TypeError: e.g. a list as a dict key
            value = _snippet(keyword.value)
            raise CallParseError(
                f"{name}: argument {keyword.arg!r} is not a Python literal: {value}"
            ) from None
    return {name: args}


def _dotted_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted_name(node.value)}.{node.attr}"
    raise CallParseError(f"called object is not a (dotted) name: {_snippet(node)}")


def _snippet(node: ast.expr) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 80 else text[:77] + "..."


def _short_error(result: dict) -> str:
    """`error_type: first message` from the checker's result."""
    messages = [message for message in result.get("error", []) if isinstance(message, str)]
    kind = result.get("error_type", "invalid")
    return f"{kind}: {messages[0]}" if messages else kind


def _load_checker() -> Callable[..., dict]:
    """BFCL's `ast_checker` for Python answers and our model name, imported once.

    The checker module imports `bfcl_eval.constants.model_config`, which imports every model
    handler and their SDKs (not installed here). The checker reads only
    `MODEL_CONFIG_MAPPING[model_name].underscore_to_dot` from it, so unless that module is
    already loaded a stand-in with an empty mapping is put in `sys.modules` first; either way
    our model's entry is added. Trying the real import is no option: here it fails on a missing
    SDK (anthropic) after some handler modules are already loaded.
    """
    global _checker
    with _checker_lock:
        if _checker is None:
            config = sys.modules.get(_MODEL_CONFIG_MODULE)
            if config is None:
                config = types.ModuleType(
                    _MODEL_CONFIG_MODULE, "Stand-in installed by tokenweight.evals.bfcl_match."
                )
                config.MODEL_CONFIG_MAPPING = {}
                sys.modules[_MODEL_CONFIG_MODULE] = config
            config.MODEL_CONFIG_MAPPING.setdefault(
                CHECKER_MODEL_NAME, types.SimpleNamespace(underscore_to_dot=False)
            )
            from bfcl_eval.constants.enums import Language
            from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

            _checker = functools.partial(
                ast_checker, language=Language.PYTHON, model_name=CHECKER_MODEL_NAME
            )
    return _checker
