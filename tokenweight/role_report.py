"""How the token classes of finished runs compare with known token roles, over the settings that
only change the weights stage: reference (control or base), granularity (value, word or token),
margin (fixed, or `auto`: calibrated from the run's own LD, see `calibrated_margin`) and min gap
(the probability gap a reasoning token also needs, 0 for none: `token_classes`).

`tokenweight roles {store}/weights/{key} [more weights dirs]` reads the weight shards' runs (the
losses of every model) and the prepared shards they came from (which hold the roles for sources
that know them: the synthetic generator, the role suite, BFCL with syntax-tree roles) and prints
markdown tables. It scores every sample with known roles.

When samples carry a format (`meta["format"]`: the role suite's react, hermes, python, multiturn,
prose; `bfcl` for BFCL answers with syntax-tree roles), a table follows with one row per format and
setting. Given several runs (one data set per format, as a team's data usually is), the formats of
all of them go in one table, and a leave-one-format-out table follows: for each format, the setting
with the best mean F1 over the *other* formats, and what it gets on the held-out one. Tokens a
source leaves unscored (role -1) count in no table.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .components.class_tally import calibrate, role_scores
from .components.token_weights import class_groups, token_classes, word_groups
from .shards import iter_shards
from .stage_outputs import Manifest
from .store import MANIFEST

GRANULARITIES = ("value", "word", "token")
REFERENCES = ("control", "base")
Variant = tuple[str, str, float | str, float]  # (reference, granularity, margin or "auto", min gap)


@dataclass
class RunRoles:
    """The confusions of one run, per setting, over all its samples and per format."""

    context: str
    seconds: float  # discriminator + score stage wall time
    confusion: dict[Variant, Counter]
    by_format: dict[str, dict[Variant, Counter]] = field(default_factory=dict)
    truth_by_format: dict[str, Counter] = field(default_factory=dict)
    auto_margin: dict[str, float] = field(default_factory=dict)  # reference -> calibrated margin


def run_roles(weights_dir: Path, margins: list[float], gaps: list[float] = (0.0,)) -> RunRoles:
    """Read one run and tally, for every setting, (true role, class) pairs of its scored tokens."""
    return read_run(weights_dir, margins, gaps)[1]


def read_run(weights_dir: Path, margins: list[float], gaps: list[float]) -> tuple[list[tuple[dict, dict]], RunRoles]:
    """`run_roles`, with the (prepared row, score row) pairs it read."""
    prep_dir, score_dir, context, seconds = run_dirs(weights_dir)
    samples = role_samples(prep_dir, score_dir)
    # reference -> the margin `margin: auto` gives in the weights stage (the same function)
    auto = {ref: calibrate(prep_dir, score_dir, ref) for ref in REFERENCES if ref in score_refs(samples[0][1])}
    return samples, tally_roles(samples, margins, gaps, context, seconds, auto)


def run_dirs(weights_dir: Path) -> tuple[Path, Path, str, float]:
    """A weights output's prepare and score directories, the discriminator's context and the
    seconds of its discriminator and score stages."""
    inputs = Manifest.read(weights_dir).inputs
    store = weights_dir.parent.parent
    prep_dir = store / "prepare" / inputs["prepare"]
    score_dir = store / "score" / inputs["score"]
    scored = Manifest.read(score_dir)
    seconds = scored.seconds
    disc_dir = store / "discriminator" / inputs.get("discriminator", "")
    if inputs.get("discriminator") and (disc_dir / MANIFEST).exists():
        seconds += Manifest.read(disc_dir).seconds
    return prep_dir, score_dir, scored.config["disc_context"], seconds


def role_samples(prep_dir: Path, score_dir: Path) -> list[tuple[dict, dict]]:
    """(prepared row, score row) of every sample with known roles, in shard order."""
    samples = []
    for (_, prep), (_, score) in zip(iter_shards(prep_dir), iter_shards(score_dir)):
        for p, s in zip(prep.to_pylist(), score.to_pylist()):
            if p["role_truth"] is not None:
                samples.append((p, s))
    if not samples:
        raise ValueError(f"{prep_dir}: no sample with known token roles (use a synthetic, roles or bfcl_roles source)")
    return samples


def tally_roles(samples: list[tuple[dict, dict]], margins: list[float], gaps: list[float], context: str,
                seconds: float, auto: dict[str, float]) -> RunRoles:
    """The confusions of `samples` ((prepared row, score row) pairs) under every setting; `auto`
    holds the calibrated margin of each reference that has one."""
    variants: list[Variant] = list(dict.fromkeys(  # a setting asked for twice is counted once
        (ref, gran, m, g) for ref in REFERENCES for gran in GRANULARITIES for g in gaps
        for m in [*margins, *(["auto"] if auto else [])]))
    out = RunRoles(context, seconds, {v: Counter() for v in variants}, auto_margin=auto)
    for p, s in samples:
        fmt = json.loads(p["meta"] or "{}").get("format")
        if fmt is not None and fmt not in out.by_format:
            out.by_format[fmt], out.truth_by_format[fmt] = {v: Counter() for v in variants}, Counter()
        truth, mask = np.asarray(p["role_truth"]), np.asarray(p["loss_mask"])
        if fmt is not None:
            out.truth_by_format[fmt].update(truth[truth >= 0].tolist())
        groups = {gran: class_groups(p["text"], p["offsets"], mask, gran) for gran in GRANULARITIES}
        disc, refs = np.asarray(s["loss_disc"], dtype=np.float32), score_refs(s)
        sel = truth >= 0
        for ref, gran, m, g in variants:
            if ref not in refs or (m == "auto" and ref not in auto):
                continue
            margin = auto[ref] if m == "auto" else m
            classes = token_classes(disc, np.asarray(refs[ref], dtype=np.float32), mask, margin, groups[gran], g)
            pairs = list(zip(truth[sel].tolist(), classes[sel].tolist()))
            out.confusion[(ref, gran, m, g)].update(pairs)
            if fmt is not None:
                out.by_format[fmt][(ref, gran, m, g)].update(pairs)
    return out


def score_refs(score_row: dict) -> dict:
    """The reference losses a score row has: the base model's, and the control's where it was scored."""
    refs = {"base": score_row["loss_base"]}
    if score_row["loss_control"] is not None:
        refs["control"] = score_row["loss_control"]
    return refs


def _margin(run: RunRoles, ref: str, m: float | str) -> str:
    return f"auto ({run.auto_margin[ref]:.2f})" if m == "auto" else f"{m}"


def role_table(weights_dir: Path, margins: list[float], gaps: list[float] = (0.0,)) -> str:
    """The tables of one run (see the module docstring)."""
    run = run_roles(weights_dir, margins, gaps)
    lines = ["| reference | disc context | granularity | margin | min gap | accuracy | reasoning precision | recall "
             "| F1 |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (ref, gran, m, g), confusion in run.confusion.items():
        if confusion:
            r = role_scores(confusion)
            lines.append(f"| {ref} | {run.context} | {gran} | {_margin(run, ref, m)} | {g} | {r['accuracy']:.3f} "
                         f"| {r['reasoning_precision']:.3f} | {r['reasoning_recall']:.3f} | {r['reasoning_f1']:.3f} |")
    if run.by_format:
        lines += ["", format_table([run])]
    return "\n".join(lines)


def suite_table(weights_dirs: list[Path], margins: list[float], gaps: list[float] = (0.0,)) -> str:
    """Several runs (one per data set): every format in one table, then leave-one-format-out."""
    runs = [run_roles(d, margins, gaps) for d in weights_dirs]
    if not all(r.by_format for r in runs):
        raise ValueError("every run needs samples with a format (meta['format']) for a suite table")
    formats = [f for r in runs for f in r.by_format]
    if len(set(formats)) != len(formats):
        raise ValueError(f"a format is in more than one run: {sorted(formats)}")
    return format_table(runs) + "\n\n" + leave_one_out_table(runs)


def _format_scores(runs: list[RunRoles]) -> dict[str, dict[Variant, dict]]:
    return {fmt: {v: role_scores(c) for v, c in run.by_format[fmt].items() if c}
            for run in runs for fmt in run.by_format}


def format_table(runs: list[RunRoles]) -> str:
    """One row per (format, setting): the scored tokens of that format, its true boilerplate share,
    and the reasoning precision, recall and F1 of the classes on that format alone."""
    formats = sorted(f for r in runs for f in r.by_format)
    lines = [f"Per format ({', '.join(formats)}): tokens and boilerplate share are the scored tokens' true "
             "roles; seconds are the run's discriminator and score stages.", "",
             "| format | reference | granularity | margin | min gap | tokens | boilerplate share "
             "| reasoning precision | recall | F1 | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        for fmt in sorted(run.by_format):
            truth = run.truth_by_format[fmt]
            share = truth[0] / max(1, truth[0] + truth[1])
            for (ref, gran, m, g), confusion in run.by_format[fmt].items():
                if confusion:
                    r = role_scores(confusion)
                    lines.append(f"| {fmt} | {ref} | {gran} | {_margin(run, ref, m)} | {g} | {r['tokens']} | {share:.3f} "
                                 f"| {r['reasoning_precision']:.3f} | {r['reasoning_recall']:.3f} "
                                 f"| {r['reasoning_f1']:.3f} | {run.seconds:.0f} |")
    return "\n".join(lines)


def leave_one_out_table(runs: list[RunRoles]) -> str:
    """For each format: the setting with the best mean F1 over the other formats, and its scores on
    the held-out one (with the best setting there, for scale)."""
    scores = _format_scores(runs)
    formats = sorted(scores)
    lines = ["Leave one format out: the setting is chosen on the other formats (best mean F1), then "
             "reported on the held-out format.", "",
             "| held-out format | chosen setting (reference, granularity, margin, min gap) | mean F1 on the others "
             "| precision | recall | F1 held out | best F1 there (setting) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    # Settings every format has, in declaration order (control before base, value before word
    # before token), so a tie goes to the first.
    common = [v for v in scores[formats[0]] if all(v in scores[f] for f in formats)]
    for held in formats:
        others = [f for f in formats if f != held]
        if not others:
            break
        mean = {v: float(np.mean([scores[f][v]["reasoning_f1"] for f in others])) for v in common}
        chosen = max(common, key=lambda v: mean[v])
        got = scores[held][chosen]
        best = max(scores[held], key=lambda v: scores[held][v]["reasoning_f1"])
        lines.append(f"| {held} | {', '.join(map(str, chosen))} | {mean[chosen]:.3f} "
                     f"| {got['reasoning_precision']:.3f} "
                     f"| {got['reasoning_recall']:.3f} | {got['reasoning_f1']:.3f} "
                     f"| {scores[held][best]['reasoning_f1']:.3f} ({', '.join(map(str, best))}) |")
    return "\n".join(lines)


def repeated_words(text: str, offsets, targets) -> np.ndarray:
    """True at each target token whose word (`word_groups`; two characters or more, a letter or digit
    among them) the target text before it already holds as a whole word: a value the answer repeats
    from its own earlier text, which a model can copy without the input."""
    groups = word_groups(text, offsets, np.asarray(targets, dtype=np.int8))
    out = np.zeros(len(groups), dtype=bool)
    pieces: list[str] = []  # the target text, token by token
    words: dict[int, tuple[int, list[int]]] = {}  # word -> (target characters before it, its tokens)
    written = 0
    for t, g in enumerate(groups):
        if g < 0:
            continue
        words.setdefault(int(g), (written, []))[1].append(t)
        pieces.append(text[offsets[t][0]:offsets[t][1]])
        written += len(pieces[-1])
    target_text = "".join(pieces)
    for before, tokens in words.values():
        word = text[offsets[tokens[0]][0]:offsets[tokens[-1]][1]].strip()
        if len(word) < 2 or not any(ch.isalnum() for ch in word):
            continue
        # a whole word: no word character or connector-joined word on either side (`Nairobi.` at a
        # sentence's end counts, `Nairobi.com` does not)
        if re.search(rf"(?<!\w)(?<!\w[.@/:-]){re.escape(word)}(?!\w|[.@/:-]\w)", target_text[:before]):
            out[tokens] = True
    return out


def error_table(weights_dir: Path, top: int = 15) -> str:
    """Where the run's own classes (the weights stage's `token_class`) miss the known roles, token by
    token: the most frequent false positives and false negatives, each with its count, mean LD and
    one example in context, and how many false positives sit right after a reasoning token (where a
    value ends: BFCL's syntax-tree rules leave that token unscored, since whether a value ended
    there is itself information; the role suite does so only inside calls), and what a rule that
    called every repeat boilerplate would do: the scored tokens whose word the answer already wrote
    earlier (`repeated_words`; the role suite counts a repeat boilerplate, BFCL's syntax tree counts
    a repeated literal reasoning), by role and class, and the F1 with them all boilerplate."""
    prep_dir = weights_dir.parent.parent / "prepare" / Manifest.read(weights_dir).inputs["prepare"]
    errors = {"false positives": {}, "false negatives": {}}  # token text -> [count, LD sum, example]
    predicted = after_value = 0
    confusion, unscored_after = Counter(), Counter()  # (truth, class): all scored tokens / without post-value ones
    repeats, repeats_boilerplate = Counter(), Counter()  # (truth, class) of repeated words / all, with them class 0
    columns = ["text", "offsets", "token_class", "loss_disc", "loss_ref"]
    for (_, weighted), (_, prep) in zip(iter_shards(weights_dir, columns), iter_shards(prep_dir, ["role_truth"])):
        for w, p in zip(weighted.to_pylist(), prep.to_pylist(), strict=True):
            truth = p["role_truth"]
            if truth is None or w["loss_disc"] is None:  # no roles, or a text SHAD never scored
                continue
            ld = np.asarray(w["loss_disc"], np.float32) - np.asarray(w["loss_ref"], np.float32)
            text, offsets = w["text"], w["offsets"]
            repeated = repeated_words(text, offsets, np.asarray(w["token_class"]) >= 0)
            for t, (c, r) in enumerate(zip(w["token_class"], truth, strict=True)):
                if r < 0 or c < 0:
                    continue
                predicted += c == 1
                confusion[(r, c)] += 1
                if repeated[t]:
                    repeats[(r, c)] += 1
                repeats_boilerplate[(r, 0 if repeated[t] else c)] += 1
                if not (t > 0 and truth[t - 1] == 1 and r == 0):
                    unscored_after[(r, c)] += 1
                if c == r:
                    continue
                kind = "false positives" if c == 1 else "false negatives"
                after_value += kind == "false positives" and t > 0 and truth[t - 1] == 1
                token = text[offsets[t][0]:offsets[t][1]]
                entry = errors[kind].setdefault(token, [0, 0.0, None])
                entry[0] += 1
                entry[1] += float(ld[t])
                if entry[2] is None:
                    a, b = offsets[t]
                    entry[2] = f"{text[max(0, a - 30):a]}[{token}]{text[b:b + 15]}"
    n_fp = sum(e[0] for e in errors["false positives"].values())
    lines = [f"False positives: {n_fp} of {predicted} tokens classed reasoning; {after_value} of them "
             f"({after_value / max(1, n_fp):.0%}) right after a reasoning token.",
             f"Reasoning F1 {role_scores(confusion)['reasoning_f1']:.3f}; with the boilerplate token right after a "
             f"reasoning token left unscored (as BFCL's rules do): {role_scores(unscored_after)['reasoning_f1']:.3f}.",
             f"Tokens of a word the answer already wrote: {repeats[(0, 0)] + repeats[(0, 1)]} boilerplate by the roles "
             f"({repeats[(0, 1)]} classed reasoning), {repeats[(1, 0)] + repeats[(1, 1)]} reasoning ({repeats[(1, 1)]} "
             f"classed reasoning); with every repeat classed boilerplate, F1 "
             f"{role_scores(repeats_boilerplate)['reasoning_f1']:.3f}."]
    for kind, found in errors.items():
        lines += ["", f"| {kind} | count | mean LD | example |", "| --- | --- | --- | --- |"]
        for token, (count, ld_sum, example) in sorted(found.items(), key=lambda kv: -kv[1][0])[:top]:
            shown = example.replace("\n", "\\n").replace("|", "\\|")
            lines.append(f"| {json.dumps(token, ensure_ascii=False)} | {count} | {ld_sum / count:+.2f} | `{shown}` |")
    return "\n".join(lines)
