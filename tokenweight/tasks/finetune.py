"""finetune: train the base model on the train split with sft, rft or the `weight` column.

`sft` reads the prepared shards (so its output does not depend on any SHAD setting); `rft` and
`weighted` read the weights stage's shards for `token_class` and `weight`. Training runs on the
transformers Trainer (kernels/weighted_trainer.py); its checkpoints live in the store's work
directory, so a run that crashes resumes from its last checkpoint when started again with the
same key. The model is saved as safetensors in `model/`, the Trainer's log in `log_history.json`.
"""

from __future__ import annotations

import json
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

from prefect import task
from transformers import TrainerCallback, TrainingArguments

from ..config import FinetuneConfig, PipelineConfig
from ..device_policy import CPU_FP32, Placement, placement
from ..faults import crash_point
from ..kernels.finetune_loop import freeze_below
from ..kernels.weighted_trainer import TokenRows, WeightedLossTrainer, collate, last_complete_checkpoint
from ..models import BaseModel, load_model, load_tokenizer, save_model
from ..store import Store, StageWriter, stage_key
from .common import input_dir, iter_shards, logger, run_stage

STAGE, VERSION = "finetune", "2"


def finetune_inputs(cfg: PipelineConfig, prepared: dict[str, Any], weighted: dict[str, Any], base: BaseModel):
    """The record the stage reads its rows from, and its input keys."""
    if cfg.finetune.method == "sft":
        return prepared, {"prepare": prepared["key"], "base_model": base.key}
    return weighted, {"weights": weighted["key"], "base_model": base.key}


def finetune_key(cfg: PipelineConfig, prepared: dict[str, Any], weighted: dict[str, Any], base: BaseModel) -> str:
    _, inputs = finetune_inputs(cfg, prepared, weighted, base)
    return stage_key(STAGE, VERSION, cfg.finetune.model_dump(mode="json"), inputs, {"placement": placement(cfg.device).key()})


def train_rows(directory: Path, with_weights: bool) -> list[dict[str, Any]]:
    """The train split's rows; without the weights stage every token's class is unknown (-1) and
    its weight 1."""
    columns = ["split", "input_ids", "loss_mask"] + (["token_class", "weight"] if with_weights else [])
    rows = []
    for _, table in iter_shards(directory, columns):
        for row in table.to_pylist():
            if row.pop("split") != "train":
                continue
            if not with_weights:
                row["token_class"] = [-1] * len(row["input_ids"])
                row["weight"] = [1.0] * len(row["input_ids"])
            rows.append(row)
    if not rows:
        raise ValueError(f"{directory}: the train split is empty")
    return rows


class _LogToRun(TrainerCallback):
    """The Trainer's log lines (step counts, loss, class losses, tokens/s, time left) in the Prefect
    run log."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.time(), state.global_step  # a resumed run starts past 0

    def on_step_end(self, args, state, control, **kwargs):
        crash_point("finetune.step")

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
                place: Placement = CPU_FP32) -> tuple[Any, Any, dict]:
    """Train (resuming from the last checkpoint in `work` if there is one); returns the model,
    its tokenizer and what the run did."""
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


def _run(cfg: PipelineConfig, prepared: dict[str, Any], weighted: dict[str, Any], base: BaseModel,
         key: str, writer: StageWriter):
    fc = cfg.finetune
    store = Store(cfg.store)
    source, inputs = finetune_inputs(cfg, prepared, weighted, base)
    rows = train_rows(input_dir(store, source), with_weights=fc.method != "sft")
    logger().info("finetune[%s]: %d train samples, %d target tokens", fc.method, len(rows),
                  sum(sum(r["loss_mask"]) for r in rows))
    work = store.work_dir(STAGE, key)
    place = placement(cfg.device)
    model, tokenizer, info = train_model(fc, rows, base.path, work, cfg.model.trust_remote_code, place=place)
    save_model(model, tokenizer, writer.dir / "model")
    (writer.dir / "log_history.json").write_text(json.dumps(info.pop("log_history"), indent=1))
    record = writer.commit(train=info, config=fc.model_dump(mode="json"), placement=place.key(), inputs=inputs)
    shutil.rmtree(work, ignore_errors=True)  # the checkpoints are not needed once the model is out
    return record


def run_finetune(cfg: PipelineConfig, prepared: dict[str, Any], weighted: dict[str, Any], base: BaseModel) -> dict[str, Any]:
    key = finetune_key(cfg, prepared, weighted, base)
    return run_stage(Store(cfg.store), STAGE, key, lambda w: _run(cfg, prepared, weighted, base, key, w))


@task(name="finetune", cache_key_fn=lambda ctx, p: finetune_key(p["cfg"], p["prepared"], p["weighted"], p["base"]),
      persist_result=True)
def finetune_task(cfg: PipelineConfig, prepared: dict[str, Any], weighted: dict[str, Any], base: BaseModel) -> dict[str, Any]:
    """Fine-tune the base model with the configured method; save it as safetensors."""
    return run_finetune(cfg, prepared, weighted, base)
