"""Groups from the user's data: image folders with metadata, saved and Hub-like datasets, splits stratified by
class x group cell, the group counts in LongTailInfo, and the errors bad input gets."""

import csv
import json
import logging
from collections import Counter

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from hf_fairkd.data import LongTailInfo, load_long_tailed, load_source, loaders, long_tail_info
from hf_fairkd.data.group_splits import allocate_cells
from hf_fairkd.data.info import describe_profile
from hf_fairkd.data.longtail import plan_holdout
from hf_fairkd.data.metadata_folders import load_metadata_folder
from hf_fairkd.groups import MISSING

# ------------------------------------------------------------------------------------------------ helpers
# The attribute folder: cat 12 images, dog 10; site a string with one missing value, age an int.
SITES = {
    **{f"cat/{i}.png": "A" if i < 8 else "B" for i in range(12)},
    **{f"dog/{i}.png": "A" if i < 3 else "B" for i in range(10)},
}
SITES["cat/11.png"] = None
AGES = {name: (int(name.split("/")[1][:-4]) % 2 if name.startswith("cat") else 7) for name in SITES}


def write_images(root, names):
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(np.full((8, 8), 10 * i % 256, dtype=np.uint8)).save(root / name)


def write_metadata(path, rows, fmt="csv"):
    """``rows``: dicts; None is an empty CSV cell, a JSON null."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows([{k: "" if v is None else v for k, v in row.items()} for row in rows])
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def attribute_folder(root, fmt="csv", prefix=""):
    write_images(root / prefix, SITES)
    rows = [{"file_name": name, "site": SITES[name], "age": AGES[name]} for name in SITES]
    write_metadata(root / prefix / f"metadata.{fmt}", rows, fmt)
    return str(root)


def files_of(ds):
    """The image file of every row (relative 'class/name.png'), read without decoding."""
    return [
        "/".join(im["path"].split("/")[-2:]) for im in ds.cast_column("image", Image(decode=False))["image"]
    ]


def no_decoding(monkeypatch):
    monkeypatch.setattr(Image, "decode_example", lambda *a, **k: pytest.fail("an image was decoded"))


def saved(path, cells, test_cells=None, extra=None):
    """A save_to_disk dataset; ``cells``: {(class id, group): rows}; a 'g' column holds the group."""

    def rows(spec, offset):
        spec = sorted(spec.items(), key=lambda item: (item[0][0], str(item[0][1])))
        labels = [c for (c, _), n in spec for _ in range(n)]
        groups = [g for (_, g), n in spec for _ in range(n)]
        data = {"row_id": list(range(offset, offset + len(labels))), "label": labels, "g": groups}
        features = {"row_id": Value("int64"), "label": ClassLabel(names=["k0", "k1"]), "g": Value("string")}
        for name, (feature, fn) in (extra or {}).items():
            data[name], features[name] = [fn(i) for i in range(len(labels))], feature
        return Dataset.from_dict(data, features=Features(features))

    splits = {"train": rows(cells, 0)}
    if test_cells is not None:
        splits["test"] = rows(test_cells, 100_000)
    DatasetDict(splits).save_to_disk(str(path))
    return str(path)


def cell_counter(ds, column="g"):
    return Counter(zip(ds["label"], ds[column]))


# ------------------------------------------------------------------------------ image folder + metadata
def test_folder_with_metadata_keeps_its_folder_labels_without_group_columns(tmp_path, monkeypatch):
    # The bug: datasets drops the class-folder labels when a metadata.csv is present ("could not find a
    # label column ... available columns: ['image', 'site']").
    path = attribute_folder(tmp_path / "imgs")
    no_decoding(monkeypatch)
    dsd, label, image = load_source(path, cache_dir=str(tmp_path / "cache"))
    train = dsd["train"]
    assert (label, image) == ("label", "image") and train.column_names == ["image", "label", "site", "age"]
    assert train.features["label"].names == ["cat", "dog"] and train.features["age"] == Value("int64")
    everything = {
        f: row for split in dsd.values() for f, row in zip(files_of(split), split.remove_columns("image"))
    }
    assert sorted(everything) == sorted(SITES)  # every image once, none dropped
    for name, row in everything.items():
        assert row["label"] == ["cat", "dog"].index(name.split("/")[0])
        assert (
            row["age"] == AGES[name] and (row["site"] or None) == SITES[name]
        )  # the raw values, as they are


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_two_attribute_columns_kept_in_every_split_and_counted(tmp_path, fmt, caplog):
    path = attribute_folder(tmp_path / "imgs", fmt=fmt)
    with caplog.at_level(logging.WARNING, logger="hf_fairkd.data.group_splits"):
        dsd = load_long_tailed(path, group_columns=["site", "age"], holdout_per_class=2, test_fraction=0.25)
    info = long_tail_info(dsd)
    assert info.profile == "natural" and info.group_columns == ["site", "age"]
    assert all(dsd[s].column_names == ["image", "label", "site", "age"] for s in dsd)
    assert sorted(f for s in dsd.values() for f in files_of(s)) == sorted(SITES)  # the missing site kept
    for split, counts in (("train", info.group_train_counts), ("test", info.group_test_counts)):
        files = files_of(dsd[split])
        site = [SITES[f] or MISSING for f in files]
        age = [str(AGES[f]) for f in files]
        cls = [f.split("/")[0] for f in files]
        assert counts == {
            "site": dict(Counter(site)),
            "age": dict(Counter(age)),
            "class&site": dict(Counter(f"{c}&{s}" for c, s in zip(cls, site))),
            "class&age": dict(Counter(f"{c}&{a}" for c, a in zip(cls, age))),
            "site&age": dict(Counter(f"{s}&{a}" for s, a in zip(site, age))),
        }
    # The cells are site x age. cat's test quota 3 over A&0 4, A&1 4, B&0 2, B&1 1, (missing)&1 1: by
    # largest remainder (shares 1, 1, .5, .25, .25) A&0, A&1, B&0; dog's 3 over A 3, B 7: 1 and 2.
    assert info.group_test_counts["class&site"] == {"cat&A": 2, "cat&B": 1, "dog&A": 1, "dog&B": 2}
    assert (
        f"(class 'cat', group '{MISSING}&1', 1 row(s) in the train split, 0 in the test split)" in caplog.text
    )
    assert "groups: site (3 values), age (3 values)" in describe_profile(info)


def test_per_split_metadata_files(tmp_path):
    root = tmp_path / "imgs"
    for split, ages in (("train", (1, 2)), ("test", (3,))):
        names = [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(4)]
        write_images(root / split, names)
        rows = [{"file_name": n, "age": ages[i % len(ages)]} for i, n in enumerate(names)]
        write_metadata(root / split / "metadata.csv", rows)
    dsd, _, _ = load_source(str(root), group_columns=["age"], cache_dir=str(tmp_path / "cache"))
    assert sorted(dsd["train"]["age"]) == [1] * 4 + [2] * 4 and dsd["test"]["age"] == [3] * 8
    assert np.bincount(dsd["test"]["label"]).tolist() == [4, 4]


def test_one_root_metadata_for_split_folders_and_label_from_metadata(tmp_path):
    root = tmp_path / "imgs"
    names = [f"{split}/{c}/{i}.png" for split in ("train", "test") for c in ("x", "y") for i in range(3)]
    write_images(root, names)
    # The class from a metadata column (named with label_column), not from the folders.
    species = {n: "owl" if n.endswith("0.png") else "hawk" for n in names}
    write_metadata(root / "metadata.jsonl", [{"file_name": n, "species": species[n]} for n in names], "jsonl")
    dsd, label, _ = load_source(str(root), label_column="species")
    assert label == "species" and dsd["train"].features["species"].names == ["hawk", "owl"]
    for split in ("train", "test"):
        expected = [["hawk", "owl"].index(species[f"{split}/{f}"]) for f in files_of(dsd[split])]
        assert dsd[split]["species"] == expected and len(expected) == 6


# ------------------------------------------------------------------------------------ other sources
def test_saved_dataset_with_string_int_bool_and_missing_groups(tmp_path):
    cells = {(0, "a"): 20, (0, None): 5, (1, "a"): 10, (1, "b"): 15}
    extra = {"n": (Value("int64"), lambda i: i % 3), "flag": (Value("bool"), lambda i: i % 2 == 0)}
    path = saved(tmp_path / "d", cells, {(0, "a"): 4, (1, "b"): 4}, extra)
    dsd = load_long_tailed(path, group_columns=["g", "n", "flag"], holdout_per_class=2)
    info = long_tail_info(dsd)
    assert sum(len(dsd[s]) for s in ("train", "holdout")) == 50  # the missing group is a group, not dropped
    assert info.group_train_counts["g"][MISSING] == 5 - Counter(dsd["holdout"]["g"])[None]
    assert set(info.group_train_counts["flag"]) == {"True", "False"} and set(
        info.group_train_counts["n"]
    ) == {"0", "1", "2"}
    assert "g&n&flag" in info.group_train_counts  # all three columns together
    assert info.group_test_counts["class&g"] == {"k0&a": 4, "k1&b": 4}


def test_hub_like_parquet_folder_with_groups(tmp_path):
    root = tmp_path / "hub" / "data"
    root.mkdir(parents=True)
    for split, n in (("train", 12), ("test", 6)):
        Dataset.from_dict(
            {"label": [i % 2 for i in range(n)], "site": [None if i == 0 else "AB"[i % 2] for i in range(n)]},
            features=Features({"label": ClassLabel(names=["p", "q"]), "site": Value("string")}),
        ).to_parquet(str(root / f"{split}-00000-of-00001.parquet"))
    dsd = load_long_tailed(str(tmp_path / "hub"), group_columns=["site"], holdout_per_class=1, seed=1)
    info = long_tail_info(dsd)
    assert info.group_test_counts["class&site"] == {"p&(missing)": 1, "p&A": 2, "q&B": 3}
    assert sum(info.group_train_counts["site"].values()) == len(dsd["train"]) == 10


def test_exp_profile_keeps_groups_and_subsamples_per_class_as_before(tmp_path):
    path = saved(
        tmp_path / "d", {(0, "a"): 40, (0, "b"): 20, (1, "a"): 30, (1, "b"): 30}, {(0, "a"): 3, (1, "b"): 3}
    )
    plain = load_long_tailed(path, imbalance_factor=4, holdout_per_class=3)
    grouped = load_long_tailed(path, imbalance_factor=4, holdout_per_class=3, group_columns=["g"])
    kept = [set(d["train"]["row_id"]) | set(d["holdout"]["row_id"]) for d in (plain, grouped)]
    assert kept[0] == kept[1]  # the long tail itself is the same rows
    a, b = long_tail_info(plain), long_tail_info(grouped)
    assert a.holdout_counts == b.holdout_counts == [3, 3] and a.train_counts == b.train_counts
    assert {g for _, g in cell_counter(grouped["holdout"])} == {"a", "b"} and grouped["test"]["g"] == [
        "a"
    ] * 3 + ["b"] * 3
    assert a.group_columns is None and "groups" not in describe_profile(a)


# ------------------------------------------------------------------------------------------ stratified
def test_allocate_cells_largest_remainder_with_one_per_cell():
    assert allocate_cells(8, [30, 8, 2]) == [6, 1, 1]  # shares 6, 1.6, 0.4: c takes b's rounded-up row
    assert allocate_cells(3, [24, 7, 1]) == [1, 1, 1]
    assert allocate_cells(2, [24, 7, 1]) == [2, 0, 0]  # the quota cannot cover every cell: by share
    assert allocate_cells(10, [5, 5]) == [5, 5] and allocate_cells(0, [3, 4]) == [0, 0]
    assert allocate_cells(5, [10, 0, 10]) == [3, 0, 2]  # tie of remainders: the earlier cell


def test_holdout_and_test_reach_every_cell_with_unchanged_class_sizes(tmp_path, caplog):
    cells = {(0, "a"): 30, (0, "b"): 8, (0, "c"): 2, (1, "a"): 15, (1, "b"): 13, (1, "c"): 2}
    path = saved(tmp_path / "d", cells)
    plain = long_tail_info(load_long_tailed(path, holdout_per_class=3))
    with caplog.at_level(logging.WARNING, logger="hf_fairkd.data.group_splits"):
        dsd = load_long_tailed(path, holdout_per_class=3, group_columns=["g"])
    info = long_tail_info(dsd)
    assert (
        (info.test_counts, info.holdout_counts)
        == (plain.test_counts, plain.holdout_counts)
        == ([8, 6], [3, 3])
    )
    for split in ("test", "holdout"):
        assert set(cell_counter(dsd[split])) == set(cells)  # every cell has >= 2 rows: all present
    assert cell_counter(dsd["test"]) == {
        (0, "a"): 6,
        (0, "b"): 1,
        (0, "c"): 1,
        (1, "a"): 3,
        (1, "b"): 2,
        (1, "c"): 1,
    }
    assert cell_counter(dsd["holdout"])[(0, "a")] == 1  # allocate_cells(3, [24, 7, 1])
    ids = [set(dsd[s]["row_id"]) for s in dsd]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 70  # disjoint, nothing lost
    assert "no training row left" in caplog.text and "(class 'k0', group 'c')" in caplog.text
    again = load_long_tailed(path, holdout_per_class=3, group_columns=["g"])
    other = load_long_tailed(path, holdout_per_class=3, group_columns=["g"], seed=1)
    assert again["holdout"]["row_id"] == dsd["holdout"]["row_id"] != other["holdout"]["row_id"]


def test_a_balanced_test_carve_is_spread_over_the_cells_too(tmp_path):
    path = saved(tmp_path / "d", {(0, "a"): 16, (0, "b"): 4, (1, "a"): 2, (1, "b"): 18})
    dsd, _, _ = load_source(path, group_columns=["g"])  # no test split: 20 // 5 = 4 rows per class
    assert cell_counter(dsd["test"]) == {(0, "a"): 3, (0, "b"): 1, (1, "a"): 1, (1, "b"): 3}
    plain, _, _ = load_source(path)
    assert np.bincount(plain["test"]["label"]).tolist() == [4, 4]


def test_plan_holdout_without_groups_is_the_plain_seeded_plan():
    labels = np.random.default_rng(5).integers(0, 3, 60)
    train, holdout = plan_holdout(labels, 3, 4, seed=7)
    expected = []  # independent: per class, the first 4 rows of the seeded permutation
    for c in range(3):
        rows = np.flatnonzero(labels == c)
        expected += rows[np.random.default_rng([7, 2, c]).permutation(len(rows))[:4]].tolist()
    assert holdout.tolist() == sorted(expected) and sorted(train.tolist() + expected) == list(range(60))


def test_a_cell_too_small_is_named_then_refused_with_min_cell_rows(tmp_path, caplog, monkeypatch):
    path = saved(tmp_path / "d", {(0, "a"): 20, (0, "b"): 10, (1, "a"): 25, (1, "solo"): 1})
    with caplog.at_level(logging.WARNING, logger="hf_fairkd.data.group_splits"):
        load_long_tailed(path, holdout_per_class=2, group_columns=["g"])
    assert "(class 'k1', group 'solo', 1 row(s) in the train split, 0 in the holdout)" in caplog.text
    monkeypatch.setattr(Dataset, "select", lambda *a, **k: pytest.fail("rows selected before the check"))
    with pytest.raises(
        ValueError, match=r"fewer than min_cell_rows=1 .*group 'solo'.*--min_cell_rows"
    ) as err:
        load_long_tailed(path, holdout_per_class=2, group_columns=["g"], min_cell_rows=1)
    assert "group 'a'" not in str(err.value)
    with pytest.raises(
        ValueError, match=r"fewer than min_cell_rows=4 row\(s\) in the test split: .*'k0', group 'b'"
    ):
        load_long_tailed(path, holdout_per_class=2, group_columns=["g"], min_cell_rows=4)


# ------------------------------------------------------------------------------------------ bad input
def test_missing_group_column_names_the_available_ones(tmp_path, monkeypatch):
    folder = attribute_folder(tmp_path / "imgs")
    path = saved(tmp_path / "d", {(0, "a"): 10, (1, "a"): 10})
    no_decoding(monkeypatch)
    with pytest.raises(
        ValueError,
        match=r"\['colour'\] not found in the metadata file 'metadata.csv'.*available columns: \['site', 'age'\]",
    ):
        load_long_tailed(folder, group_columns=["colour"])
    with pytest.raises(
        ValueError, match=r"\['site'\] not found in the train split .*\['row_id', 'label', 'g'\]"
    ):
        load_long_tailed(path, group_columns=["site"])


def test_too_many_group_values_is_refused_with_the_override(tmp_path):
    path = saved(tmp_path / "d", {(0, "a"): 10, (1, "a"): 10})
    with pytest.raises(
        ValueError,
        match=r"'row_id' .* 20 distinct values, more than max_group_values=5.*--max_group_values 20",
    ):
        load_long_tailed(path, group_columns=["row_id"], max_group_values=5)
    info = long_tail_info(
        load_long_tailed(path, group_columns=["row_id"], max_group_values=20, holdout_per_class=0)
    )
    assert len(info.group_train_counts["row_id"]) == 16  # 20 rows less the carved test split


def test_metadata_rows_that_do_not_match_the_images(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    write_images(root, ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"])
    rows = [
        {"file_name": n, "site": "A"}
        for n in ("cat/0.png", "cat/1.png", "dog/0.png", "dog/9.png", "cat/7.png")
    ]
    write_metadata(root / "metadata.csv", rows)
    no_decoding(monkeypatch)
    with pytest.raises(ValueError) as err:
        load_source(str(root))
    message = str(err.value)
    assert "2 metadata row(s) without an image (first: ['dog/9.png', 'cat/7.png'])" in message
    assert "1 image(s) without a metadata row (first: ['dog/1.png'])" in message


def test_metadata_without_file_name(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    write_images(root, ["cat/0.png", "dog/0.png"])
    write_metadata(
        root / "metadata.csv", [{"name": "cat/0.png", "site": "A"}, {"name": "dog/0.png", "site": "B"}]
    )
    monkeypatch.setattr(loaders, "load_dataset", lambda *a, **k: pytest.fail("datasets loaded it"))
    with pytest.raises(ValueError, match=r"no 'file_name' column \(columns: \['name', 'site'\]\); add one"):
        load_long_tailed(str(root))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"min_cell_rows": 2}, "no group_columns were given"),
        ({"group_columns": ["g"], "min_cell_rows": 0}, "min_cell_rows must be an integer >= 1"),
        ({"group_columns": ["g"], "max_group_values": 0}, "max_group_values must be an integer >= 1"),
        ({"group_columns": ["g", "g"]}, "repeat a name"),
    ],
)
def test_bad_group_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_long_tailed(saved(tmp_path / "d", {(0, "a"): 10, (1, "a"): 10}), **kwargs)


def test_records_without_group_fields_still_load():
    old = {
        "source": "x", "label_column": "label", "image_column": None, "class_names": ["a", "b"],
        "profile": "natural", "imbalance_factor": 1.0, "seed": 0, "rare_classes": "label_id",
        "class_order": [0, 1], "long_tail_counts": [3, 3], "train_counts": [2, 2], "holdout_counts": [1, 1],
        "test_counts": [1, 1], "holdout_per_class": 1,
    }  # fmt: skip
    info = LongTailInfo.from_dict(old)
    assert (info.group_columns, info.group_train_counts, info.group_test_counts) == (None, None, None)


@pytest.mark.parametrize(
    "metadata,match",
    [
        ({"cat/metadata.csv": ["0.png"]}, r"'cat/metadata.csv' .* neither the root nor a split folder"),
        (
            {"train/metadata.csv": ["cat/0.png", "dog/0.png"]},
            r"split folder\(s\) \['test'\] .* no metadata file",
        ),
        (
            {"metadata.csv": ["train/cat/0.png"], "train/metadata.csv": ["cat/0.png"]},
            "at the root and others",
        ),
    ],
    ids=["in_a_class_folder", "a_split_without_one", "root_and_split"],
)
def test_misplaced_metadata_files(tmp_path, metadata, match):
    root = tmp_path / "imgs"
    write_images(root, [f"{s}/{c}/0.png" for s in ("train", "test") for c in ("cat", "dog")])
    for name, files in metadata.items():
        write_metadata(root / name, [{"file_name": f, "site": "A"} for f in files])
    with pytest.raises(ValueError, match=match):
        load_source(str(root))


def test_a_label_column_in_the_metadata_must_be_named(tmp_path):
    root = tmp_path / "imgs"
    write_images(root, ["cat/0.png", "dog/0.png"])
    write_metadata(
        root / "metadata.csv",
        [{"file_name": "cat/0.png", "label": 1}, {"file_name": "dog/0.png", "label": 0}],
    )
    with pytest.raises(ValueError, match="column named 'label', the name of the class-folder label column"):
        load_source(str(root))
    train = load_metadata_folder(str(root), label_column="label")["train"]
    assert files_of(train) == ["cat/0.png", "dog/0.png"] and train["label"] == [1, 0]
    assert train.features["label"].names == ["0", "1"]
