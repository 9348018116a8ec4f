"""Fan a sharded stage's shards out: in this process, or as Prefect tasks on a Dask cluster.

A sharded stage (score, critical) states one shard's work as a module-level function
`compute(job, index) -> result` over a picklable `job`; `fan_out` runs it for every index still
to do and hands each result to `on_result` here, in the stage's own process, as it arrives, where
the stage's StageWriter writes the shard. So:

- a shard is written by the same code wherever it was computed, and its bytes do not depend on
  the runner (which is why `runner` is part of no stage key);
- the workers only read the store (the stage's inputs); staging and the commit stay here, under
  the stage's lock;
- a shard whose worker dies is the only one lost. Dask computes it again on another worker
  (`distributed.scheduler.allowed-failures`, 3 by default); where it gives up, the stage fails
  once every other shard is in, and keeps them, so the next run computes that one only.

Under `runner.kind: dask` each shard is a Prefect task run (`score-shard-3`), so the UI shows each
shard and its state. With `runner.gpus_per_worker`, a shard task asks Dask for that many units of
the resource `GPU` and holds the Prefect global concurrency limit of its device
(`tokenweight-gpu-<host>-<CUDA_VISIBLE_DEVICES>`, one slot), so two shards never share a GPU, even
from two clusters or deployments.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .config import RunnerConfig
from .faults import crash_point
from .run_log import logger

R = TypeVar("R")


class ShardsFailed(RuntimeError):
    """Some shards could not be computed; every other finished shard was written and is kept."""


def fan_out(runner: RunnerConfig, stage: str, compute: Callable[[Any, int], R], job: Any,
            indexes: Sequence[int], on_result: Callable[[int, R], None]) -> None:
    """`on_result(i, compute(job, i))` for each index, here (`local`) or from a Dask worker."""
    if runner.kind == "local" or not indexes:
        for index in indexes:
            on_result(index, _shard_body(stage, compute, job, index, None, 0))
        return
    _on_dask(runner, stage, compute, job, list(indexes), on_result)


def here(path: str, fetch: Callable[[], Path]) -> Path:
    """An input's directory in this process: `path` where this machine sees it (the stage's own
    process, a worker on the same machine or a shared filesystem), else `fetch()` (a worker
    elsewhere, which downloads and verifies its own copy from the store)."""
    return Path(path) if Path(path).is_dir() else Path(fetch())


def _shard_body(stage: str, compute: Callable[[Any, int], R], job: Any, index: int, threads: int | None,
                gpus: int) -> R:
    """One shard, where it runs: the worker's torch threads, the fault point, the GPU's slot."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    crash_point(f"{stage}.shard_task")
    if not gpus:
        return compute(job, index)
    from prefect.concurrency.sync import concurrency

    name = gpu_limit_name()
    _ensure_limit(name)
    with concurrency(name, occupy=1, strict=True):
        return compute(job, index)


def gpu_limit_name() -> str:
    """The Prefect global concurrency limit of the GPU this process uses."""
    device = os.environ.get("CUDA_VISIBLE_DEVICES", "all").replace(",", "_") or "none"
    return f"tokenweight-gpu-{socket.gethostname()}-{device}"


def _ensure_limit(name: str) -> None:
    """Create the one-slot limit if it is missing (two workers may race: both end with one limit)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass


def _on_dask(runner: RunnerConfig, stage: str, compute: Callable[[Any, int], R], job: Any,
             indexes: list[int], on_result: Callable[[int, R], None]) -> None:
    try:
        import dask
        from distributed import as_completed
        from prefect_dask import DaskTaskRunner
    except ImportError as err:
        raise RuntimeError(f"runner.kind dask needs prefect-dask and distributed: pip install -e '.[dask]' ({err})") from None
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    shard_task = task(_shard_body, name=f"{stage}-shard", task_run_name=f"{stage}-shard-{{index}}",
                      cache_policy=NO_CACHE, persist_result=False)
    if runner.address:
        task_runner = DaskTaskRunner(address=runner.address)
    else:
        # One shard at a time per worker process: a shard's forward passes use the torch threads.
        # The workers report their task runs to this process's Prefect API, also when it is the
        # temporary server of a run without PREFECT_API_URL (else each worker would start its own).
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            api_url = str(client.api_url)
        resources = {"GPU": runner.gpus_per_worker} if runner.gpus_per_worker else None
        task_runner = DaskTaskRunner(cluster_kwargs={"n_workers": runner.workers, "threads_per_worker": 1,
                                                     "processes": True, "resources": resources,
                                                     "dashboard_address": ":0", "env": {"PREFECT_API_URL": api_url}})
    annotations = {"resources": {"GPU": runner.gpus_per_worker}} if runner.gpus_per_worker else {}
    started, failed, received = time.time(), {}, set()
    # A local cluster's scheduler sends a worker its next shard only once the last is done: a shard
    # is long, and a dead worker's queued shards would count as failed on it too.
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}), task_runner, \
            dask.annotate(**annotations):
        futures = {}
        for index in indexes:
            future = task_runner.submit(shard_task, parameters={
                "stage": stage, "compute": compute, "job": job, "index": index,
                "threads": runner.threads_per_worker, "gpus": runner.gpus_per_worker})
            futures[future.wrapped_future.key] = (index, future)
        logger().info("%s: %d shards submitted to Dask (%s)", stage, len(indexes),
                      runner.address or f"a local cluster of {runner.workers} workers")
        for done in as_completed([f.wrapped_future for _, f in futures.values()], loop=task_runner.client.loop):
            index, future = futures[done.key]
            if index in received:  # recomputed after its worker died: already written
                continue
            try:
                result = future.result()
            except Exception as err:  # a worker that died (KilledWorker) or the shard's own error
                failed[index] = f"{type(err).__name__}: {err}"
                logger().error("%s: shard %d failed: %s", stage, index, failed[index])
                continue
            received.add(index)
            on_result(index, result)
    logger().info("%s: %d shards from Dask in %.1fs", stage, len(indexes) - len(failed), time.time() - started)
    if failed:
        lines = "; ".join(f"shard {i}: {why}" for i, why in sorted(failed.items()))
        raise ShardsFailed(f"{stage}: {len(failed)} of {len(indexes)} shards failed ({lines}); the other "
                           f"{len(indexes) - len(failed)} are written and kept, and the next run computes only the failed ones")
