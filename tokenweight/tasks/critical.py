"""critical: the base model's own answers on the train split, checked, and their critical tokens (CFT).

Generate, verify, perturb. For each train sample the checker can judge (BFCL's AST checker, a
GSM-style final number: evals/answer_check.py), the base model answers greedily, batched as the
eval stage generates; an answer the checker accepts is probed token by token: each token is
replaced by the model's next most likely tokens there, the model continues greedily, and the
checker judges each continuation (components/critical_tokens.py has the rule,
components/critical_probe.py the model-facing parts). The accepted answer, with its critical
flags and its base-model losses, becomes the sample the weights stage writes for
`weights.method: critical`. One shard per prepared shard, rows in the same order; a run killed
part-way resumes at the first shard it had not finished; under `runner.kind: dask` the shards
are probed on Dask workers (shard_fanout.py) and written here, the same bytes. Probing costs about
2 x (answer tokens) greedy continuations per accepted answer (fewer under rule `all`, where a
position is done as soon as one substitute keeps the answer right).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..components.chat_encode import EncodeError
from ..components.critical_probe import answer_sample, ranked_next_tokens
from ..components.critical_tokens import find_critical, substitutes_from_topk
from ..components.generate import greedy_ids, prompt_text, stop_ids
from ..components.score_tokens import score_rows
from ..device_policy import placement
from ..evals.answer_check import check_answer
from ..config import PipelineConfig
from ..models import ModelRef, base_model_here, load_model, load_tokenizer
from ..progress import Progress
from ..run_log import logger
from ..schemas import CRITICAL as CRITICAL_SCHEMA
from ..shard_fanout import fan_out, here
from ..shards import shard_files
from ..stage_outputs import Manifest
from ..stage_protocol import Stage, StageRun, section
from ..store import StageRecord, Store, verify_output


@dataclass(frozen=True)
class CriticalJob:
    """What a process needs to probe any shard of this output (picklable: it travels to Dask
    workers); `prep_dir` is this machine's verified copy, which a worker elsewhere fetches itself."""

    cfg: PipelineConfig
    store: Store
    prepared: StageRecord
    base: ModelRef
    prep_dir: str

    @property
    def models_key(self) -> tuple[str, ...]:
        return (self.store.url, self.prepared.key, self.base.key, json.dumps(placement(self.cfg.device).key()))


class _Prober:
    """The base model, its tokenizer and the critical settings: one prepared shard in, its rows out."""

    def __init__(self, job: CriticalJob):
        cfg = job.cfg
        base = base_model_here(job.base, cfg.model, job.store)
        self.prep_dir = here(job.prep_dir, lambda: verify_output(job.store, "prepare", job.prepared.key)[1])
        self.files = shard_files(self.prep_dir)
        self.cc, self.max_tokens = cfg.critical, cfg.prepare.max_tokens
        self.tokenizer = load_tokenizer(base.path, cfg.model.trust_remote_code)
        place = self.place = placement(cfg.device)
        self.net = load_model(base.path, cfg.model.trust_remote_code).to(place.device, dtype=place.torch_dtype).eval()
        self.pad, self.eos = self.tokenizer.pad_token_id, stop_ids(self.tokenizer)
        self.seconds = Counter()

    def _greedy(self, prompts: list[list[int]], budgets: list[int] | int, desc: str) -> list[list[int]]:
        progress = Progress(desc, len(prompts), "sequences")
        made = {"tokens": 0}

        def on_batch(n: int, tokens: int) -> None:
            made["tokens"] += tokens
            progress.update(n, new_tokens=made["tokens"])

        out = greedy_ids(self.net, prompts, budgets, self.cc.batch_size, self.pad, self.eos, on_batch)
        progress.close()
        return out

    def probe(self, index: int) -> tuple[list[dict[str, Any]], Counter]:
        """Shard `index`'s rows, and the seconds each step took on it."""
        before = Counter(self.seconds)
        rows = pq.read_table(self.files[index], columns=["id", "split", "messages", "meta"]).to_pylist()
        out = self.shard(index, rows)
        return out, Counter({k: v - before[k] for k, v in self.seconds.items()})

    def shard(self, index: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        tok, cc = self.tokenizer, self.cc
        out = [{"id": r["id"], "split": r["split"], "status": "eval"} for r in rows]
        metas = [json.loads(r["meta"]) for r in rows]
        messages = [json.loads(r["messages"]) for r in rows]
        todo = []
        for i, r in enumerate(rows):
            if r["split"] != "train":
                continue
            if check_answer("", metas[i])[1] is None:
                out[i]["status"] = "unchecked"
            else:
                todo.append(i)
        if not todo:
            return out
        started = time.time()
        prompts = {i: tok(prompt_text(tok, messages[i]), add_special_tokens=False)["input_ids"] for i in todo}
        answers = dict(zip(todo, self._greedy([prompts[i] for i in todo], cc.max_new_tokens,
                                              f"critical shard {index}: answers"), strict=True))

        def accepts(i: int, ids: list[int]) -> bool:
            return check_answer(tok.decode(ids, skip_special_tokens=True), metas[i])[1] is True

        accepted = []
        for i in todo:
            out[i].update(answer=tok.decode(answers[i], skip_special_tokens=True), answer_ids=answers[i])
            out[i]["status"] = "accepted" if accepts(i, answers[i]) else "wrong"
            if out[i]["status"] == "accepted":
                accepted.append(i)
        self.seconds["answers"] += time.time() - started
        if not accepted:
            return out

        started = time.time()
        substitutes = [substitutes_from_topk(answers[i], ranked_next_tokens(self.net, prompts[i], answers[i],
                                                                            cc.substitutes + 1), cc.substitutes)
                       for i in accepted]

        rank = {"now": 0}  # the substitute rank being probed, for the progress line

        def continue_greedy(samples: list[int], prefixes: list[list[int]]) -> list[list[int]]:
            return self._greedy([prompts[accepted[s]] + p for s, p in zip(samples, prefixes, strict=True)],
                                [cc.max_new_tokens - len(p) for p in prefixes],
                                f"critical shard {index}: substitute rank {rank['now'] + 2}")

        results = find_critical([answers[i] for i in accepted], substitutes, continue_greedy,
                                lambda s, ids: accepts(accepted[s], ids), cc.rule,
                                on_round=lambda r, _: rank.update(now=r))
        samples = {}
        for i, result in zip(accepted, results, strict=True):
            out[i].update(answer_critical=result.critical.tolist(), kept=result.kept)
            try:
                enc, flags = answer_sample(tok, messages[i], answers[i], result.critical.tolist(), self.max_tokens)
            except EncodeError as err:
                logger().warning("critical: sample %r: the chat template cannot render its answer: %s", rows[i]["id"], err)
                out[i]["status"] = "unencodable"
                continue
            samples[i] = enc
            out[i].update(text=enc.text, input_ids=enc.input_ids, offsets=[list(o) for o in enc.offsets],
                          loss_mask=enc.loss_mask, critical=flags)
        if samples:
            losses = score_rows({"base": self.net}, [e.input_ids for e in samples.values()],
                                [e.loss_mask for e in samples.values()], self.pad)["base"]
            for i, loss in zip(samples, losses, strict=True):
                out[i]["loss_base"] = loss
        self.seconds["probes"] += time.time() - started
        return out


def _tally(rows: list[dict[str, Any]], counts: Counter) -> None:
    for r in rows:
        counts[f"status_{r['status']}"] += 1
        if r["status"] == "accepted":
            counts["answer_tokens"] += len(r["answer_ids"])
            counts["critical_tokens"] += sum(r["answer_critical"])
            counts["probes"] += sum(k is not None for per_token in r["kept"] for k in per_token)


_PROBERS: dict[tuple[str, ...], _Prober] = {}


def critical_shard(job: CriticalJob, index: int) -> tuple[list[dict[str, Any]], Counter]:
    """Probe shard `index` (runner.kind dask: on a worker, which keeps the model of the last job)."""
    if job.models_key not in _PROBERS:
        _PROBERS.clear()
        _PROBERS[job.models_key] = _Prober(job)
    return _PROBERS[job.models_key].probe(index)


def _work(run: StageRun, prepared: StageRecord, base: ModelRef) -> dict[str, Any]:
    job = CriticalJob(run.cfg, run.store, prepared, base, str(run.input_dir(prepared)))
    prep_dir = Path(job.prep_dir)
    done, counts, seconds = run.writer.done_shards(), Counter(), Counter()
    progress = Progress("critical", Manifest.read(prep_dir).counts["train"], "train samples")

    def add(finished: list[dict[str, Any]]) -> None:
        _tally(finished, counts)
        progress.update(sum(r["split"] == "train" for r in finished), accepted=counts["status_accepted"],
                        critical=counts["critical_tokens"])

    for index in sorted(done):
        add(pq.read_table(run.dir / f"part-{index:05d}.parquet").to_pylist())

    def write(index: int, result: tuple[list[dict[str, Any]], Counter]) -> None:
        finished, took = result
        run.writer.write_shard(index, pa.Table.from_pylist(finished, schema=CRITICAL_SCHEMA))
        seconds.update(took)
        add(finished)

    todo = [i for i in range(len(shard_files(prep_dir))) if i not in done]
    if run.cfg.runner.kind == "local" and todo:
        prober = _Prober(job)
        fan_out(run.cfg.runner, "critical", lambda _job, index: prober.probe(index), job, todo, write)
    else:
        fan_out(run.cfg.runner, "critical", critical_shard, job, todo, write)
    wall = progress.close()
    accepted = counts["status_accepted"]
    info = {**dict(sorted(counts.items())),
            "critical_share": round(counts["critical_tokens"] / max(1, counts["answer_tokens"]), 4),
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "seconds_per_accepted_answer": round(seconds["probes"] / accepted, 2) if accepted else None,
            "shards_resumed": len(done)}
    logger().info("critical: %s in %.1fs", info, wall)
    return {"counts": info, "placement": placement(run.cfg.device).key()}


CRITICAL = Stage(
    name="critical",
    version="1",
    config=section("critical"),
    inputs=lambda cfg, prepared, base: {"prepare": prepared.key, "base_model": base.key},
    extra=lambda cfg, **_: {"placement": placement(cfg.device).key()},
    work=_work,
    resumable=True,
    description="The base model's own answers on the train split, checked, and their critical tokens (CFT).",
)
