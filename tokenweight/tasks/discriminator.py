"""discriminator: fine-tune the base model on the shuffled sample (plain loss on assistant tokens).

With `reference: control` it also tunes the matched control: the same base, the same sample with
its true pairing, the same steps, batches (one batch order, built from the longer of each pair's
two renderings) and seed. With cross-fitting (`shuffle.folds` > 1) each fold's sample trains its
own pair (components/cross_fit.py). Models train on the device and in the precision of the run's
`device` policy, and are saved as safetensors in `disc-{fold}/` and `control-{fold}/`
(stage_outputs.TrainedModels is what the manifest says of them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from ..components.finetune_loop import TrainSettings, batch_order, order_digest, train_on_targets
from ..device_policy import Placement, placement
from ..faults import crash_point
from ..models import ModelRef, load_model, load_tokenizer, save_model
from ..progress import Progress
from ..run_log import logger
from ..stage_outputs import TrainedModels
from ..stage_protocol import Stage, StageRun, section
from ..store import StageRecord


def models_of(reference: str) -> list[tuple[str, str]]:
    """(model kind, training file) pairs the stage trains per fold."""
    pairs = [("disc", "shuffled.parquet")]
    if reference == "control":
        pairs.append(("control", "matched.parquet"))
    return pairs


@dataclass(frozen=True)
class _Trainer:
    """What every model of the stage trains with: the settings, device, base and tokenizer."""

    settings: TrainSettings
    place: Placement
    base: ModelRef
    tokenizer: Any
    trust_remote_code: bool

    def train(self, name: str, rows: list[list[int]], masks: list[list[int]], order, out_dir) -> dict[str, Any]:
        """Train one model from the base on `rows` in `order`, save it in `out_dir/name`, and say what it did."""
        model = load_model(self.base.path, self.trust_remote_code).to(self.place.device)
        progress: list[Progress] = []  # made at the first step, when the step count is known
        started = time.time()

        def on_step(step: int, total: int, loss: float, tokens: int) -> None:
            if not progress:
                progress.append(Progress(f"discriminator[{name}]", total, "steps"))
            progress[0].update(1, loss=f"{loss:.3f}", tokens=tokens)
            crash_point("discriminator.step")

        losses = train_on_targets(model, rows, masks, self.settings, self.tokenizer.pad_token_id, on_step, order,
                                  self.place.autocast)
        progress[0].close()
        save_model(model.to("cpu"), self.tokenizer, out_dir / name)
        logger().info("discriminator[%s]: %d steps, loss %.3f -> %.3f", name, len(losses), losses[0], losses[-1])
        return {
            "steps": len(losses),
            "first_loss": round(losses[0], 4),
            "last_loss": round(losses[-1], 4),
            "losses": [round(x, 4) for x in losses],
            "samples": len(rows),
            "batches": order_digest(order),
            "seconds": round(time.time() - started, 1),
        }


def _work(run: StageRun, shuffled: StageRecord, base: ModelRef) -> dict[str, Any]:
    cfg, dc = run.cfg, run.cfg.discriminator
    data_dir = run.input_dir(shuffled)
    settings = TrainSettings(dc.epochs, dc.learning_rate, dc.warmup_share, dc.weight_decay, dc.batch_tokens,
                             dc.train_layers, dc.seed)
    data = {kind: pq.read_table(data_dir / file, columns=["id", "input_ids", "loss_mask", "fold"]).to_pydict()
            for kind, file in models_of(dc.reference)}
    if "control" in data and data["control"]["id"] != data["disc"]["id"]:
        raise ValueError(f"{data_dir}: shuffled.parquet and matched.parquet do not hold the same samples in order")
    place = placement(cfg.device)
    trainer = _Trainer(settings, place, base, load_tokenizer(base.path, cfg.model.trust_remote_code),
                       cfg.model.trust_remote_code)
    trained = {}
    for fold in range(cfg.shuffle.folds):
        rows_of = [i for i, f in enumerate(data["disc"]["fold"]) if f == fold]
        # One batch order for both models of the fold: the same samples in the same steps.
        order = batch_order([max(len(d["input_ids"][i]) for d in data.values()) for i in rows_of], settings)
        for kind, columns in data.items():
            name = TrainedModels.model_name(kind, fold)
            rows, masks = [columns["input_ids"][i] for i in rows_of], [columns["loss_mask"][i] for i in rows_of]
            trained[name] = trainer.train(name, rows, masks, order, run.dir)
            trained[name].update(kind=kind, fold=fold)
    return {"trained": trained, "reference": dc.reference, "placement": place.key(),
            "cross_fit": {"folds": cfg.shuffle.folds, "seed": cfg.shuffle.seed}}


DISCRIMINATOR = Stage(
    name="discriminator",
    version="2",
    config=section("discriminator"),
    inputs=lambda cfg, shuffled, base: {"shuffle": shuffled.key, "base_model": base.key},
    extra=lambda cfg, **_: {"placement": placement(cfg.device).key()},
    work=_work,
    description="Fine-tune the discriminator (and the matched control) and save them as safetensors.",
)
