"""How far RFT's temperature can move the class weights on a run's own data, without training.

RFT weighs each sample's classes by softmax([L_b, L_r] / tau), so the reasoning class's weight is
sigmoid((L_r - L_b) / tau): tau matters only as far as the two classes' losses differ. This reads a
weights stage's shards (the base model's loss and SHAD's class of every target token) and prints,
for each tau, the reasoning weight the pre-flight check computes (its mean over the train samples,
the same `PreflightTally` the weights stage runs) and its quartiles, beside SFT's reasoning token
share. A tau sweep whose taus all give about the same weights need not be trained to be answered.

    python -m benchmarks.rft_tau STORE/weights/KEY [--tau 0.5 1 2 3 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.harness import print_table, train_rows
from tokenweight.preflight import PreflightTally

COLUMNS = ["loss_base", "loss_disc", "token_class"]


def tau_table(weights_dir: Path, taus: list[float]) -> list[dict]:
    """One row per tau: RFT's reasoning weight over the train samples at the base model's losses."""
    tallies = [PreflightTally(tau) for tau in taus]
    for row in train_rows(weights_dir, COLUMNS):  # what the fine-tune weighs, as in the weights stage
        classes = np.asarray(row["token_class"], dtype=np.int8)
        loss_base = np.asarray(row["loss_base"], dtype=np.float32)
        loss_disc = np.asarray(row["loss_disc"], dtype=np.float32)
        for tally in tallies:
            tally.add(classes, loss_base, loss_disc)
    rows = []
    for tau, tally in zip(taus, tallies, strict=True):
        balance = next(c for c in tally.checks() if c.name == "class_balance")
        q1, q2, q3 = np.quantile(tally.w_r, [0.25, 0.5, 0.75])
        rows.append({"tau": tau, "rft_reasoning_weight": balance.value, "sft_reasoning_share": balance.limit,
                     "w_r_q1": round(float(q1), 3), "w_r_median": round(float(q2), 3), "w_r_q3": round(float(q3), 3),
                     "samples": len(tally.w_r)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights_dir", type=Path)
    parser.add_argument("--tau", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0, 5.0])
    args = parser.parse_args()
    rows = tau_table(args.weights_dir, args.tau)
    print_table(f"RFT's reasoning weight at the base model's losses, {rows[0]['samples']} train samples "
                f"(SFT's reasoning token share {rows[0]['sft_reasoning_share']:.3f})",
                ["tau", "mean w_r", "w_r quartiles"],
                [[r["tau"], f"{r['rft_reasoning_weight']:.3f}", f"{r['w_r_q1']:.3f} / {r['w_r_median']:.3f} / {r['w_r_q3']:.3f}"]
                 for r in rows])


if __name__ == "__main__":
    main()
