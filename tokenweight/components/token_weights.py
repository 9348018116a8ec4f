"""From per-token losses to token classes and per-token weights (pure numpy, one sample at a time).

Classes: -1 not trained, 0 boilerplate, 1 reasoning, reasoning exactly where
`loss_disc - loss_ref > margin` and (with `min_gap`) `p_ref - p_disc > min_gap`, token by token
or, with word granularity, where a token of the word passes. Weights are 0 off target tokens.

Why words: once the first piece of a value is out (`Nair` of `Nairobi`, `2` of `2024-05-01`) its
other pieces are predictable to any model, with or without the input, so token-level LD marks
only the piece that carries the decision. The decision belongs to the whole value.

Why values (the default granularity): a value of several words copied from the input (a search
query, a title, a message: `how do heat pumps work`) is one decision too, but only its first word
is hard for a discriminator that has seen similar values; the words after it follow from it.
`value_groups` joins the words of each run of space-separated words that the sample's input
(its non-target text) holds verbatim, and a value's class is again the largest LD in it. A run
never crosses quotes, brackets, `:` or `,`, so a JSON key (in the tool schema) and its value stay
apart; words the input holds that no model found hard stay boilerplate, since grouping only
spreads an LD that is there.
"""

from __future__ import annotations

import math

import numpy as np


# The methods sample_weights computes from a sample's scores; `critical` weighs the critical stage's
# answers instead (critical_weights).
WEIGHT_METHODS = ("rft", "uniform", "rho1", "prefix")
# Characters that make up a word, values included: identifiers, numbers, dates, times, e-mails,
# paths. Quotes, brackets, `=`, `,` and spaces end a word; so does a connector at a word's end.
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.@/:")
_CONNECTORS = frozenset(".:-/@")


def word_groups(text: str, offsets, loss_mask) -> np.ndarray:
    """A word index for each target token (-1 elsewhere): a token continues the previous token's
    word when both are targets and the characters either side of their boundary are word
    characters (any letter or digit counts, so non-ASCII words join too)."""
    groups = np.full(len(loss_mask), -1, dtype=np.int64)
    word, prev = -1, False
    for t, ((a, b), m) in enumerate(zip(offsets, loss_mask)):
        if not m or b <= a:
            prev = False
            continue
        joins = prev and a > 0 and _is_word(text[a]) and _is_word(text[a - 1])
        if not joins:
            word += 1
        groups[t] = word
        prev = True
    # A connector-only token that ends its word ("directions." / "at 5:") is punctuation.
    for t in range(len(groups)):
        a, b = offsets[t]
        if groups[t] >= 0 and t and groups[t - 1] == groups[t] and set(text[a:b]) <= _CONNECTORS:
            if t + 1 == len(groups) or groups[t + 1] != groups[t]:
                word += 1
                groups[t] = word
    return groups


def value_groups(text: str, offsets, loss_mask) -> np.ndarray:
    """`word_groups`, with the words of each copied run joined: a run of two or more target words
    separated by single spaces whose text (from its first word's first character to its last
    word's last) occurs verbatim in the sample's non-target text."""
    groups = word_groups(text, offsets, loss_mask)
    source = _input_text(text, offsets, loss_mask)
    n, t = len(groups), 0
    while t < n:
        if groups[t] < 0 or not _starts_run(text, offsets[t]):
            t += 1
            continue
        start, end = _strip_space(text, offsets[t]), t
        while (end + 1 < n and groups[end + 1] >= 0 and _continues_run(text, offsets[end + 1])
               and text[start : offsets[end + 1][1]] in source):
            end += 1
        words = set(groups[t : end + 1].tolist())
        if len(words) >= 2:  # every extension was checked against the source
            groups[np.isin(groups, list(words))] = min(words)
        t = end + 1
    return groups


def class_groups(text: str, offsets, loss_mask, granularity: str) -> np.ndarray | None:
    """The groups `token_classes` takes the largest LD over: None for `token`, else word or value
    groups."""
    if granularity == "token":
        return None
    if granularity == "word":
        return word_groups(text, offsets, loss_mask)
    if granularity == "value":
        return value_groups(text, offsets, loss_mask)
    raise ValueError(f"unknown granularity {granularity!r}; valid: token, word, value")


def _input_text(text: str, offsets, loss_mask) -> str:
    """The non-target text, its separate stretches (system, user, tool turns) kept apart."""
    parts, prev = [], None
    for (a, b), m in zip(offsets, loss_mask):
        if m or b <= a:
            prev = None
            continue
        if prev is not None and a == prev:
            parts[-1] += text[a:b]
        else:
            parts.append(text[a:b])
        prev = b
    return "\x00".join(parts)


# A token that may lie inside a copied run: letters and digits (and `'`, `-`, `_` inside words),
# after at most one leading space; a run's first token must begin with a letter or digit.
def _run_body(piece: str) -> str:
    return piece[1:] if piece.startswith(" ") else piece


def _continues_run(text: str, span) -> bool:
    body = _run_body(text[span[0] : span[1]])
    return bool(body) and all(ch.isalnum() or ch in "'-_" for ch in body)


def _starts_run(text: str, span) -> bool:
    body = _run_body(text[span[0] : span[1]])
    return _continues_run(text, span) and body[0].isalnum()


def _strip_space(text: str, span) -> int:
    return span[0] + 1 if text[span[0] : span[1]].startswith(" ") else span[0]


def _is_word(ch: str) -> bool:
    return ch in _WORD or ch.isalnum()


def group_max(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each grouped position gets the largest value of its group; -1 positions keep theirs."""
    out = np.array(values, dtype=np.float32, copy=True)
    sel = groups >= 0
    if sel.any():
        best = np.full(int(groups[sel].max()) + 1, -np.inf, dtype=np.float32)
        np.maximum.at(best, groups[sel], out[sel])
        out[sel] = best[groups[sel]]
    return out


def calibrated_margin(ld: np.ndarray, quantile: float = 0.95) -> float:
    """A margin read from the run's own LD: the `quantile` of -LD over target tokens with LD < 0.

    A token cannot be easier without its input than with it except by the two models' noise, so
    the negative side of LD is noise alone; mirrored, it says how far noise reaches on the positive
    side, and the margin sits where 95% of that noise stays below. 0 where no LD is negative."""
    negative = -np.asarray(ld, dtype=np.float64)[np.asarray(ld) < 0]
    return round(float(np.quantile(negative, quantile)), 4) if negative.size else 0.0


def probability_gap(loss_disc: np.ndarray, loss_ref: np.ndarray) -> np.ndarray:
    """p_ref - p_disc per token: how much more likely the token is with its input than without."""
    return np.exp(-np.asarray(loss_ref, np.float64)) - np.exp(-np.asarray(loss_disc, np.float64))


def token_classes(
    loss_disc: np.ndarray, loss_ref: np.ndarray, loss_mask: np.ndarray, margin: float, groups: np.ndarray | None = None,
    min_gap: float = 0.0,
) -> np.ndarray:
    """-1 off target, 1 where LD (or, given word groups, its word's largest LD) > margin, else 0.

    With `min_gap` > 0 only tokens whose probability gap (`probability_gap`) is above it count:
    the input must decide the token (likely with it, unlikely without it). LD alone also rises
    where the input only shifts probability between options both models find hard: a stock
    sentence at 6 nats under one model and 8 under the other is LD 2, a gap of 0.002. A group
    is reasoning when one of its tokens counts."""
    ld = np.asarray(loss_disc, np.float32) - np.asarray(loss_ref, np.float32)
    if min_gap > 0:
        ld = np.where(probability_gap(loss_disc, loss_ref) > min_gap, ld, -np.inf).astype(np.float32)
    if groups is not None:
        ld = group_max(ld, groups)
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


def rho1_weights(loss_base: np.ndarray, loss_ref: np.ndarray, loss_mask: np.ndarray, top_share: float) -> np.ndarray:
    """Rho-1's selection (arXiv 2404.07965) within one sample: the ceil(top_share * n) target
    tokens with the largest excess loss `loss_base - loss_ref` (ties to the earlier token) get
    1/k each, the others 0. The reference is a model tuned on the data (the matched control): a
    token the base finds hard and the reference learned is one worth training on."""
    weight = np.zeros(len(loss_mask), dtype=np.float32)
    targets = np.flatnonzero(loss_mask == 1)
    k = math.ceil(top_share * len(targets) - 1e-9)
    if k:
        excess = (np.asarray(loss_base, np.float64) - np.asarray(loss_ref, np.float64))[targets]
        chosen = targets[np.argsort(-excess, kind="stable")[:k]]
        weight[chosen] = 1.0 / k
    return weight


def prefix_weights(loss_mask: np.ndarray, prefix_tokens: int) -> np.ndarray:
    """The first `prefix_tokens` target tokens of each assistant turn (each run of target tokens)
    share the sample's weight equally, the rest 0: the prefix idea of UPFT (arXiv 2503.02875),
    on the data's own answers rather than the model's sampled ones."""
    weight = np.zeros(len(loss_mask), dtype=np.float32)
    run = 0
    for t, m in enumerate(loss_mask):
        run = run + 1 if m else 0
        if m and run <= prefix_tokens:
            weight[t] = 1.0
    total = weight.sum(dtype=np.float64)
    return (weight / total).astype(np.float32) if total else weight


def critical_weights(flags: np.ndarray) -> np.ndarray:
    """Equal weight on the tokens flagged critical (1), summing to 1; all 0 when none is (an answer
    no probed substitute breaks teaches nothing under CFT)."""
    weight = (np.asarray(flags) == 1).astype(np.float32)
    total = weight.sum(dtype=np.float64)
    return (weight / total).astype(np.float32) if total else weight


def sample_weights(method: str, loss_base: np.ndarray, classes: np.ndarray, loss_mask: np.ndarray, tau: float,
                   loss_ref: np.ndarray | None = None, top_share: float = 0.6, prefix_tokens: int = 8) -> np.ndarray:
    """One sample's `weight` column by `method`; each sums to 1 over the sample's target tokens
    (0 elsewhere), so `finetune.method: weighted` gives every sample the same say."""
    if method == "rft":
        return rft_static_weights(loss_base, classes, tau)
    if method == "uniform":
        return uniform_weights(loss_mask)
    if method == "rho1":
        if loss_ref is None:
            raise ValueError("weights.method rho1 needs a reference model's losses (discriminator.reference: control)")
        return rho1_weights(loss_base, loss_ref, loss_mask, top_share)
    if method == "prefix":
        return prefix_weights(loss_mask, prefix_tokens)
    if method == "critical":
        raise ValueError("weights.method critical weighs the critical stage's answers, not SHAD's scores: "
                         "use critical_weights on that stage's flags")
    raise ValueError(f"unknown weight method {method!r}; valid: {', '.join(WEIGHT_METHODS)}")
