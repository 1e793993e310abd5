"""The natural profile: the user's data as it is (every training row kept; holdout and, when the source has
none, a stratified test split carved)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from datasets import (
    DatasetDict,
)

from ..groups import MAX_GROUP_VALUES
from .group_splits import check_cells, group_info, group_keys, warn_untrained_cells
from .info import NATURAL, LongTailInfo, attach_long_tail_info
from .loaders import _open_source
from .longtail import class_names_of, holdout_sizes, plan_holdout, read_labels

logger = logging.getLogger(__name__)


def natural_order(counts: Sequence[int]) -> list[int]:
    """Class ids from most to least frequent (ties: lower id first) - the class_order of the natural profile."""
    return sorted(range(len(counts)), key=lambda c: (-int(counts[c]), c))


def measured_imbalance(counts: Sequence[int]) -> float:
    """max / min of the per-class counts (the natural profile's imbalance_factor); inf if a class is empty."""
    counts = [int(c) for c in counts]
    if not counts:
        return 1.0
    return math.inf if min(counts) == 0 else max(counts) / min(counts)


def stratified_test_sizes(class_counts: Sequence[int], test_fraction: float | None, min_per_class: int = 1):
    """Test rows per class for a stratified carve: ``test_fraction`` of each class rounded half up, at least
    ``min_per_class`` (no check that anything is left; see `natural_sizes`). None: no carve, all zeros."""
    if test_fraction is None:
        return [0] * len(class_counts)
    return [max(int(min_per_class), math.floor(test_fraction * int(n) + 0.5)) for n in class_counts]


def natural_sizes(
    class_counts: Sequence[int],
    class_names: Sequence[str],
    holdout_per_class: int | float,
    test_fraction: float | None = None,
    min_per_class: int = 1,
) -> tuple[list[int], list[int]]:
    """(test, holdout) rows per class for the natural profile: a stratified test split of ``test_fraction`` of
    each class (rounded half up, at least ``min_per_class``; none when ``test_fraction`` is None, i.e. the
    source has a test split), then the holdout from what is left. Raises, naming every class too small to keep
    a training row after both carvings, with its count and the count it needs. Only counts are read."""
    counts = [int(c) for c in class_counts]
    if test_fraction is not None:
        if isinstance(test_fraction, bool) or not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction must be a fraction in (0, 1), got {test_fraction!r}")
    holdout_sizes([], holdout_per_class, min_per_class)  # type / range checks of holdout_per_class

    def carve(n: int) -> tuple[int, int]:
        test = stratified_test_sizes([n], test_fraction, min_per_class)[0]
        rest = max(n - test, 0)
        if isinstance(holdout_per_class, (int, np.integer)):
            hold = int(holdout_per_class)
        else:
            hold = max(int(min_per_class), math.floor(holdout_per_class * rest + 0.5))
        return test, hold

    sizes = [carve(n) for n in counts]
    small = [c for c, (n, (t, h)) in enumerate(zip(counts, sizes)) if n - t - h < 1]
    if small:

        def needed(n: int) -> int:
            while n - sum(carve(n)) < 1:
                n += 1
            return n

        what = (
            f"{test_fraction:g} of each class (at least {min_per_class}) for the test split, "
            if test_fraction
            else ""
        )
        described = ", ".join(
            f"{class_names[c]!r} ({counts[c]} rows, needs {needed(max(counts[c], 1))})" for c in small
        )
        raise ValueError(
            f"class(es) too small for the natural profile: {described}. Each class needs {what}"
            f"holdout_per_class={holdout_per_class} for the holdout and at least 1 training row. Add images to "
            "these classes, drop them, or pass a smaller --holdout_per_class (0: no holdout)"
            + (" or supply a test split" if test_fraction else "")
            + "."
        )
    return [t for t, _ in sizes], [h for _, h in sizes]


def _check_label_range(names: list[str], label_column: str, **split_labels: np.ndarray) -> None:
    for split, labels in split_labels.items():
        if len(labels) and labels.max() >= len(names):
            raise ValueError(
                f"label column {label_column!r} of the {split} split holds label {int(labels.max())} but "
                f"there are {len(names)} class names ({names[:10]}{', ...' if len(names) > 10 else ''}); fix the "
                "labels or the ClassLabel names so that every label is an index into them"
            )


def _load_natural(
    name_or_path: str,
    *,
    holdout_per_class: int | float | None,
    test_fraction: float,
    label_column: str | None,
    image_column: str | None,
    seed: int,
    cache_dir: str | None,
    group_columns: list[str] | None = None,
    max_group_values: int = MAX_GROUP_VALUES,
    min_cell_rows: int | None = None,
) -> DatasetDict:
    """The natural profile: every training row kept; a stratified holdout (and test split, if the source has
    none) carved per class, spread over the class x group cells when there are ``group_columns``. Every size
    is checked on the label (and group) columns before a row is selected."""
    opened, label_column, image_column = _open_source(
        name_or_path,
        label_column=label_column,
        image_column=image_column,
        split_train="train",
        split_test="test",
        seed=seed,
        cache_dir=cache_dir,
        group_columns=group_columns,
    )
    train_src = opened["train"]
    labels = read_labels(train_src, label_column)
    names = class_names_of(train_src, label_column, labels)
    has_test = "test" in opened
    test_labels = read_labels(opened["test"], label_column) if has_test else np.zeros(0, dtype=np.int64)
    keys = group_keys(train_src, group_columns, max_group_values, f"the train split of {name_or_path!r}")
    test_keys = None
    if keys is not None and has_test:
        test_keys = group_keys(
            opened["test"], group_columns, max_group_values, f"the test split of {name_or_path!r}"
        )
    _check_label_range(names, label_column, train=labels, test=test_labels)
    counts = np.bincount(labels, minlength=len(names))[: len(names)]
    carve_fraction = None if has_test else float(test_fraction)
    test_sizes = stratified_test_sizes(counts, carve_fraction)
    if holdout_per_class is None:
        pool = [int(c) - t for c, t in zip(counts, test_sizes)]
        holdout_per_class = max(1, min(10, min(pool) // 5)) if pool else 1
    natural_sizes(counts, names, holdout_per_class, carve_fraction)  # names every too-small class
    if has_test:
        pool_pos, test_src = np.arange(len(labels)), opened["test"]
        test_carved = None
    else:
        pool_pos, test_pos = plan_holdout(labels, len(names), carve_fraction, seed=seed, groups=keys)
        test_labels = labels[test_pos]
        test_keys = None if keys is None else [keys[p] for p in test_pos]
        test_carved = {"kind": "stratified", "fraction": carve_fraction, "min_per_class": 1}
        logger.warning(
            "%r has no 'test' split: carving a stratified test split of %g of each class (at least 1 row; %d rows "
            "in all) from its training rows",
            name_or_path,
            carve_fraction,
            len(test_pos),
        )
    pool_labels = labels[pool_pos]
    pool_keys = None if keys is None else [keys[p] for p in pool_pos]
    train_pos, holdout_pos = plan_holdout(
        pool_labels, len(names), holdout_per_class, seed=seed, groups=pool_keys
    )
    if keys is not None:  # every check before a row is selected
        check_cells(
            "test split", (labels, keys), (test_labels, test_keys), names, min_cell_rows, "the train split"
        )
        if len(holdout_pos):
            # Every cell of the train split: one whose rows all went to the test split is named too.
            chosen = (pool_labels[holdout_pos], [pool_keys[p] for p in holdout_pos])
            check_cells("holdout", (labels, keys), chosen, names, min_cell_rows, "the train split")
        warn_untrained_cells((pool_labels, pool_keys), train_pos, names)
    if not has_test:
        test_src = train_src.select(test_pos)
    train = train_src.select(pool_pos[train_pos])
    pool_counts = np.bincount(pool_labels, minlength=len(names)).tolist()
    info = LongTailInfo(
        source=name_or_path,
        label_column=label_column,
        image_column=image_column,
        class_names=names,
        profile=NATURAL,
        imbalance_factor=measured_imbalance(pool_counts),
        seed=int(seed),
        rare_classes="label_id",
        class_order=natural_order(pool_counts),
        long_tail_counts=pool_counts,
        train_counts=np.bincount(pool_labels[train_pos], minlength=len(names)).tolist(),
        holdout_counts=np.bincount(pool_labels[holdout_pos], minlength=len(names)).tolist(),
        test_counts=np.bincount(test_labels, minlength=len(names)).tolist(),
        holdout_per_class=float(holdout_per_class)
        if isinstance(holdout_per_class, float)
        else int(holdout_per_class),
        test_carved=test_carved,
        **group_info(
            group_columns, max_group_values, names, (train, pool_labels[train_pos]), (test_src, test_labels)
        ),
    )
    return DatasetDict(
        train=attach_long_tail_info(train, info),
        holdout=attach_long_tail_info(train_src.select(pool_pos[holdout_pos]), info),
        test=attach_long_tail_info(test_src, info),
    )
