"""LD averaged over several discriminator/control pairs: does less variance per token buy better classes?

Takes the weights outputs of runs over the same prepared data that differ only in their seeds
(`shuffle.seed`: other cross-fit parts and derangement; `discriminator.seed`: batch order;
`score.seed`: other foreign hosts), so each run's pairs are independent and every sample is still
scored only by models that never trained on it. Each sample's per-token losses are averaged over
the runs (the discriminator's and the control's separately, so LD is the mean of the runs' LDs)
and classed as the weights stage would; the table shows, per format and setting, each run's
reasoning F1 and the average's precision, recall and F1. Cost: one discriminator and score stage
per member, so an ensemble of k costs k runs.

    python -m benchmarks.ld_ensemble STORE/weights/KEY_SEED0 STORE/weights/KEY_SEED1 [--margins 0.5 --gaps 0.3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.harness import print_table
from tokenweight.components.class_tally import role_scores, train_margin
from tokenweight.role_report import REFERENCES, RunRoles, read_run, score_refs, tally_roles
from tokenweight.stage_outputs import Manifest

LOSSES = ("loss_disc", "loss_control")


def averaged_samples(runs: list[list[tuple[dict, dict]]]) -> list[tuple[dict, dict]]:
    """One run's (prepared row, score row) pairs with each loss the mean over the runs, which must
    hold the same samples (same ids and token counts) in the same order."""
    out = []
    for members in zip(*runs, strict=True):
        p = members[0][0]
        ids = {m[0]["id"] for m in members}
        if len(ids) != 1:
            raise ValueError(f"the runs do not hold the same samples in order: {sorted(ids)}")
        score = dict(members[0][1])
        for name in LOSSES:
            values = [m[1][name] for m in members]
            if any(v is None for v in values):
                if name == "loss_disc":
                    raise ValueError(f"sample {p['id']}: a run did not score it with a discriminator")
                score[name] = None  # a base-reference run has no control
                continue
            score[name] = np.mean(np.asarray(values, dtype=np.float64), axis=0).astype(np.float32).tolist()
        out.append((p, score))
    return out


def auto_margins(samples: list[tuple[dict, dict]]) -> dict[str, float]:
    """`margin: auto` for each reference the samples were scored against, over their train target
    tokens (the weights stage's `train_margin`; here over the samples with known roles only)."""
    return {ref: train_margin(((p["split"], p["loss_mask"], s) for p, s in samples), ref)[0]
            for ref in REFERENCES if ref in score_refs(samples[0][1])}


def ensemble_roles(weights_dirs: list[Path], margins: list[float], gaps: list[float]) -> tuple[list[RunRoles], RunRoles]:
    """Each run's tallies and the tallies of the losses averaged over the runs (each run read once)."""
    prepared = {Manifest.read(d).inputs["prepare"] for d in weights_dirs}
    if len(prepared) != 1:
        raise ValueError(f"the runs come from different prepared data ({sorted(prepared)}): average runs of one data set")
    members, singles = zip(*(read_run(d, margins, gaps) for d in weights_dirs), strict=True)
    samples = averaged_samples(list(members))
    return list(singles), tally_roles(samples, margins, gaps, singles[0].context,
                                      sum(r.seconds for r in singles), auto_margins(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights_dirs", type=Path, nargs="+", help="weights outputs of seed-only variants of one run")
    parser.add_argument("--margins", type=float, nargs="+", default=[0.5])
    parser.add_argument("--gaps", type=float, nargs="+", default=[0.3])
    parser.add_argument("--granularity", default="value")
    args = parser.parse_args()
    if len(args.weights_dirs) < 2:
        parser.error("give at least two runs to average")
    singles, ensemble = ensemble_roles(args.weights_dirs, args.margins, args.gaps)
    rows = []
    for fmt in sorted(ensemble.by_format):
        for variant, confusion in ensemble.by_format[fmt].items():
            ref, gran, margin, gap = variant
            if gran != args.granularity or ref != "control" or not confusion:
                continue
            got = role_scores(confusion)
            shown = f"auto ({ensemble.auto_margin[ref]:.2f})" if margin == "auto" else margin
            rows.append([fmt, shown, gap, *(f"{role_scores(r.by_format[fmt][variant])['reasoning_f1']:.3f}"
                                             for r in singles),
                         f"{got['reasoning_precision']:.3f}", f"{got['reasoning_recall']:.3f}",
                         f"{got['reasoning_f1']:.3f}"])
    print_table(f"Reasoning F1 of each run and of their LD averaged (control reference, {args.granularity} "
                f"classes); discriminator and score stages {ensemble.seconds:.0f} s in all",
                ["format", "margin", "min gap", *(f"run {i}" for i in range(len(singles))),
                 "averaged precision", "recall", "F1"], rows)


if __name__ == "__main__":
    main()
