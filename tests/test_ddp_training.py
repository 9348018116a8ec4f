"""Real data parallelism: 2 processes (torchrun, gloo, CPU) train exactly like 1 process.

Each variant (WeightedLossTrainer with sft, rft, weighted, dft and asft; WeightedTokenTrainer) trains 2
optimizer steps on the same 8 rows: 2 ranks x batch 2 x accumulate 2, against 1 process x batch 4 x
accumulate 2 (the same global batch: one step is the whole set). The normaliser is counted over
the window and the devices, so the gradients must agree, not just the losses.

What is compared, and why SGD. AdamW's first update is about lr * sign(g): a gradient entry that is
~0 in both runs but of opposite sign after reduction noise moves its parameter by a full lr in
opposite directions, so parameters after an AdamW step can differ by 2 * lr however right the
gradients are. So the test compares (1) the gradients the optimizer is about to apply at every step
(after DDP's all-reduce and the Trainer's clipping), within 1e-6 of the single-process run, and
(2) the parameters after 2 steps of plain SGD, which are linear in those gradients, so any error
shows at its own size: identical on both ranks (DDP's guarantee: the same reduced gradient and the
same update on every replica), and within 1e-6 of the single-process run. Step 2's gradients are
taken at the parameters step 1 gave, so they check that step 1 moved every rank the same way.
"""

from __future__ import annotations

import time

import pytest
import torch

from ddp_worker import VARIANTS, launch, train_all

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

STEPS, GRAD_ACCUM, LEARNING_RATE = 2, 2, 0.5
TOLERANCE = 1e-6
# DFT scales each token's gradient by its probability, about 1/49152 under the random tiny model, so
# its gradients are ~1e-5 of sft's: for dft and asft the agreement is measured relative to the largest
# gradient entry of the step (and the parameters relative to how far they moved).
RELATIVE = {"dft": 1e-5, "asft": 1e-5}


@pytest.fixture(scope="module")
def runs(tiny_model_dir, smol_tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    started = time.time()
    ranks = launch(tiny_model_dir, smol_tokenizer_dir, out / "two", nproc=2, batch_size=2, grad_accum=GRAD_ACCUM,
                   steps=STEPS, learning_rate=LEARNING_RATE)
    two = time.time()
    single = train_all(tiny_model_dir, smol_tokenizer_dir, out / "one", batch_size=4, grad_accum=GRAD_ACCUM,
                       steps=STEPS, learning_rate=LEARNING_RATE)
    print(f"torchrun (2 ranks, {len(VARIANTS)} variants) {two - started:.1f}s, one process {time.time() - two:.1f}s")
    return ranks, single


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max().item(), k) for k in a)


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_ranks_train_exactly_like_one_process(variant, runs, tiny_model_dir):
    from tokenweight.models import load_model

    ranks, single = runs
    r0, r1, one = ranks[0][variant], ranks[1][variant], single[variant]
    # The runs are what they claim to be: DDP over 2 CPU processes against a plain single process.
    assert [r0["world_size"], r1["world_size"], one["world_size"]] == [2, 2, 1]
    assert r0["ddp_wrapped"] and r1["ddp_wrapped"] and not one["ddp_wrapped"]
    assert r0["distributed_type"].endswith("MULTI_CPU")

    for step in range(STEPS):
        scale = max(g.abs().max().item() for g in one["grads"][step].values())
        if variant in RELATIVE:
            assert scale > 1e-9  # not all zero: a relative agreement means something
            tolerance = RELATIVE[variant] * scale
        else:
            assert scale > 1e-3  # gradients big enough that a 1e-6 agreement means something
            tolerance = TOLERANCE
        diff, name = _max_diff(r0["grads"][step], r1["grads"][step])
        assert diff <= tolerance, f"step {step + 1}: the ranks' gradients differ by {diff:.3g} ({name})"
        diff, name = _max_diff(r0["grads"][step], one["grads"][step])
        assert diff <= tolerance, f"step {step + 1}: DDP and one process differ by {diff:.3g} in the gradient of {name}"

    start = {k: v.detach() for k, v in load_model(tiny_model_dir).named_parameters()}
    moved, _ = _max_diff(one["params"], start)
    if variant in RELATIVE:
        # Steps this small round to the float32 spacing of the weights: allow two spacings on top.
        spacing = max(torch.finfo(torch.float32).eps * v.abs().max().item() for v in start.values())
        assert moved > 10 * spacing
        tolerance = RELATIVE[variant] * moved + 2 * spacing
    else:
        assert moved > 100 * TOLERANCE  # the steps moved the parameters well beyond the tolerance
        tolerance = TOLERANCE
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), f"the ranks' parameters differ ({k})"
    diff, name = _max_diff(r0["params"], one["params"])
    assert diff <= tolerance, f"after {STEPS} steps DDP and one process differ by {diff:.3g} in {name}"


def test_asft_second_step_carries_a_kl_gradient_that_ddp_also_gets_right(runs):
    """dft and asft take the same first step (the KL is 0 at the anchor), so their second-step
    gradients differ by the KL term's alone: big enough here that the relative check above covers it."""
    ranks, single = runs
    first, _ = _max_diff(single["asft"]["grads"][0], single["dft"]["grads"][0])
    scale = max(g.abs().max().item() for g in single["asft"]["grads"][1].values())
    kl_part, _ = _max_diff(single["asft"]["grads"][1], single["dft"]["grads"][1])
    assert first <= RELATIVE["asft"] * scale
    assert kl_part > 100 * RELATIVE["asft"] * scale
    ddp_kl_part, _ = _max_diff(ranks[0]["asft"]["grads"][1], ranks[0]["dft"]["grads"][1])
    assert abs(ddp_kl_part - kl_part) <= 10 * RELATIVE["asft"] * scale
