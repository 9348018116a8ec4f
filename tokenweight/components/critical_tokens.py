"""Which tokens of a model's own correct answer are critical (CFT, arXiv 2510.10974), as a pure rule.

For every token y_t of an accepted answer, the answer is cut before it, the token is replaced by
one of the model's next most likely tokens there (rank 2, then rank 3, ...), the model decodes
greedily from that prefix, and the checker judges the result. Under `rule="all"` (the default) a
token is critical when *no* tested substitute keeps the answer right: nothing plausible could
stand in its place. Under `rule="any"` one substitute that breaks the answer is enough.

The probes run in rounds, one per substitute rank, over every undecided position of every
answer at once (so the caller batches the decoding across samples): a position leaves the rounds
as soon as its verdict is settled (under `all`, by a substitute that keeps the answer; under
`any`, by one that breaks it), so a rank-3 probe is spent only where rank 2 left it open.

Decoding and checking are the caller's (`continue_greedy`, `accepts`), so the rule is tested on
toy decoders whose answers are known and run on a real model by the critical stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

RULES = ("all", "any")


@dataclass
class CriticalResult:
    """One answer's verdicts: `critical` (1/0 per answer token) and, per token and substitute rank,
    whether the substitute's continuation was still accepted (None: not probed)."""

    critical: np.ndarray
    kept: list[list[bool | None]]


def find_critical(
    answers: Sequence[Sequence[int]],
    substitutes: Sequence[Sequence[Sequence[int]]],
    continue_greedy: Callable[[list[int], list[list[int]]], list[list[int]]],
    accepts: Callable[[int, list[int]], bool],
    rule: str = "all",
    on_round: Callable[[int, int], None] | None = None,
) -> list[CriticalResult]:
    """Critical tokens of each accepted answer.

    answers[s]: the answer's token ids (without its end-of-turn token).
    substitutes[s][t]: the ids to try in place of answers[s][t], most likely first (each differs
        from answers[s][t]); every position has the same number of them.
    continue_greedy(samples, prefixes): the greedy continuation of each answer prefix of sample
        samples[i] (the prefix is the answer so far, ending in the substitute).
    accepts(s, answer_ids): whether the checker accepts that full answer of sample s.
    on_round(rank, probes): told how many probes each round decodes.
    """
    if rule not in RULES:
        raise ValueError(f"unknown critical rule {rule!r}; valid: {', '.join(RULES)}")
    ranks = {len(row) for subs in substitutes for row in subs}
    if len(ranks) > 1:
        raise ValueError(f"every position needs the same number of substitutes, got {sorted(ranks)}")
    n_ranks = ranks.pop() if ranks else 0
    if n_ranks == 0 and any(len(a) for a in answers):
        raise ValueError("no substitutes to probe with")
    kept: list[list[list[bool | None]]] = [[[None] * n_ranks for _ in a] for a in answers]
    open_positions = [(s, t) for s, a in enumerate(answers) for t in range(len(a))]
    for rank in range(n_ranks):
        if not open_positions:
            break
        if on_round is not None:
            on_round(rank, len(open_positions))
        samples = [s for s, _ in open_positions]
        prefixes = [list(answers[s][:t]) + [substitutes[s][t][rank]] for s, t in open_positions]
        continuations = continue_greedy(samples, prefixes)
        still_open = []
        for (s, t), prefix, cont in zip(open_positions, prefixes, continuations, strict=True):
            ok = bool(accepts(s, prefix + list(cont)))
            kept[s][t][rank] = ok
            settled = ok if rule == "all" else not ok
            if not settled:
                still_open.append((s, t))
        open_positions = still_open
    results = []
    for s, a in enumerate(answers):
        flags = np.zeros(len(a), dtype=np.int8)
        for t in range(len(a)):
            tried = [k for k in kept[s][t] if k is not None]
            flags[t] = int(not any(tried)) if rule == "all" else int(not all(tried))
        results.append(CriticalResult(flags, kept[s]))
    return results


def substitutes_from_topk(answer: Sequence[int], topk: np.ndarray, count: int) -> list[list[int]]:
    """The `count` most likely tokens at each answer position other than the answer's own token.

    topk[t]: token ids by decreasing probability at the position that predicts answer[t]
    (at least count + 1 of them). The answer token is usually topk[t][0] (it was decoded
    greedily), but a full forward pass may rank near-ties differently from the decoding loop, so it
    is skipped wherever it stands rather than assumed first."""
    out = []
    for t, token in enumerate(answer):
        others = [int(v) for v in topk[t] if int(v) != int(token)]
        if len(others) < count:
            raise ValueError(f"position {t}: {len(others)} candidates for {count} substitutes")
        out.append(others[:count])
    return out
