"""The Trainer-based fine-tune on the tiny model: exact accumulation, logs, crash and resume."""

import random

import pytest
import torch
from transformers import TrainerCallback

from tokenweight.config import FinetuneConfig
from tokenweight.kernels.weighted_trainer import TokenRows, collate
from tokenweight.tasks.finetune import train_model


def _rows(tokenizer, n=12, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length = rng.randint(10, 24)
        ids = [rng.randrange(100, 5000) for _ in range(length)]
        start = rng.randint(3, length - 4)
        mask = [0] * start + [1] * (length - start)
        classes = [rng.randint(0, 1) if m else 0 for m in mask]
        weight = [round(rng.uniform(0.1, 2.0), 3) if m else 0.0 for m in mask]
        rows.append({"input_ids": ids, "loss_mask": mask, "token_class": classes, "weight": weight})
    return rows


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _config(**over):
    base = dict(method="rft", epochs=1, learning_rate=1e-2, warmup_share=0.0, batch_size=2, grad_accum=2,
                logging_steps=1, save_steps=1000, seed=0)
    return FinetuneConfig(**{**base, **over})


def test_collate_pads_every_column_to_the_longest_row(smol_tokenizer):
    rows = _rows(smol_tokenizer, 3)
    batch = collate(rows, pad_id=7)
    width = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == (3, width)
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["attention_mask"][b].sum() == n
        assert batch["input_ids"][b, n:].eq(7).all()
        assert batch["weight"][b, :n].tolist() == pytest.approx(row["weight"])
        assert batch["loss_mask"][b, n:].eq(0).all()


def test_token_rows_reject_a_row_without_targets_or_with_ragged_columns():
    good = {"input_ids": [1, 2, 3], "loss_mask": [0, 1, 1], "token_class": [0, 0, 1], "weight": [0, 1, 1]}
    with pytest.raises(ValueError, match="row 1 has no target token"):
        TokenRows([good, {**good, "loss_mask": [1, 0, 0]}])
    with pytest.raises(ValueError, match="row 0: weight has 2 values for 3 tokens"):
        TokenRows([{**good, "weight": [0, 1]}])


class _Grads(TrainerCallback):
    """The accumulated gradients just before the optimizer step."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["sft", "rft", "weighted"])
def test_accumulating_micro_batches_equals_one_large_batch(method, tiny_model_dir, smol_tokenizer, tmp_path):
    """batch 2 x accumulate 2 gives the gradient of batch 4 x accumulate 1."""
    rows = _rows(smol_tokenizer, 4)
    grads = {}
    for name, (bs, ga) in {"accumulated": (2, 2), "whole": (4, 1)}.items():
        fc = _config(method=method, batch_size=bs, grad_accum=ga, max_steps=1)
        probe = _Grads()
        _, _, info = train_model(fc, rows, tiny_model_dir, tmp_path / name, callbacks=[probe])
        assert info["steps"] == 1
        grads[name] = probe.grads
    assert grads["whole"].keys() == grads["accumulated"].keys()
    assert max(g.abs().max().item() for g in grads["whole"].values()) > 1e-3
    for k, g in grads["whole"].items():
        assert torch.allclose(grads["accumulated"][k], g, atol=1e-7, rtol=1e-4), k


def test_logs_carry_class_losses_and_throughput(tiny_model_dir, smol_tokenizer, tmp_path):
    _, _, info = train_model(_config(max_steps=3), _rows(smol_tokenizer), tiny_model_dir, tmp_path / "w")
    steps = [h for h in info["log_history"] if "loss" in h]
    assert len(steps) == 3
    for h in steps:
        assert h["loss_boilerplate"] > 0 and h["loss_reasoning"] > 0 and h["tokens_per_s"] > 0


class _Crash(TrainerCallback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt("killed")


def test_a_crashed_run_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_run_ends(
    tiny_model_dir, smol_tokenizer, tmp_path
):
    rows = _rows(smol_tokenizer, 16)
    fc = _config(epochs=2, save_steps=3)  # 16 rows / (2*2) = 4 steps an epoch, 8 in all
    straight, _, info = train_model(fc, rows, tiny_model_dir, tmp_path / "straight")
    assert info["steps"] == 8 and info["resumed_from"] is None

    work = tmp_path / "crashy"
    with pytest.raises(KeyboardInterrupt):
        train_model(fc, rows, tiny_model_dir, work, callbacks=[_Crash(at_step=5)])
    assert (work / "checkpoint-3").is_dir()
    resumed, _, info = train_model(fc, rows, tiny_model_dir, work)
    assert info["resumed_from"] == "checkpoint-3"
    assert info["steps"] == 8
    a, b = _params(straight), _params(resumed)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k


def test_a_half_saved_checkpoint_is_never_resumed_from(tiny_model_dir, smol_tokenizer, tmp_path):
    """The Trainer writes a checkpoint file by file: one cut short looks like a checkpoint."""
    import shutil

    from tokenweight.kernels.weighted_trainer import COMPLETE_MARKER, last_complete_checkpoint

    work = tmp_path / "w"
    with pytest.raises(KeyboardInterrupt):
        train_model(_config(epochs=2, save_steps=3), _rows(smol_tokenizer, 16), tiny_model_dir, work,
                    callbacks=[_Crash(at_step=5)])
    assert (work / "checkpoint-3" / COMPLETE_MARKER).is_file()
    half = work / "checkpoint-6"
    shutil.copytree(work / "checkpoint-3", half)
    (half / COMPLETE_MARKER).unlink()
    (half / "optimizer.pt").unlink()
    corrupt = work / "checkpoint-9"  # whole once, then a file changed
    shutil.copytree(work / "checkpoint-3", corrupt)
    (corrupt / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(work) == work / "checkpoint-3"
    assert not half.exists() and not corrupt.exists()
    assert last_complete_checkpoint(tmp_path / "none") is None


def test_a_window_of_zero_weights_takes_no_step(tiny_model_dir, smol_tokenizer, tmp_path):
    rows = _rows(smol_tokenizer, 4)
    for row in rows:
        row["weight"] = [0.0] * len(row["weight"])
    probe = _Grads()
    model, _, info = train_model(_config(method="weighted", batch_size=4, grad_accum=1, max_steps=1), rows,
                                 tiny_model_dir, tmp_path / "w", callbacks=[probe])
    assert all(torch.count_nonzero(g) == 0 for g in probe.grads.values())
    assert info["train_loss"] == 0.0


def test_unknown_classes_train_sft_without_class_logs_and_are_refused_by_rft(tiny_model_dir, smol_tokenizer, tmp_path):
    rows = _rows(smol_tokenizer, 4)
    for row in rows:
        row["token_class"] = [-1] * len(row["input_ids"])
    _, _, info = train_model(_config(method="sft", max_steps=1), rows, tiny_model_dir, tmp_path / "sft")
    logged = next(h for h in info["log_history"] if "loss" in h)
    assert "loss_boilerplate" not in logged and "loss_reasoning" not in logged and logged["tokens_per_s"] > 0
    with pytest.raises(ValueError, match="rft needs a class .* row 0"):
        train_model(_config(method="rft", max_steps=1), rows, tiny_model_dir, tmp_path / "rft")
