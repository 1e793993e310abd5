"""The spurious-attribute benchmark: a colour correlated with the class in train, independent of it in test."""

from collections import Counter

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_from_disk
from PIL import Image as PILImage

from hf_fairkd.data import load_digits_dataset, load_long_tailed, load_source, long_tail_info
from hf_fairkd.data.sources import resolve_profile
from hf_fairkd.data.spurious import make_spurious, save_spurious_cifar10


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


@pytest.fixture(scope="module")
def spurious(digits):
    return make_spurious(digits, seed=3)


def pixels(ds, column="image"):
    return [np.asarray(im) for im in ds[column]]


def rgb_dataset(n_per_class, num_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), n_per_class)
    images = [PILImage.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in labels]
    names = [f"c{i}" for i in range(num_classes)]
    return Dataset.from_dict(
        {"img": images, "label": labels},
        features=Features({"img": Image(), "label": ClassLabel(names=names)}),
    )


def test_train_is_correlated_and_test_independent(spurious, digits):
    train, test = spurious["train"], spurious["test"]
    assert train.column_names == ["image", "label", "stroke", "colour"] and len(train) == len(digits["train"])
    majority = ["red"] * 5 + ["green"] * 5  # class id < m / 2: red
    agree = [colour == majority[label] for label, colour in zip(train["label"], train["colour"])]
    assert abs(np.mean(agree) - 0.95) < 0.01
    for c in range(10):  # per class: round(0.95 * n_c) rows of the majority value
        n = train["label"].count(c)
        assert sum(a for a, y in zip(agree, train["label"]) if y == c) == int(0.95 * n + 0.5)
    cells = Counter(zip(test["label"], test["colour"]))
    for c in range(10):
        n = test["label"].count(c)
        assert abs(cells[(c, "red")] - n / 2) <= 1 and cells[(c, "red")] + cells[(c, "green")] == n


def test_the_image_shows_the_colour(spurious, digits):
    # The digits are grayscale: red ink is (p, 0, 0), green ink (0, p, 0), p the original pixel.
    for split in ("train", "test"):
        for original, coloured, colour in zip(
            pixels(digits[split]), pixels(spurious[split]), spurious[split]["colour"]
        ):
            channel = {"red": 0, "green": 1}[colour]
            assert coloured.shape == (8, 8, 3) and (coloured[..., channel] == original).all()
            assert not np.delete(coloured, channel, axis=2).any()


def test_same_seed_same_columns_and_pixels(digits, spurious):
    again, other = make_spurious(digits, seed=3), make_spurious(digits, seed=4)
    for split in ("train", "test"):
        assert again[split]["colour"] == spurious[split]["colour"] != other[split]["colour"]
        assert all((a == b).all() for a, b in zip(pixels(again[split]), pixels(spurious[split])))


def test_rgb_images_get_a_border_and_holdout_follows_train():
    source = DatasetDict(
        train=rgb_dataset(20), holdout=rgb_dataset(20, seed=1), validation=rgb_dataset(6, seed=2)
    )
    out = make_spurious(source, attribute="tint", correlation=0.8, seed=0)
    for split in source:
        for before, after, value in zip(
            pixels(source[split], "img"), pixels(out[split], "img"), out[split]["tint"]
        ):
            colour = {"red": (255, 0, 0), "green": (0, 255, 0)}[value]
            border = np.ones((8, 8), dtype=bool)
            border[1:-1, 1:-1] = False  # 8 // 8 = 1 pixel wide
            assert (after[border] == colour).all() and (after[~border] == before[~border]).all()
    for split in ("train", "holdout"):  # both drawn like train: 16 of each class's 20 rows the majority value
        cells = Counter(zip(out[split]["label"], out[split]["tint"]))
        assert [cells[(c, "red" if c < 2 else "green")] for c in range(4)] == [16] * 4
    cells = Counter(zip(out["validation"]["label"], out["validation"]["tint"]))
    assert all(cells[(c, "red")] == 3 for c in range(4))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"correlation": 0.3}, r"correlation must be a fraction in \[0.5, 1\]"),
        ({"attribute": "label"}, "already has a column 'label'"),
        ({"image_column": "pixels"}, "has no image column"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_spurious(DatasetDict(train=rgb_dataset(2)), **kwargs)


def test_digits_spurious_source_natural_profile_with_groups():
    assert resolve_profile("digits_spurious") == ("natural", None)
    dsd = load_long_tailed("digits_spurious", group_columns=["colour"])
    info = long_tail_info(dsd)
    assert info.profile == "natural" and info.source == "digits_spurious"
    assert info.test_counts == [30] * 10 and info.imbalance_factor < 1.1  # balanced classes
    assert set(info.group_test_counts["class&colour"].values()) == {15}
    minority = sum(
        n
        for cell, n in info.group_train_counts["class&colour"].items()
        if cell[0] in "01234" and cell.endswith("green")
    )
    minority += sum(
        n
        for cell, n in info.group_train_counts["class&colour"].items()
        if cell[0] in "56789" and cell.endswith("red")
    )
    assert 0.03 < minority / sum(info.train_counts) < 0.06  # the holdout takes one minority row per class
    assert len(Counter(zip(dsd["holdout"]["label"], dsd["holdout"]["colour"]))) == 20  # every cell measured
    source, label, image = load_source("digits_spurious")
    assert (label, image) == ("label", "image") and "colour" in source["test"].column_names


def test_save_spurious_cifar10_from_a_hub_like_folder(tmp_path):
    root = tmp_path / "cifar" / "plain_text"
    root.mkdir(parents=True)
    rgb_dataset(10).to_parquet(str(root / "train-00000-of-00001.parquet"))
    rgb_dataset(4, seed=1).to_parquet(str(root / "test-00000-of-00001.parquet"))
    out = save_spurious_cifar10(str(tmp_path / "cifar"), str(tmp_path / "out"), correlation=0.9, seed=1)
    saved = load_from_disk(out)
    assert Counter(saved["test"]["colour"]) == {"red": 8, "green": 8}
    assert Counter(zip(saved["train"]["label"], saved["train"]["colour"]))[(0, "red")] == 9
    info = long_tail_info(load_long_tailed(out, group_columns=["colour"], holdout_per_class=2))
    assert info.group_columns == ["colour"] and info.test_counts == [4] * 4


def test_per_class_subsampling_is_seeded_and_drawn_before_the_attribute():
    # 30 train / 12 test rows per class, cut to 20 / 8 per class before the attribute is drawn.
    source = DatasetDict(train=rgb_dataset(30), test=rgb_dataset(12, seed=1))
    out = make_spurious(source, correlation=0.9, seed=5, train_per_class=20, test_per_class=8)
    again = make_spurious(source, correlation=0.9, seed=5, train_per_class=20, test_per_class=8)
    other = make_spurious(source, correlation=0.9, seed=6, train_per_class=20, test_per_class=8)
    for split, n in (("train", 20), ("test", 8)):
        assert Counter(out[split]["label"]) == {c: n for c in range(4)}  # counts per class
        assert again[split]["colour"] == out[split]["colour"]  # deterministic from the seed
        assert all((a == b).all() for a, b in zip(pixels(again[split], "img"), pixels(out[split], "img")))
    kept = [np.asarray(im)[1:-1, 1:-1] for im in out["train"]["img"]]  # the rows kept: another seed, others
    assert any(
        (a != b).any() for a, b in zip(kept, (np.asarray(im)[1:-1, 1:-1] for im in other["train"]["img"]))
    )
    cells = Counter(zip(out["train"]["label"], out["train"]["colour"]))  # correlated in train: 18 of 20
    assert [cells[(c, "red" if c < 2 else "green")] for c in range(4)] == [18] * 4
    cells = Counter(zip(out["test"]["label"], out["test"]["colour"]))  # independent in test: 4 and 4
    assert all(cells[(c, "red")] == cells[(c, "green")] == 4 for c in range(4))
    capped = make_spurious(source, train_per_class=100)  # at most n: a smaller class keeps every row
    assert len(capped["train"]) == 120 and len(capped["test"]) == 48
    with pytest.raises(ValueError, match="rows per class must be a positive integer"):
        make_spurious(source, train_per_class=0)
