"""What every stage shares: the cached-or-run wrapper, progress reporting and shard I/O."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..store import StageRecord, StageWriter, Store, verify_output

SHARD_GLOB = "part-*.parquet"


def logger() -> logging.Logger:
    """Prefect's run logger inside a flow or task run, a plain logger elsewhere."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()  # type: ignore[return-value]
    except Exception:  # outside a Prefect run context
        return logging.getLogger("tokenweight")


def run_stage(store: Store, stage: str, key: str, work: Callable[[StageWriter], StageRecord]) -> dict[str, Any]:
    """Return the finished output for `key` if the store has it, else do `work` and commit it.

    The manifest check keeps resume correct when Prefect's own cache is empty (a new database)."""
    if store.manifest(stage, key) is not None:
        logger().info("%s %s: output exists in the store, nothing to do", stage, key)
        return {**StageRecord(stage, key, store.stage_uri(stage, key)).to_dict(), "cached": True}
    with store.begin(stage, key) as writer:
        record = work(writer)
    return {**record.to_dict(), "cached": False}


class Progress:
    """Counts with rate and time left, to a tqdm bar on the terminal and to the run's log."""

    def __init__(self, desc: str, total: int | None, unit: str, log_every_s: float = 10.0):
        from tqdm.auto import tqdm

        self.desc, self.total, self.unit, self.log_every_s = desc, total, unit, log_every_s
        self.done, self.started, self.last_log = 0, time.time(), time.time()
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def update(self, n: int, **postfix: Any) -> None:
        self.done += n
        self.bar.update(n)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        now = time.time()
        if now - self.last_log >= self.log_every_s or self.done == self.total:
            self.last_log = now
            rate = self.done / max(now - self.started, 1e-9)
            extra = " ".join(f"{k}={v}" for k, v in postfix.items())
            if self.total:
                left = (self.total - self.done) / rate if rate > 0 else float("nan")
                logger().info("%s: %d/%d %s, %.1f %s/s, %.0fs left %s", self.desc, self.done, self.total,
                              self.unit, rate, self.unit, left, extra)
            else:
                logger().info("%s: %d %s, %.1f %s/s %s", self.desc, self.done, self.unit, rate, self.unit, extra)

    def close(self) -> float:
        self.bar.close()
        return time.time() - self.started


def write_shard(directory: Path, index: int, table: pa.Table, metadata: dict[str, str] | None = None) -> str:
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    name = f"part-{index:05d}.parquet"
    pq.write_table(table, directory / name, compression="zstd")
    return name


def input_dir(store: Store, record: dict[str, Any]) -> Path:
    """A verified stage output's local directory (it must have a manifest)."""
    verify_output(store, record["stage"], record["key"])
    return store.local_dir(record["stage"], record["key"])


def shard_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob(SHARD_GLOB))


def iter_shards(directory: Path, columns: list[str] | None = None) -> Iterator[tuple[Path, pa.Table]]:
    for path in shard_paths(directory):
        yield path, pq.read_table(path, columns=columns)


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "_manifest.json").read_text())
