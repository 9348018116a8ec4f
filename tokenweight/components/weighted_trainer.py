"""Token-weighted fine-tuning on the transformers Trainer: sft, dft, rft or a per-token weight column.

The Trainer brings checkpoints, resume after a crash (model, optimizer, scheduler, RNG and the
position in the epoch), warmup + cosine schedules, mixed precision and multi-device runs. This
module adds what it lacks for token-level methods:

- `TokenRows` + `collate`: right-padded batches carrying `loss_mask`, `token_class` and `weight`;
- `WeightedLossTrainer`: the loss of `finetune_losses` with *exact* normalisation over a
  gradient-accumulation window (and over devices): the window's normaliser (target tokens,
  sum of weights or samples, by method) is counted once from all its micro-batches, so
  accumulating k micro-batches gives the same gradient as one batch k times as large;
- per-logging-step metrics: loss, boilerplate-token loss, reasoning-token loss (where the
  classes are known), tokens/s;
- checkpoints that are known to be whole: the Trainer writes a checkpoint's files in place, one
  after another, so a run killed while saving leaves a directory that looks like a checkpoint.
  Each save here ends with `COMPLETE_MARKER` (the sha256 of every file: file_digests.py's
  protocol, as for stage outputs), and `last_complete_checkpoint` resumes from the newest
  checkpoint whose files still match it.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from ..file_digests import digest_files, first_problem
from .anchor_reference import AnchorReference
from .batching import pad_batch
from .finetune_losses import FINETUNE_METHODS, class_means, loss_sum, normaliser
from .token_loss import accepts_logits_to_keep, chunked_kl_to_reference, chunked_token_ce, decoder_and_head

COMPLETE_MARKER = "tokenweight-complete.json"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


class TokenRows(torch.utils.data.Dataset):
    """Rows of {input_ids, loss_mask, token_class, weight} (lists), one value per token each.

    token_class is 0 boilerplate, 1 reasoning, -1 unknown (sft on data without classes: then
    the class losses are not logged)."""

    def __init__(self, rows: Sequence[dict[str, Any]]):
        self.rows = list(rows)
        for i, row in enumerate(self.rows):
            n = len(row["input_ids"])
            for column in ("loss_mask", "token_class", "weight"):
                if len(row[column]) != n:
                    raise ValueError(f"row {i}: {column} has {len(row[column])} values for {n} tokens")
            if not any(row["loss_mask"][1:]):
                raise ValueError(f"row {i} has no target token")

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):  # the rows only: iterating by index would run on into the blank
        return iter(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i == len(self.rows):  # RankBatches' blank: a real row with nothing to learn from
            row = self.rows[0]
            return {**row, "loss_mask": [0] * len(row["loss_mask"]), "weight": [0.0] * len(row["weight"])}
        return self.rows[i]

    def first_unclassified(self) -> int | None:
        """The first row with a target token whose class is neither 0 nor 1, if any."""
        for i, row in enumerate(self.rows):
            if any(m and c not in (0, 1) for m, c in zip(row["loss_mask"][1:], row["token_class"][1:])):
                return i
        return None


class RankBatches(torch.utils.data.Sampler):
    """One rank's micro-batches of a data-parallel run: the one-process run's batches of
    `global_batch` rows, in the same order, each cut into `world` slices and this rank's taken.
    A slice that comes up empty (an epoch's last, short batch) is one blank row (index
    `len(dataset)`: no target token, so it adds nothing to any loss or normaliser), so every
    rank runs every micro-step. The Trainer's own distributed loader instead hands the ranks
    whole per-rank batches from a differently grouped order and fills a short epoch with rows
    from its start, which trains on them twice."""

    def __init__(self, order: torch.utils.data.Sampler, n_rows: int, global_batch: int, world: int, rank: int):
        self.order, self.n_rows, self.global_batch, self.world, self.rank = order, n_rows, global_batch, world, rank

    def __len__(self) -> int:
        return -(-self.n_rows // self.global_batch)

    def __iter__(self):
        order = list(self.order)  # one draw per epoch, as the one-process loader makes
        per_rank = self.global_batch // self.world
        for start in range(0, len(order), self.global_batch):
            batch = order[start : start + self.global_batch]
            mine = batch[self.rank * per_rank : (self.rank + 1) * per_rank]
            yield mine or [self.n_rows]


def collate(rows: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids, attention_mask, loss_mask, token_class, weight."""
    padded = pad_batch(
        [r["input_ids"] for r in rows], [r["loss_mask"] for r in rows], pad_id,
        ([r["token_class"] for r in rows], torch.long), ([r["weight"] for r in rows], torch.float32),
    )
    return dict(zip(("input_ids", "attention_mask", "loss_mask", "token_class", "weight"), padded))


class WeightedLossTrainer(Trainer):
    """A Trainer whose loss is `method` (sft | dft | rft | weighted) over target tokens.

    Pass `data_collator=partial(collate, pad_id=...)` and `remove_unused_columns=False`.
    `mid_checkpoint`, if given, is called while a checkpoint is half saved (its weights written,
    its optimiser, scheduler and state not yet): the point where a crash test kills the run.
    """

    # compute_loss divides by the whole window's normaliser itself.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, method: str, tau: float = 3.0, chunk_rows: int = 1024,
                 kl_weight: float = 0.1, train_layers: int | None = None,
                 mid_checkpoint: Callable[[], None] | None = None, **kwargs: Any):
        if method not in FINETUNE_METHODS:
            raise ValueError(f"unknown fine-tune method {method!r}; valid: {', '.join(FINETUNE_METHODS)}")
        super().__init__(*args, **kwargs)
        # asft: the base as it is now (before any step), frozen; with train_layers only its top.
        self.anchor = AnchorReference(self.model, train_layers) if method == "asft" else None
        self.kl_weight = kl_weight
        if method == "rft" and isinstance(self.train_dataset, TokenRows):
            row = self.train_dataset.first_unclassified()
            if row is not None:
                raise ValueError(f"rft needs a class (0 or 1) on every target token; row {row} has another")
        self.method, self.tau, self.chunk_rows = method, tau, chunk_rows
        self.mid_checkpoint = mid_checkpoint
        self._tally = torch.zeros(5, dtype=torch.float64)  # loss_b sum, n_b, loss_r sum, n_r, tokens
        self._tally_since = time.time()

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """With several ranks, each rank's slice of the one-process run's batches (RankBatches),
        so N ranks of batch b train the model one process of batch N*b trains."""
        if self.args.world_size == 1 or not isinstance(self.train_dataset, TokenRows):
            return super().get_train_dataloader()
        from transformers.trainer_pt_utils import LengthGroupedSampler

        world, global_batch = self.args.world_size, self.args.per_device_train_batch_size * self.args.world_size
        # The one-process run's order: grouped by length in windows of a whole optimizer step.
        order = LengthGroupedSampler(global_batch * self.args.gradient_accumulation_steps, dataset=self.train_dataset)
        batches = RankBatches(order, len(self.train_dataset), global_batch, world, self.args.process_index)
        # Not passed through accelerate's prepare, which would shard it again; the Trainer moves
        # each batch to the device itself.
        return torch.utils.data.DataLoader(self.train_dataset, batch_sampler=batches, collate_fn=self.data_collator,
                                           num_workers=0)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        """The normaliser of the whole accumulation window, summed over devices."""
        tokens = sum(int(b["loss_mask"][:, 1:].sum()) for b in batch_samples)
        weight = sum(float((b["weight"][:, 1:] * b["loss_mask"][:, 1:]).sum()) for b in batch_samples)
        samples = sum(int(b["loss_mask"][:, 1:].any(dim=1).sum()) for b in batch_samples)  # blank rows: none
        total = torch.tensor(float(normaliser(self.method, tokens, weight, samples)), device=device)
        if self.args.world_size > 1:
            total = self.accelerator.gather(total[None]).sum()
        # A window whose weights are all zero has a zero loss sum: keep it zero, not 0/0.
        return torch.where(total == 0, torch.ones_like(total), total)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        boundary = self.anchor.boundary_layer if self.anchor is not None else None
        hidden, head, boundary_hidden = self._final_hidden(model, inputs, boundary)
        # Position t-1 predicts token t; keep only target positions (flat over the batch).
        predict = inputs["loss_mask"][:, 1:].bool()
        target_hidden = hidden[:, :-1][predict]
        losses = self._target_ce(target_hidden, head, inputs["input_ids"][:, 1:][predict])
        classes = inputs["token_class"][:, 1:][predict]
        weights = inputs["weight"][:, 1:][predict]
        n_samples = inputs["input_ids"].shape[0]
        sample_index = torch.arange(n_samples, device=losses.device)[:, None].expand_as(predict)[predict]
        kl = None
        if self.anchor is not None:
            with self.accelerator.autocast():
                ref = self.anchor.final_hidden(inputs["input_ids"], inputs["attention_mask"], boundary_hidden)
                kl = chunked_kl_to_reference(target_hidden, head, ref[:, :-1][predict], self.anchor.head,
                                             self.chunk_rows)
        total = loss_sum(self.method, losses, classes, weights, sample_index, n_samples, self.tau, kl, self.kl_weight)
        if num_items_in_batch is None:  # outside training_step (e.g. evaluate): this batch alone
            num_items_in_batch = normaliser(self.method, losses.numel(), float(weights.sum()), n_samples)
        loss = total / num_items_in_batch
        if self.args.world_size > 1:
            # This device's sum over the window's normaliser summed over all devices; DDP averages
            # the gradients over the devices, so W x (their mean) is the gradient of the global sum.
            # (training_step adds no scaling: loss_is_scaled_for_ga, and Trainer.compute_loss,
            # where average_tokens_across_devices would multiply by W, is not called.)
            loss = loss * self.args.world_size
        self._count(losses.detach(), classes, sample_index, n_samples, int(inputs["attention_mask"].sum()))
        return (loss, {"losses": losses}) if return_outputs else loss

    def _final_hidden(self, model, inputs, boundary: torch.nn.Module | None = None):
        """The trunk's final hidden states (B, T, H) and the LM head, from a forward of `model`.

        `model` is what the Trainer hands compute_loss: in training the DDP-wrapped module, whose
        forward prepares the gradient all-reduce, around a module whose forward accelerate runs
        under autocast for mixed precision. So the forward must go through it, not through the
        unwrapped trunk. A forward hook on the trunk keeps its output; the LM head inside the forward
        is applied to no position (`logits_to_keep` an empty index, else a pre-hook hands it an empty
        slice), so no (B, T, V) logits exist: the head runs afterwards, at target positions only.
        Returns (hidden, head, the hidden states entering the `boundary` block or None)."""
        unwrapped = self.accelerator.unwrap_model(model)
        trunk, head = decoder_and_head(unwrapped)
        captured = []

        def keep(module, args, output):  # a BaseModelOutput, or its tuple when return_dict is off
            captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

        handles = [trunk.register_forward_hook(keep)]
        entering = []
        if boundary is not None:
            handles.append(boundary.register_forward_pre_hook(
                lambda module, args, kwargs: entering.append(args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True))
        kwargs = {}
        if accepts_logits_to_keep(unwrapped):
            # A 1-D index tensor keeps those positions of every row: none (transformers'
            # slice_logits_to_keep; an int would mean "the last n", and 0 all of them).
            kwargs["logits_to_keep"] = torch.empty(0, dtype=torch.long, device=inputs["input_ids"].device)
        else:
            handles.append(head.register_forward_pre_hook(lambda module, args: (args[0][..., :0, :], *args[1:])))
        try:
            model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"the trunk ran {len(captured)} times in one forward of {type(unwrapped).__name__}")
        return captured[0], head, entering[0] if entering else None

    def _target_ce(self, hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy (N,) at the target positions, under the accelerator's autocast
        (mixed precision, as the forward had it)."""
        with self.accelerator.autocast():
            return chunked_token_ce(hidden, head, targets, self.chunk_rows)

    @torch.no_grad()
    def _count(self, losses, classes, sample_index, n_samples: int, tokens: int) -> None:
        known = classes >= 0
        means, counts = class_means(losses[known].float(), classes[known], sample_index[known], n_samples)
        sums = (means * counts).sum(0).double().cpu()
        n = counts.sum(0).double().cpu()
        self._tally += torch.stack([sums[0], n[0], sums[1], n[1], torch.tensor(float(tokens))])

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            directory = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            # The marker's format: {relative path: sha256}, no sizes (markers already written stay valid).
            files = {rel: meta["sha256"] for rel, meta in digest_files(directory, exclude=[COMPLETE_MARKER]).items()}
            tmp = directory / f".{COMPLETE_MARKER}.tmp"
            tmp.write_text(json.dumps(files, indent=1))
            tmp.replace(directory / COMPLETE_MARKER)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.mid_checkpoint is not None:
            self.mid_checkpoint()  # the weights are saved, the rest is not
        super()._save_optimizer_and_scheduler(output_dir)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log step: add the class losses and throughput since the last
            loss_b, n_b, loss_r, n_r, tokens = self._tally.tolist()
            now = time.time()
            if n_b:
                logs["loss_boilerplate"] = round(loss_b / n_b, 4)
            if n_r:
                logs["loss_reasoning"] = round(loss_r / n_r, 4)
            logs["tokens_per_s"] = round(tokens / max(now - self._tally_since, 1e-9), 1)
            self._tally.zero_()
            self._tally_since = now
        super().log(logs, start_time)


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint in `output_dir` whose files match its completion marker. Checkpoints
    without one (a save cut short) are removed, so the Trainer's rotation never counts them."""
    if not output_dir.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.fullmatch(p.name)))
    best = None
    for _, path in found:
        if _is_complete(path):
            best = path
        else:
            shutil.rmtree(path)
    return best


def _is_complete(directory: Path) -> bool:
    try:
        files = json.loads((directory / COMPLETE_MARKER).read_text())
        return first_problem(directory, {rel: {"sha256": digest} for rel, digest in files.items()}) is None
    except (OSError, ValueError, AttributeError):
        return False
