"""What fanning the score stage out on Dask costs against scoring in-process, on the real model.

    python -m benchmarks.runner_overhead                    # BFCL, 16 per category, 8 and 2 shards
    python -m benchmarks.runner_overhead --per-category 32 --shard-rows 8 32

For each shard size, prepare, shuffle and a short discriminator run once (cached in --store), then
the score stage is computed three times from nothing: in-process (the baseline, all threads),
on a local Dask cluster of 1 worker with all threads (the same compute, so the difference is the
runner's overhead: cluster start, the worker loading the models, a Prefect task run per shard,
shipping each shard back) and on 2 workers of 1 thread (what a pool looks like; on 2 cores it can
not be faster). The per-shard overhead is the slope of (dask - in-process) over the shard count;
the intercept is the fixed cost of a run. Every run's shards are checked byte-identical to the
baseline's. Results go to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import print_table, record


def _shards(directory: str) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(directory).glob("part-*.parquet"))]


def main() -> None:
    from tokenweight.config import load_config
    from tokenweight.flows.pipeline import open_store
    from tokenweight.models import resolve_base_model
    from tokenweight.stage_protocol import run_stage
    from tokenweight.tasks.discriminator import DISCRIMINATOR
    from tokenweight.tasks.prepare import PREPARE
    from tokenweight.tasks.score import SCORE
    from tokenweight.tasks.shuffle import SHUFFLE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-category", type=int, default=16, help="BFCL questions per category")
    parser.add_argument("--shard-rows", type=int, nargs="+", default=[4, 16], help="rows per shard (one setting each)")
    parser.add_argument("--store", default=None, help="a store to reuse (default: a fresh temporary one)")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    runners = {"in-process": {"kind": "local"},
               f"dask 1x{threads}": {"kind": "dask", "workers": 1, "threads_per_worker": threads},
               f"dask {threads}x1": {"kind": "dask", "workers": threads, "threads_per_worker": 1}}
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for shard_rows in args.shard_rows:
            overrides = [f"store={args.store or tmp + '/store'}", f"prepare.source.limit_per_category={args.per_category}",
                         f"prepare.shard_rows={shard_rows}", "shuffle.floor=8", "discriminator.epochs=0.5",
                         "prepare.source.call_format=python"]  # as measured, before the demo wrote Hermes calls
            walls, baseline = {}, None
            for name, runner in runners.items():
                cfg = load_config("configs/demo.yaml", overrides + [f"runner.{k}={v}" for k, v in runner.items()])
                store = open_store(cfg)
                base = resolve_base_model(cfg.model, store)
                prepared = run_stage(PREPARE, cfg, store, base=base)
                disc = run_stage(DISCRIMINATOR, cfg, store, shuffled=run_stage(SHUFFLE, cfg, store, prepared=prepared,
                                                                               base=base), base=base)
                shutil.rmtree(store.stage_uri("score", SCORE.key(cfg, prepared=prepared, disc=disc, base=base)),
                              ignore_errors=True)
                started = time.time()
                scored = run_stage(SCORE, cfg, store, prepared=prepared, disc=disc, base=base)
                walls[name] = time.time() - started
                got = _shards(scored.uri)
                baseline = baseline or got
                if got != baseline:
                    raise SystemExit(f"{name}: the shards differ from the in-process run's")
            n = len(baseline)
            rows.append([shard_rows, n, *(round(w, 1) for w in walls.values())])
            results.append({"shard_rows": shard_rows, "shards": n, "wall_s": {k: round(v, 2) for k, v in walls.items()}})
    # Overhead of a 1-worker cluster (same threads as in-process) against the shard count.
    same = f"dask 1x{threads}"
    extra = [(r["shards"], r["wall_s"][same] - r["wall_s"]["in-process"]) for r in results]
    slope = intercept = None
    if len(extra) >= 2 and extra[0][0] != extra[-1][0]:
        (n0, e0), (n1, e1) = extra[0], extra[-1]
        slope = (e1 - e0) / (n1 - n0)
        intercept = e0 - slope * n0
    print_table(f"score stage wall seconds, BFCL {args.per_category} per category, SmolLM2-135M",
                ["shard rows", "shards", *runners], rows)
    if slope is not None:
        print(f"{same} against in-process: {intercept:.1f}s per run + {slope:.2f}s per shard")
    record("runner_overhead", {"per_category": args.per_category, "shard_rows": args.shard_rows, "threads": threads},
           {"runs": results, "overhead_per_shard_s": None if slope is None else round(slope, 3),
            "overhead_per_run_s": None if intercept is None else round(intercept, 2)})


if __name__ == "__main__":
    main()
