"""The critical-token rule (CFT) on toy decoders whose answers are known, and its weight column."""

import numpy as np
import pytest

from tokenweight.components.critical_tokens import find_critical, substitutes_from_topk
from tokenweight.components.token_weights import critical_weights, sample_weights

# The answer `10 11 12 13`: a checker that accepts any answer whose third token is 12 (the planted
# value) and whose length is 4; everything else about the answer is free.
ANSWER = [10, 11, 12, 13]


def _accepts_value_12(_sample: int, ids: list[int]) -> bool:
    return len(ids) == 4 and ids[2] == 12


def _resume_the_answer(samples: list[int], prefixes: list[list[int]]) -> list[list[int]]:
    """A decoder that, after any prefix, goes on with the rest of the original answer."""
    return [ANSWER[len(p):] for p in prefixes]


def test_the_planted_value_is_critical_and_free_tokens_are_not():
    substitutes = [[20, 21]] * 4
    [result] = find_critical([ANSWER], [substitutes], _resume_the_answer, _accepts_value_12)
    assert result.critical.tolist() == [0, 0, 1, 0]
    # Under `all`, a position one substitute keeps right needs no second probe; the value needs both.
    assert result.kept == [[True, None], [True, None], [False, False], [True, None]]


def test_a_token_only_one_substitute_breaks_is_critical_under_any_but_not_all():
    substitutes = [[20, 21], [22, 23], [12, 24], [25, 26]]  # at the value, rank 2 happens to be 12 again

    def decoder(samples, prefixes):
        return [ANSWER[len(p):] for p in prefixes]

    [under_all] = find_critical([ANSWER], [substitutes], decoder, _accepts_value_12, rule="all")
    [under_any] = find_critical([ANSWER], [substitutes], decoder, _accepts_value_12, rule="any")
    assert under_all.critical.tolist() == [0, 0, 0, 0]
    assert under_any.critical.tolist() == [0, 0, 1, 0]
    assert under_any.kept[2] == [True, False]


def test_a_continuation_that_repairs_the_answer_keeps_the_token_uncritical():
    """The substitute at the value is 99, but this decoder's continuation restates the value: the
    checker sees a right answer, so the token was not indispensable."""
    def repairing(samples, prefixes):
        return [[12, 13] if len(p) == 3 else ANSWER[len(p):] for p in prefixes]

    def accepts_any_12(_s, ids):
        return 12 in ids

    [result] = find_critical([ANSWER], [[[99, 98]] * 4], repairing, accepts_any_12)
    assert result.critical.tolist() == [0, 0, 0, 0]


def test_probes_of_every_answer_go_to_the_decoder_together_per_rank():
    answers = [ANSWER, [10, 12, 13]]
    calls = []

    def decoder(samples, prefixes):
        calls.append(list(samples))
        return [answers[s][len(p):] for s, p in zip(samples, prefixes)]

    def accepts(s, ids):
        return ids == answers[s]

    results = find_critical(answers, [[[20, 21]] * 4, [[20, 21]] * 3], decoder, accepts)
    assert calls == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1]]  # every substitute breaks an exact match
    assert [r.critical.tolist() for r in results] == [[1, 1, 1, 1], [1, 1, 1]]


def test_substitutes_skip_the_answer_token_wherever_it_ranks():
    topk = np.array([[10, 5, 6], [7, 11, 8]])
    assert substitutes_from_topk([10, 11], topk, 2) == [[5, 6], [7, 8]]
    with pytest.raises(ValueError, match="2 candidates for 3"):
        substitutes_from_topk([10, 11], topk, 3)


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown critical rule 'most'"):
        find_critical([ANSWER], [[[20]] * 4], _resume_the_answer, _accepts_value_12, rule="most")


def test_critical_weights_share_one_over_the_critical_tokens():
    assert critical_weights(np.array([-1, 0, 1, 1, 0])).tolist() == [0.0, 0.0, 0.5, 0.5, 0.0]
    assert critical_weights(np.array([-1, 0, 0])).tolist() == [0.0, 0.0, 0.0]  # nothing critical: no weight
    with pytest.raises(ValueError, match="critical stage"):
        sample_weights("critical", np.zeros(3), np.zeros(3), np.ones(3), 3.0)
