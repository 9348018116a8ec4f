"""BFCL answers with token roles read from the call's syntax tree (config `kind: bfcl_roles`).

The samples are those of `tokenweight.sources.bfcl.read_bfcl` (same ids, messages and meta, so
the eval stage checks them the same way), with `meta["format"] = "bfcl"` and the roles of the
answer `[name(arg=value, ...), ...]`, parsed with Python's `ast`:

- reasoning: each call's function name (the whole dotted name, `math.factorial`), and each
  literal value: a string's text inside its quotes (as written, escapes included), a number's,
  boolean's or None's literal (a negative number with its `-`). Inside a list or dict argument
  every element (dict: every value) is a value in this sense; the container's brackets are not.
- unscored (`Sample.unscored_spans`, role -1: trained, but left out of the role scores):
  - parameter names (`base` in `base=10`), and the keys of dict values (their text inside the
    quotes): what to call an argument is in the function's schema, yet which ones the answer
    gives, in which order, depends on the question, so they are neither class;
  - the token right after each value: whether a value ended there is itself information. At
    the character level these are: for a string, its closing quote and the character after
    the string (`'units')` -> `'` and `)`); for a number, boolean or None, the character after it
    (`10,` -> `,`); for a list or dict, its closing bracket (the character after its last
    element) and the character after it. Any token that holds one of these characters is
    unscored, also when the tokenizer merges it with text before or after it (SmolLM2 makes one
    token of `')]`, of `],` and of `!')`), which may take a value's last character with it
    (`'Hi!'`: the `!` of the value is in the unscored token `!')`).
- boilerplate (0): the rest of the assistant message: `[`, `(`, `=`, opening quotes, a
  container's opening bracket and the `:` and spaces inside it, the `, ` between parallel calls,
  the answer's closing `]` (and a call's `)`) where no value ends right before it, and the
  end-of-turn marker. (Between two arguments, `, ` is unscored: its `,` follows a value and
  SmolLM2 puts its space in one token with the next parameter name.)

Every function name and value is reasoning, also where a parallel answer repeats a function
name of an earlier call (unlike the role suite, which counts repeats as boilerplate). An answer
that does not parse as a list of keyword-only calls with literal values becomes a Reject.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from tokenweight.samples import Reject, Sample
from tokenweight.sources.bfcl import read_bfcl

# Bump when the roles this module gives change (the prepare key also holds a hash of the file).
VERSION = "1"
FORMAT = "bfcl"


class AnswerRolesError(ValueError):
    """An answer the roles cannot be read from (not a list of keyword calls with literal values)."""


def read_bfcl_roles(categories: list[str], limit_per_category: int | None = None) -> Iterator[Sample | Reject]:
    """`read_bfcl`'s samples with syntax-tree roles on their answer (rejects pass through).

    Unknown categories raise ValueError here, before anything is read, as in read_bfcl."""
    items = read_bfcl(categories, limit_per_category)
    return (item if isinstance(item, Reject) else with_roles(item) for item in items)


def with_roles(sample: Sample) -> Sample | Reject:
    """The sample with the roles of its last message (the answer) filled in."""
    index = len(sample.messages) - 1
    try:
        reasoning, unscored = answer_roles(sample.messages[index]["content"])
    except AnswerRolesError as error:
        file, _, line = sample.origin.rpartition(":")
        return Reject(file, int(line) if line.isdigit() else 0, sample.id, f"answer roles: {error}")
    return Sample(sample.id, sample.messages, sample.origin, reasoning_spans={index: reasoning},
                  meta={**sample.meta, "format": FORMAT}, unscored_spans={index: unscored})


def answer_roles(text: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(reasoning spans, unscored spans) of an answer `[f(a=1), g(b='x')]`, in characters."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as error:
        raise AnswerRolesError(f"not Python: {error.msg}") from None
    if not isinstance(tree, ast.List) or not tree.elts:
        raise AnswerRolesError("not a non-empty list of calls")
    spans = _Spans(text)
    for call in tree.elts:
        if not isinstance(call, ast.Call):
            raise AnswerRolesError(f"list element {ast.unparse(call)[:40]!r} is not a call")
        if call.args or any(kw.arg is None for kw in call.keywords):
            raise AnswerRolesError("a call with positional or ** arguments")
        _dotted_name(call.func)
        spans.reasoning.append(spans.chars(call.func))
        for kw in call.keywords:
            start, _ = spans.chars(kw)
            if text[start:start + len(kw.arg)] != kw.arg:
                raise AnswerRolesError(f"parameter {kw.arg!r} is not where the syntax tree puts it")
            spans.unscored.append((start, start + len(kw.arg)))
            spans.value(kw.value)
    return _merged(spans.reasoning), _merged(spans.unscored)


class _Spans:
    def __init__(self, text: str) -> None:
        self.text = text
        self.reasoning: list[tuple[int, int]] = []
        self.unscored: list[tuple[int, int]] = []
        # ast gives UTF-8 byte columns; a character's index is the length of the decoded prefix.
        self.lines = text.split("\n")
        self.line_starts = [0]
        for line in self.lines[:-1]:
            self.line_starts.append(self.line_starts[-1] + len(line) + 1)

    def _char(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1]
        return self.line_starts[lineno - 1] + len(line.encode("utf-8")[:col].decode("utf-8"))

    def chars(self, node: ast.AST) -> tuple[int, int]:
        return self._char(node.lineno, node.col_offset), self._char(node.end_lineno, node.end_col_offset)

    def _after(self, end: int) -> None:
        if end < len(self.text):
            self.unscored.append((end, end + 1))

    def value(self, node: ast.AST) -> None:
        start, end = self.chars(node)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            quote = self.text[start]
            if quote not in "'\"" or self.text[end - 1] != quote or self.text[start:start + 3] == quote * 3:
                raise AnswerRolesError(f"string literal {self.text[start:end][:40]!r} is not one quoted piece")
            if end - start > 2:
                self.reasoning.append((start + 1, end - 1))
            self.unscored.append((end - 1, end))
        elif _is_scalar(node):
            self.reasoning.append((start, end))
        elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            for element in node.elts:
                self.value(element)
            self.unscored.append((end - 1, end))
        elif isinstance(node, ast.Dict):
            for key, item in zip(node.keys, node.values):
                if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                    raise AnswerRolesError("a dict key that is not a string")
                key_start, key_end = self.chars(key)
                if key_end - key_start > 2:
                    self.unscored.append((key_start + 1, key_end - 1))
                self.value(item)
            self.unscored.append((end - 1, end))
        else:
            raise AnswerRolesError(f"value {self.text[start:end][:40]!r} is not a literal")
        self._after(end)


def _is_scalar(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
        return isinstance(node, ast.Constant) and isinstance(node.value, (int, float, complex)) \
            and not isinstance(node.value, bool)
    return isinstance(node, ast.Constant) and not isinstance(node.value, (str, bytes))


def _dotted_name(node: ast.AST) -> None:
    while isinstance(node, ast.Attribute):
        node = node.value
    if not isinstance(node, ast.Name):
        raise AnswerRolesError("a function that is not a (dotted) name")


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, with touching or overlapping spans joined."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
