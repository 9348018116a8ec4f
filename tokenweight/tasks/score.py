"""score: per-token cross-entropy of every target token of both splits under each model.

Streams over the prepared shards (one in memory at a time), batches rows by length, runs each
batch through the base model and (when it is the reference) the control, and the discriminator
in the context `disc_context` says (components/foreign_context.py), and writes one score shard per
prepared shard, rows in the same order. Each row is scored by the discriminator and control of
another fold than its own (components/cross_fit.py: never by a model that trained on it); its
`scored_by` column names that fold. A run killed part-way resumes at the first shard it had
not finished (StageWriter keeps finished shards). Under `runner.kind: dask` the shards are
computed on Dask workers (shard_fanout.py) and written here, the same bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..components.cross_fit import scoring_fold
from ..components.foreign_context import foreign_rows, move_targets
from ..components.score_tokens import score_rows
from ..device_policy import placement
from ..config import PipelineConfig
from ..models import ModelRef, base_model_here, load_model, load_tokenizer
from ..progress import Progress
from ..run_log import logger
from ..schemas import SCORES
from ..shard_fanout import fan_out, here
from ..shards import shard_files
from ..stage_outputs import Manifest, TrainedModels
from ..stage_protocol import Stage, StageRun, section
from ..store import StageRecord, Store, verify_output


@dataclass(frozen=True)
class ScoreJob:
    """What a process needs to score any shard of this output (picklable: it travels to Dask
    workers). The directories are this machine's verified copies; a worker that does not see them
    fetches and verifies its own from the store."""

    cfg: PipelineConfig
    store: Store
    prepared: StageRecord
    disc: StageRecord
    base: ModelRef
    prep_dir: str
    disc_dir: str

    @property
    def models_key(self) -> tuple[str, ...]:
        """What decides the models and inputs a process loads for this job."""
        return (self.store.url, self.prepared.key, self.disc.key, self.base.key,
                json.dumps(placement(self.cfg.device).key(), sort_keys=True))


class _Scorer:
    """One process's models, tokenizer and inputs for a ScoreJob (loaded once per process)."""

    def __init__(self, job: ScoreJob):
        cfg = self.cfg = job.cfg
        self.prep_dir = here(job.prep_dir, lambda: verify_output(job.store, "prepare", job.prepared.key)[1])
        disc_dir = here(job.disc_dir, lambda: verify_output(job.store, "discriminator", job.disc.key)[1])
        base = base_model_here(job.base, cfg.model, job.store)
        self.tokenizer = load_tokenizer(base.path, cfg.model.trust_remote_code)
        self.place = placement(cfg.device)
        self.trained = TrainedModels.of(Manifest.read(disc_dir))
        models = {"base": load_model(base.path, cfg.model.trust_remote_code)}
        for name in self.trained.models:
            models[name] = load_model(str(disc_dir / name), cfg.model.trust_remote_code)
        self.models = {n: m.to(device=self.place.device, dtype=self.place.torch_dtype).eval() for n, m in models.items()}
        self.files = shard_files(self.prep_dir)

    def inputs(self, index: int) -> tuple[pa.Table, list[int], Any]:
        """Shard `index`: its rows, the fold that scores each, and (foreign context) its hosts."""
        return shard_inputs(self.cfg, self.tokenizer, self.trained, self.files[index], index)

    def score(self, index: int, on_batch: Callable[[int], None] | None = None) -> tuple[pa.Table, dict[str, Any]]:
        cfg, trained, models = self.cfg, self.trained, self.models
        sc, shared, kinds = cfg.score, trained.train_layers, trained.kinds  # kinds: disc [, control]
        table, scored_by, other = self.inputs(index)
        rows, masks = table.column("input_ids").to_pylist(), table.column("loss_mask").to_pylist()
        pad = self.tokenizer.pad_token_id
        if on_batch is None:  # on a worker: its own progress line for the shard
            progress = Progress(f"score shard {index}", sum(map(len, rows)) * (2 if other else 1), "tokens")
            on_batch = progress.update
        scores: dict[str, list] = {"base": [None] * len(rows), **{kind: [None] * len(rows) for kind in kinds}}
        for fold in range(trained.folds):
            picked = [i for i, f in enumerate(scored_by) if f == fold]
            if not picked:
                continue
            pair = {"base": models["base"], **{kind: models[trained.model_name(kind, fold)] for kind in kinds}}
            in_context = {k: m for k, m in pair.items() if not (other is not None and k == "disc")}
            got = score_rows(in_context, [rows[i] for i in picked], [masks[i] for i in picked], pad,
                             sc.batch_tokens, sc.chunk_rows, shared, on_batch=on_batch)
            if other is not None:
                disc_losses = score_rows({"disc": pair["disc"]}, [other.rows[i] for i in picked],
                                         [other.masks[i] for i in picked], pad, sc.batch_tokens,
                                         sc.chunk_rows, on_batch=on_batch)["disc"]
                got["disc"] = [move_targets(d, other.masks[i], masks[i])
                               for d, i in zip(disc_losses, picked, strict=True)]
            for kind, losses in got.items():
                for i, loss in zip(picked, losses, strict=True):
                    scores[kind][i] = loss
        out = pa.table(
            {
                "id": table.column("id"),
                "loss_base": scores["base"],
                "loss_disc": scores["disc"],
                "loss_control": scores["control"] if "control" in scores else [None] * len(rows),
                "scored_by": scored_by,
            },
            schema=SCORES,
        )
        return out, shard_counts(rows, scored_by, other, trained.folds)


def shard_inputs(cfg: PipelineConfig, tokenizer: Any, trained: TrainedModels, path: Path,
                 index: int) -> tuple[pa.Table, list[int], Any]:
    """A prepared shard's rows, each row's scoring fold and, in a foreign context, its host rows
    (cheap next to scoring: done for finished shards too, whose counts the manifest holds)."""
    table = pq.read_table(path, columns=["id", "split", "input_ids", "loss_mask", "messages"])
    scored_by = [scoring_fold(i, trained.seed, trained.folds) for i in table.column("id").to_pylist()]
    other = None
    if cfg.score.disc_context == "foreign":
        messages = [json.loads(m) for m in table.column("messages").to_pylist()]
        other = foreign_rows(tokenizer, messages, table.column("input_ids").to_pylist(),
                             table.column("loss_mask").to_pylist(), random.Random(f"{cfg.score.seed}:{index}"),
                             cfg.prepare.max_tokens, table.column("split").to_pylist())
    return table, scored_by, other


def shard_counts(rows: list[list[int]], scored_by: list[int], other: Any, folds: int) -> dict[str, Any]:
    per_fold = [0] * folds
    for f in scored_by:
        per_fold[f] += 1
    tokens = sum(map(len, rows)) * (2 if other is not None else 1)
    return {"per_fold": per_fold, "own_input": other.own_input if other is not None else 0, "progress_tokens": tokens}


_SCORERS: dict[tuple[str, ...], _Scorer] = {}


def score_shard(job: ScoreJob, index: int) -> tuple[pa.Table, dict[str, Any]]:
    """Score shard `index` (runner.kind dask: on a worker, which keeps the models of the last job)."""
    if job.models_key not in _SCORERS:
        _SCORERS.clear()  # one job's models at a time in a worker's memory
        _SCORERS[job.models_key] = _Scorer(job)
    return _SCORERS[job.models_key].score(index)


def _work(run: StageRun, prepared: StageRecord, disc: StageRecord, base: ModelRef) -> dict[str, Any]:
    cfg, writer = run.cfg, run.writer
    job = ScoreJob(cfg, run.store, prepared, disc, base, str(run.input_dir(prepared)), str(run.input_dir(disc)))
    prep_dir = Path(job.prep_dir)
    n_shards, tokens = len(shard_files(prep_dir)), Manifest.read(prep_dir).counts["tokens"]
    trained = TrainedModels.of(Manifest.read(Path(job.disc_dir)))
    foreign = cfg.score.disc_context == "foreign"
    # In a foreign context the discriminator reads its own rows: the progress counts the tokens twice.
    total = tokens * (2 if foreign else 1)
    progress = Progress("score", total, "tokens")
    done = writer.done_shards()
    totals = {"per_fold": [0] * trained.folds, "own_input": 0}

    def add(counts: dict[str, Any]) -> None:
        totals["per_fold"] = [a + b for a, b in zip(totals["per_fold"], counts["per_fold"], strict=True)]
        totals["own_input"] += counts["own_input"]

    if done:
        logger().info("score: resuming, %d of %d shards were finished by an interrupted run", len(done), n_shards)
        tokenizer = load_tokenizer(base.path, cfg.model.trust_remote_code)
        for index in sorted(done):
            table, scored_by, other = shard_inputs(cfg, tokenizer, trained, shard_files(prep_dir)[index], index)
            counts = shard_counts(table.column("input_ids").to_pylist(), scored_by, other, trained.folds)
            add(counts)
            progress.update(counts["progress_tokens"])
    todo = [i for i in range(n_shards) if i not in done]
    if cfg.runner.kind == "local":
        compute, scorer = None, None
        if todo:
            scorer = _Scorer(job)
            compute = lambda _job, index: scorer.score(index, on_batch=progress.update)  # noqa: E731
    else:
        compute = score_shard

    def write(index: int, result: tuple[pa.Table, dict[str, Any]]) -> None:
        table, counts = result
        writer.write_shard(index, table)
        add(counts)
        if cfg.runner.kind != "local":  # a worker's batches are counted in its own log
            progress.update(counts["progress_tokens"])

    fan_out(cfg.runner, "score", compute, job, todo, write)
    seconds = progress.close()
    place = placement(cfg.device)
    counts = {"tokens": tokens, "models": ["base", *trained.models], "scored_per_fold": totals["per_fold"],
              "disc_context": cfg.score.disc_context, "disc_own_input": totals["own_input"],
              "tokens_per_s": round(total / max(seconds, 1e-9), 1),
              "threads": cfg.runner.threads_per_worker if cfg.runner.kind != "local" else torch.get_num_threads(),
              "device": place.device, "dtype": place.dtype, "shards_resumed": len(done)}
    logger().info("score: %s in %.1fs", counts, seconds)
    return {"counts": counts, "placement": place.key()}


SCORE = Stage(
    name="score",
    version="3",
    config=section("score"),
    inputs=lambda cfg, prepared, disc, base: {"prepare": prepared.key, "discriminator": disc.key,
                                              "base_model": base.key},
    extra=lambda cfg, **_: {"placement": placement(cfg.device).key()},
    work=_work,
    resumable=True,
    description="Per-token losses of every target token under the base model and the tuned models of another fold.",
)
