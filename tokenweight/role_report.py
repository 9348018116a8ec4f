"""How the token classes of a finished run compare with known token roles, over the settings that
only change the weights stage: reference (control or base), granularity (word or token), margin.

`tokenweight roles {store}/weights/{key}` reads the weight shards (losses of every model) and the
prepared shards they came from (which hold the roles for sources that know them, such as the
synthetic generator) and prints a markdown table. It scores every sample with known roles; those
the discriminator was trained on are included, as in the weights stage's own summary.

When samples carry a format (`meta["format"]`: the role suite's react, hermes, python, multiturn,
prose; `bfcl` for BFCL answers with syntax-tree roles), a second table follows, one row per format
and setting, so that settings can be chosen on some formats and reported on the others. Tokens a
source leaves unscored (role -1) count in neither table.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from .kernels.token_weights import token_classes, word_groups
from .tasks.common import iter_shards
from .tasks.weights import role_scores


def role_table(weights_dir: Path, margins: list[float]) -> str:
    manifest = json.loads((weights_dir / "_manifest.json").read_text())
    store = weights_dir.parent.parent
    prep_dir = store / "prepare" / manifest["inputs"]["prepare"]
    score_dir = store / "score" / manifest["inputs"]["score"]
    variants = [(ref, gran, m) for ref in ("control", "base") for gran in ("word", "token") for m in margins]
    confusion = {v: Counter() for v in variants}
    # meta["format"] -> variant -> confusion, and -> Counter of the true roles of its scored tokens
    by_format: dict[str, dict[tuple, Counter]] = {}
    truth_by_format: dict[str, Counter] = {}
    for (_, prep), (_, score) in zip(iter_shards(prep_dir), iter_shards(score_dir)):
        for p, s in zip(prep.to_pylist(), score.to_pylist()):
            if p["role_truth"] is None:
                continue
            fmt = json.loads(p["meta"] or "{}").get("format")
            if fmt is not None and fmt not in by_format:
                by_format[fmt], truth_by_format[fmt] = {v: Counter() for v in variants}, Counter()
            truth, mask = np.asarray(p["role_truth"]), np.asarray(p["loss_mask"])
            if fmt is not None:
                truth_by_format[fmt].update(truth[truth >= 0].tolist())
            groups = word_groups(p["text"], p["offsets"], mask)
            disc = np.asarray(s["loss_disc"], dtype=np.float32)
            refs = {"base": np.asarray(s["loss_base"], dtype=np.float32)}
            if s["loss_control"] is not None:
                refs["control"] = np.asarray(s["loss_control"], dtype=np.float32)
            for ref, gran, m in variants:
                if ref in refs:
                    classes = token_classes(disc, refs[ref], mask, m, groups if gran == "word" else None)
                    sel = truth >= 0
                    pairs = list(zip(truth[sel].tolist(), classes[sel].tolist()))
                    confusion[(ref, gran, m)].update(pairs)
                    if fmt is not None:
                        by_format[fmt][(ref, gran, m)].update(pairs)
    context = json.loads((score_dir / "_manifest.json").read_text())["config"]["disc_context"]
    lines = ["| reference | disc context | granularity | margin | accuracy | reasoning precision | recall | F1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for ref, gran, m in variants:
        if confusion[(ref, gran, m)]:
            r = role_scores(confusion[(ref, gran, m)])
            lines.append(f"| {ref} | {context} | {gran} | {m} | {r['accuracy']:.3f} | {r['reasoning_precision']:.3f} "
                         f"| {r['reasoning_recall']:.3f} | {r['reasoning_f1']:.3f} |")
    if len(lines) == 2:
        raise ValueError(f"{prep_dir}: no sample with known token roles (use a synthetic, roles or bfcl_roles source)")
    if by_format:
        lines += ["", format_table(by_format, truth_by_format, variants)]
    return "\n".join(lines)


def format_table(by_format: dict[str, dict[tuple, Counter]], truth_by_format: dict[str, Counter],
                 variants: list[tuple]) -> str:
    """One row per (format, variant): the scored tokens of that format, its true boilerplate share,
    and the reasoning precision, recall and F1 of the classes on that format alone."""
    lines = [f"Per format ({', '.join(sorted(by_format))}): tokens and boilerplate share are the "
             "scored tokens' true roles.", "",
             "| format | reference | granularity | margin | tokens | boilerplate share | reasoning precision "
             "| recall | F1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for fmt in sorted(by_format):
        truth = truth_by_format[fmt]
        share = truth[0] / max(1, truth[0] + truth[1])
        for ref, gran, m in variants:
            if by_format[fmt][(ref, gran, m)]:
                r = role_scores(by_format[fmt][(ref, gran, m)])
                lines.append(f"| {fmt} | {ref} | {gran} | {m} | {r['tokens']} | {share:.3f} "
                             f"| {r['reasoning_precision']:.3f} | {r['reasoning_recall']:.3f} | {r['reasoning_f1']:.3f} |")
    return "\n".join(lines)
