"""Metrics of text classification and regression, as GLUE scores them: plain Python/NumPy, no scikit-learn.

* :func:`accuracy` — fraction of exact matches;
* :func:`f1_binary` — F1 of the positive class (label 1), MRPC and QQP;
* :func:`macro_f1` — unweighted mean of the per-class F1 (classes present in labels or predictions);
* :func:`matthews_corrcoef` — Matthews correlation, CoLA (the multi-class form of Gorodkin 2004, equal to the 2×2
  formula for two classes; 0 where it is undefined, as scikit-learn returns);
* :func:`pearson` / :func:`spearman` — STS-B; Spearman is Pearson of the average ranks (ties share their mean
  rank). Both are 0 where a side is constant (undefined; scipy returns NaN there).

All take sequences (or 1-D arrays) of equal length and return a float in the metric's natural range
(accuracy and F1 in [0, 1], correlations in [-1, 1]); the training tasks report them × 100.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["accuracy", "f1_binary", "macro_f1", "matthews_corrcoef", "pearson", "spearman", "rankdata", "METRICS"]


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two 1-D sequences of the same length, got shapes {a.shape} and {b.shape}")
    return a, b


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    p, y = _pair(preds, labels)
    return float((p == y).mean()) if len(y) else 0.0


def _f1(p: np.ndarray, y: np.ndarray, positive) -> float:
    tp = int(((p == positive) & (y == positive)).sum())
    fp = int(((p == positive) & (y != positive)).sum())
    fn = int(((p != positive) & (y == positive)).sum())
    denom = 2 * tp + fp + fn
    return 2.0 * tp / denom if denom else 0.0


def f1_binary(preds: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the class ``positive``: 2·TP / (2·TP + FP + FN); 0 when that class is neither predicted nor true."""
    p, y = _pair(preds, labels)
    return _f1(p, y, positive)


def macro_f1(preds: Sequence[int], labels: Sequence[int]) -> float:
    p, y = _pair(preds, labels)
    classes = np.union1d(p, y)
    return float(np.mean([_f1(p, y, c) for c in classes])) if len(classes) else 0.0


def matthews_corrcoef(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation from the confusion matrix C (rows true, columns predicted):
    (c·s − Σ_k t_k p_k) / sqrt((s² − Σ_k p_k²)(s² − Σ_k t_k²)), c = trace, s = total, t/p = row/column sums."""
    p, y = _pair(preds, labels)
    classes, inv = np.unique(np.concatenate([y, p]), return_inverse=True)
    k, n = len(classes), len(y)
    if n == 0:
        return 0.0
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (inv[:n], inv[n:]), 1.0)
    t, q = cm.sum(1), cm.sum(0)
    c, s = np.trace(cm), cm.sum()
    cov_yp = c * s - t @ q
    cov_pp = s * s - q @ q
    cov_yy = s * s - t @ t
    denom = np.sqrt(cov_pp * cov_yy)
    return float(cov_yp / denom) if denom > 0 else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    a, b = _pair(np.asarray(x, np.float64), np.asarray(y, np.float64))
    if len(a) < 2:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def rankdata(x: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span (scipy's ``method='average'``)."""
    a = np.asarray(x, np.float64)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), np.float64)
    sorted_a = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    a, b = _pair(np.asarray(x, np.float64), np.asarray(y, np.float64))
    return pearson(rankdata(a), rankdata(b))


#: metric name → function(preds, labels)
METRICS = {
    "acc": accuracy,
    "f1": f1_binary,
    "macro_f1": macro_f1,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}
