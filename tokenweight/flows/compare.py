"""Several fine-tune arms (default sft and rft) on the same cached stages, side by side.

Every stage before the fine-tune runs once and is shared; each arm is a finetune stage with its
own overrides (and, when it overrides the weights section, its own weights stage on the shared
scores) and an eval stage on the same eval set and the shared token classes; the untuned base model is evaluated as a
row too. The table (markdown and JSON in the store, and a Prefect table artifact) gives each
metric with its 95% paired-bootstrap interval against the baseline arm.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from ..config import PipelineConfig
from ..models import ModelRef
from ..tasks.compare import COMPARE
from ..tasks.critical import CRITICAL
from ..tasks.eval import EVAL, finetuned_ref
from ..tasks.finetune import FINETUNE
from ..tasks.weights import WEIGHTS
from .pipeline import Run, base_model_task, run_stages

BASE_ROW = "base"


@flow(name="tokenweight-compare", log_prints=True)
def compare(cfg: PipelineConfig) -> dict[str, Any]:
    """Train and evaluate every arm; returns the stage records (`weights`: the arms' own weights
    stages) and the compare table's record."""
    run = Run.open(cfg)
    base = base_model_task(cfg, run.store)
    shared = run_stages(cfg, run, base, until="weights")
    data = {"prepared": shared["prepare"], "weighted": shared["weights"]}
    finetuned, evals, arm_weights = {}, {}, {}
    if cfg.compare.include_base:
        evals[BASE_ROW] = run.stage(EVAL, cfg, **data, model=ModelRef(base.path, base.key, BASE_ROW))
    for arm in cfg.compare.arms:
        arm_cfg = cfg.arm(arm)
        weighted = shared["weights"]
        if arm.weights:  # its own weight column, from the shared scores
            critical = shared.get("critical")
            if arm_cfg.weights.method == "critical" and critical is None:  # one critical stage for every such arm
                critical = shared["critical"] = run.stage(CRITICAL, arm_cfg, prepared=shared["prepare"], base=base)
            weighted = arm_weights[arm.name] = run.stage(
                WEIGHTS, arm_cfg, run_name=f"weights[{arm.name}]", scored=shared["score"], prepared=shared["prepare"],
                disc=shared["discriminator"], base=base, critical=critical)
        finetuned[arm.name] = run.stage(FINETUNE, arm_cfg, run_name=f"finetune[{arm.name}]", base=base,
                                        prepared=shared["prepare"], weighted=weighted)
        evals[arm.name] = run.stage(EVAL, arm_cfg, **data, model=finetuned_ref(run.store, arm.name, finetuned[arm.name]))
    table = run.stage(COMPARE, cfg, evals=evals, finetuned=finetuned)
    table_dir = run.store.local_dir(table.stage, table.key)
    rows = json.loads((table_dir / "table.json").read_text())["rows"]
    create_table_artifact(table=[_artifact_row(r) for r in rows], key="tokenweight-compare",
                          description=(table_dir / "table.md").read_text())
    return {"shared": shared, "weights": arm_weights, "finetune": finetuned, "eval": evals, "compare": table}


def _artifact_row(row: dict[str, Any]) -> dict[str, Any]:
    """A table-artifact row: numbers rounded, intervals as text."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dict):
            value = f"{value['value']:+.4f} [{value['low']:+.4f}, {value['high']:+.4f}]"
        elif isinstance(value, float):
            value = round(value, 4)
        out[key] = value
    return out
