"""`stratified_subset`: a fixed number of a dataset's rows, seeded and stratified by class.

Readers list many datasets class by class (ImageFolder, Food-101, Pets), so "the first N" covers
a few classes only. Every place that caps a dataset's size (``--limit``, ``val_max_samples``,
the analyses) takes its rows from here instead.
"""

from __future__ import annotations

from typing import Any

from .splits import SALT_LIMIT, stratified_pick


def _stratum(dataset: Any, index: int) -> str:
    """The class of row ``index`` without reading its image where the dataset allows it."""
    item = _record(dataset, index)
    label = getattr(item, "label", None)
    return str(label) if label is not None else str(getattr(item, "answer", ""))


def stratified_subset(dataset: Any, n: int, seed: int, salt: int = SALT_LIMIT) -> Any:
    """``n`` rows of ``dataset`` (all when it holds fewer): each class keeps its share, drawn with ``seed``.

    The rows stay in dataset order; the same ``(n, seed)`` always gives the same rows.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n >= len(dataset):
        return dataset
    keys = [_stratum(dataset, i) for i in range(len(dataset))]
    return Subset(dataset, stratified_pick(keys, 1.0, seed, salt, count=n))


class Subset:
    """A fixed selection of a dataset's rows; sized and indexable, and otherwise like the dataset."""

    def __init__(self, dataset: Any, rows: list[int]) -> None:
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < len(self.rows):
            raise IndexError(i)
        return self.dataset[self.rows[i]]

    def sample(self, i: int) -> Any:
        return _record(self.dataset, self.rows[i])

    @property
    def samples(self) -> list[Any]:  # never the whole dataset's list
        return [self.sample(i) for i in range(len(self))]

    def __getattr__(self, name: str) -> Any:  # readers may expose e.g. ``spec`` or ``source``
        if name in ("dataset", "rows", "samples"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _record(dataset: Any, index: int) -> Any:
    return dataset.sample(index) if hasattr(dataset, "sample") else dataset[index]
