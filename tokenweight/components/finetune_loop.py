"""A small, deterministic fine-tuning loop with the plain loss on target tokens.

Used for the discriminator and its matched control: both take the same batches (`batch_order`,
built once from both sets' lengths) in the same order with the same seed, so the only difference
between them is the pairing of their data.
With `train_layers`, the frozen bottom blocks run once per sample (not once per epoch) and only
the top blocks see gradients.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .batching import length_batches, pad_batch
from .token_loss import decoder_and_head, losses_from_hidden, target_token_losses
from .trunk_split import TrunkSplit, check_split

# Bottom-block states are kept for all epochs when they fit in this many bytes, else recomputed.
BOTTOM_CACHE_BYTES = 2 << 30


@dataclass(frozen=True)
class TrainSettings:
    epochs: float
    learning_rate: float
    warmup_share: float
    weight_decay: float
    batch_tokens: int
    train_layers: int | None
    seed: int
    chunk_rows: int = 1024


def freeze_below(model, train_layers: int | None) -> int:
    """Train only the top `train_layers` blocks and the final norm; returns trainable parameters."""
    if train_layers is not None:
        trunk, _ = decoder_and_head(model)
        layers = getattr(trunk, "layers", None)
        if layers is None:
            raise ValueError(f"{type(model).__name__}: train_layers needs a model with .layers blocks")
        if train_layers > len(layers):
            raise ValueError(f"train_layers={train_layers} but the model has {len(layers)} blocks")
        model.requires_grad_(False)
        for block in list(layers)[len(layers) - train_layers :]:
            block.requires_grad_(True)
        norm = getattr(trunk, "norm", None)
        if norm is not None:
            norm.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def batch_order(lengths: Sequence[int], settings: TrainSettings) -> list[list[int]]:
    """The row indexes of every optimizer step, in order: length-grouped batches under the token
    budget, shuffled per epoch with the seed, for `ceil(epochs * batches)` steps. Give the
    discriminator and its control the same order (from the longer of each pair's lengths)."""
    batches = length_batches(list(lengths), settings.batch_tokens)
    total = max(1, math.ceil(settings.epochs * len(batches)))
    rng = random.Random(settings.seed)
    order: list[list[int]] = []
    while len(order) < total:
        epoch = list(batches)
        rng.shuffle(epoch)
        order.extend(epoch)
    return order[:total]


def order_digest(order: Sequence[Sequence[int]]) -> str:
    """A short fingerprint of a batch order, for the manifest."""
    return hashlib.sha256(json.dumps([list(b) for b in order]).encode()).hexdigest()[:16]


@torch.no_grad()
def _bottom_states(split: TrunkSplit, rows, masks, batch_tokens: int, pad_id: int) -> list[torch.Tensor] | None:
    """The frozen bottom's hidden states of every row (unpadded), or None if they would not fit."""
    hidden_size = split.head.weight.shape[1]
    if sum(len(r) for r in rows) * hidden_size * 4 > BOTTOM_CACHE_BYTES:
        return None
    states: list[torch.Tensor | None] = [None] * len(rows)
    for n, batch in enumerate(length_batches([len(r) for r in rows], batch_tokens)):
        ids, attn, _ = pad_batch([rows[i] for i in batch], [masks[i] for i in batch], pad_id)
        ids, attn = ids.to(split.head.weight.device), attn.to(split.head.weight.device)
        if n == 0:
            check_split(split, ids, attn)
        hidden = split.bottom(ids, attn)
        for b, i in enumerate(batch):
            states[i] = hidden[b, : len(rows[i])].clone()
    return states


def _pad_states(states: list[torch.Tensor], width: int) -> torch.Tensor:
    out = states[0].new_zeros((len(states), width, states[0].shape[-1]))
    for b, h in enumerate(states):
        out[b, : h.shape[0]] = h
    return out


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def train_on_targets(
    model,
    rows: Sequence[Sequence[int]],
    masks: Sequence[Sequence[int]],
    settings: TrainSettings,
    pad_id: int,
    on_step: Callable[[int, int, float, int], None] | None = None,
    order: Sequence[Sequence[int]] | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> list[float]:
    """Fine-tune `model` in place (on the device it is on) on the mean loss over target tokens;
    returns the loss per step. `order` is the steps' batches (default `batch_order` of the rows'
    lengths); `autocast` is entered around each forward and loss (mixed precision)."""
    torch.manual_seed(settings.seed)
    freeze_below(model, settings.train_layers)
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    optim = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    order = list(order) if order is not None else batch_order([len(r) for r in rows], settings)
    total = len(order)
    warmup = int(settings.warmup_share * total)
    split = TrunkSplit(model, settings.train_layers) if settings.train_layers else None
    with autocast():
        bottom_cache = _bottom_states(split, rows, masks, settings.batch_tokens, pad_id) if split else None
    model.train()
    losses = []
    for step, batch in enumerate(order):
        for group in optim.param_groups:
            group["lr"] = _lr_at(step, total, warmup, settings.learning_rate)
        ids, attn, loss_mask = (t.to(device) for t in pad_batch([rows[i] for i in batch], [masks[i] for i in batch], pad_id))
        with autocast():
            if split is None:
                token_losses = target_token_losses(model, ids, attn, loss_mask, settings.chunk_rows)
            else:
                if bottom_cache is not None:
                    hidden = _pad_states([bottom_cache[i] for i in batch], ids.shape[1])
                else:
                    with torch.no_grad():
                        hidden = split.bottom(ids, attn)
                token_losses = losses_from_hidden(split.top(hidden, attn), split.head, ids, loss_mask,
                                                  settings.chunk_rows)
            n_targets = int(loss_mask[:, 1:].sum())
            loss = token_losses.sum() / max(1, n_targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, total, losses[-1], int(attn.sum()))
    model.eval()
    return losses
