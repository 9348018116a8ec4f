"""Running counts over the classed target tokens (the weights stage's summary), the scores of the
classes against known roles, and the `margin: auto` calibration over a run's scores."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..run_log import logger
from ..shards import iter_shards
from .token_weights import calibrated_margin


class ClassTally:
    """Counts, LD sums and token frequencies per class, and the confusion against known roles."""

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
        """The tally's part of WeightsSummary: samples, target_tokens, boilerplate_share, mean_ld,
        top_tokens and (with known roles) roles."""
        n_b, n_r = self.tokens[0], self.tokens[1]
        return {
            "samples": dict(self.samples),
            "target_tokens": {"boilerplate": n_b, "reasoning": n_r},
            "boilerplate_share": round(n_b / max(1, n_b + n_r), 4),
            "mean_ld": {"boilerplate": round(self.ld_sum[0] / max(1, n_b), 4),
                        "reasoning": round(self.ld_sum[1] / max(1, n_r), 4)},
            "top_tokens": {
                name: [{"token": tokenizer.decode([t]), "id": t, "count": n} for t, n in self.freq[c].most_common(top)]
                for c, name in ((0, "boilerplate"), (1, "reasoning"))
            },
            "roles": role_scores(self.confusion) if self.confusion else None,
        }


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


def calibrate(prep_dir: Path, score_dir: Path, reference: str) -> float:
    """`margin: auto`: `calibrated_margin` over the LD of every train target token (one extra
    read of the score shards and the prepared masks)."""
    def rows():
        for (_, prep), (_, score) in zip(iter_shards(prep_dir, ["split", "loss_mask"]), iter_shards(score_dir)):
            yield from zip(prep.column("split").to_pylist(), prep.column("loss_mask").to_pylist(),
                           score.to_pylist(), strict=True)

    margin, samples = train_margin(rows(), reference)
    logger().info("weights: margin auto -> %.4f nats (from %d train samples)", margin, samples)
    return margin


def train_margin(rows, reference: str) -> tuple[float, int]:
    """(`calibrated_margin` over the LD of the train target tokens, train samples read) of `rows`,
    (split, loss_mask, score row) triples; LD against the control or the base model's loss."""
    lds = []
    for split, mask, s in rows:
        if split != "train":
            continue
        sel = np.asarray(mask, dtype=bool)
        ref = s["loss_control"] if reference == "control" else s["loss_base"]
        lds.append(np.asarray(s["loss_disc"], dtype=np.float32)[sel] - np.asarray(ref, dtype=np.float32)[sel])
    return (calibrated_margin(np.concatenate(lds)) if lds else 0.0), len(lds)
