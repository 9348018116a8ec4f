"""components/chat_encode.py with the real SmolLM2 tokenizer: masks, offsets, role truth, truncation."""

import pytest

from tokenweight.components.chat_encode import assistant_spans, encode_conversation

END = "<|im_end|>"

CONVERSATION = [
    {"role": "system", "content": "You call tools. Tools: get_weather(city)."},
    {"role": "user", "content": "Weather in Paris and then Oslo?"},
    {"role": "assistant", "content": 'get_weather(city="Paris")'},
    {"role": "tool", "content": '{"temp_c": 12, "sky": "rain"}'},
    {"role": "assistant", "content": 'get_weather(city="Oslo")'},
    {"role": "tool", "content": '{"temp_c": -3, "sky": "snow"}'},
    {"role": "assistant", "content": "Paris: 12 C and rain.\nOslo: -3 C and snow."},
]


def masked_runs(enc, tokenizer):
    """Decoded text of each maximal run of masked tokens."""
    runs, current = [], []
    for tok, m in zip(enc.input_ids, enc.loss_mask):
        if m:
            current.append(tok)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_mask_covers_exactly_each_assistant_turn_plus_end_of_turn(smol_tokenizer):
    enc = encode_conversation(smol_tokenizer, CONVERSATION)
    expected = [m["content"] + END for m in CONVERSATION if m["role"] == "assistant"]
    assert masked_runs(enc, smol_tokenizer) == expected
    assert sum(enc.loss_mask) == sum(
        len(smol_tokenizer(e, add_special_tokens=False)["input_ids"]) for e in expected
    )


def test_system_user_and_tool_text_is_never_masked(smol_tokenizer):
    enc = encode_conversation(smol_tokenizer, CONVERSATION)
    _, spans = assistant_spans(smol_tokenizer, CONVERSATION)
    for t, ((a, b), m) in enumerate(zip(enc.offsets, enc.loss_mask)):
        inside = any(a < end and b > start for _, start, end in spans)
        assert m == int(inside and b > a), t
    # Every non-assistant content string lies wholly in unmasked tokens.
    for msg in CONVERSATION:
        if msg["role"] == "assistant":
            continue
        start = enc.text.index(msg["content"])
        end = start + len(msg["content"])
        for (a, b), m in zip(enc.offsets, enc.loss_mask):
            if a < end and b > start:
                assert m == 0, (msg["role"], enc.text[a:b])


def test_special_chat_tokens_outside_assistant_turns_are_unmasked(smol_tokenizer):
    enc = encode_conversation(smol_tokenizer, CONVERSATION)
    start_id = smol_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert start_id in enc.input_ids
    assert all(m == 0 for t, m in zip(enc.input_ids, enc.loss_mask) if t == start_id)
    end_id = smol_tokenizer.convert_tokens_to_ids(END)
    # Of the end-of-turn tokens only the assistant ones (3 of them) are targets.
    ends = [m for t, m in zip(enc.input_ids, enc.loss_mask) if t == end_id]
    assert len(ends) == len(CONVERSATION) and sum(ends) == 3


@pytest.mark.parametrize(
    "messages",
    [
        CONVERSATION,
        [{"role": "user", "content": "Hi ünïcödé 日本語 🚀!"}, {"role": "assistant", "content": "Héllo 🚀 —  spaced  out\n\ttabs"}],
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  leading spaces and trailing  "}],
    ],
    ids=["tools", "unicode", "whitespace"],
)
def test_offsets_are_aligned_with_tokens(smol_tokenizer, messages):
    enc = encode_conversation(smol_tokenizer, messages)
    assert enc.text == smol_tokenizer.apply_chat_template(messages, tokenize=False)
    assert len(enc.offsets) == len(enc.input_ids) == len(enc.loss_mask)
    special = set(smol_tokenizer.all_special_ids)
    prev_start = prev_end = 0
    for tok, (s, e) in zip(enc.input_ids, enc.offsets):
        assert 0 <= s <= e <= len(enc.text)
        # Monotone; only byte pieces of one multi-byte character may share that character.
        assert s >= prev_start and e >= prev_end
        if s < prev_end:
            assert "\ufffd" in smol_tokenizer.decode([tok]) and e - s == 1, (s, e, prev_end)
        prev_start, prev_end = s, e
        piece = enc.text[s:e]
        if tok in special:
            assert piece == smol_tokenizer.convert_ids_to_tokens(tok)
        else:
            decoded = smol_tokenizer.decode([tok])
            if "\ufffd" not in decoded:  # a byte-level piece of a multi-byte char decodes partially
                assert piece == decoded
    # Together the spans cover the whole text.
    assert enc.offsets[-1][1] == len(enc.text)


def test_reasoning_spans_mark_only_overlapping_target_tokens(smol_tokenizer):
    content = 'get_weather(city="Paris")'
    messages = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": content}]
    s = content.index("Paris")
    enc = encode_conversation(smol_tokenizer, messages, reasoning_spans={1: [(s, s + 5)]})
    _, spans = assistant_spans(smol_tokenizer, messages)
    start = spans[0][1]
    lo, hi = start + s, start + s + 5
    assert enc.role_truth is not None
    reasoning_text = ""
    for (a, b), m, r in zip(enc.offsets, enc.loss_mask, enc.role_truth):
        if not m:
            assert r == -1
        else:
            assert r == int(a < hi and b > lo)
            if r == 1:
                reasoning_text += enc.text[a:b]
    assert "Paris" in reasoning_text and len(reasoning_text) <= len("Paris") + 4
    assert sum(r == 1 for r in enc.role_truth) >= 1


def test_no_reasoning_spans_gives_no_role_truth(smol_tokenizer):
    enc = encode_conversation(smol_tokenizer, CONVERSATION)
    assert enc.role_truth is None
    enc = encode_conversation(smol_tokenizer, CONVERSATION, reasoning_spans={})
    assert enc.role_truth == [0 if m else -1 for m in enc.loss_mask]


def test_truncation_keeps_the_first_max_tokens(smol_tokenizer):
    full = encode_conversation(smol_tokenizer, CONVERSATION)
    n = len(full.input_ids)
    for max_tokens in (n - 1, n // 2, 8):
        cut = encode_conversation(smol_tokenizer, CONVERSATION, reasoning_spans={6: [(0, 5)]}, max_tokens=max_tokens)
        ref = encode_conversation(smol_tokenizer, CONVERSATION, reasoning_spans={6: [(0, 5)]})
        assert cut.input_ids == full.input_ids[:max_tokens]
        assert cut.offsets == full.offsets[:max_tokens]
        assert cut.loss_mask == full.loss_mask[:max_tokens]
        assert cut.role_truth == ref.role_truth[:max_tokens]
        assert cut.truncated_tokens == n - max_tokens
        assert cut.text == full.text
    same = encode_conversation(smol_tokenizer, CONVERSATION, max_tokens=n)
    assert same.input_ids == full.input_ids and same.truncated_tokens == 0


def test_unscored_spans_are_minus_one_on_target_tokens_and_still_trained(smol_tokenizer):
    content = "[get_weather(city='Paris')]"
    messages = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": content}]
    name, city = content.index("get_weather"), content.index("Paris")
    reasoning = {1: [(name, name + len("get_weather")), (city, city + 5)]}
    # the parameter name, and the closing quote right after the value ("')]" is one token)
    unscored = {1: [(content.index("city"), content.index("city") + 4), (city + 5, city + 6)]}
    enc = encode_conversation(smol_tokenizer, messages, reasoning, unscored_spans=unscored)
    plain = encode_conversation(smol_tokenizer, messages, reasoning)
    assert enc.loss_mask == plain.loss_mask and enc.input_ids == plain.input_ids
    got = [(enc.text[a:b], r) for (a, b), m, r in zip(enc.offsets, enc.loss_mask, enc.role_truth) if m]
    assert got == [("[", 0), ("get", 1), ("_", 1), ("weather", 1), ("(", 0), ("city", -1), ("='", 0),
                   ("Paris", 1), ("')]", -1), ("<|im_end|>", 0)]
    assert [r for r, m in zip(enc.role_truth, enc.loss_mask) if not m] == [-1] * enc.loss_mask.count(0)


def test_an_unscored_span_wins_over_a_reasoning_span_on_a_shared_token(smol_tokenizer):
    content = "[f(s='Hi!')]"  # SmolLM2: "!')" is one token
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": content}]
    bang = content.index("!")
    enc = encode_conversation(smol_tokenizer, messages, {1: [(bang - 2, bang + 1)]},
                              unscored_spans={1: [(bang + 1, bang + 2)]})
    got = {enc.text[a:b]: r for (a, b), m, r in zip(enc.offsets, enc.loss_mask, enc.role_truth) if m}
    assert got["Hi"] == 1 and got["!')"] == -1 and got["]"] == 0


def test_unscored_spans_need_reasoning_spans(smol_tokenizer):
    with pytest.raises(ValueError, match="unscored_spans need reasoning_spans"):
        encode_conversation(smol_tokenizer, CONVERSATION, unscored_spans={6: [(0, 5)]})


def test_truncation_keeps_unscored_roles(smol_tokenizer):
    spans, unscored = {6: [(0, 5)]}, {6: [(7, 9)], 2: [(0, 11)]}
    full = encode_conversation(smol_tokenizer, CONVERSATION, spans, unscored_spans=unscored)
    assert full.role_truth.count(-1) > full.loss_mask.count(0)
    for max_tokens in (len(full.input_ids) - 3, 20):
        cut = encode_conversation(smol_tokenizer, CONVERSATION, spans, max_tokens=max_tokens, unscored_spans=unscored)
        assert cut.role_truth == full.role_truth[:max_tokens]
