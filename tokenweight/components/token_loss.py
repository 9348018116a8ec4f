"""Per-token cross-entropy over target positions only, in chunks.

The LM head and the log-softmax run only where a target token is predicted and a chunk of rows at
a time, so full-vocabulary logits for all positions never exist at once (the idea behind Cut
Cross-Entropy and Liger's fused linear cross-entropy, in plain torch).
"""

from __future__ import annotations

import inspect

import torch
import torch.utils.checkpoint
import torch.nn.functional as F

from .triton_token_ce import triton_available, triton_token_ce


def chunked_token_ce(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk_rows: int = 1024):
    """Cross-entropy of `targets` (N,) given final hidden states (N, H), a chunk of rows at a time.

    With gradients and a bias-free linear head, the backward recomputes each chunk's logits
    (`LinearTokenCE`), so no (N, V) tensor is kept for it either."""
    weight = getattr(head, "weight", None)
    linear = isinstance(head, torch.nn.Linear) and head.bias is None
    if linear and torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        device = hidden.device.type
        if torch.is_autocast_enabled(device):
            # LinearTokenCE recomputes the logits in its backward, which runs outside autocast:
            # cast both operands here (differentiably, as autocast would), so that its forward and
            # backward both compute in the autocast dtype (else bf16 forward, fp32 backward).
            dtype = torch.get_autocast_dtype(device)
            hidden, weight = hidden.to(dtype), weight.to(dtype)
        return LinearTokenCE.apply(hidden, weight, targets, chunk_rows)
    if linear and hidden.is_cuda and hidden.dtype in (torch.bfloat16, torch.float16) and triton_available():
        # Fused on the GPU: about 4x the chunked path at bf16 and no logits in memory. In fp32
        # Triton's exact dot is slower than cuBLAS, so fp32 stays on the chunks below.
        return triton_token_ce(hidden, weight, targets)
    out = []
    for start in range(0, hidden.shape[0], chunk_rows):
        logits = head(hidden[start : start + chunk_rows]).float()  # (n, V)
        out.append(F.cross_entropy(logits, targets[start : start + chunk_rows], reduction="none"))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


class LinearTokenCE(torch.autograd.Function):
    """Per-token cross-entropy of `hidden @ weight.T` without keeping any logits for backward.

    The forward keeps only each row's log-sum-exp; the backward rebuilds a chunk's logits, turns
    them into softmax - onehot scaled by that row's upstream gradient (any per-token weighting:
    rft, weighted), and accumulates the gradients of hidden and weight. The price is one more
    LM-head product per chunk; the memory is one (chunk_rows, V) block instead of two (N, V) ones.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows: int):
        n = hidden.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        target_logit = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for s in range(0, n, chunk_rows):
            logits = (hidden[s : s + chunk_rows] @ weight.T).float()
            lse[s : s + chunk_rows] = torch.logsumexp(logits, dim=-1)
            target_logit[s : s + chunk_rows] = logits.gather(1, targets[s : s + chunk_rows, None])[:, 0]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_rows = chunk_rows
        return lse - target_logit

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for s in range(0, hidden.shape[0], ctx.chunk_rows):
            h = hidden[s : s + ctx.chunk_rows]
            g = (h @ weight.T).float().sub_(lse[s : s + ctx.chunk_rows, None]).exp_()  # softmax
            g[torch.arange(h.shape[0], device=g.device), targets[s : s + ctx.chunk_rows]] -= 1.0
            g.mul_(grad_out[s : s + ctx.chunk_rows, None].float())
            g = g.to(hidden.dtype)
            if need_h:
                grad_h[s : s + ctx.chunk_rows] = g @ weight
            if need_w:
                grad_w += (g.T @ h).float()  # in the model's dtype, summed over chunks in fp32
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None


def decoder_and_head(model):
    """The transformer trunk (ending in its final norm) and the LM head of a causal LM."""
    head = model.get_output_embeddings()
    trunk = model.base_model
    if head is None or trunk is model:
        raise ValueError(f"{type(model).__name__} does not expose a decoder trunk and an LM head")
    return trunk, head


def losses_from_hidden(
    hidden: torch.Tensor, head: torch.nn.Module, input_ids: torch.Tensor, loss_mask: torch.Tensor, chunk_rows: int = 1024
) -> torch.Tensor:
    """(B, T) per-token losses from final hidden states (B, T, H): token t's loss of predicting
    input_ids[t] from input_ids[:t] where loss_mask[t] is 1, else 0. Aligned to tokens, not shifted."""
    # Position t-1 predicts token t; token 0 has no context and is never a target.
    predict = loss_mask[:, 1:].bool()  # (B, T-1)
    losses = chunked_token_ce(hidden[:, :-1][predict], head, input_ids[:, 1:][predict], chunk_rows)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:][predict] = losses
    return out


def target_token_losses(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor, chunk_rows: int = 1024
) -> torch.Tensor:
    """Per-token losses (B, T) of a causal LM on a right-padded batch (see losses_from_hidden)."""
    trunk, head = decoder_and_head(model)
    hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state  # (B, T, H)
    return losses_from_hidden(hidden, head, input_ids, loss_mask, chunk_rows)


def reference_token_losses(model, input_ids, attention_mask, loss_mask) -> torch.Tensor:
    """The plain reference: a full forward, full logits, log_softmax, gather. The test oracle, and
    the inner loop of the naive scorer in benchmarks/scoring.py."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()  # (B, T, V)
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -logp.gather(-1, input_ids[:, 1:, None])[..., 0]
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:] = nll * loss_mask[:, 1:]
    return out


def accepts_logits_to_keep(model) -> bool:
    """Whether the model's forward declares `logits_to_keep` (read from the class: accelerate
    replaces the instance's forward with its autocast wrapper)."""
    return "logits_to_keep" in inspect.signature(type(model).forward).parameters


def kl_to_reference_logits(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """sum over rows of KL(reference ‖ current) over the vocabulary, from (N, V) logits of each;
    the reference's are taken as given (no gradient is meant to reach them)."""
    log_q = F.log_softmax(logits.float(), dim=-1)
    log_p = F.log_softmax(ref_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum()


def _kl_chunk(hidden: torch.Tensor, ref_hidden: torch.Tensor, head: torch.nn.Module,
              ref_head: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        ref_logits = ref_head(ref_hidden)
    return kl_to_reference_logits(head(hidden), ref_logits)


def chunked_kl_to_reference(hidden: torch.Tensor, head: torch.nn.Module, ref_hidden: torch.Tensor,
                            ref_head: torch.nn.Module, chunk_rows: int = 1024) -> torch.Tensor:
    """sum over rows of KL(reference ‖ current) over the full vocabulary, from final hidden states
    (N, H) of the current model and of the reference at the same positions. A chunk of rows at a
    time, each under activation checkpointing, so the backward rebuilds a chunk's logits instead of
    keeping (N, V) of them; the reference gets no gradient."""
    grads = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        if grads:
            total = total + torch.utils.checkpoint.checkpoint(_kl_chunk, hidden[rows], ref_hidden[rows], head,
                                                              ref_head, use_reentrant=False)
        else:
            total = total + _kl_chunk(hidden[rows], ref_hidden[rows], head, ref_head)
    return total
