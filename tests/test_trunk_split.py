"""components/trunk_split.py: bottom-then-top equals the whole trunk; same_bottom detects changes."""

import copy

import pytest
import torch

from tokenweight.components.batching import pad_batch
from tokenweight.components.token_loss import decoder_and_head
from tokenweight.components.trunk_split import TrunkSplit, check_split, same_bottom


def batch(pad_id):
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 49152, (n,), generator=g).tolist() for n in (11, 4, 16)]
    return pad_batch(rows, [[1] * len(r) for r in rows], pad_id)


@pytest.mark.parametrize("top_layers", [1, 2, 3, 4])
def test_bottom_then_top_equals_whole_trunk(tiny_model, smol_tokenizer, top_layers):
    ids, attn, _ = batch(smol_tokenizer.pad_token_id)
    trunk, _ = decoder_and_head(tiny_model)
    split = TrunkSplit(tiny_model, top_layers)
    with torch.no_grad():
        whole = trunk(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
        bottom = split.bottom(ids, attn)
        parts = split.top(bottom, attn)
    keep = attn.bool()
    torch.testing.assert_close(parts[keep], whole[keep], atol=1e-5, rtol=1e-5)
    check_split(split, ids, attn)  # does not raise
    # The split leaves the model itself whole.
    assert len(trunk.layers) == 4 and not isinstance(trunk.norm, torch.nn.Identity)


def test_split_bounds_are_checked(tiny_model):
    for bad in (0, 5):
        with pytest.raises(ValueError):
            TrunkSplit(tiny_model, bad)


def test_check_split_raises_when_halves_disagree(tiny_model, smol_tokenizer):
    ids, attn, _ = batch(smol_tokenizer.pad_token_id)
    split = TrunkSplit(tiny_model, 2)
    # Break the split's bottom half only: the model's own trunk keeps its real block.
    split._bottom.layers[0] = torch.nn.Identity()
    split._bottom.layers[0].forward = lambda hidden, *a, **k: hidden * 3
    with pytest.raises(ValueError, match="train_layers"):
        check_split(split, ids, attn)


def test_same_bottom_true_when_only_top_changed(tiny_model):
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other.model.layers[-1].mlp.down_proj.weight.add_(0.5)
        other.model.norm.weight.add_(0.1)
    assert same_bottom(tiny_model, other, 1)
    assert same_bottom(tiny_model, other, 2)


@pytest.mark.parametrize("layer", [0, 2])
def test_same_bottom_false_when_a_bottom_layer_changed(tiny_model, layer):
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other.model.layers[layer].self_attn.q_proj.weight[0, 0] += 1e-3
    assert not same_bottom(tiny_model, other, 1)
    assert same_bottom(tiny_model, other, 4 - layer)  # the changed block is inside the top


def test_same_bottom_false_when_embeddings_changed(tiny_model):
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other.model.embed_tokens.weight[100, 0] += 1.0
    assert not same_bottom(tiny_model, other, 2)
