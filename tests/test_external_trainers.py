"""The weight shards in other trainers: the loader, the collator, and the `weighted` loss inside the
transformers Trainer and TRL's SFTTrainer, checked against tokenweight's own per-token losses."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch
from transformers import TrainerCallback, TrainingArguments
from trl import SFTConfig, SFTTrainer

from tokenweight.external_trainers import (
    TRAIN_COLUMNS,
    TokenWeightMixin,
    WeightedTokenCollator,
    WeightedTokenTrainer,
    dft_token_loss,
    load_weight_shards,
    rft_token_loss,
    weighted_token_loss,
)
from tokenweight.components.token_loss import reference_token_losses
from tokenweight.models import load_model
from weight_shards_fixture import weight_shards_fixture  # noqa: F401  (the weight_shards fixture)

PAD = 7


class WeightedSFTTrainer(TokenWeightMixin, SFTTrainer):
    pass


class _Recording:
    """Keeps each training step's batch, the parameters it started from and the loss it returned."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.steps.append((params, {k: v.clone() for k, v in inputs.items()}, loss.item()))
        return loss


class _RecordingTrainer(_Recording, WeightedTokenTrainer):
    steps: list


class _RecordingSFTTrainer(_Recording, WeightedSFTTrainer):
    steps: list


class _Grads(TrainerCallback):
    """The accumulated gradients just before the optimizer step."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def _trainer(kind, model_dir, dataset, out, recording=False, trainer_kwargs=None, **over):
    common = dict(output_dir=str(out), per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=2,
                  learning_rate=1e-2, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                  report_to=[], seed=0, remove_unused_columns=False, use_cpu=True)
    common.update(over)
    model = load_model(model_dir)
    collator = WeightedTokenCollator(pad_token_id=PAD)
    if kind == "transformers":
        cls = _RecordingTrainer if recording else WeightedTokenTrainer
        trainer = cls(model=model, args=TrainingArguments(**common), train_dataset=dataset, data_collator=collator,
                      **(trainer_kwargs or {}))
    else:
        cls = _RecordingSFTTrainer if recording else WeightedSFTTrainer
        args = SFTConfig(**{"bf16": False, "dataset_kwargs": {"skip_prepare_dataset": True}, **common})
        trainer = cls(model=model, args=args, train_dataset=dataset, processing_class=_tokenizer(model_dir),
                      data_collator=collator, **(trainer_kwargs or {}))
    trainer.steps = []
    return trainer


def _tokenizer(model_dir):
    from tokenweight.models import load_tokenizer

    return load_tokenizer(model_dir)


def _reference_loss(model_dir, params, batch) -> float:
    """sum(w * CE) / sum(w) over a collated batch, CE from tokenweight's plain reference forward."""
    reference = load_model(model_dir)
    reference.load_state_dict(params)
    with torch.no_grad():
        ce = reference_token_losses(reference, batch["input_ids"], batch["attention_mask"],
                                    batch["labels"].ne(-100).long())  # (B, T), 0 off target
    w = batch["token_weight"]
    return ((w * ce).sum() / w.sum()).item()


# --- loader and collator -------------------------------------------------------------------------

def test_loader_reads_the_train_split_of_the_shards_in_order(weight_shards):
    frame = pl.read_parquet(f"{weight_shards}/part-*.parquet")
    train = frame.filter(pl.col("split") == "train")
    assert 0 < train.height < frame.height  # the fixture has both splits, so the filter is tested
    ds = load_weight_shards(weight_shards)
    assert ds.column_names == list(TRAIN_COLUMNS) and ds.num_rows == train.height
    assert ds.to_list() == train.select(TRAIN_COLUMNS).to_dicts()
    glob_ds = load_weight_shards(f"{weight_shards}/part-*.parquet", split=None, columns=("id", "split"))
    assert glob_ds["id"] == frame["id"].to_list()
    with pytest.raises(FileNotFoundError, match="no weight shards"):
        load_weight_shards(weight_shards / "missing")


def test_collator_pads_right_and_masks_labels_and_weights(weight_shards):
    rows = load_weight_shards(weight_shards).select(range(3)).to_list()
    batch = WeightedTokenCollator(pad_token_id=PAD)(rows)
    width = max(len(r["input_ids"]) for r in rows)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {k: (3, width) for k in
                                                            ("input_ids", "attention_mask", "labels", "token_weight",
                                                             "token_class")}
    assert batch["token_weight"].dtype == torch.float32
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        mask = torch.tensor(row["loss_mask"], dtype=torch.bool)
        assert batch["input_ids"][b, :n].tolist() == row["input_ids"] and batch["input_ids"][b, n:].eq(PAD).all()
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (width - n)
        labels = batch["labels"][b]
        assert labels[:n][mask].tolist() == torch.tensor(row["input_ids"])[mask].tolist()
        assert labels[:n][~mask].eq(-100).all() and labels[n:].eq(-100).all()
        weight = torch.tensor(row["weight"])
        assert torch.equal(batch["token_weight"][b, :n], torch.where(mask, weight, 0.0))
        assert batch["token_weight"][b, n:].eq(0).all()
        classes = torch.tensor(row["token_class"])
        assert torch.equal(batch["token_class"][b, :n], torch.where(mask, classes, -1))
        assert batch["token_class"][b, n:].eq(-1).all()
    with pytest.raises(ValueError, match="row 1: loss_mask and weight"):
        WeightedTokenCollator(pad_token_id=PAD)([rows[0], {**rows[1], "weight": rows[1]["weight"][:-1]}])


# --- the loss ------------------------------------------------------------------------------------

def test_weighted_loss_of_uniform_logits_is_log_vocab_whatever_the_weights():
    """Every target token's CE is log V under uniform logits, so sum(w * CE) / sum(w) = log V for any
    weights; a normaliser other than the sum of weights (tokens, samples) would give another value."""
    vocab = 11
    labels = torch.tensor([[-100, 3, 4, -100], [-100, -100, 5, 6]])
    weight = torch.tensor([[0.0, 0.5, 2.0, 0.0], [0.0, 0.0, 3.0, 0.25]])
    logits = torch.zeros(2, 4, vocab)
    assert weighted_token_loss(logits, labels, weight).item() == pytest.approx(math.log(vocab))
    window = 2 * weight.sum()  # this batch is half of its accumulation window's weight
    assert weighted_token_loss(logits, labels, weight, window).item() == pytest.approx(math.log(vocab) / 2)
    assert weighted_token_loss(logits, labels, torch.zeros_like(weight)).item() == 0.0


@pytest.mark.parametrize("kind", ["transformers", "trl"])
def test_trainer_loss_is_tokenweights_weighted_loss(kind, weight_shards, tiny_model_dir, tmp_path):
    """Each step's loss equals sum(w * CE) / sum(w) of tokenweight's reference per-token losses, at the
    parameters the step started from; the steps train the model; evaluation gives the same loss."""
    trainer = _trainer(kind, tiny_model_dir, load_weight_shards(weight_shards), tmp_path, recording=True,
                       per_device_eval_batch_size=64)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert len(trainer.steps) == 2
    for params, batch, loss in trainer.steps:
        assert loss == pytest.approx(_reference_loss(tiny_model_dir, params, batch), abs=1e-5, rel=1e-5)
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in start.items())
    eval_rows = load_weight_shards(weight_shards, split="eval")  # one batch: the eval loss is its loss
    expected = _reference_loss(tiny_model_dir, trainer.model.state_dict(),
                               WeightedTokenCollator(pad_token_id=PAD)(eval_rows.to_list()))
    assert trainer.evaluate(eval_rows)["eval_loss"] == pytest.approx(expected, abs=1e-5, rel=1e-5)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["loss"] for h in logged] == pytest.approx([s[2] for s in trainer.steps], abs=1e-6)
    if kind == "trl":  # TRL's own metrics still come with the custom loss
        assert all("mean_token_accuracy" in h and "entropy" in h for h in logged)


@pytest.mark.parametrize("kind", ["transformers", "trl"])
def test_accumulating_two_micro_batches_equals_one_batch_twice_as_large(kind, weight_shards, tiny_model_dir, tmp_path):
    """With weights that differ between rows, only the window's sum of weights as the normaliser gives
    the same gradient for batch 2 x accumulate 2 as for batch 4 x accumulate 1."""
    dataset = load_weight_shards(weight_shards).map(
        lambda row, i: {"weight": [w * (1 + 2 * (i % 3)) for w in row["weight"]]}, with_indices=True)
    grads, losses = {}, {}
    for name, (bs, ga) in {"accumulated": (2, 2), "whole": (4, 1)}.items():
        probe = _Grads()
        trainer = _trainer(kind, tiny_model_dir, dataset, tmp_path / name, per_device_train_batch_size=bs,
                           gradient_accumulation_steps=ga, max_steps=1)
        trainer.add_callback(probe)
        losses[name] = trainer.train().training_loss
        grads[name] = probe.grads
    assert losses["accumulated"] == pytest.approx(losses["whole"], abs=1e-5)
    assert grads["whole"].keys() == grads["accumulated"].keys()
    assert max(g.abs().max().item() for g in grads["whole"].values()) > 1e-3
    for k, g in grads["whole"].items():
        assert torch.allclose(grads["accumulated"][k], g, atol=1e-7, rtol=1e-4), k


def test_the_mixin_refuses_settings_that_would_drop_the_weights(weight_shards, tiny_model_dir, tmp_path):
    dataset = load_weight_shards(weight_shards)
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        _trainer("transformers", tiny_model_dir, dataset, tmp_path, remove_unused_columns=True)
    with pytest.raises(ValueError, match="skip_prepare_dataset"):
        _trainer("trl", tiny_model_dir, dataset, tmp_path, dataset_kwargs=None)


# --- the examples --------------------------------------------------------------------------------

@pytest.mark.parametrize("script", ["train_with_hf_trainer", "train_with_trl"])
def test_example_trains_and_saves_a_model(script, weight_shards, tiny_model_dir, tmp_path):
    import importlib

    from safetensors.torch import load_file

    out = tmp_path / "out"
    importlib.import_module(f"examples.{script}").main(
        [str(weight_shards), tiny_model_dir, "--output", str(out), "--max-steps", "2", "--learning-rate", "1e-2"])
    before = load_file(f"{tiny_model_dir}/model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys() and (out / "tokenizer.json").is_file()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("script", ["train_with_hf_trainer", "train_with_trl"])
def test_examples_refuse_a_model_with_only_pickled_weights(script, weight_shards, tiny_model_dir, tmp_path):
    """The examples load safetensors only: a model directory holding a pickled checkpoint is an error,
    and the pickle is never unpickled."""
    import importlib
    import shutil

    from safetensors.torch import load_file

    model_dir = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, model_dir)
    torch.save(load_file(model_dir / "model.safetensors"), model_dir / "pytorch_model.bin")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(OSError, match="safetensors"):
        importlib.import_module(f"examples.{script}").main(
            [str(weight_shards), str(model_dir), "--output", str(tmp_path / "out"), "--max-steps", "1"])


def _reference_rft_loss(model_dir, params, batch, tau) -> float:
    """tokenweight's own rft loss (finetune_losses.rft_sample_losses, as the finetune stage computes
    it) over a collated batch, per-token CE from the plain reference forward, mean over samples."""
    from tokenweight.components.finetune_losses import rft_sample_losses

    reference = load_model(model_dir)
    reference.load_state_dict(params)
    target = batch["labels"].ne(-100)
    target[:, 0] = False  # token 0 is never predicted
    with torch.no_grad():
        ce = reference_token_losses(reference, batch["input_ids"], batch["attention_mask"], target.long())
    n = target.shape[0]
    index = torch.arange(n)[:, None].expand_as(target)[target]
    return (rft_sample_losses(ce[target], batch["token_class"][target], index, n, tau).sum() / n).item()


@pytest.mark.parametrize("kind", ["transformers", "trl"])
def test_adaptive_rft_loss_in_other_trainers_is_tokenweights_rft_loss(kind, weight_shards, tiny_model_dir, tmp_path):
    """With token_loss="rft" each step's loss is tokenweight's adaptive rft loss on the same batch at
    the parameters the step started from, and the steps train the model. (On the random tiny model
    both classes lose about log(vocab), so that it is not the static column shows below.)"""
    dataset = load_weight_shards(weight_shards)
    assert "token_class" in dataset.column_names
    trainer = _trainer(kind, tiny_model_dir, dataset, tmp_path, recording=True,
                       trainer_kwargs={"token_loss": "rft", "tau": 2.0})
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert len(trainer.steps) == 2
    for params, batch, loss in trainer.steps:
        rft = _reference_rft_loss(tiny_model_dir, params, batch, 2.0)
        assert loss == pytest.approx(rft, abs=1e-5, rel=1e-5)
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in start.items())


def test_rft_in_other_trainers_refuses_rows_without_classes(weight_shards, tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown token_loss 'focal'"):
        _trainer("transformers", tiny_model_dir, load_weight_shards(weight_shards), tmp_path,
                 trainer_kwargs={"token_loss": "focal"})
    rows = load_weight_shards(weight_shards, columns=("input_ids", "loss_mask", "weight"))
    trainer = _trainer("transformers", tiny_model_dir, rows, tmp_path, trainer_kwargs={"token_loss": "rft"})
    with pytest.raises(KeyError, match="token_loss rft needs token_class"):
        trainer.train()


def test_rft_token_loss_weighs_each_samples_classes_by_the_softmax_of_their_current_losses():
    vocab = 4
    # one sample, tokens 1..3 predicted: token 1 boilerplate with a sure logit, tokens 2, 3 reasoning at uniform logits
    logits = torch.zeros(1, 4, vocab)
    logits[0, 0, 2] = 20.0  # predicts token 1 (= 2): loss ~0
    labels = torch.tensor([[-100, 2, 1, 3]])
    classes = torch.tensor([[-1, 0, 1, 1]])
    l_b, l_r = 0.0, math.log(vocab)
    w_b, w_r = torch.softmax(torch.tensor([l_b, l_r]) / 1.0, 0).tolist()  # (1/5, 4/5)
    got = rft_token_loss(logits, labels, classes, tau=1.0).item()
    assert got == pytest.approx(w_b * l_b + w_r * l_r, abs=1e-6)
    static = weighted_token_loss(logits, labels, torch.ones(1, 4)).item()  # the token mean, 2/3 log 4
    assert abs(got - static) > 0.1
    with pytest.raises(ValueError, match="token_class 0 or 1"):
        rft_token_loss(logits, labels, torch.tensor([[-1, 0, -1, 1]]), tau=2.0)


def test_dft_of_uniform_logits_over_two_tokens_is_half_the_cross_entropy():
    """Uniform logits over 2 tokens: CE log 2 and p 1/2 at each target, so dft is (log 2) / 2."""
    labels = torch.tensor([[-100, 0, 1, -100]])
    logits = torch.zeros(1, 4, 2)
    assert dft_token_loss(logits, labels).item() == pytest.approx(math.log(2) / 2)
    # asft's KL is 0 when the current model is the anchor.
    assert dft_token_loss(logits, labels, anchor_logits=logits, kl_weight=0.1).item() == pytest.approx(math.log(2) / 2)


def _reference_dft_loss(model_dir, params, batch, anchor_params=None, kl_weight=0.0) -> float:
    """tokenweight's own dft (finetune_losses.dft_sum) over a collated batch, per target token, and for
    asft its KL (token_loss.chunked_kl_to_reference, the finetune stage's) to the anchor's parameters."""
    from tokenweight.components.finetune_losses import dft_sum
    from tokenweight.components.token_loss import chunked_kl_to_reference

    def forward(p):
        model = load_model(model_dir)
        model.load_state_dict(p)
        with torch.no_grad():
            hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return model, hidden

    target = batch["labels"].ne(-100)
    target[:, 0] = False  # token 0 is never predicted
    model, hidden = forward(params)
    with torch.no_grad():
        ce = reference_token_losses(model, batch["input_ids"], batch["attention_mask"], target.long())
    total = dft_sum(ce[target])
    if anchor_params is not None:
        anchor, anchor_hidden = forward(anchor_params)
        predict = target[:, 1:]
        with torch.no_grad():
            total = total + kl_weight * chunked_kl_to_reference(hidden[:, :-1][predict], model.lm_head,
                                                                anchor_hidden[:, :-1][predict], anchor.lm_head)
    return (total / target.sum()).item()


@pytest.mark.parametrize("kind", ["transformers", "trl"])
@pytest.mark.parametrize("token_loss", ["dft", "asft"])
def test_dft_and_asft_in_other_trainers_are_tokenweights_losses(kind, token_loss, weight_shards, tiny_model_dir, tmp_path):
    """Each step's loss is tokenweight's dft (and for asft its KL to the model as training began) on
    the same batch at the parameters the step started from; asft's second step has a non-zero KL."""
    trainer = _trainer(kind, tiny_model_dir, load_weight_shards(weight_shards), tmp_path, recording=True,
                       learning_rate=5.0, trainer_kwargs={"token_loss": token_loss, "kl_weight": 0.5})
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert len(trainer.steps) == 2
    anchor = start if token_loss == "asft" else None
    for params, batch, loss in trainer.steps:
        expected = _reference_dft_loss(tiny_model_dir, params, batch, anchor, 0.5)
        assert loss == pytest.approx(expected, abs=1e-6, rel=1e-5)
    if token_loss == "asft":  # the second step's KL is not nothing: the two losses must differ there
        params, batch, loss = trainer.steps[1]
        assert loss - _reference_dft_loss(tiny_model_dir, params, batch) > 1e-4
