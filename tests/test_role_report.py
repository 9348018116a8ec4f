"""role_report's error diagnostics on hand-made answers (the tables over real runs: test_pipeline.py)."""

import numpy as np

from tokenweight.role_report import repeated_words


def _repeated(tokenizer, prompt: str, answer: str) -> list[str]:
    """The pieces of `answer` repeated_words flags, with `prompt` as non-target text before it."""
    text = prompt + answer
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    targets = np.array([a >= len(prompt) for a, _ in offsets])
    flags = repeated_words(text, offsets, targets)
    return [text[a:b] for (a, b), f in zip(offsets, flags) if f]


def test_a_value_the_answer_wrote_before_is_a_repeat_and_its_first_writing_is_not(smol_tokenizer):
    flagged = _repeated(smol_tokenizer, "What's Nairobi's weather? Use Nairobi time.\n",
                        'Thought: Nairobi it is.\nAction Input: {"city": "Nairobi", "unit": "celsius"}')
    # The second Nairobi (in the action input) only: the prompt's copies are not the answer's own text.
    assert "".join(flagged).strip() == "Nairobi"
    assert len(flagged) >= 1 and all(p in "Nairobi" for p in flagged)


def test_only_whole_words_of_two_characters_or_more_repeat(smol_tokenizer):
    # `Nai` is inside an earlier word, not a whole word; `a` and `:` are too short or not words.
    assert _repeated(smol_tokenizer, "Q\n", "Nairobi a: Nai a:") == []
    # A word inside a dotted name is not that word written before.
    assert _repeated(smol_tokenizer, "Q\n", "nairobi.example.com then nairobi") == []
    # A word in a later turn repeats one from an earlier turn of the same answer.
    text = "Q\nNairobi.\nU\nIt is Nairobi."
    enc = smol_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    targets = np.array([(2 <= a < 11) or a >= 13 for a, _ in offsets])  # "Nairobi.\n" and "It is Nairobi."
    flags = repeated_words(text, offsets, targets)
    assert "".join(text[a:b] for (a, b), f in zip(offsets, flags) if f).strip() == "Nairobi"
