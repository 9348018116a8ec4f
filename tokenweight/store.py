"""The stage contract's storage side: keys, the fsspec store, atomic outputs and manifests.

A stage writes to `{store}/{stage}/{key}/`. Files are staged under temporary names, moved into
place, and `_manifest.json` (files with sizes and sha256, counts, config, input keys, timings) is
written last: an output exists exactly when its manifest does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec

MANIFEST = "_manifest.json"
_TMP_PREFIX = ".tmp-"


def stage_key(stage: str, version: str, config: Any, inputs: dict[str, str], extra: Any = None) -> str:
    """Hash of everything that determines a stage's output: same key, same output."""
    payload = json.dumps(
        {"stage": stage, "version": version, "config": config, "inputs": inputs, "extra": extra},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class StageRecord:
    """What a stage returns and Prefect persists: small and JSON-able."""

    stage: str
    key: str
    uri: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class StoreError(RuntimeError):
    """The store cannot be used (not writable, or an output does not match its manifest)."""


class Store:
    """An fsspec URL (a local directory by default) holding every stage's outputs."""

    def __init__(self, url: str):
        self.url = url.rstrip("/") or "/"
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.is_local:
            self.root = os.path.abspath(self.root)

    def stage_uri(self, stage: str, key: str) -> str:
        _check_name(stage)
        _check_name(key)
        return f"{self.root}/{stage}/{key}"

    def check_writable(self) -> None:
        probe = f"{self.root}/{_TMP_PREFIX}probe-{uuid.uuid4().hex}"
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            with self.fs.open(probe, "wb") as f:
                f.write(b"ok")
            self.fs.rm(probe)
        except OSError as err:
            raise StoreError(f"store {self.url} is not writable: {err.strerror or err}") from None

    def manifest(self, stage: str, key: str) -> dict[str, Any] | None:
        """The stage's manifest, or None when the output is absent or its record is unreadable."""
        path = f"{self.stage_uri(stage, key)}/{MANIFEST}"
        try:
            with self.fs.open(path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return None  # a truncated or corrupt record is a cache miss, not a crash
        return data if isinstance(data, dict) and data.get("key") == key else None

    def local_dir(self, stage: str, key: str) -> Path:
        """A local directory with the stage's files (the store itself when it is local)."""
        uri = self.stage_uri(stage, key)
        if self.is_local:
            return Path(uri)
        cache = _cache_root() / stage / key
        if not (cache / MANIFEST).exists():
            tmp = cache.with_name(cache.name + _TMP_PREFIX + uuid.uuid4().hex[:8])
            self.fs.get(uri + "/", str(tmp), recursive=True)
            tmp.rename(cache) if not cache.exists() else shutil.rmtree(tmp)
        return cache

    def work_dir(self, stage: str, key: str) -> Path:
        """A local scratch directory that outlives a crash (checkpoints to resume from). The stage
        removes it once its output is committed; it is never an output itself."""
        _check_name(stage)
        _check_name(key)
        root = Path(self.root) if self.is_local else _cache_root()
        return root / "_work" / stage / key

    def begin(self, stage: str, key: str) -> "StageWriter":
        return StageWriter(self, stage, key)


def _cache_root() -> Path:
    return Path(os.environ.get("TOKENWEIGHT_CACHE", Path.home() / ".cache" / "tokenweight"))


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith(_TMP_PREFIX):
        raise StoreError(f"invalid store path component {name!r}")


class StageWriter:
    """Stages a stage's files locally, then moves them into the store and writes the manifest last.

    Use as a context manager: files go into `writer.dir` (a local directory); `commit(**info)`
    publishes them. Leaving the block without commit removes the staging directory.
    """

    def __init__(self, store: Store, stage: str, key: str):
        self.store, self.stage, self.key = store, stage, key
        self.uri = store.stage_uri(stage, key)
        self.started = time.time()
        if store.is_local:
            # Staging beside the destination keeps the final moves on one filesystem (atomic renames).
            Path(self.uri).mkdir(parents=True, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.uri))
        else:
            self.dir = Path(tempfile.mkdtemp(prefix="tokenweight-"))

    def __enter__(self) -> "StageWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def commit(self, **info: Any) -> StageRecord:
        files = {}
        for path in sorted(p for p in self.dir.rglob("*") if p.is_file()):
            rel = path.relative_to(self.dir).as_posix()
            files[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        fs = self.store.fs
        for rel in files:
            dest = f"{self.uri}/{rel}"
            if self.store.is_local:
                Path(dest).parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.dir / rel, dest)
            else:
                fs.put_file(str(self.dir / rel), dest)
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
            tmp = self.dir / MANIFEST
            tmp.write_bytes(body)
            os.replace(tmp, f"{self.uri}/{MANIFEST}")
        else:
            with fs.open(f"{self.uri}/{MANIFEST}", "wb") as f:
                f.write(body)
        return StageRecord(self.stage, self.key, self.uri)


def verify_output(store: Store, stage: str, key: str) -> dict[str, Any]:
    """The manifest of a finished output whose files all match their recorded size and sha256."""
    manifest = store.manifest(stage, key)
    if manifest is None:
        raise StoreError(f"{stage} output {key} has no manifest in {store.url}: it was never finished")
    base = store.stage_uri(stage, key)
    for rel, meta in manifest["files"].items():
        try:
            size = store.fs.size(f"{base}/{rel}")
        except FileNotFoundError:
            raise StoreError(f"{base}/{rel} is listed in the manifest but missing") from None
        if size != meta["bytes"]:
            raise StoreError(f"{base}/{rel} has {size} bytes, the manifest says {meta['bytes']}")
    return manifest
