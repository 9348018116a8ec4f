"""One writer per stage output: a lock per (stage, key) in the store, so concurrent runs of the
same config compute each stage once and the others reuse it.

Local stores use the kernel's advisory lock (`flock`) on `{store}/_locks/{stage}.{key}.lock`. The
kernel drops it when the holder's process ends, SIGKILL included, so a crashed run blocks the next
one for no time at all (Prefect's file lock, by contrast, has no expiry). Other fsspec stores
(object storage has no locks) use a lease: the holder rewrites its lock object every `lease_s / 4`
seconds, and a lease not renewed for `lease_s` seconds (60 by default) is taken over. Without a
compare-and-swap that is best effort: two runs that take over the same expired lease in the same
instant can both proceed; each still writes a complete output, the manifest last.

A waiter gives up after `wait_s` seconds with an error naming the holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store

LEASE_S = 60.0


class LockTimeout(RuntimeError):
    """Another run held the stage's lock for longer than we were willing to wait."""


def _holder() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _describe(raw: bytes | str) -> str:
    try:
        h = json.loads(raw)
        return f"pid {h['pid']} on {h['host']} since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "another run"


@contextmanager
def stage_lock(store: "Store", stage: str, key: str, wait_s: float, on_wait: Callable[[str], None] = lambda _: None,
               lease_s: float = LEASE_S, poll_s: float = 0.2) -> Iterator[None]:
    """Hold the lock of `{stage}/{key}` for the block; `on_wait(holder)` is called once if we wait."""
    name = f"{stage}.{key}.lock"
    if store.is_local:
        with _flock(Path(store.root) / "_locks" / name, wait_s, on_wait, poll_s):
            yield
    else:
        with _lease(store, f"{store.root}/_locks/{name}", wait_s, on_wait, lease_s, poll_s):
            yield


def is_locked(store: "Store", stage: str, key: str) -> bool:
    """Whether a live run holds the lock now (for the orphan sweep)."""
    try:
        with stage_lock(store, stage, key, wait_s=0):
            return False
    except LockTimeout:
        return True


@contextmanager
def _flock(path: Path, wait_s: float, on_wait: Callable[[str], None], poll_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The file is never removed: unlinking a flock'ed file lets a third run lock a new inode.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, told = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _describe(os.pread(fd, 4096, 0))
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"{path}: held by {holder} for more than {wait_s:.0f}s") from None
                if not told:
                    on_wait(holder)
                    told = True
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def _lease(store: "Store", path: str, wait_s: float, on_wait: Callable[[str], None], lease_s: float,
           poll_s: float) -> Iterator[None]:
    fs, token = store.fs, uuid.uuid4().hex
    deadline, told = time.monotonic() + wait_s, False

    def write() -> None:
        with fs.open(path, "wb") as f:
            f.write(json.dumps({**_holder(), "token": token, "renewed": time.time()}).encode())

    def read() -> dict | None:
        try:
            return json.loads(fs.cat_file(path))
        except (FileNotFoundError, ValueError):
            return None

    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    while True:
        held = read()
        if held is None or time.time() - held.get("renewed", 0) > lease_s:
            write()
            time.sleep(poll_s)  # let a run that took it over in the same instant win or lose visibly
            if (read() or {}).get("token") == token:
                break
            continue
        if time.monotonic() >= deadline:
            raise LockTimeout(f"{path}: leased by {_describe(json.dumps(held))} for more than {wait_s:.0f}s")
        if not told:
            on_wait(_describe(json.dumps(held)))
            told = True
        time.sleep(poll_s)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 4):
            write()

    renewer = threading.Thread(target=renew, daemon=True, name=f"lease {path}")
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        if (read() or {}).get("token") == token:
            fs.rm(path)
