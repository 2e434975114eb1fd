"""Seeded, stratified index selection: carving val/test splits and data-scale subsampling."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .sample import Sample

SALT_HOLDOUT = 1  # test carved from a one-pool dataset: fixed seed, so test never moves with the run seed
SALT_VAL = 2
SALT_SUBSAMPLE = 3


def strata(samples: Sequence[Sample]) -> list[str]:
    """The stratification key of each sample: its label if known, else its answer text."""
    return [str(s.label) if s.label is not None else s.answer for s in samples]


def stratified_pick(keys: Sequence[str], fraction: float, seed: int, salt: int, min_per_class: int = 0) -> list[int]:
    """Indices (sorted) of a seeded ``fraction`` of each class: ``max(min_per_class, round(fraction*n_c))``.

    At least one index is picked overall when ``fraction > 0`` and ``keys`` is not empty.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    rng = np.random.default_rng([seed, salt])
    picked: list[int] = []
    for key in sorted(groups):
        idx = np.asarray(groups[key])
        k = min(len(idx), max(min_per_class, int(round(fraction * len(idx)))))
        perm = rng.permutation(len(idx))
        picked += idx[perm[:k]].tolist()
    if not picked and fraction > 0 and keys:
        largest = max(sorted(groups), key=lambda g: len(groups[g]))
        picked = [groups[largest][int(rng.integers(len(groups[largest])))]]
    return sorted(picked)


def split_off(samples: list[Sample], fraction: float, seed: int, salt: int) -> tuple[list[Sample], list[Sample]]:
    """(rest, carved): a stratified seeded ``fraction`` of ``samples`` moved to ``carved``."""
    carved = set(stratified_pick(strata(samples), fraction, seed, salt))
    rest = [s for i, s in enumerate(samples) if i not in carved]
    return rest, [s for i, s in enumerate(samples) if i in carved]


def subsample(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """Data-scale subsampling (Fig. 5): a stratified seeded ``fraction``, at least one per class."""
    if fraction >= 1.0:
        return samples
    keep = stratified_pick(strata(samples), fraction, seed, SALT_SUBSAMPLE, min_per_class=1)
    return [samples[i] for i in keep]
