"""Per-token cross-entropy over target positions only, in chunks.

The LM head and the log-softmax run only where a target token is predicted and a chunk of rows at
a time, so full-vocabulary logits for all positions never exist at once (the idea behind Cut
Cross-Entropy and Liger's fused linear cross-entropy, in plain torch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def chunked_token_ce(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk_rows: int = 1024):
    """Cross-entropy of `targets` (N,) given final hidden states (N, H), a chunk of rows at a time."""
    out = []
    for start in range(0, hidden.shape[0], chunk_rows):
        logits = head(hidden[start : start + chunk_rows]).float()  # (n, V)
        out.append(F.cross_entropy(logits, targets[start : start + chunk_rows], reduction="none"))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


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
    """The plain reference: a full forward, full logits, log_softmax, gather. The test oracle."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()  # (B, T, V)
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -logp.gather(-1, input_ids[:, 1:, None])[..., 0]
    out = torch.zeros(input_ids.shape, dtype=torch.float32)
    out[:, 1:] = nll * loss_mask[:, 1:]
    return out
