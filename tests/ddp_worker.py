"""The worker of tests/test_ddp_training.py: a few optimizer steps of the real trainers, dumped.

Launched by `launch` under torchrun (N processes, gloo on the CPU: real DistributedDataParallel), or
called in one process (`train_all`, the reference). For each variant it trains a fresh copy of the
model for `steps` optimizer steps and keeps, per step, the gradients the optimizer is about to
apply (after DDP's all-reduce and the Trainer's clipping) and, at the end, the parameters:

- `sft`, `rft`, `weighted`: `WeightedLossTrainer` with `training_arguments(fc, out)`;
- `external`: `WeightedTokenTrainer` (tokenweight/external_trainers.py) on the same rows.

The optimizer is plain SGD (see the test for why). Under torchrun each rank writes
`{out}/rank{R}.pt`; `launch` returns them in rank order.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py \
        --model-dir M --tokenizer-dir T --out O --batch-size 2 --grad-accum 2 --steps 2
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import torch

from helpers import ddp_rows  # tests/ is on sys.path: pytest's, or under torchrun this script's directory

VARIANTS = ("sft", "rft", "weighted", "dft", "asft", "external")
# DFT's gradients are ~1e-5 of sft's on the random tiny model (each token's is scaled by its
# probability, about 1/49152): a larger step moves it as far as sft moves, so that at asft's second
# step the model has left its anchor and the KL term's gradient counts.
LEARNING_RATE_SCALE = {"dft": 1e4, "asft": 1e4}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grad_dump():
    from transformers import TrainerCallback

    class GradDump(TrainerCallback):
        """The gradients the optimizer is about to apply, one dict per optimizer step."""

        def __init__(self):
            self.steps = []

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.steps.append({k: p.grad.detach().clone() for k, p in model.named_parameters()
                               if p.grad is not None})

    return GradDump()


def train_variant(variant: str, model_dir: str, tokenizer_dir: str, out: Path, batch_size: int,
                  grad_accum: int, steps: int, learning_rate: float) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    from tokenweight.config import FinetuneConfig
    from tokenweight.external_trainers import WeightedTokenCollator, WeightedTokenTrainer
    from tokenweight.components.weighted_trainer import TokenRows, WeightedLossTrainer, collate
    from tokenweight.models import load_model, load_tokenizer
    from tokenweight.components.trainer_setup import training_arguments

    tokenizer = load_tokenizer(tokenizer_dir)
    model = load_model(model_dir)
    method = "weighted" if variant == "external" else variant
    learning_rate *= LEARNING_RATE_SCALE.get(variant, 1.0)
    fc = FinetuneConfig(method=method, max_steps=steps, learning_rate=learning_rate, warmup_share=0.0,
                        batch_size=batch_size, grad_accum=grad_accum, logging_steps=1, save_steps=10_000, seed=0)
    args = training_arguments(fc, out / variant)
    args.set_optimizer("sgd", learning_rate=args.learning_rate, weight_decay=args.weight_decay)
    args.disable_tqdm = True
    probe = _grad_dump()
    rows = ddp_rows()
    if variant == "external":
        trainer = WeightedTokenTrainer(model=model, args=args, train_dataset=rows, callbacks=[probe],
                                       data_collator=WeightedTokenCollator(pad_token_id=tokenizer.pad_token_id))
    else:
        trainer = WeightedLossTrainer(model=model, args=args, train_dataset=TokenRows(rows), callbacks=[probe],
                                      data_collator=partial(collate, pad_id=tokenizer.pad_token_id), method=method)
    trainer.train()
    assert trainer.state.global_step == len(probe.steps) == steps, (trainer.state.global_step, len(probe.steps))
    return {
        "grads": probe.steps,
        "params": {k: v.detach().clone() for k, v in trainer.model.named_parameters()},
        "world_size": args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "ddp_wrapped": isinstance(trainer.model_wrapped, DistributedDataParallel),
        "train_loss": trainer.state.log_history[-1].get("train_loss"),
    }


def train_all(model_dir: str, tokenizer_dir: str, out: Path, batch_size: int, grad_accum: int, steps: int,
              learning_rate: float, variants=VARIANTS) -> dict[str, dict]:
    return {v: train_variant(v, model_dir, tokenizer_dir, out, batch_size, grad_accum, steps, learning_rate)
            for v in variants}


def launch(model_dir: str, tokenizer_dir: str, out: Path, nproc: int, batch_size: int, grad_accum: int,
           steps: int, learning_rate: float, timeout: float = 300) -> list[dict[str, dict]]:
    """Run the worker under torchrun (gloo, CPU); the results of each rank, in rank order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__,
           "--model-dir", model_dir, "--tokenizer-dir", tokenizer_dir, "--out", str(out),
           "--batch-size", str(batch_size), "--grad-accum", str(grad_accum), "--steps", str(steps),
           "--learning-rate", repr(learning_rate)]
    # Its own process group, so that a hung run (a rank waiting on a dead peer) is killed whole.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise RuntimeError(f"torchrun ran past {timeout}s:\n{stdout[-4000:]}\n{stderr[-8000:]}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun failed ({proc.returncode}):\n{stdout[-4000:]}\n{stderr[-8000:]}")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(nproc)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--tokenizer-dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--grad-accum", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--learning-rate", type=float, required=True)
    a = parser.parse_args()
    torch.set_num_threads(1)
    # gloo on the CPU, set up before the Trainer's accelerate state (which would reuse it).
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    results = train_all(a.model_dir, a.tokenizer_dir, a.out, a.batch_size, a.grad_accum, a.steps, a.learning_rate)
    torch.save(results, a.out / f"rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
