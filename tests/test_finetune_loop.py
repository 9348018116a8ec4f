"""components/finetune_loop.py: what trains, that it learns, that it is deterministic, and that the
split (frozen-bottom) path computes the same thing as the plain path."""

import copy

import pytest
import torch

from tokenweight.components import finetune_loop
from tokenweight.components.finetune_loop import TrainSettings, freeze_below, train_on_targets


def dataset(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows, masks = [], []
    for i in range(n):
        length = 8 + 3 * i
        rows.append(torch.randint(3, 2000, (length,), generator=g).tolist())
        masks.append([0] * (length // 2) + [1] * (length - length // 2))
    return rows, masks


def settings(**over):
    kw = dict(epochs=1.0, learning_rate=5e-3, warmup_share=0.0, weight_decay=0.0, batch_tokens=64,
              train_layers=None, seed=0, chunk_rows=16)
    kw.update(over)
    return TrainSettings(**kw)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("k", [1, 2])
def test_train_layers_changes_only_top_blocks_and_final_norm(tiny_model, smol_tokenizer, k):
    before = snapshot(tiny_model)
    rows, masks = dataset()
    train_on_targets(tiny_model, rows, masks, settings(train_layers=k, epochs=2), smol_tokenizer.pad_token_id)
    after = snapshot(tiny_model)
    n = 4
    top = tuple(f"model.layers.{i}." for i in range(n - k, n)) + ("model.norm.",)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    for name in before:
        if name.startswith(top):
            continue
        assert name not in changed, f"{name} changed but is below the top {k} blocks"
    assert any(name.startswith(f"model.layers.{n - 1}.") for name in changed)
    assert "model.norm.weight" in changed
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])


def test_freeze_below_counts_trainable_parameters(tiny_model):
    total = sum(p.numel() for p in tiny_model.parameters())
    assert freeze_below(tiny_model, None) == total
    block = sum(p.numel() for p in tiny_model.model.layers[3].parameters())
    norm = tiny_model.model.norm.weight.numel()
    assert freeze_below(tiny_model, 1) == block + norm
    with pytest.raises(ValueError, match="train_layers=5"):
        freeze_below(tiny_model, 5)


@pytest.mark.parametrize("train_layers", [None, 2])
def test_loss_goes_down_on_a_repeated_dataset(tiny_model, smol_tokenizer, train_layers):
    rows, masks = dataset(n=3)
    rows, masks = rows * 4, masks * 4
    steps = []
    losses = train_on_targets(tiny_model, rows, masks, settings(epochs=10, learning_rate=3e-2, train_layers=train_layers),
                              smol_tokenizer.pad_token_id, on_step=lambda *a: steps.append(a))
    assert len(losses) == len(steps) and len(losses) >= 6
    assert [s[0] for s in steps] == list(range(len(losses)))
    assert all(s[1] == len(losses) for s in steps)
    first = sum(losses[:2]) / 2
    last = sum(losses[-2:]) / 2
    assert last < first - 0.5, losses
    assert not tiny_model.training  # back in eval mode


def test_same_seed_gives_identical_losses_and_parameters(smol_tokenizer):
    from helpers import make_tiny_model

    rows, masks = dataset()
    results = []
    for _ in range(2):
        model = make_tiny_model(smol_tokenizer)
        losses = train_on_targets(model, rows, masks, settings(epochs=2, train_layers=2), smol_tokenizer.pad_token_id)
        results.append((losses, snapshot(model)))
    (l1, p1), (l2, p2) = results
    assert l1 == l2
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    # A different seed takes the batches in another order.
    model = make_tiny_model(smol_tokenizer)
    l3 = train_on_targets(model, rows, masks, settings(epochs=2, train_layers=2, seed=1), smol_tokenizer.pad_token_id)
    assert l3 != l1


def test_split_path_equals_plain_path_with_the_same_trainable_parameters(tiny_model, smol_tokenizer):
    """train_layers=4 (bottom = embeddings only, run once and cached) trains exactly what the plain
    path trains when the (tied) embeddings are frozen by hand, so losses and weights agree."""
    rows, masks = dataset()
    plain = copy.deepcopy(tiny_model)
    plain.model.embed_tokens.requires_grad_(False)
    l_plain = train_on_targets(plain, rows, masks, settings(epochs=2), smol_tokenizer.pad_token_id)
    l_split = train_on_targets(tiny_model, rows, masks, settings(epochs=2, train_layers=4), smol_tokenizer.pad_token_id)
    assert len(l_plain) == len(l_split)
    assert l_plain == pytest.approx(l_split, rel=1e-4, abs=1e-5)
    a, b = snapshot(plain), snapshot(tiny_model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)


def test_bottom_cache_and_recomputed_bottom_agree(smol_tokenizer, monkeypatch):
    from helpers import make_tiny_model

    rows, masks = dataset()
    cached_model = make_tiny_model(smol_tokenizer)
    cached = train_on_targets(cached_model, rows, masks, settings(epochs=2, train_layers=2), smol_tokenizer.pad_token_id)
    monkeypatch.setattr(finetune_loop, "BOTTOM_CACHE_BYTES", 0)  # too small: recompute per step
    fresh_model = make_tiny_model(smol_tokenizer)
    recomputed = train_on_targets(fresh_model, rows, masks, settings(epochs=2, train_layers=2), smol_tokenizer.pad_token_id)
    assert cached == pytest.approx(recomputed, rel=1e-5, abs=1e-6)


def test_fractional_epochs_take_ceil_of_steps(tiny_model, smol_tokenizer):
    rows, masks = dataset()
    n_batches = len(finetune_loop.length_batches([len(r) for r in rows], 64))
    losses = train_on_targets(tiny_model, rows, masks, settings(epochs=1.5, train_layers=1), smol_tokenizer.pad_token_id)
    assert len(losses) == -(-3 * n_batches // 2)
