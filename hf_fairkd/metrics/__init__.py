"""Per-class, shot-group and subgroup metrics, exact intervals, per-class and per-group comparisons of two
models, calibration, and the ``per_class_accuracy`` evaluate module."""

from __future__ import annotations

from pathlib import Path

from hf_fairkd.metrics.calibration import (
    brier_score,
    calibration_report,
    expected_calibration_error,
    log_loss,
    per_class_calibration_error,
    softmax,
)
from hf_fairkd.metrics.groups import group_verdicts, paired_group_delta
from hf_fairkd.metrics.intervals import (
    clopper_pearson,
    mcnemar_exact_p,
    paired_difference_interval,
    worst_class_interval,
)
from hf_fairkd.metrics.paired import (
    HURT_ALPHA,
    HURT_RULE,
    delta_verdict,
    hurt_and_helped_classes,
    paired_delta,
)
from hf_fairkd.metrics.subgroup import flatten_report, report_to_jsonable, subgroup_report

PER_CLASS_ACCURACY_PATH = str(Path(__file__).resolve().parent / "per_class_accuracy")


def load_metric(**kwargs):
    """``evaluate.load`` of the bundled per_class_accuracy module (local path; no Hub access).

    Keyword arguments go to ``evaluate.load`` (e.g. ``keep_in_memory=True``, ``experiment_id``).
    """
    import evaluate  # imported lazily: evaluate pulls in datasets, which is slow to import

    return evaluate.load(PER_CLASS_ACCURACY_PATH, **kwargs)


__all__ = [
    "HURT_ALPHA",
    "HURT_RULE",
    "PER_CLASS_ACCURACY_PATH",
    "brier_score",
    "calibration_report",
    "clopper_pearson",
    "delta_verdict",
    "expected_calibration_error",
    "flatten_report",
    "group_verdicts",
    "hurt_and_helped_classes",
    "load_metric",
    "log_loss",
    "mcnemar_exact_p",
    "paired_delta",
    "paired_group_delta",
    "paired_difference_interval",
    "per_class_calibration_error",
    "report_to_jsonable",
    "softmax",
    "subgroup_report",
    "worst_class_interval",
]
