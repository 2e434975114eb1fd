"""Metrics over per-sample records (what the evaluator writes, one dict per sample).

A record holds at least ``label`` (int, index of the correct choice), ``pred`` (int, index of
the predicted choice) and ``scores`` (per-choice scores, e.g. mean log-likelihoods). Free-form
tasks use ``pred_text`` and ``answer`` instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import TvpError
from ..tasks import TaskSpec, load_task, normalize_answer


def _scores(records: list[Mapping[str, Any]]) -> np.ndarray:
    widths = {len(r["scores"]) for r in records}
    if len(widths) != 1:
        raise TvpError(f"records have scores of different lengths {sorted(widths)}; top-k needs one answer set")
    return np.asarray([r["scores"] for r in records], dtype=np.float64)


def top_k_accuracy(records: list[Mapping[str, Any]], k: int) -> float:
    """Share of records whose label is among the k highest scores (ties broken by lower index)."""
    scores = _scores(records)
    labels = np.asarray([r["label"] for r in records])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((order == labels[:, None]).any(axis=1).mean())


def binary_scores(records: list[Mapping[str, Any]], pos: int, neg: int) -> np.ndarray:
    """P(pos) - P(neg) with P the softmax over the two choices' scores."""
    s = _scores(records)[:, [pos, neg]]
    s = s - s.max(axis=1, keepdims=True)
    p = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    return p[:, 0] - p[:, 1]


def auc(records: list[Mapping[str, Any]], pos: int, neg: int) -> float:
    """ROC AUC of P(yes) - P(no) against label == yes (scikit-learn); NaN with one class only."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray([r["label"] == pos for r in records], dtype=int)
    if y.min() == y.max():
        return math.nan
    return float(roc_auc_score(y, binary_scores(records, pos, neg)))


def binary_counts(records: list[Mapping[str, Any]], pos: int) -> dict[str, float]:
    """POPE-style accuracy, precision, recall, F1 and yes-ratio for positive choice ``pos``."""
    label = np.asarray([r["label"] == pos for r in records])
    pred = np.asarray([r["pred"] == pos for r in records])
    tp = float((label & pred).sum())
    fp = float((~label & pred).sum())
    fn = float((label & ~pred).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": float((label == pred).mean()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": float(pred.mean()),
    }


def compute_metrics(spec: TaskSpec | str, records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The task's metrics (``spec.metrics``) over ``records``, plus ``n``. Values are fractions in [0, 1].

    ``top5`` is reported only when there are more than 5 choices.
    """
    spec = load_task(spec)
    records = list(records)
    if not records:
        raise TvpError(f"task {spec.name}: no records to score")
    out: dict[str, float] = {"n": len(records)}  # a count: an int in logs, JSON and tables
    if spec.kind == "open" or "exact_match" in spec.metrics:
        hits = [normalize_answer(r.get("pred_text", "")) == normalize_answer(r.get("answer", "")) for r in records]
        out["exact_match"] = float(np.mean(hits))
        if spec.kind == "open":
            return out
    for i, r in enumerate(records):
        if "label" not in r or "pred" not in r:
            raise TvpError(f"task {spec.name}: record {i} lacks 'label' or 'pred'")
    labels = np.asarray([r["label"] for r in records])
    preds = np.asarray([r["pred"] for r in records])
    acc = float((labels == preds).mean())
    binary: dict[str, float] = {}
    pos = neg = None
    if spec.kind in ("yes_no", "binary_auc") and spec.choices:
        pos = spec.choices.index(spec.positive)
        neg = 1 - pos if len(spec.choices) == 2 else next(i for i in range(len(spec.choices)) if i != pos)
        binary = binary_counts(records, pos)
    for m in spec.metrics:
        if m in ("top1", "accuracy"):
            out[m] = acc
        elif m == "top5":
            n_choices = len(records[0].get("scores") or [])
            if n_choices > 5:
                out["top5"] = top_k_accuracy(records, 5)
        elif m == "auc":
            if pos is None:
                raise TvpError(f"task {spec.name}: auc needs a yes_no or binary_auc task")
            out["auc"] = auc(records, pos, neg)
        elif m in binary:
            out[m] = binary[m]
    return out
