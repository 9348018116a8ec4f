"""Scaling: the score stage (`run_stage(SCORE, ...)`, as the pipeline runs it) at four dataset sizes.

Time should grow linearly with the tokens scored, and peak memory should stay flat: the stage
streams the prepared shards one at a time and writes a score shard per prepared shard. Each size
runs in a fresh process; prepare, shuffle and the discriminator run first (cached in the store)
and only the score stage is timed and measured. The baseline is the smallest size: the table
shows time per token and peak memory relative to it.

The default model is a small random Llama with SmolLM2's tokenizer and vocabulary, so that the
largest size runs in minutes on a CPU; `--model smollm2` scores with the real one.

    python -m benchmarks.scaling                        # synthetic agent samples, 500..4000
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import inputs
from .harness import Measured, PeakMemory, isolated, mib, print_table, record, set_threads


def tiny_model_dir(store: str) -> str:
    """A 2-block random Llama with SmolLM2's tokenizer, saved once beside the store."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokenweight.models import load_tokenizer

    path = Path(store).parent / "bench-tiny-model"
    if not (path / "config.json").exists():
        import torch

        torch.manual_seed(0)
        tokenizer = load_tokenizer(inputs.smollm2_path(store))
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                             tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)
        tmp = path.with_name(path.name + ".tmp")
        LlamaForCausalLM(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(path)
    return str(path)


def config_for(args: dict, n: int):
    from tokenweight.config import PipelineConfig

    return PipelineConfig.model_validate({
        "store": args["store"],
        "model": {"name": args["model"]},
        "prepare": {"source": {"kind": "synthetic", "n": n, "seed": 0}, "shard_rows": args["shard_rows"],
                    "eval_share": 0.0},
        "shuffle": {"share": 0.001, "floor": 16},
        "discriminator": {"epochs": 1.0, "train_layers": args["train_layers"]},
    })


def run_size(n: int, args: dict) -> Measured:
    import shutil
    import time

    from tokenweight.models import resolve_base_model
    from tokenweight.store import Store
    from tokenweight.stage_protocol import run_stage
    from tokenweight.tasks.discriminator import DISCRIMINATOR
    from tokenweight.tasks.prepare import PREPARE
    from tokenweight.tasks.score import SCORE
    from tokenweight.tasks.shuffle import SHUFFLE

    set_threads(args["threads"])
    cfg = config_for(args, n)
    store = Store(cfg.store)
    base = resolve_base_model(cfg.model, store)
    prepared = run_stage(PREPARE, cfg, store, base=base)
    shuffled = run_stage(SHUFFLE, cfg, store, prepared=prepared, base=base)
    disc = run_stage(DISCRIMINATOR, cfg, store, shuffled=shuffled, base=base)
    params = {"prepared": prepared, "disc": disc, "base": base}
    shutil.rmtree(store.local_dir("score", SCORE.key(cfg, **params)), ignore_errors=True)  # time it anew
    with PeakMemory() as mem:
        start = time.perf_counter()
        scored = run_stage(SCORE, cfg, store, **params)
        seconds = time.perf_counter() - start
    manifest = store.manifest("score", scored.key)
    return Measured([seconds], mem.peak, {"tokens": manifest["counts"]["tokens"], "shards": len(manifest["files"])})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,1000,2000,4000", help="Samples per run (comma-separated).")
    parser.add_argument("--shard-rows", type=int, default=250)
    parser.add_argument("--model", default="tiny", help="`tiny` (random, SmolLM2 vocabulary) or `smollm2`.")
    parser.add_argument("--train-layers", type=int, default=2, help="Discriminator's trained top blocks.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--store", default="runs/bench-store")
    args = parser.parse_args(argv)

    model = tiny_model_dir(args.store) if args.model == "tiny" else "smollm2-135m-instruct"
    child = {"store": args.store, "model": model, "shard_rows": args.shard_rows,
             "train_layers": args.train_layers, "threads": args.threads}
    sizes = [int(s) for s in args.sizes.split(",")]
    measured = {n: isolated(run_size, n=n, args=child) for n in sizes}
    first = measured[sizes[0]]
    per_token0 = first.median / first.extra["tokens"]
    table = []
    for n, m in measured.items():
        per_token = m.median / m.extra["tokens"]
        table.append([f"{n:,}", f"{m.extra['tokens']:,}", m.extra["shards"], f"{m.median:.1f} s",
                      f"{m.extra['tokens'] / m.median:,.0f}", f"{per_token / per_token0:.2f}x", mib(m.peak_bytes),
                      f"{m.peak_bytes / first.peak_bytes:.2f}x"])
    print_table(f"score stage ({args.model} model, {args.shard_rows} rows per shard); baseline: the smallest size",
                ["samples", "tokens", "shards", "time", "tokens/s", "time per token vs smallest", "peak memory",
                 "memory vs smallest"], table)
    record("scaling", vars(args), {str(n): {"seconds": m.seconds, "peak_bytes": m.peak_bytes, **m.extra}
                                   for n, m in measured.items()})


if __name__ == "__main__":
    main()
