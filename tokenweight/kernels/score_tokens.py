"""Score many rows under several models in one pass: per-token losses of every target token."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from .batching import length_batches, pad_batch
from .token_loss import target_token_losses


@torch.inference_mode()
def score_rows(
    models: Mapping[str, torch.nn.Module],
    rows: Sequence[Sequence[int]],
    masks: Sequence[Sequence[int]],
    pad_id: int,
    batch_tokens: int = 4096,
    chunk_rows: int = 1024,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, list[np.ndarray]]:
    """For each model, a float32 array per row (in the rows' order): loss of each target token, 0
    elsewhere. Each batch is read once and run through every model."""
    out = {name: [None] * len(rows) for name in models}
    for batch in length_batches([len(r) for r in rows], batch_tokens):
        ids, attn, loss_mask = pad_batch([rows[i] for i in batch], [masks[i] for i in batch], pad_id)
        for name, model in models.items():
            losses = target_token_losses(model, ids, attn, loss_mask, chunk_rows).numpy()
            for b, i in enumerate(batch):
                out[name][i] = losses[b, : len(rows[i])].copy()
        if on_batch is not None:
            on_batch(int(attn.sum()))
    return out
