"""components/token_loss.py: the chunked target-only losses equal the plain full-logits reference."""

import pytest
import torch

from tokenweight.components.batching import pad_batch
from tokenweight.components.token_loss import chunked_token_ce, reference_token_losses, target_token_losses


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


def _reference_ce(hidden, weight, targets):
    return torch.nn.functional.cross_entropy((hidden @ weight.T).float(), targets, reduction="none")


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,vocab,chunk", [(1, 50, 4), (13, 97, 4), (16, 64, 16), (7, 1000, 1024), (30, 333, 7)])
@pytest.mark.parametrize("train_head", [True, False])
def test_linear_token_ce_losses_and_gradients_equal_reference(n, vocab, chunk, train_head, device):
    """The recomputing backward gives the reference's gradients under an uneven upstream gradient
    (the per-token weights of rft / weighted), for odd numbers of rows and vocabularies."""
    from tokenweight.components.token_loss import LinearTokenCE

    g = torch.Generator().manual_seed(n * 1000 + vocab)
    hidden0 = torch.randn(n, 24, generator=g, dtype=torch.float32)
    weight0 = torch.randn(vocab, 24, generator=g) * 0.3
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[0] = vocab - 1  # the last vocabulary entry
    upstream = torch.rand(n, generator=g) * 2
    upstream[n // 2] = 0.0  # a zero-weight token
    hidden0, weight0, targets, upstream = (t.to(device) for t in (hidden0, weight0, targets, upstream))

    def run(fn):
        hidden = hidden0.clone().requires_grad_(True)
        weight = weight0.clone().requires_grad_(train_head)
        losses = fn(hidden, weight)
        (losses * upstream).sum().backward()
        return losses.detach(), hidden.grad, weight.grad

    got = run(lambda h, w: LinearTokenCE.apply(h, w, targets, chunk))
    ref = run(lambda h, w: _reference_ce(h, w, targets))
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)
    if train_head:
        torch.testing.assert_close(got[2], ref[2], atol=1e-5, rtol=1e-5)
    else:
        assert got[2] is None and ref[2] is None
    assert torch.all(got[1][n // 2] == 0)


def test_chunked_token_ce_takes_the_recomputing_path_only_with_gradients(tiny_model):
    """Under no_grad the plain chunks run; with gradients the autograd function does."""
    head = tiny_model.get_output_embeddings()
    hidden = torch.randn(5, head.weight.shape[1], requires_grad=True)
    targets = torch.tensor([1, 2, 3, 4, 5])
    assert chunked_token_ce(hidden, head, targets, 2).grad_fn.name().startswith("LinearTokenCE")
    with torch.no_grad():
        plain = chunked_token_ce(hidden, head, targets, 2)
    torch.testing.assert_close(plain, chunked_token_ce(hidden, head, targets, 2).detach(), atol=1e-6, rtol=1e-6)


def test_all_masked_row_gets_no_gradient(tiny_model, smol_tokenizer):
    ids, attn, mask = make_batch(smol_tokenizer.pad_token_id, CASES["no_targets_row"])
    embed = tiny_model.get_input_embeddings()
    captured = {}
    hook = embed.register_forward_hook(lambda m, i, o: captured.setdefault("out", o.retain_grad() or o))
    try:
        target_token_losses(tiny_model, ids, attn, mask, chunk_rows=2).sum().backward()
    finally:
        hook.remove()
        tiny_model.zero_grad(set_to_none=True)
    grad = captured["out"].grad
    assert torch.all(grad[0] == 0) and grad[1].abs().sum() > 0
