"""The stage contract's storage side: keys, the fsspec store, atomic outputs and manifests.

A stage writes to `{store}/{stage}/{key}/`. Files are staged under temporary names, moved into
place, and `_manifest.json` (files with sizes and sha256, counts, config, input keys, timings) is
written last: an output exists exactly when its manifest does, and nothing is read before its
files match the manifest's sha256. `{store}/_work/` holds what a crashed run can resume from
(finished shards, checkpoints) and `{store}/_locks/` one lock per stage output (stage_lock.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .faults import crash_point
from .file_digests import SymlinkError, digest_files, first_problem
from .run_log import logger
from .stage_lock import is_locked, stage_lock

MANIFEST = "_manifest.json"
# The file that marks a local directory as a tokenweight store: only a marked store is swept.
STORE_MARKER = ".tokenweight-store"
_TMP_PREFIX = ".tmp-"
_SHARD_NAME = re.compile(r"part-(\d{5})\.parquet")
_KEY = re.compile(r"[0-9a-f]{16}")
# How long a run waits for another run that is computing the same stage output (it then reuses it).
LOCK_WAIT_S = 24 * 3600.0


def stage_key(stage: str, version: str, config: Any, inputs: dict[str, str], extra: Any = None) -> str:
    """Hash of everything that determines a stage's output: same key, same output."""
    payload = json.dumps(
        {"stage": stage, "version": version, "config": config, "inputs": inputs, "extra": extra},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StageRecord:
    """What a stage returns, passes to the next and Prefect persists: which output, where, and
    whether this run found it done (`cached`) rather than computing it."""

    stage: str
    key: str
    uri: str
    cached: bool = False

    def to_dict(self) -> dict[str, str | bool]:
        """The flat JSON object Prefect's record holds (prefect_records.check_record)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StageRecord":
        return cls(data["stage"], data["key"], data["uri"], bool(data.get("cached", False)))


class StoreError(RuntimeError):
    """The store cannot be used (not writable, or an output does not match its manifest)."""


class Store:
    """An fsspec URL (a local directory by default) holding every stage's outputs."""

    def __init__(self, url: str, lock_wait_s: float = LOCK_WAIT_S):
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            # A user part (`https://TOKEN@host/...`, `s3://key:secret@bucket`) would end up in logs,
            # manifests and Prefect's records; fsspec reads credentials from the environment or its
            # config instead (e.g. AWS_SECRET_ACCESS_KEY for s3://). The message never repeats it.
            raise StoreError(f"the store URL ({parts.scheme}://...@{parts.hostname or ''}...) holds credentials "
                             "in its user part: give them through the environment or fsspec's config, not the URL")
        self.url = url.rstrip("/") or "/"
        self.lock_wait_s = lock_wait_s
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.is_local:
            self.root = os.path.abspath(self.root)

    def stage_uri(self, stage: str, key: str) -> str:
        _check_name(stage)
        _check_name(key)
        return f"{self.root}/{stage}/{key}"

    def check_writable(self) -> None:
        """Fail early on a store we cannot write; mark a new local store as tokenweight's."""
        probe = f"{self.root}/{_TMP_PREFIX}probe-{uuid.uuid4().hex}"
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            if self.is_local:
                self._mark()
            with self.fs.open(probe, "wb") as f:
                f.write(b"ok")
            self.fs.rm(probe)
        except OSError as err:
            raise StoreError(f"store {self.url} is not writable: {err.strerror or err}") from None

    def _mark(self) -> None:
        """Write STORE_MARKER in a local store that is new (empty) or was made by tokenweight before
        markers existed (it has `_locks/`); a directory holding other things stays unmarked, and
        the orphan sweep leaves it alone."""
        root = Path(self.root)
        marker = root / STORE_MARKER
        if not marker.exists() and (not any(root.iterdir()) or (root / "_locks").is_dir()):
            marker.write_text("This directory is a tokenweight store (stage outputs, _work, _locks, _prefect).\n")

    def is_marked(self) -> bool:
        return self.is_local and (Path(self.root) / STORE_MARKER).is_file()

    def manifest(self, stage: str, key: str) -> dict[str, Any] | None:
        """The stage's manifest, or None when the output is absent or its record is unreadable."""
        path = f"{self.stage_uri(stage, key)}/{MANIFEST}"
        # s3fs caches listings per process and sizes (or misses) a file from them: another run may
        # have written this manifest since, so ask the store itself.
        self.fs.invalidate_cache(path)
        try:
            data = json.loads(self.fs.cat_file(path).decode("utf-8"))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return None  # a truncated or corrupt record is a cache miss, not a crash
        return data if isinstance(data, dict) and data.get("key") == key else None

    def local_dir(self, stage: str, key: str, manifest: dict[str, Any] | None = None) -> Path:
        """A local directory with the stage's files (the store itself when it is local). A remote
        store's files are downloaded into the local cache once; given the store's `manifest`, a
        cached copy made from another manifest (the output was computed again since) is replaced."""
        uri = self.stage_uri(stage, key)
        if self.is_local:
            return Path(uri)
        # Keyed by the store's URL, as work_dir is: two stores may hold the same key, not the same files.
        cache = _cache_root() / self._url_hash() / stage / key
        if manifest is not None and (cache / MANIFEST).exists() and not _same_json(cache / MANIFEST, manifest):
            stale = cache.with_name(cache.name + _TMP_PREFIX + uuid.uuid4().hex[:8])
            try:
                cache.rename(stale)
            except FileNotFoundError:
                pass  # another process replaced it first
            shutil.rmtree(stale, ignore_errors=True)
        if not (cache / MANIFEST).exists():
            tmp = cache.with_name(cache.name + _TMP_PREFIX + uuid.uuid4().hex[:8])
            self.fs.get(uri + "/", str(tmp), recursive=True)
            try:
                tmp.rename(cache)
            except OSError:  # another process put its copy there first
                shutil.rmtree(tmp)
        return cache

    def work_dir(self, stage: str, key: str) -> Path:
        """A local scratch directory that outlives a crash (staged files, checkpoints to resume
        from). It is removed once the output is committed and is never an output itself."""
        _check_name(stage)
        _check_name(key)
        if self.is_local:
            return Path(self.root) / "_work" / stage / key
        return _cache_root() / "_work" / self._url_hash() / stage / key

    def _url_hash(self) -> str:
        """The store's directory name in the local cache (remote stores)."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:12]

    @contextmanager
    def lock(self, stage: str, key: str, on_wait: Callable[[str], None] = lambda _: None) -> Iterator[None]:
        """Hold the one-writer lock of a stage output (see stage_lock.py)."""
        _check_name(stage)
        _check_name(key)
        with stage_lock(self, stage, key, self.lock_wait_s, on_wait):
            yield

    def begin(self, stage: str, key: str, resumable: bool = False) -> "StageWriter":
        """Start writing a stage output; hold `lock(stage, key)` around it."""
        return StageWriter(self, stage, key, resumable)

    def sweep_orphans(self) -> list[str]:
        """Remove temporary files crashed runs left behind; returns what was removed.

        Only in a marked local store (STORE_MARKER), and only tokenweight's own names: `.tmp-*` in
        a stage output `{stage}/{16 hex}/` or its staging directory `_work/{stage}/{16 hex}/out/`
        whose lock no live run holds, and write probes `.tmp-probe-*` at the root. Finished
        shards in `_work` stay: they are what a rerun of that key resumes from."""
        if not self.is_marked():
            if self.is_local:
                logger().info("store %s is not marked as a tokenweight store (%s): leaving its temporary files "
                              "alone", self.root, STORE_MARKER)
            return []
        removed = []
        root = Path(self.root)
        candidates = [(p, p.parts[-3], p.parts[-2]) for p in root.glob("*/*/.tmp-*")]  # in an output
        candidates += [(p, p.parts[-4], p.parts[-3]) for p in root.glob("_work/*/*/out/.tmp-*")]  # staged
        candidates = [c for c in candidates if _KEY.fullmatch(c[2]) and not c[1].startswith((".", "_"))]
        candidates += [(p, None, None) for p in root.glob(f"{_TMP_PREFIX}probe-*")]  # write probes
        for path, stage, key in sorted(candidates):
            if stage is not None and is_locked(self, stage, key):
                continue  # a live run is writing it
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
            removed.append(str(path))
        return removed


def _cache_root() -> Path:
    return Path(os.environ.get("TOKENWEIGHT_CACHE", Path.home() / ".cache" / "tokenweight"))


def _same_json(path: Path, value: Any) -> bool:
    try:
        return json.loads(path.read_bytes()) == value
    except (OSError, ValueError):
        return False


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith(_TMP_PREFIX):
        raise StoreError(f"invalid store path component {name!r}")


class StageWriter:
    """Stages a stage's files, then moves them into the store and writes the manifest last.

    Use as a context manager, holding the stage's lock: files go into `writer.dir`, a local
    staging directory (`{store}/_work/{stage}/{key}/out`, on the destination's filesystem for a
    local store, so the final moves are atomic renames); `commit(**info)` publishes them.

    A `resumable` (sharded) stage writes shards with `write_shard`, each under a temporary name
    renamed into place once complete, and the staging directory survives a crash: the next run
    with the same key finds those shards in `done_shards()` and computes only the rest. Anything
    else a crashed run left (temporary files, a half-published output without a manifest) is
    removed when the writer starts.
    """

    def __init__(self, store: Store, stage: str, key: str, resumable: bool = False):
        self.store, self.stage, self.key, self.resumable = store, stage, key, resumable
        self.uri = store.stage_uri(stage, key)
        self.started = time.time()
        self.dir = store.work_dir(stage, key) / "out"
        if self.dir.exists():
            for path in self.dir.iterdir():
                if not (resumable and _SHARD_NAME.fullmatch(path.name)):
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        # An output whose manifest exists but cannot be read, or names another key, was damaged or
        # edited by hand: move it aside (never delete what may be someone's evidence) and say so.
        if store.manifest(stage, key) is None and store.fs.exists(f"{self.uri}/{MANIFEST}"):
            aside = f"{store.root}/_quarantine/{stage}/{key}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
            store.fs.makedirs(aside.rsplit("/", 1)[0], exist_ok=True)
            store.fs.mv(self.uri, aside, recursive=True)
            logger().warning("%s %s: its %s is unreadable or not this output's (edited by hand?); moved the output "
                             "to %s and computing it again", stage, key, MANIFEST, aside)
        # A run killed while moving files into place leaves some of them without a manifest: not an
        # output. Its shards are whole (they were renamed there), so a resumable stage takes them back.
        if store.manifest(stage, key) is None and store.fs.exists(self.uri):
            if resumable and store.is_local:
                for path in Path(self.uri).iterdir():
                    if _SHARD_NAME.fullmatch(path.name):
                        os.replace(path, self.dir / path.name)
            store.fs.rm(self.uri, recursive=True)

    def __enter__(self) -> "StageWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None or not self.resumable:
            shutil.rmtree(self.dir, ignore_errors=True)
            _remove_empty(self.dir.parent)

    def done_shards(self) -> set[int]:
        """Indexes of the shards a previous, interrupted run of this key completed."""
        return {int(m.group(1)) for p in self.dir.iterdir() if (m := _SHARD_NAME.fullmatch(p.name))}

    def write_shard(self, index: int, table: pa.Table, metadata: dict[str, str] | None = None) -> str:
        """Write `part-{index:05d}.parquet`: serialised, written under a temporary name, synced,
        then renamed, so that a shard with its final name is always whole."""
        if metadata:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        name = f"part-{index:05d}.parquet"
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue().to_pybytes()
        tmp = self.dir / f"{_TMP_PREFIX}{name}"
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            crash_point(f"{self.stage}.mid_shard")
            f.write(data[len(data) // 2:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)
        crash_point(f"{self.stage}.shard_done")
        return name

    def commit(self, **info: Any) -> StageRecord:
        try:
            files = digest_files(self.dir)
        except SymlinkError as e:
            raise StoreError(f"{e.path}: a stage output may not contain symlinks") from None
        fs = self.store.fs
        for rel in files:
            dest = f"{self.uri}/{rel}"
            if self.store.is_local:
                Path(dest).parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.dir / rel, dest)
            else:
                fs.put_file(str(self.dir / rel), dest)
            crash_point(f"{self.stage}.mid_commit")
        crash_point(f"{self.stage}.before_manifest")
        manifest = {
            "stage": self.stage,
            "key": self.key,
            "files": files,
            "seconds": round(time.time() - self.started, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **info,
        }
        body = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
        if self.store.is_local:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
            tmp = self.dir / MANIFEST
            with open(tmp, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, f"{self.uri}/{MANIFEST}")
        else:
            with fs.open(f"{self.uri}/{MANIFEST}", "wb") as f:
                f.write(body)
        return StageRecord(self.stage, self.key, self.uri)


def _remove_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass  # not empty (checkpoints, another run's files) or already gone


def verify_output(store: Store, stage: str, key: str) -> tuple[dict[str, Any], Path]:
    """The manifest and local directory of a finished output whose files all match their recorded
    size and sha256 and stay inside the store (no symlink, no `..` out of it)."""
    manifest = store.manifest(stage, key)
    if manifest is None:
        raise StoreError(f"{stage} output {key} has no manifest in {store.url}: it was never finished")
    directory = store.local_dir(stage, key, manifest)
    problem = first_problem(directory, manifest["files"])
    if problem is None:
        return manifest, directory
    path = problem.path
    if problem.kind == "outside":
        raise StoreError(f"{path} leads out of the stage output: refusing to read it")
    if problem.kind == "missing":
        raise StoreError(f"{path} is listed in the manifest but missing")
    if problem.kind == "bytes":
        raise StoreError(f"{path} has {problem.actual} bytes, the manifest says {problem.expected}")
    raise StoreError(f"{path} does not match its manifest's sha256: the output was changed after it "
                     f"was written; delete {store.stage_uri(stage, key)} to compute it again")
