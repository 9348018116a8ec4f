"""kill -9 at twelve points across the stages, then run again: the outputs are those of a run that
was never interrupted, and a reader polling the output paths never sees a partial file.

Each run is the real CLI in its own process (Prefect talks to the session's test server, so the
runs skip the local server's start-up); `TOKENWEIGHT_FAULT` names the point where it SIGKILLs
itself (tokenweight/faults.py). The runs go one after another, each picking up what the killed
one left, so the whole sequence costs about two pipelines plus process start-ups.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from safetensors import safe_open

from helpers import pipeline_config

# In run order: each run is killed at its point and the next one resumes from what is left.
FAULTS = [
    "prepare.mid_shard@2",  # the second shard half-written
    "shuffle.mid_commit",  # one file moved into the output, the manifest not written
    "discriminator.step@2",  # mid fine-tune
    "discriminator.before_manifest",  # the models in place, no manifest
    "score.shard_done@2",  # two of three shards finished
    "score.mid_shard@1",  # the resumed run: the third shard half-written
    "score.before_manifest",  # between the last shard and the manifest
    "weights.mid_shard@2",
    "weights.mid_commit",
    "finetune.step@3",  # after step 3; checkpoint-2 is whole
    "finetune.mid_checkpoint@1",  # resumed at 2: checkpoint-4's weights written, the rest not
    "eval.before_manifest",
]
SHARDED = ("prepare", "score", "weights")


def _config(tiny_model_dir: str, store: Path, path: Path) -> str:
    cfg = pipeline_config(tiny_model_dir, store, prepare={"shard_rows": 8},
                          finetune={"max_steps": 6, "save_steps": 2, "logging_steps": 1})
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return str(path)


def _cli(config: str, fault: str | None, api_url: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api_url, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("TOKENWEIGHT_FAULT", None)
    if fault:
        env["TOKENWEIGHT_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "tokenweight.cli", "run", config], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _outputs(store: Path) -> dict[str, Path]:
    """Each stage's committed output directory (the store holds one key per stage here)."""
    out = {}
    for manifest in store.glob("*/*/_manifest.json"):
        stage = manifest.parent.parent.name
        assert stage not in out, f"two {stage} outputs in {store}"
        out[stage] = manifest.parent
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Poller(threading.Thread):
    """Reads every file at an output path (not staging, not Prefect's) as it appears; a file
    that exists there but does not parse is a partial file someone could have read."""

    def __init__(self, store: Path):
        super().__init__(daemon=True)
        self.store, self.stop, self.checked, self.partial = store, threading.Event(), 0, []

    def run(self) -> None:
        while not self.stop.wait(0.05):
            for path in self._files():
                try:
                    if path.suffix == ".parquet":
                        pq.read_metadata(path)
                    elif path.suffix == ".json":
                        json.loads(path.read_bytes())
                    elif path.suffix == ".safetensors":
                        with safe_open(str(path), "pt") as f:
                            f.keys()
                    else:
                        continue
                    self.checked += 1
                except FileNotFoundError:
                    continue  # removed between listing and reading: never read half
                except Exception as err:  # noqa: BLE001 - anything unreadable is the failure
                    if path.exists():
                        self.partial.append(f"{path}: {type(err).__name__}: {err}")

    def _files(self) -> list[Path]:
        """Files under {store}/{stage}/ (os.walk skips what disappears while it walks)."""
        out = []
        for top in os.listdir(self.store) if self.store.exists() else []:
            if not top.startswith("_"):
                for directory, _, names in os.walk(self.store / top):
                    out.extend(Path(directory) / n for n in names)
        return out


@pytest.fixture(scope="module")
def runs(prefect_harness, tiny_model_dir, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    root = tmp_path_factory.mktemp("crash")
    straight = root / "straight"
    done = _cli(_config(tiny_model_dir, straight, root / "straight.yaml"), None, api, root)
    assert done.returncode == 0, done.stderr[-3000:]

    crashed = root / "crashed"
    config = _config(tiny_model_dir, crashed, root / "crashed.yaml")
    poller = _Poller(crashed)
    poller.start()
    staged: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        for fault in FAULTS:
            result = _cli(config, fault, api, root)
            assert result.returncode == -9, f"{fault}: the run was not killed there (rc {result.returncode})\n" \
                                            f"{result.stderr[-3000:]}"
            staging = crashed / "_work" / "score"
            staged[fault] = {str(p.relative_to(staging)): (p.stat().st_ino, p.stat().st_mtime_ns)
                             for p in staging.glob("*/out/*")} if staging.exists() else {}
        final = _cli(config, None, api, root)
        assert final.returncode == 0, final.stderr[-3000:]
    finally:
        poller.stop.set()
        poller.join()
    return straight, crashed, poller, staged, final


def test_every_shard_is_byte_identical_to_an_uninterrupted_run(runs):
    straight, crashed, *_ = runs
    a, b = _outputs(straight), _outputs(crashed)
    assert set(a) == set(b) == {"prepare", "shuffle", "discriminator", "score", "weights", "finetune", "eval"}
    for stage in (*SHARDED, "shuffle"):
        files = sorted(p.name for p in a[stage].glob("*.parquet"))
        assert files and files == sorted(p.name for p in b[stage].glob("*.parquet")), stage
        for name in files:
            assert _sha(a[stage] / name) == _sha(b[stage] / name), f"{stage}/{name}"
    assert _sha(a["weights"] / "summary.json") == _sha(b["weights"] / "summary.json")


def test_the_resumed_fine_tune_matches_the_uninterrupted_one(runs):
    import torch
    from safetensors.torch import load_file

    straight, crashed, *_ = runs
    a, b = _outputs(straight)["finetune"], _outputs(crashed)["finetune"]
    assert json.loads((b / "_manifest.json").read_text())["train"]["resumed_from"] == "checkpoint-2"
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-6, rtol=0), name
    curve = lambda d: [h["loss"] for h in json.loads((d / "log_history.json").read_text()) if "loss" in h]  # noqa: E731
    assert curve(b) == pytest.approx(curve(a)[-len(curve(b)):], abs=1e-6) and len(curve(a)) == 6
    for name in ("predictions.parquet",):
        assert pq.read_table(_outputs(straight)["eval"] / name).equals(pq.read_table(_outputs(crashed)["eval"] / name))


def test_the_discriminator_killed_mid_training_ends_the_same(runs):
    straight, crashed, *_ = runs
    a, b = _outputs(straight)["discriminator"], _outputs(crashed)["discriminator"]
    models = sorted(p.relative_to(a).as_posix() for p in a.glob("*/model.safetensors"))
    assert models == [f"{kind}-{fold}/model.safetensors" for kind in ("control", "disc") for fold in (0, 1)]
    for rel in models:
        assert _sha(a / rel) == _sha(b / rel), rel


def test_score_resumed_only_the_shard_it_had_not_finished(runs):
    _, crashed, _, staged, _ = runs
    two_done, after_third_killed = staged["score.shard_done@2"], staged["score.mid_shard@1"]
    assert sorted(k.split("/")[-1] for k in two_done) == ["part-00000.parquet", "part-00001.parquet"]
    # The resumed run did not touch the two finished shards (same inode, same mtime).
    assert {k: after_third_killed[k] for k in two_done} == two_done
    manifest = json.loads((_outputs(crashed)["score"] / "_manifest.json").read_text())
    # The last kill of the score stage came after all three shards were done, before the manifest.
    assert manifest["counts"]["shards_resumed"] == 3


def test_a_reader_polling_the_outputs_never_saw_a_partial_file(runs):
    _, _, poller, _, _ = runs
    assert poller.partial == []
    assert poller.checked > 50  # it did read the outputs as they appeared


def test_nothing_temporary_is_left_behind(runs):
    _, crashed, *_ = runs
    assert not list(crashed.rglob(".tmp-*"))
    assert not [p for p in (crashed / "_work").rglob("*") if p.is_file()]


def test_the_final_run_reports_what_it_reused(runs):
    *_, final = runs
    ran = _ran(final.stdout)
    assert not ran["prepare"] and not ran["finetune"] and ran["eval"]


def _ran(stdout: str) -> dict[str, bool]:
    return {line.split()[0]: line.split()[1] == "ran" for line in stdout.splitlines()
            if line.startswith("  ") and len(line.split()) >= 3 and line.split()[1] in ("ran", "cached")}


def test_two_runs_started_at_once_compute_each_stage_once(runs, prefect_harness, tiny_model_dir, tmp_path):
    from prefect.settings import PREFECT_API_URL

    straight, *_ = runs
    config = _config(tiny_model_dir, tmp_path / "store", tmp_path / "cfg.yaml")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "OMP_NUM_THREADS": "1"}
    env.pop("TOKENWEIGHT_FAULT", None)
    procs = [subprocess.Popen([sys.executable, "-m", "tokenweight.cli", "run", config, "--until", "weights"], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    ran = [_ran(out) for out, _ in outs]
    for stage in ("prepare", "shuffle", "discriminator", "score", "weights"):
        assert ran[0][stage] + ran[1][stage] == 1, (stage, ran)  # one computed it, the other reused it
    ours, theirs = _outputs(tmp_path / "store")["weights"], _outputs(straight)["weights"]
    for shard in theirs.glob("part-*.parquet"):
        assert _sha(ours / shard.name) == _sha(shard)
