"""A teacher cache is tied to its rows' inputs: changed inputs are refused, row operations are not."""

import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets import Array3D, ClassLabel, Dataset, Features, List, Value
from test_teacher_cache import sharp_teacher
from tiny_models import image_dataset, make_vit, tiny_args

from hf_fairkd import DistillationTrainer
from hf_fairkd import teacher as tc
from hf_fairkd.teacher.input_digest import SAMPLE_ROWS, input_columns, row_digests, sample_rows

CHANGED = (
    r"The teacher cache does not belong to these inputs: 16 of 16 rows checked .* other values in "
    r"\['pixel_values'\] than when the cache was built.*Build the cache last.*build_teacher_cache"
)


@pytest.fixture(scope="module")
def train():
    return image_dataset((12, 8, 4), seed=0)


@pytest.fixture(scope="module")
def teacher():
    return sharp_teacher()


@pytest.fixture(scope="module")
def cached(train, teacher):
    return tc.build_teacher_cache(train, teacher)


def trained_logits(dataset, tmp_path, teacher=None, **args) -> tuple[torch.Tensor, torch.Tensor]:
    """(the teacher logits a trainer reads from its first training batch, that batch's pixel values)."""
    trainer = DistillationTrainer(
        model=make_vit(), args=tiny_args(tmp_path, **args), teacher=teacher, train_dataset=dataset
    )
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer.teacher_source.split_batch(batch)[2], batch["pixel_values"]


def online(teacher, pixel_values) -> torch.Tensor:
    with torch.no_grad():
        return teacher(pixel_values=pixel_values).logits


# ------------------------------------------------------------------------------------------ refused
def test_a_cache_whose_inputs_changed_is_refused(cached, teacher, tmp_path):
    """The audit's reproduction: a cache built, its pixel values shifted by a map, the same teacher passed."""
    shifted = cached.map(lambda batch: {"pixel_values": batch["pixel_values"] + 3.0}, batched=True)
    # the record survives the map: only the rows' inputs tell the cache apart from its source
    assert tc.teacher_cache_info(shifted) == tc.teacher_cache_info(cached)
    cached_logits = tc.cached_logits_from_batch(shifted[:8], 3)
    assert (cached_logits - online(teacher, shifted[:8]["pixel_values"])).abs().max() > 1.0  # stale logits
    for given in (teacher, None):  # with the teacher (whose fingerprint matches) and from the cache alone
        with pytest.raises(ValueError, match=CHANGED):
            DistillationTrainer(
                model=make_vit(), args=tiny_args(tmp_path), teacher=given, train_dataset=shifted
            )
    holdout = shifted.select(range(10))
    with pytest.raises(ValueError, match="does not belong to these inputs"):  # the holdout is checked too
        DistillationTrainer(
            model=make_vit(),
            args=tiny_args(tmp_path, objective="ada_alpha"),
            train_dataset=cached,
            holdout_dataset=holdout,
        )
    with pytest.raises(ValueError, match="does not belong to these inputs"):
        tc.check_cache(shifted, num_classes=3)


def test_a_change_to_one_row_is_caught_when_it_is_checked(cached):
    """The check reads a seeded sample of rows: a change to a sampled row is refused, its neighbour's not."""
    checked = sample_rows(cached.num_rows)
    assert len(checked) == SAMPLE_ROWS == len(set(checked)) < cached.num_rows
    assert sample_rows(cached.num_rows) == checked  # seeded: the same rows every time
    unchecked = next(i for i in range(cached.num_rows) if i not in checked)

    def bump(index):
        return cached.map(
            lambda row, i: {"pixel_values": row["pixel_values"] + (0.5 if i == index else 0.0)},
            with_indices=True,
        )

    with pytest.raises(ValueError, match=rf"1 of 16 rows checked \(e\.g\. row {checked[3]}\)"):
        tc.check_cache(bump(checked[3]), num_classes=3)
    assert tc.check_cache(bump(unchecked), num_classes=3)["kind"] == "dense"  # a sample: not every row


def test_a_cache_without_its_input_columns_is_refused(cached):
    with pytest.raises(ValueError, match=r"input columns \['teacher_input_digest'\] are not in the dataset"):
        tc.check_cache(cached.remove_columns([tc.INPUT_DIGEST_COLUMN]), num_classes=3)
    with pytest.raises(ValueError, match=r"input columns \['pixel_values'\] are not in the dataset"):
        tc.check_cache(cached.remove_columns(["pixel_values"]), num_classes=3)


def test_the_stored_columns_of_a_transformed_dataset_are_checked(train, teacher, tmp_path):
    """With a transform the teacher's inputs are made from stored columns it does not name: every stored
    column but the labels is checked, read without the transform."""
    raw = Dataset.from_dict(
        {
            "pixels": [np.asarray(x).ravel().tolist() for x in train.with_format("numpy")["pixel_values"]],
            "labels": train["labels"],
        },
        features=Features({"pixels": List(Value("float32")), "labels": train.features["labels"]}),
    )

    def transform(batch):
        return {
            "pixel_values": torch.tensor(batch["pixels"]).reshape(-1, 1, 8, 8),
            "labels": torch.tensor(batch["labels"]),
            **tc.cache_columns_as_tensors(batch),
        }

    cached = tc.build_teacher_cache(raw.with_transform(transform), teacher)
    assert tc.teacher_cache_info(cached)["input_columns"] == ["pixels"]
    logits, pixels = trained_logits(cached, tmp_path)
    torch.testing.assert_close(logits, online(teacher, pixels), rtol=1e-3, atol=1e-2)
    relabelled = cached.map(lambda row: {"labels": 2 - row["labels"]})  # labels are not teacher inputs
    assert tc.check_cache(relabelled, num_classes=3)["kind"] == "dense"
    doubled = cached.with_format(None).map(lambda row: {"pixels": [2 * p for p in row["pixels"]]})
    with pytest.raises(ValueError, match=r"does not belong to these inputs.*\['pixels'\]"):
        tc.check_cache(doubled.with_transform(transform), num_classes=3)


# ------------------------------------------------------------------------------------------ accepted
def test_row_operations_keep_the_cache_valid(cached, teacher, tmp_path):
    """Rows selected, shuffled, filtered, given columns, transformed, saved, or their inputs written back
    unchanged in another width: accepted, and the logits read for each batch are the teacher's of its rows."""
    same_values = cached.with_format(None).map(
        lambda row: {"pixel_values": np.asarray(row["pixel_values"], dtype=np.float64).tolist()},
        features=Features({**cached.features, "pixel_values": List(List(List(Value("float64"))))}),
    )
    assert same_values.features["pixel_values"].feature.feature.feature.dtype == "float64"
    tc.save_teacher_cache(cached, tmp_path / "saved")
    variants = {
        "select": cached.select([5, 1, 20, 3, 9, 14, 0, 7, 22, 11]),
        "shuffle": cached.shuffle(seed=3),
        "filter": cached.filter(lambda row: row["labels"] != 0),
        "add_column": cached.add_column("site", ["a", "b"] * 12),
        "map_new_column": cached.map(lambda row: {"brightness": float(row["pixel_values"].mean())}),
        "with_transform": cached.with_transform(
            lambda batch: {**batch, **tc.cache_columns_as_tensors(batch)}
        ),
        "with_format": cached.with_format("numpy").with_format("torch"),
        "saved": tc.load_teacher_cache(tmp_path / "saved").with_format("torch"),
        "float64_rewrite": same_values.with_format("torch"),
    }
    for name, dataset in variants.items():
        logits, pixels = trained_logits(dataset, tmp_path, teacher=teacher)
        torch.testing.assert_close(logits, online(teacher, pixels.float()), rtol=1e-3, atol=1e-2, msg=name)


def test_the_trainers_own_group_ids_column_keeps_the_cache_valid(train, teacher, tmp_path):
    sites = ["a", "b"] * 12
    cached = tc.build_teacher_cache(train.add_column("site", sites), teacher)
    assert tc.teacher_cache_info(cached)["input_columns"] == ["pixel_values"]
    args = tiny_args(tmp_path, objective="robust_kd", dro_groups="group", group_columns=["site"])
    trainer = DistillationTrainer(
        model=make_vit(), args=args, train_dataset=cached, holdout_dataset=cached.select(range(12))
    )
    assert "group_ids" in trainer.train_dataset.column_names  # added after the cache was built, and accepted
    batch = next(iter(trainer.get_train_dataloader()))
    assert tc.INPUT_DIGEST_COLUMN not in batch  # the digests never reach a batch


# ------------------------------------------------------------------------------------------ digests
def test_digests_follow_the_values_not_their_encoding():
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(6, 3, 4, 4)).astype(np.float32)
    table = Dataset.from_dict({"x": pixels}, features=Features({"x": List(List(List(Value("float32"))))}))
    as_array3d = Dataset.from_dict({"x": pixels}, features=Features({"x": Array3D((3, 4, 4), "float32")}))
    as_float64 = Dataset.from_dict(
        {"x": pixels.astype(np.float64)}, features=Features({"x": List(List(List(Value("float64"))))})
    )

    def digests(dataset, rows=None):
        data = dataset.with_format("arrow")
        return row_digests(data[:] if rows is None else data[rows], ["x"])

    reference = digests(table)
    assert len(set(reference)) == 6 and all(len(d) == 16 for d in reference)
    assert digests(as_array3d) == digests(as_float64) == reference
    assert digests(table.select([4, 0, 2])) == [reference[4], reference[0], reference[2]]
    assert digests(table, [5, 1]) == [
        reference[5],
        reference[1],
    ]  # a row's digest does not depend on its place
    changed = pixels.copy()
    changed[2, 1, 3, 0] += 1e-3  # one value of one row
    after = digests(Dataset.from_dict({"x": changed}, features=table.features))
    assert after[2] != reference[2] and after[:2] + after[3:] == reference[:2] + reference[3:]
    reshaped = Dataset.from_dict(
        {"x": pixels.reshape(6, 4, 4, 3)}, features=Features({"x": List(List(List(Value("float32"))))})
    )
    assert not set(digests(reshaped)) & set(reference)  # the same values in another shape: other inputs


def test_digests_of_strings_bytes_and_structs():
    images = [{"bytes": b"\x89PNG-a", "path": None}, {"bytes": b"\x89PNG-b", "path": "b.png"}]
    table = pa.table({"image": images, "text": ["one", "two"], "ids": [[1, 2, 3], [1, 2]]})
    first = row_digests(table, ["image", "text", "ids"])
    assert first[0] != first[1]
    for column, other in (
        ("image", [{"bytes": b"\x89PNG-a", "path": None}, {"bytes": b"\x89PNG-c", "path": "b.png"}]),
        ("text", ["one", "tw0"]),
        ("ids", [[1, 2, 3], [1, 3]]),
    ):
        changed = row_digests(
            table.set_column(table.column_names.index(column), column, [other]), table.column_names
        )
        assert changed[0] == first[0] and changed[1] != first[1], column
    assert row_digests(table.slice(1), table.column_names) == first[1:]


def test_labels_are_not_inputs_and_a_classlabel_column_is_a_label():
    data = Dataset.from_dict(
        {"pixel_values": [[0.0]], "fine": [0], "labels": [0], "site": ["a"]},
        features=Features(
            {
                "pixel_values": List(Value("float32")),
                "fine": ClassLabel(names=["x"]),
                "labels": Value("int64"),
                "site": Value("string"),
            }
        ),
    )
    assert input_columns(data, {"pixel_values"}, reads_stored=True) == ["pixel_values"]
    assert input_columns(data, None, reads_stored=True) == ["pixel_values", "site"]
    assert input_columns(data, {"pixel_values"}, reads_stored=False) == ["pixel_values", "site"]
