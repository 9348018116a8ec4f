"""The sample records that sources hand to the prepare stage, and the rejects they set aside.

Every source (JSONL/Parquet chat files, BFCL, the synthetic generator) yields `Sample` or `Reject`
objects; nothing is dropped without a `Reject` that says where it came from and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Sample:
    """One conversation, normalised.

    messages: [{"role": one of ROLES, "content": str}, ...]; tools (if any) are already rendered
        into the system message by the source, so the chat template sees plain text.
    origin: "file:line" (or "bfcl:<category>:<index>") for error messages and rejects.
    reasoning_spans: only for data whose token roles are known (the synthetic generator, the
        role suite, BFCL answers with syntax-tree roles): for each message index, the [start, end)
        character spans of its content that carry reasoning (values taken from the input). None
        when unknown. The rest of such an assistant message is boilerplate, except where
        unscored_spans says otherwise.
    meta: small JSON-able extras kept with the sample (e.g. BFCL category, ground truth; the
        role suite's `format`).
    unscored_spans: spans of the same shape (and only with reasoning_spans) whose tokens are
        neither class: their role truth is -1, so they are left out of the role scores, but they
        are trained like every other assistant token (e.g. BFCL parameter names). A token that
        overlaps an unscored span is unscored even when it also overlaps a reasoning span.
    """

    id: str
    messages: list[dict[str, str]]
    origin: str
    reasoning_spans: dict[int, list[tuple[int, int]]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    unscored_spans: dict[int, list[tuple[int, int]]] | None = None


@dataclass(frozen=True)
class Reject:
    """A row set aside: where it was (file, line), its id if it had one, and why."""

    file: str
    line: int
    id: str | None
    reason: str
