"""Seeded, stratified index selection: carving val/test splits and data-scale subsampling."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .sample import Sample

SALT_HOLDOUT = 1  # test carved from a one-pool dataset: fixed seed, so test never moves with the run seed
SALT_VAL = 2
SALT_SUBSAMPLE = 3
SALT_LIMIT = 4  # eval --limit (and the analyses): a fixed-size subset
SALT_VAL_SUBSET = 5  # training's val_max_samples
SALT_TSNE = 6  # the rows a t-SNE plot shows


def strata(samples: Sequence[Sample]) -> list[str]:
    """The stratification key of each sample: its label if known, else its answer text."""
    return [str(s.label) if s.label is not None else s.answer for s in samples]


def stratified_pick(
    keys: Sequence[str], fraction: float, seed: int, salt: int, *, min_per_class: int = 0, keep_one: bool = False,
    count: int | None = None,
) -> list[int]:
    """Indices (sorted) of a seeded, stratified ``fraction`` of ``keys`` (or exactly ``count`` of them).

    The total is ``count``, else ``fraction * len(keys)`` rounded half up, shared among the classes by largest
    remainder (ties broken by the seed), so small splits keep their overall proportion. Each
    class then gets at least ``min_per_class``; ``keep_one`` leaves every class with two or more
    samples at least one unpicked (carving must not empty a class). At least one index is
    picked when ``fraction > 0``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    names = sorted(groups)
    if not names or fraction == 0.0:
        return []
    rng = np.random.default_rng([seed, salt])
    sizes = np.array([len(groups[g]) for g in names])
    if count is None:
        total, exact = int(fraction * len(keys) + 0.5), fraction * sizes
    else:
        total = min(count, len(keys))
        exact = total * sizes / len(keys)
    counts = np.floor(exact).astype(int)
    extra = max(0, total - int(counts.sum()))
    if extra:
        tie = rng.random(len(names))
        order = sorted(range(len(names)), key=lambda j: (-(exact[j] - counts[j]), tie[j]))
        for j in order[:extra]:
            counts[j] += 1
    counts = np.maximum(counts, np.minimum(min_per_class, sizes))
    if keep_one:
        counts = np.where(sizes >= 2, np.minimum(counts, sizes - 1), counts)
    if counts.sum() == 0:
        counts[int(np.argmax(sizes))] = 1
    picked: list[int] = []
    for g, k in zip(names, counts.tolist(), strict=True):
        idx = np.asarray(groups[g])
        picked += idx[rng.permutation(len(idx))[:k]].tolist()
    return sorted(picked)


def split_off(samples: list[Sample], fraction: float, seed: int, salt: int) -> tuple[list[Sample], list[Sample]]:
    """(rest, carved): a stratified seeded ``fraction`` of ``samples`` moved to ``carved``."""
    carved = set(stratified_pick(strata(samples), fraction, seed, salt, keep_one=True))
    rest = [s for i, s in enumerate(samples) if i not in carved]
    return rest, [s for i, s in enumerate(samples) if i in carved]


def subsample(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """Data-scale subsampling (Fig. 5): a stratified seeded ``fraction``, at least one per class."""
    if fraction >= 1.0:
        return samples
    keep = stratified_pick(strata(samples), fraction, seed, SALT_SUBSAMPLE, min_per_class=1)
    return [samples[i] for i in keep]
