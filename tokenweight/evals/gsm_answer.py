"""Read the final number out of a GSM8K-style answer and compare it with the gold answer.

`extract_answer` looks, in order, for the last `The answer is X` (the form our training
solutions end with), the last `#### X` (GSM8K's own answer line), the last `\\boxed{X}`, and
otherwise takes the last number anywhere in the text. Numbers are returned in the canonical
form the GSM sources write their answers in (`normalize_number`, from sources/numbers.py): no
`$`, thousands commas, `%` or trailing `.`; integral values without a fractional part
(`12.0` -> `12`); other decimals without trailing zeros (`12.50` -> `12.5`). `answers_match`
compares two answers as exact fractions.
"""

from __future__ import annotations

import re
from fractions import Fraction

from tokenweight.sources.numbers import normalize_number

# A number as it appears in text: an optional sign right before it (or before its `$`/`\$`),
# digits with commas only as thousands separators, an optional fraction. `(?<![\w.])` keeps us
# from starting inside a word or a longer number (`abc123`, the `.5` of `1.5`) and makes a `-`
# that follows a digit a range dash, not a sign (`5-3` -> 5, 3). A sign must touch the number,
# so `16 - 3` is a subtraction (16, 3), not 16 and -3.
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−]?)(?:\\?\$\s?)?(?P<sign2>[-−]?)"
    r"(?P<digits>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?!\d)"
)
_ANSWER_IS = re.compile(r"\banswer\s+is\b", re.IGNORECASE)
_HASHES = re.compile(r"####")
# Right after `answer is` / `####`, a dash before the number is its sign even when spaced out
# (oe-eval's GSM8K chain-of-thought texts end `So the answer is - 10.`).
_SPACED_SIGN = re.compile(r"[\s:*]*[-−]\s+(?=(?:\\?\$\s?)?\d)")
_BOXED = re.compile(r"\\boxed\s*\{")


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a generated solution, canonical (see normalize_number).

    Tries, in order: the last `answer is` (case-insensitive, so also `The final answer is`),
    the last `####`, each taking the first number on the rest of that line (a dash right after
    the marker is a sign even with a space: `answer is - 10` -> -10); then the first
    number inside the last `\\boxed{...}`. When the marker is missing or has no number after it,
    the next rule is tried; the fallback is the last number in the text. None when the text
    has no number at all. Commas count only as thousands separators (`1,234`), so Indian-style
    grouping (`1,00,000`) is not read as one number.
    """
    for found in (_after_last(_ANSWER_IS, text), _after_last(_HASHES, text), _boxed(text)):
        if found is not None:
            return found
    numbers = list(_NUMBER.finditer(text))
    return _from_match(numbers[-1]) if numbers else None


def answers_match(predicted_text: str, gold: str) -> bool:
    """Whether the answer extracted from `predicted_text` equals the number `gold`, exactly.

    `gold` is a number string (`"18"`, `"1,600"`, `"12.50"`); the two are compared as exact
    fractions, so `12.5` matches `12.50`, and there is no tolerance (`0.33` is not `0.333`).
    """
    predicted = extract_answer(predicted_text)
    expected = normalize_number(gold)
    if predicted is None or expected is None:
        return False
    return Fraction(predicted) == Fraction(expected)


def _from_match(match: re.Match) -> str | None:
    negative = bool(match.group("sign") or match.group("sign2"))
    return normalize_number(("-" if negative else "") + match.group("digits"))


def _first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return _from_match(match) if match else None


def _after_last(marker: re.Pattern, text: str) -> str | None:
    """The first number on the rest of the line after the last `marker`, if there is one."""
    matches = list(marker.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end():].split("\n", 1)[0]
    number = _first_number(rest)
    if number is not None and not number.startswith("-") and _SPACED_SIGN.match(rest):
        return normalize_number("-" + number)
    return number


def _boxed(text: str) -> str | None:
    """The first number inside the last `\\boxed{...}` (braces inside it are balanced)."""
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    depth, end = 1, start
    while end < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        end += 1
    content = text[start:end - 1] if depth == 0 else text[start:]
    return _first_number(content.replace("{,}", ","))  # LaTeX thousands: 2{,}500
