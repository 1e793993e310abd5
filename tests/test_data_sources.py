"""Sources (embedded digits, local folders, presets, Hub ids) and load_long_tailed end to end."""

import logging
from collections import Counter

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from sklearn.datasets import load_digits

from hf_fairkd.data import (
    load_digits_dataset,
    load_long_tailed,
    load_source,
    loaders,
    long_tail_counts,
    long_tail_info,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def labelled(n_per_class, num_classes, offset=0):
    labels = np.repeat(np.arange(num_classes), n_per_class)
    return Dataset.from_dict(
        {"row_id": np.arange(len(labels)) + offset, "label": labels},
        features=Features(
            {"row_id": Value("int64"), "label": ClassLabel(names=[f"k{i}" for i in range(num_classes)])}
        ),
    )


@pytest.fixture
def saved_dict(tmp_path):
    path = tmp_path / "saved"
    DatasetDict(train=labelled(60, 5), test=labelled(8, 5, offset=10_000)).save_to_disk(str(path))
    return str(path)


# -------------------------------------------------------------------------------------------------- digits
def test_digits_features_and_sizes(digits):
    assert len(digits["train"]) + len(digits["test"]) == 1797
    assert isinstance(digits["train"].features["image"], Image)
    assert digits["train"].features["label"] == ClassLabel(names=[str(i) for i in range(10)])
    assert np.bincount(digits["test"]["label"], minlength=10).tolist() == [30] * 10
    first = digits["train"][0]["image"]
    assert first.mode == "L" and first.size == (8, 8)


def test_digits_pixels_equal_sklearn_scaled(digits):
    sk = load_digits()
    # Independent scaling: round-half-up of v * 255 / 16 in integer arithmetic.
    expected = (sk.images.astype(np.int64) * 255 + 8) // 16
    want = Counter((int(y), img.astype(np.uint8).tobytes()) for img, y in zip(expected, sk.target))
    got = Counter()
    for split in ("train", "test"):
        for row in digits[split]:
            got[(row["label"], np.asarray(row["image"]).tobytes())] += 1
    assert got == want  # same images, labels and multiplicities: nothing lost, duplicated or rescaled


def test_digits_split_is_seeded():
    a = load_digits_dataset(test_per_class=3, seed=1)["test"]
    b = load_digits_dataset(test_per_class=3, seed=1)["test"]
    c = load_digits_dataset(test_per_class=3, seed=2)["test"]

    def pixels(ds):
        return [np.asarray(im).tobytes() for im in ds["image"]]

    assert pixels(a) == pixels(b) != pixels(c)


# ------------------------------------------------------------------------------------------ load_source
def test_load_source_digits():
    dsd, label, image = load_source("digits")
    assert (label, image) == ("label", "image")
    assert set(dsd) == {"train", "test"}


def test_load_source_save_to_disk_folder(saved_dict):
    dsd, label, image = load_source(saved_dict)
    assert (label, image) == ("label", None)
    assert len(dsd["train"]) == 300 and len(dsd["test"]) == 40


def test_load_source_single_dataset_carves_balanced_test(tmp_path, caplog):
    labelled(10, 3).save_to_disk(str(tmp_path / "single"))
    with caplog.at_level(logging.WARNING, logger="hf_fairkd.data.sources"):
        dsd, _, _ = load_source(str(tmp_path / "single"))
    assert "carving a balanced test split" in caplog.text
    assert np.bincount(dsd["test"]["label"]).tolist() == [2, 2, 2]  # a fifth of the smallest class
    assert set(dsd["train"]["row_id"]).isdisjoint(dsd["test"]["row_id"])
    assert len(dsd["train"]) + len(dsd["test"]) == 30


def test_load_source_image_folder(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for name, n in [("cat", 6), ("dog", 5)]:
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(n):
            PILImage.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / name / f"{i}.png"
            )
    with caplog.at_level(logging.WARNING):
        dsd, label, image = load_source(str(tmp_path / "imgs"), cache_dir=str(tmp_path / "cache"))
    assert (label, image) == ("label", "image")
    assert dsd["train"].features["label"].names == ["cat", "dog"]
    assert np.bincount(dsd["test"]["label"]).tolist() == [1, 1]
    assert len(dsd["train"]) == 9
    assert "no 'test' split" in caplog.text


def test_load_source_hub_like_parquet_folder(tmp_path):
    root = tmp_path / "hublike" / "plain_text"
    root.mkdir(parents=True)
    labelled(4, 3).to_parquet(str(root / "train-00000-of-00001.parquet"))
    labelled(2, 3, offset=100).to_parquet(str(root / "test-00000-of-00001.parquet"))
    dsd, label, _ = load_source(str(tmp_path / "hublike"), cache_dir=str(tmp_path / "cache"))
    assert label == "label"
    assert len(dsd["train"]) == 12 and len(dsd["test"]) == 6
    assert sorted(dsd["test"]["row_id"]) == list(range(100, 106))


@pytest.mark.parametrize(
    "preset,hub_id,label,image",
    [("cifar10", "uoft-cs/cifar10", "label", "img"), ("cifar100", "uoft-cs/cifar100", "fine_label", "img")],
)
def test_presets_map_to_hub_ids(monkeypatch, preset, hub_id, label, image):
    calls = []
    features = Features(
        {
            "img": Image(),
            "fine_label": ClassLabel(names=["a", "b"]),
            "coarse_label": ClassLabel(names=["z"]),
            "label": ClassLabel(names=["a", "b"]),
        }
    )
    tiny = Dataset.from_dict(
        {"img": [None] * 4, "fine_label": [0, 1, 0, 1], "coarse_label": [0] * 4, "label": [0, 1, 0, 1]},
        features=features,
    )

    def fake_load_dataset(path, **kwargs):
        calls.append(path)
        return DatasetDict(train=tiny, test=tiny)

    monkeypatch.setattr(loaders, "load_dataset", fake_load_dataset)
    _, got_label, got_image = load_source(preset)
    assert calls == [hub_id]
    assert (got_label, got_image) == (label, image)


def test_label_autodetect_prefers_named_classlabel():
    ds = Dataset.from_dict(
        {"coarse": [0, 1], "fine_label": [1, 0]},
        features=Features({"coarse": ClassLabel(num_classes=2), "fine_label": ClassLabel(num_classes=2)}),
    )
    assert loaders.detect_label_column(ds) == "fine_label"
    with pytest.raises(ValueError, match=r"could not find a label column.*\['x'\]"):
        loaders.detect_label_column(Dataset.from_dict({"x": [1.0]}))


def test_hub_errors_are_wrapped(monkeypatch):
    def failing(path, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(loaders, "load_dataset", failing)
    with pytest.raises(
        ValueError, match=r"could not load dataset 'someone/thing': offline; pass a local path"
    ) as err:
        load_source("someone/thing")
    assert isinstance(err.value.__cause__, ConnectionError)


@pytest.mark.parametrize(
    "name,match",
    [
        ("./no/such/folder", "does not exist and is not a plausible Hub id"),
        ("/definitely/not/here", "does not exist"),
        ("not a hub id!", "not a plausible Hub id"),
    ],
)
def test_bad_names(name, match):
    with pytest.raises(ValueError, match=match):
        load_source(name)


def test_missing_label_column(saved_dict):
    with pytest.raises(
        ValueError, match=r"label column 'fine' not found; available columns: \['row_id', 'label'\]"
    ):
        load_source(saved_dict, label_column="fine")
    with pytest.raises(ValueError, match="image column 'img' not found"):
        load_source(saved_dict, image_column="img")


def test_no_test_split_possible(tmp_path):
    ds = Dataset.from_dict({"label": [0, 0, 1]}, features=Features({"label": ClassLabel(num_classes=2)}))
    ds.save_to_disk(str(tmp_path / "tiny"))
    with pytest.raises(ValueError, match="no test split is possible: class 1 has 1 row"):
        load_source(str(tmp_path / "tiny"))


# ------------------------------------------------------------------------------------ load_long_tailed
def test_load_long_tailed_digits_defaults(digits):
    dsd = load_long_tailed("digits")
    assert list(dsd) == ["train", "holdout", "test"]
    info = long_tail_info(dsd)
    assert info.imbalance_factor == 10.0 and info.holdout_per_class == 5
    n_max = int(
        np.bincount(digits["train"]["label"]).min()
    )  # smallest class after the 30-per-class test split
    assert info.long_tail_counts == long_tail_counts(n_max, 10, 10)
    for split, counts in [
        ("train", info.train_counts),
        ("holdout", info.holdout_counts),
        ("test", info.test_counts),
    ]:
        assert np.bincount(dsd[split]["label"], minlength=10).tolist() == counts
        assert long_tail_info(dsd[split]) == info
    assert info.holdout_counts == [5] * 10 and info.test_counts == [30] * 10
    assert [a + b for a, b in zip(info.train_counts, info.holdout_counts)] == info.long_tail_counts
    # The test split is the source's, untouched.
    assert [np.asarray(im).tobytes() for im in dsd["test"]["image"]] == [
        np.asarray(im).tobytes() for im in digits["test"]["image"]
    ]


def test_load_long_tailed_disjoint_and_saved(saved_dict, tmp_path):
    dsd = load_long_tailed(
        saved_dict, imbalance_factor=6, holdout_per_class=0.2, rare_classes="reversed", seed=3
    )
    info = long_tail_info(dsd)
    assert info.long_tail_counts == long_tail_counts(60, 5, 6)[::-1]
    train_ids, holdout_ids = set(dsd["train"]["row_id"]), set(dsd["holdout"]["row_id"])
    assert train_ids.isdisjoint(holdout_ids) and train_ids | holdout_ids <= set(range(300))
    assert sorted(dsd["test"]["row_id"]) == list(range(10_000, 10_040))
    assert info.holdout_per_class == 0.2
    assert info.holdout_counts == [round(0.2 * c + 1e-9) or 1 for c in info.long_tail_counts]
    again = load_long_tailed(
        saved_dict, imbalance_factor=6, holdout_per_class=0.2, rare_classes="reversed", seed=3
    )
    assert again["train"]["row_id"] == dsd["train"]["row_id"]
    from datasets import load_from_disk

    from hf_fairkd.data import save_long_tailed

    save_long_tailed(dsd, tmp_path / "lt")
    assert long_tail_info(load_from_disk(str(tmp_path / "lt"))) == info


def test_default_holdout_is_a_fifth_of_the_rarest_class(saved_dict):
    info = long_tail_info(load_long_tailed(saved_dict, imbalance_factor=2))  # rarest 30 -> 6
    assert info.holdout_per_class == 6 and info.holdout_counts == [6] * 5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"holdout_per_class": 1000}, "holdout larger than a class: class 4 has 10 rows"),
        ({"imbalance_factor": 0.5}, "imbalance_factor must be a finite number >= 1"),
        ({"imbalance_factor": 100}, r"imbalance_factor <= 60"),
        ({"label_column": "nope"}, "available columns"),
        ({"profile": "linear"}, "profile must be one of"),
    ],
)
def test_load_long_tailed_validates_before_selecting(saved_dict, monkeypatch, kwargs, match):
    def boom(*args, **kw):
        raise AssertionError("rows selected before validation")

    monkeypatch.setattr(Dataset, "select", boom)
    args = {"imbalance_factor": 6, **kwargs}
    with pytest.raises(ValueError, match=match):
        load_long_tailed(saved_dict, **args)


# ------------------------------------------------------------------------------ misread image folders
def image_tree(root, layout: dict[str, int]):
    """``layout``: relative file path -> grey level; every file a 4x4 PNG."""
    for rel, level in layout.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(np.full((4, 4, 3), level, dtype=np.uint8)).save(path)
    return root


def per_class(classes, files=("0.png", "1.png", "2.png")):
    return {f"{c}/{f}": i for c in classes for i, f in enumerate(files)}


@pytest.mark.parametrize(
    "layout, named",
    [
        (per_class(["a\\b", "c"]), r"\['a\\\\b'\] hold a backslash"),
        (per_class(["cat", "dog-test"]), r"'dog-test' \(read as a 'test' split\)"),
        (per_class(["cat", "val_dog"]), r"'val_dog' \(read as a 'validation' split\)"),
        ({**per_class(["cat", "dog"]), "cat/train_3.png": 9}, r"'train_3.png' \(read as a 'train' split\)"),
        (
            per_class([".cache", "cat"]),
            r"1 class folder\(s\) \['cat'\], besides \['.cache'\], which datasets skips",
        ),
        ({**per_class(["cat", "dog"]), "dog/old/9.png": 9}, r"not all at the same depth .*dog/old/9.png"),
    ],
    ids=[
        "backslash",
        "split_word_folder",
        "split_word_prefix",
        "split_word_file",
        "hidden_folder",
        "mixed_depth",
    ],
)
def test_misread_image_folder_is_named_before_loading(tmp_path, monkeypatch, layout, named):
    # without the check, datasets loads these without a label column (or moves images to another split)
    root = image_tree(tmp_path / "imgs", layout)
    calls = []
    monkeypatch.setattr(loaders, "load_dataset", lambda *a, **k: calls.append(a) or pytest.fail("loaded"))
    with pytest.raises(ValueError, match=named) as err:
        load_long_tailed(str(root), cache_dir=str(tmp_path / "cache"))
    assert "Rename the folders or files named" in str(err.value) and not calls


def test_train_test_folders_of_class_folders_still_load(tmp_path):
    layout = {
        f"{split}/{c}/{i}.png": i for split in ("train", "test") for c in ("cat", "dog") for i in range(3)
    }
    dsd, label, _ = load_source(str(image_tree(tmp_path / "imgs", layout)), cache_dir=str(tmp_path / "cache"))
    assert label == "label" and dsd["train"].features["label"].names == ["cat", "dog"]
    assert np.bincount(dsd["test"]["label"]).tolist() == [3, 3]


def test_hub_dataset_ids_for_the_card(tmp_path, monkeypatch):
    from hf_fairkd.data.sources import hub_dataset_ids, looks_like_hub_id

    assert hub_dataset_ids("cifar10") == ["uoft-cs/cifar10"] and hub_dataset_ids("digits") is None
    assert hub_dataset_ids("someone/flowers-lt") == ["someone/flowers-lt"]
    (tmp_path / "local" / "folder").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert hub_dataset_ids("local/folder") is None  # an existing folder is not a Hub id
    assert not looks_like_hub_id(None) and not looks_like_hub_id("/abs/path/x") and looks_like_hub_id("a/b")


# ------------------------------------------------------------------------------------ the natural profile
def save_counts(path, counts, test_counts=None):
    """A save_to_disk dataset whose train split has ``counts[i]`` rows of class i (and a test split if given)."""

    def rows(per_class, offset=0):
        labels = np.repeat(np.arange(len(per_class)), per_class)
        names = [f"k{i}" for i in range(len(per_class))]
        return Dataset.from_dict(
            {"row_id": np.arange(len(labels)) + offset, "label": labels},
            features=Features({"row_id": Value("int64"), "label": ClassLabel(names=names)}),
        )

    splits = {"train": rows(counts)}
    if test_counts is not None:
        splits["test"] = rows(test_counts, offset=100_000)
    DatasetDict(splits).save_to_disk(str(path))
    return str(path)


def test_natural_is_the_default_for_a_users_dataset_and_keeps_every_row(tmp_path):
    counts, test = [50, 30, 12, 7], [5, 5, 5, 5]
    dsd = load_long_tailed(save_counts(tmp_path / "d", counts, test), holdout_per_class=2)
    info = long_tail_info(dsd)
    assert info.profile == "natural" and info.test_carved is None
    assert info.long_tail_counts == counts  # nothing dropped to build a long tail
    assert info.holdout_counts == [2] * 4 and info.train_counts == [c - 2 for c in counts]
    assert info.imbalance_factor == pytest.approx(50 / 7)  # measured, max / min before the holdout
    assert info.class_order == [0, 1, 2, 3] and info.test_counts == test
    ids = [set(dsd[s]["row_id"]) for s in ("train", "holdout")]
    assert ids[0].isdisjoint(ids[1]) and ids[0] | ids[1] == set(range(sum(counts)))  # every row is used
    assert sorted(dsd["test"]["row_id"]) == list(range(100_000, 100_020))  # the source's test split


def test_natural_without_test_split_carves_a_stratified_one_of_the_stated_size(tmp_path):
    counts = [136, 127, 93, 68, 58, 37, 34, 23, 14, 11]
    path = save_counts(tmp_path / "d", counts)
    info = long_tail_info(load_long_tailed(path))
    expected_test = [max(1, int(0.2 * c + 0.5)) for c in counts]  # 20% of each class, not balanced
    assert info.test_counts == expected_test == [27, 25, 19, 14, 12, 7, 7, 5, 3, 2]
    assert info.test_carved == {"kind": "stratified", "fraction": 0.2, "min_per_class": 1}
    assert info.long_tail_counts == [c - t for c, t in zip(counts, expected_test)]
    assert info.holdout_counts == [1] * 10  # min(10, rarest // 5), at least 1
    assert [a + b + t for a, b, t in zip(info.train_counts, info.holdout_counts, info.test_counts)] == counts
    other = long_tail_info(load_long_tailed(path, test_fraction=0.5, holdout_per_class=0.1))
    assert other.test_counts == [max(1, int(0.5 * c + 0.5)) for c in counts]
    assert other.holdout_per_class == 0.1 and min(other.holdout_counts) >= 1


def test_benchmarks_keep_their_long_tail_and_exp_still_works_on_a_users_dataset(tmp_path, saved_dict):
    from hf_fairkd.data.sources import resolve_profile

    assert resolve_profile("digits") == ("exp", 10.0)
    assert resolve_profile("cifar10") == ("exp", 100.0) and resolve_profile("cifar100") == ("exp", 100.0)
    assert resolve_profile("/my/folder") == ("natural", None)
    assert resolve_profile("/my/folder", imbalance_factor=5) == ("exp", 5)  # a factor implies a long tail
    assert resolve_profile("/my/folder", "step") == ("step", 100.0)
    info = long_tail_info(load_long_tailed(saved_dict, profile="exp", imbalance_factor=6))
    assert info.profile == "exp" and info.long_tail_counts == long_tail_counts(60, 5, 6)


def test_natural_with_an_imbalance_factor_is_refused(saved_dict, monkeypatch):
    monkeypatch.setattr(loaders, "load_from_disk", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(
        ValueError, match="natural profile .* takes no imbalance factor .*imbalance_factor=10"
    ):
        load_long_tailed(saved_dict, profile="natural", imbalance_factor=10)


def test_natural_names_every_class_too_small_for_holdout_and_test(tmp_path, monkeypatch):
    path = save_counts(tmp_path / "d", [40, 2, 30, 1])

    def boom(*args, **kw):
        raise AssertionError("rows selected before validation")

    monkeypatch.setattr(Dataset, "select", boom)
    with pytest.raises(ValueError, match="too small for the natural profile") as err:
        load_long_tailed(path)
    message = str(err.value)
    assert "'k1' (2 rows, needs 3)" in message and "'k3' (1 rows, needs 3)" in message
    assert "'k0'" not in message and "'k2'" not in message
    assert "0.2 of each class" in message and "holdout_per_class=1" in message
