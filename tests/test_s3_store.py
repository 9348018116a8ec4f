"""The store on a real S3 endpoint: moto's server on 127.0.0.1, started here, and the real CLI.

A user points tokenweight at any S3-compatible endpoint the way this module does: credentials in
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_DEFAULT_REGION), the endpoint in
AWS_ENDPOINT_URL (read by botocore, so by s3fs) or FSSPEC_S3_ENDPOINT_URL (fsspec's own config,
read when fsspec is imported), and `--store s3://bucket/prefix`.

The pipeline runs are `tokenweight run` processes (Prefect talks to the session's test server, as
in test_crash_resume.py); `TOKENWEIGHT_FAULT` SIGKILLs one at a named point, and
`TOKENWEIGHT_LEASE_S` shortens the lease a killed run leaves in the bucket, so the next run takes
it over in seconds rather than a minute. Each stage output is checked against its manifest
object by object, and a killed and resumed run's shards against those of uninterrupted runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from helpers import pipeline_config

s3fs = pytest.importorskip("s3fs", reason="the s3 extra (pip install -e '.[s3]')")
moto_server = pytest.importorskip("moto.server", reason="moto[server] (the test extra)")

BUCKET = "tw-test"
STAGES = ("prepare", "shuffle", "discriminator", "score", "weights")
SHARDED = ("prepare", "score", "weights")
LEASE_S = "3"  # the killed runs' leases: the next run waits this long, not 60 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1, a bucket in it, and the environment a user would set."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    home = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "FSSPEC_S3_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_CONFIG_FILE", str(home / "config"))  # none: nothing of the machine's own
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("TOKENWEIGHT_CACHE", str(tmp_path_factory.mktemp("tw-cache")))
        s3fs.S3FileSystem.clear_instance_cache()
        # The test's own view of the bucket: not the store's instance, and no cached listings.
        fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
        fs.mkdir(BUCKET)
        try:
            yield {"endpoint": endpoint, "fs": fs}
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


def _config(tiny_model_dir: str, path: Path) -> str:
    cfg = pipeline_config(tiny_model_dir, "s3://unused", prepare={"shard_rows": 8})  # each run names its --store
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return str(path)


def _env(api_url: str, fault: str | None = None, lease_s: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PREFECT_API_URL": api_url, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("TOKENWEIGHT_FAULT", None)
    env.pop("TOKENWEIGHT_LEASE_S", None)
    if fault:
        env["TOKENWEIGHT_FAULT"] = fault
    if lease_s:
        env["TOKENWEIGHT_LEASE_S"] = lease_s
    return env


def _start(config: str, prefix: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tokenweight.cli", "run", config, "--until", "weights",
                             "--store", f"s3://{BUCKET}/{prefix}"], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ran(stdout: str) -> dict[str, bool]:
    return {line.split()[0]: line.split()[1] == "ran" for line in stdout.splitlines()
            if line.startswith("  ") and len(line.split()) >= 3 and line.split()[1] in ("ran", "cached")}


def _outputs(fs, prefix: str) -> dict[str, str]:
    """Each stage's committed output in the bucket (one key per stage here)."""
    out = {}
    for manifest in fs.glob(f"{BUCKET}/{prefix}/*/*/_manifest.json"):
        stage = manifest.split("/")[-3]
        assert stage not in out, f"two {stage} outputs under {prefix}"
        out[stage] = manifest.rsplit("/", 1)[0]
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def concurrent(s3, prefect_harness, tiny_model_dir, tmp_path_factory):
    """Two runs of one config started at once on one S3 store (the uninterrupted reference)."""
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("s3-concurrent")
    config = _config(tiny_model_dir, root / "cfg.yaml")
    procs = [_start(config, "shared", _env(PREFECT_API_URL.value()), root) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    return {"outs": outs, "cwd": root}


def test_two_runs_at_once_on_one_s3_store_compute_each_stage_once(concurrent):
    ran = [_ran(out) for out, _ in concurrent["outs"]]
    for stage in STAGES:
        assert ran[0][stage] + ran[1][stage] == 1, (stage, ran)  # one computed it, the other reused it


def test_outputs_and_manifests_live_in_the_bucket_and_match(s3, concurrent):
    fs = s3["fs"]
    outputs = _outputs(fs, "shared")
    assert set(outputs) == set(STAGES)
    for stage, uri in outputs.items():
        manifest = json.loads(fs.cat_file(f"{uri}/_manifest.json"))
        assert manifest["stage"] == stage and manifest["key"] == uri.rsplit("/", 1)[1]
        objects = {path[len(uri) + 1:] for path in fs.find(uri)}
        assert objects == {*manifest["files"], "_manifest.json"}, stage  # nothing half-published, nothing extra
        for rel, meta in manifest["files"].items():
            data = fs.cat_file(f"{uri}/{rel}")
            assert (len(data), _sha(data)) == (meta["bytes"], meta["sha256"]), f"{stage}/{rel}"
    for stage in SHARDED:
        files = json.loads(fs.cat_file(f"{outputs[stage]}/_manifest.json"))["files"]
        assert any(name.startswith("part-") for name in files), stage
    assert not fs.find(f"{BUCKET}/shared/_locks")  # every lease was released
    assert sorted(p.name for p in concurrent["cwd"].iterdir()) == ["cfg.yaml"]  # no local store on the side
    # Prefect's cache records sit in the same bucket, as plain JSON, one per stage key.
    records = {path.rsplit("/", 1)[1]: json.loads(fs.cat_file(path)) for path in fs.find(f"{BUCKET}/shared/_prefect")}
    assert set(records) == {uri.rsplit("/", 1)[1] for uri in outputs.values()}
    assert all(r["metadata"]["serializer"]["type"] == "json" for r in records.values())


@pytest.fixture(scope="module")
def crashed(s3, concurrent, prefect_harness, tiny_model_dir, tmp_path_factory):
    """One config on another prefix: SIGKILLed while score's output was being uploaded (its first
    shard in the bucket, the others and the manifest not), then run again to the end."""
    from prefect.settings import PREFECT_API_URL

    fs, api = s3["fs"], PREFECT_API_URL.value()
    root = tmp_path_factory.mktemp("s3-crashed")
    config = _config(tiny_model_dir, root / "cfg.yaml")
    proc = _start(config, "crashed", _env(api, "score.mid_commit", LEASE_S), root)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == -9, f"not killed at score.mid_commit (rc {proc.returncode})\n{err[-3000:]}"
    locks = {p.rsplit("/", 1)[1]: json.loads(fs.cat_file(p)) for p in fs.find(f"{BUCKET}/crashed/_locks")}
    killed = {"pid": proc.pid, "objects": fs.find(f"{BUCKET}/crashed"), "locks": locks}
    final = _start(config, "crashed", _env(api, None, LEASE_S), root)
    out, err = final.communicate(timeout=600)
    assert final.returncode == 0, err[-3000:]
    return killed, out


def test_a_killed_run_leaves_its_lease_in_the_bucket_and_the_next_run_takes_it_over(s3, crashed):
    killed, out = crashed
    [(name, lease)] = killed["locks"].items()  # the lock objects live in the bucket
    assert name.startswith("score.") and lease["pid"] == killed["pid"] and lease["lease_s"] == float(LEASE_S)
    ran = _ran(out)
    assert ran == {"prepare": False, "shuffle": False, "discriminator": False, "score": True, "weights": True}, out
    assert not s3["fs"].find(f"{BUCKET}/crashed/_locks")  # taken over, then released


def test_a_half_uploaded_output_is_not_an_output_and_the_rerun_replaces_it(s3, crashed):
    killed, _ = crashed
    uploaded = [p.rsplit("/", 1)[1] for p in killed["objects"] if "/score/" in p]
    assert uploaded == ["part-00000.parquet"]  # killed after the first upload, no manifest
    fs = s3["fs"]
    score = _outputs(fs, "crashed")["score"]
    manifest = json.loads(fs.cat_file(f"{score}/_manifest.json"))
    assert {p[len(score) + 1:] for p in fs.find(score)} == {*manifest["files"], "_manifest.json"}
    # Every shard was whole in the local staging directory: the rerun uploaded them, computed none.
    assert manifest["counts"]["shards_resumed"] == sum(rel.endswith(".parquet") for rel in manifest["files"]) > 1


def test_the_resumed_run_matches_the_uninterrupted_ones_byte_for_byte(s3, concurrent, crashed):
    fs = s3["fs"]
    a, b = _outputs(fs, "shared"), _outputs(fs, "crashed")
    assert set(a) == set(b) == set(STAGES)
    for stage in (*SHARDED, "shuffle"):
        files = sorted(rel for rel in json.loads(fs.cat_file(f"{a[stage]}/_manifest.json"))["files"]
                       if rel.endswith(".parquet"))
        assert files, stage
        assert files == sorted(rel for rel in json.loads(fs.cat_file(f"{b[stage]}/_manifest.json"))["files"]
                               if rel.endswith(".parquet")), stage
        for rel in files:
            assert _sha(fs.cat_file(f"{a[stage]}/{rel}")) == _sha(fs.cat_file(f"{b[stage]}/{rel}")), f"{stage}/{rel}"
    assert fs.cat_file(f"{a['weights']}/summary.json") == fs.cat_file(f"{b['weights']}/summary.json")


HOLD = textwrap.dedent("""
    import sys, time
    from tokenweight.store import Store
    with Store(sys.argv[1]).lock("score", "k"):
        print("held", flush=True)
        time.sleep(600)
""")


def test_a_killed_lease_holder_blocks_the_next_run_for_one_lease_only(s3):
    """The holder takes the endpoint from fsspec's config (FSSPEC_S3_ENDPOINT_URL) instead of
    AWS_ENDPOINT_URL: either works."""
    from tokenweight.stage_lock import LockTimeout, stage_lock
    from tokenweight.store import Store

    env = {**os.environ, "TOKENWEIGHT_LEASE_S": "2", "FSSPEC_S3_ENDPOINT_URL": s3["endpoint"]}
    env.pop("AWS_ENDPOINT_URL")
    url = f"s3://{BUCKET}/lease-test"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, url], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        store = Store(url)
        lease = json.loads(s3["fs"].cat_file(f"{BUCKET}/lease-test/_locks/score.k.lock"))
        assert lease["pid"] == proc.pid and lease["lease_s"] == 2.0
        with pytest.raises(LockTimeout, match=f"leased by pid {proc.pid}"):  # renewed: not taken over
            with stage_lock(store, "score", "k", wait_s=2.5, lease_s=2, poll_s=0.1):
                pass
    finally:
        proc.kill()  # SIGKILL: the lease stays in the bucket, unreleased
        proc.wait()
        proc.stdout.close()
    started = time.monotonic()
    with stage_lock(store, "score", "k", wait_s=30, lease_s=2, poll_s=0.1):
        assert time.monotonic() - started < 5  # one lease (2 s) after the last renewal, not 60 s
    assert not s3["fs"].exists(f"{BUCKET}/lease-test/_locks/score.k.lock")


def test_a_manifest_another_process_wrote_is_seen_through_a_cached_listing(s3):
    """s3fs caches listings per process; the manifest must come from the bucket, not from them."""
    from tokenweight.store import Store, verify_output

    store = Store(f"s3://{BUCKET}/listing")
    with store.begin("prepare", "k") as w:
        (w.dir / "a.txt").write_text("a")
        w.commit()
    verify_output(store, "prepare", "k")  # downloads it: s3fs now has a listing of the output
    other = s3fs.S3FileSystem(skip_instance_cache=True)  # another run, another process
    uri = store.stage_uri("prepare", "k")
    other.rm(uri, recursive=True)
    assert store.manifest("prepare", "k") is None
    other.pipe_file(f"{uri}/b.txt", b"bb")
    manifest = {"stage": "prepare", "key": "k", "files": {"b.txt": {"bytes": 2, "sha256": _sha(b"bb")}}}
    other.pipe_file(f"{uri}/_manifest.json", json.dumps(manifest).encode())
    assert store.manifest("prepare", "k") == manifest
    _, local = verify_output(store, "prepare", "k")  # the cached copy of the old output is replaced
    assert sorted(p.name for p in local.iterdir()) == ["_manifest.json", "b.txt"]
