"""components/token_weights.py: classes, the RFT weights, uniform weights, and the weights schema."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenweight.components.token_weights import (
    WEIGHT_METHODS,
    class_groups,
    rft_group_weights,
    rft_static_weights,
    sample_weights,
    probability_gap,
    token_classes,
    group_max,
    prefix_weights,
    rho1_weights,
    uniform_weights,
    value_groups,
    word_groups,
)
from tokenweight.schemas import WEIGHTED


def softmax2(a, b, tau):
    ea, eb = math.exp(a / tau), math.exp(b / tau)
    return ea / (ea + eb), eb / (ea + eb)


def test_rft_weighted_loss_is_the_rft_loss():
    loss = np.array([0.0, 2.0, 1.0, 3.0, 0.5, 4.0, 0.0], dtype=np.float32)
    mask = np.array([0, 1, 1, 1, 1, 1, 0], dtype=np.int8)
    classes = np.array([-1, 0, 1, 0, 1, 1, -1], dtype=np.int8)
    tau = 2.0
    w = rft_static_weights(loss, classes, tau)
    l_b = loss[classes == 0].mean()
    l_r = loss[classes == 1].mean()
    w_b, w_r = softmax2(l_b, l_r, tau)
    assert float((w * loss).sum()) == pytest.approx(w_b * l_b + w_r * l_r, rel=1e-6)
    assert np.allclose(w[classes == 0], w_b / 2) and np.allclose(w[classes == 1], w_r / 3)
    assert np.all(w[mask == 0] == 0)
    assert float(w.sum()) == pytest.approx(1.0, rel=1e-6)


def test_rft_group_weights_are_a_softmax_favouring_the_harder_class():
    w_b, w_r = rft_group_weights(1.0, 3.0, 2.0)
    assert (w_b, w_r) == pytest.approx(softmax2(1.0, 3.0, 2.0))
    assert w_r > w_b and w_b + w_r == pytest.approx(1.0)
    # Numerically stable for large losses.
    assert rft_group_weights(1000.0, 1001.0, 0.01) == pytest.approx((0.0, 1.0), abs=1e-12)


@pytest.mark.parametrize("cls", [0, 1])
def test_single_class_sample_gets_one_over_n(cls):
    loss = np.array([0, 1.0, 5.0, 2.0, 0], dtype=np.float32)
    classes = np.array([-1, cls, cls, cls, -1], dtype=np.int8)
    w = rft_static_weights(loss, classes, 3.0)
    assert w.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 0])


def test_very_large_tau_splits_half_and_half():
    loss = np.array([1.0, 9.0, 0.1, 7.0, 3.0], dtype=np.float32)
    classes = np.array([0, 1, 0, 0, 1], dtype=np.int8)
    w = rft_static_weights(loss, classes, 1e9)
    assert w[classes == 0] == pytest.approx([0.5 / 3] * 3)
    assert w[classes == 1] == pytest.approx([0.5 / 2] * 2)


def test_no_target_tokens_gives_zero_weights():
    classes = np.array([-1, -1], dtype=np.int8)
    assert rft_static_weights(np.zeros(2, np.float32), classes, 1.0).tolist() == [0, 0]
    assert uniform_weights(np.zeros(2, np.int8)).tolist() == [0, 0]


def test_uniform_weights_sum_to_one_on_the_mask():
    mask = np.array([0, 1, 1, 0, 1, 1, 1], dtype=np.int8)
    w = uniform_weights(mask)
    assert w.dtype == np.float32
    assert np.all(w[mask == 0] == 0) and np.allclose(w[mask == 1], 0.2)
    assert float(w.sum()) == pytest.approx(1.0)


def test_token_classes_reasoning_exactly_where_ld_exceeds_margin():
    disc = np.array([1.0, 2.0, 2.2, 2.3, 0.5, 9.0], dtype=np.float32)
    ref = np.array([1.0, 2.0, 2.0, 2.0, 1.0, 0.0], dtype=np.float32)
    mask = np.array([1, 1, 1, 1, 1, 0], dtype=np.int8)
    classes = token_classes(disc, ref, mask, margin=0.25)
    assert classes.dtype == np.int8
    # LD = [0, 0, 0.2, 0.3, -0.5, (9 off mask)]
    assert classes.tolist() == [0, 0, 0, 1, 0, -1]
    assert token_classes(disc, ref, mask, margin=0.0).tolist() == [0, 0, 1, 1, 0, -1]
    # Equality is not "greater than".
    assert token_classes(np.array([1.5], np.float32), np.array([1.0], np.float32), np.array([1], np.int8), 0.5).tolist() == [0]


def test_min_gap_keeps_only_tokens_the_input_decides():
    # Token 0: a value (0.02 nats with the input, 5 without: gap 0.97). Token 1: a stock word both
    # models find hard (6 and 8 nats: LD 2, gap 0.002). Token 2: one of two templates (0.69 vs 3.0:
    # LD 2.3, gap 0.45). Token 3: the value's second piece (LD 0), grouped with token 0.
    disc = np.array([5.0, 8.0, 3.0, 0.1], dtype=np.float32)
    ref = np.array([0.02, 6.0, 0.69, 0.1], dtype=np.float32)
    mask = np.ones(4, dtype=np.int8)
    assert token_classes(disc, ref, mask, 1.0).tolist() == [1, 1, 1, 0]
    assert token_classes(disc, ref, mask, 1.0, min_gap=0.8).tolist() == [1, 0, 0, 0]
    assert token_classes(disc, ref, mask, 1.0, min_gap=0.4).tolist() == [1, 0, 1, 0]
    # A group is reasoning when one of its tokens passes both tests, and only then.
    groups = np.array([0, 1, 2, 0])
    assert token_classes(disc, ref, mask, 1.0, groups, min_gap=0.8).tolist() == [1, 0, 0, 1]
    assert token_classes(disc, ref, mask, 1.0, np.array([0, 1, 1, 0]), min_gap=0.8).tolist() == [1, 0, 0, 1]
    # The margin still applies: a gap above min_gap with LD under the margin is boilerplate.
    assert token_classes(disc, ref, mask, 5.0, min_gap=0.8).tolist() == [0, 0, 0, 0]
    assert probability_gap(disc, ref)[0] == pytest.approx(np.exp(-0.02) - np.exp(-5.0))


def test_unknown_method_names_the_valid_ones():
    with pytest.raises(ValueError) as err:
        sample_weights("dft", np.zeros(2), np.zeros(2, np.int8), np.ones(2, np.int8), 1.0)
    assert "'dft'" in str(err.value)
    for method in WEIGHT_METHODS:
        assert method in str(err.value)


def test_sample_weights_dispatch():
    loss = np.array([0, 1.0, 3.0], dtype=np.float32)
    classes = np.array([-1, 0, 1], dtype=np.int8)
    mask = np.array([0, 1, 1], dtype=np.int8)
    assert sample_weights("uniform", loss, classes, mask, 1.0).tolist() == [0, 0.5, 0.5]
    w = sample_weights("rft", loss, classes, mask, 1.0)
    assert w.tolist() == pytest.approx([0, *softmax2(1.0, 3.0, 1.0)])
    ref = np.array([0, 0.0, 0.5], dtype=np.float32)
    assert sample_weights("rho1", loss, classes, mask, 1.0, ref, top_share=0.5).tolist() == [0, 0, 1.0]
    assert sample_weights("prefix", loss, classes, mask, 1.0, prefix_tokens=1).tolist() == [0, 1.0, 0]
    with pytest.raises(ValueError, match="rho1 needs a reference"):
        sample_weights("rho1", loss, classes, mask, 1.0)


@pytest.mark.parametrize("top_share", [0.01, 0.3, 0.5, 0.6, 1.0])
def test_rho1_selects_exactly_ceil_k_percent_of_the_target_tokens_with_the_highest_excess_loss(top_share):
    rng = np.random.default_rng(7)
    mask = (rng.random(57) < 0.7).astype(np.int8)
    loss_base, loss_ref = rng.random(57).astype(np.float32) * 4, rng.random(57).astype(np.float32) * 4
    weight = rho1_weights(loss_base, loss_ref, mask, top_share)
    n = int(mask.sum())
    k = math.ceil(top_share * n)
    chosen = np.flatnonzero(weight)
    assert len(chosen) == k and np.all(mask[chosen] == 1)
    assert weight[chosen] == pytest.approx(np.full(k, 1 / k))
    excess = loss_base - loss_ref
    left_out = np.flatnonzero((mask == 1) & (weight == 0))
    if len(left_out):
        assert excess[chosen].min() >= excess[left_out].max()


def test_prefix_weighs_exactly_the_first_k_target_tokens_of_every_turn():
    # three assistant turns of 5, 2 and 4 target tokens, with prompt and tool tokens between
    mask = np.array([0, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 1, 1, 0], dtype=np.int8)
    weight = prefix_weights(mask, 3)
    expected = np.zeros(len(mask), bool)
    expected[[2, 3, 4, 9, 10, 12, 13, 14]] = True
    assert np.array_equal(weight > 0, expected)
    assert weight[expected] == pytest.approx(np.full(8, 1 / 8))
    assert prefix_weights(np.zeros(4, np.int8), 3).tolist() == [0, 0, 0, 0]


@st.composite
def samples(draw):
    n = draw(st.integers(1, 40))
    floats = st.floats(0.0, 30.0, allow_nan=False, width=32)
    mask = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=np.int8)
    mask[0] = 0  # token 0 is never a target
    loss_base = np.array(draw(st.lists(floats, min_size=n, max_size=n)), dtype=np.float32) * mask
    loss_disc = np.array(draw(st.lists(floats, min_size=n, max_size=n)), dtype=np.float32) * mask
    loss_ref = np.array(draw(st.lists(floats, min_size=n, max_size=n)), dtype=np.float32) * mask
    margin = draw(st.sampled_from([0.0, 0.2, 1.0]))
    tau = draw(st.floats(0.05, 100.0))
    method = draw(st.sampled_from(WEIGHT_METHODS))
    return mask, loss_base, loss_disc, loss_ref, margin, tau, method


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples())
def test_weights_property_and_parquet_round_trip(tmp_path, sample):
    mask, loss_base, loss_disc, loss_ref, margin, tau, method = sample
    classes = token_classes(loss_disc, loss_ref, mask, margin)
    weight = sample_weights(method, loss_base, classes, mask, tau, loss_ref)
    assert weight.dtype == np.float32 and weight.shape == mask.shape
    assert np.all(np.isfinite(weight)) and np.all(weight >= 0)
    assert np.all(weight[mask == 0] == 0)
    assert np.array_equal(classes == -1, mask == 0)
    if mask.any():
        assert float(weight[mask == 1].sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
    else:
        assert float(weight.sum()) == 0.0

    n = len(mask)
    row = {
        "id": "s-1", "split": "train", "text": "x" * n, "input_ids": list(range(n)),
        "offsets": [[i, i + 1] for i in range(n)], "loss_mask": mask, "loss_base": loss_base,
        "loss_disc": loss_disc, "loss_ref": loss_ref, "token_class": classes, "weight": weight,
    }
    path = tmp_path / "part-00000.parquet"
    pq.write_table(pa.Table.from_pylist([row], schema=WEIGHTED), path)
    back = pq.read_table(path)
    assert back.schema.equals(WEIGHTED)
    got = back.to_pylist()[0]
    for name, arr in (("loss_mask", mask), ("loss_base", loss_base), ("loss_disc", loss_disc),
                      ("loss_ref", loss_ref), ("token_class", classes), ("weight", weight)):
        assert np.array_equal(np.asarray(got[name], dtype=arr.dtype), arr), name
        assert got[name] == arr.tolist(), name
    assert got["offsets"] == row["offsets"] and got["input_ids"] == row["input_ids"]


def _words(tokenizer, content: str) -> list[str]:
    """The words word_groups finds in an assistant answer, as strings."""
    enc = tokenizer(content, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    groups = word_groups(content, offsets, [1] * len(offsets))
    words: dict[int, str] = {}
    for g, (a, b) in zip(groups, offsets):
        words[g] = words.get(g, "") + content[a:b]
    return list(words.values())


def test_word_groups_keep_values_whole_and_split_punctuation(smol_tokenizer):
    words = _words(smol_tokenizer, "[get_directions(origin='Nairobi', when='2024-05-01T14:30', to='priya.n@example.com')]")
    assert "get_directions" in words
    assert "Nairobi" in words and "2024-05-01T14:30" in words and "priya.n@example.com" in words
    # Quotes, `=`, brackets and commas never join a value.
    assert not any(("'" in w or "=" in w) and any(c.isalnum() for c in w) for w in words)


def test_word_groups_detach_a_sentence_final_connector(smol_tokenizer):
    words = _words(smol_tokenizer, "I'll get directions.\nIt is 287 km.")
    assert "directions" in " ".join(words).split() or any(w.strip() == "directions" for w in words)
    assert not any(w.strip().endswith(".") and len(w.strip()) > 1 for w in words)


def test_word_groups_skip_tokens_off_the_mask():
    text = "ab cd"
    offsets = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    groups = word_groups(text, offsets, [1, 0, 0, 1, 1])
    assert groups[1] == groups[2] == -1
    assert groups[0] != groups[3] and groups[3] == groups[4]


def _value_words(tokenizer, user: str, answer: str) -> list[str]:
    """The groups value_groups finds in a real chat's assistant turn, as strings."""
    from tokenweight.components.chat_encode import encode_conversation

    enc = encode_conversation(tokenizer, [{"role": "user", "content": user},
                                          {"role": "assistant", "content": answer}])
    groups = value_groups(enc.text, enc.offsets, enc.loss_mask)
    words: dict[int, str] = {}
    for g, (a, b) in zip(groups, enc.offsets):
        if g >= 0:
            words[g] = words.get(g, "") + enc.text[a:b]
    return [w.strip() for w in words.values()]


def test_value_groups_join_a_copied_run_of_words_and_nothing_else(smol_tokenizer):
    user = "Search the web for how do heat pumps work, please. Tools: web_search(query, max_results)"
    answer = '{"name": "web_search", "arguments": {"query": "how do heat pumps work", "max_results": 3}}'
    words = _value_words(smol_tokenizer, user, answer)
    assert "how do heat pumps work" in words  # one decision, copied from the input
    # The key, the tool name and the number stay their own words: quotes, `:` and `,` end a run.
    assert "query" in words and "web_search" in words and "3" in words
    assert not any(" " in w and ('"' in w or ":" in w) for w in words)
    # The same words not in the input stay separate words.
    alone = _value_words(smol_tokenizer, "Search the web, please.", answer)
    assert "how do heat pumps work" not in alone and "heat" in alone


def test_value_groups_spread_the_largest_ld_over_a_copied_run(smol_tokenizer):
    from tokenweight.components.chat_encode import encode_conversation

    enc = encode_conversation(smol_tokenizer, [{"role": "user", "content": "Title it Blue Door Cafe."},
                                               {"role": "assistant", "content": 'title="Blue Door Cafe"'}])
    mask = np.asarray(enc.loss_mask)
    targets = [i for i in range(len(mask)) if mask[i]]
    first = next(i for i in targets if enc.text[enc.offsets[i][0]:enc.offsets[i][1]].strip() == "Blue")
    ld = np.zeros(len(mask), dtype=np.float32)
    ld[first] = 3.0  # only the run's first word was hard without the input
    classes = token_classes(ld, np.zeros_like(ld), mask, 0.5, value_groups(enc.text, enc.offsets, mask))
    start = enc.text.rindex("Blue Door Cafe")
    run = [i for i in targets if start <= enc.offsets[i][0] and enc.offsets[i][1] <= start + len("Blue Door Cafe")]
    assert len(run) >= 3 and all(classes[i] == 1 for i in run)
    assert sum(classes[i] == 1 for i in targets) == len(run)  # `title`, `=`, quotes stay boilerplate
    word_classes = token_classes(ld, np.zeros_like(ld), mask, 0.5, word_groups(enc.text, enc.offsets, mask))
    assert sum(word_classes[i] == 1 for i in targets) < len(run)


def test_class_groups_name_the_granularity():
    assert class_groups("ab", [(0, 1), (1, 2)], [1, 1], "token") is None
    with pytest.raises(ValueError, match="granularity 'words'"):
        class_groups("ab", [(0, 1), (1, 2)], [1, 1], "words")


def test_group_max_spreads_the_largest_value_over_each_group():
    values = np.array([0.1, -0.5, 0.9, 0.2, 7.0], dtype=np.float32)
    groups = np.array([0, 0, 1, 1, -1])
    out = group_max(values, groups)
    assert out.tolist() == pytest.approx([0.1, 0.1, 0.9, 0.9, 7.0])


def test_token_classes_by_word_follow_the_words_largest_ld():
    disc = np.array([0, 2.0, 0.1, 0.1, 0.1], dtype=np.float32)
    ref = np.zeros(5, dtype=np.float32)
    mask = np.array([0, 1, 1, 1, 1])
    groups = np.array([-1, 0, 0, 1, 1])
    assert token_classes(disc, ref, mask, 0.5, groups).tolist() == [-1, 1, 1, 0, 0]
    assert token_classes(disc, ref, mask, 0.5).tolist() == [-1, 1, 0, 0, 0]


# Text a chat can carry: letters of several scripts, digits, JSON punctuation, whitespace, emoji.
_CHAT_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), whitelist_characters="\n\t"), min_size=1,
                     max_size=60).filter(lambda t: t.strip())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=_CHAT_TEXT, answer=_CHAT_TEXT, seed=st.integers(0, 2**32 - 1), method=st.sampled_from(WEIGHT_METHODS),
       granularity=st.sampled_from(["token", "word", "value"]))
def test_real_tokens_to_weights_to_a_shard_and_back(smol_tokenizer, tmp_path, user, answer, seed, method, granularity):
    """Tokens of a real chat -> classes and weights -> a shard written as the stage writes it ->
    read back: every column round-trips exactly, lengths agree, offsets point into the text."""
    from tokenweight.components.chat_encode import encode_conversation
    from tokenweight.store import Store

    enc = encode_conversation(smol_tokenizer, [{"role": "user", "content": user},
                                               {"role": "assistant", "content": answer}], None, max_tokens=None)
    n, mask = len(enc.input_ids), np.asarray(enc.loss_mask, dtype=np.int8)
    rng = np.random.default_rng(seed)
    losses = [(rng.gamma(1.0, 2.0, n) * mask).astype(np.float32) for _ in range(3)]
    groups = class_groups(enc.text, enc.offsets, mask, granularity)
    classes = token_classes(losses[1], losses[2], mask, 0.1, groups)
    weight = sample_weights(method, losses[0], classes, mask, 3.0, losses[2])
    row = {"id": f"s-{seed}", "split": "train", "text": enc.text, "input_ids": enc.input_ids,
           "offsets": [list(o) for o in enc.offsets], "loss_mask": mask, "loss_base": losses[0],
           "loss_disc": losses[1], "loss_ref": losses[2], "token_class": classes, "weight": weight}
    store = Store(str(tmp_path / f"store-{seed}"))
    with store.begin("weights", "k", resumable=True) as writer:
        writer.write_shard(0, pa.Table.from_pylist([row], schema=WEIGHTED))
        got = pq.read_table(writer.dir / "part-00000.parquet").to_pylist()[0]
    assert got["text"] == enc.text and got["input_ids"] == enc.input_ids and got["offsets"] == row["offsets"]
    for name in ("loss_mask", "loss_base", "loss_disc", "loss_ref", "token_class", "weight"):
        assert got[name] == row[name].tolist() and len(got[name]) == n, name
    assert np.all(np.isfinite(got["weight"])) and all(w >= 0 for w in got["weight"])
    assert all(0 <= s <= e <= len(enc.text) for s, e in got["offsets"])
    assert answer.strip()[:1] in "".join(enc.text[s:e] for (s, e), m in zip(got["offsets"], mask) if m)
