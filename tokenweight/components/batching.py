"""Length-bucketed batches under a padded-token budget, and padding them into tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def length_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped so that rows * longest row <= batch_tokens (a longer row goes alone).

    Rows are taken in order of length, so each batch pads little.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, current = [], []
    for i in order:
        # Ascending order: the row being added is the batch's longest.
        if current and lengths[i] * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_batch(
    rows: Sequence[Sequence[int]],
    masks: Sequence[Sequence[int]],
    pad_id: int,
    *columns: tuple[Sequence[Sequence[float]], torch.dtype],
) -> tuple[torch.Tensor, ...]:
    """Right-padded (input_ids, attention_mask, loss_mask) tensors for a batch of rows, then one
    tensor per extra `(values of each row, dtype)` column (a token class, a weight): the one place
    token rows are padded. Padding is pad_id in input_ids and 0 everywhere else."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        attn[b, : len(r)] = 1
    padded = [ids, attn]
    for values, dtype in ((masks, torch.long), *columns):
        column = torch.zeros((len(rows), width), dtype=dtype)
        for b, v in enumerate(values):
            column[b, : len(v)] = torch.as_tensor(v, dtype=dtype)
        padded.append(column)
    return tuple(padded)
