"""Score many rows under several models in one pass: per-token losses of every target token.

When the models differ only in their top blocks (a discriminator trained with train_layers), the
shared bottom runs once per batch and only the top blocks run per model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from .batching import length_batches, pad_batch
from .token_loss import losses_from_hidden, target_token_losses
from .trunk_split import TrunkSplit, check_split, same_bottom


@torch.inference_mode()
def score_rows(
    models: Mapping[str, torch.nn.Module],
    rows: Sequence[Sequence[int]],
    masks: Sequence[Sequence[int]],
    pad_id: int,
    batch_tokens: int = 4096,
    chunk_rows: int = 1024,
    shared_top_layers: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, list[np.ndarray]]:
    """For each model, a float32 array per row (in the rows' order): loss of each target token, 0
    elsewhere. Each batch is read once and run through every model. `shared_top_layers`: the
    models share all but their top this-many blocks (checked), so the bottom runs once."""
    out = {name: [None] * len(rows) for name in models}
    device = next(iter(models.values())).device
    splits = _shared_splits(models, shared_top_layers) if shared_top_layers else None
    first = next(iter(splits.values())) if splits else None  # computes the shared bottom
    for n, batch in enumerate(length_batches([len(r) for r in rows], batch_tokens)):
        ids, attn, loss_mask = (t.to(device) for t in pad_batch([rows[i] for i in batch], [masks[i] for i in batch], pad_id))
        if splits is not None:
            if n == 0:
                check_split(first, ids, attn)
            bottom = first.bottom(ids, attn)
        for name, model in models.items():
            if splits is None:
                losses = target_token_losses(model, ids, attn, loss_mask, chunk_rows)
            else:
                top = splits[name].top(bottom, attn)
                losses = losses_from_hidden(top, splits[name].head, ids, loss_mask, chunk_rows)
            losses = losses.cpu().numpy()
            for b, i in enumerate(batch):
                out[name][i] = losses[b, : len(rows[i])].copy()
        if on_batch is not None:
            on_batch(int(attn.sum()))
    return out


def _shared_splits(models: Mapping[str, torch.nn.Module], top_layers: int) -> dict[str, TrunkSplit]:
    names = list(models)
    for name in names[1:]:
        if not same_bottom(models[names[0]], models[name], top_layers):
            raise ValueError(f"models {names[0]!r} and {name!r} differ below their top {top_layers} blocks")
    return {name: TrunkSplit(model, top_layers) for name, model in models.items()}
