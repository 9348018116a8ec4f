"""compare: one table of every arm's eval metrics against the baseline arm, with paired intervals.

Rows are the arms (and the untuned base model); columns are accuracy and the held-out loss on
boilerplate and reasoning tokens, each with its difference from the baseline and that
difference's 95% paired-bootstrap interval over the eval samples, and the training time.
Written as `table.md` and `table.json`; the flow also posts it as a Prefect table artifact.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ..paired_bootstrap import paired_difference, ratio
from ..stage_outputs import Manifest, TrainRun
from ..stage_protocol import Stage, StageRun
from ..store import StageRecord

# metric -> (numerator column, denominator column): each is a ratio of per-sample sums.
METRICS = {
    "accuracy": ("correct", "checked"),
    "loss_boilerplate": ("loss_boilerplate_sum", "boilerplate_tokens"),
    "loss_reasoning": ("loss_reasoning_sum", "reasoning_tokens"),
}


def _columns(table) -> dict[str, np.ndarray]:
    data = table.to_pydict()
    correct = data["correct"]
    cols = {"id": np.asarray(data["id"]),
            "correct": np.asarray([1.0 if c else 0.0 for c in correct]),
            "checked": np.asarray([0.0 if c is None else 1.0 for c in correct])}
    for num, den in list(METRICS.values())[1:]:
        cols[num] = np.asarray(data[num], dtype=np.float64)
        cols[den] = np.asarray(data[den], dtype=np.float64)
    return cols


def build_table(per_arm: dict[str, dict[str, np.ndarray]], train: dict[str, TrainRun], baseline: str,
                resamples: int, seed: int) -> list[dict[str, Any]]:
    """One row per arm: each metric, its difference from the baseline and the interval."""
    ref = per_arm[baseline]
    rows = []
    for name, cols in per_arm.items():
        if not np.array_equal(cols["id"], ref["id"]):
            raise ValueError(f"arm {name!r} was evaluated on other samples than {baseline!r}")
        row: dict[str, Any] = {"arm": name}
        for metric, (num, den) in METRICS.items():
            row[metric] = ratio(cols[num], cols[den])
            if name != baseline:
                diff = paired_difference(cols[num], cols[den], ref[num], ref[den], resamples, seed)
                row[f"{metric}_diff"] = {"value": diff.value, "low": diff.low, "high": diff.high,
                                         "dropped": diff.dropped}
        info = train.get(name)
        row["train_seconds"] = info.train_seconds if info else None
        row["train_steps"] = info.steps if info else None
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], baseline: str, samples: int, resamples: int) -> str:
    head = ["arm"] + [m for m in METRICS] + ["train time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["arm"]]
        for metric in METRICS:
            cell = f"{row[metric]:.4f}"
            if f"{metric}_diff" in row:
                d = row[f"{metric}_diff"]
                cell += f" ({d['value']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}])"
            cells.append(cell)
        cells.append(f"{row['train_seconds'] / 60:.1f} min" if row["train_seconds"] is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\n{samples} eval samples. In brackets: difference from `{baseline}` and its 95% paired-bootstrap "
            "interval. accuracy: higher is better; held-out losses (nats/token, by token class): lower is better.\n")
    dropped = [f"{row['arm']} {metric} {row[f'{metric}_diff']['dropped']}" for row in rows for metric in METRICS
               if row.get(f"{metric}_diff", {}).get("dropped")]
    if dropped:
        note += (f"Resamples left out of an interval because they drew no sample to measure (of {resamples}): "
                 + ", ".join(dropped) + ".\n")
    return "\n".join(lines) + "\n" + note


def _work(run: StageRun, evals: dict[str, StageRecord], finetuned: dict[str, StageRecord]) -> dict[str, Any]:
    per_arm = {name: _columns(pq.read_table(run.input_dir(rec) / "predictions.parquet")) for name, rec in evals.items()}
    train = {name: TrainRun.of(Manifest.read(run.input_dir(rec))) for name, rec in finetuned.items()}
    cc = run.cfg.compare
    rows = build_table(per_arm, train, cc.baseline, cc.bootstrap, cc.seed)
    samples = len(per_arm[cc.baseline]["id"])
    (run.dir / "table.md").write_text(markdown(rows, cc.baseline, samples, cc.bootstrap))
    (run.dir / "table.json").write_text(json.dumps({"baseline": cc.baseline, "samples": samples, "rows": rows,
                                                    "evals": {n: r.key for n, r in evals.items()}}, indent=2))
    return {}


COMPARE = Stage(
    name="compare",
    version="2",
    config=lambda cfg: {"baseline": cfg.compare.baseline, "bootstrap": cfg.compare.bootstrap, "seed": cfg.compare.seed},
    inputs=lambda cfg, evals, finetuned: {name: rec.key for name, rec in evals.items()},
    work=_work,
    description="The comparison table of the arms' eval metrics against the baseline.",
)
