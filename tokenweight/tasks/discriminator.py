"""discriminator: fine-tune the base model on the shuffled sample (plain loss on assistant tokens).

With `reference: control` it also tunes the matched control: the same base, the same sample with
its true pairing, the same steps, batches (one batch order, built from the longer of each pair's
two renderings) and seed. With cross-fitting (`shuffle.folds` > 1) each fold's sample trains its
own pair (kernels/cross_fit.py). Models train on the device and in the precision of the run's
`device` policy, and are saved as safetensors in `disc-{fold}/` and `control-{fold}/`.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow.parquet as pq
from prefect import task

from ..config import PipelineConfig
from ..device_policy import placement
from ..faults import crash_point
from ..kernels.finetune_loop import TrainSettings, batch_order, order_digest, train_on_targets
from ..models import BaseModel, load_model, load_tokenizer, save_model
from ..store import Store, StageWriter, stage_key
from .common import Progress, input_dir, logger, run_stage

STAGE, VERSION = "discriminator", "2"


def discriminator_key(cfg: PipelineConfig, shuffled: dict[str, Any], base: BaseModel) -> str:
    return stage_key(STAGE, VERSION, cfg.discriminator.model_dump(mode="json"),
                     {"shuffle": shuffled["key"], "base_model": base.key}, {"placement": placement(cfg.device).key()})


def models_of(reference: str) -> list[tuple[str, str]]:
    """(model kind, training file) pairs the stage trains per fold."""
    pairs = [("disc", "shuffled.parquet")]
    if reference == "control":
        pairs.append(("control", "matched.parquet"))
    return pairs


def model_name(kind: str, fold: int) -> str:
    """The directory (and manifest entry) of one fold's discriminator or control."""
    return f"{kind}-{fold}"


def _run(cfg: PipelineConfig, shuffled: dict[str, Any], base: BaseModel, writer: StageWriter):
    dc = cfg.discriminator
    data_dir = input_dir(Store(cfg.store), shuffled)
    tokenizer = load_tokenizer(base.path, cfg.model.trust_remote_code)
    settings = TrainSettings(dc.epochs, dc.learning_rate, dc.warmup_share, dc.weight_decay, dc.batch_tokens,
                             dc.train_layers, dc.seed)
    data = {kind: pq.read_table(data_dir / file, columns=["id", "input_ids", "loss_mask", "fold"]).to_pydict()
            for kind, file in models_of(dc.reference)}
    if "control" in data and data["control"]["id"] != data["disc"]["id"]:
        raise ValueError(f"{data_dir}: shuffled.parquet and matched.parquet do not hold the same samples in order")
    place = placement(cfg.device)
    trained = {}
    for fold in range(cfg.shuffle.folds):
        rows_of = [i for i, f in enumerate(data["disc"]["fold"]) if f == fold]
        # One batch order for both models of the fold: the same samples in the same steps.
        order = batch_order([max(len(d["input_ids"][i]) for d in data.values()) for i in rows_of], settings)
        for kind, columns in data.items():
            name = model_name(kind, fold)
            rows, masks = [columns["input_ids"][i] for i in rows_of], [columns["loss_mask"][i] for i in rows_of]
            trained[name] = _train_one(name, rows, masks, settings, order, place, base, tokenizer, cfg, writer)
            trained[name].update(kind=kind, fold=fold)
    return writer.commit(trained=trained, reference=dc.reference, config=dc.model_dump(mode="json"),
                         cross_fit={"folds": cfg.shuffle.folds, "seed": cfg.shuffle.seed}, placement=place.key(),
                         inputs={"shuffle": shuffled["key"], "base_model": base.key})


def _train_one(name, rows, masks, settings, order, place, base, tokenizer, cfg, writer) -> dict[str, Any]:
    """Train one model from the base on `rows` in `order`, save it, and say what it did."""
    model = load_model(base.path, cfg.model.trust_remote_code).to(place.device)
    progress: list[Progress] = []  # made at the first step, when the step count is known
    started = time.time()

    def on_step(step: int, total: int, loss: float, tokens: int) -> None:
        if not progress:
            progress.append(Progress(f"discriminator[{name}]", total, "steps"))
        progress[0].update(1, loss=f"{loss:.3f}", tokens=tokens)
        crash_point("discriminator.step")

    losses = train_on_targets(model, rows, masks, settings, tokenizer.pad_token_id, on_step, order, place.autocast)
    progress[0].close()
    save_model(model.to("cpu"), tokenizer, writer.dir / name)
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


def run_discriminator(cfg: PipelineConfig, shuffled: dict[str, Any], base: BaseModel) -> dict[str, Any]:
    key = discriminator_key(cfg, shuffled, base)
    return run_stage(Store(cfg.store), STAGE, key, lambda w: _run(cfg, shuffled, base, w))


@task(name="discriminator", cache_key_fn=lambda ctx, p: discriminator_key(p["cfg"], p["shuffled"], p["base"]),
      persist_result=True)
def discriminator_task(cfg: PipelineConfig, shuffled: dict[str, Any], base: BaseModel) -> dict[str, Any]:
    """Fine-tune the discriminator (and the matched control) and save them as safetensors."""
    return run_discriminator(cfg, shuffled, base)
