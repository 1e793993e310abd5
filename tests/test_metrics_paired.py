"""paired_delta and the hurt / helped rule: hand counts, an independent test, and error rates by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from hf_fairkd.metrics import delta_verdict, hurt_and_helped_classes, paired_delta, subgroup_report
from hf_fairkd.results import format_summary


def _random_case(n=600, num_classes=7, p_correct=0.6, seed=1):
    rng = np.random.default_rng(seed)
    refs = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, n - num_classes)])
    noise = rng.integers(0, num_classes, n)
    preds = np.where(rng.random(n) < p_correct, refs, noise)
    return preds, refs


def _exact_mcnemar(n10: int, n01: int) -> float:
    """Two-sided exact binomial p-value at 1/2, written out: sum of outcomes at most as likely as n10."""
    d = n10 + n01
    if d == 0:
        return 1.0
    pmf = [math.comb(d, i) / 2**d for i in range(d + 1)]
    return min(1.0, sum(q for q in pmf if q <= pmf[n10] * (1 + 1e-12)))


def _paired_rows(cells_per_class: list[tuple[int, int, int, int]]):
    """Per class (n11, n10, n01, n00): rows where a/b are right (1) or wrong (0); wrong means class c + 1."""
    k = len(cells_per_class)
    refs, a, b = [], [], []
    for c, cells in enumerate(cells_per_class):
        for (right_a, right_b), count in zip(((1, 1), (1, 0), (0, 1), (0, 0)), cells):
            refs += [c] * count
            a += [c if right_a else (c + 1) % k] * count
            b += [c if right_b else (c + 1) % k] * count
    return np.array(a), np.array(b), np.array(refs)


# --- point estimates, counts and the test ----------------------------------------------------------


def test_paired_delta_counts_p_values_and_verdicts_by_hand():
    cells = [(5, 0, 9, 6), (2, 12, 1, 5), (10, 3, 3, 4), (0, 0, 0, 7), (30, 1, 6, 3)]
    a, b, refs = _paired_rows(cells)
    rows = paired_delta(a, b, refs, class_names=list("vwxyz"))
    expected_verdicts = []
    for row, (n11, n10, n01, n00) in zip(rows, cells):
        n = n11 + n10 + n01 + n00
        assert (row["n10"], row["n01"]) == (n10, n01)
        assert row["delta"] == pytest.approx((n10 - n01) / n, abs=1e-12)
        assert row["p_value"] == pytest.approx(_exact_mcnemar(n10, n01), rel=1e-9)
        if n10 + n01:
            assert row["p_value"] == pytest.approx(binomtest(n10, n10 + n01, 0.5).pvalue, rel=1e-9)
        assert row["ci_low"] <= row["delta"] <= row["ci_high"]
        p = _exact_mcnemar(n10, n01)
        expected_verdicts.append(
            "hurt" if p < 0.05 and n01 > n10 else "helped" if p < 0.05 else "no clear change"
        )
    assert [delta_verdict(r) for r in rows] == expected_verdicts
    # 0 vs 9 discordant: p = 2/512 -> hurt; 12 vs 1: p = 28/8192 -> helped; 1 vs 6: p = 0.125 -> not called
    assert expected_verdicts == ["hurt", "helped", "no clear change", "no clear change", "no clear change"]
    assert hurt_and_helped_classes(rows) == (["v"], ["w"])
    summary = format_summary({"student_minus_baseline": rows})  # the run summary names them by the same rule
    assert "p < 0.05): v\n" in summary and "Classes it helped: w" in summary


def test_paired_delta_of_a_model_with_itself():
    preds, refs = _random_case(n=500, seed=4)
    with pytest.warns(UserWarning):
        rows = paired_delta(preds, preds, refs, num_classes=8)
    for row in rows[:7]:
        assert row["delta"] == 0.0 and row["p_value"] == 1.0 and (row["n10"], row["n01"]) == (0, 0)
        assert row["ci_low"] < 0.0 < row["ci_high"]  # no discordant pair is not proof of no difference
        assert delta_verdict(row) == "no clear change"
    assert rows[7]["class_id"] == 7 and all(math.isnan(rows[7][k]) for k in ("delta", "p_value", "ci_low"))
    assert delta_verdict(rows[7]) is None


def test_paired_delta_matches_the_two_reports():
    rng = np.random.default_rng(9)
    preds_a, refs = _random_case(n=400, num_classes=3, p_correct=0.7, seed=9)
    preds_b = np.where(rng.random(len(refs)) < 0.2, (preds_a + 1) % 3, preds_a)  # b: a with 20% flips
    rows = paired_delta(preds_a, preds_b, refs, class_names=["x", "y", "z"])
    rep_a = subgroup_report(preds_a, refs, intervals=False)
    rep_b = subgroup_report(preds_b, refs, intervals=False)
    for c, row in enumerate(rows):
        assert row["name"] == "xyz"[c]
        expected = rep_a["per_class"][c]["accuracy"] - rep_b["per_class"][c]["accuracy"]
        assert row["delta"] == pytest.approx(expected, abs=1e-12)
        assert row["interval_method"] == "bonferroni_conditional_clopper_pearson"


def test_zero_bootstrap_drops_the_interval_but_keeps_the_test():
    a, b, refs = _paired_rows([(5, 0, 9, 6), (3, 0, 0, 0)])
    row = paired_delta(a, b, refs, intervals=False)[0]
    assert math.isnan(row["ci_low"]) and math.isnan(row["ci_high"]) and row["interval_method"] == "none"
    assert delta_verdict(row) == "hurt"


def test_rows_without_a_p_value_are_not_judged():
    # files written before the test existed hold only delta and a bootstrap interval
    legacy = {"class_id": 0, "name": "cat", "delta": -0.4, "ci_low": -0.6, "ci_high": -0.2}
    assert delta_verdict(legacy) is None
    assert hurt_and_helped_classes([legacy]) == ([], [])


def test_paired_delta_infers_classes_from_both_models_and_checks_lengths():
    with pytest.warns(UserWarning, match="examples: 2"):
        rows = paired_delta([0, 0], [0, 2], [0, 1], intervals=False)
    assert len(rows) == 3
    with pytest.raises(ValueError, match="one prediction per reference"):
        paired_delta([0, 1], [0, 1, 1], [0, 1])


# --- error rates by simulation ---------------------------------------------------------------------


def _simulate(n: int, p: float, discordant: float, num_classes: int, seed: int):
    """paired_delta rows of two equally accurate models: P(a right) = P(b right) = p on every class.

    Each row falls in (a right, b wrong) and (a wrong, b right) with the same probability
    ``discordant`` / 2, so the models differ only by chance. discordant = 2 p (1 - p) is independent
    errors; smaller is positively correlated errors; larger is negatively correlated ones.
    """
    rng = np.random.default_rng(seed)
    half = discordant / 2
    cells = rng.choice(4, size=(num_classes, n), p=[p - half, half, half, 1 - p - half]).ravel()
    refs = np.repeat(np.arange(num_classes), n)
    wrong = (refs + 1) % num_classes
    a = np.where((cells == 0) | (cells == 1), refs, wrong)
    b = np.where((cells == 0) | (cells == 2), refs, wrong)
    return paired_delta(a, b, refs, num_classes=num_classes), p - half


def _false_calls(grid, num_classes):
    worst_hurt = worst_any = 0.0
    for i, (n, p, corr) in enumerate(grid):
        independent = 2 * p * (1 - p)
        discordant = {"independent": independent, "positive": independent / 4, "negative": 2 * min(p, 1 - p)}
        rows, _ = _simulate(n, p, discordant[corr], num_classes, seed=i)
        verdicts = [delta_verdict(row) for row in rows]
        hurt = verdicts.count("hurt") / num_classes
        called = (verdicts.count("hurt") + verdicts.count("helped")) / num_classes
        assert hurt <= 0.05, ("called hurt", n, p, corr, hurt)
        # The test is two-sided at 5%: under equal models any call is an error, and at most 5% may be.
        assert called <= 0.05, ("called hurt or helped", n, p, corr, called)
        # one side of it: hurt alone at most 2.5% (+ 3 standard errors of the simulation)
        assert hurt <= 0.025 + 3 * math.sqrt(0.025 * 0.975 / num_classes), ("hurt", n, p, corr, hurt)
        worst_hurt, worst_any = max(worst_hurt, hurt), max(worst_any, called)
    return worst_hurt, worst_any


def test_equal_models_are_rarely_called_different():
    # The paired bootstrap called 7% of classes hurt or helped at n = 10, p = 0.5 (independent errors).
    grid = [(n, p, c) for n, p in ((10, 0.5), (10, 0.8), (30, 0.7)) for c in ("independent", "negative")]
    grid += [(50, 0.9, "positive")]
    _false_calls(grid, num_classes=6000)


@pytest.mark.slow
def test_equal_models_false_call_rate_full_grid():
    grid = [
        (n, p, c)
        for n in (5, 10, 20, 50, 200)
        for p in (0.5, 0.8, 0.95)
        for c in ("independent", "positive", "negative")
    ]
    _false_calls(grid, num_classes=10000)


def _delta_coverage(n: int, p10: float, p01: float, num_classes: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    cells = rng.choice(4, size=(num_classes, n), p=[1 - p10 - p01, p10, p01, 0.0]).ravel()
    refs = np.repeat(np.arange(num_classes), n)
    wrong = (refs + 1) % num_classes
    a = np.where(cells <= 1, refs, wrong)
    b = np.where((cells == 0) | (cells == 2), refs, wrong)
    rows = paired_delta(a, b, refs, num_classes=num_classes)
    truth = p10 - p01
    return float(np.mean([r["ci_low"] - 1e-12 <= truth <= r["ci_high"] + 1e-12 for r in rows]))


@pytest.mark.parametrize(
    ("n", "p10", "p01"),
    [(10, 0.0, 0.05), (20, 0.01, 0.05), (20, 0.1, 0.02), (50, 0.0, 0.02), (200, 0.0, 0.005)],
)
def test_delta_interval_coverage(n, p10, p01):
    # The paired percentile bootstrap covered 39% / 63% / 87% / 63% / 63% of these: with few
    # discordant rows it gives a zero-width interval at 0.
    assert _delta_coverage(n, p10, p01, num_classes=3000, seed=n) >= 0.93


# --- pinned by mutation testing (docs/MUTATION.md) ---------------------------------------------------


def test_hurt_and_helped_classes_use_the_given_alpha():
    # 0 vs 9 discordant: p = 2/512 = 0.0039; 1 vs 8: p = 20/512 = 0.039, hurt at 0.05 but not at 0.01
    a, b, refs = _paired_rows([(5, 0, 9, 6), (5, 1, 8, 6), (5, 8, 1, 6)])
    rows = paired_delta(a, b, refs, class_names=["x", "y", "z"], intervals=False)
    assert [row["p_value"] for row in rows] == pytest.approx([2 / 512, 20 / 512, 20 / 512], rel=1e-9)
    assert hurt_and_helped_classes(rows) == (["x", "y"], ["z"])
    assert hurt_and_helped_classes(rows, alpha=0.01) == (["x"], [])
    assert [delta_verdict(row, alpha=0.01) for row in rows] == ["hurt", "no clear change", "no clear change"]


def test_delta_verdict_boundaries_and_rows_without_counts():
    # p must be below alpha, not equal to it
    assert delta_verdict({"p_value": 0.05, "delta": -0.2, "n10": 0, "n01": 8}) == "no clear change"
    assert delta_verdict({"p_value": 0.05, "delta": 0.2, "n10": 8, "n01": 0}) == "no clear change"
    assert delta_verdict({"p_value": 0.01, "delta": -0.2, "n10": 0, "n01": 8}) == "hurt"
    # rows with a p-value but without the counts fall back on the sign of delta (fractions, not counts)
    assert delta_verdict({"p_value": 0.01, "delta": -0.3}) == "hurt"
    assert delta_verdict({"p_value": 0.01, "delta": 0.3}) == "helped"
    assert delta_verdict({"p_value": 0.01, "delta": 0.0}) == "no clear change"
    assert delta_verdict({"p_value": 0.01, "delta": 0.3, "n10": 4}) == "helped"  # n01 missing
    assert delta_verdict({"p_value": 0.01, "delta": -0.3, "n01": 4}) == "hurt"  # n10 missing
    # the counts win over delta when both are there
    assert delta_verdict({"p_value": 0.01, "delta": 0.3, "n10": 0, "n01": 9}) == "hurt"


def test_paired_delta_checks_both_models_and_passes_the_level_on():
    with pytest.raises(ValueError, match="different shapes"):
        paired_delta(np.zeros((3, 2)), np.zeros((3, 4)), [0, 1, 0])
    paired_delta(np.eye(3), [0, 1, 2], [0, 1, 2], intervals=False)  # one model as scores: no shape check
    rows = paired_delta(np.eye(3), np.eye(3)[[1, 1, 2]], [0, 1, 2], intervals=False)  # same shapes: fine
    assert [r["n10"] for r in rows] == [1, 0, 0]
    with pytest.raises(ValueError, match="empty"):
        paired_delta([], [], [])
    with pytest.raises(ValueError, match="predictions hold values"):  # model b out of range too
        paired_delta([0, 1], [0, 5], [0, 1], num_classes=3)
    a, b, refs = _paired_rows([(5, 1, 8, 6), (3, 4, 2, 1)])
    from hf_fairkd.metrics.intervals import paired_difference_interval

    rows = paired_delta(a, b, refs, confidence_level=0.8)
    low, high = paired_difference_interval([1, 4], [8, 2], [20, 10], 0.8)
    assert [r["ci_low"] for r in rows] == pytest.approx(low.tolist(), abs=1e-12)
    assert [r["ci_high"] for r in rows] == pytest.approx(high.tolist(), abs=1e-12)
