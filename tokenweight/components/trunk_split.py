"""Split a decoder trunk into its bottom blocks and its top blocks.

When the discriminator and control train only their top blocks, their bottom blocks stay the
base model's, so the bottom's hidden states can be computed once: once per training sample for
all epochs, and once per scored batch for every model. The two halves are shallow copies of the
trunk that share its modules, run through the trunk's own forward (`inputs_embeds` enters the
top half), so rotary embeddings and masks stay the model's own. `check_split` proves on a real
input that bottom-then-top equals the whole trunk before anything relies on it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .token_loss import decoder_and_head


def _slice(trunk: nn.Module, start: int, end: int, final_norm: bool) -> nn.Module:
    part = copy.copy(trunk)
    part._modules = dict(trunk._modules)  # the copy's own module table, so the trunk is untouched
    part.layers = nn.ModuleList(list(trunk.layers)[start:end])
    part.config = copy.deepcopy(trunk.config)
    part.config.num_hidden_layers = end - start
    if getattr(part.config, "layer_types", None) is not None:
        part.config.layer_types = list(part.config.layer_types)[start:end]
    if not final_norm:
        part.norm = nn.Identity()
    return part


class TrunkSplit:
    """`bottom(ids, mask)` -> hidden states entering block n-k; `top(hidden, mask)` -> final states."""

    def __init__(self, model: nn.Module, top_layers: int):
        trunk, self.head = decoder_and_head(model)
        n = len(getattr(trunk, "layers", ()))
        if not 1 <= top_layers <= n:
            raise ValueError(f"cannot split {n} blocks into a top of {top_layers}")
        self.model, self.top_layers = model, top_layers
        self._bottom = _slice(trunk, 0, n - top_layers, final_norm=False)
        self._top = _slice(trunk, n - top_layers, n, final_norm=True)

    def bottom(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not len(self._bottom.layers):
            return self._bottom.embed_tokens(input_ids)
        return self._bottom(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    def top(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._top(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False).last_hidden_state


def same_bottom(a: nn.Module, b: nn.Module, top_layers: int) -> bool:
    """Whether two models of one architecture have identical embeddings and bottom blocks."""
    ta, _ = decoder_and_head(a)
    tb, _ = decoder_and_head(b)
    n = len(ta.layers)
    mods_a = [ta.embed_tokens, *list(ta.layers)[: n - top_layers]]
    mods_b = [tb.embed_tokens, *list(tb.layers)[: n - top_layers]]
    return all(
        torch.equal(pa, pb)
        for ma, mb in zip(mods_a, mods_b)
        for pa, pb in zip(ma.parameters(), mb.parameters())
    )


@torch.no_grad()
def check_split(split: TrunkSplit, input_ids: torch.Tensor, attention_mask: torch.Tensor, atol: float = 1e-4) -> None:
    """Raise unless bottom-then-top reproduces the whole trunk on (a corner of) this input."""
    input_ids, attention_mask = input_ids[:2, :64], attention_mask[:2, :64]
    trunk, _ = decoder_and_head(split.model)
    whole = trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    parts = split.top(split.bottom(input_ids, attention_mask), attention_mask)
    keep = attention_mask.bool()
    err = (whole[keep] - parts[keep]).abs().max().item()
    if err > atol:
        raise ValueError(
            f"{type(split.model).__name__}: running the trunk in two halves differs from the whole by {err:.2e}; "
            "this architecture does not support train_layers (set discriminator.train_layers: null)"
        )
