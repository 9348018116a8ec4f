"""prepare: source rows -> chat template -> tokens with offsets and assistant masks -> split shards.

Bad rows are set aside in `rejects.jsonl` (file, line, id, reason) and counted in the manifest;
more rejects than `max_reject_share` stops the run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import task

from ..config import (
    BfclRolesSource,
    BfclSource,
    FileSource,
    Gsm8kSource,
    PipelineConfig,
    ReasoningGymSource,
    RolesSource,
    SyntheticSource,
)
from ..kernels.chat_encode import EncodeError, encode_conversation
from ..models import BaseModel, load_tokenizer
from ..samples import Reject, Sample
from ..store import Store, StageWriter, sha256_file, stage_key
from .common import Progress, logger, run_stage

STAGE, VERSION = "prepare", "2"

# The sample's columns, carried unchanged into the weighted dataset.
SAMPLE_FIELDS = [
    ("id", pa.string()),
    ("split", pa.string()),
    ("text", pa.string()),
    ("input_ids", pa.list_(pa.int32())),
    ("offsets", pa.list_(pa.list_(pa.int32()))),
    ("loss_mask", pa.list_(pa.int8())),
]
SCHEMA = pa.schema(
    [
        *SAMPLE_FIELDS,
        ("role_truth", pa.list_(pa.int8())),  # null unless the source knows the token roles
        ("messages", pa.string()),  # JSON, for the shuffle stage to re-pair
        ("meta", pa.string()),  # JSON
    ]
)


class PrepareError(ValueError):
    """The source cannot be used (too many rejects, a whole-file problem)."""


def source_fingerprint(source) -> dict[str, Any]:
    """What identifies the source's content, so that an edited file re-runs the stage."""
    if isinstance(source, FileSource):
        path = Path(source.path)
        if not path.is_file():
            raise PrepareError(f"{path}: data file not found")
        return {"sha256": sha256_file(path)}
    if isinstance(source, BfclSource):
        from ..sources.bfcl import category_files

        return {
            "bfcl_eval": importlib.metadata.version("bfcl-eval"),
            "files": {str(p.name): sha256_file(p) for c in source.categories for p in category_files(c)},
        }
    if isinstance(source, RolesSource):
        from ..sources import role_suite, synthetic, tools_text

        # A generated source's content is its generator: its version and the code it runs.
        return {"role_suite": role_suite.VERSION, "code": _code_hashes(role_suite, synthetic, tools_text)}
    if isinstance(source, BfclRolesSource):
        from ..sources import bfcl, bfcl_roles, tools_text

        return {
            "bfcl_eval": importlib.metadata.version("bfcl-eval"),
            "files": {str(p.name): sha256_file(p) for c in source.categories for p in bfcl.category_files(c)},
            "bfcl_roles": bfcl_roles.VERSION,
            "code": _code_hashes(bfcl, bfcl_roles, tools_text),
        }
    if isinstance(source, Gsm8kSource):
        from ..sources.gsm import gsm8k_test_file

        return {"sha256": sha256_file(gsm8k_test_file())}
    if isinstance(source, ReasoningGymSource):
        from ..sources.gsm import gsm_symbolic_files, reasoning_gym_version

        return {"reasoning_gym": reasoning_gym_version(),
                "files": {p.name: sha256_file(p) for p in gsm_symbolic_files()}}
    return {}


def _code_hashes(*modules) -> dict[str, str]:
    """sha256 of each module's source text (line endings normalised, so that a checkout with CRLF
    gives the same key), by module name."""
    return {module.__name__.rsplit(".", 1)[-1]: hashlib.sha256(
        Path(module.__file__).read_bytes().replace(b"\r\n", b"\n")).hexdigest() for module in modules}


def prepare_key(cfg: PipelineConfig, base: BaseModel) -> str:
    extra = source_fingerprint(cfg.prepare.source)
    if cfg.prepare.eval_source is not None:
        extra = {"source": extra, "eval_source": source_fingerprint(cfg.prepare.eval_source)}
    return stage_key(STAGE, VERSION, cfg.prepare.model_dump(mode="json"), {"base_model": base.key}, extra)


def read_source(source) -> Any:
    if isinstance(source, FileSource):
        from ..sources.chat_files import read_chat_file

        return read_chat_file(source.path)
    if isinstance(source, BfclSource):
        from ..sources.bfcl import read_bfcl

        return read_bfcl(source.categories, source.limit_per_category)
    if isinstance(source, SyntheticSource):
        from ..sources.synthetic import generate_synthetic

        return generate_synthetic(source.n, source.seed)
    if isinstance(source, RolesSource):
        from ..sources.role_suite import generate_role_suite

        return generate_role_suite(source.n, source.seed, source.format)
    if isinstance(source, BfclRolesSource):
        from ..sources.bfcl_roles import read_bfcl_roles

        return read_bfcl_roles(source.categories, source.limit_per_category)
    if isinstance(source, Gsm8kSource):
        from ..sources.gsm import read_gsm8k_test

        return read_gsm8k_test(source.limit)
    if isinstance(source, ReasoningGymSource):
        from ..sources.gsm import generate_gsm_problems

        return generate_gsm_problems(source.n, source.seed)
    raise TypeError(f"unknown source {source!r}")


def read_sources(pc) -> Iterator[tuple[Sample | Reject, str | None]]:
    """(item, fixed split) pairs: with an eval_source, `source` is all train and it all eval."""
    if pc.eval_source is None:
        for item in read_source(pc.source):
            yield item, None
        return
    for source, split in ((pc.source, "train"), (pc.eval_source, "eval")):
        for item in read_source(source):
            yield item, split


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


def _run(cfg: PipelineConfig, base: BaseModel, writer: StageWriter):
    pc = cfg.prepare
    tokenizer = load_tokenizer(base.path, cfg.model.trust_remote_code)
    rejects: list[Reject] = []
    rows: list[dict[str, Any]] = []  # the shard being filled
    seen: dict[str, str] = {}
    truncated, totals = Counter(), Counter()
    shards = 0
    progress = Progress("prepare", None, "samples")
    for item, fixed_split in read_sources(pc):
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
            writer.write_shard(shards, pa.Table.from_pylist(rows, schema=SCHEMA))
            shards, rows = shards + 1, []
    if rows or not shards:
        writer.write_shard(shards, pa.Table.from_pylist(rows, schema=SCHEMA))
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
    return writer.commit(counts=counts, config=cfg.prepare.model_dump(mode="json"), inputs={"base_model": base.key})


def run_prepare(cfg: PipelineConfig, base: BaseModel) -> dict[str, Any]:
    store = Store(cfg.store)
    return run_stage(store, STAGE, prepare_key(cfg, base), lambda w: _run(cfg, base, w))


@task(name="prepare", cache_key_fn=lambda ctx, p: prepare_key(p["cfg"], p["base"]), persist_result=True)
def prepare_task(cfg: PipelineConfig, base: BaseModel) -> dict[str, Any]:
    """Tokenize and mask the source, split it, write Parquet shards."""
    return run_prepare(cfg, base)
