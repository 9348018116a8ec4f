"""weights: LD, token classes and the `weight` column: the weighted dataset of DESIGN.md.

One shard per prepared shard with exactly the contract's columns (schemas.WEIGHTED), plus
`summary.json` (stage_outputs.WeightsSummary): counts and shares per class, mean LD per class, the
most frequent tokens per class, the pre-flight verdict and, when the source knew the token roles,
the accuracy of the classes against them; and `report.html` (report_html.py). A run killed
part-way resumes at the first shard it had not finished (the finished ones are only re-counted).
For `weights.method: critical` it also reads the critical stage: a train sample the base model
answered right becomes that answer, weighted on its critical tokens; the rest get weight 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from .. import __version__
from ..components.class_tally import ClassTally, calibrate
from ..components.token_weights import class_groups, critical_weights, sample_weights, token_classes
from ..models import ModelRef, load_tokenizer, portable_name, tokenizer_fingerprint
from ..preflight import PreflightTally, verdict
from ..progress import Progress
from ..report_html import write_report
from ..run_log import logger
from ..schemas import SAMPLE_FIELDS, WEIGHTED
from ..shards import iter_shards, shard_files
from ..stage_outputs import Manifest, TrainedModels, WeightsSummary
from ..stage_protocol import Stage, StageRun
from ..store import StageRecord


def _critical_shards(run: StageRun, critical: StageRecord | None, shards: int) -> Iterator[list[dict]] | None:
    """The critical stage's rows shard by shard, for `weights.method: critical`; None otherwise."""
    if run.cfg.weights.method != "critical":
        return None
    if critical is None:
        raise ValueError("weights.method critical needs the critical stage's output")
    directory = run.input_dir(critical)
    if len(shard_files(directory)) != shards:
        raise ValueError(f"{directory} has {len(shard_files(directory))} shards, the prepared data {shards}")
    return (table.to_pylist() for _, table in iter_shards(directory))


def _answer_row(p: dict[str, Any], c: dict[str, Any]) -> dict[str, Any]:
    """A train sample the base model answered right: its own answer, weight on its critical tokens.
    `token_class` carries the critical flags; no SHAD loss exists for a text SHAD never scored."""
    return {"id": p["id"], "split": p["split"], **{k: c[k] for k in ("text", "input_ids", "offsets", "loss_mask")},
            "loss_base": c["loss_base"], "loss_disc": None, "loss_ref": None, "token_class": c["critical"],
            "weight": critical_weights(np.asarray(c["critical"]))}


def _critical_summary(run: StageRun, critical: StageRecord) -> dict[str, Any]:
    """What summary.json says of the critical answers the weights stand on."""
    counts = Manifest.read(run.input_dir(critical)).counts
    keep = ("status_accepted", "status_wrong", "status_unchecked", "status_unencodable", "answer_tokens",
            "critical_tokens", "critical_share", "seconds_per_accepted_answer")
    return {k.removeprefix("status_"): counts.get(k, 0) for k in keep}


def _work(run: StageRun, scored: StageRecord, prepared: StageRecord, disc: StageRecord,
          base: ModelRef, critical: StageRecord | None = None) -> dict[str, Any]:
    wc = run.cfg.weights
    prep_dir, score_dir = run.input_dir(prepared), run.input_dir(scored)
    reference = TrainedModels.of(Manifest.read(run.input_dir(disc))).reference
    if wc.method == "rho1" and reference != "control":
        raise ValueError("weights.method rho1 ranks tokens by the base model's loss minus a tuned reference's: "
                         "it needs discriminator.reference: control (this run's reference is the base model)")
    tokenizer = load_tokenizer(base.path, run.cfg.model.trust_remote_code)
    metadata = {
        "tokenweight.version": __version__,
        "tokenweight.method": wc.method,
        "tokenweight.params": json.dumps(wc.key_settings(), sort_keys=True),
        "tokenweight.reference": reference,
        # Portable: the same data written to two stores is the same bytes, and a reader on another
        # machine gets names and hashes it can check, not a path inside the writer's store.
        "tokenweight.base_model": portable_name(base),
        "tokenweight.base_model_key": base.key,
        "tokenweight.tokenizer_sha256": tokenizer_fingerprint(base.path),
        "tokenweight.weights_key": run.key,
        "tokenweight.discriminator_key": disc.key,
        **({"tokenweight.critical_key": critical.key} if wc.method == "critical" and critical else {}),
    }
    tally, preflight = ClassTally(), PreflightTally(wc.tau)
    if len(shard_files(prep_dir)) != len(shard_files(score_dir)):
        raise ValueError(f"{prep_dir} and {score_dir} have different shard counts")
    margin = calibrate(prep_dir, score_dir, reference) if wc.margin == "auto" else wc.margin
    done = run.writer.done_shards()
    if done:
        logger().info("weights: resuming, %d of %d shards were finished by an interrupted run", len(done),
                      len(shard_files(prep_dir)))
    critical_shards = _critical_shards(run, critical, len(shard_files(prep_dir)))
    progress = Progress("weights", Manifest.read(prep_dir).counts["accepted"], "samples")
    for index, ((prep_path, prep), (score_path, score)) in enumerate(zip(iter_shards(prep_dir), iter_shards(score_dir))):
        if prep.num_rows != score.num_rows:
            raise ValueError(f"{prep_path} has {prep.num_rows} rows but its scores {score_path} have "
                             f"{score.num_rows}: the score output does not belong to this prepare output")
        answers = next(critical_shards) if critical_shards is not None else [None] * prep.num_rows
        rows = []
        for p, s, c in zip(prep.to_pylist(), score.to_pylist(), answers, strict=True):
            if p["id"] != s["id"]:
                raise ValueError(f"shard {index}: prepared row {p['id']!r} scored as {s['id']!r}")
            if c is not None and c["id"] != p["id"]:
                raise ValueError(f"shard {index}: prepared row {p['id']!r} has the critical stage's row {c['id']!r}")
            mask = np.asarray(p["loss_mask"], dtype=np.int8)
            loss_base = np.asarray(s["loss_base"], dtype=np.float32)
            loss_disc = np.asarray(s["loss_disc"], dtype=np.float32)
            loss_ref = np.asarray(s["loss_control"], dtype=np.float32) if reference == "control" else loss_base
            groups = class_groups(p["text"], p["offsets"], mask, wc.granularity)
            classes = token_classes(loss_disc, loss_ref, mask, margin, groups, wc.min_gap)
            # The summary's classes, roles and pre-flight are SHAD's on the prepared samples, whatever the method.
            tally.add(p["split"], np.asarray(p["input_ids"]), classes, loss_disc - loss_ref, p["role_truth"])
            if p["split"] == "train":  # what the fine-tune will weigh
                preflight.add(classes, loss_base, loss_disc)
            if c is not None and c["status"] == "accepted":
                rows.append(_answer_row(p, c))
                continue
            if wc.method == "critical":  # no accepted answer of its own: nothing to learn from it under CFT
                weight = np.zeros(len(mask), dtype=np.float32)
            else:
                weight = sample_weights(wc.method, loss_base, classes, mask, wc.tau, loss_ref, wc.rho1_top_share,
                                        wc.prefix_tokens)
            rows.append({k: p[k] for k, _ in SAMPLE_FIELDS}
                        | {"loss_base": loss_base, "loss_disc": loss_disc, "loss_ref": loss_ref,
                           "token_class": classes, "weight": weight})
        if index not in done:  # a shard an interrupted run finished is only re-counted
            run.writer.write_shard(index, pa.Table.from_pylist(rows, schema=WEIGHTED), metadata)
        progress.update(prep.num_rows)
    progress.close()
    summary = WeightsSummary(method=wc.method, reference=reference, margin=margin, margin_setting=wc.margin,
                             min_gap=wc.min_gap,
                             granularity=wc.granularity, **tally.summary(tokenizer, wc.top_tokens),
                             preflight=verdict(preflight.checks()),
                             critical=_critical_summary(run, critical) if wc.method == "critical" else None)
    summary.write(run.dir)
    report = write_report(shard_files(run.dir), summary, run.dir / "report.html", wc.report_samples)
    logger().info("weights: %s", {"samples": summary.samples, "target_tokens": summary.target_tokens,
                                  "boilerplate_share": summary.boilerplate_share})
    return {"counts": {"samples": sum(tally.samples.values()), **summary.target_tokens,
                       "report_samples": report["samples"]}}


WEIGHTS = Stage(
    name="weights",
    version="3",
    config=lambda cfg: cfg.weights.key_settings(),
    inputs=lambda cfg, scored, prepared, disc, base, critical=None: {
        "score": scored.key, "prepare": prepared.key, "discriminator": disc.key,
        **({"critical": critical.key} if cfg.weights.method == "critical" else {})},
    work=_work,
    resumable=True,
    description="Token classes and per-token weights: the weighted dataset and its summary.",
)
