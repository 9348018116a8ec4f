"""The SHAD pipeline: prepare -> shuffle -> discriminator -> score -> weights, each stage cached.

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
from ..tasks.discriminator import discriminator_task
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


@flow(name="tokenweight-pipeline", log_prints=True)
def pipeline(cfg: PipelineConfig, until: str = "weights") -> dict[str, dict[str, Any]]:
    """Run the SHAD stages up to and including `until`; returns each stage's record."""
    if until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; valid: {', '.join(STAGES)}")
    store = Store(cfg.store)
    store.check_writable()
    base = base_model_task(cfg)
    records: dict[str, dict[str, Any]] = {}
    records["prepare"] = run_cached(prepare_task, store, cfg=cfg, base=base)
    if until == "prepare":
        return records
    records["shuffle"] = run_cached(shuffle_task, store, cfg=cfg, prepared=records["prepare"], base=base)
    if until == "shuffle":
        return records
    records["discriminator"] = run_cached(discriminator_task, store, cfg=cfg, shuffled=records["shuffle"], base=base)
    if until == "discriminator":
        return records
    records["score"] = run_cached(score_task, store, cfg=cfg, prepared=records["prepare"],
                                  disc=records["discriminator"], base=base)
    if until == "score":
        return records
    records["weights"] = run_cached(weights_task, store, cfg=cfg, scored=records["score"],
                                    prepared=records["prepare"], disc=records["discriminator"], base=base)
    return records


def run_pipeline(cfg: PipelineConfig, until: str = "weights") -> dict[str, dict[str, Any]]:
    """Run the flow with Prefect's cache records beside the outputs they point at (in a local
    store, unless the user chose a place), so that wiping the store also forgets them."""
    store = Store(cfg.store)
    storage = {"results.local_storage_path": f"{store.root}/_prefect"} if store.is_local else {}
    with temporary_settings(set_defaults=storage):
        return pipeline(cfg, until=until)
