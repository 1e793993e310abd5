"""Per-class comparison of two models on the same rows, and the one rule that calls a class hurt or helped.

:func:`paired_delta` gives, per class, the accuracy difference a - b, the discordant counts (n10: a right
and b wrong; n01: a wrong and b right), the exact McNemar p-value and an interval for the difference.
:func:`delta_verdict` is the only place that decides "hurt" / "helped": the run summary, the model card
and the benchmark tables all call it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from hf_fairkd.metrics.inputs import _check_options, _prepare, _warn_missing
from hf_fairkd.metrics.intervals import PAIRED_INTERVAL_METHOD, mcnemar_exact_p, paired_difference_interval

__all__ = ["HURT_ALPHA", "HURT_RULE", "delta_verdict", "hurt_and_helped_classes", "paired_delta"]

HURT_ALPHA = 0.05
HURT_RULE = (
    "exact McNemar test per class (two-sided binomial test of the discordant pairs): hurt when p < 0.05 "
    "and the student is wrong on more of them than the baseline, helped when p < 0.05 and it is right on more"
)


def paired_delta(
    predictions_a,
    predictions_b,
    references,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    intervals: bool = True,
    confidence_level: float = 0.95,
) -> list[dict]:
    """Per-class accuracy difference a - b on the same rows, with an exact test and a valid interval.

    Rows: {"class_id", "name", "delta", "n10", "n01", "p_value", "ci_low", "ci_high", "interval_method"}.
    ``p_value`` is the two-sided exact McNemar p-value of class c (binomial test of n10 against n01 at 1/2);
    ``ci_low``/``ci_high`` bound delta with coverage >= confidence_level
    (:func:`hf_fairkd.metrics.intervals.paired_difference_interval`, conservative); ``intervals=False``
    leaves the interval out (NaN bounds; the p-value is still given). Classes without examples get NaN (and a
    warning).
    """
    preds_a, preds_b, refs, num_classes, class_names = _prepare_pair(
        predictions_a, predictions_b, references, num_classes, class_names
    )
    _check_options(confidence_level)

    right_a, right_b = preds_a == refs, preds_b == refs
    support = np.bincount(refs, minlength=num_classes)
    n10 = np.bincount(refs[right_a & ~right_b], minlength=num_classes)
    n01 = np.bincount(refs[~right_a & right_b], minlength=num_classes)
    if not (support > 0).all():
        _warn_missing([class_names[i] for i in np.flatnonzero(support == 0)])
    columns = {
        "class_id": list(range(num_classes)),
        "name": class_names,
        **_paired_columns(n10, n01, support, intervals, confidence_level),
    }
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


def _prepare_pair(predictions_a, predictions_b, references, num_classes, class_names):
    """Checked class ids of both models and the references, num_classes and class names."""
    if (
        np.ndim(predictions_a) == 2
        and np.ndim(predictions_b) == 2
        and np.shape(predictions_a) != np.shape(predictions_b)
    ):
        raise ValueError(
            "predictions_a and predictions_b scores have different shapes; score the same classes."
        )
    if (
        num_classes is None
        and class_names is None
        and np.ndim(predictions_a) == 1
        and np.ndim(predictions_b) == 1
    ):
        # Infer from both models, so that model b's highest class id is not reported as out of range.
        ids = np.concatenate([np.ravel(predictions_a), np.ravel(predictions_b), np.ravel(references)])
        num_classes = int(ids.max()) + 1 if ids.size else None
    preds_a, refs, num_classes, class_names, _ = _prepare(
        predictions_a, references, num_classes, class_names, None
    )
    preds_b, _, _, _, _ = _prepare(predictions_b, refs, num_classes, class_names, None)
    return preds_a, preds_b, refs, num_classes, class_names


def _paired_columns(n10, n01, support, intervals: bool, confidence_level: float) -> dict[str, list]:
    """The delta, n10, n01, p_value, ci_low, ci_high and interval_method columns from discordant counts.

    Shared by the per-class and the per-group comparison, so both use the same test and interval; entries
    without support are NaN."""
    n10, n01, support = (np.asarray(a, dtype=np.int64) for a in (n10, n01, support))
    seen = support > 0
    delta = np.full(len(support), math.nan)
    delta[seen] = (n10[seen] - n01[seen]) / support[seen]
    p_value = np.where(seen, mcnemar_exact_p(n10, n01), math.nan)
    ci_low = np.full(len(support), math.nan)
    ci_high = np.full(len(support), math.nan)
    method = "none"
    if intervals:
        ci_low, ci_high = paired_difference_interval(n10, n01, support, confidence_level)
        method = PAIRED_INTERVAL_METHOD
    return {
        "delta": delta.tolist(),
        "n10": n10.tolist(),
        "n01": n01.tolist(),
        "p_value": p_value.tolist(),
        "ci_low": ci_low.tolist(),
        "ci_high": ci_high.tolist(),
        "interval_method": [method] * len(support),
    }


def _number(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def delta_verdict(row: Mapping, alpha: float = HURT_ALPHA) -> str | None:
    """ "hurt", "helped" or "no clear change" for one :func:`paired_delta` row (a = student, b = baseline).

    The rule (:data:`HURT_RULE`): p_value < alpha and n01 > n10 (student worse) is "hurt"; p_value < alpha
    and n10 > n01 is "helped"; anything else is "no clear change". When model a and b are equally
    accurate on a class, it is called hurt with probability <= alpha / 2. Returns None when the row
    cannot be judged: no test examples, or a row without ``p_value`` (files written before the test
    existed; re-run the evaluation to judge them).
    """
    p = _number(row.get("p_value"))
    if p is None or _number(row.get("delta")) is None:
        return None
    if row.get("n10") is not None and row.get("n01") is not None:
        sign = int(row["n10"]) - int(row["n01"])
    else:
        sign = _number(row["delta"])
    if p < alpha and sign < 0:
        return "hurt"
    if p < alpha and sign > 0:
        return "helped"
    return "no clear change"


def hurt_and_helped_classes(rows: Iterable[Mapping] | None, alpha: float = HURT_ALPHA):
    """(hurt, helped) class names of paired_delta rows under :func:`delta_verdict`."""
    rows = list(rows or [])
    verdicts = [delta_verdict(row, alpha) for row in rows]
    hurt = [row["name"] for row, v in zip(rows, verdicts) if v == "hurt"]
    helped = [row["name"] for row, v in zip(rows, verdicts) if v == "helped"]
    return hurt, helped
