"""What the critical stage (CFT's generate, verify, perturb) costs and yields per data set, on the
real model: answers accepted, critical tokens, probes and seconds, from the stage's own manifest.

    python -m benchmarks.critical_cost --data sums          # 40 two-number sums (written here)
    python -m benchmarks.critical_cost --data bfcl --limit 6
    python -m benchmarks.critical_cost --data gsm --limit 24

Each run is prepare then the critical stage alone, in a fresh store under --store (the model is
converted there once). Results are appended to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from benchmarks.harness import print_table, record

SOURCES = {
    # the demo's BFCL questions as measured, written as python calls (the demo now writes Hermes calls)
    "bfcl": ("configs/demo.yaml", lambda limit, _: [f"prepare.source.limit_per_category={limit}",
                                                    "prepare.source.call_format=python"], 128),
    "gsm": ("configs/gsm8k-smollm2.yaml", lambda limit, _: [f"prepare.source.n={limit}", "prepare.eval_source.limit=4"], 256),
    "sums": ("configs/demo.yaml", lambda limit, path: [f"prepare.source={json.dumps({'kind': 'file', 'path': path})}"], 64),
}


def write_sums(path: Path, n: int, seed: int = 0) -> str:
    """n questions `What is a plus b? Reply with the sum.` with their `answer`, a and b in 2..30."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            a, b = rng.randint(2, 30), rng.randint(2, 30)
            messages = [{"role": "user", "content": f"What is {a} plus {b}? Reply with the sum."},
                        {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]
            f.write(json.dumps({"id": f"add-{i}", "messages": messages, "answer": a + b}) + "\n")
    return str(path)


def main() -> None:
    from tokenweight.config import load_config
    from tokenweight.flows.pipeline import open_store
    from tokenweight.models import resolve_base_model
    from tokenweight.stage_protocol import run_stage
    from tokenweight.tasks.critical import CRITICAL
    from tokenweight.tasks.prepare import PREPARE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=sorted(SOURCES), default="sums")
    parser.add_argument("--limit", type=int, default=40, help="sums: questions; bfcl: per category; gsm: problems")
    parser.add_argument("--store", default=None, help="a store to reuse (default: a fresh temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config, overrides, max_new = SOURCES[args.data]
        sums = write_sums(Path(tmp) / "sums.jsonl", args.limit) if args.data == "sums" else None
        cfg = load_config(config, [f"store={args.store or tmp + '/store'}", f"critical.max_new_tokens={max_new}",
                                   "weights.method=critical", *overrides(args.limit, sums)])
        store = open_store(cfg)
        base = resolve_base_model(cfg.model, store)
        prepared = run_stage(PREPARE, cfg, store, base=base)
        started = time.time()
        record_ = run_stage(CRITICAL, cfg, store, prepared=prepared, base=base)
        wall = time.time() - started
        counts = json.loads(Path(record_.uri, "_manifest.json").read_text())["counts"]
    train = sum(v for k, v in counts.items() if k.startswith("status_") and k != "status_eval")
    row = [args.data, train, counts.get("status_accepted", 0), counts.get("answer_tokens", 0),
           counts.get("critical_tokens", 0), counts.get("probes", 0), counts["seconds"].get("answers"),
           counts["seconds"].get("probes"), counts.get("seconds_per_accepted_answer"), round(wall, 1)]
    print_table(f"critical stage, {cfg.model.name}, critical.max_new_tokens={max_new}",
                ["data", "train", "accepted", "answer tokens", "critical", "probes", "answers s", "probing s",
                 "s per accepted", "wall s"], [row])
    record("critical_cost", {"data": args.data, "limit": args.limit, "max_new_tokens": max_new,
                             "substitutes": cfg.critical.substitutes, "rule": cfg.critical.rule},
           {"counts": counts, "wall_s": round(wall, 1)})


if __name__ == "__main__":
    main()
