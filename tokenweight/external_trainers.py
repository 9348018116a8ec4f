"""The weight shards in your own trainer: a loader, a collator, the `weighted` and adaptive `rft` losses.

The weights stage writes `{store}/weights/{key}/part-NNNNN.parquet` beside `_manifest.json`,
`summary.json` and `report.html`, so point every reader at `part-*.parquet`, not at the directory.
This module takes those shards into the transformers `Trainer` or TRL's `SFTTrainer` with
tokenweight's `weighted` loss: the sum over target tokens of weight * cross-entropy, divided by
the sum of the weights over the whole gradient-accumulation window (and over devices), so that
accumulating k micro-batches gives the gradient of one batch k times as large.

    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
    from tokenweight.external_trainers import WeightedTokenCollator, WeightedTokenTrainer, load_weight_shards

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = WeightedTokenTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True),
        args=TrainingArguments("out", remove_unused_columns=False, max_steps=100),
        train_dataset=load_weight_shards("runs/weights/<key>"),  # the train split
        data_collator=WeightedTokenCollator(pad_token_id=tokenizer.pad_token_id),
    )
    trainer.train()

With TRL (1.x): `class WeightedSFTTrainer(TokenWeightMixin, SFTTrainer): pass`, and in `SFTConfig`
`remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}` (the shards are
tokenized and truncated already; TRL's preparation would rebuild `labels` without the mask).

How the weight reaches the loss. `compute_loss_func(outputs, labels, num_items_in_batch)` is all a
trainer hands a custom loss, and every other key of the batch goes to `model.forward`. So
`TokenWeightMixin.compute_loss` pops `token_weight` from the batch and binds it to
`weighted_loss_func` as this batch's `compute_loss_func`, then lets the trainer's own
`compute_loss` run: the Trainer's label handling and multi-device scaling, and in TRL its
entropy / token-accuracy / token-count metrics, all stay as they are. `num_items_in_batch`, which
the plain Trainer counts as the window's target tokens, is here the window's sum of target weights
(`_get_num_items_in_batch`). The price in TRL: a custom loss needs the full logits, so TRL runs one
more (no-grad) forward for its metrics. TRL 2 drops `compute_loss_func` from SFTTrainer, and with it
this route: tests/test_external_trainers.py checks the loss against tokenweight's on TRL 1.16.
Not covered: TRL's packing and padding-free modes, and tensor, context or sequence parallelism.

`token_loss="rft"` (a keyword of the trainer) swaps the static column for the adaptive rft loss:
per sample softmax([L_b, L_r]/tau)-weighted class means from the batch's `token_class`,
recomputed from the current losses at every step and detached, over the window's samples.
`token_loss="dft"` is DFT (each token's CE times its detached probability, over the window's
target tokens) for the plain Trainer, which has none; `token_loss="asft"` adds `kl_weight` (0.1) x
KL(base ‖ current) over the full vocabulary at each target token, the base being a frozen copy of
the model as the trainer got it (so it costs a second model and its (B, T, V) logits per batch).
TRL has DFT itself (`loss_type="dft"`) but no ASFT: the mixin brings both, the same functions as
tokenweight's own finetune (finetune_losses.dft_sum).
"""

from __future__ import annotations

import copy
import glob
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from transformers import Trainer

from .components.batching import pad_batch
from .components.finetune_losses import dft_sum, normaliser, rft_sum, weighted_sum
from .components.token_loss import kl_to_reference_logits
from .shards import SHARD_GLOB

TRAIN_COLUMNS = ("input_ids", "loss_mask", "weight", "token_class")
TOKEN_LOSSES = ("weighted", "rft", "dft", "asft")
IGNORE_INDEX = -100  # the label of a token that is not a target, as transformers' losses expect


def weight_shard_files(source: str | Path) -> list[str]:
    """The Parquet shards of a weights directory (its `part-*.parquet`), or of a glob, sorted, as
    strings (what `datasets.load_dataset(data_files=...)` takes)."""
    pattern = str(Path(source) / SHARD_GLOB) if Path(source).is_dir() else str(source)
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no weight shards match {pattern}")
    return paths


def load_weight_shards(
    source: str | Path, split: str | None = "train", columns: Sequence[str] = TRAIN_COLUMNS
) -> datasets.Dataset:
    """The rows of the shards (in shard order) as an in-memory `datasets.Dataset` of `columns`,
    only those of `split` (`train` or `eval`; None keeps both). For more rows than memory holds,
    `datasets.load_dataset("parquet", data_files=weight_shard_files(source), split="train")` maps them
    from disk instead (then filter the `split` column)."""
    read = list(columns) if split is None or "split" in columns else [*columns, "split"]
    table = pa.concat_tables(pq.read_table(p, columns=read) for p in weight_shard_files(source))
    if split is not None:
        table = table.filter(pc.equal(table["split"], split)).select(list(columns))
    return datasets.Dataset(table)


@dataclass
class WeightedTokenCollator:
    """Right-pads rows of {input_ids, loss_mask, weight[, token_class]} to the batch's longest row.

    Returns `input_ids`, `attention_mask`, `labels` (input_ids, -100 where loss_mask is 0 and on
    padding; unshifted, as transformers expects), `token_weight` (float32, 0 off target) and, when
    the rows have it, `token_class` (long, -1 off target: what the adaptive rft loss reads)."""

    pad_token_id: int

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            if len(row["loss_mask"]) != n or len(row["weight"]) != n:
                raise ValueError(f"row {i}: loss_mask and weight must have one value per token ({n})")
        columns = [([r["weight"] for r in rows], torch.float32)]
        with_classes = all("token_class" in r for r in rows)
        if with_classes:
            columns.append(([r["token_class"] for r in rows], torch.long))
        ids, attention_mask, loss_mask, weight, *token_class = pad_batch(
            [r["input_ids"] for r in rows], [r["loss_mask"] for r in rows], self.pad_token_id, *columns)
        target = loss_mask.bool()
        batch = {
            "input_ids": ids,
            "attention_mask": attention_mask,
            "labels": ids.masked_fill(~target, IGNORE_INDEX),
            "token_weight": weight * target,
        }
        if with_classes:
            batch["token_class"] = token_class[0].masked_fill(~target, -1)
        return batch


def window_normaliser(batches: Sequence[Mapping[str, torch.Tensor]], token_loss: str = "weighted") -> float:
    """The loss's denominator for collated batches: for `weighted` the sum of their target weights,
    for `rft` their number of samples, for `dft` and `asft` their target tokens. Token 0 is never
    predicted (no context), so it never counts."""
    targets = [b["labels"][:, 1:] != IGNORE_INDEX for b in batches]
    tokens = sum(int(t.sum()) for t in targets)
    weight = sum(float(b["token_weight"][:, 1:][t].sum()) for b, t in zip(batches, targets))
    samples = sum(int(b["labels"].shape[0]) for b in batches)
    return normaliser(token_loss, tokens, weight, samples)


def weighted_token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    token_weight: torch.Tensor,
    num_items_in_batch: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """sum(weight * CE) over target tokens / num_items_in_batch (the window's sum of weights;
    this batch's own sum when None). logits (B, T, V); labels, token_weight (B, T), unshifted."""
    predict = labels[:, 1:] != IGNORE_INDEX  # (B, T-1): the logit at t-1 predicts labels[t]
    losses = F.cross_entropy(logits[:, :-1][predict].float(), labels[:, 1:][predict], reduction="none")  # (N,)
    total = weighted_sum(losses, token_weight[:, 1:][predict])
    if num_items_in_batch is None:
        num_items_in_batch = window_normaliser([{"labels": labels, "token_weight": token_weight}]) or 1.0
    return total / num_items_in_batch


def rft_token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    token_class: torch.Tensor,
    tau: float,
    num_items_in_batch: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """The adaptive rft loss: per sample softmax([L_b, L_r]/tau)-weighted class means, the
    weights recomputed from this step's losses and detached (finetune_losses.rft_sum), summed
    over samples / num_items_in_batch (the window's samples; this batch's when None)."""
    predict = labels[:, 1:] != IGNORE_INDEX
    classes = token_class[:, 1:][predict]
    if bool(((classes != 0) & (classes != 1)).any()):
        raise ValueError("rft needs token_class 0 or 1 on every target token (the weight shards' column)")
    losses = F.cross_entropy(logits[:, :-1][predict].float(), labels[:, 1:][predict], reduction="none")
    n = labels.shape[0]
    sample_index = torch.arange(n, device=labels.device)[:, None].expand_as(predict)[predict]
    total = rft_sum(losses, classes, sample_index, n, tau)
    return total / (n if num_items_in_batch is None else num_items_in_batch)


def dft_token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | float | None = None,
    anchor_logits: torch.Tensor | None = None,
    kl_weight: float = 0.0,
) -> torch.Tensor:
    """DFT: sum over target tokens of p * CE (p = exp(-CE), detached) / num_items_in_batch (the
    window's target tokens; this batch's when None). With `anchor_logits` (the frozen base's, same
    shape as logits) it is ASFT: plus kl_weight * the sum of KL(base ‖ current) over the vocabulary."""
    predict = labels[:, 1:] != IGNORE_INDEX
    current = logits[:, :-1][predict].float()
    losses = F.cross_entropy(current, labels[:, 1:][predict], reduction="none")
    total = dft_sum(losses)
    if anchor_logits is not None:
        total = total + kl_weight * kl_to_reference_logits(current, anchor_logits[:, :-1][predict])
    return total / (int(predict.sum()) if num_items_in_batch is None else num_items_in_batch)


def dft_loss_func(
    outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | float | None = None, *,
    anchor_logits: torch.Tensor | None = None, kl_weight: float = 0.0,
) -> torch.Tensor:
    """`dft_token_loss` with the signature of the Trainer's `compute_loss_func` (asft: the anchor's
    logits for this batch bound)."""
    return dft_token_loss(outputs.logits, labels, num_items_in_batch, anchor_logits, kl_weight)


def rft_loss_func(
    outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | float | None = None, *,
    token_class: torch.Tensor, tau: float,
) -> torch.Tensor:
    """`rft_token_loss` with the signature of the Trainer's `compute_loss_func`."""
    return rft_token_loss(outputs.logits, labels, token_class, tau, num_items_in_batch)


def weighted_loss_func(
    outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | float | None = None, *,
    token_weight: torch.Tensor,
) -> torch.Tensor:
    """`weighted_token_loss` with the signature of the Trainer's `compute_loss_func` once
    `token_weight` is bound (`partial(weighted_loss_func, token_weight=...)`)."""
    return weighted_token_loss(outputs.logits, labels, token_weight, num_items_in_batch)


class TokenWeightMixin:
    """Put before `Trainer` or TRL's `SFTTrainer` in the bases: the loss becomes `weighted` (the
    static `weight` column), with `num_items_in_batch` the accumulation window's sum of target
    weights, or with `token_loss="rft"` the adaptive rft loss from the shards' `token_class`
    (recomputed at every step, as tokenweight's finetune does), over the window's samples; summed
    over devices when `average_tokens_across_devices`, the default. Needs `WeightedTokenCollator`
    (or any collator giving `labels`, `token_weight` and for rft `token_class`) and
    `remove_unused_columns=False`."""

    # compute_loss divides by the whole window's normaliser itself.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, token_loss: str = "weighted", tau: float = 3.0, kl_weight: float = 0.1,
                 **kwargs: Any):
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(f"{type(self).__name__} brings its own loss; do not pass compute_loss_func")
        if token_loss not in TOKEN_LOSSES:
            raise ValueError(f"unknown token_loss {token_loss!r}; valid: {', '.join(TOKEN_LOSSES)}")
        self.token_loss, self.tau, self.kl_weight = token_loss, tau, kl_weight
        super().__init__(*args, **kwargs)
        # asft's anchor: the model as it is before any step, frozen. Built afresh from its config and
        # weights, not deep-copied: a trainer may have replaced the instance's forward with a wrapper
        # (accelerate, TRL) that a copy would keep, still calling the live model.
        self.anchor = _frozen_copy(self.model) if token_loss == "asft" else None
        # The Trainer keeps only the columns model.forward takes, which would drop loss_mask and weight.
        if self.args.remove_unused_columns:
            raise ValueError(f"{type(self).__name__} needs remove_unused_columns=False (the collator reads "
                             "loss_mask and weight)")
        # (dataset_kwargs: TRL's SFTConfig only)
        if hasattr(self.args, "dataset_kwargs") and not (self.args.dataset_kwargs or {}).get("skip_prepare_dataset"):
            raise ValueError(f"{type(self).__name__} needs dataset_kwargs={{'skip_prepare_dataset': True}}: TRL's "
                             "preparation would build labels without loss_mask and truncate input_ids alone")

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """The window's sum of target weights (over devices, mirroring Trainer.compute_loss's scaling)."""
        if not batch_samples:
            return None
        total = torch.tensor(window_normaliser(batch_samples, self.token_loss), dtype=torch.float32, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total[None]).sum()
        # A window whose weights are all zero has a zero loss sum: keep it zero, not 0/0.
        return torch.where(total == 0, torch.ones_like(total), total)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        if "token_weight" not in inputs:
            raise KeyError("the batch has no token_weight: use WeightedTokenCollator as the data_collator")
        inputs = dict(inputs)
        # The trainer calls compute_loss_func(outputs, labels, num_items_in_batch) only: bind this
        # batch's weights (or classes); neither column may reach model.forward.
        weight, token_class = inputs.pop("token_weight"), inputs.pop("token_class", None)
        if self.token_loss == "rft":
            if token_class is None:
                raise KeyError("token_loss rft needs token_class in the batch: load it from the shards "
                               "(load_weight_shards does by default) and use WeightedTokenCollator")
            self.compute_loss_func = partial(rft_loss_func, token_class=token_class, tau=self.tau)
        elif self.token_loss == "dft":
            self.compute_loss_func = dft_loss_func
        elif self.token_loss == "asft":
            with torch.no_grad():
                self.anchor.to(inputs["input_ids"].device)
                anchor_logits = self.anchor(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")).logits
            self.compute_loss_func = partial(dft_loss_func, anchor_logits=anchor_logits, kl_weight=self.kl_weight)
        else:
            self.compute_loss_func = partial(weighted_loss_func, token_weight=weight)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A new instance of the model's class with its config and a copy of its weights, frozen."""
    parameter = next(model.parameters())
    anchor = type(model)(copy.deepcopy(model.config))
    anchor.load_state_dict(model.state_dict())
    return anchor.to(device=parameter.device, dtype=parameter.dtype).eval().requires_grad_(False)


class WeightedTokenTrainer(TokenWeightMixin, Trainer):
    """The transformers Trainer with tokenweight's `weighted` loss (see TokenWeightMixin)."""
