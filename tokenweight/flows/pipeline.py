"""The pipeline: prepare -> shuffle -> discriminator -> score [-> critical] -> weights -> finetune -> eval,
each cached (critical only for `weights.method: critical`).

The flow only orchestrates: it opens the store once, then runs each stage (a `Stage`
declaration, run by stage_protocol.run_task) with the config and the records of the stages it
reads. Prefect's cache key for a stage is the stage key, and its records live in the store itself
(`{store}/_prefect`, plain JSON, checked before Prefect reads them: prefect_records.py), so wiping
the store also forgets Prefect's cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ..config import ALL_STAGES, PipelineConfig
from ..models import ModelRef, resolve_base_model
from ..prefect_records import RecordStorage, record_storage
from ..run_log import logger
from ..stage_protocol import Stage, run_task
from ..store import StageRecord, Store
from ..tasks.critical import CRITICAL
from ..tasks.discriminator import DISCRIMINATOR
from ..tasks.eval import EVAL, finetuned_ref
from ..tasks.finetune import FINETUNE
from ..tasks.prepare import PREPARE
from ..tasks.score import SCORE
from ..tasks.shuffle import SHUFFLE
from ..tasks.weights import WEIGHTS


@dataclass(frozen=True)
class Run:
    """One flow run's store (opened once) and the Prefect records kept in it."""

    store: Store
    records: RecordStorage

    @classmethod
    def open(cls, cfg: PipelineConfig) -> "Run":
        store = open_store(cfg)
        return cls(store, record_storage(store))

    def stage(self, stage: Stage, cfg: PipelineConfig, run_name: str | None = None, **params) -> StageRecord:
        return run_task(stage, cfg, self.store, self.records, run_name, **params)


@task(name="base_model", cache_policy=NO_CACHE)
def base_model_task(cfg: PipelineConfig, store: Store) -> ModelRef:
    """Resolve the base model (the built-in GGUF is converted to safetensors on first use)."""
    return resolve_base_model(cfg.model, store)


def run_stages(cfg: PipelineConfig, run: Run, base: ModelRef, until: str) -> dict[str, StageRecord]:
    """The stages in order up to and including `until`, each cached; returns their records."""
    if until not in ALL_STAGES:
        raise ValueError(f"unknown stage {until!r}; valid: {', '.join(ALL_STAGES)}")
    out: dict[str, StageRecord] = {}

    def stage(spec: Stage, **params) -> bool:
        out[spec.name] = run.stage(spec, cfg, **params)
        return spec.name == until

    if stage(PREPARE, base=base):
        return out
    if stage(SHUFFLE, prepared=out["prepare"], base=base):
        return out
    if stage(DISCRIMINATOR, shuffled=out["shuffle"], base=base):
        return out
    if stage(SCORE, prepared=out["prepare"], disc=out["discriminator"], base=base):
        return out
    if cfg.weights.method == "critical" or until == "critical":
        if stage(CRITICAL, prepared=out["prepare"], base=base):
            return out
    if stage(WEIGHTS, scored=out["score"], prepared=out["prepare"], disc=out["discriminator"], base=base,
             critical=out.get("critical")):
        return out
    if stage(FINETUNE, prepared=out["prepare"], weighted=out["weights"], base=base):
        return out
    stage(EVAL, prepared=out["prepare"], weighted=out["weights"],
          model=finetuned_ref(run.store, cfg.finetune.method, out["finetune"]))
    return out


@flow(name="tokenweight-pipeline", log_prints=True)
def pipeline(cfg: PipelineConfig, until: str = "eval") -> dict[str, StageRecord]:
    """Run the stages up to and including `until`; returns each stage's record."""
    run = Run.open(cfg)
    return run_stages(cfg, run, base_model_task(cfg, run.store), until)


def open_store(cfg: PipelineConfig) -> Store:
    """The run's store, checked writable and cleared of the temporary files of crashed runs."""
    store = Store(cfg.store)
    store.check_writable()
    removed = store.sweep_orphans()
    if removed:
        logger().info("store: removed %d temporary files left by interrupted runs", len(removed))
    return store
