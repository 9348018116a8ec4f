"""GPU benchmark of per-token cross-entropy at SmolLM2-135M's head shape (H=576, V=49152).

Times three ways (four for fp32) to score N target tokens, in bf16 and fp32:
  triton  - the fused kernel in tokenweight/components/triton_token_ce.py (no logits in memory);
            for fp32 also "tri-3xtf32", the same kernel with fp32_precision="tf32x3",
  chunked - torch `chunked_token_ce` with chunk_rows=1024 (a (1024, V) logits chunk at a time),
  naive   - full (N, V) logits, then F.cross_entropy.
and prints median time, tokens/s, TFLOP/s on 2*N*H*V flops, peak memory beyond the inputs, and the
max abs difference from an fp32 full-logits reference on the same (upcast) inputs.

Run: PYTHONPATH=. python benchmarks/gpu_token_ce.py   (needs a CUDA GPU and triton; ~1 minute)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenweight.components.token_loss import chunked_token_ce
from tokenweight.components.triton_token_ce import triton_available, triton_token_ce

H, V = 576, 49152
NS = (4096, 16384)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def reference(hidden, weight, targets):
    """fp32 full logits from the same values (TF32 off), chunked only to bound the oracle's memory."""
    w = weight.float()
    return torch.cat([
        F.cross_entropy(hidden[i : i + 4096].float() @ w.T, targets[i : i + 4096], reduction="none")
        for i in range(0, hidden.shape[0], 4096)
    ])


def peak_extra_mib(fn) -> float:
    """Peak allocated bytes while fn runs, above what was allocated before (the inputs)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main():
    import triton.testing

    if not triton_available():
        raise SystemExit("needs triton and a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for every method and the oracle
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  H={H} V={V}")
    head = f"{'N':>6} {'dtype':>5} {'method':>10} {'ms':>9} {'Mtok/s':>8} {'TFLOP/s':>8} {'peak MiB':>9} {'max|diff|':>10}"
    print(head)
    print("-" * len(head))
    g = torch.Generator(device="cuda").manual_seed(0)
    for n in NS:
        for name, dtype in DTYPES.items():
            hidden = torch.randn(n, H, generator=g, device="cuda").to(dtype)
            weight = (torch.randn(V, H, generator=g, device="cuda") * 0.05).to(dtype)
            targets = torch.randint(0, V, (n,), generator=g, device="cuda")
            linear = torch.nn.Linear(H, V, bias=False, device="cuda", dtype=dtype)
            with torch.inference_mode():
                linear.weight.copy_(weight)
                want = reference(hidden, weight, targets)
                methods = {
                    "triton": lambda: triton_token_ce(hidden, weight, targets),
                    "tri-3xtf32": lambda: triton_token_ce(hidden, weight, targets, fp32_precision="tf32x3"),
                    "chunked": lambda: chunked_token_ce(hidden, linear, targets, chunk_rows=1024),
                    "naive": lambda: F.cross_entropy((hidden @ weight.T).float(), targets, reduction="none"),
                }
                if dtype != torch.float32:
                    del methods["tri-3xtf32"]  # the precision choice only exists for fp32 inputs
                for method, fn in methods.items():
                    diff = (fn() - want).abs().max().item()  # also the warm-up / compile
                    ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
                    mib = peak_extra_mib(fn)
                    tflops = 2 * n * H * V / (ms * 1e-3) / 1e12
                    print(f"{n:>6} {name:>5} {method:>10} {ms:>9.3f} {n / ms / 1e3:>8.2f} {tflops:>8.1f} {mib:>9.1f} {diff:>10.2e}")
            del hidden, weight, targets, linear, want
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
