"""A spurious-attribute benchmark built offline: a colour that goes with the class in training, not in test.

The pattern of Colored MNIST and Waterbirds (Sagawa et al. 2020): a shortcut that holds in training and
fails in test, so a model (or a teacher) that leans on it loses accuracy on the minority cells.

Construction (`make_spurious`), for m classes:

- a binary attribute column (``attribute``, default "colour", values "red" / "green") is added to every split;
- class c has the majority value "red" if c < m / 2, else "green" (digits: 0-4 red, 5-9 green);
- train (and a "holdout" split, drawn from train): in each class exactly round(``correlation`` x n_c) rows
  (rounded half up), picked by a seeded permutation, get the majority value and the rest the other one, so the
  minority cells (e.g. red 7s) hold about (1 - correlation) of training (5% at the default 0.95);
- every other split (test, validation): each value for half of each class's rows (an odd row goes to a seeded
  value), so the attribute is independent of the class;
- the image shows the value: a grayscale image (the digits) is drawn in that colour (ink p becomes (p, 0, 0) in
  red, (0, p, 0) in green); a colour image (CIFAR-10) gets a solid border of that colour, min(width, height)
  // 8 pixels wide (4 on 32 x 32, at least 1), which a small CNN or a ViT picks up easily.

Optional per-class subsampling, applied before the attribute is drawn (for a budget: full CIFAR-10 is 50,000
training rows): ``train_per_class=n`` keeps at most n rows of each class in "train", ``test_per_class=n`` at most
n of each class in every other split (an uncorrelated one: test, validation; a class with fewer keeps all). The
rows kept are the first n of a seeded permutation per split and class, in their original order; the attribute is
then drawn on what is kept, so the counts above hold for the subsample.

Everything depends on ``seed`` only (one numpy stream per seed, split and class): the same seed gives the same
column and the same pixels. Sources: ``digits_spurious`` in the loaders (the embedded digits, natural profile:
balanced classes, the attribute being the imbalance), and `save_spurious_cifar10` for the local CIFAR-10 copy:
``python -m hf_fairkd.data.spurious ../shared/datasets/cifar10 cifar10_spurious`` writes a save_to_disk folder
to pass as --dataset_name (with --group_columns colour).
"""

from __future__ import annotations

import argparse
import math
import zlib

import numpy as np
from datasets import DatasetDict, Value

from .longtail import _check_seed, class_names_of, detect_image_column, detect_label_column, read_labels

VALUES = ("red", "green")  # value 0, value 1
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0)}
# Splits drawn like train (the attribute correlated with the class); every other split is independent.
CORRELATED_SPLITS = ("train", "holdout")
# PIL modes drawn as ink (one channel); any other mode gets a coloured border.
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def majority_value(class_id: int, num_classes: int) -> int:
    """0 ("red") for the first half of the classes, 1 ("green") for the rest."""
    return 0 if class_id < num_classes / 2 else 1


def attribute_codes(
    labels: np.ndarray, num_classes: int, correlation: float, seed: int, split: str
) -> np.ndarray:
    """The attribute value (0 / 1) of every row of one split (see the module docstring)."""
    codes = np.zeros(len(labels), dtype=np.int64)
    salt = zlib.crc32(split.encode())  # a stable stream per split name (hash() is salted per process)
    for class_id in range(num_classes):
        rows = np.flatnonzero(labels == class_id)
        rng = np.random.default_rng([seed, salt, class_id])
        rows = rows[rng.permutation(len(rows))]
        if split in CORRELATED_SPLITS:
            major = majority_value(class_id, num_classes)
            n_major = math.floor(correlation * len(rows) + 0.5)
            codes[rows[:n_major]], codes[rows[n_major:]] = major, 1 - major
        else:
            n_first = len(rows) // 2 + (len(rows) % 2) * int(rng.integers(2))
            codes[rows[:n_first]], codes[rows[n_first:]] = 0, 1
    return codes


def subsample_rows(labels: np.ndarray, num_classes: int, per_class: int, seed: int, split: str) -> np.ndarray:
    """The indices (sorted) of at most ``per_class`` rows of each class of one split: the first of a seeded
    permutation per class (its own stream, independent of the attribute's)."""
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"rows per class must be a positive integer, got {per_class!r}")
    salt = zlib.crc32(f"subsample:{split}".encode())
    keep = []
    for class_id in range(num_classes):
        rows = np.flatnonzero(labels == class_id)
        rng = np.random.default_rng([seed, salt, class_id])
        keep.append(rows[rng.permutation(len(rows))[:per_class]])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def colour_image(image, value: str):
    """``image`` showing ``value``: grayscale ink drawn in the colour, or a colour image with a coloured border."""
    from PIL import Image as PILImage

    colour = COLOURS[value]
    if image.mode in _GRAY_MODES:
        ink = np.asarray(image.convert("L"), dtype=np.uint16)
        rgb = (ink[..., None] * np.asarray(colour, dtype=np.uint16) // 255).astype(np.uint8)
        return PILImage.fromarray(rgb, "RGB")
    rgb = np.array(image.convert("RGB"))
    width = max(1, min(rgb.shape[:2]) // 8)
    rgb[:width], rgb[-width:], rgb[:, :width], rgb[:, -width:] = colour, colour, colour, colour
    return PILImage.fromarray(rgb, "RGB")


def make_spurious(
    dataset_dict: DatasetDict,
    *,
    attribute: str = "colour",
    correlation: float = 0.95,
    seed: int = 0,
    image_column: str | None = None,
    label_column: str | None = None,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> DatasetDict:
    """``dataset_dict`` with a binary ``attribute`` column in every split, drawn into the images: correlated with
    the class in train / holdout (``correlation`` of each class has its majority value), independent of it in
    every other split. ``train_per_class`` / ``test_per_class``: keep at most that many rows of each class in
    "train" / in every uncorrelated split first (seeded). See the module docstring for the construction."""
    if not isinstance(dataset_dict, DatasetDict) or "train" not in dataset_dict:
        raise ValueError(
            "make_spurious needs a DatasetDict with a 'train' split (and usually a 'test' split)"
        )
    if (
        isinstance(correlation, bool)
        or not isinstance(correlation, (int, float))
        or not 0.5 <= correlation <= 1
    ):
        raise ValueError(
            f"correlation must be a fraction in [0.5, 1] (the share of each training class with its majority "
            f"value; 0.5 = no correlation), got {correlation!r}"
        )
    _check_seed(seed)
    train = dataset_dict["train"]
    label_column = label_column or detect_label_column(train)
    image_column = image_column or detect_image_column(train)
    for split, dataset in dataset_dict.items():
        missing = [c for c in (label_column, image_column) if c is None or c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"split {split!r} has no {'image' if image_column in missing else 'label'} column "
                f"({missing}; columns: {dataset.column_names}); pass image_column= / label_column="
            )
        if attribute in dataset.column_names:
            raise ValueError(
                f"split {split!r} already has a column {attribute!r}; pass another attribute= name"
            )
    num_classes = len(class_names_of(train, label_column, read_labels(train, label_column)))
    out = {}
    for split, dataset in dataset_dict.items():
        per_class = train_per_class if split == "train" else None
        if split not in CORRELATED_SPLITS:
            per_class = test_per_class
        if per_class is not None:
            dataset = dataset.select(
                subsample_rows(read_labels(dataset, label_column), num_classes, per_class, seed, split)
            )
        codes = attribute_codes(
            read_labels(dataset, label_column), num_classes, float(correlation), seed, split
        )
        with_attribute = dataset.add_column(attribute, [VALUES[c] for c in codes])
        features = with_attribute.features.copy()
        features[attribute] = Value("string")

        def paint(batch):
            batch[image_column] = [
                colour_image(im, v) for im, v in zip(batch[image_column], batch[attribute])
            ]
            return batch

        out[split] = with_attribute.map(paint, batched=True, batch_size=256, features=features)
    return DatasetDict(out)


def save_spurious_cifar10(
    source_dir: str,
    out_dir: str,
    correlation: float = 0.95,
    seed: int = 0,
    cache_dir: str | None = None,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> str:
    """CIFAR-10 from a local Hub-like copy (``img`` / ``label`` Parquet, e.g. ../shared/datasets/cifar10) with a
    coloured border correlated with the class in train, written with save_to_disk to ``out_dir``; optionally
    subsampled first to at most ``train_per_class`` / ``test_per_class`` rows of each class.
    For benchmarks: the full 60,000 images are re-encoded in a few minutes on a CPU. Returns ``out_dir``."""
    from datasets import load_dataset

    loaded = load_dataset(str(source_dir), cache_dir=cache_dir)
    spurious = make_spurious(
        DatasetDict(loaded),
        correlation=correlation,
        seed=seed,
        image_column="img",
        label_column="label",
        train_per_class=train_per_class,
        test_per_class=test_per_class,
    )
    spurious.save_to_disk(str(out_dir))
    return str(out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=save_spurious_cifar10.__doc__)
    parser.add_argument("source_dir", help="a local CIFAR-10 copy, e.g. ../shared/datasets/cifar10")
    parser.add_argument("out_dir", help="where to save the spurious CIFAR-10 (save_to_disk)")
    parser.add_argument("--correlation", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train_per_class", type=int, default=None, help="at most this many train rows per class"
    )
    parser.add_argument(
        "--test_per_class", type=int, default=None, help="at most this many test rows per class"
    )
    args = parser.parse_args(argv)
    print(
        save_spurious_cifar10(
            args.source_dir,
            args.out_dir,
            args.correlation,
            args.seed,
            train_per_class=args.train_per_class,
            test_per_class=args.test_per_class,
        )
    )


if __name__ == "__main__":
    main()
