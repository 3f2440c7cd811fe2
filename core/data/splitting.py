"""Deterministic train/eval split over the valid rows of a normalised dataset."""

from __future__ import annotations

import random

from core.data.formats import NormalizedDataset


def split_eval(ds: NormalizedDataset, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split the valid rows of ``ds`` into (train rows, eval rows), both sorted.

    Only rows that have an example take part (rows with errors are in neither list). The eval rows
    are a seeded random sample of ``round(fraction * valid)`` rows, at least one when ``fraction``
    is above 0 and at least one row is left for training. ``fraction`` 0 puts every valid row in
    train. Raises ``ValueError`` unless ``0 <= fraction < 1``.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"the eval fraction must be at least 0 and below 1, got {fraction}")
    valid = ds.valid_rows
    if fraction == 0 or len(valid) < 2:
        return valid, []
    k = min(max(1, round(fraction * len(valid))), len(valid) - 1)
    eval_rows = sorted(random.Random(seed).sample(valid, k))
    chosen = set(eval_rows)
    return [r for r in valid if r not in chosen], eval_rows
