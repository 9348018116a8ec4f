"""weights: LD, token classes and the `weight` column: the weighted dataset of DESIGN.md.

One shard per prepared shard with exactly the contract's columns, plus `summary.json`: counts and
shares per class, mean LD per class, the most frequent tokens per class and, when the source knew
the token roles, the accuracy of the classes against them; and `report.html` (report_html.py). A run killed part-way resumes at the
first shard it had not finished.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from .. import __version__
from ..config import PipelineConfig
from ..kernels.token_weights import calibrated_margin, class_groups, sample_weights, token_classes
from ..models import BaseModel, load_tokenizer, portable_name, tokenizer_fingerprint
from ..preflight import PreflightTally, verdict
from ..report_html import write_report
from ..store import Store, StageWriter, stage_key
from .common import Progress, input_dir, iter_shards, logger, read_manifest, run_stage, shard_paths
from .prepare import SAMPLE_FIELDS

STAGE, VERSION = "weights", "3"

SCHEMA = pa.schema(
    [
        *SAMPLE_FIELDS,
        ("loss_base", pa.list_(pa.float32())),
        ("loss_disc", pa.list_(pa.float32())),
        ("loss_ref", pa.list_(pa.float32())),
        ("token_class", pa.list_(pa.int8())),
        ("weight", pa.list_(pa.float32())),
    ]
)


def weights_key(cfg: PipelineConfig, scored: dict[str, Any], prepared: dict[str, Any], disc: dict[str, Any]) -> str:
    inputs = {"score": scored["key"], "prepare": prepared["key"], "discriminator": disc["key"]}
    return stage_key(STAGE, VERSION, cfg.weights.model_dump(mode="json"), inputs)


class _Tally:
    """Running counts for summary.json."""

    def __init__(self) -> None:
        self.samples = Counter()
        self.tokens = Counter()
        self.ld_sum = Counter()
        self.freq = {0: Counter(), 1: Counter()}
        self.confusion = Counter()  # (truth, predicted) over target tokens with known roles

    def add(self, split: str, ids: np.ndarray, classes: np.ndarray, ld: np.ndarray, truth) -> None:
        self.samples[split] += 1
        for c in (0, 1):
            sel = classes == c
            self.tokens[c] += int(sel.sum())
            self.ld_sum[c] += float(ld[sel].sum())
            self.freq[c].update(ids[sel].tolist())
        if truth is not None:
            truth = np.asarray(truth)
            sel = truth >= 0
            self.confusion.update(zip(truth[sel].tolist(), classes[sel].tolist()))

    def summary(self, tokenizer, top: int) -> dict[str, Any]:
        n_b, n_r = self.tokens[0], self.tokens[1]
        out: dict[str, Any] = {
            "samples": dict(self.samples),
            "target_tokens": {"boilerplate": n_b, "reasoning": n_r},
            "boilerplate_share": round(n_b / max(1, n_b + n_r), 4),
            "mean_ld": {"boilerplate": round(self.ld_sum[0] / max(1, n_b), 4),
                        "reasoning": round(self.ld_sum[1] / max(1, n_r), 4)},
            "top_tokens": {
                name: [{"token": tokenizer.decode([t]), "id": t, "count": n} for t, n in self.freq[c].most_common(top)]
                for c, name in ((0, "boilerplate"), (1, "reasoning"))
            },
        }
        if self.confusion:
            out["roles"] = role_scores(self.confusion)
        return out


def role_scores(confusion: Counter) -> dict[str, float]:
    """Accuracy and reasoning-class precision/recall/F1 of the classes against known roles."""
    tp, fp = confusion[(1, 1)], confusion[(0, 1)]
    fn, tn = confusion[(1, 0)], confusion[(0, 0)]
    precision = tp / max(1, tp + fp)
    recall = tp / max(1, tp + fn)
    return {
        "tokens": tp + fp + fn + tn,
        "accuracy": round((tp + tn) / max(1, tp + fp + fn + tn), 4),
        "reasoning_precision": round(precision, 4),
        "reasoning_recall": round(recall, 4),
        "reasoning_f1": round(2 * precision * recall / max(1e-12, precision + recall), 4),
    }


def _run(cfg: PipelineConfig, scored: dict[str, Any], prepared: dict[str, Any], disc: dict[str, Any],
         base: BaseModel, writer: StageWriter):
    wc = cfg.weights
    store = Store(cfg.store)
    prep_dir, score_dir = input_dir(store, prepared), input_dir(store, scored)
    reference = read_manifest(input_dir(store, disc))["reference"]
    tokenizer = load_tokenizer(base.path, cfg.model.trust_remote_code)
    metadata = {
        "tokenweight.version": __version__,
        "tokenweight.method": wc.method,
        "tokenweight.params": json.dumps(wc.model_dump(mode="json"), sort_keys=True),
        "tokenweight.reference": reference,
        # Portable: the same data written to two stores is the same bytes, and a reader on another
        # machine gets names and hashes it can check, not a path inside the writer's store.
        "tokenweight.base_model": portable_name(base),
        "tokenweight.base_model_key": base.key,
        "tokenweight.tokenizer_sha256": tokenizer_fingerprint(base.path),
        "tokenweight.weights_key": writer.key,
        "tokenweight.discriminator_key": disc["key"],
    }
    tally, preflight = _Tally(), PreflightTally(wc.tau)
    if len(shard_paths(prep_dir)) != len(shard_paths(score_dir)):
        raise ValueError(f"{prep_dir} and {score_dir} have different shard counts")
    margin = calibrate(prep_dir, score_dir, reference) if wc.margin == "auto" else wc.margin
    done = writer.done_shards()
    progress = Progress("weights", read_manifest(prep_dir)["counts"]["accepted"], "samples")
    for index, ((prep_path, prep), (score_path, score)) in enumerate(zip(iter_shards(prep_dir), iter_shards(score_dir))):
        if prep.num_rows != score.num_rows:
            raise ValueError(f"{prep_path} has {prep.num_rows} rows but its scores {score_path} have "
                             f"{score.num_rows}: the score output does not belong to this prepare output")
        if index in done:  # finished by an interrupted run: only its counts are needed
            finished = pq.read_table(writer.dir / f"part-{index:05d}.parquet").to_pylist()
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
            weight = sample_weights(wc.method, loss_base, classes, mask, wc.tau)
            tally.add(p["split"], np.asarray(p["input_ids"]), classes, loss_disc - loss_ref, p["role_truth"])
            if p["split"] == "train":  # what the fine-tune will weigh
                preflight.add(classes, loss_base, loss_disc)
            rows.append({k: p[k] for k, _ in SAMPLE_FIELDS}
                        | {"loss_base": loss_base, "loss_disc": loss_disc, "loss_ref": loss_ref,
                           "token_class": classes, "weight": weight})
        writer.write_shard(index, pa.Table.from_pylist(rows, schema=SCHEMA), metadata)
        progress.update(prep.num_rows)
    progress.close()
    summary = {"method": wc.method, "reference": reference, "margin": margin, "margin_setting": wc.margin,
               "granularity": wc.granularity,
               **tally.summary(tokenizer, wc.top_tokens), "preflight": verdict(preflight.checks())}
    (writer.dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    report = write_report(shard_paths(writer.dir), summary, writer.dir / "report.html", wc.report_samples)
    logger().info("weights: %s", {k: summary[k] for k in ("samples", "target_tokens", "boilerplate_share")})
    inputs = {"score": scored["key"], "prepare": prepared["key"], "discriminator": disc["key"]}
    return writer.commit(counts={"samples": sum(tally.samples.values()), **summary["target_tokens"],
                                 "report_samples": report["samples"]},
                         config=wc.model_dump(mode="json"), inputs=inputs)


def calibrate(prep_dir, score_dir, reference: str) -> float:
    """`margin: auto`: `calibrated_margin` over the LD of every train target token (one extra
    read of the score shards and the prepared masks)."""
    lds = []
    for (_, prep), (_, score) in zip(iter_shards(prep_dir, ["split", "loss_mask"]), iter_shards(score_dir)):
        for split, mask, s in zip(prep.column("split").to_pylist(), prep.column("loss_mask").to_pylist(),
                                  score.to_pylist(), strict=True):
            if split != "train":
                continue
            sel = np.asarray(mask, dtype=bool)
            ref = s["loss_control"] if reference == "control" else s["loss_base"]
            lds.append(np.asarray(s["loss_disc"], dtype=np.float32)[sel] - np.asarray(ref, dtype=np.float32)[sel])
    margin = calibrated_margin(np.concatenate(lds)) if lds else 0.0
    logger().info("weights: margin auto -> %.4f nats (from %d train samples)", margin, len(lds))
    return margin


def run_weights(cfg: PipelineConfig, scored: dict[str, Any], prepared: dict[str, Any], disc: dict[str, Any],
                base: BaseModel) -> dict[str, Any]:
    key = weights_key(cfg, scored, prepared, disc)
    return run_stage(Store(cfg.store), STAGE, key, lambda w: _run(cfg, scored, prepared, disc, base, w),
                     resumable=True)


@task(name="weights", cache_key_fn=lambda ctx, p: weights_key(p["cfg"], p["scored"], p["prepared"], p["disc"]),
      persist_result=True)
def weights_task(cfg: PipelineConfig, scored: dict[str, Any], prepared: dict[str, Any], disc: dict[str, Any],
                 base: BaseModel) -> dict[str, Any]:
    """Token classes and per-token weights: the weighted dataset and its summary."""
    return run_weights(cfg, scored, prepared, disc, base)
