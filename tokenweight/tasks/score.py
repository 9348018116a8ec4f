"""score: per-token cross-entropy of every target token of both splits under each model.

Streams over the prepared shards (one in memory at a time), batches rows by length, runs each
batch through the base model and (when it is the reference) the control, and the discriminator
in the context `disc_context` says (kernels/foreign_context.py), and writes one score shard per
prepared shard, rows in the same order. A run killed part-way resumes at the first shard it had
not finished (StageWriter keeps finished shards).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pyarrow as pa
import torch
from prefect import task

from ..config import PipelineConfig
from ..device_policy import placement
from ..kernels.foreign_context import foreign_rows, move_targets
from ..kernels.score_tokens import score_rows
from ..models import BaseModel, load_model, load_tokenizer
from ..store import Store, StageWriter, stage_key
from .common import Progress, input_dir, iter_shards, logger, read_manifest, run_stage, shard_paths

STAGE, VERSION = "score", "2"

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
    return stage_key(STAGE, VERSION, cfg.score.model_dump(mode="json"), inputs, {"placement": placement(cfg.device).key()})


def _run(cfg: PipelineConfig, prepared: dict[str, Any], disc: dict[str, Any], base: BaseModel, writer: StageWriter):
    store = Store(cfg.store)
    prep_dir, disc_dir = input_dir(store, prepared), input_dir(store, disc)
    tokenizer = load_tokenizer(base.path, cfg.model.trust_remote_code)
    place = placement(cfg.device)
    models = {"base": load_model(base.path, cfg.model.trust_remote_code)}
    disc_manifest = read_manifest(disc_dir)
    for name in disc_manifest["trained"]:
        models[name] = load_model(str(disc_dir / name), cfg.model.trust_remote_code)
    models = {name: m.to(device=place.device, dtype=place.torch_dtype).eval() for name, m in models.items()}
    sc, shared = cfg.score, disc_manifest["config"]["train_layers"]
    foreign = sc.disc_context == "foreign"
    # In its own context the discriminator reads the same batches as the others; in a foreign one,
    # its own rows (so the progress counts the prepared tokens twice).
    in_context = {name: m for name, m in models.items() if not (foreign and name == "disc")}
    tokens = read_manifest(prep_dir)["counts"]["tokens"]
    total = tokens * (2 if foreign else 1)
    progress = Progress("score", total, "tokens")
    own_input, done = 0, writer.done_shards()
    if done:
        logger().info("score: resuming, %d of %d shards were finished by an interrupted run", len(done),
                      len(shard_paths(prep_dir)))
    for index, (_, table) in enumerate(iter_shards(prep_dir, ["id", "input_ids", "loss_mask", "messages"])):
        rows, masks = table.column("input_ids").to_pylist(), table.column("loss_mask").to_pylist()
        other = None
        if foreign:  # cheap next to scoring, and its count belongs in the manifest even for a done shard
            messages = [json.loads(m) for m in table.column("messages").to_pylist()]
            other = foreign_rows(tokenizer, messages, rows, masks, random.Random(f"{sc.seed}:{index}"),
                                 cfg.prepare.max_tokens)
            own_input += other.own_input
        if index in done:
            progress.update(sum(map(len, rows)) * (2 if foreign else 1))
            continue
        scores = score_rows(in_context, rows, masks, tokenizer.pad_token_id, sc.batch_tokens, sc.chunk_rows, shared,
                            on_batch=progress.update)
        if other is not None:
            disc_losses = score_rows({"disc": models["disc"]}, other.rows, other.masks, tokenizer.pad_token_id,
                                     sc.batch_tokens, sc.chunk_rows, on_batch=progress.update)["disc"]
            scores["disc"] = [move_targets(d, fm, m) for d, fm, m in zip(disc_losses, other.masks, masks, strict=True)]
        out = pa.table(
            {
                "id": table.column("id"),
                "loss_base": scores["base"],
                "loss_disc": scores["disc"],
                "loss_control": scores["control"] if "control" in scores else [None] * len(rows),
            },
            schema=SCHEMA,
        )
        writer.write_shard(index, out)
    seconds = progress.close()
    counts = {"tokens": tokens, "models": list(models),
              "disc_context": sc.disc_context, "disc_own_input": own_input,
              "tokens_per_s": round(total / max(seconds, 1e-9), 1), "threads": torch.get_num_threads(),
              "device": place.device, "dtype": place.dtype, "shards_resumed": len(done)}
    logger().info("score: %s in %.1fs", counts, seconds)
    inputs = {"prepare": prepared["key"], "discriminator": disc["key"], "base_model": base.key}
    return writer.commit(counts=counts, config=cfg.score.model_dump(mode="json"), placement=place.key(), inputs=inputs)


def run_score(cfg: PipelineConfig, prepared: dict[str, Any], disc: dict[str, Any], base: BaseModel) -> dict[str, Any]:
    key = score_key(cfg, prepared, disc, base)
    return run_stage(Store(cfg.store), STAGE, key, lambda w: _run(cfg, prepared, disc, base, w), resumable=True)


@task(name="score", cache_key_fn=lambda ctx, p: score_key(p["cfg"], p["prepared"], p["disc"], p["base"]),
      persist_result=True)
def score_task(cfg: PipelineConfig, prepared: dict[str, Any], disc: dict[str, Any], base: BaseModel) -> dict[str, Any]:
    """Per-token losses of every target token under the base model and the tuned models."""
    return run_score(cfg, prepared, disc, base)
