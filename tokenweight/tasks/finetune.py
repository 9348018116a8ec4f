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
from ..config import PipelineConfig
from ..data_parallel import train_data_parallel, train_finetune
from ..device_policy import placement
from ..models import ModelRef, save_model
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
    fc, place = run.cfg.finetune, placement(run.cfg.device)
    rows_dir = run.input_dir(_source(run.cfg, prepared, weighted))
    args = (fc, rows_dir, fc.method in WEIGHTED_METHODS, base.path, run.work_dir, run.cfg.model.trust_remote_code, place)
    if fc.processes > 1:
        model_dir, info = train_data_parallel(*args)
        shutil.move(model_dir, run.dir / "model")  # out of the work directory, which goes once committed
    else:
        model, tokenizer, info = train_finetune(*args)
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
