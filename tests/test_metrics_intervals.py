"""Per-class and worst-class intervals: closed forms, a second implementation, and coverage by simulation.

Everything goes through subgroup_report (the public path). The reference intervals are computed here by
bisection on a binomial CDF written with math.comb, independently of scipy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hf_fairkd.metrics import subgroup_report


def _binom_cdf(x: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1.0 - p) ** (n - i) for i in range(x + 1))


def _bisect(f, lo=0.0, hi=1.0, iterations=80) -> float:
    """Root of an increasing function f on [lo, hi]."""
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def exact_interval(x: int, n: int, level: float) -> tuple[float, float]:
    """Clopper-Pearson by its definition: low solves P(X >= x | low) = a/2, high solves P(X <= x | high) = a/2."""
    half = (1.0 - level) / 2
    low = 0.0 if x == 0 else _bisect(lambda p: (1.0 - _binom_cdf(x - 1, n, p)) - half)
    high = 1.0 if x == n else _bisect(lambda p: half - _binom_cdf(x, n, p))
    return low, high


def _rows(counts: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Class c gets `total` rows of which the first `right` are predicted correctly (else class c + 1)."""
    preds, refs = [], []
    for c, (right, total) in enumerate(counts):
        refs += [c] * total
        preds += [c] * right + [(c + 1) % len(counts)] * (total - right)
    return np.array(preds), np.array(refs)


# --- closed forms and a second implementation ------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 10, 37, 500])
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_all_right_and_all_wrong_have_closed_form_bounds(n, level):
    # x = n: P(X = n | p) = p**n = a/2 gives low = (a/2) ** (1/n); x = 0 mirrors it.
    half = (1.0 - level) / 2
    preds, refs = _rows([(n, n), (0, n)])
    perfect, zero = subgroup_report(preds, refs, confidence_level=level)["per_class"]
    assert perfect["ci_low"] == pytest.approx(half ** (1.0 / n), abs=1e-10)
    assert perfect["ci_high"] == 1.0
    assert zero["ci_low"] == 0.0
    assert zero["ci_high"] == pytest.approx(1.0 - half ** (1.0 / n), abs=1e-10)


def test_n10_x10_known_value():
    preds, refs = _rows([(10, 10), (5, 10)])
    report = subgroup_report(preds, refs)
    assert report["per_class"][0]["ci_low"] == pytest.approx(0.025**0.1, abs=1e-10)  # 0.69150...
    assert report["per_class"][0]["ci_low"] == pytest.approx(0.6915029, abs=1e-7)
    # x = 5 of 10: the published exact interval is [0.1871, 0.8129]
    assert report["per_class"][1]["ci_low"] == pytest.approx(0.187086, abs=1e-6)
    assert report["per_class"][1]["ci_high"] == pytest.approx(0.812914, abs=1e-6)


def test_per_class_intervals_match_bisection_on_the_binomial_cdf():
    counts = [(0, 3), (1, 3), (7, 9), (13, 20), (19, 20), (45, 50), (120, 200), (3, 200)]
    preds, refs = _rows(counts)
    for level in (0.95, 0.8):
        report = subgroup_report(preds, refs, confidence_level=level)
        for (x, n), row in zip(counts, report["per_class"]):
            low, high = exact_interval(x, n, level)
            assert row["ci_low"] == pytest.approx(low, abs=1e-9), (x, n, level)
            assert row["ci_high"] == pytest.approx(high, abs=1e-9), (x, n, level)


def test_worst_class_interval_is_min_of_bonferroni_bounds():
    counts = [(18, 20), (9, 12), (40, 50), (7, 10), (30, 30)]
    preds, refs = _rows([*counts, (0, 0)])  # a sixth class without test rows: not counted in K
    with pytest.warns(UserWarning, match="examples: 5"):
        report = subgroup_report(preds, refs, num_classes=6)
    level = 1.0 - 0.05 / 5
    bounds = [exact_interval(x, n, level) for x, n in counts]
    low, high = report["worst_class_accuracy_ci"]
    assert low == pytest.approx(min(b[0] for b in bounds), abs=1e-9)
    assert high == pytest.approx(min(b[1] for b in bounds), abs=1e-9)
    assert low <= report["worst_class_accuracy"] <= high
    # wider than the worst class's own 95% interval on the low side: it accounts for the 5 classes
    assert low < report["per_class"][3]["ci_low"]


def test_single_class_worst_interval_is_its_own_interval():
    preds, refs = _rows([(7, 10), (0, 0)])  # class 1 only as a wrong prediction: K = 1, no correction
    with pytest.warns(UserWarning, match="examples: 1"):
        report = subgroup_report(preds, refs, num_classes=2)
    assert report["worst_class_accuracy_ci"] == pytest.approx(list(exact_interval(7, 10, 0.95)), abs=1e-9)


# --- coverage by simulation ------------------------------------------------------------------------


def _coverage(n: int, p: float, num_classes: int, replicates: int, seed: int) -> tuple[float, float]:
    """(per-class, worst-class) coverage of subgroup_report's 95% intervals; every class has accuracy p.

    Equal accuracies are the hard case for the worst class: the observed minimum of many noisy classes
    sits below p, so an interval built around it misses p (the old bootstrap covered it 20% of the time).
    """
    rng = np.random.default_rng(seed)
    refs = np.repeat(np.arange(num_classes), n)
    position = np.tile(np.arange(n), num_classes)
    wrong = (refs + 1) % num_classes
    per_class_hits = worst_hits = 0
    for correct in rng.binomial(n, p, size=(replicates, num_classes)):
        report = subgroup_report(
            np.where(position < correct[refs], refs, wrong), refs, num_classes=num_classes
        )
        low = np.array([row["ci_low"] for row in report["per_class"]])
        high = np.array([row["ci_high"] for row in report["per_class"]])
        per_class_hits += int(np.sum((low <= p) & (p <= high)))
        w_low, w_high = report["worst_class_accuracy_ci"]
        worst_hits += int(w_low <= p <= w_high)  # the true worst-class accuracy is p
    return per_class_hits / (replicates * num_classes), worst_hits / replicates


def _check_grid(grid, replicates):
    results = {}
    for i, (n, p, k) in enumerate(grid):
        results[(n, p, k)] = _coverage(n, p, k, replicates, seed=i)
    low_per_class = min(results, key=lambda key: results[key][0])
    low_worst = min(results, key=lambda key: results[key][1])
    assert results[low_per_class][0] >= 0.93, ("per-class coverage", low_per_class, results[low_per_class])
    assert results[low_worst][1] >= 0.93, ("worst-class coverage", low_worst, results[low_worst])
    return results


def test_interval_coverage_small_grid():
    # The audit's failures of the bootstrap: n=10, p=0.95 covered 42%; n=20, p=0.9 covered 86%.
    grid = [(n, p, k) for n, p in ((5, 0.99), (10, 0.95), (20, 0.9), (100, 0.5)) for k in (10, 50)]
    _check_grid(grid, replicates=150)


@pytest.mark.slow
def test_interval_coverage_full_grid():
    ns = (5, 10, 20, 50, 100, 200, 500, 1000)
    ps = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
    _check_grid([(n, p, k) for n in ns for p in ps for k in (10, 50)], replicates=300)


# --- pinned by mutation testing (docs/MUTATION.md): the array functions directly ----------------------


@pytest.mark.parametrize(
    "n10, n01, n",
    [(0, 0, 10), (9, 0, 20), (0, 9, 20), (3, 2, 15), (12, 1, 20), (5, 5, 10), (1, 0, 1), (0, 1, 5)],
)
@pytest.mark.parametrize("level", [0.95, 0.8])
def test_paired_difference_interval_is_the_range_of_q_times_2t_minus_1_over_the_box(n10, n01, n, level):
    from hf_fairkd.metrics.intervals import paired_difference_interval

    box_level = 1.0 - (1.0 - level) / 2  # Bonferroni over the two intervals
    d = n10 + n01
    q = exact_interval(d, n, box_level)
    t = exact_interval(n10, d, box_level) if d else (0.0, 1.0)
    corners = [qq * (2 * tt - 1) for qq in q for tt in t]  # q (2t - 1) is bilinear: extremes at corners
    if level == 0.95:  # the default
        got = paired_difference_interval(n10, n01, n)
    else:
        got = paired_difference_interval(n10, n01, n, level)
    assert float(got[0]) == pytest.approx(min(corners), abs=1e-9)
    assert float(got[1]) == pytest.approx(max(corners), abs=1e-9)


def test_mcnemar_refuses_a_negative_count_on_either_side():
    from hf_fairkd.metrics.intervals import mcnemar_exact_p

    for n10, n01 in ((-1, 3), (3, -1)):
        with pytest.raises(ValueError, match="non-negative"):
            mcnemar_exact_p([n10, 1], [n01, 1])


def test_simultaneous_and_worst_class_intervals_work_row_by_row():
    from hf_fairkd.metrics.intervals import (
        clopper_pearson,
        simultaneous_clopper_pearson,
        worst_class_interval,
    )

    correct = np.array([[3, 1, 0, 0], [5, 2, 1, 0], [0, 0, 0, 0]])
    support = np.array([[4, 1, 0, 0], [6, 2, 3, 1], [0, 0, 0, 0]])  # K = 2, 4 and 0 (support 1 counts)
    low, high, k = simultaneous_clopper_pearson(correct, support)
    assert k.tolist() == [2, 4, 0]
    for r, kr in enumerate(k):
        level = 1.0 - 0.05 / max(kr, 1)
        exp_low, exp_high = clopper_pearson(correct[r], support[r], level)
        np.testing.assert_array_equal(low[r], exp_low)
        np.testing.assert_array_equal(high[r], exp_high)
    w_low, w_high = worst_class_interval(correct, support)
    for r in range(2):
        assert w_low[r] == np.nanmin(low[r]) and w_high[r] == np.nanmin(high[r])
    assert np.isnan(w_low[2]) and np.isnan(w_high[2])  # no class with examples
    # classes along axis 0 instead
    t_low, t_high = worst_class_interval(correct.T, support.T, 0.95, axis=0)
    np.testing.assert_array_equal(t_low, w_low)
    np.testing.assert_array_equal(t_high, w_high)


def test_clopper_pearson_checks_both_ends_and_defaults_to_95_percent():
    from hf_fairkd.metrics.intervals import clopper_pearson

    for x, n in (([-1, 2], [3, 3]), ([4, 2], [3, 3])):
        with pytest.raises(ValueError, match="0 <= correct <= support"):
            clopper_pearson(x, n)
    low, high = clopper_pearson([0, 3, 5], [5, 5, 5])
    expected = [exact_interval(x, 5, 0.95) for x in (0, 3, 5)]
    np.testing.assert_allclose(low, [e[0] for e in expected], atol=1e-9)
    np.testing.assert_allclose(high, [e[1] for e in expected], atol=1e-9)
