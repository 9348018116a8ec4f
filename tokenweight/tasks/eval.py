"""eval: a model's answers on the eval split, checked, and its held-out loss per token class.

For each eval sample the prompt is the conversation up to its last assistant turn; the model
answers greedily (hf or vllm backend) and the answer is checked by what the sample is: a BFCL
question (meta has `ground_truth` and `functions`) through BFCL's own AST checker, a GSM8K-style
problem (meta has `answer`) by exact numeric match. The held-out loss of the reference answer is
split by the weights stage's token classes (boilerplate vs reasoning), the quantity the paper
plots. Writes `predictions.parquet` (one row per sample, with what the paired bootstrap of
`compare` needs) and `metrics.json`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from prefect import task

from ..config import PipelineConfig
from ..device_policy import placement
from ..kernels.batching import length_batches, pad_batch
from ..kernels.generate import hf_generate, pick_backend, vllm_generate
from ..kernels.token_loss import target_token_losses
from ..models import load_model, load_tokenizer
from ..store import Store, StageWriter, stage_key
from .common import Progress, input_dir, iter_shards, logger, run_stage

STAGE, VERSION = "eval", "2"

PREDICTIONS = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),  # bfcl:<category> | gsm8k | none
        ("prediction", pa.string()),
        ("correct", pa.bool_()),  # null where the sample has nothing to check against
        ("error", pa.string()),
        ("gold", pa.string()),
        ("new_tokens", pa.int32()),
        ("loss_boilerplate_sum", pa.float64()),
        ("boilerplate_tokens", pa.int32()),
        ("loss_reasoning_sum", pa.float64()),
        ("reasoning_tokens", pa.int32()),
    ]
)


def model_ref(name: str, key: str, path: str) -> dict[str, str]:
    """What eval needs to know of the model it evaluates: a label, a key and a local directory."""
    return {"name": name, "key": key, "path": path}


def finetuned_ref(store: Store, name: str, record: dict[str, Any]) -> dict[str, str]:
    return model_ref(name, record["key"], str(input_dir(store, record) / "model"))


def eval_key(cfg: PipelineConfig, prepared: dict[str, Any], weighted: dict[str, Any], model: dict[str, str]) -> str:
    inputs = {"prepare": prepared["key"], "weights": weighted["key"], "model": model["key"]}
    return stage_key(STAGE, VERSION, cfg.eval.model_dump(mode="json"), inputs,
                     {"backend": pick_backend(cfg.eval.backend), "placement": placement(cfg.device).key()})


def eval_rows(prep_dir, weights_dir, limit: int | None) -> list[dict[str, Any]]:
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


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    """The conversation up to (not including) its last assistant turn, ready for generation."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)


def check_answer(answer: str, meta: dict[str, Any]) -> tuple[str, bool | None, str | None, str | None]:
    """(task, correct, error, gold) of one answer, by what the sample's meta says it is."""
    if "ground_truth" in meta and "functions" in meta:
        from ..evals.bfcl_match import match_call

        result = match_call(answer, meta["functions"], meta["ground_truth"], meta["category"])
        return f"bfcl:{meta['category']}", result.valid, result.error, json.dumps(meta["ground_truth"])
    if "answer" in meta:
        from ..evals.gsm_answer import answers_match

        correct = answers_match(answer, str(meta["answer"]))
        return "gsm8k", correct, None if correct else "wrong final answer", str(meta["answer"])
    return "none", None, None, None


@torch.no_grad()
def heldout_losses(model, rows: list[dict[str, Any]], pad_id: int, batch_tokens: int,
                   progress: Progress | None = None) -> np.ndarray:
    """(n, 4): per sample the loss sum and token count of boilerplate, then of reasoning."""
    out = np.zeros((len(rows), 4))
    device = next(model.parameters()).device
    for batch in length_batches([len(r["input_ids"]) for r in rows], batch_tokens):
        ids, attn, mask = pad_batch([rows[i]["input_ids"] for i in batch], [rows[i]["loss_mask"] for i in batch], pad_id)
        losses = target_token_losses(model, ids.to(device), attn.to(device), mask.to(device)).cpu().numpy()
        for b, i in enumerate(batch):
            n = len(rows[i]["input_ids"])
            target = np.asarray(rows[i]["loss_mask"], dtype=bool)
            cls = np.asarray(rows[i]["token_class"])[:n]
            for c in (0, 1):
                sel = target & (cls == c)
                out[i, 2 * c] = losses[b, :n][sel].sum()
                out[i, 2 * c + 1] = sel.sum()
        if progress:
            progress.update(len(batch))
    return out


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


def _run(cfg: PipelineConfig, prepared: dict[str, Any], weighted: dict[str, Any], model_info: dict[str, str],
         writer: StageWriter):
    ec = cfg.eval
    store = Store(cfg.store)
    rows = eval_rows(input_dir(store, prepared), input_dir(store, weighted), ec.limit)
    backend = pick_backend(ec.backend)
    tokenizer = load_tokenizer(model_info["path"], cfg.model.trust_remote_code)
    place = placement(cfg.device)
    model = load_model(model_info["path"], cfg.model.trust_remote_code).to(place.device, dtype=place.torch_dtype)
    progress = Progress(f"eval[{model_info['name']}] held-out loss", len(rows), "samples")
    losses = heldout_losses(model, rows, tokenizer.pad_token_id, ec.loss_batch_tokens, progress)
    loss_seconds = progress.close()

    prompts = [prompt_text(tokenizer, json.loads(r["messages"])) for r in rows]
    progress = Progress(f"eval[{model_info['name']}] generate", len(prompts), "samples")
    generated = {"tokens": 0}

    def on_batch(samples: int, tokens: int) -> None:
        generated["tokens"] += tokens
        progress.update(samples, new_tokens=generated["tokens"])

    if backend == "vllm":
        del model
        answers, new_tokens = vllm_generate(model_info["path"], prompts, ec.max_new_tokens, on_batch=on_batch)
    else:
        answers, new_tokens = hf_generate(model, tokenizer, prompts, ec.max_new_tokens, ec.batch_size, on_batch)
    gen_seconds = progress.close()

    out = []
    for row, answer, count, loss in zip(rows, answers, new_tokens, losses, strict=True):
        task_name, correct, error, gold = check_answer(answer, json.loads(row["meta"]))
        out.append({"id": row["id"], "task": task_name, "prediction": answer, "correct": correct, "error": error,
                    "gold": gold, "new_tokens": count, "loss_boilerplate_sum": loss[0], "boilerplate_tokens": int(loss[1]),
                    "loss_reasoning_sum": loss[2], "reasoning_tokens": int(loss[3])})
    table = pa.Table.from_pylist(out, schema=PREDICTIONS)
    pq.write_table(table, writer.dir / "predictions.parquet", compression="zstd")
    metrics = {
        "model": model_info,
        "backend": backend,
        "placement": place.key(),
        **summarize(table),
        "seconds": {"heldout_loss": round(loss_seconds, 1), "generate": round(gen_seconds, 1)},
        "generated_tokens_per_s": round(sum(new_tokens) / max(gen_seconds, 1e-9), 1),
    }
    (writer.dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    logger().info("eval[%s]: accuracy %s on %d checked, held-out loss %s", model_info["name"], metrics["accuracy"],
                  metrics["checked"], metrics["heldout_loss"])
    inputs = {"prepare": prepared["key"], "weights": weighted["key"], "model": model_info["key"]}
    return writer.commit(metrics={k: metrics[k] for k in ("samples", "checked", "accuracy", "heldout_loss")},
                         config=ec.model_dump(mode="json"), inputs=inputs)


def run_eval(cfg: PipelineConfig, prepared: dict[str, Any], weighted: dict[str, Any], model: dict[str, str]) -> dict[str, Any]:
    key = eval_key(cfg, prepared, weighted, model)
    return run_stage(Store(cfg.store), STAGE, key, lambda w: _run(cfg, prepared, weighted, model, w))


@task(name="eval", task_run_name="eval[{model[name]}]",
      cache_key_fn=lambda ctx, p: eval_key(p["cfg"], p["prepared"], p["weighted"], p["model"]), persist_result=True)
def eval_task(cfg: PipelineConfig, prepared: dict[str, Any], weighted: dict[str, Any], model: dict[str, str]) -> dict[str, Any]:
    """Answer the eval split with `model`, check the answers, measure held-out loss per class."""
    return run_eval(cfg, prepared, weighted, model)
