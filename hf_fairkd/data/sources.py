"""Where the balanced source data comes from: embedded digits, Hub presets, local folders, any Hub id."""

from __future__ import annotations

import logging
import os

import numpy as np
from datasets import DatasetDict

from ..groups import MAX_GROUP_VALUES
from .group_splits import check_cells, check_group_args, group_info, group_keys, warn_untrained_cells
from .loaders import PRESETS, _open_source
from .longtail import (
    ALL_PROFILES,
    NATURAL,
    LongTailInfo,
    _check_seed,
    attach_long_tail_info,
    class_names_of,
    normalize_rare_classes,
    plan_holdout,
    plan_long_tail,
    read_labels,
)
from .natural import _check_label_range, _load_natural, natural_sizes

logger = logging.getLogger(__name__)

# digits has only ~150 training rows per class, so rho=100 would leave the rarest class with one row.
DEFAULT_IMBALANCE = {"digits": 10.0}
DEFAULT_IMBALANCE_OTHER = 100.0
DEFAULT_HOLDOUT = {"digits": 5}
# The subgroups the recipes evaluate a benchmark on unless --group_columns says otherwise ("none": no groups).
DEFAULT_GROUP_COLUMNS = {"digits": ["stroke"], "digits_spurious": ["colour"]}
# The benchmark datasets default to a long tail built from their balanced training split; every other dataset
# (a folder, a Hub id, a saved dataset) defaults to the natural profile: the user's data as it is.
BENCHMARKS = ("digits", *PRESETS)
DEFAULT_TEST_FRACTION = 0.2  # natural profile, source without a test split: stratified, >= 1 row per class


def load_source(
    name_or_path: str,
    *,
    label_column: str | None = None,
    image_column: str | None = None,
    split_train: str = "train",
    split_test: str = "test",
    test_per_class: int | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    group_columns: list[str] | None = None,
    max_group_values: int = MAX_GROUP_VALUES,
    min_cell_rows: int | None = None,
) -> tuple[DatasetDict, str, str | None]:
    """Load a balanced source as (DatasetDict(train, test), label_column, image_column).

    ``name_or_path``: "digits" (embedded), "digits_spurious" (the digits with a colour, see `spurious`),
    "cifar10"/"cifar100" (Hub presets), a save_to_disk folder, a folder of one sub-folder of images per class
    (with a metadata.csv / metadata.jsonl of attributes or not), a Hub-like folder of parquet/csv files, a
    single data file, or any Hub id. If there is no ``split_test`` split, one is carved from train, with a
    warning: with ``test_fraction`` a stratified one (that fraction of each class, rounded half up, at least 1
    row), else a balanced one of ``test_per_class`` rows per class (default: a fifth of the smallest class).

    ``group_columns`` (attributes such as site; every column is kept anyway) are checked in both splits (at
    most ``max_group_values`` distinct values each), and a carved test split is spread over the class x group
    cells (see `group_splits`). A cell without test rows is a warning, or an error when it has fewer than
    ``min_cell_rows``.
    """
    group_columns = check_group_args(group_columns, max_group_values, min_cell_rows)
    opened, label_column, image_column = _open_source(
        name_or_path,
        label_column=label_column,
        image_column=image_column,
        split_train=split_train,
        split_test=split_test,
        seed=seed,
        cache_dir=cache_dir,
        group_columns=group_columns,
    )
    train = opened[split_train]
    keys = group_keys(
        train, group_columns, max_group_values, f"the {split_train!r} split of {name_or_path!r}"
    )
    if split_test in opened:
        test = opened[split_test]
        if keys is not None:
            test_keys = group_keys(
                test, group_columns, max_group_values, f"the {split_test!r} split of {name_or_path!r}"
            )
            labels = read_labels(train, label_column)
            names = class_names_of(train, label_column, labels)
            pool, chosen = (labels, keys), (read_labels(test, label_column), test_keys)
            check_cells("test split", pool, chosen, names, min_cell_rows, f"the {split_train!r} split")
        return DatasetDict(train=train, test=test), label_column, image_column
    labels = read_labels(train, label_column)
    num_classes = len(class_names_of(train, label_column, labels))

    def check_carved(test_pos: np.ndarray) -> None:
        if keys is not None:
            chosen = (labels[test_pos], [keys[p] for p in test_pos])
            names = class_names_of(train, label_column, labels)
            check_cells(
                "test split", (labels, keys), chosen, names, min_cell_rows, f"the {split_train!r} split"
            )

    if test_fraction is not None:
        names = class_names_of(train, label_column, labels)
        counts = np.bincount(labels, minlength=num_classes)[:num_classes]
        test_sizes, _ = natural_sizes(counts, names, 0, test_fraction)
        logger.warning(
            "%r has no %r split (splits: %s): carving a stratified test split of %g of each class (at least 1 "
            "row; %d rows in all) from %r",
            name_or_path,
            split_test,
            list(opened),
            test_fraction,
            sum(test_sizes),
            split_train,
        )
        train_pos, test_pos = plan_holdout(labels, num_classes, float(test_fraction), seed=seed, groups=keys)
        check_carved(test_pos)
        return (
            DatasetDict(train=train.select(train_pos), test=train.select(test_pos)),
            label_column,
            image_column,
        )
    counts = np.bincount(labels, minlength=num_classes)
    smallest = int(counts.min()) if len(counts) else 0
    if smallest < 2:
        raise ValueError(
            f"{name_or_path!r} has no {split_test!r} split and no test split is possible: class "
            f"{int(np.argmin(counts)) if len(counts) else 0} has {smallest} row(s) (each class needs >= 2); "
            f"supply a dataset with a {split_test!r} split or pass split_test=<an existing split>"
        )
    n_test = test_per_class if test_per_class is not None else max(1, smallest // 5)
    logger.warning(
        "%r has no %r split (splits: %s): carving a balanced test split of %d rows per class from %r",
        name_or_path,
        split_test,
        list(opened),
        n_test,
        split_train,
    )
    train_pos, test_pos = plan_holdout(labels, num_classes, n_test, seed=seed, groups=keys)
    check_carved(test_pos)
    return DatasetDict(train=train.select(train_pos), test=train.select(test_pos)), label_column, image_column


def resolve_profile(
    name_or_path: str, profile: str | None = None, imbalance_factor: float | None = None
) -> tuple[str, float | None]:
    """(profile, imbalance_factor) with the defaults filled in, checked before anything is loaded.

    No profile: "exp" when an imbalance factor is given or the dataset is a benchmark (digits, cifar10,
    cifar100); "natural" (the data as it is) for any other dataset. An exp/step profile without an imbalance
    factor takes 10 for digits, else 100. "natural" takes no imbalance factor (it is measured, not chosen):
    giving one is an error.
    """
    if profile is None:
        profile = "exp" if imbalance_factor is not None or name_or_path in BENCHMARKS else NATURAL
    if profile not in ALL_PROFILES:
        raise ValueError(f"profile must be one of {ALL_PROFILES}, got {profile!r}")
    if profile == NATURAL:
        if imbalance_factor is not None:
            raise ValueError(
                f"the natural profile keeps every training row as it is, so it takes no imbalance factor (got "
                f"imbalance_factor={imbalance_factor:g}); drop --imbalance_factor to train on the data as it is, "
                "or pass --long_tail_profile exp (or step) to build a long tail with that factor"
            )
        return profile, None
    if imbalance_factor is None:
        imbalance_factor = DEFAULT_IMBALANCE.get(name_or_path, DEFAULT_IMBALANCE_OTHER)
    return profile, imbalance_factor


def _check_params(imbalance_factor: float | None, profile: str, rare_classes: str, seed: int) -> None:
    """Cheap argument checks done before anything is loaded."""
    if profile == NATURAL:
        normalize_rare_classes(rare_classes)
        _check_seed(seed)
        return
    if not float(imbalance_factor) >= 1.0 or np.isinf(float(imbalance_factor)):
        raise ValueError(
            f"imbalance_factor must be a finite number >= 1 (n_max / n_min), got {imbalance_factor!r}; "
            "use 1 for a balanced dataset"
        )
    if profile not in ALL_PROFILES:
        raise ValueError(f"profile must be one of {ALL_PROFILES}, got {profile!r}")
    normalize_rare_classes(rare_classes)
    _check_seed(seed)


def load_long_tailed(
    name_or_path: str,
    *,
    imbalance_factor: float | None = None,
    profile: str | None = None,
    holdout_per_class: int | float | None = None,
    test_fraction: float | None = None,
    label_column: str | None = None,
    image_column: str | None = None,
    rare_classes: str = "label_id",
    seed: int = 0,
    n_max: int | None = None,
    step_fraction: float = 0.5,
    cache_dir: str | None = None,
    group_columns: list[str] | None = None,
    max_group_values: int = MAX_GROUP_VALUES,
    min_cell_rows: int | None = None,
) -> DatasetDict:
    """DatasetDict(train, holdout, test): long-tailed train, a stratified holdout carved from it, and the
    source's balanced test split untouched. LongTailInfo is attached to all three splits.

    Profile (see `resolve_profile`): "exp" for the benchmarks digits / cifar10 / cifar100 (or when an
    imbalance factor is given), else "natural": every training row kept, only the holdout carved (and, if the
    source has no test split, a stratified test split of ``test_fraction`` of each class, default 0.2, at
    least 1 row per class); its imbalance_factor is the measured max / min of the per-class training counts
    before the holdout. Defaults: imbalance_factor 10 for "digits" (about 150 rows per class), else 100 (the
    CIFAR-LT standard). holdout_per_class 5 for "digits", else min(10, rarest long-tail class // 5), i.e. at
    most a fifth of the rarest class (CIFAR-10-LT: 10, CIFAR-100-LT at rho=100: 1); at least 1 for natural.

    Groups: ``group_columns`` (attribute columns such as site; at most ``max_group_values`` distinct values
    each) are kept in every split; the holdout and a carved test split keep the per-class sizes above but are
    spread over the class x group cells, so that every cell can be measured (`group_splits`); a cell left
    without holdout or test rows is a warning, or an error when it has fewer than ``min_cell_rows``. The
    long-tail subsampling itself stays per class. LongTailInfo then records the group columns and the train
    and test count of every group and class x group cell.
    """
    profile, imbalance_factor = resolve_profile(name_or_path, profile, imbalance_factor)
    _check_params(imbalance_factor, profile, rare_classes, seed)
    group_columns = check_group_args(group_columns, max_group_values, min_cell_rows)
    groups = {
        "group_columns": group_columns,
        "max_group_values": max_group_values,
        "min_cell_rows": min_cell_rows,
    }
    if profile == NATURAL:
        return _load_natural(
            name_or_path,
            holdout_per_class=holdout_per_class,
            test_fraction=DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction,
            label_column=label_column,
            image_column=image_column,
            seed=seed,
            cache_dir=cache_dir,
            **groups,
        )
    source, label_column, image_column = load_source(
        name_or_path,
        label_column=label_column,
        image_column=image_column,
        test_fraction=test_fraction,
        seed=seed,
        cache_dir=cache_dir,
        **groups,
    )
    train_src = source["train"]
    labels = read_labels(train_src, label_column)
    names = class_names_of(train_src, label_column, labels)
    test_labels = read_labels(source["test"], label_column)
    _check_label_range(names, label_column, train=labels, test=test_labels)
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
    if holdout_per_class is None:
        holdout_per_class = DEFAULT_HOLDOUT.get(name_or_path, min(10, min(per_class) // 5))
        if holdout_per_class == 0:
            logger.warning("the rarest long-tail class has %d rows: no holdout is carved", min(per_class))
    lt_labels = labels[keep]
    keys = group_keys(train_src, group_columns, max_group_values, f"the train split of {name_or_path!r}")
    lt_keys = None if keys is None else [keys[p] for p in keep]
    train_pos, holdout_pos = plan_holdout(lt_labels, len(names), holdout_per_class, seed=seed, groups=lt_keys)
    if lt_keys is not None and len(holdout_pos):
        chosen = (lt_labels[holdout_pos], [lt_keys[p] for p in holdout_pos])
        check_cells(
            "holdout", (lt_labels, lt_keys), chosen, names, min_cell_rows, "the long-tailed train split"
        )
        warn_untrained_cells((lt_labels, lt_keys), train_pos, names)
    # Only now are rows selected: one select per split, on the original train split.
    train, holdout = train_src.select(keep[train_pos]), train_src.select(keep[holdout_pos])
    info = LongTailInfo(
        source=name_or_path,
        label_column=label_column,
        image_column=image_column,
        class_names=names,
        profile=profile,
        imbalance_factor=float(imbalance_factor),
        seed=int(seed),
        rare_classes=normalize_rare_classes(rare_classes),
        class_order=order,
        long_tail_counts=per_class,
        train_counts=np.bincount(lt_labels[train_pos], minlength=len(names)).tolist(),
        holdout_counts=np.bincount(lt_labels[holdout_pos], minlength=len(names)).tolist(),
        test_counts=np.bincount(test_labels, minlength=len(names)).tolist(),
        holdout_per_class=holdout_per_class
        if isinstance(holdout_per_class, float)
        else int(holdout_per_class),
        **group_info(
            group_columns,
            max_group_values,
            names,
            (train, lt_labels[train_pos]),
            (source["test"], test_labels),
        ),
    )
    return DatasetDict(
        train=attach_long_tail_info(train, info),
        holdout=attach_long_tail_info(holdout, info),
        test=attach_long_tail_info(source["test"], info),
    )


def looks_like_hub_id(name: str | None) -> bool:
    """Whether ``name`` reads as a Hub repository id ('owner/name') and is not a local path."""
    from hf_fairkd.results.hub import is_repo_id

    return bool(name) and not os.path.exists(name) and is_repo_id(name, namespaced=True)


def hub_dataset_ids(dataset_name: str) -> list[str] | None:
    """The Hub dataset id(s) ``dataset_name`` stands for (a preset's, or the name itself when it reads as
    one), for a model card's ``datasets:``; None for the embedded digits and local folders."""
    hub_id = PRESETS[dataset_name]["hub_id"] if dataset_name in PRESETS else None
    hub_id = hub_id or (dataset_name if looks_like_hub_id(dataset_name) else None)
    return [hub_id] if hub_id else None
