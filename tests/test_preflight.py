"""The pre-flight check on cases whose answer is known, and in a real run's summary."""

import html
import json
from pathlib import Path

import numpy as np
import pytest

from tokenweight.components.token_weights import rft_group_weights
from tokenweight.preflight import BOILERPLATE_LOSS_LIMIT, PreflightTally, verdict, verdict_lines


def _sample(n_b, n_r, base_b, base_r, disc_b=0.1):
    classes = np.array([0] * n_b + [1] * n_r)
    base = np.array([base_b] * n_b + [base_r] * n_r, dtype=np.float32)
    disc = np.array([disc_b] * n_b + [2.0] * n_r, dtype=np.float32)
    return classes, base, disc


def _checks(samples, tau=3.0):
    tally = PreflightTally(tau)
    for s in samples:
        tally.add(*s)
    return {c.name: c for c in tally.checks()}


def test_mostly_boilerplate_with_hard_reasoning_fits():
    """The paper's data: 8 boilerplate tokens to 2 reasoning ones, reasoning harder. RFT gives
    reasoning about half of each sample (softmax([0.5, 2]/3)), SFT 20%: weight moves to reasoning."""
    checks = _checks([_sample(8, 2, 0.5, 2.0)] * 5)
    w_r = rft_group_weights(0.5, 2.0, 3.0)[1]
    assert checks["class_balance"].ok and checks["class_balance"].value == pytest.approx(w_r, abs=1e-4)
    assert checks["class_balance"].limit == pytest.approx(0.2)
    assert verdict(list(checks.values()))["fits"]


def test_mostly_reasoning_moves_weight_to_boilerplate_and_is_flagged():
    """BFCL's compact calls as SHAD saw them: 73% reasoning, losses close. RFT's balance gives
    reasoning about half, below its 73% token share: the check fails and says which way."""
    checks = _checks([_sample(27, 73, 0.6, 0.7)] * 4)
    c = checks["class_balance"]
    assert not c.ok and c.value < c.limit == pytest.approx(0.73)
    assert "to boilerplate" in c.message
    lines = verdict_lines(verdict(list(checks.values())))
    assert lines[0] == "pre-flight: the data does NOT fit the method's premise"
    assert any(line.startswith("  WARN class_balance") for line in lines)


def test_boilerplate_the_discriminator_cannot_predict_is_flagged():
    checks = _checks([_sample(8, 2, 0.5, 2.0, disc_b=BOILERPLATE_LOSS_LIMIT + 0.3)] * 3)
    assert not checks["boilerplate_predictable"].ok
    assert checks["boilerplate_predictable"].value == pytest.approx(BOILERPLATE_LOSS_LIMIT + 0.3)
    assert _checks([_sample(8, 2, 0.5, 2.0, disc_b=0.2)])["boilerplate_predictable"].ok


def test_a_sample_with_one_class_gives_that_class_all_its_weight():
    checks = _checks([_sample(0, 5, 0, 1.0), _sample(5, 0, 1.0, 0)])
    assert checks["class_balance"].value == pytest.approx(0.5)  # w_r 1, then 0


def test_a_real_run_reports_its_verdict_in_summary_and_report(tmp_path, prefect_harness, tiny_model_dir):
    from helpers import pipeline_config
    from tokenweight.flows.pipeline import pipeline

    records = pipeline(pipeline_config(tiny_model_dir, tmp_path / "store"), until="weights")
    directory = Path(records["weights"].uri)
    summary = json.loads((directory / "summary.json").read_text())
    preflight = summary["preflight"]
    assert {c["name"] for c in preflight["checks"]} == {"class_balance", "boilerplate_predictable", "both_classes"}
    assert preflight["fits"] == all(c["ok"] for c in preflight["checks"])
    page = (directory / "report.html").read_text()
    assert "pre-flight" in page and all(html.escape(c["message"]) in page for c in preflight["checks"])
