"""Calibration of class probabilities (plain numpy): log-loss, Brier, top-label and classwise ECE.

All functions take probabilities of shape (n, m) whose rows sum to 1 and integer labels of shape (n,).
Pass logits through :func:`softmax` first. Bins are equal-width on [0, 1] and closed on the right,
(b/B, (b+1)/B], with a score of exactly 0 put in the first bin (as in Guo et al., 2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def softmax(logits, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (subtracts the row maximum before exponentiating)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - np.max(z, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _check(probs, labels, n_bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (n, num_classes); got {p.shape}.")
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must have shape ({p.shape[0]},) to match probs; got {y.shape}.")
    if p.shape[0] == 0:
        raise ValueError("No examples given: probs and labels are empty.")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids; got dtype {y.dtype}.")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in [0, {p.shape[1]}); got [{y.min()}, {y.max()}].")
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError(
            "probs must be non-negative with rows summing to 1; pass logits through softmax() first."
        )
    if n_bins is not None and int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    return p, y.astype(np.int64)


def _bin_index(scores: np.ndarray, n_bins: int) -> np.ndarray:
    """Right-closed equal-width bins: (b/B, (b+1)/B] -> b; 0 -> bin 0."""
    return np.clip(np.ceil(scores * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def log_loss(probs, labels, eps: float = float(np.finfo(np.float64).eps)) -> float:
    """Mean negative log-probability of the true class (clipped at eps to stay finite)."""
    p, y = _check(probs, labels)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0))))


def brier_score(probs, labels) -> float:
    """Multi-class Brier score: mean over examples of sum_j (p_j - 1[y = j])^2 (range [0, 2])."""
    p, y = _check(probs, labels)
    sq = np.sum(p**2, axis=1) - 2.0 * p[np.arange(len(y)), y] + 1.0
    return float(np.mean(sq))


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Top-label ECE: sum_b (n_b / n) |accuracy_b - mean confidence_b| over bins of max probability."""
    p, y = _check(probs, labels, n_bins)
    conf = p.max(axis=1)
    hit = (p.argmax(axis=1) == y).astype(np.float64)
    bins = _bin_index(conf, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.bincount(bins, weights=hit, minlength=n_bins) - np.bincount(bins, weights=conf, minlength=n_bins)
    # |sum(hit) - sum(conf)| / n equals (n_b / n) * |acc_b - conf_b| per bin.
    return float(np.abs(gap[count > 0]).sum() / len(y))


def per_class_calibration_error(probs, labels, n_bins: int = 15) -> np.ndarray:
    """Classwise ECE per class j: bin p_j over ALL examples, compare its bin mean with the bin's rate of y == j.

    ce_j = sum_b (n_b / n) |mean_{x in b} p_j(x) - mean_{x in b} 1[y(x) = j]|. Returns shape (m,).
    """
    p, y = _check(probs, labels, n_bins)
    n, m = p.shape
    flat_bins = (np.arange(m) * n_bins + _bin_index(p, n_bins)).ravel()  # class-major bin ids
    is_label = np.zeros_like(p)
    is_label[np.arange(n), y] = 1.0
    gap = np.bincount(flat_bins, weights=(is_label - p).ravel(), minlength=m * n_bins)
    return np.abs(gap.reshape(m, n_bins)).sum(axis=1) / n


def calibration_report(probs, labels, class_names: Sequence[str] | None = None, n_bins: int = 15) -> dict:
    """Overall and per-class calibration summary (class_names label the worst class)."""
    p, y = _check(probs, labels, n_bins)
    if class_names is not None and len(class_names) != p.shape[1]:
        raise ValueError(f"class_names has {len(class_names)} entries but probs has {p.shape[1]} columns.")
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(p.shape[1])]
    per_class = per_class_calibration_error(p, y, n_bins)
    worst = int(np.argmax(per_class))  # lowest class id on ties
    return {
        "log_loss": log_loss(p, y),
        "brier": brier_score(p, y),
        "ece": expected_calibration_error(p, y, n_bins),
        "n_bins": int(n_bins),
        "per_class_calibration_error": [float(v) for v in per_class],
        "worst_class_calibration_error": float(per_class[worst]),
        "worst_calibration_class": names[worst],
    }
