"""finetune: train the base model on the train split with sft, dft, rft or the `weight` column.

`sft` and `dft` read the prepared shards (so their output depends on no SHAD setting); `rft`
and `weighted` read the weights stage's shards for `token_class` and `weight`. Training runs on the
transformers Trainer (components/trainer_setup.py); its checkpoints live in the stage's work
directory, so a run that crashes resumes from its last checkpoint when started again with the
same key. With `finetune.processes` above 1 the training runs under torchrun, one DDP rank per
process (data_parallel.py), on the same checkpoints. The model is saved as safetensors
in `model/`, the Trainer's log in `log_history.json`.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

from ..components.finetune_losses import WEIGHTED_METHODS
from ..components.trainer_setup import train_model, train_rows
from ..config import PipelineConfig
from ..data_parallel import CrashPoints, train_data_parallel
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


def _work(run: StageRun, prepared: StageRecord, weighted: StageRecord, base: ModelRef) -> dict[str, Any]:
    fc = run.cfg.finetune
    with_weights = fc.method in WEIGHTED_METHODS
    rows_dir = run.input_dir(_source(run.cfg, prepared, weighted))
    place = placement(run.cfg.device)
    trust = run.cfg.model.trust_remote_code
    if fc.processes > 1:
        model_dir, info = train_data_parallel(fc, rows_dir, with_weights, base.path, run.work_dir, trust, place)
        shutil.copytree(model_dir, run.dir / "model")
    else:
        rows = train_rows(rows_dir, with_weights=with_weights)
        logger().info("finetune[%s]: %d train samples, %d target tokens", fc.method, len(rows),
                      sum(sum(r["loss_mask"]) for r in rows))
        model, tokenizer, info = train_model(fc, rows, base.path, run.work_dir, trust, callbacks=[CrashPoints()],
                                             place=place, mid_checkpoint=lambda: crash_point("finetune.mid_checkpoint"))
        save_model(model, tokenizer, run.dir / "model")
        info["world_size"] = 1
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
