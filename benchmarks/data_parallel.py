"""The finetune stage in 2 processes (torchrun, gloo) against 1, on the real model and real data.

    python -m benchmarks.data_parallel                     # BFCL, 8 per category, sft, 3 steps; about 1 minute

Prepare runs once (cached in --store); the finetune stage then runs from nothing with
`finetune.processes` 1 and 2 on the same global batch, and each step's loss and gradient norm
(the all-reduced one, before clipping) from the two runs' `log_history.json` are printed side by
side with their largest relative difference. On 2 cores the 2-process run cannot be faster (each
rank gets one thread); the wall times show what the launch costs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from benchmarks.harness import print_table, record


def main() -> None:
    from tokenweight.config import load_config
    from tokenweight.flows.pipeline import open_store
    from tokenweight.models import resolve_base_model
    from tokenweight.stage_protocol import run_stage
    from tokenweight.tasks.finetune import FINETUNE
    from tokenweight.tasks.prepare import PREPARE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-category", type=int, default=8, help="BFCL questions per category")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--store", default="runs/bench-data-parallel")
    args = parser.parse_args()
    steps, walls = {}, {}
    for processes in (1, 2):
        cfg = load_config("configs/demo.yaml", [f"store={args.store}", f"prepare.source.limit_per_category={args.per_category}",
                                                "finetune.method=sft", f"finetune.max_steps={args.steps}",
                                                "finetune.logging_steps=1", f"finetune.processes={processes}",
                                                "prepare.source.call_format=python"])  # as measured, before the demo wrote Hermes calls
        store = open_store(cfg)
        base = resolve_base_model(cfg.model, store)
        prepared = run_stage(PREPARE, cfg, store, base=base)
        key = FINETUNE.key(cfg, prepared=prepared, weighted=None, base=base)
        shutil.rmtree(store.stage_uri("finetune", key), ignore_errors=True)
        started = time.time()
        record_ = run_stage(FINETUNE, cfg, store, prepared=prepared, weighted=None, base=base)
        walls[processes] = time.time() - started
        steps[processes] = [h for h in json.loads(Path(record_.uri, "log_history.json").read_text()) if "loss" in h]
    rows, worst = [], 0.0
    for step, (one, two) in enumerate(zip(steps[1], steps[2]), 1):
        diff = max(abs(two[k] - one[k]) / abs(one[k]) for k in ("loss", "grad_norm"))
        worst = max(worst, diff)
        rows.append([step, f"{one['loss']:.6f}", f"{two['loss']:.6f}", f"{one['grad_norm']:.5f}", f"{two['grad_norm']:.5f}"])
    print_table(f"finetune stage, sft, SmolLM2-135M, BFCL {args.per_category} per category: 1 process against 2 "
                f"({walls[1]:.1f} s against {walls[2]:.1f} s)",
                ["step", "loss, 1", "loss, 2", "grad norm, 1", "grad norm, 2"], rows)
    print(f"largest relative difference: {worst:.2e}")
    record("data_parallel", vars(args), {"steps": {str(k): v for k, v in steps.items()},
                                         "wall_s": {str(k): round(v, 1) for k, v in walls.items()},
                                         "max_rel_diff": worst})


if __name__ == "__main__":
    main()
