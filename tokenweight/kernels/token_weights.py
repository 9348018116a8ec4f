"""From per-token losses to token classes and per-token weights (pure numpy, one sample at a time).

Classes: -1 not trained, 0 boilerplate, 1 reasoning, reasoning exactly where
`loss_disc - loss_ref > margin`. Weights are 0 off target tokens.
"""

from __future__ import annotations

import numpy as np

METHODS = ("rft", "uniform")


def token_classes(loss_disc: np.ndarray, loss_ref: np.ndarray, loss_mask: np.ndarray, margin: float) -> np.ndarray:
    ld = loss_disc - loss_ref
    classes = np.where(ld > margin, 1, 0).astype(np.int8)
    classes[loss_mask == 0] = -1
    return classes


def rft_group_weights(loss_b: float, loss_r: float, tau: float) -> tuple[float, float]:
    """(w_b, w_r) = softmax([L_b, L_r] / tau): the class that is still hard gets the weight."""
    z = np.array([loss_b, loss_r], dtype=np.float64) / tau
    z = np.exp(z - z.max())
    w = z / z.sum()
    return float(w[0]), float(w[1])


def rft_static_weights(loss: np.ndarray, classes: np.ndarray, tau: float) -> np.ndarray:
    """w_b/n_b on boilerplate and w_r/n_r on reasoning tokens, with L_b, L_r the class means of
    `loss`; so sum(weight * loss) is the RFT loss at these losses. A sample with one class puts
    1/n on each of its tokens (that class's mean)."""
    weight = np.zeros(len(loss), dtype=np.float32)
    is_b, is_r = classes == 0, classes == 1
    n_b, n_r = int(is_b.sum()), int(is_r.sum())
    if n_b and n_r:
        w_b, w_r = rft_group_weights(float(loss[is_b].mean()), float(loss[is_r].mean()), tau)
        weight[is_b] = w_b / n_b
        weight[is_r] = w_r / n_r
    elif n_b or n_r:
        weight[classes >= 0] = 1.0 / (n_b + n_r)
    return weight


def uniform_weights(loss_mask: np.ndarray) -> np.ndarray:
    n = int(loss_mask.sum())
    weight = np.zeros(len(loss_mask), dtype=np.float32)
    if n:
        weight[loss_mask == 1] = 1.0 / n
    return weight


def sample_weights(method: str, loss_base: np.ndarray, classes: np.ndarray, loss_mask: np.ndarray, tau: float):
    if method == "rft":
        return rft_static_weights(loss_base, classes, tau)
    if method == "uniform":
        return uniform_weights(loss_mask)
    raise ValueError(f"unknown weight method {method!r}; valid: {', '.join(METHODS)}")
