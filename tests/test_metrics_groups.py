"""Per-group accuracy, intervals and verdicts (hf_fairkd.metrics.groups) against independent expectations:
a plain-Python recomputation, scipy's beta quantiles and binomial test, a coverage simulation, and hand cases."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy.stats import beta, binomtest

from hf_fairkd.metrics import (
    delta_verdict,
    flatten_report,
    group_verdicts,
    paired_group_delta,
    subgroup_report,
)
from hf_fairkd.metrics.trainer_metrics import SubgroupMetrics

# Hand cases use one class and predict a second one for a wrong answer: that class has no rows, by design.
pytestmark = pytest.mark.filterwarnings("ignore:.*have no evaluation examples:UserWarning")

NAMES = ["cat", "dog", "fox", "owl"]


def _random_case(seed: int, n: int = 300):
    """Predictions, references and three group columns: text with None, ints, bools."""
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, len(NAMES), n)
    preds = np.where(rng.random(n) < 0.7, refs, rng.integers(0, len(NAMES), n))
    site = rng.choice(np.array(["A", "B", "C", None], dtype=object), n, p=[0.5, 0.3, 0.15, 0.05])
    groups = {
        "site": list(site),
        "floor": rng.integers(1, 4, n),
        "lit": [bool(b) for b in rng.random(n) < 0.3],
    }
    return preds, refs, groups


def _expected_names(refs, groups):
    """{report key: group name per row}, written out with plain Python."""
    text = {col: ["(missing)" if v is None else str(v) for v in values] for col, values in groups.items()}
    cols = list(text)
    keys = {col: text[col] for col in cols}
    for col in cols:
        keys[f"class&{col}"] = [f"{NAMES[r]}&{t}" for r, t in zip(refs, text[col])]
    combos = list(itertools.combinations(cols, 2)) + ([tuple(cols)] if len(cols) > 2 else [])
    for combo in combos:
        keys["&".join(combo)] = ["&".join(parts) for parts in zip(*(text[c] for c in combo))]
    return keys


def _expected_stats(preds, refs, groups):
    """{report key: {group: [support, correct]}}."""
    out = {}
    for key, names in _expected_names(refs, groups).items():
        stats = out.setdefault(key, {})
        for name, p, r in zip(names, preds, refs):
            cell = stats.setdefault(name, [0, 0])
            cell[0] += 1
            cell[1] += int(p == r)
    return out


def _cp(x: int, n: int, level: float) -> tuple[float, float]:
    """Clopper-Pearson bounds straight from the beta quantiles."""
    a = 1 - level
    low = 0.0 if x == 0 else beta.ppf(a / 2, x, n - x + 1)
    high = 1.0 if x == n else beta.ppf(1 - a / 2, x + 1, n - x)
    return low, high


# --- accuracy per group ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_by_group_matches_a_plain_python_recomputation(seed):
    preds, refs, groups = _random_case(seed)
    report = subgroup_report(preds, refs, class_names=NAMES, groups=groups, intervals=False)
    expected = _expected_stats(preds, refs, groups)
    assert list(report["groups"]) == list(expected)  # columns, class x column, pairs, all three
    for key, stats in expected.items():
        summary = report["groups"][key]
        assert list(summary["by_group"]) == sorted(stats)
        acc = {g: correct / support for g, (support, correct) in stats.items()}
        for group, (support, correct) in stats.items():
            cell = summary["by_group"][group]
            assert (cell["support"], cell["correct"], cell["train_count"]) == (support, correct, None)
            assert cell["accuracy"] == pytest.approx(correct / support, abs=1e-15)
            assert math.isnan(cell["ci_low"]) and math.isnan(cell["ci_high"])  # intervals=False
        ordered = sorted(stats)
        assert summary["worst_group"] == min(ordered, key=acc.get)  # min/max: first on ties, as required
        assert summary["best_group"] == max(ordered, key=acc.get)
        assert summary["worst_group_accuracy"] == summary["min"] == min(acc.values())
        assert summary["max"] == max(acc.values())
        assert summary["difference"] == pytest.approx(max(acc.values()) - min(acc.values()))
        assert summary["ratio"] == pytest.approx(min(acc.values()) / max(acc.values()))
        assert summary["balanced_accuracy"] == pytest.approx(sum(acc.values()) / len(acc))
        assert (summary["num_groups"], summary["missing_groups"]) == (len(stats), [])
        assert all(math.isnan(v) for v in summary["worst_group_accuracy_ci"])


def test_worst_group_ties_go_to_the_first_group_in_sorted_order():
    refs = np.zeros(6, dtype=int)
    preds = np.array([1, 0, 1, 0, 0, 0])  # c: 1/2, a: 1/2, b: 2/2
    report = subgroup_report(preds, refs, num_classes=2, groups={"g": ["c", "c", "a", "a", "b", "b"]})
    assert report["groups"]["g"]["worst_group"] == "a"
    assert report["groups"]["g"]["best_group"] == "b"


def test_group_intervals_equal_scipy_beta_quantiles():
    preds, refs, groups = _random_case(seed=5, n=200)
    report = subgroup_report(preds, refs, class_names=NAMES, groups=groups, confidence_level=0.9)
    for key, stats in _expected_stats(preds, refs, groups).items():
        for group, (support, correct) in stats.items():
            cell = report["groups"][key]["by_group"][group]
            low, high = _cp(correct, support, 0.9)
            assert cell["ci_low"] == pytest.approx(low, rel=1e-10, abs=1e-14)
            assert cell["ci_high"] == pytest.approx(high, rel=1e-10, abs=1e-14)
            assert cell["ci_low"] <= cell["accuracy"] <= cell["ci_high"]


def test_worst_group_interval_is_the_bonferroni_one_over_groups_with_rows():
    # groups a: 3/4, b: 9/10, c: 0/2, and d with training rows but no evaluation row (not in K)
    refs = np.zeros(16, dtype=int)
    preds = np.array([0, 0, 0, 1] + [0] * 9 + [1] + [1, 1])
    values = ["a"] * 4 + ["b"] * 10 + ["c"] * 2
    report = subgroup_report(
        preds,
        refs,
        num_classes=2,
        groups={"g": values},
        group_train_counts={"g": {"a": 5, "b": 5, "c": 5, "d": 5}},
        confidence_level=0.9,
    )
    level = 1 - 0.1 / 3  # Bonferroni over the 3 groups with rows
    bounds = [_cp(x, n, level) for x, n in ((3, 4), (9, 10), (0, 2))]
    expected = [min(b[0] for b in bounds), min(b[1] for b in bounds)]
    assert report["groups"]["g"]["worst_group_accuracy_ci"] == pytest.approx(expected, rel=1e-10, abs=1e-14)
    assert report["groups"]["g"]["worst_group"] == "c"


@pytest.mark.parametrize(
    "supports, accuracies, wald_undercovers",
    [((8, 8, 8), (0.75, 0.75, 0.75), True), ((6, 15, 9), (0.7, 0.75, 0.9), False)],
)
def test_worst_group_interval_covers_the_true_worst_group_accuracy(supports, accuracies, wald_undercovers):
    # Equal accuracies are the hard case: the observed worst group is biased low. 2000 eval sets; a report
    # depends only on the correct counts, so each distinct outcome is reported once.
    rng = np.random.default_rng(7)
    supports, accuracies = np.array(supports), np.array(accuracies)
    draws = rng.binomial(supports, accuracies, size=(2000, 3))
    outcomes, which = np.unique(draws, axis=0, return_inverse=True)
    values = np.repeat(["a", "b", "c"], supports)
    refs = np.zeros(supports.sum(), dtype=int)
    covered = []
    for counts in outcomes:
        preds = np.concatenate(
            [np.r_[np.zeros(x, int), np.ones(n - x, int)] for x, n in zip(counts, supports)]
        )
        report = subgroup_report(preds, refs, num_classes=2, groups={"site": values})
        low, high = report["groups"]["site"]["worst_group_accuracy_ci"]
        covered.append(low <= accuracies.min() <= high)
    threshold = 0.95 - 3 * math.sqrt(0.95 * 0.05 / 2000)  # three Monte-Carlo standard errors
    assert np.asarray(covered)[which.ravel()].mean() >= threshold
    if wald_undercovers:  # the simulation has the power to fail: the Wald interval of the observed worst does
        acc = draws / supports
        worst = acc.argmin(axis=1)
        a, n = acc[np.arange(2000), worst], supports[worst]
        half = 1.96 * np.sqrt(a * (1 - a) / n)
        assert np.mean((a - half <= accuracies.min()) & (accuracies.min() <= a + half)) < threshold


# --- names of groups -------------------------------------------------------------------------------


def test_missing_group_is_nan_listed_and_never_the_worst():
    # "A" sorts first and has no evaluation row; "B" is all wrong: the worst group must be B.
    refs, preds = np.zeros(4, dtype=int), np.array([1, 1, 0, 0])
    report = subgroup_report(
        preds,
        refs,
        num_classes=2,
        groups={"site": ["B", "B", "C", "C"]},
        group_train_counts={"site": {"A": 7, "B": 3, "Z": 0}},
    )
    site = report["groups"]["site"]
    assert list(site["by_group"]) == ["A", "B", "C"]  # Z: no training row and no evaluation row
    a = site["by_group"]["A"]
    assert (a["support"], a["correct"], a["train_count"]) == (0, 0, 7)
    assert all(math.isnan(a[k]) for k in ("accuracy", "ci_low", "ci_high"))
    assert site["by_group"]["C"]["train_count"] == 0  # the table does not list C: no training row
    assert site["missing_groups"] == ["A"] and site["num_groups"] == 2
    assert (site["worst_group"], site["worst_group_accuracy"], site["best_group"]) == ("B", 0.0, "C")
    assert site["balanced_accuracy"] == 0.5
    without = subgroup_report(preds, refs, num_classes=2, groups={"site": ["B", "B", "C", "C"]})
    assert site["worst_group_accuracy_ci"] == without["groups"]["site"]["worst_group_accuracy_ci"]  # same K
    assert report["groups"]["class&site"]["by_group"]["0&B"]["train_count"] is None  # no table for this key


def test_none_nan_and_empty_values_are_one_missing_group():
    values = [None, float("nan"), "", "  ", np.nan, "a", "a"]
    report = subgroup_report(np.zeros(7, int), np.zeros(7, int), groups={"g": values}, intervals=False)
    by_group = report["groups"]["g"]["by_group"]
    assert {g: c["support"] for g, c in by_group.items()} == {"(missing)": 5, "a": 2}


def test_int_and_bool_values_become_their_text():
    refs = np.array([0, 0, 0, 0, 0])
    preds = np.array([0, 1, 0, 0, 1])
    report = subgroup_report(
        preds,
        refs,
        num_classes=2,
        groups={"floor": np.array([1, 1, 2, 10, 2]), "lit": [True, False, True, True, np.bool_(False)]},
        intervals=False,
    )
    floor = report["groups"]["floor"]["by_group"]
    assert {g: (c["support"], c["correct"]) for g, c in floor.items()} == {
        "1": (2, 1),
        "10": (1, 1),
        "2": (2, 1),
    }
    lit = report["groups"]["lit"]["by_group"]
    assert {g: (c["support"], c["correct"]) for g, c in lit.items()} == {"False": (2, 0), "True": (3, 3)}
    assert set(report["groups"]["floor&lit"]["by_group"]) == {
        "1&True",
        "1&False",
        "2&True",
        "2&False",
        "10&True",
    }


def test_group_names_cache_agrees_with_group_text_value_by_value():
    from hf_fairkd.groups import group_text
    from hf_fairkd.metrics.groups import group_names

    # 1, 1.0 and True are equal dict keys: the cache must still name them differently
    values = [
        1,
        1.0,
        True,
        np.int64(1),
        np.bool_(True),
        None,
        math.nan,
        np.float32("nan"),
        "",
        "x",
        [1],
        1,
        True,
    ]
    assert group_names(values) == [group_text(v) for v in values]
    assert group_names(np.array([3, 1, 3])) == ["3", "1", "3"]
    assert group_names(np.array([0.5, np.nan])) == ["0.5", "(missing)"]


def test_class_cells_are_named_by_the_reference_class():
    refs = np.array([0, 0, 1, 2])
    preds = np.array([1, 0, 1, 0])  # a prediction's class must not name the cell
    report = subgroup_report(preds, refs, class_names=["cat", "dog", "fox"], groups={"site": list("ABAB")})
    cells = report["groups"]["class&site"]["by_group"]
    assert {g: (c["support"], c["correct"]) for g, c in cells.items()} == {
        "cat&A": (1, 0),
        "cat&B": (1, 1),
        "dog&A": (1, 1),
        "fox&B": (1, 0),
    }


# --- paired comparison per group -------------------------------------------------------------------


def _paired_rows(cells_per_group):
    """{group: (n11, n10, n01, n00)} -> predictions of a and b, references (class 0) and group values."""
    a, b, values = [], [], []
    for group, cells in cells_per_group.items():
        for (right_a, right_b), count in zip(((1, 1), (1, 0), (0, 1), (0, 0)), cells):
            a += [0 if right_a else 1] * count
            b += [0 if right_b else 1] * count
            values += [group] * count
    return np.array(a), np.array(b), np.zeros(len(a), dtype=int), values


def test_paired_group_delta_counts_and_p_values():
    cells = {"x": (5, 0, 14, 6), "w": (2, 12, 1, 5), "v": (10, 3, 3, 4), "u": (6, 0, 0, 1)}
    a, b, refs, values = _paired_rows(cells)
    deltas = paired_group_delta(a, b, refs, {"site": values}, class_names=["cat", "dog"])
    assert list(deltas) == ["site", "class&site"]
    rows = deltas["site"]
    assert [row["group"] for row in rows] == ["u", "v", "w", "x"]  # sorted by group name
    for row in rows:
        n11, n10, n01, n00 = cells[row["group"]]
        n = n11 + n10 + n01 + n00
        assert (row["support"], row["n10"], row["n01"]) == (n, n10, n01)
        assert row["delta"] == pytest.approx((n10 - n01) / n, abs=1e-15)
        expected_p = binomtest(n10, n10 + n01, 0.5).pvalue if n10 + n01 else 1.0
        assert row["p_value"] == pytest.approx(expected_p, rel=1e-9)
        assert row["ci_low"] <= row["delta"] <= row["ci_high"]
        assert row["interval_method"] == "bonferroni_conditional_clopper_pearson"
    assert [row["group"] for row in deltas["class&site"]] == ["cat&u", "cat&v", "cat&w", "cat&x"]
    verdicts = group_verdicts(deltas)
    assert verdicts["site"] == {"u": "no clear change", "v": "no clear change", "w": "helped", "x": "hurt"}
    assert verdicts["site"] == {row["group"]: delta_verdict(row) for row in rows}  # the one rule, unchanged
    assert verdicts["class&site"]["cat&x"] == "hurt"


def test_paired_group_delta_on_random_data_matches_a_direct_count():
    rng = np.random.default_rng(11)
    _, refs, groups = _random_case(seed=11, n=250)
    a = np.where(rng.random(250) < 0.7, refs, (refs + 1) % 4)
    b = np.where(rng.random(250) < 0.6, refs, (refs + 2) % 4)
    deltas = paired_group_delta(a, b, refs, groups, class_names=NAMES, intervals=False)
    expected = _expected_names(refs, groups)
    assert list(deltas) == list(expected)
    for key, names in expected.items():
        assert [row["group"] for row in deltas[key]] == sorted(set(names))
        for row in deltas[key]:
            rows_of_group = [i for i, name in enumerate(names) if name == row["group"]]
            n10 = sum(a[i] == refs[i] != b[i] for i in rows_of_group)
            n01 = sum(b[i] == refs[i] != a[i] for i in rows_of_group)
            assert (row["support"], row["n10"], row["n01"]) == (len(rows_of_group), n10, n01)
            assert math.isnan(row["ci_low"]) and row["interval_method"] == "none"


# --- flat scalars and the Trainer's compute_metrics ------------------------------------------------


def test_flatten_adds_worst_group_for_every_key_and_groups_only_when_asked():
    refs, preds = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    report = subgroup_report(
        preds, refs, groups={"site": list("ABAB")}, group_train_counts={"site": {"A": 1, "B": 1, "C": 4}}
    )
    full = flatten_report(report, prefix="eval_")
    assert (
        full["eval_worst_group_accuracy/site"] == 0.5 and full["eval_worst_group_accuracy/class&site"] == 0.0
    )
    assert full["eval_accuracy_group/site/A"] == 1.0 and full["eval_accuracy_group/site/B"] == 0.5
    assert math.isnan(full["eval_accuracy_group/site/C"])  # missing group
    assert {k for k in full if k.startswith("eval_accuracy_group/class&site/")} == {
        f"eval_accuracy_group/class&site/{c}" for c in ("0&A", "0&B", "1&A", "1&B")
    }
    short = flatten_report(report, prefix="eval_", per_group=False)
    assert set(full) - set(short) == {k for k in full if k.startswith("eval_accuracy_group/")}
    assert {k for k in short if "group" in k} == {
        "eval_worst_group_accuracy/site",
        "eval_worst_group_accuracy/class&site",
    }


def _trainer_case():
    from transformers import EvalPrediction, PretrainedConfig

    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1, 2], 6)
    logits = rng.normal(size=(18, 3)).astype(np.float32)
    logits[np.arange(18), labels] += 3 * (rng.random(18) < 0.7)
    config = PretrainedConfig(id2label={0: "cat", 1: "dog", 2: "fox"})
    site = ["A", "B"] * 9  # site: 2 groups, class&site: 6 cells -> 8 groups in all
    return config, EvalPrediction(predictions=logits, label_ids=labels), site


@pytest.mark.parametrize(
    "mode, cap, per_group",
    [("auto", 8, True), ("auto", 7, False), ("always", 1, True), ("never", 100, False)],
)
def test_subgroup_metrics_with_groups_and_the_cap(mode, cap, per_group):
    config, prediction, site = _trainer_case()
    metrics = SubgroupMetrics(
        config,
        train_counts=[10, 5, 1],
        per_class=mode,
        per_class_max_classes=cap,
        groups={"site": site},
        group_train_counts={"site": {"A": 9, "B": 9}},
    )
    flat = metrics(prediction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = subgroup_report(
            prediction.predictions.argmax(-1),
            prediction.label_ids,
            class_names=["cat", "dog", "fox"],
            train_counts=[10, 5, 1],
            groups={"site": site},
            intervals=False,
        )
    expected = flatten_report(
        report, per_class=mode == "always" or (mode == "auto" and cap >= 3), per_group=per_group
    )
    assert flat == expected
    assert ("accuracy_group/class&site/cat&A" in flat) is per_group
    assert {"worst_group_accuracy/site", "worst_group_accuracy/class&site"} <= set(flat)


def test_subgroup_metrics_refuses_predictions_of_another_length():
    config, prediction, site = _trainer_case()
    with pytest.raises(
        ValueError, match="got 18 predictions but the eval dataset's group columns have 19 rows"
    ):
        SubgroupMetrics(config, groups={"site": [*site, "A"]})(prediction)
    with pytest.raises(ValueError, match="different lengths"):
        SubgroupMetrics(config, groups={"site": site, "floor": site[:-1]})


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"group_train_counts": {"site": {"A": 1}}}, "without groups"),
        ({"groups": {"site": list("AB")}, "group_train_counts": {"camera": {"A": 1}}}, "'camera'"),
        ({"groups": {"site": list("AB")}, "group_train_counts": {"site": {"A": -1}}}, "negative"),
        ({"groups": {"site": list("AB")}, "group_train_counts": {"site": [1, 2]}}, "map group names"),
        ({"groups": {"site": list("ABC")}}, "'site' has 3 values"),
    ],
)
def test_group_input_errors_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        subgroup_report([0, 1], [0, 1], **kwargs)
    if "groups" in kwargs and "group_train_counts" not in kwargs:
        with pytest.raises(ValueError, match=match):
            paired_group_delta([0, 1], [1, 1], [0, 1], kwargs["groups"])
