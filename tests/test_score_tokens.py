"""components/score_tokens.py: shared-bottom scoring equals plain scoring; order and padding."""

import copy

import numpy as np
import pytest
import torch

from tokenweight.components.batching import pad_batch
from tokenweight.components.score_tokens import score_rows
from tokenweight.components.token_loss import reference_token_losses


def rows_and_masks(seed=0, lengths=(13, 5, 30, 1, 9, 22, 7)):
    g = torch.Generator().manual_seed(seed)
    rows, masks = [], []
    for n in lengths:
        rows.append(torch.randint(3, 49152, (n,), generator=g).tolist())
        masks.append((torch.rand(n, generator=g) < 0.7).long().tolist())
    return rows, masks


@pytest.fixture
def two_models(tiny_model):
    tuned = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in tuned.model.layers[-1].parameters():
            p.add_(torch.randn_like(p) * 0.2)
        tuned.model.norm.weight.mul_(1.3)
    return {"base": tiny_model, "disc": tuned}


@pytest.mark.parametrize("batch_tokens", [16, 64, 4096])
def test_shared_bottom_scoring_equals_plain_scoring(two_models, smol_tokenizer, batch_tokens):
    rows, masks = rows_and_masks()
    pad = smol_tokenizer.pad_token_id
    plain = score_rows(two_models, rows, masks, pad, batch_tokens=batch_tokens, chunk_rows=8)
    shared = score_rows(two_models, rows, masks, pad, batch_tokens=batch_tokens, chunk_rows=8, shared_top_layers=1)
    assert set(plain) == set(shared) == {"base", "disc"}
    for name in plain:
        for a, b in zip(plain[name], shared[name]):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    # The perturbed top block really does score differently.
    assert not np.allclose(np.concatenate(plain["base"]), np.concatenate(plain["disc"]))


def test_shared_top_layers_refuses_models_with_different_bottoms(two_models, smol_tokenizer):
    rows, masks = rows_and_masks()
    with torch.no_grad():
        two_models["disc"].model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    with pytest.raises(ValueError, match="differ below"):
        score_rows(two_models, rows, masks, smol_tokenizer.pad_token_id, shared_top_layers=1)


def test_rows_come_back_in_input_order_and_match_reference(two_models, smol_tokenizer):
    rows, masks = rows_and_masks(1)
    pad = smol_tokenizer.pad_token_id
    out = score_rows(two_models, rows, masks, pad, batch_tokens=48, chunk_rows=5)
    for name, model in two_models.items():
        assert len(out[name]) == len(rows)
        for row, mask, got in zip(rows, masks, out[name]):
            assert got.dtype == np.float32 and got.shape == (len(row),)
            ids, attn, lm = pad_batch([row], [mask], pad)
            with torch.no_grad():
                ref = reference_token_losses(model, ids, attn, lm)[0].numpy()
            np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
            assert np.all(got[np.asarray(mask) == 0] == 0)


def test_row_alone_equals_row_inside_padded_batch(two_models, smol_tokenizer):
    rows, masks = rows_and_masks(2)
    pad = smol_tokenizer.pad_token_id
    batch = score_rows(two_models, rows, masks, pad, batch_tokens=10**6)  # one batch, much padding
    for i in (0, 3, len(rows) - 1):
        alone = score_rows(two_models, [rows[i]], [masks[i]], pad)
        for name in two_models:
            np.testing.assert_allclose(alone[name][0], batch[name][i], atol=1e-6, rtol=0)


def test_on_batch_reports_every_real_token(two_models, smol_tokenizer):
    rows, masks = rows_and_masks()
    seen = []
    score_rows(two_models, rows, masks, smol_tokenizer.pad_token_id, batch_tokens=40, on_batch=seen.append)
    assert sum(seen) == sum(len(r) for r in rows) and len(seen) > 1
