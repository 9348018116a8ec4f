"""Several fine-tune arms (default sft and rft) on the same cached stages, side by side.

Every stage before the fine-tune runs once and is shared; each arm is a finetune stage with its
own overrides and an eval stage on the same eval set; the untuned base model is evaluated as a
row too. The table (markdown and JSON in the store, and a Prefect table artifact) gives each
metric with its 95% paired-bootstrap interval against the baseline arm.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from ..config import PipelineConfig
from ..prefect_records import record_storage
from ..tasks.compare import compare_task
from ..tasks.eval import eval_task, finetuned_ref, model_ref
from ..tasks.finetune import finetune_task
from .pipeline import base_model_task, open_store, run_cached, run_stages

BASE_ROW = "base"


@flow(name="tokenweight-compare", log_prints=True)
def compare(cfg: PipelineConfig) -> dict[str, Any]:
    """Train and evaluate every arm; returns the stage records and the compare table's record."""
    store = open_store(cfg)
    records = record_storage(store)
    base = base_model_task(cfg)
    shared = run_stages(cfg, store, records, base, until="weights")
    data = {"prepared": shared["prepare"], "weighted": shared["weights"]}
    finetuned, evals = {}, {}
    if cfg.compare.include_base:
        evals[BASE_ROW] = run_cached(eval_task, store, records, cfg=cfg, **data, model=model_ref(BASE_ROW, base.key, base.path))
    for arm in cfg.compare.arms:
        arm_cfg = cfg.arm(arm)
        finetuned[arm.name] = run_cached(finetune_task.with_options(task_run_name=f"finetune[{arm.name}]"), store, records,
                                         cfg=arm_cfg, base=base, **data)
        evals[arm.name] = run_cached(eval_task, store, records, cfg=arm_cfg, **data,
                                     model=finetuned_ref(store, arm.name, finetuned[arm.name]))
    table = run_cached(compare_task, store, records, cfg=cfg, evals=evals, finetuned=finetuned)
    rows = json.loads((store.local_dir("compare", table["key"]) / "table.json").read_text())["rows"]
    create_table_artifact(table=[_flat(r) for r in rows], key="tokenweight-compare",
                          description=(store.local_dir("compare", table["key"]) / "table.md").read_text())
    return {"shared": shared, "finetune": finetuned, "eval": evals, "compare": table}


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A table-artifact row: numbers rounded, intervals as text."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dict):
            value = f"{value['value']:+.4f} [{value['low']:+.4f}, {value['high']:+.4f}]"
        elif isinstance(value, float):
            value = round(value, 4)
        out[key] = value
    return out

