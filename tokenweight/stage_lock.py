"""One writer per stage output: a lock per (stage, key) in the store, so concurrent runs of the
same config compute each stage once and the others reuse it.

Local stores use the kernel's advisory lock (`flock`) on `{store}/_locks/{stage}.{key}.lock`. The
kernel drops it when the holder's process ends, SIGKILL included, so a crashed run blocks the next
one for no time at all (Prefect's file lock, by contrast, has no expiry). Other fsspec stores
(object storage has no locks) use a lease: the holder rewrites its lock object every `lease_s / 4`
seconds, and a lease not renewed for `lease_s` seconds is taken over. `lease_s` is 60 by default;
the environment variable `TOKENWEIGHT_LEASE_S` sets it (read each time a lock is taken, so tests
can run a killed holder's takeover in seconds), and the lock object records it, so a waiter
honours the holder's lease length rather than its own.

Before each renewal the holder checks that the lock object still holds its token. A run that
stalled for longer than its lease (suspended, a long GC pause, a cut network) and was taken over
finds another run's token there: it stops renewing, never writes over the new holder's lease and
never removes it, and warns at the end of its block, naming the stage output. Without a
compare-and-swap all of this is best effort: two runs that take over the same expired lease in the
same instant, or a takeover between a check and a renewal, can let two runs proceed; each still
writes a complete output, the manifest last.

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

from .run_log import logger

if TYPE_CHECKING:
    from .store import Store

LEASE_S = 60.0  # the default; TOKENWEIGHT_LEASE_S overrides it (see the module docstring)
LEASE_ENV = "TOKENWEIGHT_LEASE_S"


class LockTimeout(RuntimeError):
    """Another run held the stage's lock for longer than we were willing to wait."""


def lease_seconds() -> float:
    """The lease length: `TOKENWEIGHT_LEASE_S` when set, else LEASE_S."""
    raw = os.environ.get(LEASE_ENV, "").strip()
    if not raw:
        return LEASE_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{LEASE_ENV}={raw!r}: the lease length must be a positive number of seconds")
    return value


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
               lease_s: float | None = None, poll_s: float = 0.2) -> Iterator[None]:
    """Hold the lock of `{stage}/{key}` for the block; `on_wait(holder)` is called once if we wait.
    `lease_s` (object storage only) defaults to `lease_seconds()`."""
    name = f"{stage}.{key}.lock"
    if store.is_local:
        with _flock(Path(store.root) / "_locks" / name, wait_s, on_wait, poll_s):
            yield
    else:
        lease_s = lease_seconds() if lease_s is None else lease_s
        with _lease(store, f"{store.root}/_locks/{name}", wait_s, on_wait, lease_s, poll_s,
                    what=f"{stage} output {key} in {store.url}"):
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
           poll_s: float, what: str = "a stage output") -> Iterator[None]:
    fs, token, me = store.fs, uuid.uuid4().hex, _holder()
    deadline, told = time.monotonic() + wait_s, False
    # Resolved here, in the run's thread (the renewer has no run context), and before the lease is
    # taken: a first import of Prefect can take longer than a short lease.
    log = logger()

    def write() -> None:
        with fs.open(path, "wb") as f:
            f.write(json.dumps({**me, "token": token, "renewed": time.time(), "lease_s": lease_s}).encode())

    def read() -> dict | None:
        fs.invalidate_cache(path)  # s3fs would answer from a listing cached before another run wrote it
        try:
            held = json.loads(fs.cat_file(path))
        except (FileNotFoundError, ValueError):
            return None
        return held if isinstance(held, dict) else None

    def expired(held: dict) -> bool:
        """Not renewed for the holder's own lease length (ours when it names none)."""
        try:
            return time.time() - float(held.get("renewed", 0)) > float(held.get("lease_s", lease_s))
        except (TypeError, ValueError):
            return True  # an unreadable lease holds nothing

    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    while True:
        held = read()
        if held is None or expired(held):
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
            try:
                if (read() or {}).get("token") != token:
                    return  # taken over (or removed): never write over another run's lease
                write()
            except Exception as err:  # noqa: BLE001 - a failed renewal (network) is retried next period
                log.warning("%s: renewing the lease %s failed (%s: %s); retrying", what, path,
                            type(err).__name__, err)

    renewer = threading.Thread(target=renew, daemon=True, name=f"lease {path}")
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        held = read()
        if (held or {}).get("token") == token:
            fs.rm(path)
        else:
            holder = _describe(json.dumps(held)) if held else "nobody (the lock object is gone)"
            log.warning("%s: this run lost its lock while computing it: the lease %s is now held by %s (taken "
                        "over, most likely because this run went more than %gs without renewing it). That lease "
                        "was left in place; the two runs may both have written this output.", what, path, holder,
                        lease_s)
