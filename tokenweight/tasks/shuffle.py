"""shuffle: a seeded sample of each part of the train split, its assistant sides deranged within it.

Writes `shuffled.parquet` (each input with another sample's output, re-rendered through the chat
template so its tokens are what the model would see) and `matched.parquet` (the same samples with
their true pairing, for the matched control), each row with its `fold`. With `folds` > 1 the
train split is cut into parts (kernels/cross_fit.py) and each part gets its own sample, deranged
within the part, for its own discriminator. The multi-turn rule is in kernels/derangement.py.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from ..config import PipelineConfig
from ..kernels.chat_encode import encode_conversation
from ..kernels.cross_fit import part_of
from ..kernels.derangement import shuffled_pairing, swap_assistant_turns
from ..models import BaseModel, load_tokenizer
from ..store import Store, StageWriter, stage_key
from .common import input_dir, iter_shards, logger, run_stage

STAGE, VERSION = "shuffle", "2"

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("output_from", pa.string()),  # id of the sample whose assistant turns this row carries
        ("text", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.int8())),
        ("fold", pa.int8()),  # the part of the train split the sample (and its donor) come from
    ]
)


def shuffle_key(cfg: PipelineConfig, prepared: dict[str, Any], base: BaseModel) -> str:
    return stage_key(STAGE, VERSION, cfg.shuffle.model_dump(mode="json"), {"prepare": prepared["key"], "base_model": base.key})


def sample_size(n_train: int, share: float, floor: int) -> int:
    return min(n_train, max(floor, math.ceil(share * n_train)))


def _run(cfg: PipelineConfig, prepared: dict[str, Any], base: BaseModel, writer: StageWriter):
    sc = cfg.shuffle
    store = Store(cfg.store)
    train = []
    for _, table in iter_shards(input_dir(store, prepared), ["id", "split", "text", "input_ids", "loss_mask", "messages"]):
        train.extend(r for r in table.to_pylist() if r["split"] == "train")
    if len(train) < 2:
        raise ValueError(f"shuffle needs at least 2 train samples, the prepare output has {len(train)}")
    rng = random.Random(sc.seed)
    parts: list[list[dict[str, Any]]] = [[] for _ in range(sc.folds)]
    for row in train:
        parts[part_of(row["id"], sc.seed, sc.folds)].append(row)
    tokenizer = load_tokenizer(base.path, cfg.model.trust_remote_code)
    shuffled, matched, sampled, left_out = [], [], 0, 0
    for fold, part in enumerate(parts):
        if len(part) < 2:
            raise ValueError(f"shuffle: part {fold} of {sc.folds} has {len(part)} train samples; use fewer "
                             "shuffle.folds or more data")
        chosen = sorted(rng.sample(range(len(part)), sample_size(len(part), sc.share, sc.floor)))
        sample = [part[i] for i in chosen]
        messages = [json.loads(r["messages"]) for r in sample]
        turns = [sum(m["role"] == "assistant" for m in msgs) for msgs in messages]
        pairing, unpaired = shuffled_pairing(turns, rng)
        sampled, left_out = sampled + len(sample), left_out + len(unpaired)
        paired = 0
        for i, donor in sorted(pairing.items()):
            enc = encode_conversation(tokenizer, swap_assistant_turns(messages[i], messages[donor]),
                                      max_tokens=cfg.prepare.max_tokens)
            if not any(enc.loss_mask):
                left_out += 1  # the donor's answer fell past max_tokens after this prompt
                continue
            shuffled.append({"id": sample[i]["id"], "output_from": sample[donor]["id"], "text": enc.text,
                             "input_ids": enc.input_ids, "loss_mask": enc.loss_mask, "fold": fold})
            matched.append({"id": sample[i]["id"], "output_from": sample[i]["id"], "text": sample[i]["text"],
                            "input_ids": sample[i]["input_ids"], "loss_mask": sample[i]["loss_mask"], "fold": fold})
            paired += 1
        if paired < 2:
            raise ValueError(f"only {paired} of the {len(part)} train samples of part {fold} of {sc.folds} could be "
                             "paired (a sample is paired only with another of the same turn structure in its part): "
                             "raise shuffle.floor, use fewer shuffle.folds for a data set this small, or check the data")
    pq.write_table(pa.Table.from_pylist(shuffled, schema=SCHEMA), writer.dir / "shuffled.parquet")
    pq.write_table(pa.Table.from_pylist(matched, schema=SCHEMA), writer.dir / "matched.parquet")
    counts = {
        "train_samples": len(train),
        "folds": sc.folds,
        "part_sizes": [len(p) for p in parts],
        "sampled": sampled,
        "paired": len(shuffled),
        "left_out": left_out,
        "target_tokens": sum(sum(r["loss_mask"]) for r in shuffled),
    }
    logger().info("shuffle: %s", counts)
    return writer.commit(counts=counts, config=sc.model_dump(mode="json"),
                         inputs={"prepare": prepared["key"], "base_model": base.key})


def run_shuffle(cfg: PipelineConfig, prepared: dict[str, Any], base: BaseModel) -> dict[str, Any]:
    return run_stage(Store(cfg.store), STAGE, shuffle_key(cfg, prepared, base), lambda w: _run(cfg, prepared, base, w))


@task(name="shuffle", cache_key_fn=lambda ctx, p: shuffle_key(p["cfg"], p["prepared"], p["base"]), persist_result=True)
def shuffle_task(cfg: PipelineConfig, prepared: dict[str, Any], base: BaseModel) -> dict[str, Any]:
    """Sample the train split and pair every input with another sample's output."""
    return run_shuffle(cfg, prepared, base)
