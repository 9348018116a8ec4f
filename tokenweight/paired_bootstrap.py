"""Paired bootstrap intervals for the difference of two models' metrics on the same samples.

A metric is a ratio of per-sample sums (accuracy = correct / checked; a class's held-out loss =
loss sum / token count), so one resample of the sample ids recomputes both models' ratios on the
same ids and takes their difference. The 95% interval is the 2.5 and 97.5 percentiles. A
resample whose denominator is 0 for either model (no checked sample, no token of that class among
the ids drawn) has no ratio: it is left out of the percentiles and counted in `dropped`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Difference:
    value: float  # metric(a) - metric(b) on all samples
    low: float
    high: float
    dropped: int = 0  # resamples without a ratio (a zero denominator), left out of the interval

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def ratio(num: np.ndarray, den: np.ndarray) -> float:
    total = den.sum()
    return float(num.sum() / total) if total else float("nan")


def paired_difference(num_a: np.ndarray, den_a: np.ndarray, num_b: np.ndarray, den_b: np.ndarray,
                      resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Difference:
    """ratio(a) - ratio(b) and its paired-bootstrap interval; arrays are aligned by sample."""
    arrays = [np.asarray(x, dtype=np.float64) for x in (num_a, den_a, num_b, den_b)]
    n = len(arrays[0])
    if any(len(x) != n for x in arrays):
        raise ValueError("paired arrays must have one value per sample each")
    if n == 0:
        raise ValueError("no samples to compare")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    na, da, nb, db = (x[idx].sum(axis=1) for x in arrays)
    with np.errstate(invalid="ignore", divide="ignore"):
        diffs = na / da - nb / db
    finite = np.isfinite(diffs)
    diffs = diffs[finite]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail]) if len(diffs) else (float("nan"),) * 2
    return Difference(ratio(arrays[0], arrays[1]) - ratio(arrays[2], arrays[3]), float(low), float(high),
                      int((~finite).sum()))
