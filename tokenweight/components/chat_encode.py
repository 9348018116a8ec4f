"""Render a conversation with the model's chat template and find its target tokens.

The rendered text is tokenized once with character offsets; a token is a target when its span
overlaps an assistant turn's span (content plus the end-of-turn marker, so the model learns to
stop). Spans come from rendering prefixes of the conversation, which works for any template that
renders a conversation as the concatenation of its turns.
"""

from __future__ import annotations

from dataclasses import dataclass


class EncodeError(ValueError):
    """A sample the chat template cannot render in a way the masks can follow."""


@dataclass
class Encoded:
    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    loss_mask: list[int]
    role_truth: list[int] | None  # -1 not a target (or unscored), 0 boilerplate, 1 reasoning; None if unknown
    truncated_tokens: int = 0


def _render(tokenizer, messages, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int, int]]]:
    """The rendered text and, per assistant turn, (message index, start, end) character spans.

    The span starts where the content starts and ends after the template's end-of-turn text,
    less trailing whitespace.
    """
    text = _render(tokenizer, messages)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1])
        start = len(prefix)
        if not (text.startswith(prefix) and text.startswith(upto) and text.startswith(msg["content"], start)):
            raise EncodeError(
                f"the chat template does not render assistant turn {i} as a prefix of the conversation"
            )
        end = len(upto.rstrip())
        spans.append((i, start, end))
    return text, spans


def encode_conversation(
    tokenizer,
    messages: list[dict],
    reasoning_spans: dict[int, list[tuple[int, int]]] | None = None,
    max_tokens: int | None = None,
    unscored_spans: dict[int, list[tuple[int, int]]] | None = None,
) -> Encoded:
    """Tokens, offsets and the assistant-token mask of one conversation (truncated on the right).

    With reasoning_spans, `role_truth` is -1 off the targets, and on each target token: -1 where
    it overlaps one of `unscored_spans` (still a target: only the role scores leave it out), else
    1 where it overlaps a reasoning span, else 0. Both kinds of span are [start, end) character
    offsets into the content of the message whose index keys them.
    """
    if unscored_spans is not None and reasoning_spans is None:
        raise ValueError("unscored_spans need reasoning_spans: they only refine known token roles")
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    mask = [0] * len(ids)
    truth = [-1] * len(ids) if reasoning_spans is not None else None
    absolute_reasoning, absolute_unscored = [], []
    for i, start, _ in spans:
        for s, e in (reasoning_spans or {}).get(i, []):
            absolute_reasoning.append((start + s, start + e))
        for s, e in (unscored_spans or {}).get(i, []):
            absolute_unscored.append((start + s, start + e))
    for t, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        if any(a < end and b > start for _, start, end in spans):
            mask[t] = 1
            if truth is not None and not any(a < e and b > s for s, e in absolute_unscored):
                truth[t] = int(any(a < e and b > s for s, e in absolute_reasoning))
    cut = 0
    if max_tokens is not None and len(ids) > max_tokens:
        cut = len(ids) - max_tokens
        ids, offsets, mask = ids[:max_tokens], offsets[:max_tokens], mask[:max_tokens]
        truth = truth[:max_tokens] if truth is not None else None
    return Encoded(text, ids, offsets, mask, truth, cut)
