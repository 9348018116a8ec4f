"""The finetune stage with `finetune.processes: 2`: torchrun, 2 real gloo processes, started by the
stage itself, against the same stage in one process on the same global batch.

Checked on what the runs leave in the store: the 2-process run really had 2 ranks; its loss and
its gradient norm (the all-reduced one, before clipping) at every step are the one-process run's
(a rank that trained on its half alone would log its half's norm); the saved models agree within
what AdamW's sign-like first steps allow; the key differs (the rounding does) while one process
keeps the key it always had. A rank SIGKILLed after step 3 fails the stage, with the ranks' log
quoted; the next run resumes from checkpoint-2 in 2 processes and ends where the uninterrupted
2-process run ends.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import pipeline_config

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

STEPS, LR = 4, 1e-3


def _cfg(model_dir: str, store: Path, processes: int):
    # 25 samples: a train split that batches of 4 do not divide, so the epoch ends on a short batch
    # within the 4 steps (a rank with nothing left must neither skip the step nor train twice).
    return pipeline_config(model_dir, store, {"kind": "synthetic", "n": 25, "seed": 0}, finetune={"method": "sft", "max_steps": STEPS, "batch_size": 4,
                                                       "grad_accum": 2, "learning_rate": LR, "warmup_share": 0.0,
                                                       "save_steps": 2, "logging_steps": 1, "processes": processes})


def _finetune(cfg):
    from tokenweight.models import resolve_base_model
    from tokenweight.stage_protocol import run_stage
    from tokenweight.store import Store
    from tokenweight.tasks.finetune import FINETUNE
    from tokenweight.tasks.prepare import PREPARE

    store = Store(cfg.store)
    base = resolve_base_model(cfg.model, store)
    return run_stage(FINETUNE, cfg, store, prepared=run_stage(PREPARE, cfg, store, base=base), weighted=None, base=base)


def _steps(record) -> list[dict]:
    return [h for h in json.loads(Path(record.uri, "log_history.json").read_text()) if "loss" in h]


def _weights(record) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(record.uri, "model", "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-stage")
    return {n: _finetune(_cfg(tiny_model_dir, root / f"p{n}", n)) for n in (1, 2)}


def test_two_processes_train_the_one_process_model(runs, tiny_model_dir):
    from safetensors.torch import load_file

    one, two = runs[1], runs[2]
    manifest = lambda r: json.loads(Path(r.uri, "_manifest.json").read_text())["train"]  # noqa: E731
    assert manifest(one)["world_size"] == 1 and manifest(two)["world_size"] == 2
    assert manifest(two)["steps"] == STEPS
    a, b = _steps(one), _steps(two)
    assert len(a) == len(b) == STEPS
    train = manifest(one)["samples"]
    assert train % 4 and train < STEPS * 8, train  # the short batch is inside the run
    for step, (x, y) in enumerate(zip(a, b), 1):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5), f"step {step}: loss"
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4), f"step {step}: gradient norm"
    assert a[0]["grad_norm"] > 1e-3
    # AdamW moves an entry whose gradient is ~0 by about lr either way, so entry by entry the models
    # may differ by as much as training moved them; the whole update agrees far closer than that.
    base, wa, wb = load_file(Path(tiny_model_dir, "model.safetensors")), _weights(one), _weights(two)
    assert wa.keys() == wb.keys() == base.keys()
    moved = sum(((wa[k] - base[k]) ** 2).sum() for k in wa) ** 0.5
    apart = sum(((wa[k] - wb[k]) ** 2).sum() for k in wa) ** 0.5
    print(f"update norm {moved:.4g}, 1 vs 2 processes {apart:.4g}")
    assert moved > 1e-2 and apart < 1e-5 * moved


def test_the_key_holds_processes_only_above_one(runs, tiny_model_dir, tmp_path):
    from tokenweight.tasks.finetune import FINETUNE

    assert runs[1].key != runs[2].key
    cfg = _cfg(tiny_model_dir, tmp_path, 1)
    assert "processes" not in FINETUNE.config(cfg) and FINETUNE.config(_cfg(tiny_model_dir, tmp_path, 2))["processes"] == 2
    with pytest.raises(ValueError, match="batch_size 4 does not split over 3 processes"):
        _cfg(tiny_model_dir, tmp_path, 3)


def test_a_killed_rank_fails_the_stage_and_the_next_run_resumes_in_two_processes(runs, tiny_model_dir, tmp_path,
                                                                                monkeypatch):
    from tokenweight.data_parallel import DataParallelError

    cfg = _cfg(tiny_model_dir, tmp_path / "store", 2)
    monkeypatch.setenv("TOKENWEIGHT_FAULT", "finetune.step@3")  # both ranks die after step 3
    with pytest.raises(DataParallelError, match="torchrun with 2 processes exited"):
        _finetune(cfg)
    monkeypatch.delenv("TOKENWEIGHT_FAULT")
    resumed = _finetune(cfg)
    assert resumed.key == runs[2].key
    assert json.loads(Path(resumed.uri, "_manifest.json").read_text())["train"]["resumed_from"] == "checkpoint-2"
    whole = _steps(runs[2])
    # The resumed run's log holds the checkpoint's steps and its own, and its own are the same.
    assert [h["loss"] for h in _steps(resumed)] == pytest.approx([h["loss"] for h in whole], abs=1e-6)
    wa, wb = _weights(runs[2]), _weights(resumed)
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-6, rtol=0), name


_RUN_FINETUNE = """
import sys
sys.path.insert(0, sys.argv[2])
from test_ddp_finetune_stage import _finetune
from tokenweight.config import PipelineConfig
_finetune(PipelineConfig.model_validate_json(sys.argv[1]))
"""


def _pids_running(fragment: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and fragment in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_killing_the_stage_process_ends_its_ranks(tiny_model_dir, tmp_path):
    """kill -9 of the stage's process while torchrun trains: the agent and both ranks go too
    (no orphan keeps training and writing checkpoints into the work directory), also when the
    ranks print nothing. Without the agent's parent-death signal this test fails."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = _cfg(tiny_model_dir, tmp_path / "store", 2)
    # Long, and silent: no log line after the first, so no rank dies of writing to a closed pipe.
    cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"max_steps": 100_000,
                                                                             "logging_steps": 100_000})})
    proc = subprocess.Popen([sys.executable, "-c", _RUN_FINETUNE, cfg.model_dump_json(), str(Path(__file__).parent)],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not (ranks := _pids_running("tokenweight.data_parallel")) or len(ranks) < 3:
            assert proc.poll() is None and time.time() < deadline, "torchrun and its 2 ranks never started"
            time.sleep(0.5)
        time.sleep(3)  # into the training
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 60
        while _pids_running("tokenweight.data_parallel"):
            assert time.time() < deadline, f"still running after the stage died: {ranks}"
            time.sleep(0.5)
    finally:
        proc.kill()
        for pid in _pids_running("tokenweight.data_parallel"):
            os.kill(pid, signal.SIGKILL)
