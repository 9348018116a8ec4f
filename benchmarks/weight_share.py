"""Where each weights method puts the training weight, by SHAD's token class, without training.

Reads one or more weights stages' shards and prints, over the train samples (what the fine-tune
weighs): the share of each sample's weight on reasoning tokens (mean over samples), and the share
of each class's tokens that get any weight at all. SFT's share is the reasoning tokens' share of
all target tokens (its loss is a mean over the batch's tokens), as the pre-flight check reports it. It says
what a `weighted` arm trains on before its 30 minutes are spent: e.g. whether Rho-1's
excess-loss selection or UPFT's prefix keeps the decisions or the format.

    python -m benchmarks.weight_share STORE/weights/KEY [STORE/weights/KEY ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks.harness import print_table, train_rows, weight_shards

COLUMNS = ["token_class", "weight"]
BOILERPLATE, REASONING = 0, 1  # token_class as the weights stage writes it (-1: not a target token)


def weight_share(weights_dir: Path) -> dict:
    """The method's weight split by class over the train samples of one weights stage output."""
    method = (pq.read_schema(weight_shards(weights_dir)[0]).metadata or {}).get(b"tokenweight.method", b"?").decode()
    on_reasoning, samples = [], 0
    kept = {BOILERPLATE: 0, REASONING: 0}
    total = {BOILERPLATE: 0, REASONING: 0}
    for row in train_rows(weights_dir, COLUMNS):
        classes = np.asarray(row["token_class"], dtype=np.int8)
        weight = np.asarray(row["weight"], dtype=np.float64)
        target = classes >= 0
        if not target.any():
            continue
        samples += 1
        for cls in (BOILERPLATE, REASONING):
            mask = classes == cls
            total[cls] += int(mask.sum())
            kept[cls] += int((weight[mask] > 0).sum())
        target_weight = weight[target].sum()
        if target_weight > 0:  # a sample the method gives no weight adds no split
            on_reasoning.append(float(weight[classes == REASONING].sum() / target_weight))
    return {"method": method, "samples": samples,
            "reasoning_weight": round(float(np.mean(on_reasoning)), 3) if on_reasoning else float("nan"),
            "sft_reasoning_share": round(total[REASONING] / max(total[BOILERPLATE] + total[REASONING], 1), 3),
            "boilerplate_kept": round(kept[BOILERPLATE] / max(total[BOILERPLATE], 1), 3),
            "reasoning_kept": round(kept[REASONING] / max(total[REASONING], 1), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights_dirs", type=Path, nargs="+")
    args = parser.parse_args()
    rows = [weight_share(d) for d in args.weights_dirs]
    print_table(f"Weight on reasoning per train sample ({rows[0]['samples']} samples; "
                f"sft: {rows[0]['sft_reasoning_share']:.3f}, the token share)",
                ["weights", "method", "weight on reasoning", "boilerplate tokens weighted", "reasoning tokens weighted"],
                [[d.name, r["method"], f"{r['reasoning_weight']:.3f}", f"{r['boilerplate_kept']:.3f}",
                  f"{r['reasoning_kept']:.3f}"] for d, r in zip(args.weights_dirs, rows, strict=True)])


if __name__ == "__main__":
    main()
