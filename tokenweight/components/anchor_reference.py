"""ASFT's anchor: the base model, frozen, giving the reference distribution at every target position.

Anchored SFT (arXiv 2509.23753) adds KL(base ‖ current) over the full vocabulary to DFT's loss.
The reference is a frozen copy of the model as training starts (the base). When only the top k
blocks train (`finetune.train_layers`), the bottom blocks are the base's and stay so: the copy
then holds only the top blocks, the final norm and the head, and runs on the hidden states the
current model's own forward computed at the boundary, so the reference costs one extra pass
through k blocks and no second trunk. Without train_layers it is a whole second model and one
extra forward per step.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .token_loss import decoder_and_head
from .trunk_split import TrunkSplit


class AnchorReference:
    """The frozen base; `boundary_layer` is the block whose input the reference needs (None: the
    whole model runs on the input ids)."""

    def __init__(self, model: nn.Module, top_layers: int | None):
        trunk, _ = decoder_and_head(model)
        n = len(trunk.layers)
        self.split: TrunkSplit | None = None
        self.boundary_layer: nn.Module | None = None
        if top_layers is None or top_layers >= n:
            self.model = copy.deepcopy(model).requires_grad_(False).eval()
            return
        # Copy the top blocks, norm and head only; the bottom (frozen, the base's) is never run here.
        # deepcopy's memo maps an object's id to its copy: the bottom modules "copy" to themselves.
        shared = {id(m): m for m in (trunk.embed_tokens, *list(trunk.layers)[: n - top_layers])}
        self.model = copy.deepcopy(model, memo=shared).requires_grad_(False).eval()
        self.split = TrunkSplit(self.model, top_layers)
        self.boundary_layer = trunk.layers[n - top_layers]

    @torch.no_grad()
    def final_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     boundary: torch.Tensor | None) -> torch.Tensor:
        """The reference's final hidden states (B, T, H): from the boundary hidden states of the
        current forward when the bottom is shared, else from a forward of the whole copy."""
        if self.split is not None:
            return self.split.top(boundary.detach(), attention_mask)
        trunk, _ = decoder_and_head(self.model)
        return trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    @property
    def head(self) -> nn.Module:
        return decoder_and_head(self.model)[1]
