"""The fine-tune on several processes of this machine: torchrun, DistributedDataParallel.

`train_data_parallel` is what the finetune stage calls when `finetune.processes` is above 1. It
writes the job (the finetune settings, where the rows and the base model are, the placement) to
the stage's work directory and runs `python -m torch.distributed.run --nproc_per_node N -m
tokenweight.data_parallel JOB` there. Each rank trains with `train_finetune`, as one
process does, on batch_size / N of every micro-batch (each rank takes its slice of the batches one
process would draw, `RankBatches`, and the loss's normaliser is counted over the ranks, so the
gradient is the one-process gradient: tests/test_ddp_training.py). Checkpoints go
to the same work directory, so a killed run resumes from its last one, in one process or N.
Rank 0 saves the model and what the run did into the work directory; the stage process, which
holds the lock, moves them into its output.

The ranks' log lines reach the stage's log (rank 0's, so the Prefect UI shows one progress line
per logging step); their stderr goes to `ranks.log` beside the job, whose end is quoted on failure.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .config import FinetuneConfig
from .device_policy import Placement
from .faults import crash_point
from .run_log import logger


class _CrashPoints(TrainerCallback):
    """The crash tests' kill point after each optimiser step (faults.py), in one process or in each rank."""

    def on_step_end(self, args, state, control, **kwargs):
        crash_point("finetune.step")


class DataParallelError(RuntimeError):
    """The torchrun job failed; the message holds the end of the ranks' output."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parent_death_signal():
    """A function for the child between fork and exec: torchrun's agent gets SIGTERM when the
    stage process dies (a kill -9 included) and terminates its ranks, also while they print
    nothing (a rank writing to the closed log pipe would die of it anyway). libc is loaded here,
    before the fork: dlopen in the child could deadlock on a lock another thread held."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    PR_SET_PDEATHSIG = 1
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def train_finetune(fc: FinetuneConfig, rows_dir: Path, with_weights: bool, base_path: str, work: Path,
                   trust_remote_code: bool, place: Placement, ranks: int = 1) -> tuple[Any, Any, dict]:
    """The fine-tune as one process, or one of `ranks` ranks (with its share of the batch in
    `fc`), runs it: the train rows, their count in the log, `train_model` with the crash points."""
    from .components.trainer_setup import train_model, train_rows

    rows = train_rows(rows_dir, with_weights=with_weights)
    logger().info("finetune[%s]: %d train samples, %d target tokens%s", fc.method, len(rows),
                  sum(sum(r["loss_mask"]) for r in rows), f", {ranks} ranks of batch {fc.batch_size}" if ranks > 1 else "")
    return train_model(fc, rows, base_path, work, trust_remote_code, callbacks=[_CrashPoints()], place=place,
                       mid_checkpoint=lambda: crash_point("finetune.mid_checkpoint"))


def train_data_parallel(fc: FinetuneConfig, rows_dir: Path, with_weights: bool, base_path: str, work: Path,
                        trust_remote_code: bool, place: Placement) -> tuple[Path, dict[str, Any]]:
    """Train under torchrun with `fc.processes` ranks; the directory of the saved model and the
    run's info (as `train_model` returns it, with `world_size`)."""
    import torch

    job_dir = work / "data-parallel"
    out = job_dir / "out"
    job_dir.mkdir(parents=True, exist_ok=True)
    (out / "info.json").unlink(missing_ok=True)  # what a killed earlier try left is not this run's
    if place.device == "cuda" and torch.cuda.device_count() < fc.processes:
        raise DataParallelError(f"finetune.processes is {fc.processes} but {torch.cuda.device_count()} GPUs are visible")
    job = {"finetune": fc.model_dump(mode="json"), "rows_dir": str(rows_dir), "with_weights": with_weights,
           "base_path": base_path, "work": str(work), "trust_remote_code": trust_remote_code,
           "placement": asdict(place), "out": str(out)}
    (job_dir / "job.json").write_text(json.dumps(job, indent=1))
    # The machine's cores shared out: N ranks of all threads each would fight over them.
    threads = max(1, torch.get_num_threads() // fc.processes) if place.device == "cpu" else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(fc.processes), "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "tokenweight.data_parallel", str(job_dir / "job.json")]
    logger().info("finetune: %d data-parallel processes (torchrun, %s), %d threads each", fc.processes,
                  "nccl" if place.device == "cuda" else "gloo", threads)
    ranks_log = job_dir / "ranks.log"
    with ranks_log.open("w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                                preexec_fn=_parent_death_signal())
        for line in proc.stdout:
            logger().info("%s", line.rstrip())
        code = proc.wait()
    if code != 0 or not (out / "info.json").exists():
        tail = ranks_log.read_text()[-6000:]
        raise DataParallelError(f"finetune: torchrun with {fc.processes} processes exited with {code}; "
                                f"the end of {ranks_log}:\n{tail}")
    return out / "model", json.loads((out / "info.json").read_text())


def _rank_main(job_path: str) -> None:
    """One rank of the job: join the process group, train, and on rank 0 save the result."""
    import torch
    import torch.distributed as dist

    from .models import save_model

    job = json.loads(Path(job_path).read_text())
    place = Placement(**job["placement"])
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if place.device == "cuda":
        torch.cuda.set_device(local)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # The process group first, so the Trainer's accelerate state joins it rather than guessing a backend.
    dist.init_process_group("nccl" if place.device == "cuda" else "gloo")
    # Rank 0's log lines go to stdout, which the stage forwards to its own log.
    log = logging.getLogger("tokenweight")
    if rank == 0:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    fc = FinetuneConfig(**job["finetune"])
    per_rank = fc.model_copy(update={"batch_size": fc.batch_size // world})
    model, tokenizer, info = train_finetune(per_rank, Path(job["rows_dir"]), job["with_weights"], job["base_path"],
                                            Path(job["work"]), job["trust_remote_code"], place, ranks=world)
    if rank == 0:
        out = Path(job["out"])
        save_model(model, tokenizer, out / "model")
        # Written last: its presence says the model beside it is whole.
        (out / "info.tmp").write_text(json.dumps({**info, "world_size": world}))
        (out / "info.tmp").replace(out / "info.json")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _rank_main(sys.argv[1])
