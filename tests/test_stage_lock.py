"""stage_lock.py: one writer per stage output; a killed holder blocks nobody; waiters reuse."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from tokenweight.stage_lock import LEASE_S, LockTimeout, is_locked, lease_seconds, stage_lock
from tokenweight.store import Store
from tokenweight.stage_protocol import Stage, run_stage

HOLD = textwrap.dedent("""
    import sys, time
    from tokenweight.store import Store
    with Store(sys.argv[1]).lock("score", "k"):
        print("held", flush=True)
        time.sleep(600)
""")


def _holder(store_dir) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(store_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_holder_killed_with_sigkill_blocks_the_next_run_for_no_time(tmp_path):
    store = Store(str(tmp_path))
    proc = _holder(tmp_path)
    try:
        assert is_locked(store, "score", "k")
        with pytest.raises(LockTimeout, match=rf"held by pid {proc.pid} on .* for more than 0s"):
            with stage_lock(store, "score", "k", wait_s=0.3):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    started = time.monotonic()
    with stage_lock(store, "score", "k", wait_s=5):
        assert time.monotonic() - started < 0.5
    assert not is_locked(store, "score", "k")


def test_a_waiter_is_told_who_holds_it_and_gets_it_when_released(tmp_path):
    store, told, order = Store(str(tmp_path)), [], []
    release = threading.Event()

    def first():
        with stage_lock(store, "weights", "k", wait_s=5):
            order.append("first in")
            release.wait(5)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    while not order:
        time.sleep(0.01)
    threading.Timer(0.3, release.set).start()
    with stage_lock(store, "weights", "k", wait_s=5, on_wait=told.append):
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]
    assert len(told) == 1 and f"pid {os.getpid()}" in told[0]


def test_two_runs_of_one_stage_compute_it_once(tmp_path):
    """The second caller waits for the first and reuses its output."""
    store, calls = Store(str(tmp_path)), []

    def work(run):
        calls.append(threading.current_thread().name)
        time.sleep(0.3)
        (run.dir / "out.txt").write_text("done")
        return {}

    stage = Stage(name="shuffle", version="1", config=lambda cfg: {}, inputs=lambda cfg: {}, work=work)
    results = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, run_stage(stage, None, store, "k")),
                                name=f"run{n}") for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(r.cached for r in results.values()) == [False, True]
    assert (tmp_path / "shuffle" / "k" / "out.txt").read_text() == "done"


def test_an_object_store_lease_that_is_not_renewed_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path))
    store = Store("memory://tw-lease-test")
    path = f"{store.root}/_locks/score.k.lock"
    # A holder that died: its lease was last renewed long ago.
    store.fs.pipe_file(path, b'{"pid": 1, "host": "gone", "since": "then", "token": "x", "renewed": 0}')
    started = time.monotonic()
    with stage_lock(store, "score", "k", wait_s=5, lease_s=2, poll_s=0.05):
        assert time.monotonic() - started < 1
        with pytest.raises(LockTimeout, match="leased by pid"):  # a live lease is not taken over
            with stage_lock(store, "score", "k", wait_s=0.2, lease_s=2, poll_s=0.05):
                pass
    assert not store.fs.exists(path)  # released


def test_a_live_lease_is_renewed_while_held(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path))
    store = Store("memory://tw-lease-renew")
    with stage_lock(store, "score", "k", wait_s=1, lease_s=0.4, poll_s=0.02):
        time.sleep(1.0)  # more than two leases: without renewal a waiter would take it
        with pytest.raises(LockTimeout):
            with stage_lock(store, "score", "k", wait_s=0.3, lease_s=0.4, poll_s=0.02):
                pass


def _memory_store(tmp_path, monkeypatch, name: str) -> Store:
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path))
    return Store(f"memory://{name}-{uuid.uuid4().hex[:8]}")


def _lease(store: Store, token: str, renewed: float, lease_s: float = 60.0, pid: int = 4242) -> bytes:
    body = json.dumps({"pid": pid, "host": "elsewhere", "since": "then", "token": token, "renewed": renewed,
                       "lease_s": lease_s}).encode()
    store.fs.pipe_file(f"{store.root}/_locks/score.k.lock", body)
    return body


def test_a_lease_taken_over_while_held_is_neither_renewed_over_nor_removed(tmp_path, monkeypatch, caplog):
    """A holder that stalled past its lease finds another run's token in the lock: it stops
    renewing, leaves that lease alone on release, and warns naming the stage output."""
    store = _memory_store(tmp_path, monkeypatch, "tw-lease-lost")
    path = f"{store.root}/_locks/score.k.lock"
    with caplog.at_level(logging.WARNING, logger="tokenweight"):
        with stage_lock(store, "score", "k", wait_s=1, lease_s=0.4, poll_s=0.02):
            assert json.loads(store.fs.cat_file(path))["pid"] == os.getpid()
            theirs = _lease(store, "theirs", time.time())  # another run took it over
            time.sleep(0.6)  # six renewal periods (lease_s / 4)
            assert store.fs.cat_file(path) == theirs
    assert store.fs.cat_file(path) == theirs  # not removed on release either
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"score output k in {store.url}" in warning and "lost" in warning and "pid 4242 on elsewhere" in warning
    store.fs.rm(path)


def test_a_lease_whose_lock_object_was_removed_is_not_written_back(tmp_path, monkeypatch, caplog):
    store = _memory_store(tmp_path, monkeypatch, "tw-lease-gone")
    path = f"{store.root}/_locks/score.k.lock"
    with caplog.at_level(logging.WARNING, logger="tokenweight"):
        with stage_lock(store, "score", "k", wait_s=1, lease_s=0.4, poll_s=0.02):
            store.fs.rm(path)
            time.sleep(0.3)
            assert not store.fs.exists(path)
    assert not store.fs.exists(path)
    assert any("the lock object is gone" in r.getMessage() for r in caplog.records)


def test_the_lease_length_comes_from_tokenweight_lease_s(tmp_path, monkeypatch):
    store = _memory_store(tmp_path, monkeypatch, "tw-lease-env")
    path = f"{store.root}/_locks/score.k.lock"
    monkeypatch.setenv("TOKENWEIGHT_LEASE_S", "0.3")
    assert lease_seconds() == 0.3
    with stage_lock(store, "score", "k", wait_s=1, poll_s=0.02):
        assert json.loads(store.fs.cat_file(path))["lease_s"] == 0.3
    _lease(store, "dead", time.time(), lease_s=0.3)  # a holder killed just after renewing
    started = time.monotonic()
    with stage_lock(store, "score", "k", wait_s=5, poll_s=0.02):
        assert 0.25 < time.monotonic() - started < 2  # one short lease, not 60 s
    monkeypatch.delenv("TOKENWEIGHT_LEASE_S")
    assert lease_seconds() == LEASE_S == 60
    for bad in ("0", "-1", "soon", "inf", "nan"):
        monkeypatch.setenv("TOKENWEIGHT_LEASE_S", bad)
        with pytest.raises(ValueError, match="TOKENWEIGHT_LEASE_S"):
            with stage_lock(store, "score", "k", wait_s=1):
                pass


def test_a_waiter_honours_the_holders_lease_length_not_its_own(tmp_path, monkeypatch):
    store = _memory_store(tmp_path, monkeypatch, "tw-lease-theirs")
    _lease(store, "long", time.time() - 1, lease_s=30)  # renewed 1 s ago, on a 30 s lease: live
    with pytest.raises(LockTimeout, match="leased by pid 4242"):
        with stage_lock(store, "score", "k", wait_s=0.3, lease_s=0.5, poll_s=0.02):
            pass
    _lease(store, "short", time.time() - 1, lease_s=0.5)  # not renewed for twice its lease: dead
    with stage_lock(store, "score", "k", wait_s=0.3, lease_s=30, poll_s=0.02):
        pass
