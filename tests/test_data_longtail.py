"""Long-tail counts, make_long_tailed, split_holdout and the metadata that travels with the data."""

import json
import math

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, load_from_disk

from hf_fairkd.data import (
    LongTailInfo,
    long_tail_counts,
    long_tail_info,
    make_long_tailed,
    save_long_tailed,
    split_holdout,
)

CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def synthetic(sizes, *, description="", int_labels=False, bad_images=False):
    """Rows with a unique row_id; class c has sizes[c] rows, interleaved across classes."""
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    labels = labels[np.random.default_rng(123).permutation(len(labels))]
    data = {"row_id": np.arange(len(labels)), "label": labels}
    label_feature = Value("int64") if int_labels else ClassLabel(names=[f"c{i}" for i in range(len(sizes))])
    features = {"row_id": Value("int64"), "label": label_feature}
    if bad_images:
        # Bytes that are not an image: any decode would raise, so success proves nothing was decoded.
        data["image"] = [{"bytes": b"not an image", "path": None}] * len(labels)
        features["image"] = Image()
    ds = Dataset.from_dict(data, features=Features(features))
    ds.info.description = description
    return ds


def per_class(ds, num_classes):
    return np.bincount(np.asarray(ds["label"]), minlength=num_classes).tolist()


# ---------------------------------------------------------------------------------------------- counts
def test_cifar10_lt_counts_exact():
    counts = long_tail_counts(5000, 10, 100)
    assert counts == CIFAR10_LT_100
    assert sum(counts) == 12406


def test_cifar100_lt_counts_exact():
    counts = long_tail_counts(500, 100, 100)
    assert len(counts) == 100 and counts[0] == 500 and counts[-1] == 5
    assert sum(counts) == 10847
    assert all(a >= b for a, b in zip(counts, counts[1:]))


@pytest.mark.parametrize(
    "n_max,m,rho",
    # (100, 6, 32): 100 * 32 ** (-2 / 5) is 24.999999999999996 in floats but exactly 25.
    [
        (5000, 10, 100),
        (500, 100, 100),
        (600, 7, 10),
        (1000, 13, 50),
        (64, 5, 2),
        (100, 6, 32),
        (5000, 11, 32),
    ],
)
def test_exp_counts_match_exact_integer_closed_form(n_max, m, rho):
    # k = floor(n_max * rho^(-i/(m-1)))  <=>  k^(m-1) * rho^i <= n_max^(m-1) < (k+1)^(m-1) * rho^i (integer maths).
    for i, k in enumerate(long_tail_counts(n_max, m, rho)):
        assert k ** (m - 1) * rho**i <= n_max ** (m - 1) < (k + 1) ** (m - 1) * rho**i


def test_rho_one_is_balanced():
    assert long_tail_counts(37, 6, 1) == [37] * 6
    assert long_tail_counts(37, 6, 1, profile="step") == [37] * 6


def test_step_profile():
    assert long_tail_counts(5000, 10, 100, profile="step") == [5000] * 5 + [50] * 5
    # ceil(0.5 * 5) = 3 minority classes; floor(100 / 3) = 33
    assert long_tail_counts(100, 5, 3, profile="step") == [100, 100, 33, 33, 33]
    assert long_tail_counts(100, 10, 10, profile="step", step_fraction=0.2) == [100] * 8 + [10] * 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"imbalance_factor": 0.5}, "imbalance_factor must be a finite number >= 1"),
        ({"imbalance_factor": float("nan")}, "imbalance_factor must be"),
        ({"imbalance_factor": 100, "n_max": 50}, r"class rank 8 .*imbalance_factor <= 50"),
        ({"imbalance_factor": 100, "n_max": 50, "profile": "step"}, r"class rank 5 .*imbalance_factor <= 50"),
        ({"imbalance_factor": 10, "profile": "linear"}, "profile must be one of"),
        ({"imbalance_factor": 10, "num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"imbalance_factor": 10, "n_max": 0}, "n_max must be an integer >= 1"),
        (
            {"imbalance_factor": 10, "profile": "step", "step_fraction": 1.0},
            r"step_fraction must be in \(0, 1\)",
        ),
        ({"imbalance_factor": 10, "profile": "step", "step_fraction": 0.95}, "every class a minority"),
    ],
)
def test_long_tail_counts_errors(kwargs, match):
    args = {"n_max": 500, "num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        long_tail_counts(**args)


# -------------------------------------------------------------------------------------- make_long_tailed
def test_make_long_tailed_counts_and_metadata():
    ds = synthetic([40, 45, 50, 41, 60])
    lt = make_long_tailed(ds, 10)
    info = long_tail_info(lt)
    expected = long_tail_counts(40, 5, 10)  # n_max defaults to the smallest class (40)
    assert per_class(lt, 5) == expected  # default: class 0 most frequent, class 4 rarest
    assert info.long_tail_counts == expected == info.train_counts
    assert info.class_order == [0, 1, 2, 3, 4]
    assert info.rare_classes == "label_id"
    assert info.class_names == ["c0", "c1", "c2", "c3", "c4"]
    assert info.imbalance_factor == 10.0 and info.profile == "exp"
    assert len(set(lt["row_id"])) == len(lt)  # no duplicated rows
    assert ds.info.description == ""  # the input is left untouched


def test_make_long_tailed_rows_come_from_the_right_class():
    ds = synthetic([30, 30, 30])
    lt = make_long_tailed(ds, 5)
    source_label = dict(zip(ds["row_id"], ds["label"]))
    assert all(source_label[r] == y for r, y in zip(lt["row_id"], lt["label"]))


def test_make_long_tailed_seed_determinism():
    ds = synthetic([50] * 4)
    a, b = make_long_tailed(ds, 5, seed=3), make_long_tailed(ds, 5, seed=3)
    c = make_long_tailed(ds, 5, seed=4)
    assert a["row_id"] == b["row_id"]
    assert a["row_id"] != c["row_id"]
    assert per_class(a, 4) == per_class(c, 4)


@pytest.mark.parametrize("option,canonical", [("reversed", "reversed"), ("first_ids", "reversed")])
def test_reversed_order(option, canonical):
    lt = make_long_tailed(synthetic([30] * 4), 10, rare_classes=option)
    assert per_class(lt, 4) == long_tail_counts(30, 4, 10)[::-1]
    assert long_tail_info(lt).rare_classes == canonical
    assert long_tail_info(lt).class_order == [3, 2, 1, 0]


def test_last_ids_alias_equals_default():
    ds = synthetic([30] * 4)
    assert make_long_tailed(ds, 10, rare_classes="last_ids")["row_id"] == make_long_tailed(ds, 10)["row_id"]


def test_permutation_order_is_seeded_and_consistent():
    ds = synthetic([30] * 6)
    info = long_tail_info(make_long_tailed(ds, 10, rare_classes="permutation", seed=1))
    assert sorted(info.class_order) == list(range(6))
    ranks = long_tail_counts(30, 6, 10)
    assert [info.long_tail_counts[c] for c in info.class_order] == ranks
    others = {
        tuple(long_tail_info(make_long_tailed(ds, 10, rare_classes="permutation", seed=s)).class_order)
        for s in range(2, 6)
    }
    assert len(others | {tuple(info.class_order)}) > 1


def test_step_profile_and_explicit_n_max():
    lt = make_long_tailed(synthetic([40] * 4), 4, profile="step", n_max=20)
    assert per_class(lt, 4) == [20, 20, 5, 5]


def test_integer_label_column_and_indices_mapping():
    ds = synthetic([30, 20, 25], int_labels=True)
    view = ds.select(np.arange(len(ds))[::-1])  # a dataset with an indices mapping
    lt = make_long_tailed(view, 4)
    info = long_tail_info(lt)
    assert info.class_names == ["0", "1", "2"]
    assert per_class(lt, 3) == info.long_tail_counts == long_tail_counts(20, 3, 4)


def test_no_image_is_decoded():
    lt = make_long_tailed(synthetic([30, 30, 30], bad_images=True), 10)
    assert long_tail_info(lt).image_column == "image"
    assert per_class(lt, 3) == long_tail_counts(30, 3, 10)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"label_column": "target"},
            r"label column 'target' not found; available columns: \['row_id', 'label'\]",
        ),
        ({"imbalance_factor": 0.9}, "imbalance_factor must be a finite number >= 1"),
        ({"imbalance_factor": 100}, r"class rank 3 .*imbalance_factor <= 30"),
        ({"n_max": 31}, "class 0 needs 31 rows .* has only 30"),
        ({"rare_classes": "random"}, "rare_classes must be one of"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_make_long_tailed_errors(kwargs, match):
    args = {"imbalance_factor": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_long_tailed(synthetic([30] * 4), **args)


def test_non_integer_label_column_rejected():
    ds = Dataset.from_dict({"label": ["a", "b"], "x": [1, 2]})
    with pytest.raises(ValueError, match="not a ClassLabel or integer"):
        make_long_tailed(ds, 2)


def test_empty_class_rejected():
    ds = Dataset.from_dict(
        {"label": [0, 0, 2, 2]}, features=Features({"label": ClassLabel(names=list("abc"))})
    )
    with pytest.raises(ValueError, match="class 1 has no rows"):
        make_long_tailed(ds, 2)


# ------------------------------------------------------------------------------------------- metadata
def test_metadata_survives_select_map_and_disk(tmp_path):
    lt = make_long_tailed(synthetic([30] * 3, description="Source card text."), 3)
    info = long_tail_info(lt)
    assert lt.info.description.startswith("Source card text.")
    assert long_tail_info(lt.select([0, 1, 2])) == info
    assert long_tail_info(lt.map(lambda row: {"twice": row["row_id"] * 2})) == info
    dsd = DatasetDict(train=lt, test=lt.select(range(5)))
    dsd.save_to_disk(str(tmp_path / "plain"))
    back = load_from_disk(str(tmp_path / "plain"))
    assert long_tail_info(back) == info == long_tail_info(back["test"])


def test_rebuilding_replaces_the_metadata_line():
    lt = make_long_tailed(synthetic([40] * 3), 2)
    again = make_long_tailed(lt, 1.5)
    assert again.info.description.count("hf_fairkd.LongTailInfo") == 1
    assert long_tail_info(again).imbalance_factor == 1.5


def test_save_long_tailed_writes_json(tmp_path):
    lt = make_long_tailed(synthetic([30] * 3), 3)
    save_long_tailed(DatasetDict(train=lt), tmp_path / "out")
    written = json.loads((tmp_path / "out" / "long_tail_info.json").read_text())
    assert LongTailInfo.from_dict(written) == long_tail_info(lt)
    assert long_tail_info(load_from_disk(str(tmp_path / "out"))) == long_tail_info(lt)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_missing_metadata_errors():
    with pytest.raises(ValueError, match="carries no LongTailInfo"):
        long_tail_info(synthetic([3, 3]))
    with pytest.raises(ValueError, match="no LongTailInfo in any split"):
        long_tail_info(DatasetDict(train=synthetic([3, 3])))
    with pytest.raises(ValueError, match="missing"):
        LongTailInfo.from_dict({"source": "x"})


def test_info_dict_roundtrip_is_json():
    info = long_tail_info(make_long_tailed(synthetic([20] * 3), 2))
    assert LongTailInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


# ---------------------------------------------------------------------------------------------- holdout
def test_split_holdout_int_disjoint_stratified():
    ds = synthetic([20, 12, 7])
    train, holdout = split_holdout(ds, 3, seed=5)
    assert per_class(holdout, 3) == [3, 3, 3]
    assert per_class(train, 3) == [17, 9, 4]
    assert set(train["row_id"]).isdisjoint(holdout["row_id"])
    assert sorted([*train["row_id"], *holdout["row_id"]]) == sorted(ds["row_id"])
    again, _ = split_holdout(ds, 3, seed=5)
    other, _ = split_holdout(ds, 3, seed=6)
    assert again["row_id"] == train["row_id"] != other["row_id"]


def test_split_holdout_fraction_rounds_half_up_with_minimum():
    ds = synthetic([40, 10, 3])
    _, holdout = split_holdout(ds, 0.25)
    # 0.25 * 40 = 10; 0.25 * 10 = 2.5 -> 3; 0.25 * 3 = 0.75 -> 1 (also the minimum)
    assert per_class(holdout, 3) == [10, 3, 1]
    _, holdout = split_holdout(ds, 0.1, min_per_class=2)
    assert per_class(holdout, 3) == [4, 2, 2]


def test_split_holdout_updates_metadata():
    lt = make_long_tailed(synthetic([30] * 3), 3)
    train, holdout = split_holdout(lt, 4)
    for split in (train, holdout):
        info = long_tail_info(split)
        assert info.train_counts == per_class(train, 3)
        assert info.holdout_counts == per_class(holdout, 3) == [4, 4, 4]
        assert info.long_tail_counts == long_tail_counts(30, 3, 3)
        assert info.holdout_per_class == 4


@pytest.mark.parametrize(
    "holdout,match",
    [
        (7, r"holdout larger than a class: class 2 has 7 rows .* holdout_per_class <= 6"),
        (0.95, "holdout larger than a class: class 2 has 7 rows"),
        (1.5, r"must be in \(0, 1\)"),
        (-1, "must be >= 0"),
        ("3", "must be an int or a float"),
    ],
)
def test_split_holdout_errors(holdout, match):
    with pytest.raises(ValueError, match=match):
        split_holdout(synthetic([20, 12, 7]), holdout)


def test_split_holdout_checks_before_selecting(monkeypatch):
    ds = synthetic([5, 5])

    def boom(*args, **kwargs):
        raise AssertionError("select called before validation")

    monkeypatch.setattr(Dataset, "select", boom)
    with pytest.raises(ValueError, match="holdout larger than a class"):
        split_holdout(ds, 5)


def test_exp_rarest_class_is_exact():
    # Guard against the classic off-by-one: the rarest class at rho = n_max / n_min is exactly n_min.
    for n_max, rho in [(5000, 100), (500, 100), (1000, 10), (300, 3)]:
        assert long_tail_counts(n_max, 10, rho)[-1] == math.floor(n_max / rho + 0.5)


def test_zero_holdout_gives_empty_split_with_metadata():
    lt = make_long_tailed(synthetic([30] * 3), 3)
    before = lt.info.description
    train, holdout = split_holdout(lt, 0)
    assert len(holdout) == 0 and len(train) == len(lt)
    assert long_tail_info(holdout).holdout_counts == [0, 0, 0]
    assert holdout.features == lt.features
    assert lt.info.description == before  # the input keeps its own metadata


# ------------------------------------------------------------------------------------ the natural profile
def test_natural_sizes_keep_every_row_and_name_too_small_classes():
    from hf_fairkd.data.info import describe_profile
    from hf_fairkd.data.natural import measured_imbalance, natural_order, natural_sizes

    counts = [136, 127, 93, 68, 58, 37, 34, 23, 14, 11]
    test, holdout = natural_sizes(counts, list("abcdefghij"), 1, 0.2)
    assert test == [27, 25, 19, 14, 12, 7, 7, 5, 3, 2] and holdout == [1] * 10
    assert natural_sizes(counts, list("abcdefghij"), 2) == ([0] * 10, [2] * 10)  # the source has a test split
    assert natural_order([3, 9, 3, 1]) == [1, 0, 2, 3] and measured_imbalance([12, 3, 6]) == 4.0
    with pytest.raises(ValueError, match=r"'b' \(3 rows, needs 4\).*holdout_per_class=2"):
        natural_sizes([20, 3], ["a", "b"], 2, 0.2)
    with pytest.raises(ValueError, match="test_fraction must be a fraction"):
        natural_sizes([20, 30], ["a", "b"], 1, 1.5)
    info = LongTailInfo(
        "x", "label", None, ["a", "b"], "natural", 2.0, 0, "label_id", [0, 1], [10, 5], [9, 4], [1, 1], [], 1
    )
    assert describe_profile(info) == (
        "natural profile: your data as it is, 13 training rows (measured imbalance max/min 2)"
    )
    # a record written before test_carved existed still loads
    old = {k: v for k, v in info.to_dict().items() if k != "test_carved"}
    assert LongTailInfo.from_dict(old) == info
