"""The model-facing half of critical-token fine-tuning: the substitutes a model ranks next at each
token of its own answer, and the training sample an accepted answer becomes.

critical_tokens.py holds the rule (which token is critical, given decoding and a checker); this
module reads a real model's next-token ranking and turns the model's answer, with its critical
flags, into a chat-template sample the weights stage writes like any other (prepare's encoding,
so the loss mask covers the answer and its end-of-turn marker as it does for reference answers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .chat_encode import Encoded, assistant_spans, encode_conversation
from .token_loss import accepts_logits_to_keep


@torch.no_grad()
def ranked_next_tokens(model, prompt_ids: Sequence[int], answer_ids: Sequence[int], count: int) -> np.ndarray:
    """(len(answer_ids), count) token ids by decreasing probability at each answer position, read
    from one forward pass over prompt + answer (the LM head runs on the answer positions only)."""
    if not answer_ids:
        return np.zeros((0, count), dtype=np.int64)
    device = next(model.parameters()).device
    ids = torch.as_tensor([list(prompt_ids) + list(answer_ids)], device=device)
    keep = len(answer_ids) + 1  # the last prompt position predicts the first answer token
    if accepts_logits_to_keep(model):
        logits = model(input_ids=ids, logits_to_keep=keep).logits[0, :-1]
    else:
        logits = model(input_ids=ids).logits[0, -keep:-1]
    return torch.topk(logits.float(), count, dim=-1).indices.cpu().numpy()


def token_char_spans(tokenizer, answer_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Each answer token's [start, end) in the decoded answer text, from decoding growing prefixes
    (a byte-level token that ends mid-character gets the span its character completes in)."""
    spans, previous = [], 0
    for t in range(len(answer_ids)):
        end = max(previous, len(tokenizer.decode(answer_ids[: t + 1], skip_special_tokens=True)))
        spans.append((previous, end))
        previous = end
    return spans


def answer_sample(tokenizer, messages: list[dict], answer_ids: Sequence[int], flags: Sequence[int],
                  max_tokens: int) -> tuple[Encoded, list[int]]:
    """The conversation with its last assistant turn replaced by the model's answer, encoded as
    prepare encodes samples, and each token's flag: -1 off target, 1 where it overlaps a critical
    answer token, 0 on the other target tokens. Tokens are re-read from the rendered text (the
    answer usually re-tokenizes to the ids it was decoded as; where not, flags follow characters)."""
    text = tokenizer.decode(answer_ids, skip_special_tokens=True)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    new_messages = [*messages[:last], {"role": "assistant", "content": text}]
    enc = encode_conversation(tokenizer, new_messages, max_tokens=max_tokens)
    _, turns = assistant_spans(tokenizer, new_messages)
    start = turns[-1][1]
    critical = [(start + a, start + b) for (a, b), f in zip(token_char_spans(tokenizer, answer_ids), flags, strict=True)
                if f == 1 and b > a]
    out = []
    for (a, b), m in zip(enc.offsets, enc.loss_mask, strict=True):
        if not m:
            out.append(-1)
        else:
            out.append(int(any(a < e and b > s for s, e in critical)))
    return enc, out
