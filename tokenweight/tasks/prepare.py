"""prepare: source rows -> chat template -> tokens with offsets and assistant masks -> split shards.

Bad rows are set aside in `rejects.jsonl` (file, line, id, reason) and counted in the manifest;
more rejects than `max_reject_share` stops the run.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import pyarrow as pa

from ..components.chat_encode import EncodeError, encode_conversation
from ..config import FileSource, PipelineConfig
from ..models import ModelRef, load_tokenizer
from ..progress import Progress
from ..run_log import logger
from ..samples import Reject, Sample
from ..schemas import PREPARED
from ..sources.registry import PrepareError, read_sources, source_fingerprint
from ..stage_protocol import Stage, StageRun


def _fingerprint(cfg: PipelineConfig, **_: Any) -> dict[str, Any]:
    """The prepare key's `extra`: the content of the source (and of the eval source)."""
    extra = source_fingerprint(cfg.prepare.source)
    if cfg.prepare.eval_source is not None:
        extra = {"source": extra, "eval_source": source_fingerprint(cfg.prepare.eval_source)}
    return extra


def split_of(sample_id: str, seed: int, eval_share: float) -> str:
    """A stable split: a hash of (seed, id), so adding samples never moves existing ones."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()[:8], "big")
    return "eval" if h / 2**64 < eval_share else "train"


def _no_rows(pc) -> str:
    """What to tell a user whose source gave no rows at all: which file, and what it should hold."""
    files = [s.path for s in (pc.source, pc.eval_source) if isinstance(s, FileSource)]
    if files:
        return (f"{', '.join(files)}: the data file has no rows. Give a .jsonl file with one JSON object per line "
                "(`messages` in OpenAI style, or `prompt` and `completion`), or a .parquet file with those columns")
    return f"source {pc.source.kind}: no rows to read (check its settings, e.g. categories or limits)"


def _origin_of(sample: Sample) -> tuple[str, int]:
    file, _, line = sample.origin.rpartition(":")
    return (file, int(line)) if line.isdigit() else (sample.origin, 0)


def _work(run: StageRun, base: ModelRef) -> dict[str, Any]:
    cfg, pc, writer = run.cfg, run.cfg.prepare, run.writer
    tokenizer = load_tokenizer(base.path, cfg.model.trust_remote_code)
    rejects: list[Reject] = []
    rows: list[dict[str, Any]] = []  # the shard being filled
    seen: dict[str, str] = {}
    truncated, totals = Counter(), Counter()
    shards = 0
    progress = Progress("prepare", None, "samples")
    for item, fixed_split in read_sources(pc.source, pc.eval_source):
        progress.update(1)
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        file, line = _origin_of(item)
        if item.id in seen:
            rejects.append(Reject(file, line, item.id, f"duplicate id, first seen at {seen[item.id]}"))
            continue
        seen[item.id] = item.origin
        try:
            enc = encode_conversation(tokenizer, item.messages, item.reasoning_spans, max_tokens=None,
                                      unscored_spans=item.unscored_spans)
        except (EncodeError, ValueError, TypeError) as err:
            rejects.append(Reject(file, line, item.id, f"chat template: {err}"))
            continue
        n = len(enc.input_ids)
        if n > pc.max_tokens:
            if pc.truncation == "reject":
                rejects.append(Reject(file, line, item.id, f"over-long: {n} tokens > max_tokens {pc.max_tokens}"))
                continue
            enc = encode_conversation(tokenizer, item.messages, item.reasoning_spans, max_tokens=pc.max_tokens,
                                      unscored_spans=item.unscored_spans)
            if not any(enc.loss_mask):
                rejects.append(
                    Reject(file, line, item.id, f"over-long: {n} tokens, no assistant token within max_tokens {pc.max_tokens}")
                )
                continue
            truncated["samples"] += 1
            truncated["tokens"] += enc.truncated_tokens
        rows.append(
            {
                "id": item.id,
                "split": fixed_split or split_of(item.id, pc.split_seed, pc.eval_share),
                "text": enc.text,
                "input_ids": enc.input_ids,
                "offsets": [list(o) for o in enc.offsets],
                "loss_mask": enc.loss_mask,
                "role_truth": enc.role_truth,
                "messages": json.dumps(item.messages, ensure_ascii=False),
                "meta": json.dumps(item.meta, ensure_ascii=False, default=str),
            }
        )
        totals["accepted"] += 1
        totals[rows[-1]["split"]] += 1
        totals["tokens"] += len(enc.input_ids)
        totals["target_tokens"] += sum(enc.loss_mask)
        totals["roles_known"] += enc.role_truth is not None
        if len(rows) == pc.shard_rows:
            writer.write_shard(shards, pa.Table.from_pylist(rows, schema=PREPARED))
            shards, rows = shards + 1, []
    if rows or not shards:
        writer.write_shard(shards, pa.Table.from_pylist(rows, schema=PREPARED))
    seconds = progress.close()
    read = totals["accepted"] + len(rejects)
    if read == 0:
        raise PrepareError(_no_rows(pc))
    if len(rejects) / read > pc.max_reject_share:
        reasons = ", ".join(f"{r} ({n})" for r, n in Counter(r.reason.split(":")[0] for r in rejects).most_common(3))
        raise PrepareError(
            f"{len(rejects)} of {read} rows rejected, more than prepare.max_reject_share={pc.max_reject_share} "
            f"(most common: {reasons}); first: {rejects[0].file}:{rejects[0].line}: {rejects[0].reason}. "
            "Fix the data or raise prepare.max_reject_share."
        )
    with open(writer.dir / "rejects.jsonl", "w", encoding="utf-8") as f:
        for r in rejects:
            f.write(json.dumps({"file": r.file, "line": r.line, "id": r.id, "reason": r.reason}, ensure_ascii=False) + "\n")
    counts = {
        "rows_read": read,
        "accepted": totals["accepted"],
        "rejected": len(rejects),
        "reject_reasons": dict(Counter(r.reason.split(":")[0] for r in rejects)),
        "truncated_samples": truncated["samples"],
        "truncated_tokens": truncated["tokens"],
        **{k: totals[k] for k in ("train", "eval", "tokens", "target_tokens", "roles_known")},
    }
    logger().info("prepare: %s in %.1fs", counts, seconds)
    if rejects:
        logger().warning("prepare: %d rows set aside, see %s/rejects.jsonl", len(rejects), writer.uri)
    return {"counts": counts}


PREPARE = Stage(
    name="prepare",
    version="2",
    config=lambda cfg: cfg.prepare.key_settings(),
    inputs=lambda cfg, base: {"base_model": base.key},
    extra=_fingerprint,
    work=_work,
    description="Tokenize and mask the source, split it, write Parquet shards.",
)
