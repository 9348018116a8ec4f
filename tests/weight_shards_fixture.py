"""A real weighted dataset for the tests that read it: the pipeline on the tiny model, up to `weights`.

Imported by test_external_trainers.py and test_shard_readers.py as `weight_shards_fixture`; tests
ask for `weight_shards`. The store sits at one path for the whole session, so the second module to
ask finds every stage's manifest in place and the stages are not computed again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import pipeline_config


@pytest.fixture(scope="module", name="weight_shards")
def weight_shards_fixture(prefect_harness, tiny_model_dir, tmp_path_factory) -> Path:
    """The weights stage's output directory (part-*.parquet, _manifest.json, summary.json, ...)."""
    from tokenweight.flows.pipeline import pipeline

    store = tmp_path_factory.getbasetemp() / "weight-shards-store"
    records = pipeline(pipeline_config(tiny_model_dir, store), until="weights")
    return Path(records["weights"].uri)
