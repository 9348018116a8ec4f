"""Fused per-token cross-entropy on the GPU (Triton), forward only, for scoring.

`triton_token_ce(hidden, weight, targets)` returns the same (N,) float32 losses as
`token_loss.chunked_token_ce` with an LM head of weight (V, H), but never materialises logits: each
program takes a block of rows of `hidden`, walks its share of the vocabulary in tiles, computes a
logits tile with `tl.dot` against the matching rows of `weight`, and folds it into a running
(max, sum of exp) per row, picking up the target's logit as its tile passes. Memory beyond the
inputs is O(N) instead of O(N * V).

The vocabulary is also split across programs (a 2-D grid), so that a few thousand rows still fill
the GPU; each split writes its own log-sum-exp and a tiny torch `logsumexp` combines them.

There is no backward: use it under `torch.inference_mode()` / `no_grad`. Targets must lie in
[0, V) (no ignore index). Triton is imported guarded, so this module imports on a CPU-only machine;
call `triton_available()` before `triton_token_ce`.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the module still imports, triton_available() says no.
    triton = None
    tl = None


def triton_available() -> bool:
    """True when triton is importable and a CUDA device is present."""
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _token_ce_kernel(
        h_ptr, w_ptr, t_ptr, lse_ptr, tgt_ptr,
        N, V, H,
        stride_hn, stride_hk, stride_wv, stride_wk,
        num_splits, tiles_per_split,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, PRECISION: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_s = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        tgt = tl.load(t_ptr + rows, mask=row_ok, other=-1)
        ks = tl.arange(0, BLOCK_H)
        h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_hn

        # Running max and sum of exp in base 2 (exp2 is the native instruction; ln 2 restores e).
        m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        s = tl.zeros((BLOCK_N,), tl.float32)
        tgt_logit = tl.zeros((BLOCK_N,), tl.float32)

        # This program's vocabulary share; the host makes every split non-empty, so the first
        # tile always has a real column and m never stays -inf (no inf - inf below).
        v_start = pid_s * tiles_per_split * BLOCK_V
        v_end = tl.minimum(v_start + tiles_per_split * BLOCK_V, V)
        for v0 in range(v_start, v_end, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            col_ok = cols < V
            w_cols = w_ptr + cols.to(tl.int64)[:, None] * stride_wv
            acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
            # H need not be a multiple of BLOCK_H (576 = 9 * 64, but also e.g. 100): zero-fill.
            for k0 in range(0, H, BLOCK_H):
                k = k0 + ks
                k_ok = k < H
                h = tl.load(h_rows + k[None, :] * stride_hk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                w = tl.load(w_cols + k[None, :] * stride_wk, mask=col_ok[:, None] & k_ok[None, :], other=0.0)
                # PRECISION only matters for fp32 inputs: "ieee" (exact) or "tf32x3" (see triton_token_ce).
                acc = tl.dot(h, tl.trans(w), acc, input_precision=PRECISION)
            # At most one column of the whole vocabulary matches a row's target.
            tgt_logit += tl.sum(tl.where(cols[None, :] == tgt[:, None], acc, 0.0), axis=1)
            z = tl.where(col_ok[None, :], acc * 1.4426950408889634, float("-inf"))  # log2(e)
            m_new = tl.maximum(m, tl.max(z, axis=1))
            s = s * tl.exp2(m - m_new) + tl.sum(tl.exp2(z - m_new[:, None]), axis=1)
            m = m_new

        lse = (m + tl.log2(s)) * 0.6931471805599453  # ln(2): back to natural log
        tl.store(lse_ptr + rows * num_splits + pid_s, lse, mask=row_ok)
        # Only the split that owns a row's target writes its logit (the buffer starts at 0).
        owns = (tgt >= v_start) & (tgt < v_end)
        tl.store(tgt_ptr + rows, tgt_logit, mask=row_ok & owns)


# (BLOCK_N, BLOCK_V, BLOCK_H, num_warps, num_stages) per dot kind, the fastest of a small sweep on
# an H100 at H=576, V=49152. bf16/fp16 and tf32x3 use tensor cores; exact fp32 ("ieee") dots run on
# the FMA units, where smaller tiles keep register pressure sane.
_CONFIGS = {
    "half": (128, 256, 64, 8, 3),
    "ieee": (64, 64, 32, 4, 2),
    "tf32x3": (128, 128, 64, 8, 2),
}
# Aim for this many programs per SM, so the last wave of programs is a small part of the run.
_PROGRAMS_PER_SM = 8


def triton_token_ce(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    fp32_precision: str = "ieee",
    config: tuple | None = None,
) -> torch.Tensor:
    """Per-token cross-entropy (N,) float32 of `targets` (N,) under logits hidden (N, H) @ weight.T,
    weight (V, H) as in nn.Linear, without materialising the logits.

    fp32_precision applies to fp32 inputs only: "ieee" is exact fp32 (matches torch to ~1e-6, but
    runs on the FMA units); "tf32x3" splits each operand into two TF32 halves and runs three
    tensor-core products, close to fp32 accuracy and several times faster. `config` overrides the
    tile sizes (BLOCK_N, BLOCK_V, BLOCK_H, num_warps, num_stages); for tuning only."""
    if not triton_available():
        raise RuntimeError("triton_token_ce needs triton and a CUDA device")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden (N, H) and weight (V, H), got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != (hidden.shape[0],):
        raise ValueError(f"need targets ({hidden.shape[0]},), got {tuple(targets.shape)}")
    if fp32_precision not in ("ieee", "tf32x3"):
        raise ValueError(f"fp32_precision must be 'ieee' or 'tf32x3', got {fp32_precision!r}")
    if hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    n, h_dim = hidden.shape
    v = weight.shape[0]
    device = hidden.device
    if n == 0:
        return torch.zeros(0, dtype=torch.float32, device=device)

    kind = fp32_precision if weight.dtype == torch.float32 else "half"
    block_n, block_v, block_h, num_warps, num_stages = config or _CONFIGS[kind]
    row_blocks = triton.cdiv(n, block_n)
    v_tiles = triton.cdiv(v, block_v)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    splits = min(v_tiles, max(1, triton.cdiv(_PROGRAMS_PER_SM * sms, row_blocks)))
    tiles_per_split = triton.cdiv(v_tiles, splits)
    splits = triton.cdiv(v_tiles, tiles_per_split)  # drop splits that would own no tile

    targets = targets.contiguous()
    lse = torch.empty((n, splits), dtype=torch.float32, device=device)
    tgt_logit = torch.zeros(n, dtype=torch.float32, device=device)
    with torch.cuda.device(device):
        _token_ce_kernel[(row_blocks, splits)](
            hidden, weight, targets, lse, tgt_logit,
            n, v, h_dim,
            hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
            splits, tiles_per_split,
            # For 16-bit inputs the precision is moot; "tf32" is Triton's own default there.
            BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h, PRECISION="tf32" if kind == "half" else kind,
            num_warps=num_warps, num_stages=num_stages,
        )
    total = lse[:, 0] if splits == 1 else torch.logsumexp(lse, dim=1)
    return total - tgt_logit
