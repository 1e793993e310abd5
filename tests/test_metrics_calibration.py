"""Calibration metrics against sklearn, hand computations and perfectly calibrated synthetic data."""

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax
from sklearn.metrics import brier_score_loss
from sklearn.metrics import log_loss as sklearn_log_loss

from hf_fairkd.metrics import (
    brier_score,
    calibration_report,
    expected_calibration_error,
    log_loss,
    per_class_calibration_error,
    softmax,
)

# Tiny hand-checked case, confidences away from bin edges (n_bins=5: (0.4,0.6], (0.6,0.8], (0.8,1]).
TINY_PROBS = np.array([[0.9, 0.1], [0.75, 0.25], [0.35, 0.65], [0.55, 0.45]])
TINY_LABELS = np.array([0, 1, 1, 1])


def _random_probs(n, m, seed):
    rng = np.random.default_rng(seed)
    return softmax(rng.normal(scale=2.0, size=(n, m))), rng.integers(0, m, n)


def _calibrated(n, m, seed, sharpen=1.0):
    """Labels drawn from the probabilities, so the probabilities are calibrated (when sharpen == 1)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(m), size=n)
    cumulative = probs.cumsum(axis=1)
    labels = np.minimum((rng.random((n, 1)) > cumulative).sum(axis=1), m - 1)
    shown = probs**sharpen
    return shown / shown.sum(axis=1, keepdims=True), labels


def test_softmax_matches_scipy_and_is_stable():
    logits = np.random.default_rng(0).normal(size=(6, 4)) * 10
    np.testing.assert_allclose(softmax(logits), scipy_softmax(logits, axis=-1), rtol=1e-12)
    huge = softmax([[1000.0, 1000.0, -1000.0]])
    np.testing.assert_allclose(huge, [[0.5, 0.5, 0.0]])


def test_log_loss_matches_sklearn():
    probs, labels = _random_probs(300, 5, seed=1)
    expected = sklearn_log_loss(labels, probs, labels=list(range(5)))
    assert log_loss(probs, labels) == pytest.approx(expected, rel=1e-12)


def test_log_loss_stays_finite_at_zero_probability():
    assert np.isfinite(log_loss([[1.0, 0.0]], [1]))


def test_brier_matches_hand_formula_and_sklearn():
    probs, labels = _random_probs(200, 4, seed=2)
    onehot = np.eye(4)[labels]
    assert brier_score(probs, labels) == pytest.approx(
        np.mean(np.sum((probs - onehot) ** 2, axis=1)), rel=1e-12
    )
    assert brier_score(probs, labels) == pytest.approx(brier_score_loss(labels, probs, labels=[0, 1, 2, 3]))
    assert brier_score([[1.0, 0.0]], [1]) == pytest.approx(2.0)  # worst case


def test_top_label_ece_by_hand():
    # predictions 0,0,1,0 -> hits 1,0,1,0; confidences 0.9, 0.75, 0.65, 0.55
    # bin (0.4,0.6]: {0.55, hit 0} -> 0.55; (0.6,0.8]: {0.75, 0.65; hits 0,1} -> |0.5-0.7|; (0.8,1]: 0.1
    expected = (0.55 * 1 + 0.2 * 2 + 0.1 * 1) / 4
    assert expected_calibration_error(TINY_PROBS, TINY_LABELS, n_bins=5) == pytest.approx(expected)
    # one bin: |accuracy - mean confidence| = |0.5 - 0.7125|
    assert expected_calibration_error(TINY_PROBS, TINY_LABELS, n_bins=1) == pytest.approx(0.2125)


def test_bins_are_closed_on_the_right():
    # 5 bins: a miss at confidence 0.5 and a hit at exactly 0.6 share the bin (0.4, 0.6]:
    # |0.5 - 0.55| = 0.05. Left-closed bins would split them: (|0 - 0.5| + |1 - 0.6|) / 2 = 0.45.
    probs = np.array([[0.5, 0.5], [0.6, 0.4]])
    assert expected_calibration_error(probs, [1, 0], n_bins=5) == pytest.approx(0.05)


def test_classwise_ece_by_hand():
    # class 0 scores 0.9, 0.75, 0.35, 0.55 (one per bin) vs y==0 of 1, 0, 0, 0
    class0 = (0.1 + 0.75 + 0.35 + 0.55) / 4
    # class 1 scores 0.1, 0.25, 0.65, 0.45 vs y==1 of 0, 1, 1, 1
    class1 = (0.1 + 0.75 + 0.35 + 0.55) / 4
    got = per_class_calibration_error(TINY_PROBS, TINY_LABELS, n_bins=5)
    np.testing.assert_allclose(got, [class0, class1])


def _classwise_loop(probs, labels, n_bins):
    """Slow, explicit reference: loop over classes and bins with boolean masks."""
    n, m = probs.shape
    out = np.zeros(m)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for j in range(m):
        for b in range(n_bins):
            lo, hi = edges[b], edges[b + 1]
            in_bin = (probs[:, j] > lo) & (probs[:, j] <= hi) if b > 0 else probs[:, j] <= hi
            if in_bin.any():
                out[j] += in_bin.sum() / n * abs(probs[in_bin, j].mean() - (labels[in_bin] == j).mean())
    return out


def test_classwise_ece_matches_explicit_loop():
    probs, labels = _random_probs(500, 6, seed=3)
    np.testing.assert_allclose(
        per_class_calibration_error(probs, labels, n_bins=10), _classwise_loop(probs, labels, 10), atol=1e-12
    )


def test_calibrated_data_has_near_zero_ece_and_sharpened_data_does_not():
    probs, labels = _calibrated(200_000, 4, seed=4)
    assert expected_calibration_error(probs, labels) < 0.01
    assert per_class_calibration_error(probs, labels).max() < 0.01
    over, labels = _calibrated(200_000, 4, seed=4, sharpen=3.0)
    assert expected_calibration_error(over, labels) > 0.05
    assert per_class_calibration_error(over, labels).max() > 0.02


def test_calibration_report_keys_and_worst_class():
    probs, labels = _random_probs(400, 3, seed=5)
    report = calibration_report(probs, labels, class_names=["a", "b", "c"], n_bins=10)
    per_class = per_class_calibration_error(probs, labels, n_bins=10)
    assert report["log_loss"] == pytest.approx(log_loss(probs, labels))
    assert report["brier"] == pytest.approx(brier_score(probs, labels))
    assert report["ece"] == pytest.approx(expected_calibration_error(probs, labels, n_bins=10))
    assert report["per_class_calibration_error"] == pytest.approx(per_class.tolist())
    assert report["worst_class_calibration_error"] == pytest.approx(per_class.max())
    assert report["worst_calibration_class"] == "abc"[int(per_class.argmax())]


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        ([[2.0, -1.0]], [0], "softmax"),  # logits passed by mistake
        ([[0.5, 0.5]], [2], r"labels must lie in \[0, 2\)"),
        ([[0.5, 0.5], [0.5, 0.5]], [0], "shape"),
        (np.zeros((0, 2)), np.zeros(0, dtype=int), "empty"),
        ([0.5, 0.5], [0], "shape"),
        ([[0.5, 0.5]], [0.0], "integer"),
    ],
)
def test_bad_inputs_raise(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(probs, labels)


def test_bad_bins_and_names_raise():
    with pytest.raises(ValueError, match="n_bins"):
        per_class_calibration_error(TINY_PROBS, TINY_LABELS, n_bins=0)
    with pytest.raises(ValueError, match="class_names"):
        calibration_report(TINY_PROBS, TINY_LABELS, class_names=["only one"])
