"""The per_class_accuracy evaluate module: loads by local path (offline) and matches subgroup_report."""

import doctest
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from hf_fairkd.metrics import (
    PER_CLASS_ACCURACY_PATH,
    flatten_report,
    load_metric,
    report_to_jsonable,
    subgroup_report,
)

evaluate = pytest.importorskip("evaluate")
MODULE_FILE = Path(PER_CLASS_ACCURACY_PATH) / "per_class_accuracy.py"


@pytest.fixture(scope="module")
def metric():
    # keep_in_memory: no arrow cache files; loading a local path needs no Hub access or offline flags.
    return evaluate.load(PER_CLASS_ACCURACY_PATH, keep_in_memory=True)


def _case(seed=0, n=300, num_classes=5):
    rng = np.random.default_rng(seed)
    refs = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, n - num_classes)])
    preds = np.where(rng.random(n) < 0.6, refs, rng.integers(0, num_classes, n))
    return preds, refs


def _same(a, b):
    """Equality that treats NaN == NaN (via the JSON form)."""
    return json.dumps(report_to_jsonable(a), sort_keys=True) == json.dumps(
        report_to_jsonable(b), sort_keys=True
    )


def test_path_is_inside_the_package_and_declares_int64_features(metric):
    assert MODULE_FILE.is_file() and (Path(PER_CLASS_ACCURACY_PATH) / "README.md").is_file()
    assert metric.name == "per_class_accuracy"
    assert {k: v.dtype for k, v in metric.features.items()} == {"predictions": "int64", "references": "int64"}


def test_module_matches_subgroup_report(metric):
    preds, refs = _case()
    options = dict(
        class_names=list("abcde"),
        train_counts=[300, 100, 50, 20, 3],
        groups={"site": (np.arange(len(refs)) % 3).tolist()},
        worst_k=2,
    )
    got = metric.compute(predictions=preds.tolist(), references=refs.tolist(), **options)
    expected = subgroup_report(preds, refs, **options)
    assert _same(got, expected)
    assert got["per_class"][0]["ci_low"] == expected["per_class"][0]["ci_low"]  # same exact interval
    assert got["shot_counts"] == options["train_counts"]  # shot groups default to the training counts


def test_module_forwards_shot_counts_and_names_the_interval_methods(metric):
    refs = [0, 0, 1, 1, 2, 2]
    got = metric.compute(
        predictions=refs, references=refs, train_counts=[150, 95, 15], shot_counts=[150, 105, 20]
    )
    groups = {shot: g["classes"] for shot, g in got["shot_groups"].items()}
    assert groups == {"many": ["0", "1"], "medium": ["2"], "few": []}  # by shot_counts, not train_counts
    assert (got["interval_method"], got["worst_class_interval_method"]) == (
        "clopper_pearson",
        "bonferroni_clopper_pearson",
    )
    # 2 of 2 right: the exact lower bound is 0.025 ** (1/2)
    assert got["per_class"][0]["ci_low"] == pytest.approx(0.025**0.5, abs=1e-12)


def test_module_flat_output_and_batches(metric):
    preds, refs = _case(seed=1)
    for start in range(0, len(refs), 100):
        metric.add_batch(predictions=preds[start : start + 100], references=refs[start : start + 100])
    flat = metric.compute(intervals=False, flat=True)
    assert flat == flatten_report(subgroup_report(preds, refs, intervals=False))


def test_module_reports_missing_classes_with_nan(metric):
    with pytest.warns(UserWarning, match="examples: 2"):
        report = metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], num_classes=3, intervals=False)
    assert math.isnan(report["per_class"][2]["accuracy"]) and report["missing_classes"] == ["2"]


def test_module_passes_input_errors_through(metric):
    with pytest.raises(ValueError, match="class_names has 1"):
        metric.compute(predictions=[0, 1], references=[0, 1], num_classes=2, class_names=["only"])
    # the metric stays usable after a failed compute
    assert metric.compute(predictions=[0, 1], references=[0, 1], intervals=False)["accuracy"] == 1.0


def test_load_metric_helper_gives_the_same_numbers():
    preds, refs = _case(seed=2)
    report = load_metric(keep_in_memory=True).compute(predictions=preds, references=refs)
    assert _same(report, subgroup_report(preds, refs))


def test_kwargs_description_examples_pass_doctest():
    spec = importlib.util.spec_from_file_location("per_class_accuracy_doctest", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    test = doctest.DocTestParser().get_doctest(
        module._KWARGS_DESCRIPTION, {}, "_KWARGS_DESCRIPTION", str(MODULE_FILE), 0
    )
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    result = runner.run(test)
    assert result.attempted >= 5
    assert result.failed == 0
