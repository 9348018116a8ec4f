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
    reasoning_spans: only for data whose token roles are known (the synthetic generator):
        for each message index, the [start, end) character spans of its content that carry
        reasoning (values taken from the input). None when unknown.
    meta: small JSON-able extras kept with the sample (e.g. BFCL category, ground truth).
    """

    id: str
    messages: list[dict[str, str]]
    origin: str
    reasoning_spans: dict[int, list[tuple[int, int]]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reject:
    """A row set aside: where it was (file, line), its id if it had one, and why."""

    file: str
    line: int
    id: str | None
    reason: str
