"""Scoring: the score stage's code (`score_rows`) against a naive scorer, on real BFCL samples.

The naive scorer is what one writes first: each model in turn, padded batches in arrival order,
the full forward with logits at every position, log_softmax over the vocabulary, gather. Ours
batches by length under a token budget, runs the LM head and the cross-entropy only at target
positions and in chunks, and runs the bottom blocks the models share once per batch.

The models are SmolLM2-135M-Instruct (base) and copies of it whose top `--train-layers` blocks are
perturbed, standing in for the discriminator (and control) the discriminator stage trains with
`train_layers`: the same shapes, the same shared bottom, the same work.

    python -m benchmarks.scoring                       # CPU, fp32, 40 samples
    python -m benchmarks.scoring --device cuda --dtype bfloat16 --samples 400
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from tokenweight.components.batching import pad_batch
from tokenweight.components.score_tokens import score_rows
from tokenweight.components.token_loss import reference_token_losses

from . import inputs
from .harness import Measured, block_flops, isolated, matmul_flops, mib, print_table, record, repeat, set_threads

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@torch.no_grad()
def naive_scores(models, rows, masks, pad_id: int, batch_rows: int) -> dict[str, list[np.ndarray]]:
    device = next(iter(models.values())).device
    out = {}
    for name, model in models.items():
        out[name] = []
        for start in range(0, len(rows), batch_rows):
            batch = rows[start : start + batch_rows]
            ids, attn, mask = (t.to(device) for t in pad_batch(batch, masks[start : start + batch_rows], pad_id))
            losses = reference_token_losses(model, ids, attn, mask)
            out[name] += [losses[b, : len(r)].cpu().numpy() for b, r in enumerate(batch)]
    return out


def _models(args: dict) -> dict[str, torch.nn.Module]:
    if args["model_path"]:
        from tokenweight.models import load_model

        base = load_model(args["model_path"])
    else:
        base = inputs.random_model(args["config_dir"])
    models = {"base": base}
    for k in range(1, args["models"]):
        models[f"tuned{k}"] = inputs.tuned_copy(base, args["train_layers"], seed=k)
    dtype, device = DTYPES[args["dtype"]], args["device"]
    return {name: m.to(device=device, dtype=dtype).eval() for name, m in models.items()}


def run_variant(variant: str, args: dict) -> Measured:
    """One variant in this (fresh) process: load, warm up on the first rows, time the whole set."""
    set_threads(args["threads"])
    rows, masks, pad_id = inputs.load_rows(args["rows_file"])
    models = _models(args)
    if variant == "ours":
        fn = lambda r, m: score_rows(models, r, m, pad_id, args["batch_tokens"], args["chunk_rows"],  # noqa: E731
                                     args["train_layers"])
    else:
        fn = lambda r, m: naive_scores(models, r, m, pad_id, args["naive_batch_rows"])  # noqa: E731
    fn(rows[:4], masks[:4])  # warm-up: first-call allocations, kernel selection
    measured, out = repeat(lambda: fn(rows, masks), warmup=0, repeats=args["repeats"], device=args["device"])
    measured.extra["losses"] = {name: np.concatenate(v) for name, v in out.items()}
    return measured


def must_do_flops(config, rows, masks, n_models: int, shared_bottom_layers: int) -> float:
    """FLOPs no scorer can avoid: every block's matrix products and causal attention once per token
    (the shared bottom once, the top per model), the LM head at target positions per model."""
    blocks = shared_bottom_layers + n_models * (config.num_hidden_layers - shared_bottom_layers)
    targets = sum(sum(m[1:]) for m in masks)
    return blocks * block_flops(config, rows) + n_models * 2 * config.hidden_size * config.vocab_size * targets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=40, help="BFCL samples (taken in turn from 5 categories).")
    parser.add_argument("--models", type=int, default=2, help="Models scored: base + this-many-minus-one tuned.")
    parser.add_argument("--train-layers", type=int, default=6, help="Top blocks the tuned models differ in.")
    parser.add_argument("--batch-tokens", type=int, default=4096, help="Our padded-token budget per batch.")
    parser.add_argument("--chunk-rows", type=int, default=1024, help="Our target positions per LM-head chunk.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--store", default="runs/bench-store", help="Where SmolLM2 is converted to safetensors.")
    parser.add_argument("--rows-file", default=None, help="Read tokenized rows from this Parquet (else BFCL).")
    parser.add_argument("--config-dir", default=None, help="Random weights of this config (no SmolLM2 at hand).")
    args = parser.parse_args(argv)

    from transformers import AutoConfig

    rows_file = args.rows_file or "runs/bench-scoring-rows.parquet"
    if args.config_dir:
        model_path, config = None, AutoConfig.from_pretrained(args.config_dir)
    else:
        from tokenweight.models import load_tokenizer

        model_path = inputs.smollm2_path(args.store)
        config = AutoConfig.from_pretrained(model_path)
    if not args.rows_file:
        tokenizer = load_tokenizer(model_path)
        rows, masks = inputs.bfcl_rows(tokenizer, args.samples)
        inputs.save_rows(rows_file, rows, masks, tokenizer.pad_token_id)
    rows, masks, _ = inputs.load_rows(rows_file)
    data = inputs.describe(rows, masks)
    naive_batch_rows = max(1, round(args.batch_tokens / (data["tokens"] / data["samples"])))
    settings = {**vars(args), "naive_batch_rows": naive_batch_rows, "data": data}
    child = {"rows_file": rows_file, "model_path": model_path, "config_dir": args.config_dir,
             "models": args.models, "train_layers": args.train_layers, "batch_tokens": args.batch_tokens,
             "chunk_rows": args.chunk_rows, "repeats": args.repeats, "threads": args.threads,
             "device": args.device, "dtype": args.dtype, "naive_batch_rows": naive_batch_rows}

    ours = isolated(run_variant, variant="ours", args=child)
    naive = isolated(run_variant, variant="naive", args=child)
    diff = max(float(np.abs(ours.extra["losses"][k] - naive.extra["losses"][k]).max()) for k in ours.extra["losses"])
    flops = must_do_flops(config, rows, masks, args.models, config.num_hidden_layers - args.train_layers)
    threads = args.threads or torch.get_num_threads()
    peak_rate, n = matmul_flops(args.threads, args.device, DTYPES[args.dtype] if args.device == "cuda" else torch.float32)

    def row(name: str, m: Measured) -> list[str]:
        rate = flops / m.median
        return [name, f"{m.median:.2f} s", f"{data['tokens'] / m.median:,.0f}", mib(m.peak_bytes),
                f"{rate / 1e9:,.1f} GFLOP/s", f"{rate / peak_rate:.0%}"]

    print_table(
        f"Scoring {data['samples']} BFCL samples ({data['tokens']:,} tokens, {data['target_tokens']:,} targets) "
        f"under {args.models} models, {args.device} {args.dtype}, {threads} threads; "
        f"naive batches of {naive_batch_rows} rows",
        ["scorer", "median time", "tokens/s", "peak memory", "must-do FLOP/s", "of matmul peak"],
        [row("tokenweight score_rows", ours), row("naive (baseline)", naive),
         ["ratio ours/naive", f"{ours.median / naive.median:.2f}x", f"{naive.median / ours.median:.2f}x",
          f"{ours.peak_bytes / naive.peak_bytes:.2f}x", "", ""]],
    )
    matmul_dtype = args.dtype if args.device == "cuda" else "float32"
    print(f"\nmeasured matmul peak: {peak_rate / 1e9:,.1f} GFLOP/s ({args.device} {matmul_dtype}, {n}^3); "
          f"must-do work: {flops / 1e9:,.1f} GFLOP; max |ours - naive| per-token loss: {diff:.2e}")
    record("scoring", settings, {
        "ours": {"seconds": ours.seconds, "peak_bytes": ours.peak_bytes},
        "naive": {"seconds": naive.seconds, "peak_bytes": naive.peak_bytes},
        "speedup": naive.median / ours.median, "memory_ratio": ours.peak_bytes / naive.peak_bytes,
        "must_do_flops": flops, "matmul_flops": peak_rate, "max_abs_diff": diff,
    })


if __name__ == "__main__":
    main()
