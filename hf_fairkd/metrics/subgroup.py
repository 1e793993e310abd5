"""Per-class and subgroup accuracy with exact intervals (plain numpy, vectorised).

Everything works on per-class counts from ``np.bincount``, so one million predictions over one thousand
classes take a fraction of a second. Per-class intervals are Clopper-Pearson (exact binomial) intervals;
the worst-class interval comes from simultaneous (Bonferroni) Clopper-Pearson intervals; see
:mod:`hf_fairkd.metrics.intervals`. Nothing is resampled, so reports do not depend on a seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from hf_fairkd.io_utils import nan_to_none as report_to_jsonable  # noqa: F401 - the one JSON cleaner
from hf_fairkd.metrics.groups import check_group_inputs, group_reports
from hf_fairkd.metrics.inputs import _check_counts, _check_options, _prepare, _warn_missing
from hf_fairkd.metrics.intervals import (
    INTERVAL_METHOD,
    WORST_CLASS_INTERVAL_METHOD,
    clopper_pearson,
    worst_class_interval,
)


def _shot_groups(shot_counts, per_class_acc, support, class_names, many_above, few_below) -> dict:
    """many: count > many_above; few: count < few_below; medium: the rest (inclusive bounds)."""
    if shot_counts is None:
        return {}
    masks = {
        "many": shot_counts > many_above,
        "medium": (shot_counts >= few_below) & (shot_counts <= many_above),
        "few": shot_counts < few_below,
    }
    out = {}
    for name, mask in masks.items():
        seen = mask & (support > 0)
        out[name] = {
            "accuracy": float(per_class_acc[seen].mean()) if seen.any() else math.nan,
            "support": int(support[mask].sum()),
            "num_classes": int(mask.sum()),
            "classes": [class_names[i] for i in np.flatnonzero(mask)],
        }
    return out


def subgroup_report(
    predictions,
    references,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    train_counts: Sequence[int] | None = None,
    shot_counts: Sequence[int] | None = None,
    groups: Mapping[str, Sequence] | None = None,
    group_train_counts: Mapping[str, Mapping[str, int]] | None = None,
    shot_thresholds: tuple[int, int] = (100, 20),
    worst_k: int = 3,
    intervals: bool = True,
    confidence_level: float = 0.95,
) -> dict:
    """Per-class, shot-group and subgroup accuracy report (format: hf_fairkd spec, "Subgroup report").

    predictions: class ids (n,) or scores (n, num_classes) (argmax taken). num_classes comes from the
    argument, else class_names, else train_counts, else the score width, else max label + 1.
    Shot groups use ``shot_counts`` (default: train_counts; pass the long-tail counts from before a
    holdout was carved to get the standard groups): many = count > shot_thresholds[0] (100), few = count <
    shot_thresholds[1] (20), medium = the rest (20..100 inclusive). Classes without evaluation examples
    get accuracy NaN, are listed in missing_classes, excluded from balanced/worst-class/worst-k accuracy,
    and named in a warning. Worst-class ties go to the lowest class id. worst_k is reduced to the number
    of classes with examples when fewer.

    Intervals (at ``confidence_level``): per class, Clopper-Pearson (exact, coverage >= the level for any
    support); ``worst_class_accuracy_ci`` = [min_c low_c, min_c high_c] of Clopper-Pearson intervals at
    level 1 - alpha/K (Bonferroni over the K classes with examples), which covers the true worst-class
    accuracy with probability >= the level. ``intervals=False`` leaves them out (NaN bounds,
    ``interval_method`` "none").

    Groups: ``groups`` = {column: one value per example} (values of any type; None, NaN and "" are the group
    :data:`hf_fairkd.groups.MISSING`). "groups" holds a summary per key of
    `hf_fairkd.groups.report_groupings` (each column, class x column cells named "cat&A" by the reference
    label's class, each pair of columns, all columns when more than two); see
    :func:`hf_fairkd.metrics.groups.group_reports`. ``group_train_counts`` = {report key: {group: training
    count}} (`hf_fairkd.groups.count_groupings` of the training rows): groups with training rows but no
    evaluation row are listed in ``missing_groups`` with NaN accuracy.
    """
    preds, refs, num_classes, class_names, train_counts = _prepare(
        predictions, references, num_classes, class_names, train_counts
    )
    shot_counts = (
        train_counts if shot_counts is None else _check_counts(shot_counts, num_classes, "shot_counts")
    )
    many_above, few_below = (int(t) for t in shot_thresholds)
    if few_below > many_above:
        raise ValueError(
            f"shot_thresholds=(many_above, few_below) needs few_below <= many_above; got {shot_thresholds}."
        )
    _check_options(confidence_level, worst_k)
    group_train_counts = check_group_inputs(groups, group_train_counts, len(refs))
    intervals = bool(intervals)

    correct_rows = preds == refs
    support = np.bincount(refs, minlength=num_classes)
    correct = np.bincount(refs[correct_rows], minlength=num_classes)
    seen = support > 0
    seen_ids = np.flatnonzero(seen)
    per_class_acc = np.full(num_classes, math.nan)
    per_class_acc[seen] = correct[seen] / support[seen]

    missing = [class_names[i] for i in np.flatnonzero(~seen)]
    if missing:
        _warn_missing(missing)

    # Stable sort over ascending class ids: equal accuracies keep the lowest id first.
    order = seen_ids[np.argsort(per_class_acc[seen_ids], kind="stable")]
    k = min(int(worst_k), len(order))
    worst_id = int(order[0])

    ci_low = np.full(num_classes, math.nan)
    ci_high = np.full(num_classes, math.nan)
    worst_ci = [math.nan, math.nan]
    if intervals:
        ci_low, ci_high = clopper_pearson(correct, support, confidence_level)
        w_low, w_high = worst_class_interval(correct, support, confidence_level)
        worst_ci = [float(w_low), float(w_high)]

    columns = {
        "class_id": list(range(num_classes)),
        "name": class_names,
        "train_count": train_counts.tolist() if train_counts is not None else [None] * num_classes,
        "support": support.tolist(),
        "correct": correct.tolist(),
        "accuracy": per_class_acc.tolist(),
        "ci_low": ci_low.tolist(),
        "ci_high": ci_high.tolist(),
    }
    per_class = [dict(zip(columns, row)) for row in zip(*columns.values())]
    return {
        "num_examples": int(len(refs)),
        "num_classes": num_classes,
        "accuracy": float(correct_rows.mean()),
        "balanced_accuracy": float(per_class_acc[seen].mean()),
        "worst_class_accuracy": float(per_class_acc[worst_id]),
        "worst_class": class_names[worst_id],
        "worst_class_id": worst_id,
        "worst_k": k,
        "worst_k_accuracy": float(per_class_acc[order[:k]].mean()),
        "worst_k_classes": [class_names[i] for i in order[:k]],
        "worst_class_accuracy_ci": worst_ci,
        "confidence_level": float(confidence_level),
        "interval_method": INTERVAL_METHOD if intervals else "none",
        "worst_class_interval_method": WORST_CLASS_INTERVAL_METHOD if intervals else "none",
        "worst_class_interval_classes": int(len(seen_ids)),  # K of the Bonferroni correction
        "missing_classes": missing,
        "per_class": per_class,
        "shot_thresholds": {"many_above": many_above, "few_below": few_below},
        "shot_counts": shot_counts.tolist() if shot_counts is not None else None,
        "shot_groups": _shot_groups(shot_counts, per_class_acc, support, class_names, many_above, few_below),
        "groups": group_reports(
            groups, class_names, refs, correct_rows, group_train_counts, intervals, confidence_level
        ),
    }


def flatten_report(
    report: Mapping, prefix: str = "", per_class: bool = True, per_group: bool = True
) -> dict[str, float]:
    """Flat scalar metrics for Trainer logs; ``prefix`` is prepended verbatim to every key.

    Keys: accuracy, balanced_accuracy, worst_class_accuracy, worst_k_accuracy, accuracy_class/<name>
    (only when ``per_class``), accuracy_many/medium/few (when train_counts were given),
    worst_group_accuracy/<report key> (every report key of the groups) and accuracy_group/<report key>/<group>
    (only when ``per_group``). Missing classes, missing groups and empty shot groups appear as NaN.
    """
    flat = {
        key: float(report[key])
        for key in ("accuracy", "balanced_accuracy", "worst_class_accuracy", "worst_k_accuracy")
    }
    for row in report["per_class"] if per_class else ():
        flat[f"accuracy_class/{row['name']}"] = float(row["accuracy"])
    for shot, summary in report.get("shot_groups", {}).items():
        flat[f"accuracy_{shot}"] = float(summary["accuracy"])
    for key, summary in report.get("groups", {}).items():
        flat[f"worst_group_accuracy/{key}"] = float(summary["worst_group_accuracy"])
        for group, cell in summary["by_group"].items() if per_group else ():
            flat[f"accuracy_group/{key}/{group}"] = float(cell["accuracy"])
    return {f"{prefix}{key}": value for key, value in flat.items()}
