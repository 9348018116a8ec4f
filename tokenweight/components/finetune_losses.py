"""The fine-tune losses as pure functions of per-token losses: sft, rft, weighted, dft and asft.

Each returns a *sum* and each method has its own normaliser, so that a gradient-accumulation
window (or several devices) divides one sum by one total and gets exactly the loss of the whole
window as one batch:

- `sft`: sum of target-token losses / number of target tokens;
- `weighted`: sum of weight * loss / sum of weights;
- `dft`: sum of p * loss / number of target tokens, p = exp(-loss) the token's probability under
  the current model, detached (Dynamic Fine-Tuning, arXiv 2508.05629);
- `asft`: dft's sum plus kl_weight * the sum over target positions of KL(base ‖ current) over the
  full vocabulary, / number of target tokens (Anchored SFT, arXiv 2509.23753); the KL sum is
  computed from logits (token_loss.chunked_kl_to_reference) and passed in;
- `rft`: sum over samples of w_b*L_b + w_r*L_r / number of samples, where L_b and L_r are the
  sample's mean losses over boilerplate and reasoning tokens and (w_b, w_r) =
  softmax([L_b, L_r] / tau), detached, recomputed from the current losses at every step.
  A sample with one class uses that class's mean.

Inputs are flat over the target tokens of a batch: `losses` (N,), `sample_index` (N,) with the
row each token belongs to, `classes` (N,) 0 boilerplate / 1 reasoning, `weights` (N,).
"""

from __future__ import annotations

import torch

FINETUNE_METHODS = ("sft", "rft", "weighted", "dft", "asft")
# The methods that read the weights stage's token_class or weight (the others need only the data).
WEIGHTED_METHODS = ("rft", "weighted")


def sft_sum(losses: torch.Tensor) -> torch.Tensor:
    return losses.sum()


def dft_sum(losses: torch.Tensor) -> torch.Tensor:
    """DFT's numerator: each token's loss scaled by its probability, which gets no gradient."""
    return (torch.exp(-losses.detach()) * losses).sum()


def weighted_sum(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (weights.to(losses.dtype) * losses).sum()


def class_means(losses: torch.Tensor, classes: torch.Tensor, sample_index: torch.Tensor, n_samples: int):
    """Per-sample mean loss and token count of each class: two (n_samples, 2) tensors, [:, 0]
    boilerplate and [:, 1] reasoning (a mean is 0 where its count is 0)."""
    slot = sample_index * 2 + classes.long()
    sums = losses.new_zeros(n_samples * 2).index_add(0, slot, losses).view(n_samples, 2)
    counts = torch.zeros(n_samples * 2, dtype=losses.dtype, device=losses.device)
    counts = counts.index_add(0, slot, torch.ones_like(losses)).view(n_samples, 2)
    return sums / counts.clamp(min=1), counts


def rft_sample_losses(
    losses: torch.Tensor, classes: torch.Tensor, sample_index: torch.Tensor, n_samples: int, tau: float
) -> torch.Tensor:
    """(n_samples,) RFT loss of each sample: softmax([L_b, L_r]/tau)-weighted class means."""
    means, counts = class_means(losses, classes, sample_index, n_samples)
    present = counts > 0
    # An absent class gets no weight; a sample with one class thus gets that class's mean.
    logits = (means.detach() / tau).masked_fill(~present, float("-inf"))
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a sample with no target token: 0
    return (weights * means).sum(-1)


def rft_sum(
    losses: torch.Tensor, classes: torch.Tensor, sample_index: torch.Tensor, n_samples: int, tau: float
) -> torch.Tensor:
    return rft_sample_losses(losses, classes, sample_index, n_samples, tau).sum()


def loss_sum(method: str, losses, classes, weights, sample_index, n_samples: int, tau: float,
             kl_sum: torch.Tensor | None = None, kl_weight: float = 0.0) -> torch.Tensor:
    """The numerator of `method`'s loss for one micro-batch (`kl_sum`: asft's KL to the base)."""
    if method == "sft":
        return sft_sum(losses)
    if method == "weighted":
        return weighted_sum(losses, weights)
    if method == "rft":
        return rft_sum(losses, classes, sample_index, n_samples, tau)
    if method == "dft":
        return dft_sum(losses)
    if method == "asft":
        if kl_sum is None:
            raise ValueError("asft needs the KL sum to the base model")
        return dft_sum(losses) + kl_weight * kl_sum
    raise ValueError(f"unknown fine-tune method {method!r}; valid: {', '.join(FINETUNE_METHODS)}")


def normaliser(method: str, target_tokens: int, weight_sum: float, samples: int) -> float:
    """The denominator of `method`'s loss over a whole accumulation window."""
    return {"sft": target_tokens, "dft": target_tokens, "asft": target_tokens, "weighted": weight_sum,
            "rft": samples}[method]
