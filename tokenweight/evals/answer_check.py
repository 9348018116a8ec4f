"""Which checker an eval sample's answer goes to, by what the sample is (its meta), and the
accuracy and held-out losses of a predictions table."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from ..shards import iter_shards


def check_answer(answer: str, meta: dict[str, Any]) -> tuple[str, bool | None, str | None, str | None]:
    """(task, correct, error, gold) of one answer: a BFCL question (meta has `ground_truth` and
    `functions`) read back in its call format (`call_format`, python by default) and checked by
    BFCL's own AST checker, a GSM8K-style problem (meta has `answer`) by exact numeric match,
    anything else unchecked."""
    if "ground_truth" in meta and "functions" in meta:
        from .bfcl_match import match_call

        result = match_call(answer, meta["functions"], meta["ground_truth"], meta["category"],
                            meta.get("call_format", "python"))
        return f"bfcl:{meta['category']}", result.valid, result.error, json.dumps(meta["ground_truth"])
    if "answer" in meta:
        from .gsm_answer import answers_match

        correct = answers_match(answer, str(meta["answer"]))
        return "gsm8k", correct, None if correct else "wrong final answer", str(meta["answer"])
    return "none", None, None, None


def summarize(table: pa.Table) -> dict[str, Any]:
    """Accuracy overall and per task, held-out loss per class, from the predictions table."""
    rows = table.to_pylist()
    checked = [r for r in rows if r["correct"] is not None]
    by_task = defaultdict(list)
    for r in checked:
        by_task[r["task"]].append(r["correct"])
    sums = {c: sum(r[f"loss_{c}_sum"] for r in rows) for c in ("boilerplate", "reasoning")}
    counts = {c: sum(r[f"{c}_tokens"] for r in rows) for c in ("boilerplate", "reasoning")}
    return {
        "samples": len(rows),
        "checked": len(checked),
        "accuracy": round(sum(r["correct"] for r in checked) / len(checked), 4) if checked else None,
        "accuracy_by_task": {t: {"n": len(v), "accuracy": round(sum(v) / len(v), 4)} for t, v in sorted(by_task.items())},
        "heldout_loss": {
            "boilerplate": round(sums["boilerplate"] / counts["boilerplate"], 4) if counts["boilerplate"] else None,
            "reasoning": round(sums["reasoning"] / counts["reasoning"], 4) if counts["reasoning"] else None,
            "all": round(sum(sums.values()) / max(1, sum(counts.values())), 4),
        },
        "heldout_tokens": counts,
    }


def base_heldout_loss(weights_dir, ids: set[str]) -> dict[str, float | None]:
    """The base model's held-out loss per token class over the eval samples `ids`, from the score
    the weights shards already hold (`loss_base`, `token_class`): the "before" of a fine-tune's
    held-out loss, at no extra model run. Same tokens, same classes as the eval stage's."""
    sums, counts = np.zeros(2), np.zeros(2)
    for _, table in iter_shards(weights_dir, ["id", "split", "token_class", "loss_base"]):
        for row in table.to_pylist():
            if row["split"] != "eval" or row["id"] not in ids or row["loss_base"] is None:
                continue
            classes, loss = np.asarray(row["token_class"]), np.asarray(row["loss_base"], np.float64)
            for c in (0, 1):
                sums[c] += loss[classes == c].sum()
                counts[c] += (classes == c).sum()
    return {name: round(float(sums[c] / counts[c]), 4) if counts[c] else None
            for c, name in enumerate(("boilerplate", "reasoning"))}
