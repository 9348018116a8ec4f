"""The score stage fanned out on a real Dask cluster (prefect-dask's DaskTaskRunner, a local
cluster of 2 worker processes) against the same stage run in-process.

One pipeline runs to score in-process; each Dask run starts from a copy of its store without the
score output (prepare, shuffle and the discriminator are cached there), so only scoring differs.
Checked: the shards are byte-identical and under the same key; a worker SIGKILLed mid-shard
(faults.py, once across the pool) loses only that shard, which Dask recomputes on the other
worker, or, where Dask may not retry, the stage fails keeping every other shard and the next run
computes that one only; with `gpus_per_worker` the shards hold a Prefect global concurrency limit.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from helpers import chat_rows, pipeline_config, write_jsonl


N_SHARDS = 4


def _cfg(model_dir: str, store: Path, data: str, kind: str = "dask", **runner):
    return pipeline_config(model_dir, store, {"kind": "file", "path": data}, prepare={"shard_rows": 4},
                           runner={"kind": kind, "workers": 2, **runner})


def _score_dir(store: Path) -> Path:
    [manifest] = (store / "score").glob("*/_manifest.json")
    return manifest.parent


def _shards(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("part-*.parquet"))}


@pytest.fixture(scope="module")
def local_run(prefect_harness, tiny_model_dir, tmp_path_factory):
    from tokenweight.flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("fanout")
    data = write_jsonl(root / "data.jsonl", chat_rows(16))
    store = root / "local"
    pipeline(_cfg(tiny_model_dir, store, data, "local"), until="score")
    assert len(_shards(_score_dir(store))) == N_SHARDS
    return root, data, store


def _without_score(local: Path, to: Path) -> Path:
    """A copy of the in-process run's store with everything but the score output."""
    shutil.copytree(local, to, ignore=shutil.ignore_patterns("_prefect", "_locks"))
    shutil.rmtree(to / "score")
    return to


def test_dask_shards_are_byte_identical_and_keyed_alike(local_run, tiny_model_dir):
    from tokenweight.flows.pipeline import pipeline

    root, data, local = local_run
    store = _without_score(local, root / "dask")
    records = pipeline(_cfg(tiny_model_dir, store, data, threads_per_worker=1), until="score")
    assert not records["score"].cached
    assert _score_dir(store).name == _score_dir(local).name  # the key does not depend on the runner
    assert _shards(_score_dir(store)) == _shards(_score_dir(local))
    counts = [json.loads((_score_dir(s) / "_manifest.json").read_text())["counts"] for s in (local, store)]
    for name in ("tokens", "scored_per_fold", "disc_own_input", "models"):
        assert counts[0][name] == counts[1][name]


def test_a_killed_worker_loses_only_its_shard_which_another_worker_computes(local_run, tiny_model_dir,
                                                                           monkeypatch):
    from prefect.client.orchestration import get_client

    from tokenweight.flows.pipeline import pipeline
    from tokenweight.shard_fanout import gpu_limit_name

    root, data, local = local_run
    store = _without_score(local, root / "dask-killed")
    once = root / "killed-once"
    monkeypatch.setenv("TOKENWEIGHT_FAULT", "score.shard_task@2")  # a worker's second shard
    monkeypatch.setenv("TOKENWEIGHT_FAULT_ONCE", str(once))
    pipeline(_cfg(tiny_model_dir, store, data, gpus_per_worker=1), until="score")
    assert once.exists()  # a worker really died
    assert _shards(_score_dir(store)) == _shards(_score_dir(local))
    # gpus_per_worker: each shard held the one-slot limit of its (here: label-only) GPU.
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(gpu_limit_name()).limit == 1


def test_without_retries_the_stage_fails_keeping_the_other_shards_and_resumes_them(local_run, tiny_model_dir,
                                                                                  monkeypatch):
    import dask

    from tokenweight.flows.pipeline import pipeline
    from tokenweight.shard_fanout import ShardsFailed

    root, data, local = local_run
    store = _without_score(local, root / "dask-no-retry")
    monkeypatch.setenv("TOKENWEIGHT_FAULT", "score.shard_task@2")
    monkeypatch.setenv("TOKENWEIGHT_FAULT_ONCE", str(root / "killed-no-retry"))
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with pytest.raises(Exception, match=r"score: 1 of 4 shards failed .*KilledWorker") as failed:
            pipeline(_cfg(tiny_model_dir, store, data), until="score")
    assert isinstance(failed.value, ShardsFailed) or "ShardsFailed" in repr(failed.value)
    [staging] = (store / "_work" / "score").iterdir()
    kept = sorted(p.name for p in (staging / "out").glob("part-*.parquet"))
    assert len(kept) == N_SHARDS - 1
    monkeypatch.delenv("TOKENWEIGHT_FAULT")
    pipeline(_cfg(tiny_model_dir, store, data, "local"), until="score")  # in-process this time
    manifest = json.loads((_score_dir(store) / "_manifest.json").read_text())
    assert manifest["counts"]["shards_resumed"] == N_SHARDS - 1
    assert _shards(_score_dir(store)) == _shards(_score_dir(local))


def test_the_runner_reaches_no_stage_key(tiny_model_dir, tmp_path):
    from tokenweight.config import RunnerConfig

    from test_stage_keys import keys_to_eval

    data = write_jsonl(tmp_path / "data.jsonl", chat_rows(6))
    base = _cfg(tiny_model_dir, tmp_path / "s", data, "local")
    for field, value in {"kind": "dask", "address": "tcp://elsewhere:8786", "workers": 7,
                         "threads_per_worker": 3, "gpus_per_worker": 1}.items():
        cfg = base.model_copy(update={"runner": RunnerConfig(**{field: value})})
        assert keys_to_eval(cfg) == keys_to_eval(base), field
