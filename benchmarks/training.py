"""Training: the finetune stage (`train_model`, sft and rft; dft and asft on request) against TRL's SFTTrainer.

Both train SmolLM2-135M-Instruct for one epoch over the same real BFCL samples, with the same
batch size, gradient accumulation, learning-rate schedule, trainable blocks, sequence budget and
completion-only loss (TRL gets our loss mask as its `completion_mask`), checkpoints off in both.
The baseline is TRL as it ships: SFTConfig's defaults, which include gradient checkpointing and a
random batch order. A second TRL row ("tuned") turns checkpointing off and groups batches by
length as our stage does, to show how much of the gap those settings alone explain.

Figures: tokens/s over the epoch (the rows' real tokens, no padding, over `trainer.train()`'s wall
time, after a one-step warm-up in the same process) and the process's peak memory growth from
before the model is loaded (both load the same fp32 weights).

    python -m benchmarks.training                      # CPU, 96 samples, top 6 blocks
    python -m benchmarks.training --arms "tokenweight sft,tokenweight dft,tokenweight asft"
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from tokenweight.config import FinetuneConfig

from . import inputs
from .harness import Measured, PeakMemory, block_flops, isolated, matmul_flops, mib, print_table, record, set_threads


def _our_rows(rows, masks, seed: int) -> list[dict]:
    """Stage rows; the classes are a seeded coin per target token (timing does not depend on them)."""
    rng = random.Random(seed)
    return [{"input_ids": r, "loss_mask": m, "token_class": [rng.randint(0, 1) if x else 0 for x in m],
             "weight": [1.0] * len(r)} for r, m in zip(rows, masks)]


def _fc(args: dict, method: str, max_steps: int | None = None) -> FinetuneConfig:
    return FinetuneConfig(method=method, batch_size=args["batch_size"], grad_accum=args["grad_accum"],
                          train_layers=args["train_layers"], save_steps=10**9, logging_steps=10**9,
                          max_steps=max_steps, learning_rate=2e-4)


def _ours(args: dict, rows: list[dict], method: str, max_steps: int | None, work: Path) -> float:
    from tokenweight.components.trainer_setup import train_model

    _, _, info = train_model(_fc(args, method, max_steps), rows, args["model_path"], work)
    return info["train_seconds"]


def _trl(args: dict, rows, masks, tuned: bool, max_steps: int | None, work: Path) -> float:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tokenweight.components.finetune_loop import freeze_below
    from tokenweight.models import load_model, load_tokenizer

    fc = _fc(args, "sft", max_steps)
    tokenizer = load_tokenizer(args["model_path"])
    model = load_model(args["model_path"])
    freeze_below(model, fc.train_layers)
    cuda = torch.cuda.is_available()
    config = SFTConfig(
        output_dir=str(work), per_device_train_batch_size=fc.batch_size, gradient_accumulation_steps=fc.grad_accum,
        num_train_epochs=fc.epochs, max_steps=max_steps or -1, learning_rate=fc.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=fc.warmup_share, weight_decay=fc.weight_decay,
        max_grad_norm=fc.max_grad_norm, logging_steps=fc.logging_steps, save_strategy="no", seed=fc.seed,
        data_seed=fc.seed, report_to="none", use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
        max_length=inputs.MAX_TOKENS, completion_only_loss=True, packing=False, dataloader_num_workers=0,
        disable_tqdm=True,
        **({"train_sampling_strategy": "group_by_length", "gradient_checkpointing": False} if tuned else {}),
    )
    data = Dataset.from_dict({"input_ids": rows, "completion_mask": masks})
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def run_arm(arm: str, args: dict) -> Measured:
    set_threads(args["threads"])
    rows, masks, _ = inputs.load_rows(args["rows_file"])
    with tempfile.TemporaryDirectory() as tmp:
        def train(max_steps: int | None, name: str) -> float:
            work = Path(tmp) / name
            if arm.startswith("tokenweight"):
                return _ours(args, _our_rows(rows, masks, 0), arm.split()[-1], max_steps, work)
            return _trl(args, rows, masks, "tuned" in arm, max_steps, work)

        with PeakMemory(args["device"]) as mem:
            train(1, "warmup")  # module loading, first allocations
            seconds = [train(None, f"run{k}") for k in range(args["repeats"])]
    return Measured(seconds, mem.peak)


def must_do_training_flops(config, rows, masks, train_layers: int | None) -> float:
    """FLOPs of an epoch no trainer can avoid: every block's forward once per token; the trained
    blocks' backward, twice their forward (gradients of inputs and of weights); the LM head (frozen,
    tied to the embeddings) at target positions only, forward and the gradient of its input."""
    trained = train_layers or config.num_hidden_layers
    targets = sum(sum(m[1:]) for m in masks)
    return (config.num_hidden_layers + 2 * trained) * block_flops(config, rows) \
        + 2 * (2 * config.hidden_size * config.vocab_size * targets)


ARMS = ["tokenweight sft", "tokenweight rft", "TRL SFTTrainer", "TRL SFTTrainer tuned"]
# Not in the default run: the other token-level losses, for their cost against sft (asft keeps a
# frozen copy of the base, only its trained top blocks with --train-layers).
MORE_ARMS = ["tokenweight dft", "tokenweight asft"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--train-layers", type=int, default=6, help="Top blocks trained (0: the whole model).")
    parser.add_argument("--repeats", type=int, default=1, help="Epochs timed per arm (each from the base weights).")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--store", default="runs/bench-store")
    parser.add_argument("--arms", default=",".join(ARMS),
                        help="Comma-separated subset of: " + ", ".join(ARMS + MORE_ARMS))
    args = parser.parse_args(argv)

    from tokenweight.models import load_tokenizer

    model_path = inputs.smollm2_path(args.store)
    tokenizer = load_tokenizer(model_path)
    rows, masks = inputs.bfcl_rows(tokenizer, args.samples)
    rows_file = "runs/bench-training-rows.parquet"
    inputs.save_rows(rows_file, rows, masks, tokenizer.pad_token_id)
    data = inputs.describe(rows, masks)
    child = {"rows_file": rows_file, "model_path": model_path, "batch_size": args.batch_size,
             "grad_accum": args.grad_accum, "train_layers": args.train_layers or None, "repeats": args.repeats,
             "threads": args.threads, "device": "cuda" if torch.cuda.is_available() else "cpu"}
    arms = [a.strip() for a in args.arms.split(",")]
    measured = {arm: isolated(run_arm, arm=arm, args=child) for arm in arms}
    baseline = measured.get("TRL SFTTrainer")

    from transformers import AutoConfig

    flops = must_do_training_flops(AutoConfig.from_pretrained(model_path), rows, masks, child["train_layers"])
    peak_rate, n = matmul_flops(args.threads, child["device"])
    table = []
    for arm, m in measured.items():
        speed = data["tokens"] / m.median
        ratio = [f"{baseline.median / m.median:.2f}x", f"{m.peak_bytes / baseline.peak_bytes:.2f}x"] if baseline else ["", ""]
        rate = flops / m.median
        table.append([arm, f"{m.median:.1f} s", f"{speed:,.0f}", mib(m.peak_bytes), *ratio,
                      f"{rate / 1e9:,.1f} GFLOP/s ({rate / peak_rate:.0%})"])
    print_table(
        f"One epoch over {data['samples']} BFCL samples ({data['tokens']:,} tokens, {data['target_tokens']:,} targets), "
        f"batch {args.batch_size} x {args.grad_accum}, top {args.train_layers or 'all'} blocks, "
        f"{child['device']}, {torch.get_num_threads() if not args.threads else args.threads} threads",
        ["arm", "epoch time", "tokens/s", "peak memory", "speed vs TRL", "memory vs TRL", "must-do FLOP/s (of matmul peak)"],
        table)
    print(f"\nmeasured matmul peak: {peak_rate / 1e9:,.1f} GFLOP/s ({n}^3); must-do work: {flops / 1e9:,.1f} GFLOP")
    record("training", {**vars(args), "data": data},
           {**{arm: {"seconds": m.seconds, "peak_bytes": m.peak_bytes} for arm, m in measured.items()},
            "must_do_flops": flops, "matmul_flops": peak_rate})


if __name__ == "__main__":
    main()
