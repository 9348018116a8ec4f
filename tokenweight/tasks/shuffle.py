"""shuffle: a seeded sample of each part of the train split, its assistant sides deranged within it.

Writes `shuffled.parquet` (each input with another sample's output, re-rendered through the chat
template so its tokens are what the model would see) and `matched.parquet` (the same samples with
their true pairing, for the matched control), each row with its `fold`. With `folds` > 1 the
train split is cut into parts (components/cross_fit.py) and each part gets its own sample, deranged
within the part, for its own discriminator. The multi-turn rule is in components/derangement.py.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..components.chat_encode import encode_conversation
from ..components.cross_fit import part_of
from ..components.derangement import shuffled_pairing, swap_assistant_turns
from ..models import ModelRef, load_tokenizer
from ..run_log import logger
from ..schemas import SHUFFLED
from ..shards import iter_shards
from ..stage_protocol import Stage, StageRun, section
from ..store import StageRecord


def sample_size(n_train: int, share: float, floor: int) -> int:
    return min(n_train, max(floor, math.ceil(share * n_train)))


def _work(run: StageRun, prepared: StageRecord, base: ModelRef) -> dict[str, Any]:
    cfg, sc = run.cfg, run.cfg.shuffle
    train = []
    for _, table in iter_shards(run.input_dir(prepared), ["id", "split", "text", "input_ids", "loss_mask", "messages"]):
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
    pq.write_table(pa.Table.from_pylist(shuffled, schema=SHUFFLED), run.dir / "shuffled.parquet")
    pq.write_table(pa.Table.from_pylist(matched, schema=SHUFFLED), run.dir / "matched.parquet")
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
    return {"counts": counts}


SHUFFLE = Stage(
    name="shuffle",
    version="2",
    config=section("shuffle"),
    inputs=lambda cfg, prepared, base: {"prepare": prepared.key, "base_model": base.key},
    work=_work,
    description="Sample the train split and pair every input with another sample's output.",
)
