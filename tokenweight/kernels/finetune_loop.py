"""A small, deterministic fine-tuning loop with the plain loss on target tokens.

Used for the discriminator and its matched control: both take the same batches in the same
order with the same seed, so the only difference between them is the pairing of their data.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .batching import length_batches, pad_batch
from .token_loss import decoder_and_head, target_token_losses


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
) -> list[float]:
    """Fine-tune `model` in place on the mean loss over target tokens; returns the loss per step."""
    torch.manual_seed(settings.seed)
    freeze_below(model, settings.train_layers)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    batches = length_batches([len(r) for r in rows], settings.batch_tokens)
    total = max(1, math.ceil(settings.epochs * len(batches)))
    warmup = int(settings.warmup_share * total)
    rng = random.Random(settings.seed)
    order: list[list[int]] = []
    while len(order) < total:
        epoch = list(batches)
        rng.shuffle(epoch)
        order.extend(epoch)
    model.train()
    losses = []
    for step, batch in enumerate(order[:total]):
        for group in optim.param_groups:
            group["lr"] = _lr_at(step, total, warmup, settings.learning_rate)
        ids, attn, loss_mask = pad_batch([rows[i] for i in batch], [masks[i] for i in batch], pad_id)
        token_losses = target_token_losses(model, ids, attn, loss_mask, settings.chunk_rows)
        n_targets = int(loss_mask[:, 1:].sum())
        loss = token_losses.sum() / max(1, n_targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if on_step is not None:
            on_step(step, total, losses[-1], int(attn.sum()))
    model.eval()
    return losses
