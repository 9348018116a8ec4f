"""score: per-token cross-entropy of every target token of both splits under each model.

Streams over the prepared shards (one in memory at a time), batches rows by length, runs each
batch through the base model, the discriminator and (when it is the reference) the control, and
writes one score shard per prepared shard, rows in the same order.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import torch
from prefect import task

from ..config import PipelineConfig
from ..kernels.score_tokens import score_rows
from ..models import BaseModel, load_model, load_tokenizer
from ..store import Store, StageWriter, stage_key
from .common import Progress, input_dir, iter_shards, logger, read_manifest, run_stage, write_shard

STAGE, VERSION = "score", "1"

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("loss_base", pa.list_(pa.float32())),
        ("loss_disc", pa.list_(pa.float32())),
        ("loss_control", pa.list_(pa.float32())),  # null when the reference is the base model
    ]
)


def score_key(cfg: PipelineConfig, prepared: dict[str, Any], disc: dict[str, Any], base: BaseModel) -> str:
    inputs = {"prepare": prepared["key"], "discriminator": disc["key"], "base_model": base.key}
    return stage_key(STAGE, VERSION, cfg.score.model_dump(mode="json"), inputs)


def _run(cfg: PipelineConfig, prepared: dict[str, Any], disc: dict[str, Any], base: BaseModel, writer: StageWriter):
    store = Store(cfg.store)
    prep_dir, disc_dir = input_dir(store, prepared), input_dir(store, disc)
    tokenizer = load_tokenizer(base.path, cfg.model.trust_remote_code)
    models = {"base": load_model(base.path, cfg.model.trust_remote_code)}
    for name in read_manifest(disc_dir)["trained"]:
        models[name] = load_model(str(disc_dir / name), cfg.model.trust_remote_code)
    for model in models.values():
        model.eval()
    total = read_manifest(prep_dir)["counts"]["tokens"]
    progress = Progress("score", total, "tokens")
    started = time.time()
    for index, (_, table) in enumerate(iter_shards(prep_dir, ["id", "input_ids", "loss_mask"])):
        rows, masks = table.column("input_ids").to_pylist(), table.column("loss_mask").to_pylist()
        scores = score_rows(models, rows, masks, tokenizer.pad_token_id, cfg.score.batch_tokens,
                            cfg.score.chunk_rows, on_batch=lambda n: progress.update(n))
        out = pa.table(
            {
                "id": table.column("id"),
                "loss_base": scores["base"],
                "loss_disc": scores["disc"],
                "loss_control": scores["control"] if "control" in scores else [None] * len(rows),
            },
            schema=SCHEMA,
        )
        write_shard(writer.dir, index, out)
    seconds = progress.close()
    counts = {"tokens": total, "models": list(models), "tokens_per_s": round(total / max(seconds, 1e-9), 1),
              "threads": torch.get_num_threads()}
    logger().info("score: %d tokens under %d models in %.1fs", total, len(models), time.time() - started)
    inputs = {"prepare": prepared["key"], "discriminator": disc["key"], "base_model": base.key}
    return writer.commit(counts=counts, config=cfg.score.model_dump(mode="json"), inputs=inputs)


def run_score(cfg: PipelineConfig, prepared: dict[str, Any], disc: dict[str, Any], base: BaseModel) -> dict[str, Any]:
    key = score_key(cfg, prepared, disc, base)
    return run_stage(Store(cfg.store), STAGE, key, lambda w: _run(cfg, prepared, disc, base, w))


@task(name="score", cache_key_fn=lambda ctx, p: score_key(p["cfg"], p["prepared"], p["disc"], p["base"]),
      persist_result=True)
def score_task(cfg: PipelineConfig, prepared: dict[str, Any], disc: dict[str, Any], base: BaseModel) -> dict[str, Any]:
    """Per-token losses of every target token under the base model and the tuned models."""
    return run_score(cfg, prepared, disc, base)
