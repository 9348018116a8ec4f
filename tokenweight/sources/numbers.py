"""The canonical form of a number in our GSM answers: `normalize_number`.

The GSM sources (gsm.py) write each solution's final line as `The answer is N.` with N in this
form, and keep N as `meta["answer"]`; the answer checker (evals/gsm_answer.py) reads numbers out
of generated text into the same form to compare them. The form is part of the data format, so it
lives with the sources: a checker may know the format it checks (evals import sources), a source
never knows its checker (sources import no evals).

Canonical: no `$`, thousands commas, `%` or trailing `.`; integral values without a fractional
part (`12.0` -> `12`); other decimals without trailing zeros (`12.50` -> `12.5`).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# The whole of a string that normalize_number accepts, once `$`, `%`, spaces and a trailing `.`
# are stripped.
_WHOLE_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")


def normalize_number(text: str) -> str | None:
    """`" $1,234.50 "` -> `"1234.5"`, `"12.0"` -> `"12"`, `"-3"` -> `"-3"`; None if not a number.

    The whole string must be one number, optionally with `$` (or `\\$`), a trailing `%` or `.`,
    and surrounding spaces.
    """
    value = text.strip().replace("−", "-").replace("\\$", "").replace("$", "")
    value = value.rstrip(".").rstrip("%").strip()
    if not _WHOLE_NUMBER.fullmatch(value):
        return None
    try:
        number = Decimal(value.replace(",", ""))
    except InvalidOperation:
        return None
    return _canonical(number)


def _canonical(number: Decimal) -> str:
    if number == number.to_integral_value():
        return str(int(number))  # also turns -0 into 0
    # normalize() drops trailing zeros; format "f" keeps it out of exponent notation.
    return format(number.normalize(), "f")
