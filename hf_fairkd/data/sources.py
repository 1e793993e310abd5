"""Where the balanced source data comes from: embedded digits, Hub presets, local folders, any Hub id."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    DatasetInfo,
    Features,
    Image,
    load_dataset,
    load_from_disk,
)

from .image_folders import _FILE_BUILDERS, _is_image_folder, check_image_folder
from .longtail import (
    PROFILES,
    LongTailInfo,
    _check_seed,
    attach_long_tail_info,
    check_label_column,
    class_names_of,
    detect_image_column,
    normalize_rare_classes,
    plan_holdout,
    plan_long_tail,
    read_labels,
)

logger = logging.getLogger(__name__)

# Presets: short name -> Hub id and its column names.
PRESETS = {
    "cifar10": {"hub_id": "uoft-cs/cifar10", "image_column": "img", "label_column": "label"},
    "cifar100": {"hub_id": "uoft-cs/cifar100", "image_column": "img", "label_column": "fine_label"},
}
# digits has only ~150 training rows per class, so rho=100 would leave the rarest class with one row.
DEFAULT_IMBALANCE = {"digits": 10.0}
DEFAULT_IMBALANCE_OTHER = 100.0
DEFAULT_HOLDOUT = {"digits": 5}
LABEL_NAMES = ("label", "labels", "fine_label")


def load_digits_dataset(test_per_class: int = 30, seed: int = 0) -> DatasetDict:
    """scikit-learn's 1,797 8x8 digits (shipped with sklearn, no download) as DatasetDict(train, test).

    ``image`` is a grayscale ("L") PIL image with pixels round(v * 255 / 16), v in 0..16; ``label`` is a
    ClassLabel "0".."9". The test split holds ``test_per_class`` rows of every class (seeded), the rest train.
    """
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    info = DatasetInfo(
        dataset_name="digits",
        description="scikit-learn load_digits(): 1,797 8x8 handwritten digits (UCI optdigits test set).",
        features=features,
    )
    full = Dataset.from_dict(
        {"image": [PILImage.fromarray(p) for p in pixels], "label": labels}, features=features, info=info
    )
    train_pos, test_pos = plan_holdout(labels, 10, test_per_class, seed=seed)
    return DatasetDict(train=full.select(train_pos), test=full.select(test_pos))


def _load_hub(hub_id: str, cache_dir: str | None):
    try:
        return load_dataset(hub_id, cache_dir=cache_dir)
    except Exception as err:  # datasets raises many types; keep the original as the cause
        raise ValueError(
            f"could not load dataset {hub_id!r}: {err}; pass a local path or check the id"
        ) from err


def _empty_saved_splits(path: str) -> list[str]:
    """Splits of a save_to_disk folder that hold no data file (no rows)."""
    dict_file = os.path.join(path, "dataset_dict.json")
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        splits = json.loads(Path(dict_file).read_text())["splits"] if os.path.exists(dict_file) else [""]
        states = {split: Path(path, split, "state.json") for split in splits}
        return [
            s or "train"
            for s, f in states.items()
            if f.exists() and not json.loads(f.read_text())["_data_files"]
        ]
    return []  # an unusual layout: let load_from_disk report on it


def _load_local(path: str, cache_dir: str | None):
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext not in _FILE_BUILDERS:
            raise ValueError(
                f"{path!r} is a file of unknown type; pass a folder or one of {sorted(_FILE_BUILDERS)}"
            )
        return load_dataset(_FILE_BUILDERS[ext], data_files={"train": path}, cache_dir=cache_dir)
    if any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json")):
        empty = _empty_saved_splits(path)
        if empty:  # datasets writes no shard for an empty split, then fails to read it back (IndexError)
            raise ValueError(
                f"{path!r} (saved with save_to_disk) has no rows in split(s) {empty}; add rows to them or drop "
                "them, then save again (without a 'test' split, a balanced one is carved from train)"
            )
        return load_from_disk(path)  # written by save_to_disk
    if _is_image_folder(path):
        check_image_folder(path)
        return load_dataset("imagefolder", data_dir=path, cache_dir=cache_dir)
    # A Hub-like layout (README.md with configs, or plain_text/train-*.parquet etc.)
    try:
        return load_dataset(path, cache_dir=cache_dir)
    except ValueError as err:
        if "corresponds to no data" not in str(err):
            raise
        raise ValueError(  # datasets' own words ('Instruction "test" corresponds to no data!') name no fix
            f"{path!r} has an empty split ({err}); add rows to it or remove its files (without a 'test' split, a "
            "balanced one is carved from train)"
        ) from None


def _raw_load(name_or_path: str, cache_dir: str | None):
    if name_or_path in PRESETS:
        return _load_hub(PRESETS[name_or_path]["hub_id"], cache_dir)
    expanded = os.path.expanduser(name_or_path)
    if os.path.exists(expanded):
        return _load_local(expanded, cache_dir)
    looks_like_path = (
        name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path
    )
    from hf_fairkd.results.hub import is_repo_id

    if looks_like_path or not is_repo_id(name_or_path):
        raise ValueError(
            f"{name_or_path!r} does not exist and is not a plausible Hub id (owner/name); pass an existing "
            f"folder, a Hub id, 'digits' or one of the presets {sorted(PRESETS)}"
        )
    return _load_hub(name_or_path, cache_dir)


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


def load_source(
    name_or_path: str,
    *,
    label_column: str | None = None,
    image_column: str | None = None,
    split_train: str = "train",
    split_test: str = "test",
    test_per_class: int | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
) -> tuple[DatasetDict, str, str | None]:
    """Load a balanced source as (DatasetDict(train, test), label_column, image_column).

    ``name_or_path``: "digits" (embedded), "cifar10"/"cifar100" (Hub presets), a save_to_disk folder, a
    folder of one sub-folder of images per class, a Hub-like folder of parquet/csv files, a single data
    file, or any Hub id. If there is no ``split_test`` split, a balanced test split of ``test_per_class``
    rows per class (default: a fifth of the smallest class) is carved from train, with a warning.
    """
    preset = PRESETS.get(name_or_path, {})
    if name_or_path == "digits":
        loaded, preset = load_digits_dataset(seed=seed), {"label_column": "label", "image_column": "image"}
    else:
        loaded = _raw_load(name_or_path, cache_dir)
    if isinstance(loaded, Dataset):
        loaded = DatasetDict({split_train: loaded})
    if not isinstance(loaded, DatasetDict):
        raise ValueError(
            f"{name_or_path!r} loaded as {type(loaded).__name__}; expected a Dataset or DatasetDict"
        )
    if split_train not in loaded:
        raise ValueError(
            f"{name_or_path!r} has no split {split_train!r}; its splits are {list(loaded)}; pass split_train=..."
        )
    train = loaded[split_train]
    label_column = label_column or preset.get("label_column") or detect_label_column(train)
    check_label_column(train, label_column)
    image_column = image_column or preset.get("image_column") or detect_image_column(train)
    if image_column is not None and image_column not in train.features:
        raise ValueError(
            f"image column {image_column!r} not found; available columns: {list(train.features)}; "
            "pass image_column=<one of them>"
        )
    if split_test in loaded:
        test = loaded[split_test]
        check_label_column(test, label_column)
    else:
        labels = read_labels(train, label_column)
        num_classes = len(class_names_of(train, label_column, labels))
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
            list(loaded),
            n_test,
            split_train,
        )
        train_pos, test_pos = plan_holdout(labels, num_classes, n_test, seed=seed)
        train, test = train.select(train_pos), train.select(test_pos)
    return DatasetDict(train=train, test=test), label_column, image_column


def _check_params(imbalance_factor: float, profile: str, rare_classes: str, seed: int) -> None:
    """Cheap argument checks done before anything is loaded."""
    if not float(imbalance_factor) >= 1.0 or np.isinf(float(imbalance_factor)):
        raise ValueError(
            f"imbalance_factor must be a finite number >= 1 (n_max / n_min), got {imbalance_factor!r}; "
            "use 1 for a balanced dataset"
        )
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    normalize_rare_classes(rare_classes)
    _check_seed(seed)


def load_long_tailed(
    name_or_path: str,
    *,
    imbalance_factor: float | None = None,
    profile: str = "exp",
    holdout_per_class: int | float | None = None,
    label_column: str | None = None,
    image_column: str | None = None,
    rare_classes: str = "label_id",
    seed: int = 0,
    n_max: int | None = None,
    step_fraction: float = 0.5,
    cache_dir: str | None = None,
) -> DatasetDict:
    """DatasetDict(train, holdout, test): long-tailed train, a stratified holdout carved from it, and the
    source's balanced test split untouched. LongTailInfo is attached to all three splits.

    Defaults: imbalance_factor 10 for "digits" (about 150 rows per class), else 100 (the CIFAR-LT
    standard). holdout_per_class 5 for "digits", else min(10, rarest long-tail class // 5), i.e. at most
    a fifth of the rarest class (CIFAR-10-LT: 10, CIFAR-100-LT at rho=100: 1).
    """
    if imbalance_factor is None:
        imbalance_factor = DEFAULT_IMBALANCE.get(name_or_path, DEFAULT_IMBALANCE_OTHER)
    _check_params(imbalance_factor, profile, rare_classes, seed)
    source, label_column, image_column = load_source(
        name_or_path, label_column=label_column, image_column=image_column, seed=seed, cache_dir=cache_dir
    )
    train_src = source["train"]
    labels = read_labels(train_src, label_column)
    names = class_names_of(train_src, label_column, labels)
    test_labels = read_labels(source["test"], label_column)
    for split, split_labels in (("train", labels), ("test", test_labels)):
        if len(split_labels) and split_labels.max() >= len(names):
            raise ValueError(
                f"label column {label_column!r} of the {split} split holds label {int(split_labels.max())} but "
                f"there are {len(names)} class names ({names[:10]}{', ...' if len(names) > 10 else ''}); fix the "
                "labels or the ClassLabel names so that every label is an index into them"
            )
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
    train_pos, holdout_pos = plan_holdout(lt_labels, len(names), holdout_per_class, seed=seed)
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
