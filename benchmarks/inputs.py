"""The benchmarks' inputs: real BFCL conversations tokenized by the SmolLM2 chat template, and the
SmolLM2-135M model (converted once into a store), or a model of its shape with random weights where
the weights are not at hand (a GPU machine that gets only the tokenized rows and config.json).

Rows can be written to a Parquet file and read back, so a machine without the data packages runs
the same inputs.
"""

from __future__ import annotations

import copy
import itertools
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple", "live_simple"]
MAX_TOKENS = 1024


def smollm2_path(store: str) -> str:
    """The converted SmolLM2-135M-Instruct directory (converted on first use)."""
    from tokenweight.config import ModelConfig
    from tokenweight.models import resolve_base_model
    from tokenweight.store import Store

    return resolve_base_model(ModelConfig(), Store(store)).path


def bfcl_rows(tokenizer, n: int, skip: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids and target masks of `n` BFCL samples, taken in turn from the five categories
    (after skipping `skip` per category), truncated to MAX_TOKENS."""
    from tokenweight.components.chat_encode import encode_conversation
    from tokenweight.samples import Sample
    from tokenweight.sources.bfcl import read_bfcl

    streams = [[s for s in read_bfcl([c]) if isinstance(s, Sample)][skip:] for c in CATEGORIES]
    samples = [s for s in itertools.chain.from_iterable(itertools.zip_longest(*streams)) if s is not None][:n]
    if len(samples) < n:
        raise ValueError(f"BFCL has only {len(samples)} samples in {CATEGORIES} after skipping {skip}")
    encoded = [encode_conversation(tokenizer, s.messages, max_tokens=MAX_TOKENS) for s in samples]
    return [e.input_ids for e in encoded], [e.loss_mask for e in encoded]


def save_rows(path: Path, rows, masks, pad_id: int) -> None:
    table = pa.table({"input_ids": rows, "loss_mask": masks})
    pq.write_table(table.replace_schema_metadata({"pad_id": str(pad_id)}), path)


def load_rows(path: Path) -> tuple[list[list[int]], list[list[int]], int]:
    table = pq.read_table(path)
    return table["input_ids"].to_pylist(), table["loss_mask"].to_pylist(), int(table.schema.metadata[b"pad_id"])


def random_model(config_dir: str, seed: int = 0):
    """A model of the shape in config_dir/config.json with random weights (same FLOPs, other losses)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(config_dir)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def tuned_copy(model, top_layers: int, seed: int):
    """A copy of `model` whose top `top_layers` blocks are perturbed: the shape of a discriminator
    trained with train_layers (its bottom equals the base model's), for timing only."""
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in other.base_model.layers[-top_layers:]:
            for p in block.parameters():
                p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * 1e-3)
    return other


def real_tokens(rows) -> int:
    return sum(len(r) for r in rows)


def describe(rows, masks) -> dict:
    lengths = [len(r) for r in rows]
    return {"samples": len(rows), "tokens": sum(lengths), "target_tokens": sum(sum(m[1:]) for m in masks),
            "min_len": min(lengths), "max_len": max(lengths)}


def main(argv: list[str] | None = None) -> None:
    """Write the inputs for a machine without the model and data packages (a borrowed GPU):
    tokenized BFCL rows and SmolLM2's config.json, for `--rows-file` and `--config-dir`."""
    import argparse
    import shutil

    from tokenweight.models import load_tokenizer

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--samples", type=int, default=960)
    parser.add_argument("--out", default=".bench")
    parser.add_argument("--store", default="runs/bench-store")
    args = parser.parse_args(argv)
    out, model = Path(args.out), smollm2_path(args.store)
    (out / "smollm2-config").mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(model) / "config.json", out / "smollm2-config" / "config.json")
    tokenizer = load_tokenizer(model)
    rows, masks = bfcl_rows(tokenizer, args.samples)
    save_rows(out / f"bfcl-{args.samples}.parquet", rows, masks, tokenizer.pad_token_id)
    print(f"wrote {out}: {describe(rows, masks)}")


if __name__ == "__main__":
    main()
