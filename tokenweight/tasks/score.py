"""score: per-token cross-entropy of every target token of both splits under each model.

Streams over the prepared shards (one in memory at a time), batches rows by length, runs each
batch through the base model and (when it is the reference) the control, and the discriminator
in the context `disc_context` says (kernels/foreign_context.py), and writes one score shard per
prepared shard, rows in the same order. Each row is scored by the discriminator and control of
another fold than its own (kernels/cross_fit.py: never by a model that trained on it); its
`scored_by` column names that fold. A run killed part-way resumes at the first shard it had
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
from ..kernels.cross_fit import scoring_fold
from ..kernels.foreign_context import foreign_rows, move_targets
from ..kernels.score_tokens import score_rows
from ..models import BaseModel, load_model, load_tokenizer
from ..store import Store, StageWriter, stage_key
from .common import Progress, input_dir, iter_shards, logger, read_manifest, run_stage, shard_paths
from .discriminator import model_name

STAGE, VERSION = "score", "3"

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("loss_base", pa.list_(pa.float32())),
        ("loss_disc", pa.list_(pa.float32())),
        ("loss_control", pa.list_(pa.float32())),  # null when the reference is the base model
        ("scored_by", pa.int8()),  # the fold whose discriminator (and control) scored the row
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
    folds, fold_seed = disc_manifest["cross_fit"]["folds"], disc_manifest["cross_fit"]["seed"]
    kinds = sorted({t["kind"] for t in disc_manifest["trained"].values()})  # disc [, control]
    foreign = sc.disc_context == "foreign"
    tokens = read_manifest(prep_dir)["counts"]["tokens"]
    # In a foreign context the discriminator reads its own rows: the progress counts the tokens twice.
    total = tokens * (2 if foreign else 1)
    progress = Progress("score", total, "tokens")
    own_input, done, per_fold = 0, writer.done_shards(), [0] * folds
    if done:
        logger().info("score: resuming, %d of %d shards were finished by an interrupted run", len(done),
                      len(shard_paths(prep_dir)))
    for index, (_, table) in enumerate(iter_shards(prep_dir, ["id", "split", "input_ids", "loss_mask", "messages"])):
        ids = table.column("id").to_pylist()
        rows, masks = table.column("input_ids").to_pylist(), table.column("loss_mask").to_pylist()
        scored_by = [scoring_fold(i, fold_seed, folds) for i in ids]
        for f in scored_by:
            per_fold[f] += 1
        other = None
        if foreign:  # cheap next to scoring, and its count belongs in the manifest even for a done shard
            messages = [json.loads(m) for m in table.column("messages").to_pylist()]
            other = foreign_rows(tokenizer, messages, rows, masks, random.Random(f"{sc.seed}:{index}"),
                                 cfg.prepare.max_tokens, table.column("split").to_pylist())
            own_input += other.own_input
        if index in done:
            progress.update(sum(map(len, rows)) * (2 if foreign else 1))
            continue
        scores: dict[str, list] = {"base": [None] * len(rows), **{kind: [None] * len(rows) for kind in kinds}}
        for fold in range(folds):
            picked = [i for i, f in enumerate(scored_by) if f == fold]
            if not picked:
                continue
            pair = {"base": models["base"], **{kind: models[model_name(kind, fold)] for kind in kinds}}
            in_context = {k: m for k, m in pair.items() if not (foreign and k == "disc")}
            got = score_rows(in_context, [rows[i] for i in picked], [masks[i] for i in picked],
                             tokenizer.pad_token_id, sc.batch_tokens, sc.chunk_rows, shared, on_batch=progress.update)
            if other is not None:
                disc_losses = score_rows({"disc": pair["disc"]}, [other.rows[i] for i in picked],
                                         [other.masks[i] for i in picked], tokenizer.pad_token_id, sc.batch_tokens,
                                         sc.chunk_rows, on_batch=progress.update)["disc"]
                got["disc"] = [move_targets(d, other.masks[i], masks[i])
                               for d, i in zip(disc_losses, picked, strict=True)]
            for kind, losses in got.items():
                for i, loss in zip(picked, losses, strict=True):
                    scores[kind][i] = loss
        out = pa.table(
            {
                "id": table.column("id"),
                "loss_base": scores["base"],
                "loss_disc": scores["disc"],
                "loss_control": scores["control"] if "control" in scores else [None] * len(rows),
                "scored_by": scored_by,
            },
            schema=SCHEMA,
        )
        writer.write_shard(index, out)
    seconds = progress.close()
    counts = {"tokens": tokens, "models": list(models), "scored_per_fold": per_fold,
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
    """Per-token losses of every target token under the base model and the tuned models of another fold."""
    return run_score(cfg, prepared, disc, base)
