"""store.py: keys, atomic stage outputs, manifests, verification, path safety."""

import json
import os
import uuid
from pathlib import Path

import pytest

from tokenweight.file_digests import sha256_file
from tokenweight.store import MANIFEST, STORE_MARKER, Store, StoreError, stage_key, verify_output

CONFIG = {"lr": 1e-4, "epochs": 2, "nested": {"a": [1, 2], "b": "x"}}


def test_stage_key_is_stable_and_ignores_dict_order():
    k = stage_key("score", "1", CONFIG, {"prepare": "aaa", "disc": "bbb"})
    assert k == stage_key("score", "1", CONFIG, {"prepare": "aaa", "disc": "bbb"})
    reordered = {"nested": {"b": "x", "a": [1, 2]}, "epochs": 2, "lr": 1e-4}
    assert k == stage_key("score", "1", reordered, {"disc": "bbb", "prepare": "aaa"})
    assert len(k) == 16 and all(c in "0123456789abcdef" for c in k)


@pytest.mark.parametrize(
    "change",
    [
        dict(stage="weights"),
        dict(version="2"),
        dict(config={**CONFIG, "lr": 2e-4}),
        dict(config={**CONFIG, "nested": {"a": [2, 1], "b": "x"}}),
        dict(config={**CONFIG, "extra": None}),
        dict(inputs={"prepare": "aab", "disc": "bbb"}),
        dict(inputs={"prepare": "aaa"}),
        dict(extra={"sha256": "0"}),
    ],
)
def test_stage_key_changes_with_every_part(change):
    args = dict(stage="score", version="1", config=CONFIG, inputs={"prepare": "aaa", "disc": "bbb"}, extra=None)
    base = stage_key(**args)
    assert stage_key(**{**args, **change}) != base


def test_files_appear_only_after_commit(tmp_path):
    store = Store(str(tmp_path / "store"))
    uri = store.stage_uri("prepare", "k1")
    with store.begin("prepare", "k1") as w:
        (w.dir / "part-00000.parquet").write_bytes(b"abc" * 100)
        (w.dir / "sub").mkdir()
        (w.dir / "sub" / "x.json").write_text('{"a": 1}')
        assert not os.path.exists(f"{uri}/part-00000.parquet")
        assert store.manifest("prepare", "k1") is None
        record = w.commit(counts={"rows": 3})
    assert record.to_dict() == {"stage": "prepare", "key": "k1", "uri": uri, "cached": False}
    assert sorted(os.listdir(uri)) == [MANIFEST, "part-00000.parquet", "sub"]  # no temp dir left
    manifest = store.manifest("prepare", "k1")
    assert manifest["counts"] == {"rows": 3} and manifest["stage"] == "prepare" and manifest["key"] == "k1"
    assert set(manifest["files"]) == {"part-00000.parquet", "sub/x.json"}
    for rel, meta in manifest["files"].items():
        assert meta["bytes"] == os.path.getsize(f"{uri}/{rel}")
        assert meta["sha256"] == sha256_file(f"{uri}/{rel}")
    assert verify_output(store, "prepare", "k1") == (manifest, Path(uri))


def test_leaving_without_commit_leaves_no_output_and_no_staging(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(RuntimeError):
        with store.begin("score", "k2") as w:
            (w.dir / "part-00000.parquet").write_bytes(b"half")
            raise RuntimeError("crash mid-stage")
    uri = store.stage_uri("score", "k2")
    assert store.manifest("score", "k2") is None
    assert not os.path.exists(uri) and not w.dir.exists()
    with store.begin("score", "k2") as w:
        pass  # a clean exit without commit too
    assert not os.path.exists(uri) and not w.dir.exists()
    with pytest.raises(StoreError, match="never finished"):
        verify_output(store, "score", "k2")


@pytest.mark.parametrize("body", [b"", b'{"stage": "x", "key": "k3", "fil', b"\xff\xfe not utf8", b"[1, 2]", b"null"])
def test_corrupt_manifest_reads_as_cache_miss(tmp_path, body):
    store = Store(str(tmp_path))
    with store.begin("weights", "k3") as w:
        (w.dir / "a.txt").write_text("a")
        w.commit()
    assert store.manifest("weights", "k3") is not None
    with open(f"{store.stage_uri('weights', 'k3')}/{MANIFEST}", "wb") as f:
        f.write(body)
    assert store.manifest("weights", "k3") is None


def test_manifest_with_another_key_reads_as_miss(tmp_path):
    store = Store(str(tmp_path))
    with store.begin("weights", "k4") as w:
        w.commit()
    path = f"{store.stage_uri('weights', 'k4')}/{MANIFEST}"
    data = json.loads(open(path).read())
    data["key"] = "other"
    open(path, "w").write(json.dumps(data))
    assert store.manifest("weights", "k4") is None


def test_verify_output_raises_on_missing_or_resized_file(tmp_path):
    store = Store(str(tmp_path))
    with store.begin("prepare", "k5") as w:
        (w.dir / "a.bin").write_bytes(b"0123456789")
        (w.dir / "b.bin").write_bytes(b"xyz")
        w.commit()
    uri = store.stage_uri("prepare", "k5")
    with open(f"{uri}/a.bin", "ab") as f:
        f.write(b"!")
    with pytest.raises(StoreError, match="a.bin has 11 bytes, the manifest says 10"):
        verify_output(store, "prepare", "k5")
    os.remove(f"{uri}/a.bin")
    with pytest.raises(StoreError, match="a.bin is listed in the manifest but missing"):
        verify_output(store, "prepare", "k5")


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "a\\b", "", ".tmp-x"])
def test_stage_uri_rejects_bad_components(tmp_path, bad):
    store = Store(str(tmp_path))
    with pytest.raises(StoreError):
        store.stage_uri(bad, "key")
    with pytest.raises(StoreError):
        store.stage_uri("prepare", bad)


def test_store_url_forms(tmp_path):
    assert Store(str(tmp_path) + "/").root == str(tmp_path)
    assert Store(f"file://{tmp_path}").stage_uri("a", "b") == f"{tmp_path}/a/b"
    rel = Store("relative/runs")
    assert os.path.isabs(rel.root) and rel.is_local


def test_check_writable(tmp_path):
    Store(str(tmp_path / "new")).check_writable()
    assert os.listdir(tmp_path / "new") == [STORE_MARKER]  # the probe is removed; a new store is marked
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(StoreError, match="not writable"):
        Store(str(blocker / "sub")).check_writable()


def test_memory_store_round_trip(tmp_path, monkeypatch):
    """A non-local fsspec store: files are uploaded, the manifest is written last and readable."""
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path / "cache"))
    store = Store("memory://tw-test-store")
    assert not store.is_local
    with store.begin("prepare", "km") as w:
        (w.dir / "part-00000.parquet").write_bytes(b"data!")
        w.commit(counts={"rows": 1})
    manifest, local = verify_output(store, "prepare", "km")
    assert (local / "part-00000.parquet").read_bytes() == b"data!"
    assert manifest["files"]["part-00000.parquet"]["bytes"] == 5
    assert store.fs.cat(f"{store.stage_uri('prepare', 'km')}/part-00000.parquet") == b"data!"


def test_a_resumable_writer_keeps_finished_shards_across_a_crash_and_drops_the_rest(tmp_path):
    import pyarrow as pa

    store = Store(str(tmp_path))
    table = pa.table({"x": list(range(10))})
    with pytest.raises(RuntimeError):
        with store.begin("score", "kr", resumable=True) as w:
            w.write_shard(0, table)
            w.write_shard(1, table)
            (w.dir / ".tmp-part-00002.parquet").write_bytes(b"PAR1 half")  # what a kill mid-write leaves
            (w.dir / "notes.json").write_text("{}")
            raise RuntimeError("crash")
    with store.begin("score", "kr", resumable=True) as w:
        assert w.done_shards() == {0, 1}
        assert sorted(p.name for p in w.dir.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
        w.write_shard(2, table)
        w.commit()
    _, local = verify_output(store, "score", "kr")
    assert sorted(p.name for p in local.glob("part-*")) == [f"part-0000{i}.parquet" for i in range(3)]
    with store.begin("prepare", "kn") as w:  # a stage that is not resumable starts clean
        w.write_shard(0, table)
    with store.begin("prepare", "kn") as w:
        assert w.done_shards() == set()


def test_a_half_published_output_is_not_an_output_and_its_shards_are_taken_back(tmp_path):
    import pyarrow as pa

    store = Store(str(tmp_path))
    uri = store.stage_uri("weights", "kh")
    with store.begin("weights", "kh", resumable=True) as w:
        w.write_shard(0, pa.table({"x": [1]}))
        os.makedirs(uri)
        os.replace(w.dir / "part-00000.parquet", f"{uri}/part-00000.parquet")  # moved, then killed
    open(f"{uri}/summary.json", "w").write("{}")
    with store.begin("weights", "kh", resumable=True) as w:
        assert w.done_shards() == {0}
        assert not os.path.exists(uri)


def test_verify_output_checks_sha256_and_refuses_links_out_of_the_store(tmp_path):
    store = Store(str(tmp_path / "store"))
    with store.begin("prepare", "ks") as w:
        (w.dir / "a.bin").write_bytes(b"0123456789")
        w.commit()
    uri = store.stage_uri("prepare", "ks")
    with open(f"{uri}/a.bin", "r+b") as f:
        f.write(b"X")  # same size, other content
    with pytest.raises(StoreError, match="a.bin does not match its manifest's sha256"):
        verify_output(store, "prepare", "ks")
    secret = tmp_path / "outside.bin"
    secret.write_bytes(b"0123456789")
    os.remove(f"{uri}/a.bin")
    os.symlink(secret, f"{uri}/a.bin")
    with pytest.raises(StoreError, match="leads out of the stage output"):
        verify_output(store, "prepare", "ks")


def test_a_symlink_is_never_committed(tmp_path):
    store = Store(str(tmp_path / "store"))
    (tmp_path / "elsewhere").write_text("x")
    with store.begin("eval", "kl") as w:
        os.symlink(tmp_path / "elsewhere", w.dir / "link.txt")
        with pytest.raises(StoreError, match="may not contain symlinks"):
            w.commit()
    assert store.manifest("eval", "kl") is None


@pytest.mark.parametrize("url,secret", [("s3://AKIAEXAMPLE:s3cr3t-value@bucket/runs", "s3cr3t-value"),
                                        ("https://ghp_t0ken-value@host.example/tw", "ghp_t0ken-value")])
def test_a_store_url_with_credentials_in_its_user_part_is_refused(tmp_path, url, secret):
    with pytest.raises(StoreError, match="holds credentials in its user part") as err:
        Store(url)
    assert secret not in str(err.value)


KD, KW, KL = "d" * 16, "e" * 16, "f" * 16  # stage keys are 16 hex digits


def test_sweep_removes_the_temporary_files_of_dead_runs_only(tmp_path):
    store = Store(str(tmp_path))
    store.check_writable()  # a new, empty directory: marked as a tokenweight store
    assert (tmp_path / STORE_MARKER).is_file()
    dead = tmp_path / "_work" / "score" / KD / "out"
    dead.mkdir(parents=True)
    (dead / ".tmp-part-00003.parquet").write_bytes(b"half")
    (dead / "part-00000.parquet").write_bytes(b"whole")  # kept: a rerun resumes from it
    old_style = tmp_path / "weights" / KW / ".tmp-abc"
    old_style.mkdir(parents=True)
    live = tmp_path / "_work" / "score" / KL / "out"
    live.mkdir(parents=True)
    (live / ".tmp-part-00000.parquet").write_bytes(b"being written")
    (tmp_path / ".tmp-probe-1").write_bytes(b"")
    foreign = [tmp_path / "notes" / "draft" / ".tmp-keep", tmp_path / ".tmp-mine"]  # not tokenweight's names
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a user's file")
    with store.lock("score", KL):
        removed = store.sweep_orphans()
    assert sorted(removed) == sorted(map(str, [dead / ".tmp-part-00003.parquet", old_style, tmp_path / ".tmp-probe-1"]))
    assert (dead / "part-00000.parquet").exists() and (live / ".tmp-part-00000.parquet").exists()
    assert all(path.exists() for path in foreign)


def test_a_directory_that_is_not_a_marked_store_is_never_swept(tmp_path):
    """`--store .` or `--store ~`: a directory that held other files before is used, not marked, and
    the sweep removes nothing in it, even names that look like tokenweight's."""
    (tmp_path / "thesis.tex").write_text("a user's file")
    lookalike = tmp_path / "score" / KD / ".tmp-part-00000.parquet"
    lookalike.parent.mkdir(parents=True)
    lookalike.write_text("a user's file")
    store = Store(str(tmp_path))
    store.check_writable()
    assert not (tmp_path / STORE_MARKER).exists()
    assert store.sweep_orphans() == [] and lookalike.exists()


def test_a_store_made_before_markers_is_marked_and_swept(tmp_path):
    (tmp_path / "_locks").mkdir()
    orphan = tmp_path / "score" / KD / ".tmp-part-00000.parquet"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half")
    store = Store(str(tmp_path))
    store.check_writable()
    assert (tmp_path / STORE_MARKER).is_file()
    assert store.sweep_orphans() == [str(orphan)]


def test_an_output_whose_manifest_was_damaged_is_moved_aside_and_said_so(tmp_path, caplog):
    store = Store(str(tmp_path))
    with store.begin("weights", KW) as w:
        (w.dir / "part-00000.parquet").write_bytes(b"shard")
        w.commit()
    manifest = f"{store.stage_uri('weights', KW)}/{MANIFEST}"
    with open(manifest, "a") as f:
        f.write("edited by hand")
    with caplog.at_level("WARNING", logger="tokenweight"):
        with store.begin("weights", KW) as w:
            pass
    moved = list((tmp_path / "_quarantine" / "weights").glob(f"{KW}-*"))
    assert len(moved) == 1 and (moved[0] / "part-00000.parquet").read_bytes() == b"shard"
    assert not (tmp_path / "weights" / KW).exists()
    assert any("moved the output" in r.getMessage() and str(moved[0]) in r.getMessage() for r in caplog.records)


def test_two_remote_stores_holding_one_stage_key_each_read_their_own(tmp_path, monkeypatch):
    """The local copies of remote outputs are keyed by the store's URL, not by stage and key only."""
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path / "cache"))
    tag = uuid.uuid4().hex[:8]
    stores = {b"written in store a": Store(f"memory://tw-a-{tag}"),
              b"store b wrote this": Store(f"memory://tw-b-{tag}")}
    for body, store in stores.items():
        with store.begin("weights", "same") as w:
            (w.dir / "summary.json").write_bytes(body)
            w.commit()
    dirs = set()
    for body, store in stores.items():
        _, local = verify_output(store, "weights", "same")
        assert (local / "summary.json").read_bytes() == body
        dirs.add(local)
    assert len(dirs) == 2


def test_a_remote_output_computed_again_replaces_its_local_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path / "cache"))
    """The output was deleted from the store and computed again (other bytes, same key): the cached
    copy of the first is not what is read."""
    store = Store(f"memory://tw-again-{uuid.uuid4().hex[:8]}")
    uri = store.stage_uri("eval", "kx")
    for body in (b"first run", b"second run, not the same bytes"):
        if store.fs.exists(uri):
            store.fs.rm(uri, recursive=True)
        with store.begin("eval", "kx") as w:
            (w.dir / "metrics.json").write_bytes(body)
            w.commit()
        manifest, local = verify_output(store, "eval", "kx")
        assert (local / "metrics.json").read_bytes() == body
        assert json.loads((local / MANIFEST).read_text()) == manifest
