"""Flows for Prefect deployments: the pipeline and the compare flow behind plain-JSON parameters.

A deployment's parameters are what a schedule, the UI or `prefect deployment run --param` can give:
a config path and `section.key=value` overrides (the CLI's `--set`), plus `until` for the pipeline.
Each flow reads the config the way `tokenweight run` does and runs the existing flow as a subflow.

The stage tasks keep their Prefect records in `{store}/_prefect` whoever runs them (see
prefect_records.py), so every worker that sees the store sees the same cache records, and a
second run shows the finished stages as Cached.

A relative config path (and a relative store in it) resolves against the flow run's working
directory: where `tokenweight serve` was started, or the directory the deployment's pull step sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from ..config import PipelineConfig, load_config
from .compare import compare
from .pipeline import pipeline


def load_run_config(config: str, overrides: list[str] | None) -> PipelineConfig:
    """The config as `tokenweight run CONFIG --set ...` reads it."""
    # Absolute, so that an error shows which working directory the run was in (a worker without
    # TOKENWEIGHT_REPO stays in a temporary directory).
    return load_config(Path(config).absolute(), list(overrides or []))


@flow(name="tokenweight-run", log_prints=True)
def pipeline_run(config: str, overrides: list[str] | None = None, until: str = "eval") -> dict[str, dict[str, Any]]:
    """Run the pipeline on a config file; returns each stage's record.

    Args:
        config: pipeline config (YAML); a relative path resolves against the run's working directory.
        overrides: `section.key=value` strings, as `tokenweight run --set`.
        until: the last stage to run (prepare, shuffle, discriminator, score, weights, finetune, eval).
    """
    return pipeline(load_run_config(config, overrides), until=until)


@flow(name="tokenweight-run-compare", log_prints=True)
def compare_run(config: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train and evaluate the config's fine-tune arms side by side; returns the records.

    Args:
        config: pipeline config (YAML) with a compare section; relative to the run's working directory.
        overrides: `section.key=value` strings, as `tokenweight compare --set`.
    """
    return compare(load_run_config(config, overrides))
