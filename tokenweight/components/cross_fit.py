"""Cross-fitting: no sample is scored by a discriminator (or control) that trained on it.

The train split is cut into `folds` parts by a hash of (seed, id), stable as samples are added.
Fold k's discriminator and matched control train on a shuffled sample drawn from part k only,
and every sample of part k (and every eval sample hashed there) is scored by the models of fold
k + 1 (mod folds), which never saw it. With one fold there is one pair, and it scores the
samples it trained on too (the paper's recipe): the control then fits its own training samples
almost perfectly, and their LD means something else than everyone else's.
"""

from __future__ import annotations

import hashlib


def part_of(sample_id: str, seed: int, folds: int) -> int:
    """The part (0..folds-1) a sample belongs to."""
    if folds == 1:
        return 0
    h = hashlib.sha256(f"cross-fit:{seed}:{sample_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") % folds


def scoring_fold(sample_id: str, seed: int, folds: int) -> int:
    """The fold whose models score the sample: the next part's, never the one it may have trained."""
    return (part_of(sample_id, seed, folds) + 1) % folds
