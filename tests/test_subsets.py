"""Every capped dataset (eval --limit, training val_max_samples) is a seeded, stratified subset."""

from __future__ import annotations

from collections import Counter

import pytest

from tvprompt.data.sample import Sample
from tvprompt.data.subset import Subset, stratified_subset
from tvprompt.training.validation import seeded_subset


class Listing:
    """A reader-ordered dataset (class by class), with ``sample(i)`` that must not load images."""

    def __init__(self, n_classes: int, per_class: int) -> None:
        self.rows = [Sample(id=f"{c}-{k}", image=f"/img/{c}/{k}.jpg", answer=f"class{c}", label=c)
                     for c in range(n_classes) for k in range(per_class)]
        self.spec = "the task"

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, i: int) -> Sample:
        return self.rows[i]

    def __getitem__(self, i: int) -> Sample:
        raise AssertionError("choosing rows must not read images")


def test_limit_on_a_class_sorted_dataset_covers_every_class():
    ds = Listing(101, 20)  # Food-101's test split in reader order, scaled down
    sub = stratified_subset(ds, 505, seed=0)
    counts = Counter(sub.sample(i).label for i in range(len(sub)))
    assert len(sub) == 505 and set(counts) == set(range(101)) and set(counts.values()) == {5}
    assert sub.rows == sorted(sub.rows)  # dataset order kept
    assert sub.spec == "the task"  # attributes pass through
    assert stratified_subset(ds, 505, seed=0).rows == sub.rows
    assert stratified_subset(ds, 505, seed=1).rows != sub.rows


def test_uneven_classes_keep_their_share_and_small_limits_are_exact():
    ds = Listing(2, 0)
    ds.rows = [Sample(id=str(i), image="x", answer="a" if i < 90 else "b") for i in range(100)]
    sub = stratified_subset(ds, 10, seed=3)
    assert Counter(s.answer for s in sub.samples) == {"a": 9, "b": 1}
    assert stratified_subset(ds, 100, seed=0) is ds and stratified_subset(ds, 500, seed=0) is ds
    with pytest.raises(ValueError):
        stratified_subset(ds, 0, seed=0)


def test_subset_indexing():
    sub = Subset(["a", "b", "c", "d"], [1, 3])
    assert [sub[0], sub[1]] == ["b", "d"] and len(sub) == 2
    with pytest.raises(IndexError):
        sub[2]


def test_val_max_samples_subset_is_stratified_and_seeded():
    ds = Listing(4, 25)
    sub = seeded_subset(ds, 8, seed=0)
    assert Counter(sub.sample(i).label for i in range(8)) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert seeded_subset(ds, 8, seed=0).rows == sub.rows != seeded_subset(ds, 8, seed=5).rows
