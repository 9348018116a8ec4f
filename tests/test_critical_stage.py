"""The critical stage (generate, verify, perturb) on a tiny model that has learned its answers, and
`weights.method: critical` as an arm of `compare` under a real Prefect run.

The tiny Llama (real SmolLM2 tokenizer) is taught three arithmetic answers, so its greedy answers
are known: two right against the data's `answer`, one wrong. The stage must accept the two,
reject the third, flag tokens whose substitutes break the answer and only those, and the weights
stage must turn each accepted answer into a sample weighted on its critical tokens.
"""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from helpers import make_tiny_model, pipeline_config, write_jsonl
from tokenweight.components.chat_encode import encode_conversation
from tokenweight.components.generate import greedy_ids, prompt_text, stop_ids
from tokenweight.evals.answer_check import check_answer

ROWS = [
    {"id": "forty-two", "prompt": "What is 40 plus 2?", "completion": "The answer is 42.", "answer": 42},
    {"id": "seventeen", "prompt": "What is 10 plus 7?", "completion": "The answer is 17.", "answer": 17},
    # The model learns to say 30 here, but the data's answer is 31: its own answer is wrong.
    {"id": "thirty", "prompt": "What is 29 plus 2?", "completion": "The answer is 30.", "answer": 31},
    {"id": "no-answer", "prompt": "Say hello.", "completion": "Hello!"},
]
# More train samples for the shuffle's two folds; nothing to check in them, so never generated for.
FILLER = [{"id": f"filler-{i}", "prompt": f"Name city {i}.", "completion": f"City {i} is Lima."} for i in range(6)]


STEPS = 150


def _taught_model(tokenizer, directory: Path) -> str:
    """The tiny model after enough steps on the four conversations to answer each greedily."""
    model = make_tiny_model(tokenizer, seed=1)
    model.train()
    encoded = []
    for row in ROWS:
        messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
        encoded.append(encode_conversation(tokenizer, messages))
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    labels = torch.full((len(encoded), width), -100)
    attn = torch.zeros((len(encoded), width), dtype=torch.long)
    for b, e in enumerate(encoded):  # right-padded: the prompts start at position 0 as at generation
        ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids)
        attn[b, : len(e.input_ids)] = 1
        labels[b, : len(e.input_ids)] = torch.tensor([t if m else -100 for t, m in zip(e.input_ids, e.loss_mask)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(STEPS):
        optimizer.zero_grad()
        model(input_ids=ids, attention_mask=attn, labels=labels).loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return str(directory)


EVAL_ROWS = [{"id": "eval-sum", "prompt": "What is 3 plus 4?", "completion": "The answer is 7.", "answer": 7},
             {"id": "eval-hello", "prompt": "Say hi.", "completion": "Hi!"}]


@pytest.fixture(scope="module")
def critical_run(prefect_harness, smol_tokenizer, tmp_path_factory):
    """`compare` with an sft arm and a critical arm (its own critical and weights stages) on the taught model."""
    from tokenweight.flows.compare import compare

    tmp = tmp_path_factory.mktemp("critical")
    model_dir = _taught_model(smol_tokenizer, tmp / "model")
    source = {"kind": "file", "path": write_jsonl(tmp / "math.jsonl", ROWS + FILLER)}
    eval_source = {"kind": "file", "path": write_jsonl(tmp / "eval.jsonl", EVAL_ROWS)}
    arms = [{"name": "sft", "finetune": {"method": "sft"}},
            {"name": "critical", "weights": {"method": "critical"}, "finetune": {"method": "weighted"}}]
    cfg = pipeline_config(model_dir, tmp / "store", source=source,
                          prepare={"eval_source": eval_source, "shard_rows": 2}, shuffle={"floor": 2},
                          critical={"max_new_tokens": 16}, compare={"arms": arms, "bootstrap": 100})
    got = compare(cfg)
    records = {**got["shared"], "weights": got["weights"]["critical"], "finetune": got["finetune"]["critical"],
               "compare": got["compare"]}
    return cfg, model_dir, records


def _rows(record) -> dict[str, dict]:
    return {r["id"]: r for r in pl.read_parquet(f"{record.uri}/part-*.parquet").to_dicts()}


def test_the_taught_model_answers_as_taught(critical_run, smol_tokenizer):
    cfg, model_dir, _ = critical_run
    from tokenweight.models import load_model

    model = load_model(model_dir)
    prompts = [smol_tokenizer(prompt_text(smol_tokenizer, [{"role": "user", "content": r["prompt"]},
                                                           {"role": "assistant", "content": ""}]),
                              add_special_tokens=False)["input_ids"] for r in ROWS]
    answers = greedy_ids(model, prompts, 16, 8, smol_tokenizer.pad_token_id, stop_ids(smol_tokenizer))
    assert [smol_tokenizer.decode(a) for a in answers] == [r["completion"] for r in ROWS]


def test_answers_the_checker_accepts_are_probed_and_the_rest_counted(critical_run):
    _, _, records = critical_run
    rows = _rows(records["critical"])
    assert {i: r["status"] for i, r in rows.items()} == {"forty-two": "accepted", "seventeen": "accepted",
                                                        "thirty": "wrong", "no-answer": "unchecked",
                                                        **{f["id"]: "unchecked" for f in FILLER},
                                                        **{e["id"]: "eval" for e in EVAL_ROWS}}
    assert rows["thirty"]["answer"] == "The answer is 30." and rows["thirty"]["kept"] is None
    counts = json.loads(Path(records["critical"].uri, "_manifest.json").read_text())["counts"]
    assert (counts["status_accepted"], counts["status_wrong"], counts["status_unchecked"]) == (2, 1, 7)
    assert counts["answer_tokens"] == sum(len(rows[i]["answer_ids"]) for i in ("forty-two", "seventeen"))


def test_a_token_is_critical_exactly_when_no_substitute_keeps_the_answer(critical_run, smol_tokenizer):
    cfg, model_dir, records = critical_run
    from tokenweight.models import load_model

    model = load_model(model_dir)
    tok = smol_tokenizer
    rows = _rows(records["critical"])
    for row_id, gold in (("forty-two", "42"), ("seventeen", "17")):
        row, source = rows[row_id], next(r for r in ROWS if r["id"] == row_id)
        flags, kept = row["answer_critical"], row["kept"]
        assert len(flags) == len(kept) == len(row["answer_ids"])
        assert flags == [int(not any(k for k in per_token if k is not None)) for per_token in kept]
        # The digits of the value are what the checker reads: replacing the first one breaks the answer.
        digits = [t for t, i in enumerate(row["answer_ids"]) if tok.decode([i]).strip() == gold[0]]
        assert digits and flags[digits[0]] == 1
        # Re-decode every probe from scratch: the recorded verdicts are what the model and checker say.
        prompt = tok(prompt_text(tok, [{"role": "user", "content": source["prompt"]},
                                       {"role": "assistant", "content": ""}]), add_special_tokens=False)["input_ids"]
        ranked = torch.topk(model(input_ids=torch.tensor([prompt + row["answer_ids"]])).logits[0, len(prompt) - 1:-1],
                            3, dim=-1).indices.tolist()
        for t, per_token in enumerate(kept):
            subs = [s for s in ranked[t] if s != row["answer_ids"][t]][:2]
            for rank, verdict in enumerate(per_token):
                if verdict is None:
                    continue
                prefix = row["answer_ids"][:t] + [subs[rank]]
                [cont] = greedy_ids(model, [prompt + prefix], 16 - len(prefix), 1, tok.pad_token_id, stop_ids(tok))
                answer = tok.decode(prefix + cont, skip_special_tokens=True)
                assert check_answer(answer, {"answer": gold})[1] is verdict, (row_id, t, answer)


def test_weights_train_on_the_accepted_answers_critical_tokens_only(critical_run, smol_tokenizer):
    _, _, records = critical_run
    crit, weighted = _rows(records["critical"]), _rows(records["weights"])
    for row_id in ("forty-two", "seventeen"):
        row, c = weighted[row_id], crit[row_id]
        assert row["input_ids"] == c["input_ids"] and row["token_class"] == c["critical"]
        assert "The answer is" in smol_tokenizer.decode(row["input_ids"])
        weight, flags = np.asarray(row["weight"]), np.asarray(c["critical"])
        assert np.allclose(weight[flags == 1], 1 / (flags == 1).sum()) and not weight[flags != 1].any()
        assert sum(flags == 1) == sum(c["answer_critical"])  # the answer re-tokenizes to the ids it was decoded as
        assert row["loss_disc"] is None and len(row["loss_base"]) == len(row["input_ids"])
    for row_id in ("thirty", "no-answer", "filler-0"):  # no accepted answer of their own: the reference sample, weight 0
        assert not any(weighted[row_id]["weight"])
    summary = json.loads(Path(records["weights"].uri, "summary.json").read_text())
    assert summary["method"] == "critical" and summary["critical"]["accepted"] == 2
    manifest = json.loads(Path(records["weights"].uri, "_manifest.json").read_text())
    assert manifest["inputs"]["critical"] == records["critical"].key


def test_the_critical_key_reaches_only_critical_weights(critical_run):
    from tokenweight.tasks.weights import WEIGHTS

    cfg, _, records = critical_run
    from tokenweight.models import ModelRef

    params = dict(scored=records["score"], prepared=records["prepare"], disc=records["discriminator"],
                  base=ModelRef("unused", "base-key", "base"))
    critical = cfg.model_copy(update={"weights": cfg.weights.model_copy(update={"method": "critical"})})
    assert WEIGHTS.key(cfg, **params, critical=records["critical"]) == WEIGHTS.key(cfg, **params)
    assert WEIGHTS.inputs(critical, **params, critical=records["critical"])["critical"] == records["critical"].key


def test_the_critical_arm_trains_on_the_accepted_answers_and_is_compared(critical_run):
    _, _, records = critical_run
    log = json.loads(Path(records["finetune"].uri, "_manifest.json").read_text())
    assert log["inputs"]["weights"] == records["weights"].key
    assert log["train"]["samples"] == 2  # the two accepted answers; the weightless rest is left out
    rows = {r["arm"] for r in json.loads(Path(records["compare"].uri, "table.json").read_text())["rows"]}
    assert rows == {"base", "sft", "critical"}


_RUN_CRITICAL = """
import sys
from tokenweight.config import PipelineConfig
from tokenweight.models import resolve_base_model
from tokenweight.stage_protocol import run_stage
from tokenweight.store import Store
from tokenweight.tasks.critical import CRITICAL
from tokenweight.tasks.prepare import PREPARE

cfg = PipelineConfig.model_validate_json(sys.argv[1])
store = Store(cfg.store)
base = resolve_base_model(cfg.model, store)
run_stage(CRITICAL, cfg, store, prepared=run_stage(PREPARE, cfg, store, base=base), base=base)
"""


def test_a_killed_run_resumes_at_its_first_unfinished_shard_and_ends_the_same(critical_run, tmp_path):
    """SIGKILL after two shards are written; the next run keeps them, computes the rest, and its
    shards are byte for byte those of the run that was never interrupted."""
    import os
    import subprocess
    import sys

    from tokenweight.models import resolve_base_model
    from tokenweight.stage_protocol import run_stage
    from tokenweight.store import Store
    from tokenweight.tasks.critical import CRITICAL
    from tokenweight.tasks.prepare import PREPARE

    cfg, _, records = critical_run
    cfg = cfg.model_copy(update={"store": str(tmp_path / "store")})
    env = {**os.environ, "TOKENWEIGHT_FAULT": "critical.shard_done@2", "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, "-c", _RUN_CRITICAL, cfg.model_dump_json()], env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    store = Store(cfg.store)
    base = resolve_base_model(cfg.model, store)
    record = run_stage(CRITICAL, cfg, store, prepared=run_stage(PREPARE, cfg, store, base=base), base=base)
    assert record.key == records["critical"].key
    assert json.loads(Path(record.uri, "_manifest.json").read_text())["counts"]["shards_resumed"] == 2
    resumed, whole = sorted(Path(record.uri).glob("part-*.parquet")), sorted(Path(records["critical"].uri).glob("part-*.parquet"))
    assert len(resumed) == len(whole) > 2
    assert [p.read_bytes() for p in resumed] == [p.read_bytes() for p in whole]


def test_on_a_dask_cluster_the_shards_are_those_of_the_in_process_run(critical_run, tmp_path):
    """runner.kind dask, a local cluster of 2 workers (prefect-dask): same key, same bytes."""
    from tokenweight.config import RunnerConfig
    from tokenweight.models import resolve_base_model
    from tokenweight.stage_protocol import run_stage
    from tokenweight.store import Store
    from tokenweight.tasks.critical import CRITICAL
    from tokenweight.tasks.prepare import PREPARE

    cfg, _, records = critical_run
    cfg = cfg.model_copy(update={"store": str(tmp_path / "store"), "runner": RunnerConfig(kind="dask", workers=2)})
    store = Store(cfg.store)
    base = resolve_base_model(cfg.model, store)
    record = run_stage(CRITICAL, cfg, store, prepared=run_stage(PREPARE, cfg, store, base=base), base=base)
    assert record.key == records["critical"].key
    fanned, whole = sorted(Path(record.uri).glob("part-*.parquet")), sorted(Path(records["critical"].uri).glob("part-*.parquet"))
    assert len(fanned) == len(whole) > 2
    assert [p.read_bytes() for p in fanned] == [p.read_bytes() for p in whole]
    counts = [json.loads(Path(r.uri, "_manifest.json").read_text())["counts"] for r in (record, records["critical"])]
    assert {k: v for k, v in counts[0].items() if k not in ("seconds", "seconds_per_accepted_answer")} == \
           {k: v for k, v in counts[1].items() if k not in ("seconds", "seconds_per_accepted_answer")}
