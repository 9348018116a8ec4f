"""The Parquet shards of a stage output: their file names and reading them one at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# A sharded stage output's data files (StageWriter.write_shard names them `part-{index:05d}.parquet`).
SHARD_GLOB = "part-*.parquet"


def shard_files(directory: Path) -> list[Path]:
    """The shards of a stage output directory, in index order."""
    return sorted(Path(directory).glob(SHARD_GLOB))


def iter_shards(directory: Path, columns: list[str] | None = None) -> Iterator[tuple[Path, pa.Table]]:
    """(path, table) per shard, in index order, one table in memory at a time."""
    for path in shard_files(directory):
        yield path, pq.read_table(path, columns=columns)
