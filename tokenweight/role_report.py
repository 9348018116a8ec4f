"""How the token classes of a finished run compare with known token roles, over the settings that
only change the weights stage: reference (control or base), granularity (word or token), margin.

`tokenweight roles {store}/weights/{key}` reads the weight shards (losses of every model) and the
prepared shards they came from (which hold the roles for sources that know them, such as the
synthetic generator) and prints a markdown table. It scores every sample with known roles; those
the discriminator was trained on are included, as in the weights stage's own summary.
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
    for (_, prep), (_, score) in zip(iter_shards(prep_dir), iter_shards(score_dir)):
        for p, s in zip(prep.to_pylist(), score.to_pylist()):
            if p["role_truth"] is None:
                continue
            truth, mask = np.asarray(p["role_truth"]), np.asarray(p["loss_mask"])
            groups = word_groups(p["text"], p["offsets"], mask)
            disc = np.asarray(s["loss_disc"], dtype=np.float32)
            refs = {"base": np.asarray(s["loss_base"], dtype=np.float32)}
            if s["loss_control"] is not None:
                refs["control"] = np.asarray(s["loss_control"], dtype=np.float32)
            for ref, gran, m in variants:
                if ref in refs:
                    classes = token_classes(disc, refs[ref], mask, m, groups if gran == "word" else None)
                    sel = truth >= 0
                    confusion[(ref, gran, m)].update(zip(truth[sel].tolist(), classes[sel].tolist()))
    context = json.loads((score_dir / "_manifest.json").read_text())["config"]["disc_context"]
    lines = ["| reference | disc context | granularity | margin | accuracy | reasoning precision | recall | F1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for ref, gran, m in variants:
        if confusion[(ref, gran, m)]:
            r = role_scores(confusion[(ref, gran, m)])
            lines.append(f"| {ref} | {context} | {gran} | {m} | {r['accuracy']:.3f} | {r['reasoning_precision']:.3f} "
                         f"| {r['reasoning_recall']:.3f} | {r['reasoning_f1']:.3f} |")
    if len(lines) == 2:
        raise ValueError(f"{prep_dir}: no sample with known token roles (use a synthetic source)")
    return "\n".join(lines)
