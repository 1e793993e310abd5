"""Accuracy per subgroup with exact intervals, and the per-group comparison of two models.

Groups are named by :mod:`hf_fairkd.groups` (`group_text`, `report_groupings`), so reports, cards and the
training counts of the data layer (`count_groupings`) name every group and cell the same way. Per report
key ("site", "class&site", "site&camera", ...) a group's accuracy is pooled over its rows; its interval is
Clopper-Pearson, and the worst-group interval is the simultaneous (Bonferroni) one that
:func:`hf_fairkd.metrics.intervals.worst_class_interval` gives for classes. The comparison of two models per
group is the per-class one of :func:`hf_fairkd.metrics.paired.paired_delta` (exact McNemar test), and
:func:`group_verdicts` calls groups hurt / helped with the one rule, :func:`delta_verdict`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from hf_fairkd.groups import group_text, report_groupings
from hf_fairkd.metrics.inputs import _check_groups, _check_options
from hf_fairkd.metrics.intervals import clopper_pearson, worst_class_interval
from hf_fairkd.metrics.paired import HURT_ALPHA, _paired_columns, _prepare_pair, delta_verdict

__all__ = [
    "check_group_inputs",
    "group_names",
    "group_reports",
    "group_verdicts",
    "paired_group_delta",
    "row_groupings",
]


def group_names(values: Sequence) -> list[str]:
    """`group_text` of every value, computed once per distinct value (a group column has few of them)."""
    values = values.tolist() if hasattr(values, "tolist") else values  # numpy / pandas scalars -> Python
    names: dict = {}
    out = []
    for value in values:
        key = (type(value), value)  # the type too: 1, 1.0 and True are equal keys but different names
        try:
            name = names.get(key)
            if name is None:
                name = names[key] = group_text(value)
        except TypeError:  # an unhashable value: name it without the cache
            name = group_text(value)
        out.append(name)
    return out


def row_groupings(
    groups: Mapping[str, Sequence], class_names: Sequence[str], references: np.ndarray
) -> dict[str, list[str]]:
    """{report key: group name per row}: `report_groupings` of the group names (`group_text`) of the values,
    with the class x column cells named by the class of each row's reference label."""
    values = {str(column): group_names(column_values) for column, column_values in groups.items()}
    row_class_names = np.asarray(class_names, dtype=object)[references].tolist()
    return report_groupings(values, row_class_names)


def check_group_inputs(
    groups: Mapping[str, Sequence] | None,
    group_train_counts: Mapping[str, Mapping[str, int]] | None,
    n: int,
) -> dict[str, dict[str, int]]:
    """Check group columns (one value per row) and the training-count table; return the table, cleaned.

    Cheap (no row is grouped), so reports call it before any work. The table must have the format of
    `hf_fairkd.groups.count_groupings` ({report key: {group: count}}) with keys the groups produce."""
    _check_groups(groups, n)
    if not group_train_counts:
        return {}
    if not groups:
        raise ValueError(
            "group_train_counts was given without groups; pass groups= (one value per evaluation row for each "
            "group column) too, or drop group_train_counts."
        )
    # The report keys depend only on the column names: group no rows to get them.
    report_keys = list(report_groupings({str(c): [] for c in groups}, []))
    unknown = [key for key in group_train_counts if key not in report_keys]
    if unknown:
        raise ValueError(
            f"group_train_counts has report keys {unknown} that the group columns {list(groups)} do not give "
            f"(they give {report_keys}); pass count_groupings(report_groupings(...)) of the training rows for "
            "the same group columns."
        )
    table = {}
    for key, counts in group_train_counts.items():
        if not isinstance(counts, Mapping):
            raise ValueError(
                f"group_train_counts[{key!r}] must map group names to training counts (the format of "
                f"hf_fairkd.groups.count_groupings); got {type(counts).__name__}."
            )
        negative = [group for group, count in counts.items() if int(count) < 0]
        if negative:
            raise ValueError(
                f"group_train_counts[{key!r}] has negative counts for {negative}; counts are >= 0."
            )
        table[key] = {group_text(group): int(count) for group, count in counts.items()}
    return table


def _group_summary(
    keys: Sequence[str],
    correct_rows: np.ndarray,
    train_counts: Mapping[str, int] | None,
    intervals: bool,
    confidence_level: float,
) -> dict:
    """Accuracy per group of one report key, intervals, and the fairlearn-style summary."""
    eval_names, codes = np.unique(np.asarray(keys, dtype=str), return_inverse=True)
    trained = [group for group, count in (train_counts or {}).items() if count > 0]
    # Groups seen in training but not in this evaluation are reported too (support 0), so they are not lost.
    names = sorted(set(eval_names.tolist()) | set(trained))
    index = {name: i for i, name in enumerate(names)}
    codes = np.array([index[name] for name in eval_names.tolist()], dtype=np.int64)[codes.reshape(-1)]
    support = np.bincount(codes, minlength=len(names))
    correct = np.bincount(codes[correct_rows], minlength=len(names))
    seen = support > 0
    accuracy = np.full(len(names), math.nan)
    accuracy[seen] = correct[seen] / support[seen]

    ci_low = ci_high = np.full(len(names), math.nan)
    worst_ci = [math.nan, math.nan]
    if intervals:
        ci_low, ci_high = clopper_pearson(correct, support, confidence_level)
        worst_ci = [float(bound) for bound in worst_class_interval(correct, support, confidence_level)]

    present = np.flatnonzero(seen)
    worst = int(present[np.argmin(accuracy[present])])  # argmin/argmax: first in sorted order on ties
    best = int(present[np.argmax(accuracy[present])])
    low, high = float(accuracy[worst]), float(accuracy[best])
    by_group = {
        name: {
            "accuracy": float(accuracy[g]),
            "support": int(support[g]),
            "correct": int(correct[g]),
            # A known table without the group: no training row had it.
            "train_count": None if train_counts is None else int(train_counts.get(name, 0)),
            "ci_low": float(ci_low[g]),
            "ci_high": float(ci_high[g]),
        }
        for g, name in enumerate(names)
    }
    return {
        "by_group": by_group,
        "num_groups": int(seen.sum()),
        "missing_groups": [name for g, name in enumerate(names) if not seen[g]],
        "worst_group": names[worst],
        "worst_group_accuracy": low,
        "worst_group_accuracy_ci": worst_ci,
        "best_group": names[best],
        "min": low,
        "max": high,
        "difference": high - low,
        "ratio": low / high if high > 0 else math.nan,  # all groups at 0 accuracy: ratio undefined
        "balanced_accuracy": float(accuracy[seen].mean()),
    }


def group_reports(
    groups: Mapping[str, Sequence] | None,
    class_names: Sequence[str],
    references: np.ndarray,
    correct_rows: np.ndarray,
    group_train_counts: Mapping[str, Mapping[str, int]] | None = None,
    intervals: bool = True,
    confidence_level: float = 0.95,
) -> dict:
    """{report key: summary} for the "groups" entry of `subgroup_report` ({} without groups).

    Inputs must have passed :func:`check_group_inputs`; ``references``: class ids; ``correct_rows``: a
    boolean per row."""
    if not groups:
        return {}
    correct_rows = np.asarray(correct_rows, dtype=bool)
    return {
        key: _group_summary(
            keys, correct_rows, (group_train_counts or {}).get(key), intervals, confidence_level
        )
        for key, keys in row_groupings(groups, class_names, references).items()
    }


def paired_group_delta(
    predictions_a,
    predictions_b,
    references,
    groups: Mapping[str, Sequence],
    *,
    class_names: Sequence[str] | None = None,
    intervals: bool = True,
    confidence_level: float = 0.95,
) -> dict[str, list[dict]]:
    """Per-group accuracy difference a - b on the same rows, for every report key of the groups.

    {report key: rows of the groups with evaluation rows, sorted by group name}; a row is {"group",
    "support", "delta", "n10", "n01", "p_value", "ci_low", "ci_high", "interval_method"} with the maths of
    :func:`hf_fairkd.metrics.paired_delta` (exact McNemar p-value, interval with coverage >=
    confidence_level; ``intervals=False`` gives NaN bounds). :func:`delta_verdict` judges a row.
    """
    preds_a, preds_b, refs, _, class_names = _prepare_pair(
        predictions_a, predictions_b, references, None, class_names
    )
    _check_options(confidence_level)
    check_group_inputs(groups, None, len(refs))
    if not groups:
        return {}
    a_only = (preds_a == refs) & (preds_b != refs)
    b_only = (preds_a != refs) & (preds_b == refs)
    out = {}
    for key, keys in row_groupings(groups, class_names, refs).items():
        names, codes = np.unique(np.asarray(keys, dtype=str), return_inverse=True)
        codes = codes.reshape(-1)
        support = np.bincount(codes, minlength=len(names))
        n10 = np.bincount(codes[a_only], minlength=len(names))
        n01 = np.bincount(codes[b_only], minlength=len(names))
        columns = {
            "group": names.tolist(),
            "support": support.tolist(),
            **_paired_columns(n10, n01, support, intervals, confidence_level),
        }
        out[key] = [dict(zip(columns, row)) for row in zip(*columns.values())]
    return out


def group_verdicts(deltas: Mapping[str, Sequence[Mapping]], alpha: float = HURT_ALPHA) -> dict:
    """{report key: {group: "hurt" / "helped" / "no clear change" / None}} of `paired_group_delta` rows,
    by :func:`delta_verdict` (a = student, b = baseline)."""
    return {key: {row["group"]: delta_verdict(row, alpha) for row in rows} for key, rows in deltas.items()}
