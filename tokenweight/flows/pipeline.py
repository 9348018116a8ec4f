"""The pipeline: prepare -> shuffle -> discriminator -> score -> weights -> finetune -> eval, each cached.

The flow only orchestrates: each call passes the config and small records between stages.
Prefect's cache key for a stage is the stage key, and its records live in the store itself
(`{store}/_prefect`, plain JSON, checked before Prefect reads them: prefect_records.py), so wiping
the store also forgets Prefect's cache.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ..config import STAGES, PipelineConfig
from ..models import BaseModel, resolve_base_model
from ..prefect_records import RecordStorage, record_options, record_storage
from ..store import Store
from ..tasks.common import logger
from ..tasks.discriminator import discriminator_task
from ..tasks.eval import eval_task, finetuned_ref
from ..tasks.finetune import finetune_task
from ..tasks.prepare import prepare_task
from ..tasks.score import score_task
from ..tasks.shuffle import shuffle_task
from ..tasks.weights import weights_task


@task(name="base_model", cache_policy=NO_CACHE)
def base_model_task(cfg: PipelineConfig) -> BaseModel:
    """Resolve the base model (the built-in GGUF is converted to safetensors on first use)."""
    return resolve_base_model(cfg.model, Store(cfg.store))


def run_cached(stage_task, store: Store, records: RecordStorage, **params: Any) -> dict[str, Any]:
    """Run a stage task, its Prefect record in `records`; mark the stage's record `cached` when
    Prefect or the store already had it."""
    stage_task = stage_task.with_options(result_storage=records, **record_options())
    state = stage_task(**params, return_state=True)
    record = dict(state.result())
    if store.manifest(record["stage"], record["key"]) is None:
        # Prefect remembered an output the store has lost (deleted by hand): compute it again.
        state = stage_task.with_options(refresh_cache=True)(**params, return_state=True)
        record = dict(state.result())
    record["cached"] = bool(record.get("cached")) or state.name == "Cached"
    return record


def run_stages(cfg: PipelineConfig, store: Store, records: RecordStorage, base: BaseModel,
               until: str) -> dict[str, dict[str, Any]]:
    """The stages in order up to and including `until`, each cached; returns their records."""
    if until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; valid: {', '.join(STAGES)}")
    out: dict[str, dict[str, Any]] = {}

    def stage(name: str, stage_task, **params: Any) -> bool:
        out[name] = run_cached(stage_task, store, records, cfg=cfg, **params)
        return name == until

    if stage("prepare", prepare_task, base=base):
        return out
    if stage("shuffle", shuffle_task, prepared=out["prepare"], base=base):
        return out
    if stage("discriminator", discriminator_task, shuffled=out["shuffle"], base=base):
        return out
    if stage("score", score_task, prepared=out["prepare"], disc=out["discriminator"], base=base):
        return out
    if stage("weights", weights_task, scored=out["score"], prepared=out["prepare"],
             disc=out["discriminator"], base=base):
        return out
    if stage("finetune", finetune_task, prepared=out["prepare"], weighted=out["weights"], base=base):
        return out
    stage("eval", eval_task, prepared=out["prepare"], weighted=out["weights"],
          model=finetuned_ref(store, cfg.finetune.method, out["finetune"]))
    return out


@flow(name="tokenweight-pipeline", log_prints=True)
def pipeline(cfg: PipelineConfig, until: str = "eval") -> dict[str, dict[str, Any]]:
    """Run the stages up to and including `until`; returns each stage's record."""
    store = open_store(cfg)
    return run_stages(cfg, store, record_storage(store), base_model_task(cfg), until)


def open_store(cfg: PipelineConfig) -> Store:
    """The run's store, checked writable and cleared of the temporary files of crashed runs."""
    store = Store(cfg.store)
    store.check_writable()
    removed = store.sweep_orphans()
    if removed:
        logger().info("store: removed %d temporary files left by interrupted runs", len(removed))
    return store

