"""components/derangement.py: derangements, the grouped pairing and the assistant-turn swap."""

import random
from collections import Counter

import pytest

from tokenweight.components.derangement import derangement, shuffled_pairing, swap_assistant_turns


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 10, 17, 50])
def test_derangement_is_a_permutation_without_fixed_points(n):
    for seed in range(40):
        perm = derangement(n, random.Random(seed))
        assert sorted(perm) == list(range(n))
        assert all(p != i for i, p in enumerate(perm)), (n, seed, perm)


def test_derangement_of_one_item_raises():
    with pytest.raises(ValueError):
        derangement(1, random.Random(0))


def test_derangements_of_three_are_roughly_uniform():
    rng = random.Random(123)
    counts = Counter(tuple(derangement(3, rng)) for _ in range(2000))
    assert set(counts) == {(1, 2, 0), (2, 0, 1)}
    for perm, c in counts.items():
        assert 0.35 <= c / 2000 <= 0.65, counts


def test_derangements_of_four_cover_all_nine():
    rng = random.Random(7)
    counts = Counter(tuple(derangement(4, rng)) for _ in range(3000))
    assert len(counts) == 9  # D(4) = 9
    assert min(counts.values()) > 3000 / 9 * 0.6


def test_derangement_is_deterministic_for_a_seed():
    assert derangement(20, random.Random(5)) == derangement(20, random.Random(5))


def test_shuffled_pairing_groups_by_turn_count_and_leaves_singletons_out():
    turns = [1, 2, 1, 3, 2, 1, 2, 4, 1]
    for seed in range(30):
        pairing, left_out = shuffled_pairing(turns, random.Random(seed))
        assert sorted(left_out) == [3, 7]  # the only 3-turn and the only 4-turn sample
        assert set(pairing) == set(range(len(turns))) - {3, 7}
        for i, donor in pairing.items():
            assert donor != i
            assert turns[donor] == turns[i]
        # Within a group the donors are a permutation of the group (every output used once).
        for n in (1, 2):
            group = [i for i, t in enumerate(turns) if t == n]
            assert sorted(pairing[i] for i in group) == group


def test_shuffled_pairing_all_singletons():
    pairing, left_out = shuffled_pairing([1, 2, 3], random.Random(0))
    assert pairing == {} and sorted(left_out) == [0, 1, 2]


def test_swap_assistant_turns_keeps_other_turns_and_replaces_assistant_turns_in_order():
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "tool", "content": "t1"},
        {"role": "assistant", "content": "a2"},
    ]
    donor = [
        {"role": "user", "content": "other q"},
        {"role": "assistant", "content": "B1"},
        {"role": "tool", "content": "other t"},
        {"role": "assistant", "content": "B2"},
    ]
    out = swap_assistant_turns(messages, donor)
    assert out == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "B1"},
        {"role": "tool", "content": "t1"},
        {"role": "assistant", "content": "B2"},
    ]
    # Inputs are not modified, and the output does not alias them.
    assert messages[2]["content"] == "a1" and donor[1]["content"] == "B1"
    out[2]["content"] = "changed"
    assert donor[1]["content"] == "B1"


def test_foreign_hosts_stay_inside_their_split(smol_tokenizer):
    """The score stage's foreign context: a train answer is never scored inside an eval sample's
    input (an eval-only source, another format) or the other way round."""
    from tokenweight.components.chat_encode import encode_conversation
    from tokenweight.components.foreign_context import foreign_rows

    splits = ["train", "eval"] * 6
    messages = [[{"role": "user", "content": f"question {split} #{i}#"},
                 {"role": "assistant", "content": f"answer {i}"}] for i, split in enumerate(splits)]
    encoded = [encode_conversation(smol_tokenizer, m) for m in messages]
    rows, masks = [e.input_ids for e in encoded], [e.loss_mask for e in encoded]
    for seed in range(5):
        out = foreign_rows(smol_tokenizer, messages, rows, masks, random.Random(seed), None, splits)
        assert out.own_input == 0
        for i, split in enumerate(splits):
            text = smol_tokenizer.decode(out.rows[i])
            host = [j for j in range(len(splits)) if f"question {splits[j]} #{j}#" in text]
            assert len(host) == 1 and host[0] != i and splits[host[0]] == split, (seed, i, text)
            assert f"answer {i}<" in text
    # With one split for all, hosts cross (what the score stage did before it passed the splits).
    crossed = foreign_rows(smol_tokenizer, messages, rows, masks, random.Random(0), None, [""] * len(splits))
    texts = [smol_tokenizer.decode(r) for r in crossed.rows]
    assert any(f"question {'eval' if s == 'train' else 'train'}" in t for s, t in zip(splits, texts))
