"""The pre-flight check: does this data fit the premise RFT rests on?

RFT's premise (arXiv 2412.14780): most target tokens are boilerplate, learned early, and the few
reasoning tokens stay hard, so balancing the two classes per sample moves weight *to* reasoning.
Two measurable things can break it, and the weights stage reports both (summary.json,
report.html, the run summary, the Prefect artifact) before anyone spends a fine-tune on it:

- **the class balance points the other way.** RFT gives each sample's classes the weights
  softmax([L_b, L_r]/tau), so over the data the reasoning class gets `rft_reasoning_weight`, the
  mean of w_r over samples (1 for a sample with reasoning only, 0 for one with boilerplate only),
  where plain SFT gives it the reasoning share of the target tokens. When the first is below the
  second, RFT trains reasoning *less* than SFT would: the fine-tune moves weight to boilerplate.
  (Measured at the base model's losses and the weights stage's tau; at training time the losses
  move, so this predicts the direction of the first steps, not every step.) This happened on
  BFCL's compact calls, where SHAD called 73% of the tokens reasoning, and RFT lost to SFT there.
- **boilerplate that a tuned model cannot predict.** The discriminator is tuned on this data's
  format with the inputs deranged; if it still pays more than `BOILERPLATE_LOSS_LIMIT` nats per
  boilerplate token, the "boilerplate" varies between samples (the paper names this as its own
  limit) and the classes mean less.

A third check guards against degenerate classes: either class under `MIN_CLASS_SHARE` of the
target tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .components.token_weights import rft_group_weights

BOILERPLATE_LOSS_LIMIT = 0.5  # nats per boilerplate token under the discriminator
MIN_CLASS_SHARE = 0.02


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    value: float
    limit: float
    message: str


class PreflightTally:
    """Per-sample class counts and losses, accumulated as the weights stage classes the samples."""

    def __init__(self, tau: float):
        self.tau = tau
        self.w_r: list[float] = []  # each sample's RFT reasoning weight at the base model's losses
        self.tokens = np.zeros(2)  # boilerplate, reasoning
        self.disc_loss = np.zeros(2)  # summed discriminator loss per class

    def add(self, classes: np.ndarray, loss_base: np.ndarray, loss_disc: np.ndarray) -> None:
        is_b, is_r = classes == 0, classes == 1
        n_b, n_r = int(is_b.sum()), int(is_r.sum())
        if not n_b + n_r:
            return
        if n_b and n_r:
            self.w_r.append(rft_group_weights(float(loss_base[is_b].mean()), float(loss_base[is_r].mean()), self.tau)[1])
        else:
            self.w_r.append(1.0 if n_r else 0.0)
        self.tokens += (n_b, n_r)
        self.disc_loss += (float(loss_disc[is_b].sum()), float(loss_disc[is_r].sum()))

    def checks(self) -> list[Check]:
        total = self.tokens.sum()
        if not total:
            return [Check("classes", False, 0.0, MIN_CLASS_SHARE, "no target token was classed")]
        share_r = float(self.tokens[1] / total)
        rft_r = float(np.mean(self.w_r))
        out = [Check(
            "class_balance", rft_r >= share_r, round(rft_r, 4), round(share_r, 4),
            f"RFT gives reasoning {rft_r:.1%} of each sample's weight on average where SFT gives it {share_r:.1%} "
            f"of the tokens: RFT moves weight {'to reasoning' if rft_r >= share_r else 'to boilerplate'}"
            + ("" if rft_r >= share_r else f" (reasoning is {share_r:.0%} of the target tokens; RFT's premise is "
                                            "mostly boilerplate)"))]
        bp_loss = float(self.disc_loss[0] / self.tokens[0]) if self.tokens[0] else 0.0
        out.append(Check(
            "boilerplate_predictable", bp_loss <= BOILERPLATE_LOSS_LIMIT, round(bp_loss, 4), BOILERPLATE_LOSS_LIMIT,
            f"the shuffle-tuned discriminator pays {bp_loss:.2f} nats per boilerplate token"
            + ("" if bp_loss <= BOILERPLATE_LOSS_LIMIT else
               f", above {BOILERPLATE_LOSS_LIMIT}: the boilerplate varies between samples and is not learned")))
        low = float(self.tokens.min() / total)
        out.append(Check(
            "both_classes", low >= MIN_CLASS_SHARE, round(low, 4), MIN_CLASS_SHARE,
            f"the smaller class is {low:.1%} of the target tokens"
            + ("" if low >= MIN_CLASS_SHARE else ": the classes are degenerate")))
        return out


def verdict(checks: list[Check]) -> dict:
    """summary.json's `preflight`: whether the data fits, and each check."""
    return {"fits": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}


def verdict_lines(preflight: dict) -> list[str]:
    """The verdict as the run summary and the artifact print it."""
    head = "fits the method's premise" if preflight["fits"] else "does NOT fit the method's premise"
    return [f"pre-flight: the data {head}"] + [
        f"  {'ok  ' if c['ok'] else 'WARN'} {c['name']}: {c['message']}" for c in preflight["checks"]]
