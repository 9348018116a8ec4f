"""What every stage shares: the cached-or-run wrapper, progress reporting and shard I/O."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..preflight import verdict_lines
from ..run_log import logger
from ..store import StageRecord, StageWriter, Store, verify_output

SHARD_GLOB = "part-*.parquet"


def run_stage(store: Store, stage: str, key: str, work: Callable[[StageWriter], StageRecord],
              resumable: bool = False) -> dict[str, Any]:
    """Return the finished output for `key` if the store has it, else do `work` and commit it.

    The manifest check keeps resume correct when Prefect's own cache is empty (a new database).
    The stage's lock makes a concurrent run with the same key wait for this one and reuse its
    output; `resumable` stages keep the shards of an interrupted run (StageWriter)."""
    cached = {**StageRecord(stage, key, store.stage_uri(stage, key)).to_dict(), "cached": True}
    if store.manifest(stage, key) is not None:
        logger().info("%s %s: output exists in the store, nothing to do", stage, key)
        return cached
    waited = lambda holder: logger().info("%s %s: waiting for %s, which is computing it", stage, key, holder)  # noqa: E731
    with store.lock(stage, key, on_wait=waited):
        if store.manifest(stage, key) is not None:
            logger().info("%s %s: another run finished it, reusing its output", stage, key)
            return cached
        with store.begin(stage, key, resumable) as writer:
            record = work(writer)
    publish_artifact(store, stage, key)
    return {**record.to_dict(), "cached": False}


def publish_artifact(store: Store, stage: str, key: str) -> None:
    """A markdown artifact on the stage's Prefect task run: counts, timing, output path and, for
    the weights stage, the class summary and report.html (nothing outside a Prefect run)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:
        return
    manifest = store.manifest(stage, key) or {}
    lines = [f"### {stage} `{key}`", "", f"output: `{store.stage_uri(stage, key)}`  ",
             f"took {manifest.get('seconds', 0):.1f}s, {len(manifest.get('files', {}))} files", "",
             "| count | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in _flat(manifest.get("counts", {}))]
    summary_path = store.local_dir(stage, key) / "summary.json"
    if stage == "weights" and summary_path.exists():
        s = json.loads(summary_path.read_text())
        lines += ["", f"boilerplate share **{s['boilerplate_share']:.1%}**, mean LD boilerplate "
                      f"{s['mean_ld']['boilerplate']}, reasoning {s['mean_ld']['reasoning']}  "]
        for cls in ("boilerplate", "reasoning"):
            top = ", ".join(f"`{t['token']!r}`×{t['count']}" for t in s["top_tokens"][cls][:10])
            lines.append(f"most frequent {cls}: {top}  ")
        if "preflight" in s:
            lines += ["", *(f"{line}  " for line in verdict_lines(s["preflight"]))]
        if "report.html" in manifest.get("files", {}):
            lines.append(f"token report: `{store.stage_uri(stage, key)}/report.html`")
    create_markdown_artifact(markdown="\n".join(lines), key=f"tokenweight-{stage.replace('_', '-')}-output",
                             description=f"tokenweight {stage} output {key}")


def _flat(counts: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in counts.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


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


def input_dir(store: Store, record: dict[str, Any]) -> Path:
    """A stage output's local directory, once its files match their manifest's sha256."""
    return verify_output(store, record["stage"], record["key"])[1]


def shard_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob(SHARD_GLOB))


def iter_shards(directory: Path, columns: list[str] | None = None) -> Iterator[tuple[Path, pa.Table]]:
    for path in shard_paths(directory):
        yield path, pq.read_table(path, columns=columns)


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "_manifest.json").read_text())
