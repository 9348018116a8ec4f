"""eval: a model's answers on the eval split, checked, and its held-out loss per token class.

For each eval sample the prompt is the conversation up to its last assistant turn; the model
answers greedily (hf or vllm backend) and the answer goes to the checker of what the sample is
(evals/answer_check.py: BFCL's own AST checker, or GSM8K's final number). The held-out loss of
the reference answer is split by the weights stage's token classes (boilerplate vs reasoning),
the quantity the paper plots. Writes `predictions.parquet` (one row per sample, with what the
paired bootstrap of `compare` needs) and `metrics.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..components.generate import hf_generate, pick_backend, prompt_text, vllm_generate
from ..components.heldout_loss import heldout_losses
from ..device_policy import placement
from ..evals.answer_check import check_answer, summarize
from ..models import ModelRef, load_model, load_tokenizer
from ..progress import Progress
from ..run_log import logger
from ..schemas import PREDICTIONS
from ..shards import iter_shards
from ..stage_outputs import EvalMetrics
from ..stage_protocol import Stage, StageRun, section
from ..store import StageRecord, Store, verify_output


def finetuned_ref(store: Store, name: str, record: StageRecord) -> ModelRef:
    """The model a finished finetune output holds, under the name eval shows it by."""
    return ModelRef(str(verify_output(store, record.stage, record.key)[1] / "model"), record.key, name)


def eval_rows(prep_dir: Path, weights_dir: Path, limit: int | None) -> list[dict[str, Any]]:
    """The eval split (first `limit` rows) with the token classes the weights stage gave it."""
    classes = {}
    for _, table in iter_shards(weights_dir, ["id", "split", "token_class"]):
        for row in table.to_pylist():
            if row["split"] == "eval":
                classes[row["id"]] = row["token_class"]
    rows = []
    for _, table in iter_shards(prep_dir, ["id", "split", "input_ids", "loss_mask", "messages", "meta"]):
        for row in table.to_pylist():
            if row["split"] != "eval":
                continue
            if row["id"] not in classes:
                raise ValueError(f"eval sample {row['id']!r} has no token classes in {weights_dir}")
            rows.append({**row, "token_class": classes[row["id"]]})
            if limit is not None and len(rows) == limit:
                return rows
    if not rows:
        raise ValueError(f"{prep_dir}: the eval split is empty")
    return rows


def _work(run: StageRun, prepared: StageRecord, weighted: StageRecord, model: ModelRef) -> dict[str, Any]:
    ec, cfg = run.cfg.eval, run.cfg
    rows = eval_rows(run.input_dir(prepared), run.input_dir(weighted), ec.limit)
    backend = pick_backend(ec.backend)
    tokenizer = load_tokenizer(model.path, cfg.model.trust_remote_code)
    place = placement(cfg.device)
    net = load_model(model.path, cfg.model.trust_remote_code).to(place.device, dtype=place.torch_dtype)
    progress = Progress(f"eval[{model.name}] held-out loss", len(rows), "samples")
    losses = heldout_losses(net, rows, tokenizer.pad_token_id, ec.loss_batch_tokens, progress)
    loss_seconds = progress.close()

    prompts = [prompt_text(tokenizer, json.loads(r["messages"])) for r in rows]
    progress = Progress(f"eval[{model.name}] generate", len(prompts), "samples")
    generated = {"tokens": 0}

    def on_batch(samples: int, tokens: int) -> None:
        generated["tokens"] += tokens
        progress.update(samples, new_tokens=generated["tokens"])

    if backend == "vllm":
        del net
        answers, new_tokens = vllm_generate(model.path, prompts, ec.max_new_tokens, on_batch=on_batch)
    else:
        answers, new_tokens = hf_generate(net, tokenizer, prompts, ec.max_new_tokens, ec.batch_size, on_batch)
    gen_seconds = progress.close()

    out = []
    for row, answer, count, loss in zip(rows, answers, new_tokens, losses, strict=True):
        task_name, correct, error, gold = check_answer(answer, json.loads(row["meta"]))
        out.append({"id": row["id"], "task": task_name, "prediction": answer, "correct": correct, "error": error,
                    "gold": gold, "new_tokens": count, "loss_boilerplate_sum": loss[0], "boilerplate_tokens": int(loss[1]),
                    "loss_reasoning_sum": loss[2], "reasoning_tokens": int(loss[3])})
    table = pa.Table.from_pylist(out, schema=PREDICTIONS)
    pq.write_table(table, run.dir / "predictions.parquet", compression="zstd")
    metrics = EvalMetrics(
        model={"name": model.name, "key": model.key, "path": model.path},
        backend=backend,
        placement=place.key(),
        **summarize(table),
        seconds={"heldout_loss": round(loss_seconds, 1), "generate": round(gen_seconds, 1)},
        generated_tokens_per_s=round(sum(new_tokens) / max(gen_seconds, 1e-9), 1),
    )
    metrics.write(run.dir)
    logger().info("eval[%s]: accuracy %s on %d checked, held-out loss %s", model.name, metrics.accuracy,
                  metrics.checked, metrics.heldout_loss)
    return {"metrics": {"samples": metrics.samples, "checked": metrics.checked, "accuracy": metrics.accuracy,
                        "heldout_loss": metrics.heldout_loss}}


EVAL = Stage(
    name="eval",
    version="2",
    config=section("eval"),
    inputs=lambda cfg, prepared, weighted, model: {"prepare": prepared.key, "weights": weighted.key,
                                                   "model": model.key},
    extra=lambda cfg, **_: {"backend": pick_backend(cfg.eval.backend), "placement": placement(cfg.device).key()},
    work=_work,
    run_name="eval[{params[model].name}]",
    description="Answer the eval split with a model, check the answers, measure held-out loss per class.",
)
