"""`tokenweight run CONFIG.yaml` (the pipeline) and `tokenweight compare CONFIG.yaml` (fine-tune arms side by side) in Prefect's local mode; `tokenweight serve CONFIG.yaml` serves both as deployments.

Errors the user can fix (a config key, a missing file, a bad model path, an unwritable store)
print one line saying what and where; `--debug` shows the traceback too.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from .config import ALL_STAGES, load_config
from .evals.answer_check import base_heldout_loss
from .models import check_model_name
from .preflight import verdict_lines
from .serve import add_serve_parser, serve_command
from .stage_outputs import EvalMetrics, WeightsSummary
from .store import StageRecord, Store


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenweight", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline on a config")
    run.add_argument("config", help="pipeline config (YAML), e.g. configs/demo.yaml")
    _config_options(run)
    run.add_argument("--until", choices=ALL_STAGES, default="eval", help="stop after this stage")
    compare = sub.add_parser("compare", help="train several fine-tune arms (default sft, rft) and compare them")
    compare.add_argument("config", help="pipeline config (YAML) with a compare section, e.g. configs/bfcl-smollm2.yaml")
    _config_options(compare)
    compare.add_argument("--export", type=Path, metavar="DIR",
                         help="also copy table.md, table.json, each row's predictions (predictions/ARM.parquet) "
                              "and its eval metrics (metrics/ARM.json) into DIR, small files to commit or share")
    roles = sub.add_parser("roles", help="compare a run's token classes with known token roles")
    roles.add_argument("weights_dir", nargs="+",
                       help="a finished weights output, {store}/weights/{key}; several (one data set per format): "
                            "all their formats in one table, then leave-one-format-out")
    roles.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.5, 1.0])
    roles.add_argument("--gaps", type=float, nargs="+", default=[0.0, 0.3],
                       help="min gaps (weights.min_gap) to tabulate with each margin; 0: LD alone")
    roles.add_argument("--errors", type=int, default=0, metavar="N",
                       help="also list the N most frequent misclassified tokens of each run's own classes, "
                            "and its tokens of words the answer repeats from its own earlier text")
    roles.add_argument("--debug", action="store_true", help="show tracebacks")
    add_serve_parser(sub)
    return parser


def _config_options(command: argparse.ArgumentParser) -> None:
    """The options `run` and `compare` share: what build_config reads, and --debug."""
    command.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                         help="override a config value (repeatable), e.g. --set discriminator.learning_rate=3e-4")
    command.add_argument("--store", help="fsspec URL of the store (overrides `store`)")
    command.add_argument("--data", help="a JSONL or Parquet file to use instead of the configured source")
    command.add_argument("--debug", action="store_true", help="show tracebacks")


def build_config(args: argparse.Namespace):
    overrides = list(args.overrides) + ([f"store={args.store}"] if args.store else [])
    return load_config(args.config, overrides, data=args.data)


def print_report(records: dict[str, StageRecord], seconds: float, store: Store) -> None:
    ran = sum(not r.cached for r in records.values())
    print(f"\ntokenweight: {len(records)} stages in {seconds:.1f}s ({ran} ran, {len(records) - ran} cached)")
    for stage, rec in records.items():
        print(f"  {stage:<14} {'cached' if rec.cached else 'ran':<7} {_took(store, rec):>8}  {shown(store, rec)}")
    if all(r.cached for r in records.values()):
        print("  nothing to do: every stage came from the cache")
    if "weights" in records:
        print_summary(store.local_dir("weights", records["weights"].key), shown(store, records["weights"]))
    if "eval" in records:
        weights_dir = store.local_dir("weights", records["weights"].key) if "weights" in records else None
        print_eval(store.local_dir("eval", records["eval"].key), weights_dir)


def _took(store: Store, record: StageRecord) -> str:
    """How long a stage that ran in this run took (its manifest's seconds), so the report says where
    the time went; blank for a cached one, whose time was spent by an earlier run."""
    if record.cached:
        return ""
    seconds = (store.manifest(record.stage, record.key) or {}).get("seconds")
    return f"{seconds:.1f}s" if isinstance(seconds, (int, float)) else ""


def shown(store: Store, record: StageRecord) -> str:
    """Where a stage output is, as the user would type it (with the scheme for a remote store)."""
    return record.uri if store.is_local else f"{store.url}/{record.stage}/{record.key}"


def print_eval(eval_dir: Path, weights_dir: Path | None = None) -> None:
    """The eval's accuracy and held-out loss per token class; with the weights output, the base
    model's held-out loss on the same tokens beside it (before -> after the fine-tune)."""
    m = EvalMetrics.read(eval_dir)
    loss = m.heldout_loss
    accuracy = "n/a" if m.accuracy is None else f"{m.accuracy:.3f}"
    print(f"\neval [{m.model['name']}]: accuracy {accuracy} on {m.checked} checked samples; held-out loss "
          f"boilerplate {loss['boilerplate']}, reasoning {loss['reasoning']}")
    if weights_dir is not None:
        ids = set(pq.read_table(eval_dir / "predictions.parquet", columns=["id"]).column("id").to_pylist())
        base = base_heldout_loss(weights_dir, ids)
        print("  held-out loss per token class, base model -> tuned: " + ", ".join(
            f"{c} {base[c]} -> {loss[c]}" for c in ("boilerplate", "reasoning") if base[c] is not None))
    for name, t in m.accuracy_by_task.items():
        print(f"  {name:<28} {t['accuracy']:.3f}  (n={t['n']})")
    print(f"predictions: {eval_dir}/predictions.parquet")


def print_summary(weights_dir: Path, where: str) -> None:
    s = WeightsSummary.read(weights_dir)
    if s is None:
        return
    tokens = s.target_tokens
    print(f"\nsamples: {s.samples}  (method {s.method}, reference {s.reference}, margin {s.margin}"
          f"{' (auto)' if s.margin_setting == 'auto' else ''}, min gap {s.min_gap})")
    print(f"target tokens: boilerplate {tokens['boilerplate']}, reasoning {tokens['reasoning']}, "
          f"boilerplate share {s.boilerplate_share:.1%}")
    for cls in ("boilerplate", "reasoning"):
        top = ", ".join(f"{t['token']!r}×{t['count']}" for t in s.top_tokens[cls][:12])
        print(f"most frequent {cls}: {top}")
    if s.roles is not None:
        r = s.roles
        print(f"against known roles: accuracy {r['accuracy']:.3f}, reasoning F1 {r['reasoning_f1']:.3f} "
              f"(precision {r['reasoning_precision']:.3f}, recall {r['reasoning_recall']:.3f})")
    if s.preflight is not None:
        print("\n".join(verdict_lines(s.preflight)))
    if s.critical is not None:
        c = s.critical
        print(f"critical: {c['accepted']} train answers accepted ({c['wrong']} wrong, {c['unchecked']} with no checker), "
              f"{c['critical_tokens']} of their {c['answer_tokens']} tokens critical; only they are trained on")
    print(f"weight shards: {where}/part-*.parquet")
    if (weights_dir / "report.html").exists():
        print(f"token report: {where}/report.html")


def _roles(args: argparse.Namespace) -> int:
    from .role_report import error_table, role_table, suite_table

    try:
        dirs = [Path(d) for d in args.weights_dir]
        print(role_table(dirs[0], args.margins, args.gaps) if len(dirs) == 1
              else suite_table(dirs, args.margins, args.gaps))
        for directory in dirs if args.errors else []:
            print(f"\nMisclassified tokens of {directory} (its own classes):\n\n{error_table(directory, args.errors)}")
    except (OSError, ValueError, KeyError) as err:
        if args.debug:
            raise
        print(f"tokenweight: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return 0


class _NoTracebacks(logging.Filter):
    """Keep Prefect's failure lines but drop their tracebacks (shown with --debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def _quiet_prefect_tracebacks() -> None:
    for name in ("prefect.task_runs", "prefect.flow_runs", "prefect.task_engine", "prefect.flow_engine"):
        logging.getLogger(name).addFilter(_NoTracebacks())


def _run_flow(args: argparse.Namespace, cfg):
    if args.command == "compare":
        from .flows.compare import compare

        return compare(cfg)
    from .flows.pipeline import pipeline

    return pipeline(cfg, until=args.until)


def print_compare(result: dict, seconds: float, store: Store) -> None:
    table_dir = store.local_dir("compare", result["compare"].key)
    stages = [*result["shared"].values(), *result["weights"].values(), *result["finetune"].values(),
              *result["eval"].values()]
    ran = sum(not r.cached for r in stages)
    print(f"\ntokenweight compare: {len(stages)} stages ({ran} ran, {len(stages) - ran} cached) in {seconds:.1f}s\n")
    print((table_dir / "table.md").read_text())
    print(f"table: {shown(store, result['compare'])}/table.md and table.json")


def export_compare(result: dict, store: Store, out: Path) -> None:
    """The compare table and, per row (the arms and the base model), its predictions and eval
    metrics, copied into `out`: everything needed to re-check the verdicts without the store."""
    for sub in ("predictions", "metrics"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    table_dir = store.local_dir("compare", result["compare"].key)
    for name in ("table.md", "table.json"):
        shutil.copyfile(table_dir / name, out / name)
    for arm, record in result["eval"].items():
        eval_dir = store.local_dir("eval", record.key)
        shutil.copyfile(eval_dir / "predictions.parquet", out / "predictions" / f"{arm}.parquet")
        shutil.copyfile(eval_dir / EvalMetrics.FILE, out / "metrics" / f"{arm}.json")
    print(f"exported: {out}/table.md, table.json, predictions/*.parquet, metrics/*.json ({len(result['eval'])} rows)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "roles":
        return _roles(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Prefect's first local start migrates its database; 20 s is not always enough on 2 cores.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if args.command == "serve":
        return serve_command(args)
    try:
        cfg = build_config(args)
        # What the user can fix is checked before Prefect starts (and would log a traceback); the
        # flow checks the store again, as it must when a deployment runs it.
        check_model_name(cfg.model)
        store = Store(cfg.store)
        store.check_writable()
        if not args.debug:
            _quiet_prefect_tracebacks()

        started = time.time()
        result = _run_flow(args, cfg)
    except KeyboardInterrupt:
        print("tokenweight: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place errors become one clear line
        if args.debug:
            raise
        print(f"tokenweight: error: {type(err).__name__}: {err}", file=sys.stderr)
        print("tokenweight: run again with --debug for the traceback", file=sys.stderr)
        return 2
    if args.command == "compare":
        print_compare(result, time.time() - started, store)
        if args.export is not None:
            export_compare(result, store, args.export)
    else:
        print_report(result, time.time() - started, store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
