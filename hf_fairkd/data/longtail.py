"""Long-tailed versions of balanced classification datasets, with metadata that travels with the data.

Everything here works on the label column only (read as one Arrow column) and builds the result with
``Dataset.select``: images are never decoded, so building CIFAR-100-LT from 50,000 rows takes well under a
second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from datasets import ClassLabel, Dataset, Image, Value

from .group_splits import take_by_cell
from .info import (  # noqa: F401 - NATURAL, ALL_PROFILES: the profiles are named here for users
    ALL_PROFILES,
    NATURAL,
    PROFILES,
    RARE_CLASS_ALIASES,
    RARE_CLASSES,
    LongTailInfo,
    attach_long_tail_info,
    long_tail_info,
)

# Relative guard against pow() landing a hair below an exact integer: 100 * 32 ** (-2 / 5) is
# 24.999999999999996 in floats but exactly 25 (likewise 5000 * 100 ** -1 must give 50, never 49).
_EPS = 1e-9


# ----------------------------------------------------------------------------------------------- counts
def long_tail_counts(
    n_max: int, num_classes: int, imbalance_factor: float, profile: str = "exp", step_fraction: float = 0.5
) -> list[int]:
    """Rows per class rank (most frequent first) for a long-tailed profile.

    exp:  n_i = floor(n_max * rho ** (-i / (m - 1))), i = 0..m-1 (Cui et al. 2019 / Cao et al. 2019).
    step: the last ceil(step_fraction * m) ranks get floor(n_max / rho), the others n_max.
    """
    if isinstance(n_max, bool) or not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise ValueError(f"n_max must be an integer >= 1, got {n_max!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(
            f"num_classes must be an integer >= 2 (a long tail needs classes), got {num_classes!r}"
        )
    rho = float(imbalance_factor)
    if not rho >= 1.0 or math.isinf(rho):
        raise ValueError(
            f"imbalance_factor must be a finite number >= 1 (n_max / n_min), got {imbalance_factor!r}; "
            "use 1 for a balanced dataset"
        )
    n_max, m = int(n_max), int(num_classes)
    if profile == "exp":
        counts = [math.floor(n_max * rho ** (-i / (m - 1)) * (1 + _EPS)) for i in range(m)]
    elif profile == "step":
        if not 0.0 < step_fraction < 1.0:
            raise ValueError(f"step_fraction must be in (0, 1), got {step_fraction!r}")
        n_minor = math.ceil(step_fraction * m * (1 - _EPS))
        if n_minor >= m:
            raise ValueError(
                f"step_fraction={step_fraction} with {m} classes makes every class a minority class; "
                f"use step_fraction <= {(m - 1) / m:.4g}"
            )
        low = math.floor(n_max / rho * (1 + _EPS))
        counts = [n_max] * (m - n_minor) + [low] * n_minor
    else:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if counts[-1] < 1:
        first_zero = next(i for i, c in enumerate(counts) if c < 1)
        raise ValueError(
            f"imbalance_factor={imbalance_factor} with n_max={n_max} leaves class rank {first_zero} "
            f"(0 = most frequent) with 0 rows; use imbalance_factor <= {n_max} (the largest that keeps "
            "every class at >= 1 row) or a larger n_max"
        )
    return counts


# ------------------------------------------------------------------------------------- column helpers
LABEL_NAMES = ("label", "labels", "fine_label")


def detect_label_column(dataset: Dataset) -> str:
    """A ClassLabel named label/labels/fine_label, else the first ClassLabel, else an int column so named."""
    features = dataset.features
    class_labels = [n for n, f in features.items() if isinstance(f, ClassLabel)]
    for name in [n for n in LABEL_NAMES if n in class_labels] + class_labels + list(LABEL_NAMES):
        if name in features:
            return name
    raise ValueError(
        f"could not find a label column (a ClassLabel, or one named {list(LABEL_NAMES)}); available columns: "
        f"{list(features)}; pass label_column=<one of them>"
    )


def detect_image_column(dataset: Dataset) -> str | None:
    """Name of the first ``datasets.Image`` column, or None."""
    return next((name for name, f in dataset.features.items() if isinstance(f, Image)), None)


def check_label_column(dataset: Dataset, label_column: str) -> None:
    """Raise a ValueError unless ``label_column`` exists and is integer-valued (ClassLabel or int)."""
    features = dataset.features
    if label_column not in features:
        raise ValueError(
            f"label column {label_column!r} not found; available columns: {list(features)}; "
            "pass label_column=<one of them>"
        )
    feature = features[label_column]
    if isinstance(feature, ClassLabel):
        return
    if not (isinstance(feature, Value) and feature.dtype.startswith(("int", "uint"))):
        raise ValueError(
            f"label column {label_column!r} has feature {feature}, not a ClassLabel or integer; "
            f"cast it first, e.g. dataset.class_encode_column({label_column!r})"
        )


def read_labels(dataset: Dataset, label_column: str) -> np.ndarray:
    """The label column as an int64 array (one Arrow column read; respects earlier ``select`` calls)."""
    check_label_column(dataset, label_column)
    if len(dataset) == 0:
        return np.zeros(0, dtype=np.int64)
    table = dataset.select_columns([label_column]).with_format("arrow")[:]
    labels = table.column(label_column).to_numpy().astype(np.int64)
    if labels.min() < 0:
        raise ValueError(
            f"label column {label_column!r} holds negative labels (e.g. -1 for unlabelled rows); "
            "filter those rows out first"
        )
    return labels


def class_names_of(dataset: Dataset, label_column: str, labels: np.ndarray) -> list[str]:
    """ClassLabel names, or "0".."k" for a plain integer column (k = largest label)."""
    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]


# -------------------------------------------------------------------------------------------- planning
def _class_rng(seed: int, salt: int, class_id: int) -> np.random.Generator:
    # One independent stream per (purpose, class): a class's draw does not depend on the other classes.
    return np.random.default_rng([seed, salt, class_id])


def normalize_rare_classes(rare_classes: str) -> str:
    value = RARE_CLASS_ALIASES.get(rare_classes, rare_classes)
    if value not in RARE_CLASSES:
        options = sorted(RARE_CLASSES + tuple(RARE_CLASS_ALIASES))
        raise ValueError(f"rare_classes must be one of {options}, got {rare_classes!r}")
    return value


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def plan_long_tail(
    labels: np.ndarray,
    num_classes: int,
    imbalance_factor: float,
    *,
    profile: str = "exp",
    rare_classes: str = "label_id",
    seed: int = 0,
    n_max: int | None = None,
    step_fraction: float = 0.5,
) -> tuple[np.ndarray, list[int], list[int]]:
    """Row positions to keep (sorted), class_order, and long-tail counts per class id. No data is touched."""
    _check_seed(seed)
    rare_classes = normalize_rare_classes(rare_classes)
    available = np.bincount(labels, minlength=num_classes)[:num_classes]
    if len(labels) and labels.max() >= num_classes:
        raise ValueError(f"labels go up to {labels.max()} but the dataset declares {num_classes} classes")
    if n_max is None:
        # Default: the smallest class size, so that every class can supply the head quota.
        n_max = int(available.min())
        if n_max == 0:
            empty = int(np.argmin(available))
            raise ValueError(f"class {empty} has no rows; every class needs rows to build a long tail")
    ranks = long_tail_counts(n_max, num_classes, imbalance_factor, profile, step_fraction)
    if rare_classes == "label_id":
        order = list(range(num_classes))
    elif rare_classes == "reversed":
        order = list(range(num_classes - 1, -1, -1))
    else:
        order = [int(c) for c in np.random.default_rng([seed, 0]).permutation(num_classes)]
    per_class = [0] * num_classes
    for rank, class_id in enumerate(order):
        per_class[class_id] = ranks[rank]
    for class_id, (need, have) in enumerate(zip(per_class, available)):
        if need > have:
            raise ValueError(
                f"class {class_id} needs {need} rows for this long tail but has only {have}; "
                f"lower n_max (it must be <= {int(available.min())} for every order) or leave n_max=None"
            )
    chosen = []
    for class_id in range(num_classes):
        rows = np.flatnonzero(labels == class_id)
        chosen.append(rows[_class_rng(seed, 1, class_id).permutation(len(rows))[: per_class[class_id]]])
    # Sorted positions keep the source order (and make reads sequential); trainers shuffle anyway.
    return np.sort(np.concatenate(chosen)), order, per_class


def holdout_sizes(
    class_counts: Sequence[int], holdout_per_class: int | float, min_per_class: int = 1
) -> list[int]:
    """Holdout rows per class: an int is rows per class; a float in (0, 1) is a fraction, rounded half up,
    at least ``min_per_class``. Raises before any work if a class would keep no training row."""
    counts = [int(c) for c in class_counts]
    if isinstance(holdout_per_class, bool) or not isinstance(holdout_per_class, (int, float, np.number)):
        raise ValueError(f"holdout_per_class must be an int or a float in (0, 1), got {holdout_per_class!r}")
    if isinstance(holdout_per_class, (int, np.integer)):
        if holdout_per_class < 0:
            raise ValueError(f"holdout_per_class must be >= 0, got {holdout_per_class}")
        sizes = [int(holdout_per_class)] * len(counts)
    else:
        if not 0.0 < holdout_per_class < 1.0:
            raise ValueError(
                f"a float holdout_per_class is a fraction and must be in (0, 1), got {holdout_per_class}; "
                "pass an int for a number of rows per class"
            )
        sizes = [max(int(min_per_class), math.floor(holdout_per_class * c + 0.5)) for c in counts]
    too_big = [c for c, (size, count) in enumerate(zip(sizes, counts)) if size > 0 and size >= count]
    if too_big:
        class_id = min(too_big, key=lambda c: counts[c])  # report the smallest offending class
        size, count = sizes[class_id], counts[class_id]
        fix = f"holdout_per_class <= {min(counts) - 1}"
        if not isinstance(holdout_per_class, (int, np.integer)):
            fix = f"a smaller fraction, a smaller min_per_class, or an int {fix}"
        raise ValueError(
            f"holdout larger than a class: class {class_id} has {count} rows and a holdout of {size} "
            f"would leave it no training row; the holdout may take at most {count - 1} rows of this "
            f"class; pass {fix}"
        )
    return sizes


def plan_holdout(
    labels: np.ndarray,
    num_classes: int,
    holdout_per_class: int | float,
    *,
    seed: int = 0,
    min_per_class: int = 1,
    groups: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, holdout) row positions, stratified per class and disjoint.

    ``groups``: one group key per row (see `group_splits.group_keys`); the per-class sizes stay the same, but
    each class's holdout is spread over its class x group cells (`group_splits.allocate_cells`)."""
    _check_seed(seed)
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    sizes = holdout_sizes(counts, holdout_per_class, min_per_class)
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"groups has {len(groups)} keys for {len(labels)} labels; give one key per row")
    train, holdout = [], []
    for class_id in range(num_classes):
        rows = np.flatnonzero(labels == class_id)
        rows = rows[_class_rng(seed, 2, class_id).permutation(len(rows))]
        if groups is not None:
            taken, left = take_by_cell(rows, [groups[r] for r in rows], sizes[class_id])
            holdout.append(taken)
            train.append(left)
            continue
        holdout.append(rows[: sizes[class_id]])
        train.append(rows[sizes[class_id] :])
    empty = np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(train or [empty])), np.sort(np.concatenate(holdout or [empty]))


# ------------------------------------------------------------------------------------------ public API
def make_long_tailed(
    dataset: Dataset,
    imbalance_factor: float,
    *,
    profile: str = "exp",
    label_column: str = "label",
    rare_classes: str = "label_id",
    seed: int = 0,
    n_max: int | None = None,
    step_fraction: float = 0.5,
    source: str | None = None,
) -> Dataset:
    """A seeded long-tailed subset of ``dataset`` with LongTailInfo attached.

    rare_classes: "label_id" (alias "last_ids", default, the CIFAR-LT convention: class 0 most frequent,
    the last id rarest), "reversed" (alias "first_ids": class 0 rarest) or "permutation" (seeded order).
    n_max defaults to the smallest class size, so every class can supply its quota.
    """
    labels = read_labels(dataset, label_column)
    names = class_names_of(dataset, label_column, labels)
    keep, order, per_class = plan_long_tail(
        labels,
        len(names),
        imbalance_factor,
        profile=profile,
        rare_classes=rare_classes,
        seed=seed,
        n_max=n_max,
        step_fraction=step_fraction,
    )
    info = LongTailInfo(
        source=source or dataset.info.dataset_name or "in-memory",
        label_column=label_column,
        image_column=detect_image_column(dataset),
        class_names=names,
        profile=profile,
        imbalance_factor=float(imbalance_factor),
        seed=int(seed),
        rare_classes=normalize_rare_classes(rare_classes),
        class_order=order,
        long_tail_counts=per_class,
        train_counts=list(per_class),
        holdout_counts=[0] * len(names),
        test_counts=[],
        holdout_per_class=0,
    )
    return attach_long_tail_info(dataset.select(keep), info)


def split_holdout(
    dataset: Dataset,
    holdout_per_class: int | float,
    *,
    label_column: str = "label",
    seed: int = 0,
    min_per_class: int = 1,
) -> tuple[Dataset, Dataset]:
    """Stratified, disjoint (train, holdout) split. If ``dataset`` carries LongTailInfo, both outputs get it
    with train_counts / holdout_counts / holdout_per_class updated."""
    labels = read_labels(dataset, label_column)
    num_classes = len(class_names_of(dataset, label_column, labels))
    train_pos, holdout_pos = plan_holdout(
        labels, num_classes, holdout_per_class, seed=seed, min_per_class=min_per_class
    )
    train, holdout = dataset.select(train_pos), dataset.select(holdout_pos)
    try:
        info = long_tail_info(dataset)
    except ValueError:
        return train, holdout
    info.train_counts = np.bincount(labels[train_pos], minlength=num_classes).tolist()
    info.holdout_counts = np.bincount(labels[holdout_pos], minlength=num_classes).tolist()
    info.holdout_per_class = (
        int(holdout_per_class)
        if isinstance(holdout_per_class, (int, np.integer))
        else float(holdout_per_class)
    )
    return attach_long_tail_info(train, info), attach_long_tail_info(holdout, info)
