"""The fine-tune losses on analytic cases, and exact normalisation under gradient accumulation."""

import math

import pytest
import torch

from tokenweight.components.finetune_losses import (
    class_means,
    loss_sum,
    normaliser,
    rft_sample_losses,
    rft_sum,
    sft_sum,
    weighted_sum,
)


def _batch(seed=0, n_samples=3, per_sample=(4, 5, 3)):
    g = torch.Generator().manual_seed(seed)
    sample_index = torch.cat([torch.full((n,), i) for i, n in enumerate(per_sample)])
    losses = torch.rand(len(sample_index), generator=g) * 3
    classes = torch.tensor([0, 1, 0, 1, 1, 1, 0, 0, 1, 0, 1, 0])[: len(sample_index)]
    return losses, classes, sample_index, n_samples


def test_uniform_weights_equal_plain_cross_entropy():
    losses, _, _, _ = _batch()
    weights = torch.full_like(losses, 0.37)
    plain = losses.mean()
    got = weighted_sum(losses, weights) / normaliser("weighted", losses.numel(), float(weights.sum()), 3)
    assert torch.allclose(got, plain)
    assert torch.allclose(sft_sum(losses) / normaliser("sft", losses.numel(), 0.0, 3), plain)


def test_zero_weight_gives_zero_gradient():
    losses, _, _, _ = _batch()
    losses = losses.clone().requires_grad_(True)
    weights = torch.ones_like(losses)
    weights[[1, 4, 7]] = 0.0
    weighted_sum(losses, weights).backward()
    assert torch.all(losses.grad[[1, 4, 7]] == 0)
    assert torch.all(losses.grad[[0, 2, 3]] == 1)


def test_rft_with_a_very_large_tau_is_the_mean_of_the_two_class_means():
    losses, classes, index, n = _batch()
    got = rft_sample_losses(losses, classes, index, n, tau=1e9)
    for s in range(n):
        sel = index == s
        l_b = losses[sel & (classes == 0)].mean()
        l_r = losses[sel & (classes == 1)].mean()
        assert got[s].item() == pytest.approx(((l_b + l_r) / 2).item(), rel=1e-6)


def test_rft_on_a_sample_with_one_class_is_that_class_mean():
    losses = torch.tensor([1.0, 2.0, 6.0, 0.5, 1.5])
    index = torch.tensor([0, 0, 0, 1, 1])
    classes = torch.tensor([1, 1, 1, 0, 0])
    got = rft_sample_losses(losses, classes, index, 2, tau=3.0)
    assert got.tolist() == pytest.approx([3.0, 1.0])
    assert not torch.isnan(got).any()


def test_rft_weights_follow_the_softmax_of_class_means_and_are_detached():
    losses = torch.tensor([1.0, 3.0, 2.0, 4.0], requires_grad=True)
    classes = torch.tensor([0, 0, 1, 1])
    index = torch.zeros(4, dtype=torch.long)
    tau = 2.0
    got = rft_sample_losses(losses, classes, index, 1, tau)
    l_b, l_r = 2.0, 3.0
    w_r = math.exp(l_r / tau) / (math.exp(l_b / tau) + math.exp(l_r / tau))
    assert got.item() == pytest.approx((1 - w_r) * l_b + w_r * l_r)
    got.sum().backward()
    # Detached weights: d/dloss_i = w_class / n_class, no term through the softmax.
    assert losses.grad.tolist() == pytest.approx([(1 - w_r) / 2, (1 - w_r) / 2, w_r / 2, w_r / 2])


def test_rft_puts_more_weight_on_the_harder_class():
    losses = torch.tensor([0.1, 0.1, 5.0, 5.0])
    classes = torch.tensor([0, 0, 1, 1])
    index = torch.zeros(4, dtype=torch.long)
    assert rft_sum(losses, classes, index, 1, tau=1.0).item() > (0.1 + 5.0) / 2


def test_class_means_count_each_class_per_sample():
    losses, classes, index, n = _batch()
    means, counts = class_means(losses, classes, index, n)
    assert counts.sum().item() == losses.numel()
    for s in range(n):
        for c in (0, 1):
            sel = (index == s) & (classes == c)
            assert counts[s, c].item() == sel.sum().item()
            if sel.any():
                assert means[s, c].item() == pytest.approx(losses[sel].mean().item())


@pytest.mark.parametrize("method", ["sft", "weighted", "rft", "dft"])
def test_split_batches_with_one_window_normaliser_equal_the_whole_batch(method):
    """Two micro-batches, each divided by the window's normaliser, sum to the one-batch loss."""
    losses, classes, index, n = _batch(seed=3)
    weights = torch.rand(losses.shape, generator=torch.Generator().manual_seed(1))
    whole = loss_sum(method, losses, classes, weights, index, n, 2.0) / normaliser(
        method, losses.numel(), float(weights.sum()), n)
    first = index < 2
    norm = normaliser(method, losses.numel(), float(weights.sum()), n)
    part_a = loss_sum(method, losses[first], classes[first], weights[first], index[first], 2, 2.0) / norm
    part_b = loss_sum(method, losses[~first], classes[~first], weights[~first], index[~first] - 2, 1, 2.0) / norm
    assert (part_a + part_b).item() == pytest.approx(whole.item(), rel=1e-6)


def test_unknown_method_is_an_error():
    losses, classes, index, n = _batch()
    with pytest.raises(ValueError, match="unknown fine-tune method 'ppo'"):
        loss_sum("ppo", losses, classes, losses, index, n, 1.0)


def test_dft_on_uniform_logits_over_two_tokens_is_half_the_cross_entropy_and_half_its_gradient():
    logits = torch.zeros(5, 2, requires_grad=True)
    targets = torch.tensor([0, 1, 1, 0, 1])
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    dft = loss_sum("dft", ce, None, None, None, 5, 1.0) / normaliser("dft", 5, 0.0, 5)
    assert dft.item() == pytest.approx(0.5 * math.log(2), rel=1e-6)
    (grad_dft,) = torch.autograd.grad(dft, logits, retain_graph=True)
    (grad_sft,) = torch.autograd.grad(ce.mean(), logits)
    assert torch.allclose(grad_dft, 0.5 * grad_sft, atol=1e-7)  # p is a constant to the gradient


def test_dft_weighs_each_token_by_its_detached_probability():
    losses = torch.tensor([0.1, 2.0, 5.0], requires_grad=True)
    total = loss_sum("dft", losses, None, None, None, 1, 1.0)
    assert total.item() == pytest.approx(sum(math.exp(-x) * x for x in (0.1, 2.0, 5.0)), rel=1e-6)
    (grad,) = torch.autograd.grad(total, losses)
    assert grad.tolist() == pytest.approx([math.exp(-x) for x in (0.1, 2.0, 5.0)], rel=1e-6)


def test_the_chunked_kl_to_the_reference_and_its_gradient_match_autograd_on_the_whole_vocabulary():
    from tokenweight.components.token_loss import chunked_kl_to_reference

    g = torch.Generator().manual_seed(0)
    head, ref_head = torch.nn.Linear(8, 50, bias=False), torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(13, 8, generator=g, requires_grad=True)
    ref_hidden = torch.randn(13, 8, generator=g)
    got = chunked_kl_to_reference(hidden, head, ref_hidden, ref_head, chunk_rows=4)
    log_p = torch.log_softmax(ref_head(ref_hidden), -1).detach()
    log_q = torch.log_softmax(head(hidden), -1)
    want = (log_p.exp() * (log_p - log_q)).sum()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    grads_got = torch.autograd.grad(got, [hidden, head.weight])
    grads_want = torch.autograd.grad(want, [hidden, head.weight])
    for a, b in zip(grads_got, grads_want):
        assert torch.allclose(a, b, atol=1e-6)
    # the same model on both sides: no divergence
    assert chunked_kl_to_reference(ref_hidden, ref_head, ref_hidden, ref_head).item() == pytest.approx(0.0, abs=1e-5)


def test_asft_is_dft_plus_the_weighted_kl():
    losses = torch.tensor([0.5, 1.5])
    kl = torch.tensor(3.0)
    got = loss_sum("asft", losses, None, None, None, 1, 1.0, kl, 0.1)
    assert got.item() == pytest.approx(loss_sum("dft", losses, None, None, None, 1, 1.0).item() + 0.3)
    with pytest.raises(ValueError, match="asft needs the KL"):
        loss_sum("asft", losses, None, None, None, 1, 1.0)
