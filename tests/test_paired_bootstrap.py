"""Paired bootstrap intervals: the point difference, coverage of a known effect, pairing."""

import numpy as np
import pytest

from tokenweight.paired_bootstrap import paired_difference, ratio


def test_identical_models_have_a_zero_width_interval_at_zero():
    correct = np.array([1, 0, 1, 1, 0, 1], dtype=float)
    ones = np.ones_like(correct)
    d = paired_difference(correct, ones, correct, ones, resamples=500)
    assert (d.value, d.low, d.high) == (0.0, 0.0, 0.0)
    assert not d.excludes_zero()


def test_a_clear_improvement_excludes_zero_and_the_point_is_the_ratio_difference():
    rng = np.random.default_rng(0)
    b = (rng.random(400) < 0.3).astype(float)
    a = np.maximum(b, (rng.random(400) < 0.3).astype(float))  # a is right wherever b is, and more
    ones = np.ones(400)
    d = paired_difference(a, ones, b, ones, resamples=1000, seed=1)
    assert d.value == pytest.approx(a.mean() - b.mean())
    assert 0 < d.low < d.value < d.high
    assert d.excludes_zero()


def test_pairing_narrows_the_interval_when_the_models_agree_on_hard_samples():
    rng = np.random.default_rng(2)
    difficulty = rng.random(300)
    b = (difficulty > 0.5).astype(float)
    a = b.copy()
    a[rng.choice(np.flatnonzero(b == 0), 10, replace=False)] = 1  # ten more right, nothing lost
    ones = np.ones(300)
    d = paired_difference(a, ones, b, ones, resamples=1000)
    assert d.low >= 0  # no resample can show a loss: every pair has a >= b
    assert d.high - d.low < 0.06  # an unpaired interval of two 50% accuracies on 300 is ~0.16 wide


def test_ratio_metrics_weight_samples_by_their_denominator():
    loss = np.array([10.0, 1.0])
    tokens = np.array([10.0, 1.0])
    assert ratio(loss, tokens) == 1.0
    d = paired_difference(loss * 2, tokens, loss, tokens, resamples=200)
    assert d.value == pytest.approx(1.0) and d.low == pytest.approx(1.0) and d.high == pytest.approx(1.0)


def test_unaligned_or_empty_inputs_are_errors():
    with pytest.raises(ValueError, match="one value per sample"):
        paired_difference(np.ones(3), np.ones(3), np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="no samples"):
        paired_difference(np.ones(0), np.ones(0), np.ones(0), np.ones(0))


def test_resamples_without_a_denominator_are_counted_not_silently_dropped():
    """One sample in ten has the measured class: about (9/10)^10 = 35% of the resamples of 10 draw
    none of it, have no ratio, and are counted in `dropped`; the interval uses the rest."""
    den = np.zeros(10)
    den[0] = 5
    num = den * 0.5
    d = paired_difference(num, den, num * 0.8, den, resamples=2000, seed=0)
    assert 0.25 * 2000 < d.dropped < 0.45 * 2000
    assert d.low == d.high == pytest.approx(0.5 - 0.4)  # every resample with the sample gives the same ratios
    full = paired_difference(np.ones(10), np.ones(10), np.ones(10), np.ones(10), resamples=500)
    assert full.dropped == 0
