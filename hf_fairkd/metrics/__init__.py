"""Per-class, shot-group and subgroup metrics, calibration, and the ``per_class_accuracy`` evaluate module."""

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
from hf_fairkd.metrics.subgroup import flatten_report, paired_delta, report_to_jsonable, subgroup_report

PER_CLASS_ACCURACY_PATH = str(Path(__file__).resolve().parent / "per_class_accuracy")


def load_metric(**kwargs):
    """``evaluate.load`` of the bundled per_class_accuracy module (local path; no Hub access).

    Keyword arguments go to ``evaluate.load`` (e.g. ``keep_in_memory=True``, ``experiment_id``).
    """
    import evaluate  # imported lazily: evaluate pulls in datasets, which is slow to import

    return evaluate.load(PER_CLASS_ACCURACY_PATH, **kwargs)


__all__ = [
    "PER_CLASS_ACCURACY_PATH",
    "brier_score",
    "calibration_report",
    "expected_calibration_error",
    "flatten_report",
    "load_metric",
    "log_loss",
    "paired_delta",
    "per_class_calibration_error",
    "report_to_jsonable",
    "softmax",
    "subgroup_report",
]
