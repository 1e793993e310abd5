"""Input checks shared by the per-class, paired and group reports (cheap, before any work is done)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np


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


def _check_options(confidence_level: float, worst_k: int = 1) -> None:
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
