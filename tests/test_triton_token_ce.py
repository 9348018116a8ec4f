"""components/triton_token_ce.py: the fused Triton cross-entropy equals full logits + log-softmax.

GPU only: the whole module is skipped unless triton is importable and CUDA is present. The oracle
computes the full logits in float64 from the very values the kernel sees (bf16 inputs upcast), so
the fp32 tolerance measures the kernel's own error, not the reference's.
"""

import pytest
import torch
import torch.nn.functional as F

from tokenweight.components.triton_token_ce import triton_available, triton_token_ce

if not triton_available():
    pytest.skip("needs triton and a CUDA device", allow_module_level=True)

from tokenweight.components.token_loss import chunked_token_ce  # noqa: E402

DEVICE = "cuda"
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def make_inputs(n, v, h, dtype, seed=0):
    """Logits with a realistic spread (std ~ 0.05 * sqrt(H)); first and last vocab ids as targets."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, device=DEVICE).to(dtype)
    weight = (torch.randn(v, h, generator=g, device=DEVICE) * 0.05).to(dtype)
    targets = torch.randint(0, v, (n,), generator=g, device=DEVICE)
    if n:
        targets[0] = 0
        targets[-1] = v - 1
    return hidden, weight, targets


def reference(hidden, weight, targets):
    logits = hidden.double() @ weight.double().T
    return F.cross_entropy(logits, targets, reduction="none").float()


def check(hidden, weight, targets, **kw):
    with torch.inference_mode():
        got = triton_token_ce(hidden, weight, targets, **kw)
        want = reference(hidden, weight, targets)
    assert got.dtype == torch.float32 and got.shape == targets.shape and got.device == hidden.device
    if targets.numel():
        err = (got - want).abs().max().item()
        assert err <= TOL[weight.dtype], f"max abs diff {err:.3g} (losses around {want.mean().item():.2f})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "n, v, h",
    [
        (257, 1000, 576),  # V not a multiple of the vocab tile, rows span several row blocks
        (300, 49152 + 17, 576),  # real H, a vocab one partial tile past the real one
        (3000, 49152, 576),  # the real shape: many row blocks and vocab splits
        (129, 1000, 100),  # H not a multiple of the H tile
        (1, 1000, 576),
        (1, 49152, 576),
        (0, 1000, 576),
    ],
)
def test_matches_full_logits_reference(n, v, h, dtype):
    check(*make_inputs(n, v, h, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("target", ["first", "last"])
def test_every_row_at_a_vocab_edge(dtype, target):
    hidden, weight, _ = make_inputs(200, 49152 + 17, 576, dtype, seed=1)
    v = weight.shape[0]
    check(hidden, weight, torch.full((200,), 0 if target == "first" else v - 1, device=DEVICE))


@pytest.mark.parametrize("n, v, h", [(3000, 49152, 576), (129, 1000, 100), (1, 1000, 576)])
def test_tf32x3_stays_within_fp32_tolerance(n, v, h):
    check(*make_inputs(n, v, h, torch.float32, seed=4), fp32_precision="tf32x3")


def test_strided_hidden():
    """A view into a wider tensor (row stride != H) reads the right elements."""
    wide, weight, targets = make_inputs(100, 1000, 600, torch.float32, seed=2)
    check(wide[:, :576], weight[:, :576], targets)


def test_agrees_with_chunked_token_ce():
    """The torch chunked path in fp32 (no TF32) gives the same losses through an nn.Linear head."""
    hidden, weight, targets = make_inputs(2000, 49152, 576, torch.float32, seed=3)
    head = torch.nn.Linear(576, 49152, bias=False, device=DEVICE)
    with torch.inference_mode():
        head.weight.copy_(weight)
        got = triton_token_ce(hidden, head.weight, targets)
        want = chunked_token_ce(hidden, head, targets, chunk_rows=512)
    assert (got - want).abs().max().item() <= 1e-5
