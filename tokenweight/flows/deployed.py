"""Flows for Prefect deployments: the pipeline and the compare flow behind plain-JSON parameters.

A deployment's parameters are what a schedule, the UI or `prefect deployment run --param` can give:
a config path and `section.key=value` overrides (the CLI's `--set`), plus `until` for the pipeline.
Each flow reads the config the way `tokenweight run` does and runs the existing flow as a subflow.

Why a subflow: in a deployment the flow run starts in a process that Prefect's runner or worker
spawns, and a flow run's result storage is fixed when it starts (its tasks inherit it), before
the config says where the store is; entering `prefect_storage` inside the flow comes too late and
the records land in the worker's $PREFECT_HOME/storage, which no other machine sees. So the inner
flow is given its result storage explicitly, chosen by the same rule as local mode: `{store}/_prefect`
for a local store, else the configured default (PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, or the
server's, from `prefect experimental result-storage set`). Every worker that sees the store then sees the same cache
records, and a second run shows the finished stages as Cached.

A relative config path (and a relative store in it) resolves against the flow run's working
directory: where `tokenweight serve` was started, or the directory the deployment's pull step sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.filesystems import WritableFileSystem
from prefect.results import get_default_result_storage

from ..config import PipelineConfig, apply_overrides, parse_config, read_config_file
from ..store import Store
from .compare import compare
from .pipeline import pipeline, prefect_storage


def load_run_config(config: str, overrides: list[str] | None) -> PipelineConfig:
    """The config as `tokenweight run CONFIG --set ...` reads it."""
    # Absolute, so that an error shows which working directory the run was in (a worker without
    # TOKENWEIGHT_REPO stays in a temporary directory).
    path = Path(config).absolute()
    return parse_config(apply_overrides(read_config_file(path), list(overrides or [])), where=str(path))


def store_result_storage(cfg: PipelineConfig) -> WritableFileSystem | Path:
    """The result storage that local mode gives this config's store (see prefect_storage)."""
    with prefect_storage(Store(cfg.store)):
        storage = get_default_result_storage(_sync=True)
    # A flow takes only a saved block (a configured default is one) or a directory's path.
    if getattr(storage, "_block_document_id", None) is None:
        return Path(storage.basepath)
    return storage


@flow(name="tokenweight-run", log_prints=True)
def pipeline_run(config: str, overrides: list[str] | None = None, until: str = "eval") -> dict[str, dict[str, Any]]:
    """Run the pipeline on a config file; returns each stage's record.

    Args:
        config: pipeline config (YAML); a relative path resolves against the run's working directory.
        overrides: `section.key=value` strings, as `tokenweight run --set`.
        until: the last stage to run (prepare, shuffle, discriminator, score, weights, finetune, eval).
    """
    cfg = load_run_config(config, overrides)
    # The inner flow's result is what this flow returns: no need to persist it as well.
    inner = pipeline.with_options(result_storage=store_result_storage(cfg), persist_result=False)
    return inner(cfg, until=until)


@flow(name="tokenweight-run-compare", log_prints=True)
def compare_run(config: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train and evaluate the config's fine-tune arms side by side; returns the records.

    Args:
        config: pipeline config (YAML) with a compare section; relative to the run's working directory.
        overrides: `section.key=value` strings, as `tokenweight compare --set`.
    """
    cfg = load_run_config(config, overrides)
    inner = compare.with_options(result_storage=store_result_storage(cfg), persist_result=False)
    return inner(cfg)
