"""The pipeline: prepare -> shuffle -> discriminator -> score -> weights -> finetune -> eval, each cached.

The flow only orchestrates: each call passes the config and small records between stages.
Prefect's cache key for a stage is the stage key, and its results live in the store itself
(`{store}/_prefect` for a local store, through `run_pipeline`), so wiping the store also forgets
Prefect's cache.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.settings import temporary_settings

from ..config import STAGES, PipelineConfig
from ..models import BaseModel, resolve_base_model
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


def run_cached(stage_task, store: Store, **params: Any) -> dict[str, Any]:
    """Run a stage task; mark its record `cached` when Prefect or the store already had it."""
    state = stage_task(**params, return_state=True)
    record = dict(state.result())
    if store.manifest(record["stage"], record["key"]) is None:
        # Prefect remembered an output the store has lost (deleted by hand): compute it again.
        state = stage_task.with_options(refresh_cache=True)(**params, return_state=True)
        record = dict(state.result())
    record["cached"] = bool(record.get("cached")) or state.name == "Cached"
    return record


def run_stages(cfg: PipelineConfig, store: Store, base: BaseModel, until: str) -> dict[str, dict[str, Any]]:
    """The stages in order up to and including `until`, each cached; returns their records."""
    if until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; valid: {', '.join(STAGES)}")
    records: dict[str, dict[str, Any]] = {}

    def stage(name: str, stage_task, **params: Any) -> bool:
        records[name] = run_cached(stage_task, store, cfg=cfg, **params)
        return name == until

    if stage("prepare", prepare_task, base=base):
        return records
    if stage("shuffle", shuffle_task, prepared=records["prepare"], base=base):
        return records
    if stage("discriminator", discriminator_task, shuffled=records["shuffle"], base=base):
        return records
    if stage("score", score_task, prepared=records["prepare"], disc=records["discriminator"], base=base):
        return records
    if stage("weights", weights_task, scored=records["score"], prepared=records["prepare"],
             disc=records["discriminator"], base=base):
        return records
    if stage("finetune", finetune_task, prepared=records["prepare"], weighted=records["weights"], base=base):
        return records
    stage("eval", eval_task, prepared=records["prepare"], weighted=records["weights"],
          model=finetuned_ref(store, cfg.finetune.method, records["finetune"]))
    return records


@flow(name="tokenweight-pipeline", log_prints=True)
def pipeline(cfg: PipelineConfig, until: str = "eval") -> dict[str, dict[str, Any]]:
    """Run the stages up to and including `until`; returns each stage's record."""
    store = open_store(cfg)
    return run_stages(cfg, store, base_model_task(cfg), until)


def open_store(cfg: PipelineConfig) -> Store:
    """The run's store, checked writable and cleared of the temporary files of crashed runs."""
    store = Store(cfg.store)
    store.check_writable()
    removed = store.sweep_orphans()
    if removed:
        logger().info("store: removed %d temporary files left by interrupted runs", len(removed))
    return store


def prefect_storage(store: Store):
    """Prefect's cache records beside the outputs they point at (in a local store, unless the
    user chose a place), so that wiping the store also forgets them."""
    storage = {"results.local_storage_path": f"{store.root}/_prefect"} if store.is_local else {}
    return temporary_settings(set_defaults=storage)


def run_pipeline(cfg: PipelineConfig, until: str = "eval") -> dict[str, dict[str, Any]]:
    """Run the pipeline flow in Prefect's local mode (see prefect_storage)."""
    with prefect_storage(Store(cfg.store)):
        return pipeline(cfg, until=until)
