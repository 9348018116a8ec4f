"""finetune: train the base model on the train split with sft, dft, rft or the `weight` column.

`sft` and `dft` read the prepared shards (so their output depends on no SHAD setting); `rft`
and `weighted` read the weights stage's shards for `token_class` and `weight`. Training runs on the
transformers Trainer (components/trainer_setup.py); its checkpoints live in the stage's work
directory, so a run that crashes resumes from its last checkpoint when started again with the
same key. The model is saved as safetensors in `model/`, the Trainer's log in `log_history.json`.
"""

from __future__ import annotations

import json
from typing import Any

from transformers import TrainerCallback

from ..components.finetune_losses import WEIGHTED_METHODS
from ..components.trainer_setup import train_model, train_rows
from ..config import PipelineConfig
from ..device_policy import placement
from ..faults import crash_point
from ..models import ModelRef, save_model
from ..run_log import logger
from ..stage_protocol import Stage, StageRun
from ..store import StageRecord


def _source(cfg: PipelineConfig, prepared: StageRecord, weighted: StageRecord) -> StageRecord:
    """rft and weighted train on the weighted rows (classes, weights), sft and dft on the prepared ones."""
    return weighted if cfg.finetune.method in WEIGHTED_METHODS else prepared


def _inputs(cfg: PipelineConfig, prepared: StageRecord, weighted: StageRecord, base: ModelRef) -> dict[str, str]:
    if cfg.finetune.method in WEIGHTED_METHODS:
        return {"weights": weighted.key, "base_model": base.key}
    return {"prepare": prepared.key, "base_model": base.key}


class _CrashPoints(TrainerCallback):
    """The crash tests' kill point after each optimiser step (faults.py)."""

    def on_step_end(self, args, state, control, **kwargs):
        crash_point("finetune.step")


def _work(run: StageRun, prepared: StageRecord, weighted: StageRecord, base: ModelRef) -> dict[str, Any]:
    fc = run.cfg.finetune
    rows = train_rows(run.input_dir(_source(run.cfg, prepared, weighted)), with_weights=fc.method in WEIGHTED_METHODS)
    logger().info("finetune[%s]: %d train samples, %d target tokens", fc.method, len(rows),
                  sum(sum(r["loss_mask"]) for r in rows))
    place = placement(run.cfg.device)
    model, tokenizer, info = train_model(fc, rows, base.path, run.work_dir, run.cfg.model.trust_remote_code,
                                         callbacks=[_CrashPoints()], place=place,
                                         mid_checkpoint=lambda: crash_point("finetune.mid_checkpoint"))
    save_model(model, tokenizer, run.dir / "model")
    (run.dir / "log_history.json").write_text(json.dumps(info.pop("log_history"), indent=1))
    return {"train": info, "placement": place.key()}


FINETUNE = Stage(
    name="finetune",
    version="2",
    config=lambda cfg: cfg.finetune.key_settings(),
    inputs=_inputs,
    extra=lambda cfg, **_: {"placement": placement(cfg.device).key()},
    work=_work,
    description="Fine-tune the base model with the configured method; save it as safetensors.",
)
