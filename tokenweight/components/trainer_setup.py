"""The fine-tune's Trainer setup: train-split rows, the Trainer's arguments from the finetune
config, its log lines in the run's log, and one call that trains (resuming from a checkpoint).

Used by the finetune stage, the training benchmark and the data-parallel test; the loss itself is
in weighted_trainer.py and finetune_losses.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainingArguments

from ..config import FinetuneConfig
from ..device_policy import CPU_FP32, Placement
from ..models import load_model, load_tokenizer
from ..run_log import logger
from ..shards import iter_shards
from .finetune_loop import freeze_below
from .weighted_trainer import TokenRows, WeightedLossTrainer, collate, last_complete_checkpoint


def train_rows(directory: Path, with_weights: bool) -> list[dict[str, Any]]:
    """The train split's rows; without the weights stage every token's class is unknown (-1) and
    its weight 1. A row whose weights are all 0 (critical's samples without an accepted answer)
    adds nothing to any loss, so it is left out of training, and counted in the log."""
    columns = ["split", "input_ids", "loss_mask"] + (["token_class", "weight"] if with_weights else [])
    rows, unweighted = [], 0
    for _, table in iter_shards(directory, columns):
        for row in table.to_pylist():
            if row.pop("split") != "train":
                continue
            if not with_weights:
                row["token_class"] = [-1] * len(row["input_ids"])
                row["weight"] = [1.0] * len(row["input_ids"])
            elif not any(w and m for w, m in zip(row["weight"], row["loss_mask"])):
                unweighted += 1
                continue
            rows.append(row)
    if unweighted:
        logger().info("finetune: %d train samples have no weight on any target token and are left out", unweighted)
    if not rows:
        detail = f" (all {unweighted} have weight 0 on every token: see the weights stage's summary.json)" if unweighted else ""
        raise ValueError(f"{directory}: no train sample to fine-tune on{detail}")
    return rows


class _LogToRun(TrainerCallback):
    """The Trainer's log lines (step counts, loss, class losses, tokens/s, time left) in the Prefect
    run log."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.time(), state.global_step  # a resumed run starts past 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            classes = "".join(f" {name} {logs[f'loss_{name}']:.4f}" for name in ("boilerplate", "reasoning")
                              if f"loss_{name}" in logs)
            steps = max(state.global_step - self.first_step, 1)
            left = (time.time() - self.started) / steps * (state.max_steps - state.global_step)
            logger().info("finetune: step %d/%d loss %.4f%s lr %.2e %.0f tok/s, %.0fs left", state.global_step,
                          state.max_steps, logs["loss"], classes, logs.get("learning_rate", 0.0),
                          logs.get("tokens_per_s", 0.0), left)


def training_arguments(fc: FinetuneConfig, output_dir: Path, place: Placement = CPU_FP32) -> TrainingArguments:
    """The Trainer's arguments: the stage's settings, on the device and in the precision of `place`
    (bf16 mixed precision, fp32 weights)."""
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=fc.batch_size,
        gradient_accumulation_steps=fc.grad_accum,
        num_train_epochs=fc.epochs,
        max_steps=fc.max_steps or -1,
        learning_rate=fc.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=fc.warmup_share,  # below 1: a share of the steps
        weight_decay=fc.weight_decay,
        max_grad_norm=fc.max_grad_norm,
        logging_steps=fc.logging_steps,
        save_strategy="steps",
        save_steps=fc.save_steps,
        save_total_limit=2,
        seed=fc.seed,
        data_seed=fc.seed,
        train_sampling_strategy="group_by_length",  # less padding, the same order for a seed
        remove_unused_columns=False,
        report_to="none",
        use_cpu=place.device == "cpu",
        bf16=place.dtype == "bfloat16",
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def train_model(fc: FinetuneConfig, rows: list[dict[str, Any]], base_path: str, work: Path,
                trust_remote_code: bool = False, callbacks: list[TrainerCallback] = (),
                place: Placement = CPU_FP32, mid_checkpoint: Callable[[], None] | None = None,
                ) -> tuple[Any, Any, dict]:
    """Train (resuming from the last checkpoint in `work` if there is one); returns the model,
    its tokenizer and what the run did. `mid_checkpoint` is called between saving a checkpoint's
    weights and the rest of it (the crash tests' hook)."""
    tokenizer = load_tokenizer(base_path, trust_remote_code)
    model = load_model(base_path, trust_remote_code)
    trainable = freeze_below(model, fc.train_layers)
    trainer = WeightedLossTrainer(
        model=model,
        args=training_arguments(fc, work, place),
        train_dataset=TokenRows(rows),
        data_collator=partial(collate, pad_id=tokenizer.pad_token_id),
        callbacks=[_LogToRun(), *callbacks],
        method=fc.method,
        tau=fc.tau,
        kl_weight=fc.kl_weight,
        train_layers=fc.train_layers,
        mid_checkpoint=mid_checkpoint,
    )
    resume = last_complete_checkpoint(work)
    if resume:
        logger().info("finetune: resuming from %s", resume)
    started = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    info = {
        "steps": trainer.state.global_step,
        "train_loss": round(result.training_loss, 4),
        "train_seconds": round(time.time() - started, 1),
        "resumed_from": Path(resume).name if resume else None,
        "trainable_parameters": trainable,
        "samples": len(rows),
        "log_history": trainer.state.log_history,
    }
    return trainer.model, tokenizer, info
