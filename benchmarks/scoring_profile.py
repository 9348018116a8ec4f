"""Where the scoring time goes, and what torch.compile buys: the score stage's `score_rows` on the
scoring benchmark's rows and models, under torch.profiler.

    python -m benchmarks.scoring              # first: writes runs/bench-scoring-rows.parquet
    python -m benchmarks.scoring_profile      # CPU, fp32: the breakdown, then eager against compiled

Each aten op's own (self) CPU time is put in one group: matrix products; attention (scaled
dot-product attention, its softmax); the log-sum-exp over the vocabulary at target positions
(the LM head's matmul stays with the matrix products); normalisation, rotary and SiLU, which are
element-wise (mul, add, pow, mean, rsqrt, silu, cat, neg); copies and layout (copy, contiguous,
index, to); and the rest. What the ops' self times do not cover of the wall time is Python and
dispatch between the ops. The profiled pass is timed separately from the unprofiled ones.

Then the same rows are scored with every decoder block compiled (`block.compile(dynamic=True)`,
inductor, which needs a C++ compiler on the CPU), against eager in the same process, after one
warm-up pass each (the compile happens there and is reported as such); the losses must agree.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch

from tokenweight.components.score_tokens import score_rows

from . import inputs
from .harness import print_table, record, set_threads
from .scoring import _models

GROUPS = [
    ("matrix products", ("mm", "addmm", "bmm", "matmul", "linear", "baddbmm")),
    ("attention", ("scaled_dot_product", "_flash_attention", "softmax", "_efficient_attention")),
    ("vocabulary log-sum-exp", ("logsumexp", "log_softmax", "cross_entropy", "nll_loss", "gather", "amax", "exp", "log")),
    ("norms, rotary, SiLU (element-wise)", ("mul", "add", "pow", "mean", "rsqrt", "silu", "cat", "neg", "sub", "div",
                                             "sigmoid", "sin", "cos")),
    ("copies and layout", ("copy_", "contiguous", "index", "to", "_to_copy", "clone", "empty", "zeros", "fill_",
                           "transpose", "view", "reshape", "expand", "slice", "select", "permute", "unsqueeze",
                           "masked_fill", "where", "arange", "ones", "cumsum", "stack", "narrow", "as_strided")),
]


def _group(op: str) -> str:
    name = op.removeprefix("aten::")
    for group, names in GROUPS:
        if any(name == n or name.startswith(n + "_") or name.startswith("_" + n) for n in names):
            return group
    return "other ops"


def breakdown(fn) -> tuple[float, dict[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        fn()
        wall = time.perf_counter() - started
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            groups[_group(event.key)] += event.self_cpu_time_total / 1e6
    return wall, dict(groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows-file", default="runs/bench-scoring-rows.parquet")
    parser.add_argument("--store", default="runs/bench-store")
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--train-layers", type=int, default=6)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true", help="Only the breakdown.")
    args = parser.parse_args()
    set_threads(args.threads)
    rows, masks, pad_id = inputs.load_rows(args.rows_file)
    models = _models({"model_path": inputs.smollm2_path(args.store), "config_dir": None, "models": args.models,
                      "train_layers": args.train_layers, "dtype": "float32", "device": "cpu"})
    run = lambda: score_rows(models, rows, masks, pad_id, args.batch_tokens, 1024, args.train_layers)  # noqa: E731
    with torch.inference_mode():
        run()  # warm-up
        started = time.perf_counter()
        eager = run()
        eager_s = time.perf_counter() - started
        wall, groups = breakdown(run)
    ops = sum(groups.values())
    table = [[g, f"{s:.2f} s", f"{s / wall:.0%}"] for g, s in sorted(groups.items(), key=lambda kv: -kv[1])]
    table.append(["Python and dispatch between ops (wall - ops)", f"{max(wall - ops, 0):.2f} s", f"{max(wall - ops, 0) / wall:.0%}"])
    tokens = sum(len(r) for r in rows)
    print_table(f"score_rows, {len(rows)} rows ({tokens:,} tokens), {args.models} models, cpu fp32, "
                f"{torch.get_num_threads()} threads: {eager_s:.2f} s unprofiled, {wall:.2f} s profiled",
                ["where", "self time", "of profiled wall"], table)
    results = {"eager_s": round(eager_s, 3), "profiled_wall_s": round(wall, 3),
               "groups_s": {g: round(s, 3) for g, s in groups.items()}}
    if not args.no_compile:
        for model in models.values():
            for block in model.model.layers:
                block.compile(dynamic=True)
        with torch.inference_mode():
            started = time.perf_counter()
            run()
            first_s = time.perf_counter() - started
            started = time.perf_counter()
            compiled = run()
            compiled_s = time.perf_counter() - started
        diff = max(float(np.abs(np.concatenate(compiled[k]) - np.concatenate(eager[k])).max()) for k in eager)
        print_table("decoder blocks compiled (inductor, dynamic shapes) against eager, same process",
                    ["variant", "time", "tokens/s", "vs eager"],
                    [["eager", f"{eager_s:.2f} s", f"{tokens / eager_s:,.0f}", "1.00x"],
                     ["compiled", f"{compiled_s:.2f} s", f"{tokens / compiled_s:,.0f}", f"{eager_s / compiled_s:.2f}x"],
                     ["compiled, first pass (compiles)", f"{first_s:.2f} s", "", ""]])
        print(f"max |compiled - eager| per-token loss: {diff:.2e}")
        results.update({"compiled_s": round(compiled_s, 3), "compile_first_pass_s": round(first_s, 3),
                        "compiled_max_abs_diff": diff})
    record("scoring_profile", {**vars(args), "rows": len(rows), "tokens": tokens}, results)


if __name__ == "__main__":
    main()
