"""weights: LD, token classes and the `weight` column: the weighted dataset of DESIGN.md.

One shard per prepared shard with exactly the contract's columns (schemas.WEIGHTED), plus
`summary.json` (stage_outputs.WeightsSummary): counts and shares per class, mean LD per class, the
most frequent tokens per class, the pre-flight verdict and, when the source knew the token roles,
the accuracy of the classes against them; and `report.html` (report_html.py). A run killed
part-way resumes at the first shard it had not finished.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..components.class_tally import ClassTally, calibrate
from ..components.token_weights import class_groups, sample_weights, token_classes
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


def _work(run: StageRun, scored: StageRecord, prepared: StageRecord, disc: StageRecord,
          base: ModelRef) -> dict[str, Any]:
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
    }
    tally, preflight = ClassTally(), PreflightTally(wc.tau)
    if len(shard_files(prep_dir)) != len(shard_files(score_dir)):
        raise ValueError(f"{prep_dir} and {score_dir} have different shard counts")
    margin = calibrate(prep_dir, score_dir, reference) if wc.margin == "auto" else wc.margin
    done = run.writer.done_shards()
    progress = Progress("weights", Manifest.read(prep_dir).counts["accepted"], "samples")
    for index, ((prep_path, prep), (score_path, score)) in enumerate(zip(iter_shards(prep_dir), iter_shards(score_dir))):
        if prep.num_rows != score.num_rows:
            raise ValueError(f"{prep_path} has {prep.num_rows} rows but its scores {score_path} have "
                             f"{score.num_rows}: the score output does not belong to this prepare output")
        if index in done:  # finished by an interrupted run: only its counts are needed
            finished = pq.read_table(run.dir / f"part-{index:05d}.parquet").to_pylist()
            for p, w in zip(prep.to_pylist(), finished, strict=True):
                ld = np.asarray(w["loss_disc"], dtype=np.float32) - np.asarray(w["loss_ref"], dtype=np.float32)
                tally.add(p["split"], np.asarray(w["input_ids"]), np.asarray(w["token_class"]), ld, p["role_truth"])
                if p["split"] == "train":
                    preflight.add(np.asarray(w["token_class"]), np.asarray(w["loss_base"], dtype=np.float32),
                                  np.asarray(w["loss_disc"], dtype=np.float32))
            progress.update(prep.num_rows)
            continue
        rows = []
        for p, s in zip(prep.to_pylist(), score.to_pylist(), strict=True):
            if p["id"] != s["id"]:
                raise ValueError(f"shard {index}: prepared row {p['id']!r} scored as {s['id']!r}")
            mask = np.asarray(p["loss_mask"], dtype=np.int8)
            loss_base = np.asarray(s["loss_base"], dtype=np.float32)
            loss_disc = np.asarray(s["loss_disc"], dtype=np.float32)
            loss_ref = np.asarray(s["loss_control"], dtype=np.float32) if reference == "control" else loss_base
            groups = class_groups(p["text"], p["offsets"], mask, wc.granularity)
            classes = token_classes(loss_disc, loss_ref, mask, margin, groups)
            weight = sample_weights(wc.method, loss_base, classes, mask, wc.tau, loss_ref, wc.rho1_top_share,
                                    wc.prefix_tokens)
            tally.add(p["split"], np.asarray(p["input_ids"]), classes, loss_disc - loss_ref, p["role_truth"])
            if p["split"] == "train":  # what the fine-tune will weigh
                preflight.add(classes, loss_base, loss_disc)
            rows.append({k: p[k] for k, _ in SAMPLE_FIELDS}
                        | {"loss_base": loss_base, "loss_disc": loss_disc, "loss_ref": loss_ref,
                           "token_class": classes, "weight": weight})
        run.writer.write_shard(index, pa.Table.from_pylist(rows, schema=WEIGHTED), metadata)
        progress.update(prep.num_rows)
    progress.close()
    summary = WeightsSummary(method=wc.method, reference=reference, margin=margin, margin_setting=wc.margin,
                             granularity=wc.granularity, **tally.summary(tokenizer, wc.top_tokens),
                             preflight=verdict(preflight.checks()))
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
    inputs=lambda cfg, scored, prepared, disc, base: {"score": scored.key, "prepare": prepared.key,
                                                      "discriminator": disc.key},
    work=_work,
    resumable=True,
    description="Token classes and per-token weights: the weighted dataset and its summary.",
)
