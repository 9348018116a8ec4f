"""Held-out loss per token class: the reference answers' per-token loss under a model, summed per
sample over the boilerplate and the reasoning tokens the weights stage classed (the quantity the
RFT paper plots)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..progress import Progress
from .batching import length_batches, pad_batch
from .token_loss import target_token_losses


@torch.no_grad()
def heldout_losses(model, rows: list[dict[str, Any]], pad_id: int, batch_tokens: int,
                   progress: Progress | None = None) -> np.ndarray:
    """(n, 4): per sample the loss sum and token count of boilerplate, then of reasoning."""
    out = np.zeros((len(rows), 4))
    device = next(model.parameters()).device
    for batch in length_batches([len(r["input_ids"]) for r in rows], batch_tokens):
        ids, attn, mask = pad_batch([rows[i]["input_ids"] for i in batch], [rows[i]["loss_mask"] for i in batch], pad_id)
        losses = target_token_losses(model, ids.to(device), attn.to(device), mask.to(device)).cpu().numpy()
        for b, i in enumerate(batch):
            n = len(rows[i]["input_ids"])
            target = np.asarray(rows[i]["loss_mask"], dtype=bool)
            cls = np.asarray(rows[i]["token_class"])[:n]
            for c in (0, 1):
                sel = target & (cls == c)
                out[i, 2 * c] = losses[b, :n][sel].sum()
                out[i, 2 * c + 1] = sel.sum()
        if progress:
            progress.update(len(batch))
    return out
