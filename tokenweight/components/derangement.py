"""Shuffled pairings: every input gets another sample's output, none keeps its own.

Multi-turn rule: a sample's input is everything but its assistant turns. Samples are grouped by
their number of assistant turns; within a group, sample i takes all assistant turns of sample
pi(i) (turn k replaces turn k), pi a uniformly random derangement. A sample alone in its group
cannot be paired and is left out of the shuffled set (and counted).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Sequence


def derangement(n: int, rng: random.Random) -> list[int]:
    """A uniformly random permutation of range(n) with no fixed point (rejection sampling,
    about e tries on average)."""
    if n == 1:
        raise ValueError("one item cannot be deranged")
    perm = list(range(n))
    while True:
        rng.shuffle(perm)
        if all(p != i for i, p in enumerate(perm)):
            return perm


def shuffled_pairing(turn_counts: Sequence[Hashable], rng: random.Random) -> tuple[dict[int, int], list[int]]:
    """Map sample index -> the index whose assistant turns it takes, and the indices left out.
    Samples pair only within a group of equal `turn_counts` (a number of turns, or any sortable key
    that also holds it)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(turn_counts):
        groups[n].append(i)
    pairing, left_out = {}, []
    for n in sorted(groups):
        members = groups[n]
        if len(members) == 1:
            left_out.extend(members)
            continue
        for i, p in zip(members, derangement(len(members), rng)):
            pairing[i] = members[p]
    return pairing, left_out


def swap_assistant_turns(messages: list[dict], donor: list[dict]) -> list[dict]:
    """`messages` with its assistant turns replaced, in order, by the donor's."""
    replies = iter([m for m in donor if m["role"] == "assistant"])
    return [dict(next(replies)) if m["role"] == "assistant" else dict(m) for m in messages]
