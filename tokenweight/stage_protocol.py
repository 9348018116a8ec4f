"""The stage protocol, written once: what a stage declares, and the one runner that keys, locks,
caches, commits and announces every stage.

A stage is a `Stage`: its name and version, the config section its key holds, its input keys (a
function of the records it is given), what else determines its output (`extra`: a source file's
content, the device placement) and `work`, which reads its inputs, calls components and writes
files into `run.dir`. `work` returns what the manifest should say besides the files (counts, what
was trained); the runner does everything else, the same way for every stage:

    key = stage.key(cfg, **records)          # once per run
    output exists in the store?  -> its record, cached
    else hold the output's lock, begin a StageWriter, call work, commit (files, sha256, then the
    manifest with config and inputs, both from the declaration), remove its work directory,
    post the Prefect artifact.

`run_stage` runs a stage in this process; `run_task` runs it as a Prefect task whose cache key is
the stage key and whose record is kept in the store (prefect_records.py). A new stage is one task
module declaring a `Stage`, one config section and one line in the flow.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import PipelineConfig
from .preflight import verdict_lines
from .run_log import logger
from .stage_outputs import WeightsSummary
from .store import StageRecord, StageWriter, Store, stage_key, verify_output


def _no_extra(cfg: PipelineConfig, **params: Any) -> None:
    return None


@dataclass(frozen=True)
class Stage:
    """One stage's declaration (see the module docstring)."""

    name: str
    version: str
    # The settings that determine the output: part of the key and recorded in the manifest.
    config: Callable[[PipelineConfig], Any]
    # (cfg, **params) -> {input name: key}: part of the key and recorded in the manifest.
    inputs: Callable[..., dict[str, str]]
    # (run, **params) -> what the manifest says besides files, config and inputs.
    work: Callable[..., dict[str, Any]]
    # (cfg, **params) -> what else determines the output (part of the key only).
    extra: Callable[..., Any] = _no_extra
    # Sharded stages keep the finished shards of an interrupted run (StageWriter).
    resumable: bool = False
    # The Prefect task run's name, formatted with the task's parameters.
    run_name: str | None = None
    description: str = ""

    def key(self, cfg: PipelineConfig, **params: Any) -> str:
        """Hash of everything that determines the output: same key, same output."""
        return stage_key(self.name, self.version, self.config(cfg), self.inputs(cfg, **params),
                         self.extra(cfg, **params))


def section(name: str) -> Callable[[PipelineConfig], dict[str, Any]]:
    """`Stage.config` for a stage whose key holds its whole config section."""
    return lambda cfg: getattr(cfg, name).model_dump(mode="json")


@dataclass(frozen=True)
class StageRun:
    """What `work` gets: the run's config and store, its key and input keys, and the writer."""

    cfg: PipelineConfig
    store: Store
    key: str
    inputs: dict[str, str]
    writer: StageWriter

    @property
    def dir(self) -> Path:
        """Where the output's files go (a staging directory, published by the commit)."""
        return self.writer.dir

    @property
    def work_dir(self) -> Path:
        """Scratch space that outlives a crash (checkpoints); removed once the output is committed."""
        return self.store.work_dir(self.writer.stage, self.key)

    def input_dir(self, record: StageRecord) -> Path:
        """A finished input's local directory, once its files match their manifest's sha256."""
        return verify_output(self.store, record.stage, record.key)[1]


def run_stage(stage: Stage, cfg: PipelineConfig, store: Store, key: str | None = None,
              **params: Any) -> StageRecord:
    """The stage's output for these inputs: from the store if it is there, else computed, committed
    and announced. A concurrent run with the same key waits for this one and reuses its output."""
    key = key or stage.key(cfg, **params)
    cached = StageRecord(stage.name, key, store.stage_uri(stage.name, key), cached=True)
    # The manifest check keeps resume correct when Prefect's own cache is empty (a new database).
    if store.manifest(stage.name, key) is not None:
        logger().info("%s %s: output exists in the store, nothing to do", stage.name, key)
        return cached
    waited = lambda holder: logger().info("%s %s: waiting for %s, which is computing it",  # noqa: E731
                                          stage.name, key, holder)
    with store.lock(stage.name, key, on_wait=waited):
        if store.manifest(stage.name, key) is not None:
            logger().info("%s %s: another run finished it, reusing its output", stage.name, key)
            return cached
        inputs = stage.inputs(cfg, **params)
        with store.begin(stage.name, key, stage.resumable) as writer:
            info = stage.work(StageRun(cfg, store, key, inputs, writer), **params)
            record = writer.commit(**info, config=stage.config(cfg), inputs=inputs)
        # Checkpoints and finished shards are only there to resume from; the output is out.
        shutil.rmtree(store.work_dir(stage.name, key), ignore_errors=True)
    publish_artifact(store, stage.name, key)
    return record


@functools.cache
def stage_task(stage: Stage):
    """The stage as a Prefect task: the flow computes the key once and passes it in; its record is
    persisted as plain JSON (prefect_records.py), wherever run_task points its storage."""
    from prefect import task

    from .prefect_records import record_options

    def body(cfg: PipelineConfig, store: Store, key: str, params: dict[str, Any]) -> dict[str, Any]:
        return run_stage(stage, cfg, store, key, **params).to_dict()

    body.__doc__ = stage.description
    return task(body, name=stage.name, task_run_name=stage.run_name, description=stage.description,
                cache_key_fn=lambda ctx, p: p["key"], **record_options())


def run_task(stage: Stage, cfg: PipelineConfig, store: Store, records, run_name: str | None = None,
             **params: Any) -> StageRecord:
    """Run the stage as a Prefect task inside a flow, its record in `records` (the store's
    `_prefect`); the record says `cached` when Prefect or the store already had the output."""
    key = stage.key(cfg, **params)
    options = {"result_storage": records, **({"task_run_name": run_name} if run_name else {})}
    task = stage_task(stage).with_options(**options)
    state = task(cfg=cfg, store=store, key=key, params=params, return_state=True)
    record = StageRecord.from_dict(state.result())
    if store.manifest(record.stage, record.key) is None:
        # Prefect remembered an output the store has lost (deleted by hand): compute it again.
        state = task.with_options(refresh_cache=True)(cfg=cfg, store=store, key=key, params=params,
                                                      return_state=True)
        record = StageRecord.from_dict(state.result())
    return replace(record, cached=record.cached or state.name == "Cached")


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
    lines += [f"| {name} | {value} |" for name, value in _dotted_counts(manifest.get("counts", {}))]
    summary = WeightsSummary.read(store.local_dir(stage, key)) if stage == "weights" else None
    if summary is not None:
        lines += ["", f"boilerplate share **{summary.boilerplate_share:.1%}**, mean LD boilerplate "
                      f"{summary.mean_ld['boilerplate']}, reasoning {summary.mean_ld['reasoning']}  "]
        for cls in ("boilerplate", "reasoning"):
            top = ", ".join(f"`{t['token']!r}`×{t['count']}" for t in summary.top_tokens[cls][:10])
            lines.append(f"most frequent {cls}: {top}  ")
        if summary.preflight:
            lines += ["", *(f"{line}  " for line in verdict_lines(summary.preflight))]
        if "report.html" in manifest.get("files", {}):
            lines.append(f"token report: `{store.stage_uri(stage, key)}/report.html`")
    create_markdown_artifact(markdown="\n".join(lines), key=f"tokenweight-{stage.replace('_', '-')}-output",
                             description=f"tokenweight {stage} output {key}")


def _dotted_counts(counts: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested manifest counts as (`a.b`, value) rows."""
    for name, value in counts.items():
        if isinstance(value, dict):
            yield from _dotted_counts(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value
