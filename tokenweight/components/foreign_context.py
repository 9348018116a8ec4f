"""Each sample's assistant turns inside another sample's input, with its target tokens lined up.

Scoring the discriminator on its own input lets it copy a value from that input once the value's
first token is out (the rest of `priya.natarajan@...` is then easy for any model); scoring it in a
foreign input, the pairing it was trained on, leaves nothing to copy, so every token that depends
on the input costs it. The target tokens are the same token ids in both renderings (the template
starts each assistant turn after a fixed header), which `foreign_rows` checks sample by sample;
where they differ the sample keeps its own input and is counted.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .chat_encode import encode_conversation
from .derangement import shuffled_pairing, swap_assistant_turns


@dataclass
class ForeignRows:
    rows: list[list[int]]
    masks: list[list[int]]
    own_input: int  # samples scored in their own input (no partner, or tokens did not line up)


def _targets(ids: Sequence[int], mask: Sequence[int]) -> list[int]:
    return [t for t, m in zip(ids, mask) if m]


def foreign_rows(
    tokenizer,
    messages: Sequence[list[dict]],
    rows: Sequence[Sequence[int]],
    masks: Sequence[Sequence[int]],
    rng: random.Random,
    max_tokens: int | None,
    splits: Sequence[str],
) -> ForeignRows:
    """For each sample i, its assistant turns rendered in the input of another sample of the same
    split with the same number of assistant turns (a derangement), or its own row where that cannot
    be done. Hosts stay inside a split because the discriminator was trained on train inputs only:
    an eval-only source (another format, another system prompt) as host puts the answer where the
    discriminator never learned the format, and every format token then looks input-dependent."""
    turns = [(split, sum(m["role"] == "assistant" for m in msgs)) for split, msgs in zip(splits, messages, strict=True)]
    pairing, _ = shuffled_pairing(turns, rng)
    host_of = {donor: host for host, donor in pairing.items()}
    out = ForeignRows([list(r) for r in rows], [list(m) for m in masks], 0)
    for i in range(len(rows)):
        host = host_of.get(i)
        if host is not None:
            enc = encode_conversation(tokenizer, swap_assistant_turns(messages[host], messages[i]), max_tokens=max_tokens)
            if _targets(enc.input_ids, enc.loss_mask) == _targets(rows[i], masks[i]):
                out.rows[i], out.masks[i] = enc.input_ids, enc.loss_mask
                continue
        out.own_input += 1
    return out


def move_targets(foreign_loss: np.ndarray, foreign_mask: Sequence[int], own_mask: Sequence[int]) -> np.ndarray:
    """Per-token losses of a foreign rendering placed on the own rendering's target positions."""
    out = np.zeros(len(own_mask), dtype=np.float32)
    out[np.asarray(own_mask, dtype=bool)] = foreign_loss[np.asarray(foreign_mask, dtype=bool)]
    return out
