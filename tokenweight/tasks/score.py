"""score: per-token cross-entropy of every target token of both splits under each model.

Streams over the prepared shards (one in memory at a time), batches rows by length, runs each
batch through the base model and (when it is the reference) the control, and the discriminator
in the context `disc_context` says (components/foreign_context.py), and writes one score shard per
prepared shard, rows in the same order. Each row is scored by the discriminator and control of
another fold than its own (components/cross_fit.py: never by a model that trained on it); its
`scored_by` column names that fold. A run killed part-way resumes at the first shard it had
not finished (StageWriter keeps finished shards).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pyarrow as pa
import torch

from ..components.cross_fit import scoring_fold
from ..components.foreign_context import foreign_rows, move_targets
from ..components.score_tokens import score_rows
from ..device_policy import placement
from ..models import ModelRef, load_model, load_tokenizer
from ..progress import Progress
from ..run_log import logger
from ..schemas import SCORES
from ..shards import iter_shards, shard_files
from ..stage_outputs import Manifest, TrainedModels
from ..stage_protocol import Stage, StageRun, section
from ..store import StageRecord


def _work(run: StageRun, prepared: StageRecord, disc: StageRecord, base: ModelRef) -> dict[str, Any]:
    cfg = run.cfg
    prep_dir, disc_dir = run.input_dir(prepared), run.input_dir(disc)
    tokenizer = load_tokenizer(base.path, cfg.model.trust_remote_code)
    place = placement(cfg.device)
    trained = TrainedModels.of(Manifest.read(disc_dir))
    models = {"base": load_model(base.path, cfg.model.trust_remote_code)}
    for name in trained.models:
        models[name] = load_model(str(disc_dir / name), cfg.model.trust_remote_code)
    models = {name: m.to(device=place.device, dtype=place.torch_dtype).eval() for name, m in models.items()}
    sc, shared = cfg.score, trained.train_layers
    folds, fold_seed, kinds = trained.folds, trained.seed, trained.kinds  # kinds: disc [, control]
    foreign = sc.disc_context == "foreign"
    tokens = Manifest.read(prep_dir).counts["tokens"]
    # In a foreign context the discriminator reads its own rows: the progress counts the tokens twice.
    total = tokens * (2 if foreign else 1)
    progress = Progress("score", total, "tokens")
    writer = run.writer
    own_input, done, per_fold = 0, writer.done_shards(), [0] * folds
    if done:
        logger().info("score: resuming, %d of %d shards were finished by an interrupted run", len(done),
                      len(shard_files(prep_dir)))
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
            pair = {"base": models["base"], **{kind: models[trained.model_name(kind, fold)] for kind in kinds}}
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
            schema=SCORES,
        )
        writer.write_shard(index, out)
    seconds = progress.close()
    counts = {"tokens": tokens, "models": list(models), "scored_per_fold": per_fold,
              "disc_context": sc.disc_context, "disc_own_input": own_input,
              "tokens_per_s": round(total / max(seconds, 1e-9), 1), "threads": torch.get_num_threads(),
              "device": place.device, "dtype": place.dtype, "shards_resumed": len(done)}
    logger().info("score: %s in %.1fs", counts, seconds)
    return {"counts": counts, "placement": place.key()}


SCORE = Stage(
    name="score",
    version="3",
    config=section("score"),
    inputs=lambda cfg, prepared, disc, base: {"prepare": prepared.key, "discriminator": disc.key,
                                              "base_model": base.key},
    extra=lambda cfg, **_: {"placement": placement(cfg.device).key()},
    work=_work,
    resumable=True,
    description="Per-token losses of every target token under the base model and the tuned models of another fold.",
)
