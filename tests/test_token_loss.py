"""kernels/token_loss.py: the chunked target-only losses equal the plain full-logits reference."""

import pytest
import torch

from tokenweight.kernels.batching import pad_batch
from tokenweight.kernels.token_loss import chunked_token_ce, reference_token_losses, target_token_losses


def make_batch(pad_id, rows_masks):
    rows = [r for r, _ in rows_masks]
    masks = [m for _, m in rows_masks]
    return pad_batch(rows, masks, pad_id)


def random_rows(seed, lengths, vocab=49152):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        row = torch.randint(3, vocab, (n,), generator=g).tolist()
        mask = (torch.rand(n, generator=g) < 0.6).long().tolist()
        out.append((row, mask))
    return out


CASES = {
    "mixed": random_rows(0, [9, 17, 5, 12]),
    "length_one_row": random_rows(1, [1, 7]) ,
    "all_targets_row": [([5, 6, 7, 8, 9, 10], [1] * 6), ([11, 12, 13], [0, 1, 0])],
    "no_targets_row": [([5, 6, 7, 8], [0] * 4), ([11, 12, 13, 14, 15], [0, 1, 1, 0, 1])],
    "single_length_one": [([42], [1])],
}


@pytest.mark.parametrize("chunk_rows", [1, 3, 1024])
@pytest.mark.parametrize("case", list(CASES))
def test_chunked_losses_equal_reference(tiny_model, smol_tokenizer, case, chunk_rows):
    ids, attn, mask = make_batch(smol_tokenizer.pad_token_id, CASES[case])
    with torch.no_grad():
        got = target_token_losses(tiny_model, ids, attn, mask, chunk_rows)
        ref = reference_token_losses(tiny_model, ids, attn, mask)
    assert got.shape == ids.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # Zero off the mask, and at position 0 (no context), positive on the targets.
    assert torch.all(got[mask == 0] == 0)
    assert torch.all(got[:, 0] == 0)
    targets = mask.clone()
    targets[:, 0] = 0
    assert torch.all(got[targets == 1] > 0)


def test_number_of_targets_not_divisible_by_chunk(tiny_model, smol_tokenizer):
    rows = random_rows(3, [23, 31])
    ids, attn, mask = make_batch(smol_tokenizer.pad_token_id, rows)
    n_targets = int(mask[:, 1:].sum())
    chunk = 5
    assert n_targets % chunk != 0
    with torch.no_grad():
        torch.testing.assert_close(
            target_token_losses(tiny_model, ids, attn, mask, chunk),
            reference_token_losses(tiny_model, ids, attn, mask), atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_a_rows_losses(tiny_model, smol_tokenizer):
    rows = random_rows(4, [6, 20])
    ids1, attn1, mask1 = make_batch(smol_tokenizer.pad_token_id, rows[:1])
    ids2, attn2, mask2 = make_batch(smol_tokenizer.pad_token_id, rows)
    with torch.no_grad():
        alone = target_token_losses(tiny_model, ids1, attn1, mask1)
        padded = target_token_losses(tiny_model, ids2, attn2, mask2)
    torch.testing.assert_close(alone[0], padded[0, :6], atol=1e-5, rtol=1e-5)


def test_gradients_equal_reference(tiny_model, smol_tokenizer):
    ids, attn, mask = make_batch(smol_tokenizer.pad_token_id, CASES["mixed"])
    params = [p for p in tiny_model.parameters() if p.requires_grad]

    def grads(fn):
        tiny_model.zero_grad(set_to_none=True)
        fn().sum().backward()
        return [p.grad.detach().clone() for p in params]

    got = grads(lambda: target_token_losses(tiny_model, ids, attn, mask, chunk_rows=4))
    ref = grads(lambda: reference_token_losses(tiny_model, ids, attn, mask))
    assert len(got) == len(ref) > 0
    for g, r in zip(got, ref):
        scale = r.abs().max().clamp_min(1e-12)
        assert (g - r).abs().max() / scale <= 1e-5
    assert any(r.abs().max() > 0 for r in ref)


def test_chunked_token_ce_with_no_rows(tiny_model):
    head = tiny_model.get_output_embeddings()
    out = chunked_token_ce(torch.zeros(0, 32), head, torch.zeros(0, dtype=torch.long), 4)
    assert out.shape == (0,) and out.dtype == torch.float32
