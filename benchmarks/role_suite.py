"""The role suite, one data set per format: how well the token classes find the reasoning on
formats the settings were not chosen on.

Runs the pipeline up to the weights stage once per format (`configs/roles-suite.yaml` with
`prepare.source.format` set, no eval-only source), each its own data set as a team's data is,
then prints the per-format table and the leave-one-format-out table of `tokenweight roles` over
all of them (tokenweight/role_report.py). `bfcl` is BFCL's own answers (simple_python, multiple,
live_simple) with roles read from each call's syntax tree. Every stage is cached in the store, so
a second run only prints; `--set` changes the recipe for every format (and so its keys).

    python -m benchmarks.role_suite                                  # all six formats, 120 samples each (105 min)
    python -m benchmarks.role_suite --formats hermes python --out results/roles-suite/suite.md
    python -m benchmarks.role_suite --set discriminator.epochs=6     # another recipe, same data
    python -m benchmarks.role_suite --set discriminator.train_layers=6   # the top 6 blocks only (42 min)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tokenweight.config import load_config
from tokenweight.flows.pipeline import pipeline
from tokenweight.role_report import suite_table

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "roles-suite.yaml"
FORMATS = ("react", "hermes", "python", "multiturn", "prose", "bfcl")


def format_overrides(fmt: str, n: int) -> list[str]:
    """The `--set` overrides that make `configs/roles-suite.yaml` one data set of one format."""
    if fmt == "bfcl":
        per_category = max(1, n // 3)
        source = ("{kind: bfcl_roles, categories: [simple_python, multiple, live_simple], "
                  f"limit_per_category: {per_category}}}")
    else:
        source = f"{{kind: roles, format: {fmt}, n: {n}, seed: 0}}"
    return [f"prepare.source={source}", "prepare.eval_source=null"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--n", type=int, default=120, help="samples per format")
    parser.add_argument("--store", default=None, help="the store (default: the config's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--margins", type=float, nargs="+", default=[0.2, 0.5, 1.0, 1.5])
    parser.add_argument("--gaps", type=float, nargs="+", default=[0.0, 0.3, 0.5])
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here (markdown)")
    args = parser.parse_args()
    dirs = []
    for fmt in args.formats:
        overrides = format_overrides(fmt, args.n) + args.overrides + ([f"store={args.store}"] if args.store else [])
        start = time.perf_counter()
        records = pipeline(load_config(CONFIG, overrides), until="weights")
        print(f"{fmt}: weights {records['weights'].uri} ({time.perf_counter() - start:.0f} s)", flush=True)
        dirs.append(Path(records["weights"].uri))
    table = suite_table(dirs, args.margins, args.gaps)
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
