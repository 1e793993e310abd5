"""subgroup_report / flatten_report / report_to_jsonable against independent expectations."""

import itertools
import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score

from hf_fairkd.metrics import flatten_report, report_to_jsonable, subgroup_report


def _random_case(n=600, num_classes=7, p_correct=0.6, seed=1):
    rng = np.random.default_rng(seed)
    refs = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, n - num_classes)])
    noise = rng.integers(0, num_classes, n)
    preds = np.where(rng.random(n) < p_correct, refs, noise)
    return preds, refs


def _rows(accuracies_as_fractions):
    """Hand-made rows: class c gets `total` rows of which `right` are predicted correctly (else class+1)."""
    preds, refs = [], []
    num_classes = len(accuracies_as_fractions)
    for c, (right, total) in enumerate(accuracies_as_fractions):
        refs += [c] * total
        preds += [c] * right + [(c + 1) % num_classes] * (total - right)
    return np.array(preds), np.array(refs)


# --- point estimates -------------------------------------------------------------------------------


def test_per_class_accuracy_matches_sklearn_recall():
    preds, refs = _random_case()
    report = subgroup_report(preds, refs, num_classes=7, intervals=False)
    expected = recall_score(refs, preds, average=None, labels=list(range(7)))
    got = [row["accuracy"] for row in report["per_class"]]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert [row["support"] for row in report["per_class"]] == np.bincount(refs, minlength=7).tolist()
    assert [row["correct"] for row in report["per_class"]] == [
        int(np.sum((refs == c) & (preds == c))) for c in range(7)
    ]
    assert report["accuracy"] == pytest.approx(accuracy_score(refs, preds), abs=1e-12)
    assert report["num_examples"] == len(refs) and report["num_classes"] == 7


def test_balanced_accuracy_matches_sklearn():
    preds, refs = _random_case(seed=5)
    report = subgroup_report(preds, refs, intervals=False)
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(refs, preds), abs=1e-12)


def test_scores_are_argmaxed_and_width_sets_num_classes():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 5))
    refs = rng.integers(0, 4, 50)  # class 4 never appears as a reference
    with pytest.warns(UserWarning, match=r"examples: 4\."):
        from_scores = subgroup_report(scores, refs, intervals=False)
    with pytest.warns(UserWarning):
        from_ids = subgroup_report(scores.argmax(axis=1), refs, num_classes=5, intervals=False)
    assert from_scores["num_classes"] == 5
    assert json.dumps(report_to_jsonable(from_scores)) == json.dumps(report_to_jsonable(from_ids))


def test_worst_class_and_worst_k_break_ties_by_lowest_class_id():
    # accuracies: 0 -> 1/2, 1 -> 1/4, 2 -> 1/4, 3 -> 1/1, 4 -> 1/2
    preds, refs = _rows([(1, 2), (1, 4), (1, 4), (1, 1), (1, 2)])
    names = ["a", "b", "c", "d", "e"]
    report = subgroup_report(preds, refs, class_names=names, worst_k=3, intervals=False)
    assert report["worst_class_accuracy"] == 0.25
    assert (report["worst_class"], report["worst_class_id"]) == ("b", 1)
    assert report["worst_k_classes"] == ["b", "c", "a"]  # 0 beats 4 on the tie at 1/2
    assert report["worst_k_accuracy"] == pytest.approx((0.25 + 0.25 + 0.5) / 3)
    assert report["worst_k"] == 3


def test_worst_k_is_capped_at_number_of_supported_classes():
    preds, refs = _rows([(1, 2), (2, 2)])
    report = subgroup_report(preds, refs, worst_k=5, intervals=False)
    assert report["worst_k"] == 2
    assert report["worst_k_accuracy"] == pytest.approx(0.75)


# --- missing classes -------------------------------------------------------------------------------


def test_absent_classes_are_nan_warned_and_excluded():
    # class 2 ("c2") has no evaluation rows; class 1 is at 0 accuracy, so NaN must not be taken for 0.
    preds = np.array([0, 0, 0, 3, 3, 0])
    refs = np.array([0, 0, 1, 3, 3, 1])
    names = ["c0", "c1", "c2", "c3"]
    with pytest.warns(UserWarning, match="c2"):
        report = subgroup_report(preds, refs, class_names=names, train_counts=[5, 5, 5, 500], worst_k=3)
    row = report["per_class"][2]
    assert math.isnan(row["accuracy"]) and math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])
    assert row["support"] == 0 and row["correct"] == 0
    assert report["missing_classes"] == ["c2"]
    assert report["balanced_accuracy"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert report["worst_class"] == "c1"
    assert report["worst_k"] == 3 and "c2" not in report["worst_k_classes"]
    assert report["worst_k_accuracy"] == pytest.approx(2 / 3)
    assert report["shot_groups"]["few"]["accuracy"] == pytest.approx(0.5)  # mean of c0 and c1 only
    assert report["shot_groups"]["few"]["classes"] == ["c0", "c1", "c2"]


def test_no_warning_when_every_class_is_present():
    preds, refs = _random_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = subgroup_report(preds, refs, num_classes=7)
    assert report["missing_classes"] == []


# --- shot groups -----------------------------------------------------------------------------------


def test_shot_groups_use_strict_outer_and_inclusive_medium_bounds():
    train_counts = [101, 100, 20, 19, 500, 0]
    # per-class accuracies 1, 1/2, 0, 1/4, 1/2, 1
    preds, refs = _rows([(2, 2), (1, 2), (0, 3), (1, 4), (2, 4), (1, 1)])
    report = subgroup_report(preds, refs, train_counts=train_counts, intervals=False)
    groups = report["shot_groups"]
    assert report["shot_thresholds"] == {"many_above": 100, "few_below": 20}
    assert groups["many"]["classes"] == ["0", "4"]
    assert groups["medium"]["classes"] == ["1", "2"]
    assert groups["few"]["classes"] == ["3", "5"]
    assert groups["many"]["accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert groups["medium"]["accuracy"] == pytest.approx((0.5 + 0.0) / 2)
    assert groups["few"]["accuracy"] == pytest.approx((0.25 + 1.0) / 2)
    assert [groups[g]["support"] for g in ("many", "medium", "few")] == [6, 5, 5]
    assert [groups[g]["num_classes"] for g in ("many", "medium", "few")] == [2, 2, 2]
    assert [row["train_count"] for row in report["per_class"]] == train_counts


def test_custom_shot_thresholds_and_empty_group():
    preds, refs = _rows([(1, 1), (1, 2)])
    report = subgroup_report(preds, refs, train_counts=[60, 8], shot_thresholds=(50, 10), intervals=False)
    assert report["shot_groups"]["many"]["classes"] == ["0"]
    assert report["shot_groups"]["few"]["classes"] == ["1"]
    medium = report["shot_groups"]["medium"]
    assert math.isnan(medium["accuracy"]) and medium["num_classes"] == 0 and medium["support"] == 0


def test_shot_groups_follow_shot_counts_not_train_counts():
    # CIFAR-100-LT (500 images for the commonest class, imbalance 100, exp profile) has the standard
    # 35 / 35 / 30 many / medium / few classes. Carving a 5-per-class holdout first moves the classes
    # with 101-105 and 20-24 images across a threshold (34 / 31 / 35), so groups use the counts before it.
    from hf_fairkd.data import long_tail_counts

    before = np.array(long_tail_counts(500, 100, 100.0, "exp"))
    after = before - 5
    refs = np.arange(100)
    report = subgroup_report(refs, refs, train_counts=after, shot_counts=before)
    groups = report["shot_groups"]
    assert [groups[g]["num_classes"] for g in ("many", "medium", "few")] == [35, 35, 30]
    assert report["shot_counts"] == before.tolist()
    assert [row["train_count"] for row in report["per_class"]] == after.tolist()  # still the real counts
    default = subgroup_report(refs, refs, train_counts=after)["shot_groups"]
    assert [default[g]["num_classes"] for g in ("many", "medium", "few")] == [34, 31, 35]


def test_no_train_counts_gives_no_shot_groups():
    preds, refs = _rows([(1, 1), (1, 2)])
    report = subgroup_report(preds, refs, intervals=False)
    assert report["shot_groups"] == {} and report["groups"] == {}
    assert all(row["train_count"] is None for row in report["per_class"])


# --- groups ----------------------------------------------------------------------------------------

PREDS = np.array([0, 1, 1, 0, 1, 0, 0, 1])
REFS = np.array([0, 1, 0, 0, 1, 1, 0, 0])  # correct: 1 1 0 1 1 0 1 0
SEX = ["f", "f", "f", "m", "m", "m", "m", "f"]
AGE = ["old", "young", "young", "old", "young", "young", "old", "old"]
SITE = [1, 1, 2, 2, 1, 1, 2, 2]


def test_group_column_summary_by_hand():
    report = subgroup_report(PREDS, REFS, groups={"sex": SEX}, intervals=False)
    sex = report["groups"]["sex"]
    # f rows 0,1,2,7 -> correct 1,1,0,0; m rows 3,4,5,6 -> correct 1,1,0,1
    assert {g: (c["accuracy"], c["support"], c["correct"]) for g, c in sex["by_group"].items()} == {
        "f": (0.5, 4, 2),
        "m": (0.75, 4, 3),
    }
    assert (sex["min"], sex["max"]) == (0.5, 0.75)
    assert sex["difference"] == pytest.approx(0.25)
    assert sex["ratio"] == pytest.approx(0.5 / 0.75)
    assert sex["worst_group"] == "f"


def test_group_intersections_by_hand():
    report = subgroup_report(PREDS, REFS, groups={"sex": SEX, "age": AGE}, intervals=False)
    assert list(report["groups"]) == ["sex", "age", "class&sex", "class&age", "sex&age"]
    cross = report["groups"]["sex&age"]["by_group"]
    # f&old rows 0,7 -> 1,0; f&young rows 1,2 -> 1,0; m&old rows 3,6 -> 1,1; m&young rows 4,5 -> 1,0
    assert {g: (c["accuracy"], c["support"]) for g, c in cross.items()} == {
        "f&old": (0.5, 2),
        "f&young": (0.5, 2),
        "m&old": (1.0, 2),
        "m&young": (0.5, 2),
    }
    assert report["groups"]["sex&age"]["worst_group"] == "f&old"
    assert report["groups"]["sex&age"]["difference"] == pytest.approx(0.5)


def test_three_columns_give_pairs_and_the_full_intersection():
    groups = {"sex": SEX, "age": AGE, "site": SITE}
    report = subgroup_report(PREDS, REFS, groups=groups, intervals=False)
    assert list(report["groups"]) == [
        "sex",
        "age",
        "site",
        "class&sex",
        "class&age",
        "class&site",
        "sex&age",
        "sex&site",
        "age&site",
        "sex&age&site",
    ]
    full = report["groups"]["sex&age&site"]["by_group"]
    correct = (PREDS == REFS).astype(float)
    expected = {}
    for i in range(len(REFS)):
        expected.setdefault(f"{SEX[i]}&{AGE[i]}&{SITE[i]}", []).append(correct[i])
    assert set(full) == set(expected)
    for key, hits in expected.items():
        assert (full[key]["accuracy"], full[key]["support"]) == (pytest.approx(np.mean(hits)), len(hits))


def test_groups_match_pandas_groupby():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(3)
    n = 2000
    preds, refs = _random_case(n=n, seed=3)
    frame = pd.DataFrame(
        {
            "a": rng.choice(["x", "y", "z"], n),
            "b": rng.integers(0, 4, n),
            "hit": (preds == refs).astype(float),
        }
    )
    report = subgroup_report(
        preds, refs, groups={"a": frame["a"], "b": frame["b"].to_numpy()}, intervals=False
    )
    for cols, name in ((["a"], "a"), (["b"], "b"), (["a", "b"], "a&b")):
        stats = frame.groupby(cols)["hit"].agg(["mean", "size"])
        got = report["groups"][name]
        assert len(got["by_group"]) == len(stats)
        for key, row in stats.iterrows():
            label = "&".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
            assert got["by_group"][label]["accuracy"] == pytest.approx(row["mean"], abs=1e-12)
            assert got["by_group"][label]["support"] == row["size"]
        assert got["min"] == pytest.approx(stats["mean"].min()) and got["max"] == pytest.approx(
            stats["mean"].max()
        )


def test_mixed_group_values_become_their_text_and_none_is_the_missing_group():
    preds, refs = np.array([0, 1, 0, 1]), np.array([0, 1, 1, 1])
    report = subgroup_report(preds, refs, groups={"g": [None, "a", 1, None]}, intervals=False)
    by_group = report["groups"]["g"]["by_group"]
    assert list(by_group) == sorted(["(missing)", "a", "1"])  # text order, as hf_fairkd.groups sorts
    assert (by_group["(missing)"]["accuracy"], by_group["(missing)"]["support"]) == (1.0, 2)
    assert (by_group["1"]["accuracy"], by_group["1"]["support"]) == (0.0, 1)


# --- intervals (their maths and coverage: test_metrics_intervals.py) --------------------------------


def test_interval_contains_estimate_and_narrows_with_more_data():
    widths = []
    for n_per_class in (40, 4000):
        preds, refs = _rows([(int(0.7 * n_per_class), n_per_class), (int(0.4 * n_per_class), n_per_class)])
        report = subgroup_report(preds, refs)
        for row in report["per_class"]:
            assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
            assert row["ci_low"] < row["ci_high"]
        low, high = report["worst_class_accuracy_ci"]
        assert low <= report["worst_class_accuracy"] <= high
        widths.append(report["per_class"][0]["ci_high"] - report["per_class"][0]["ci_low"])
    assert widths[1] < widths[0] / 5  # width shrinks like 1/sqrt(n): a factor of 10 here


def test_perfect_and_zero_classes_get_intervals_of_positive_width():
    # The percentile bootstrap gave [1, 1] and [0, 0] here: no uncertainty at all from 8 examples.
    preds, refs = _rows([(8, 8), (0, 8)])
    perfect, zero = subgroup_report(preds, refs)["per_class"]
    assert perfect["ci_low"] < 0.75 and perfect["ci_high"] == 1.0
    assert zero["ci_low"] == 0.0 and zero["ci_high"] > 0.25


def test_the_resampling_arguments_are_gone():
    """Nothing is resampled: `n_bootstrap` and `seed` are refused, `intervals` says what is computed."""
    from hf_fairkd.metrics import paired_delta, paired_group_delta
    from hf_fairkd.results.schema import build_run_record, record_from_info

    preds, refs = _random_case(n=200, seed=2)
    calls = {
        "subgroup_report": lambda **kw: subgroup_report(preds, refs, **kw),
        "paired_delta": lambda **kw: paired_delta(preds, refs, refs, **kw),
        "paired_group_delta": lambda **kw: paired_group_delta(preds, refs, refs, {"g": refs % 2}, **kw),
        "build_run_record": lambda **kw: build_run_record(
            {"student": preds}, refs, class_names=list("abcdefg"), train_counts=[1] * 7, settings={}, **kw
        ),
        "record_from_info": lambda **kw: record_from_info({"student": preds}, refs, None, {}, **kw),
    }
    for call in calls.values():
        for gone in ({"n_bootstrap": 100}, {"seed": 1}):
            with pytest.raises(TypeError, match=next(iter(gone))):
                call(**gone)
    assert "n_bootstrap" not in subgroup_report(preds, refs)


def test_report_names_the_interval_methods():
    preds, refs = _random_case(n=300, seed=7)
    with pytest.warns(UserWarning):  # class 7 has no examples: K counts the 7 classes that have some
        report = subgroup_report(preds, refs, num_classes=8)
    assert report["interval_method"] == "clopper_pearson"
    assert report["worst_class_interval_method"] == "bonferroni_clopper_pearson"
    assert report["worst_class_interval_classes"] == 7


def test_no_intervals_gives_nan_bounds_and_level_is_reported():
    # intervals=False: point estimates only.
    preds, refs = _rows([(1, 2), (2, 2)])
    report = subgroup_report(preds, refs, intervals=False, confidence_level=0.9)
    assert all(math.isnan(r["ci_low"]) and math.isnan(r["ci_high"]) for r in report["per_class"])
    assert all(math.isnan(v) for v in report["worst_class_accuracy_ci"])
    assert report["confidence_level"] == 0.9
    assert report["interval_method"] == report["worst_class_interval_method"] == "none"


# --- errors ----------------------------------------------------------------------------------------

GOOD = {"predictions": [0, 1, 1], "references": [0, 1, 0]}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"predictions": [0, 1], "references": [0, 1, 0]}, "one prediction per reference"),
        ({"predictions": [], "references": []}, "empty"),
        ({"predictions": [0, 1, 2], "references": [0, 1, 0], "num_classes": 2}, "predictions hold values"),
        ({"predictions": [0, 1, 1], "references": [0, 3, 0], "num_classes": 3}, "references hold values"),
        ({"predictions": [0, 1, 1], "references": [0, -1, 0]}, "references hold values"),
        ({**GOOD, "class_names": ["a", "b", "c"], "num_classes": 2}, "class_names has 3"),
        ({**GOOD, "train_counts": [10, 10, 10], "num_classes": 2}, "train_counts has 3"),
        ({**GOOD, "train_counts": [10]}, "references hold values"),  # 1 class inferred from counts
        ({**GOOD, "shot_counts": [10, 10, 10]}, "shot_counts has 3"),
        ({**GOOD, "shot_counts": [10, -1]}, "shot_counts must be non-negative"),
        ({**GOOD, "groups": {"age": ["a", "b"]}}, "'age'"),
        ({**GOOD, "confidence_level": 1.5}, "confidence_level"),
        ({**GOOD, "confidence_level": 1.0}, "confidence_level"),
        ({**GOOD, "confidence_level": 0.0}, "confidence_level"),
        ({**GOOD, "worst_k": 0}, "worst_k"),
        ({**GOOD, "shot_thresholds": (10, 20)}, "few_below"),
        ({"predictions": [0.5, 1, 1], "references": [0, 1, 0]}, "integer class ids"),
        ({"predictions": np.zeros((3, 4)), "references": [0, 1, 0], "num_classes": 3}, "score columns"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        subgroup_report(**kwargs)


def test_group_length_error_comes_before_the_intervals(monkeypatch):
    import hf_fairkd.metrics.subgroup as subgroup

    def no_intervals(*args, **kwargs):  # the check must fire before any interval is computed
        raise AssertionError("intervals computed before input validation")

    monkeypatch.setattr(subgroup, "clopper_pearson", no_intervals)
    monkeypatch.setattr(subgroup, "worst_class_interval", no_intervals)
    with pytest.raises(AssertionError, match="before input validation"):
        subgroup_report(**GOOD)  # the patch is live: without the bad column the intervals run
    with pytest.raises(ValueError, match="'site'"):
        subgroup_report(**GOOD, groups={"site": [1, 2, 3, 4]})


# --- flatten / json --------------------------------------------------------------------------------


def test_flatten_keys_and_values():
    with pytest.warns(UserWarning):
        report = subgroup_report(
            PREDS,
            REFS,
            class_names=["cat", "dog", "fox"],
            train_counts=[200, 50, 5],
            groups={"sex": SEX, "age": AGE},
            intervals=False,
        )
    flat = flatten_report(report, prefix="test_")
    expected_keys = {"accuracy", "balanced_accuracy", "worst_class_accuracy", "worst_k_accuracy"}
    expected_keys |= {f"accuracy_class/{n}" for n in ("cat", "dog", "fox")}
    expected_keys |= {"accuracy_many", "accuracy_medium", "accuracy_few"}
    expected_keys |= {f"accuracy_group/sex/{v}" for v in ("f", "m")}
    expected_keys |= {f"accuracy_group/age/{v}" for v in ("old", "young")}
    expected_keys |= {f"accuracy_group/sex&age/{s}&{a}" for s, a in itertools.product("fm", ("old", "young"))}
    # cells of the rows' reference classes (cat for REFS 0, dog for 1; no fox row)
    names = ["cat", "dog", "fox"]
    expected_keys |= {f"accuracy_group/class&sex/{names[c]}&{s}" for c, s in zip(REFS, SEX)}
    expected_keys |= {f"accuracy_group/class&age/{names[c]}&{a}" for c, a in zip(REFS, AGE)}
    expected_keys |= {
        f"worst_group_accuracy/{k}" for k in ("sex", "age", "class&sex", "class&age", "sex&age")
    }
    assert set(flat) == {f"test_{k}" for k in expected_keys}
    assert all(type(v) is float for v in flat.values())
    assert flat["test_accuracy"] == report["accuracy"]
    assert flat["test_accuracy_group/sex/m"] == 0.75
    assert flat["test_accuracy_class/dog"] == report["per_class"][1]["accuracy"]
    assert math.isnan(flat["test_accuracy_class/fox"])  # fox has no evaluation rows


def test_flatten_without_train_counts_or_groups():
    flat = flatten_report(subgroup_report(PREDS, REFS, intervals=False))
    assert set(flat) == {
        "accuracy",
        "balanced_accuracy",
        "worst_class_accuracy",
        "worst_k_accuracy",
        "accuracy_class/0",
        "accuracy_class/1",
    }


def test_jsonable_round_trip_without_nan():
    with pytest.warns(UserWarning):
        report = subgroup_report(PREDS, REFS, num_classes=3, train_counts=[1, 2, 3], groups={"s": SEX})
    with pytest.raises(ValueError):
        json.dumps(report, allow_nan=False)  # NaN for the missing class: the conversion is needed
    text = json.dumps(report_to_jsonable(report), allow_nan=False)
    back = json.loads(text)
    assert back["per_class"][2]["accuracy"] is None and back["per_class"][2]["ci_low"] is None
    assert back["per_class"][0]["accuracy"] == report["per_class"][0]["accuracy"]
    assert back["groups"] == report["groups"]
    assert back["shot_groups"]["many"]["accuracy"] is None  # no class has over 100 training examples
    extra = report_to_jsonable(
        {"a": np.float32(0.5), "b": (np.int64(3), float("inf")), "c": np.array([1.0, np.nan])}
    )
    assert extra == {"a": 0.5, "b": [3, None], "c": [1.0, None]}
    assert type(extra["b"][0]) is int


# --- pinned by mutation testing (docs/MUTATION.md) ---------------------------------------------------


def test_group_keys_are_sorted_and_the_worst_group_need_not_come_first():
    # values appear as z, y, x; accuracies z 0.5, y 0.0, x 1.0
    refs = np.array([0, 1, 0, 1, 0, 1])
    preds = np.array([0, 0, 1, 0, 0, 1])  # right on rows 0, 4, 5
    report = subgroup_report(preds, refs, groups={"g": ["z", "z", "y", "y", "x", "x"]}, intervals=False)
    g = report["groups"]["g"]
    assert list(g["by_group"]) == ["x", "y", "z"]  # sorted, not first-appearance order
    assert [g["by_group"][k]["accuracy"] for k in "xyz"] == [1.0, 0.0, 0.5]
    assert g["worst_group"] == "y" and (g["min"], g["max"], g["ratio"]) == (0.0, 1.0, 0.0)
    # numbers become their text and sort as text ("1" < "10" < "2", as in hf_fairkd.groups), and a tie
    # goes to the first key in that order
    report = subgroup_report(
        np.array([0, 0, 1, 1, 0, 1]), refs, groups={"site": [10, 10, 2, 2, 1, 1]}, intervals=False
    )
    site = report["groups"]["site"]
    assert list(site["by_group"]) == ["1", "10", "2"]
    assert site["worst_group"] == "10"  # 2 and 10 are both at 0.5


def test_groups_all_at_zero_accuracy_have_an_undefined_ratio():
    preds, refs = np.array([1, 0, 1, 0]), np.array([0, 1, 0, 1])
    report = subgroup_report(preds, refs, groups={"g": ["a", "b", "a", "b"]}, intervals=False)
    g = report["groups"]["g"]
    assert (g["min"], g["max"], g["difference"]) == (0.0, 0.0, 0.0)
    assert math.isnan(g["ratio"])


@pytest.mark.parametrize("num_missing, tail", [(20, ""), (21, " and 1 more"), (25, " and 5 more")])
def test_missing_class_warning_lists_twenty_names_and_counts_the_rest(num_missing, tail):
    names = [f"c{i}" for i in range(num_missing + 1)]  # c0 has the only rows
    with pytest.warns(UserWarning) as record:
        subgroup_report([0, 0], [0, 0], class_names=names, intervals=False)
    (warning,) = record
    shown = ", ".join(names[1:21])
    expected = f"{num_missing} class(es) have no evaluation examples: {shown}{tail}. "
    assert str(warning.message).startswith(expected)


def test_jsonable_converts_numpy_keys():
    converted = report_to_jsonable({np.int64(3): np.float64(0.25), "name": {np.str_("a"): np.bool_(True)}})
    assert converted == {3: 0.25, "name": {"a": True}}
    assert [type(k) for k in converted] == [int, str]
    assert json.loads(json.dumps(converted)) == {"3": 0.25, "name": {"a": True}}


def test_flatten_accepts_a_report_without_shot_groups_or_groups():
    report = subgroup_report(PREDS, REFS, intervals=False)
    del report["shot_groups"], report["groups"]
    assert set(flatten_report(report)) == {
        "accuracy",
        "balanced_accuracy",
        "worst_class_accuracy",
        "worst_k_accuracy",
        "accuracy_class/0",
        "accuracy_class/1",
    }


def test_float_ids_defaults_and_row_keys():
    report = subgroup_report(np.array([0.0, 1.0, 1.0, 2.0]), [0, 1, 0, 2], train_counts=[5.0, 3.0, 1.0])
    same = subgroup_report([0, 1, 1, 2], [0, 1, 0, 2], train_counts=[5, 3, 1])
    assert report == same  # whole-number floats are class ids
    assert report["interval_method"] == "clopper_pearson"
    assert subgroup_report(np.arange(5), np.arange(5))["worst_k"] == 3  # the default, with 5 classes
    assert list(report["per_class"][0]) == [
        "class_id",
        "name",
        "train_count",
        "support",
        "correct",
        "accuracy",
        "ci_low",
        "ci_high",
    ]
    assert [type(row["train_count"]) for row in report["per_class"]] == [int] * 3


def test_equal_shot_thresholds_leave_a_medium_group_of_one_count():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty shot group is NaN without a numpy warning
        report = subgroup_report([0, 1, 2], [0, 1, 2], shot_counts=[30, 20, 5], shot_thresholds=(20, 20))
    groups = report["shot_groups"]
    assert [groups[g]["classes"] for g in ("many", "medium", "few")] == [["0"], ["1"], ["2"]]
    report = subgroup_report([0, 1], [0, 1], shot_counts=[30, 25], shot_thresholds=(20, 10))
    assert math.isnan(report["shot_groups"]["few"]["accuracy"])


def test_intervals_are_exact_at_the_given_level():
    from hf_fairkd.metrics.intervals import clopper_pearson, worst_class_interval

    preds, refs = _rows([(7, 10), (3, 4), (9, 9)])
    report = subgroup_report(preds, refs, confidence_level=0.8)
    correct, support = np.array([7, 3, 9]), np.array([10, 4, 9])
    low, high = clopper_pearson(correct, support, 0.8)
    assert [r["ci_low"] for r in report["per_class"]] == low.tolist()
    assert [r["ci_high"] for r in report["per_class"]] == high.tolist()
    assert report["worst_class_accuracy_ci"] == [
        float(v) for v in worst_class_interval(correct, support, 0.8)
    ]


def _eval_prediction(num_classes: int, per_class: int = 3, seed: int = 0):
    """An EvalPrediction-like object: logits (n, C) and labels, every class present."""
    from types import SimpleNamespace

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    logits = rng.normal(size=(len(labels), num_classes)).astype(np.float32)
    logits[np.arange(len(labels)), labels] += rng.random(len(labels)) < 0.6  # some right, some wrong
    logits[np.arange(len(labels)), labels] *= 10
    config = SimpleNamespace(num_labels=num_classes, id2label={i: f"c{i}" for i in range(num_classes)})
    return config, SimpleNamespace(predictions=logits, label_ids=labels)


SUMMARY_KEYS = {"accuracy", "balanced_accuracy", "worst_class_accuracy", "worst_k_accuracy"}


@pytest.mark.parametrize(
    "num_classes, mode, expect_per_class",
    [
        (1000, "auto", False),
        (1000, "always", True),
        (1000, "never", False),
        (10, "auto", True),
        (10, "never", False),
    ],
)
def test_trainer_metrics_per_class_scalars_opt_in_past_a_threshold(num_classes, mode, expect_per_class):
    from hf_fairkd.metrics.trainer_metrics import SubgroupMetrics

    config, prediction = _eval_prediction(num_classes)
    counts = [max(1, 500 - i) for i in range(num_classes)]
    flat = SubgroupMetrics(config, train_counts=counts, per_class=mode)(prediction)
    per_class_keys = {k for k in flat if k.startswith("accuracy_class/")}
    assert per_class_keys == (
        {f"accuracy_class/c{i}" for i in range(num_classes)} if expect_per_class else set()
    )
    # the summary scalars are always there, and agree with the full report
    assert SUMMARY_KEYS | {"accuracy_many", "accuracy_medium", "accuracy_few"} <= set(flat)
    full = flatten_report(
        subgroup_report(prediction.predictions, prediction.label_ids, train_counts=counts, intervals=False)
    )
    assert {k: flat[k] for k in SUMMARY_KEYS} == pytest.approx({k: full[k] for k in SUMMARY_KEYS})


def test_trainer_metrics_threshold_is_configurable_and_checked():
    from hf_fairkd.metrics.trainer_metrics import SubgroupMetrics

    config, prediction = _eval_prediction(10)
    assert not any(
        k.startswith("accuracy_class/") for k in SubgroupMetrics(config, per_class_max_classes=9)(prediction)
    )
    assert (
        sum(
            k.startswith("accuracy_class/")
            for k in SubgroupMetrics(config, per_class_max_classes=10)(prediction)
        )
        == 10
    )
    with pytest.raises(ValueError, match="per_class"):
        SubgroupMetrics(config, per_class="sometimes")


def test_flatten_report_without_per_class_keeps_the_summary():
    report = subgroup_report(PREDS, REFS, intervals=False)
    assert set(flatten_report(report, per_class=False)) == set(flatten_report(report)) - {
        "accuracy_class/0",
        "accuracy_class/1",
    }
