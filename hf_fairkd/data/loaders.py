"""Reading the source data: the embedded digits, Hub datasets, saved datasets and local folders."""

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
    Value,
    load_dataset,
    load_from_disk,
)

from .image_folders import _FILE_BUILDERS, _is_image_folder, check_image_folder
from .longtail import check_label_column, detect_image_column, detect_label_column, plan_holdout
from .metadata_folders import is_metadata_image_folder, load_metadata_folder

logger = logging.getLogger(__name__)

# The digits with a colour correlated with the class in train and independent of it in test (data/spurious.py).
SPURIOUS_DIGITS = "digits_spurious"

# Presets: short name -> Hub id and its column names.
PRESETS = {
    "cifar10": {"hub_id": "uoft-cs/cifar10", "image_column": "img", "label_column": "label"},
    "cifar100": {"hub_id": "uoft-cs/cifar100", "image_column": "img", "label_column": "fine_label"},
}


def _open_source(
    name_or_path: str,
    *,
    label_column: str | None,
    image_column: str | None,
    split_train: str,
    split_test: str,
    seed: int,
    cache_dir: str | None,
    group_columns: list[str] | None = None,
) -> tuple[DatasetDict, str, str | None]:
    """The loaded splits (train, and test if the source has one) with checked label / image columns.
    ``group_columns`` are only checked here for an image folder with metadata (against the metadata's columns);
    the callers read them."""
    preset = PRESETS.get(name_or_path, {})
    if name_or_path == "digits":
        loaded, preset = load_digits_dataset(seed=seed), {"label_column": "label", "image_column": "image"}
    elif name_or_path == SPURIOUS_DIGITS:
        from .spurious import make_spurious  # spurious reads the digits from here

        loaded = make_spurious(load_digits_dataset(seed=seed), seed=seed)
        preset = {"label_column": "label", "image_column": "image"}
    else:
        loaded = _raw_load(name_or_path, cache_dir, label_column=label_column, group_columns=group_columns)
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
        check_label_column(loaded[split_test], label_column)
        return DatasetDict({split_train: train, split_test: loaded[split_test]}), label_column, image_column
    return DatasetDict({split_train: train}), label_column, image_column


def load_digits_dataset(test_per_class: int = 30, seed: int = 0) -> DatasetDict:
    """scikit-learn's 1,797 8x8 digits (shipped with sklearn, no download) as DatasetDict(train, test).

    ``image`` is a grayscale ("L") PIL image with pixels round(v * 255 / 16), v in 0..16; ``label`` is a
    ClassLabel "0".."9"; ``stroke`` is an attribute of the image, the subgroup of the default run: "bold" when
    its ink (the sum of its pixels) is above the 75th percentile of all 1,797 images, else "regular" (bold is a
    quarter of the rows, from 12% of the 1s to 45% of the 8s). The test split holds ``test_per_class`` rows of
    every class (seeded), the rest train.
    """
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    ink = digits.images.reshape(len(labels), -1).sum(axis=1)
    stroke = np.where(ink > np.percentile(ink, 75), "bold", "regular")
    features = Features(
        {"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)]), "stroke": Value("string")}
    )
    info = DatasetInfo(
        dataset_name="digits",
        description="scikit-learn load_digits(): 1,797 8x8 handwritten digits (UCI optdigits test set).",
        features=features,
    )
    full = Dataset.from_dict(
        {"image": [PILImage.fromarray(p) for p in pixels], "label": labels, "stroke": stroke.tolist()},
        features=features,
        info=info,
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


def _load_local(
    path: str, cache_dir: str | None, label_column: str | None = None, group_columns: list[str] | None = None
):
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
    if is_metadata_image_folder(path):  # datasets would drop the class-folder labels: built here instead
        return load_metadata_folder(path, label_column=label_column, group_columns=group_columns)
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


def _raw_load(
    name_or_path: str,
    cache_dir: str | None,
    label_column: str | None = None,
    group_columns: list[str] | None = None,
):
    if name_or_path in PRESETS:
        return _load_hub(PRESETS[name_or_path]["hub_id"], cache_dir)
    expanded = os.path.expanduser(name_or_path)
    if os.path.exists(expanded):
        return _load_local(expanded, cache_dir, label_column, group_columns)
    looks_like_path = (
        name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path
    )
    from hf_fairkd.results.hub import is_repo_id

    if looks_like_path or not is_repo_id(name_or_path):
        raise ValueError(
            f"{name_or_path!r} does not exist and is not a plausible Hub id (owner/name); pass an existing "
            f"folder, a Hub id, 'digits', {SPURIOUS_DIGITS!r} or one of the presets {sorted(PRESETS)}"
        )
    return _load_hub(name_or_path, cache_dir)
