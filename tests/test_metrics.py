"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from tvprompt.errors import TvpError
from tvprompt.evaluation.metrics import compute_metrics
from tvprompt.tasks import TaskSpec, load_task


def _rec(label, pred, scores):
    return {"label": label, "pred": pred, "scores": scores}


def test_top1_top5_hand_computed():
    spec = load_task("cifar10")
    # label ranks: 1st, 3rd, 6th, 2nd, 5th -> top1 = 1/5, top5 = 4/5 (top4 would be 3/5, top6 5/5)
    scores = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    records = [_rec(label, 0, scores) for label in (0, 2, 5, 1, 4)]
    assert compute_metrics(spec, records) == {"n": 5.0, "top1": pytest.approx(1 / 5), "top5": pytest.approx(4 / 5)}


def test_top5_only_with_more_than_five_choices():
    spec = TaskSpec.from_dict({"version": 1, "name": "t", "choices": list("abcde")})
    out = compute_metrics(spec, [_rec(0, 0, [1, 0, 0, 0, 0]), _rec(1, 0, [1, 0, 0, 0, 0])])
    assert out == {"n": 2.0, "top1": 0.5}


def test_counting_accuracy():
    out = compute_metrics("clevr_count", [_rec(3, 3, [0] * 11), _rec(4, 5, [0] * 11), _rec(10, 10, [0] * 11)])
    assert out == {"n": 3.0, "accuracy": pytest.approx(2 / 3)}


def test_pope_hand_computed():
    # choices [yes, no]: yes = 0. labels: y y y n n n ; preds: y n n y n n -> tp 1, fn 2, fp 1, tn 2
    labels, preds = [0, 0, 0, 1, 1, 1], [0, 1, 1, 0, 1, 1]
    out = compute_metrics("pope_random", [_rec(label, p, [0, 0]) for label, p in zip(labels, preds, strict=True)])
    assert out["accuracy"] == pytest.approx(3 / 6)
    assert out["precision"] == pytest.approx(1 / 2)  # tp / (tp + fp)
    assert out["recall"] == pytest.approx(1 / 3)  # tp / (tp + fn): differs from precision, so a swap shows
    assert out["f1"] == pytest.approx(0.4)  # harmonic mean 2PR / (P + R); the arithmetic mean would be 5/12
    assert out["yes_ratio"] == pytest.approx(2 / 6)


def test_auc_hand_computed_from_softmax_difference():
    # score = P(yes) - P(no), monotone in s_yes - s_no: margins 2, 0.5, 1, -1 for labels yes, no, yes, no
    records = [
        _rec(0, 0, [2.0, 0.0]),
        _rec(1, 0, [0.5, 0.0]),
        _rec(0, 0, [1.0, 0.0]),
        _rec(1, 1, [-1.0, 0.0]),
    ]
    out = compute_metrics("hateful_memes", records)
    # positive/negative pairs: (2 > 0.5), (2 > -1), (1 > 0.5), (1 > -1) -> 4/4
    assert out["auc"] == pytest.approx(1.0) and out["accuracy"] == pytest.approx(0.75)
    records[1] = _rec(1, 0, [1.5, 0.0])  # now (1 < 1.5): 3/4
    assert compute_metrics("hateful_memes", records)["auc"] == pytest.approx(0.75)
    one_class = compute_metrics("hateful_memes", [_rec(0, 0, [1.0, 0.0])])
    assert math.isnan(one_class["auc"])


def test_open_exact_match():
    spec = TaskSpec.from_dict({"version": 1, "name": "vqa", "kind": "open"})
    out = compute_metrics(spec, [{"pred_text": "A Cat.", "answer": "a cat"}, {"pred_text": "dog", "answer": "cat"}])
    assert out == {"n": 2.0, "exact_match": 0.5}


def test_errors():
    with pytest.raises(TvpError, match="no records"):
        compute_metrics("cifar10", [])
    with pytest.raises(TvpError, match="lacks 'label' or 'pred'"):
        compute_metrics("cifar10", [{"scores": [0] * 10}])
