"""The Trainer-based fine-tune on the tiny model: exact accumulation, logs, crash and resume."""

import dataclasses
import math
from functools import partial

import pytest
import torch
from transformers import LlamaForCausalLM, TrainerCallback

from helpers import ddp_rows
from tokenweight.config import FinetuneConfig
from tokenweight.components.weighted_trainer import TokenRows, WeightedLossTrainer, collate
from tokenweight.models import load_model
from tokenweight.components.trainer_setup import train_model, training_arguments


def _rows(tokenizer, n=12, seed=0):
    """Rows of varied lengths with a target span, token classes 0/1 and weights (those ddp_worker trains on)."""
    return ddp_rows(n, seed)


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


@pytest.mark.parametrize("method", ["sft", "rft", "weighted", "dft", "asft"])
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
    # A random tiny model gives each target token p ~ 1/vocab, so DFT's gradients are ~1e-5 of sft's:
    # the comparison is relative to the largest gradient.
    largest = max(g.abs().max().item() for g in grads["whole"].values())
    assert largest > (1e-7 if method in ("dft", "asft") else 1e-3)
    for k, g in grads["whole"].items():
        assert torch.allclose(grads["accumulated"][k], g, atol=min(1e-7, 1e-4 * largest), rtol=1e-4), k


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

    from tokenweight.components.weighted_trainer import COMPLETE_MARKER, last_complete_checkpoint

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


# --- the forward goes through the model the Trainer hands compute_loss ---------------------------


class _SeenLosses(WeightedLossTrainer):
    """Keeps each micro-batch's inputs and the per-token losses compute_loss computed for it."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, out = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        self.__dict__.setdefault("seen", []).append(({k: v.clone() for k, v in inputs.items()},
                                                     out["losses"].detach().clone()))
        return (loss, out) if return_outputs else loss


def _one_step(model, tokenizer, rows, out, bf16=False, callbacks=()):
    fc = _config(method="sft", batch_size=len(rows), grad_accum=1, max_steps=1, max_grad_norm=1e6)  # no clipping
    args = training_arguments(fc, out)
    if bf16:  # accelerate's autocast in bf16 (it supports it on the CPU)
        args = dataclasses.replace(args, bf16=True)
    trainer = _SeenLosses(model=model, args=args, train_dataset=TokenRows(rows), callbacks=list(callbacks),
                          data_collator=partial(collate, pad_id=tokenizer.pad_token_id), method="sft")
    trainer.train()
    trainer.precision = trainer.accelerator.mixed_precision  # (the accelerate state is per process: read it now)
    return trainer


class _NoLogitsToKeep(LlamaForCausalLM):
    """A causal LM whose forward does not declare `logits_to_keep` (older or remote-code models)."""

    def forward(self, input_ids=None, attention_mask=None, use_cache=None, **kwargs):
        assert "logits_to_keep" not in kwargs
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, **kwargs)


@pytest.mark.parametrize("model_class", [LlamaForCausalLM, _NoLogitsToKeep])
def test_the_loss_comes_from_the_models_own_forward_with_no_logits_in_it(model_class, tiny_model_dir,
                                                                        smol_tokenizer, tmp_path):
    """compute_loss runs model(...) (DDP's and accelerate's wrappers act there), with the LM head
    applied to no position in it; the losses (chunked, at target positions) match full logits."""
    from tokenweight.components.token_loss import reference_token_losses

    rows = _rows(smol_tokenizer, 4)
    model = model_class.from_pretrained(tiny_model_dir, dtype=torch.float32)
    forwards, head_outputs = [], []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    model.lm_head.register_forward_hook(lambda module, args, out: head_outputs.append(tuple(out.shape)))
    probe = _Grads()
    trainer = _one_step(model, smol_tokenizer, rows, tmp_path / "w", callbacks=[probe])
    assert len(forwards) == 1 and len(head_outputs) == 1
    assert head_outputs[0][-1] == model.config.vocab_size and math.prod(head_outputs[0]) == 0
    (inputs, losses), = trainer.seen
    reference = reference_token_losses(load_model(tiny_model_dir), inputs["input_ids"], inputs["attention_mask"],
                                       inputs["loss_mask"])
    predict = inputs["loss_mask"][:, 1:].bool()
    assert torch.allclose(losses, reference[:, 1:][predict], atol=1e-5, rtol=1e-5)
    assert max(g.abs().max().item() for g in probe.grads.values()) > 1e-3


def test_bf16_mixed_precision_reaches_the_loss(tiny_model_dir, smol_tokenizer, tmp_path):
    """With bf16=True the trunk and the LM head run under accelerate's autocast: the per-token
    losses are bf16's, not fp32's (they were fp32's while compute_loss bypassed the wrapped forward),
    and so are the gradients, matching plain autograd through full logits under the same autocast."""
    from tokenweight.components.token_loss import reference_token_losses

    rows = _rows(smol_tokenizer, 4)
    fp32 = _one_step(load_model(tiny_model_dir), smol_tokenizer, rows, tmp_path / "fp32")
    probe = _Grads()
    bf16 = _one_step(load_model(tiny_model_dir), smol_tokenizer, rows, tmp_path / "bf16", bf16=True, callbacks=[probe])
    assert fp32.precision == "no" and bf16.precision == "bf16"
    (inputs, fp32_losses), = fp32.seen
    (bf16_inputs, bf16_losses), = bf16.seen
    assert torch.equal(inputs["input_ids"], bf16_inputs["input_ids"])  # the same micro-batch
    assert bf16_losses.dtype == torch.float32  # (the cross-entropy itself is taken in fp32)
    # The same losses at bf16's precision: near, never equal (fp32 runs agree exactly).
    gap = (bf16_losses - fp32_losses).abs().max()
    assert 1e-4 < gap < 0.1  # (about 7e-4 on the tiny model)

    # The oracle: full logits and plain autograd under the same autocast, same sft loss.
    oracle_model = load_model(tiny_model_dir)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        oracle = reference_token_losses(oracle_model, inputs["input_ids"], inputs["attention_mask"],
                                        inputs["loss_mask"])[:, 1:][inputs["loss_mask"][:, 1:].bool()]
    (oracle.sum() / oracle.numel()).backward()
    assert (bf16_losses - oracle.detach()).abs().max() < gap / 20  # (about 2e-6)
    # The gradients too: the chunked head's backward recomputes the logits in bf16 as its forward
    # did (about 1e-6 relative; a backward in fp32 against a bf16 forward is off by about 7e-3).
    for k, p in oracle_model.named_parameters():
        assert (probe.grads[k] - p.grad).norm() <= 1e-4 * p.grad.norm(), k


def _asft_trainer(tiny_model_dir, smol_tokenizer, tmp_path, train_layers, method="asft"):
    from tokenweight.components.finetune_loop import freeze_below

    model = load_model(tiny_model_dir)
    freeze_below(model, train_layers)
    fc = _config(method=method, train_layers=train_layers, max_steps=3, learning_rate=5e-2)
    return WeightedLossTrainer(model=model, args=training_arguments(fc, tmp_path), train_dataset=TokenRows(_rows(smol_tokenizer)),
                               data_collator=partial(collate, pad_id=smol_tokenizer.pad_token_id), method=method,
                               kl_weight=0.1, train_layers=train_layers)


@pytest.mark.parametrize("train_layers", [None, 2])
def test_asft_starts_as_dft_and_its_anchor_stays_the_base_model(train_layers, tiny_model_dir, smol_tokenizer, tmp_path):
    """Before any step the model is the base, so KL(base ‖ model) is 0 and asft's loss is dft's. After
    training, the anchor (a whole frozen copy, or with train_layers only its top run on the shared
    trunk's boundary states) still gives exactly the base model's final hidden states."""
    from tokenweight.components.token_loss import decoder_and_head

    asft = _asft_trainer(tiny_model_dir, smol_tokenizer, tmp_path / "asft", train_layers)
    dft = _asft_trainer(tiny_model_dir, smol_tokenizer, tmp_path / "dft", train_layers, method="dft")
    batch = collate(_rows(smol_tokenizer, 4), pad_id=smol_tokenizer.pad_token_id)
    with torch.no_grad():
        assert asft.compute_loss(asft.model, batch).item() == pytest.approx(dft.compute_loss(dft.model, batch).item(), rel=1e-5)
    asft.train()
    with torch.no_grad():
        _, _, boundary = asft._final_hidden(asft.model, batch, asft.anchor.boundary_layer)
        ref = asft.anchor.final_hidden(batch["input_ids"], batch["attention_mask"], boundary)
        base_trunk, _ = decoder_and_head(load_model(tiny_model_dir))
        want = base_trunk(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        now, _, _ = asft._final_hidden(asft.model, batch)
    keep = batch["attention_mask"].bool()
    assert (ref[keep] - want[keep]).abs().max().item() < 1e-4
    assert (now[keep] - want[keep]).abs().max().item() > 1e-3  # the model did move away from its anchor
    with torch.no_grad():
        assert asft.compute_loss(asft.model, batch).item() > dft.compute_loss(asft.model, batch).item()  # the KL term
