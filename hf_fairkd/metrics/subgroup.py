"""Per-class and subgroup accuracy with exact intervals (plain numpy, vectorised).

Everything works on per-class counts from ``np.bincount``, so one million predictions over one thousand
classes take a fraction of a second. Per-class intervals are Clopper-Pearson (exact binomial) intervals;
the worst-class interval comes from simultaneous (Bonferroni) Clopper-Pearson intervals; see
:mod:`hf_fairkd.metrics.intervals`. Nothing is resampled, so reports do not depend on a seed.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from hf_fairkd.io_utils import nan_to_none as report_to_jsonable  # noqa: F401 - the one JSON cleaner
from hf_fairkd.metrics.intervals import (
    INTERVAL_METHOD,
    WORST_CLASS_INTERVAL_METHOD,
    clopper_pearson,
    worst_class_interval,
)


def _as_class_ids(values, name: str) -> np.ndarray:
    """1-D integer class ids from ids, or from 2-D logits/probabilities via argmax."""
    arr = np.asarray(values)
    if arr.ndim == 2:
        return np.argmax(arr, axis=1).astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D class ids or 2-D (n, num_classes) scores; got shape {arr.shape}."
        )
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
        return arr.astype(np.int64)
    raise ValueError(f"{name} must hold integer class ids (dtype {arr.dtype} given); pass ids or 2-D scores.")


def _check_range(ids: np.ndarray, num_classes: int, name: str) -> None:
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{name} hold values in [{low}, {high}], outside [0, {num_classes}); pass the right num_classes "
            "(or class_names / train_counts covering every class)."
        )


def _prepare(predictions, references, num_classes, class_names, train_counts):
    """Validate inputs (cheap checks only) and resolve num_classes and class names."""
    if np.ndim(references) != 1:
        raise ValueError(f"references must be 1-D class ids; got shape {np.shape(references)}.")
    refs = _as_class_ids(references, "references")
    score_width = np.shape(predictions)[1] if np.ndim(predictions) == 2 else None
    preds = _as_class_ids(predictions, "predictions")
    if len(preds) != len(refs):
        raise ValueError(
            f"predictions has {len(preds)} rows but references has {len(refs)}; pass one prediction per reference."
        )
    if len(refs) == 0:
        raise ValueError(
            "No examples given: predictions and references are empty; pass at least one example."
        )
    if class_names is not None:
        class_names = [str(n) for n in class_names]
    if num_classes is None:
        if class_names is not None:
            num_classes = len(class_names)
        elif train_counts is not None:
            num_classes = len(train_counts)
        elif score_width is not None:
            num_classes = int(score_width)  # the score columns say how many classes exist
        else:
            num_classes = int(max(refs.max(), preds.max())) + 1
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} entries but num_classes is {num_classes}; give one name per class."
        )
    if score_width is not None and score_width != num_classes:
        raise ValueError(f"predictions have {score_width} score columns but num_classes is {num_classes}.")
    train_counts = _check_counts(train_counts, num_classes, "train_counts")
    _check_range(refs, num_classes, "references")
    _check_range(preds, num_classes, "predictions")
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    return preds, refs, num_classes, class_names, train_counts


def _check_counts(counts, num_classes: int, name: str) -> np.ndarray | None:
    """One non-negative integer count per class id (or None)."""
    if counts is None:
        return None
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (num_classes,):
        raise ValueError(
            f"{name} has {counts.size} entries but num_classes is {num_classes}; give one count per class id."
        )
    if np.any(counts < 0):
        raise ValueError(f"{name} must be non-negative.")
    return counts


def _check_options(n_bootstrap: int, confidence_level: float, worst_k: int = 1) -> None:
    if int(n_bootstrap) < 0:
        raise ValueError(f"n_bootstrap must be >= 0 (0 disables intervals), got {n_bootstrap}.")
    if not 0.0 < float(confidence_level) < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), e.g. 0.95; got {confidence_level}.")
    if int(worst_k) < 1:
        raise ValueError(f"worst_k must be >= 1, got {worst_k}.")


def _check_groups(groups: Mapping[str, Sequence] | None, n: int) -> None:
    for column, values in (groups or {}).items():
        if len(values) != n:
            raise ValueError(
                f"group column {column!r} has {len(values)} values but there are {n} references; "
                "give one group value per example."
            )


def _factorize(values, column: str, n: int) -> tuple[np.ndarray, list[str]]:
    """Integer codes and string keys for one group column."""
    arr = np.asarray(values)
    try:
        if arr.ndim != 1:
            raise TypeError  # e.g. tuples became a 2-D array
        uniques, codes = np.unique(arr, return_inverse=True)  # sorted order when values are comparable
        keys = [str(u.item() if isinstance(u, np.generic) else u) for u in uniques]
    except TypeError:
        # Mixed or unorderable hashables: keep first-appearance order.
        index: dict[Hashable, int] = {}
        codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=n)
        keys = [str(v) for v in index]
    if len(set(keys)) != len(keys):
        raise ValueError(
            f"group column {column!r} has distinct values with the same text; make them distinct."
        )
    return codes.reshape(-1).astype(np.int64), keys


def _group_summary(codes: np.ndarray, keys: list[str], correct: np.ndarray) -> dict:
    """fairlearn-style summary of pooled accuracy per group: by_group, min, max, difference, ratio."""
    support = np.bincount(codes, minlength=len(keys))
    hits = np.bincount(codes, weights=correct, minlength=len(keys))
    present = np.flatnonzero(support)
    acc = hits[present] / support[present]
    by_group = {keys[g]: {"accuracy": float(a), "support": int(support[g])} for g, a in zip(present, acc)}
    lo, hi = float(acc.min()), float(acc.max())
    return {
        "by_group": by_group,
        "min": lo,
        "max": hi,
        "difference": hi - lo,
        "ratio": lo / hi if hi > 0 else math.nan,  # all groups at 0 accuracy: ratio undefined
        "worst_group": keys[int(present[np.argmin(acc)])],  # first group in key order on ties
    }


def _combine(columns: list[tuple[np.ndarray, list[str]]]) -> tuple[np.ndarray, list[str]]:
    """Intersection codes/keys ("x&y") of several factorised columns, observed combinations only."""
    codes, keys = columns[0]
    for other_codes, other_keys in columns[1:]:
        joint = codes * len(other_keys) + other_codes
        uniques, codes = np.unique(joint, return_inverse=True)
        keys = [f"{keys[u // len(other_keys)]}&{other_keys[u % len(other_keys)]}" for u in uniques]
        codes = codes.reshape(-1)
    return codes, keys


def _group_reports(groups: Mapping[str, Sequence] | None, correct: np.ndarray) -> dict:
    """Per column, per pair of columns, and all columns together when there are more than two."""
    if not groups:
        return {}
    n = len(correct)
    correct = correct.astype(np.float64)  # bincount weights
    factorised = {str(col): _factorize(vals, str(col), n) for col, vals in groups.items()}
    names = list(factorised)
    out = {name: _group_summary(*factorised[name], correct) for name in names}
    combos = list(itertools.combinations(names, 2))
    if len(names) > 2:
        combos.append(tuple(names))
    for combo in combos:
        out["&".join(combo)] = _group_summary(*_combine([factorised[c] for c in combo]), correct)
    return out


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


def _warn_missing(missing_names: list[str]) -> None:
    shown = ", ".join(missing_names[:20]) + (
        f" and {len(missing_names) - 20} more" if len(missing_names) > 20 else ""
    )
    warnings.warn(
        f"{len(missing_names)} class(es) have no evaluation examples: {shown}. Their accuracy is NaN and they are "
        "excluded from balanced, worst-class and worst-k accuracy; evaluate on data that covers every class.",
        UserWarning,
        stacklevel=3,
    )


def subgroup_report(
    predictions,
    references,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    train_counts: Sequence[int] | None = None,
    shot_counts: Sequence[int] | None = None,
    groups: Mapping[str, Sequence] | None = None,
    shot_thresholds: tuple[int, int] = (100, 20),
    worst_k: int = 3,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
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
    accuracy with probability >= the level. ``n_bootstrap`` is kept for compatibility: nothing is
    resampled any more; 0 still disables intervals (NaN bounds, ``interval_method`` "none"), any positive
    value gives the exact intervals. ``seed`` is accepted and unused.
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
    _check_options(n_bootstrap, confidence_level, worst_k)
    _check_groups(groups, len(refs))
    n_bootstrap = int(n_bootstrap)

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
    intervals = n_bootstrap > 0
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
        "n_bootstrap": n_bootstrap,
        "missing_classes": missing,
        "per_class": per_class,
        "shot_thresholds": {"many_above": many_above, "few_below": few_below},
        "shot_counts": shot_counts.tolist() if shot_counts is not None else None,
        "shot_groups": _shot_groups(shot_counts, per_class_acc, support, class_names, many_above, few_below),
        "groups": _group_reports(groups, correct_rows),
    }


def flatten_report(report: Mapping, prefix: str = "", per_class: bool = True) -> dict[str, float]:
    """Flat scalar metrics for Trainer logs; ``prefix`` is prepended verbatim to every key.

    Keys: accuracy, balanced_accuracy, worst_class_accuracy, worst_k_accuracy, accuracy_class/<name>
    (only when ``per_class``), accuracy_many/medium/few (when train_counts were given) and
    accuracy_group/<column>/<value>. Missing classes and empty shot groups appear as NaN.
    """
    flat = {
        key: float(report[key])
        for key in ("accuracy", "balanced_accuracy", "worst_class_accuracy", "worst_k_accuracy")
    }
    for row in report["per_class"] if per_class else ():
        flat[f"accuracy_class/{row['name']}"] = float(row["accuracy"])
    for shot, summary in report.get("shot_groups", {}).items():
        flat[f"accuracy_{shot}"] = float(summary["accuracy"])
    for column, summary in report.get("groups", {}).items():
        for value, cell in summary["by_group"].items():
            flat[f"accuracy_group/{column}/{value}"] = float(cell["accuracy"])
    return {f"{prefix}{key}": value for key, value in flat.items()}
