"""Teacher-logit cache: same loss as the online teacher, top-k reconstruction, fingerprints and refusals."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value
from tiny_models import image_dataset, make_vit, tiny_args
from transformers import AutoModelForImageClassification

from hf_fairkd import DistillationTrainer
from hf_fairkd import teacher as tc
from hf_fairkd.teacher import cache_format, label_permutation
from hf_fairkd.teacher.cache_record import attach_record

TESTS = Path(__file__).resolve().parent


def sharp_teacher(seed: int = 1) -> torch.nn.Module:
    """A random ViT with a scaled-up head, so its logits (and the distillation term) are far from uniform."""
    teacher = make_vit(seed=seed, hidden=32)
    with torch.no_grad():
        teacher.classifier.weight.mul_(40)
    return teacher


@pytest.fixture(scope="module")
def train():
    return image_dataset((12, 8, 4), seed=0)


@pytest.fixture(scope="module")
def teacher():
    return sharp_teacher()


def online_logits(teacher, dataset) -> torch.Tensor:
    with torch.no_grad():
        return teacher(pixel_values=dataset[:]["pixel_values"]).logits


def dense(cached, num_classes: int = 3) -> torch.Tensor:
    """The float32 logits of a dense cache, read as the trainer reads a batch."""
    return tc.cached_logits_from_batch(cached[:], num_classes)


def batch_loss(dataset, tmp_path, teacher=None, **args) -> float:
    trainer = DistillationTrainer(
        model=make_vit(seed=0), args=tiny_args(tmp_path, **args), teacher=teacher, train_dataset=dataset
    )
    return trainer.compute_loss(trainer.model, dict(dataset[:10])).item()


# ------------------------------------------------------------------------------------------ same loss
@pytest.mark.parametrize("dtype, rel", [("float16", 1e-3), ("float32", 1e-6)])
def test_cached_loss_equals_online_loss(dtype, rel, train, teacher, tmp_path):
    cached = tc.build_teacher_cache(train, teacher, dtype=dtype, batch_size=7)
    torch.testing.assert_close(dense(cached), online_logits(teacher, train), rtol=rel, atol=rel)
    online = batch_loss(train, tmp_path, teacher=teacher)
    from_cache = batch_loss(cached, tmp_path)
    assert from_cache == pytest.approx(online, rel=rel)
    # and the loss does depend on the teacher, so the equality above is not vacuous
    other = tc.build_teacher_cache(train, sharp_teacher(seed=7), dtype=dtype)
    assert abs(batch_loss(other, tmp_path) - online) > 100 * rel * online


def test_topk_with_all_classes_equals_dense_exactly(train, teacher, tmp_path):
    dense = tc.build_teacher_cache(train, teacher)
    topk = tc.build_teacher_cache(train, teacher, top_k=3)
    assert torch.equal(
        tc.cached_logits_from_batch(topk[:], 3, "spread"), tc.cached_logits_from_batch(dense[:], 3)
    )
    assert batch_loss(topk, tmp_path) == batch_loss(dense, tmp_path)


def test_topk_columns_hold_the_largest_logits_and_the_tail_mass(train, teacher):
    cached = tc.build_teacher_cache(train, teacher, top_k=2, dtype="float32")
    logits = online_logits(teacher, train)
    rows = cached[:]
    values, indices = logits.topk(2, dim=-1)
    torch.testing.assert_close(rows[cache_format.TOPK_LOGITS_COLUMN], values, rtol=1e-6, atol=1e-5)
    assert torch.equal(rows[cache_format.TOPK_INDICES_COLUMN].long(), indices)
    tail = torch.logsumexp(logits.scatter(1, indices, -torch.inf), -1)  # the one class outside the top 2
    torch.testing.assert_close(rows[cache_format.TAIL_LOGSUMEXP_COLUMN], tail, rtol=1e-6, atol=1e-5)
    assert cached.features[cache_format.TOPK_INDICES_COLUMN].feature.dtype == "uint8"
    assert tc.teacher_cache_info(cached)["format_version"] == 4


# ------------------------------------------------------------------------------------------ storage
DAMAGED = (
    r"teacher cache column 'teacher_logits' has rows .*damaged.*"
    r"Rebuild the cache with hf_fairkd\.teacher\.build_teacher_cache"
)


@pytest.mark.parametrize("dtype, size, rel", [("float16", 2, 1e-3), ("float32", 4, 1e-6)])
def test_dense_rows_are_one_binary_value_of_the_teachers_logits(dtype, size, rel, train, teacher, tmp_path):
    cached = tc.build_teacher_cache(train, teacher, dtype=dtype, batch_size=5)
    assert pa.types.is_binary(cached.data.table.column(tc.DENSE_COLUMN).type)  # the Arrow column itself
    record = tc.teacher_cache_info(cached)
    assert record["format_version"] == 4 and record["dense_encoding"] == cache_format.DENSE_ENCODING
    rows = cached.with_format(None)[:][tc.DENSE_COLUMN]
    # decoded independently: m little-endian values of the cache dtype per row, in class order, then the
    # byte giving their size
    assert {len(row) for row in rows} == {3 * size + 1} and {row[-1] for row in rows} == {size}
    little = np.dtype(dtype).newbyteorder("<")
    stored = np.stack([np.frombuffer(row[:-1], dtype=little) for row in rows])
    torch.testing.assert_close(
        torch.tensor(stored.astype(np.float32)), online_logits(teacher, train), rtol=rel, atol=rel
    )
    for fmt in (None, "numpy", "torch"):  # every format of the dataset reads back exactly those values
        assert torch.equal(dense(cached.with_format(fmt)), torch.tensor(stored.astype(np.float32)))
    tc.save_teacher_cache(cached, tmp_path / "cache")
    loaded = tc.load_teacher_cache(tmp_path / "cache").with_format("torch")
    assert torch.equal(dense(loaded), torch.tensor(stored.astype(np.float32)))
    # the trainer's own batches (its collator stacks the bytes) carry the logits in the cache dtype
    trainer = DistillationTrainer(model=make_vit(), args=tiny_args(tmp_path), train_dataset=cached)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch[tc.DENSE_COLUMN].dtype == getattr(torch, dtype)
    expected = online_logits(
        teacher, Dataset.from_dict({"pixel_values": batch["pixel_values"].numpy()}).with_format("torch")
    )
    torch.testing.assert_close(trainer.teacher_source.split_batch(batch)[2], expected, rtol=rel, atol=rel)
    # top-k columns stay fixed-length lists (small: k values and ids per row)
    topk = tc.build_teacher_cache(train, teacher, dtype=dtype, top_k=2)
    assert all(pa.types.is_fixed_size_list(topk.data.table.column(c).type) for c in tc.TOPK_COLUMNS[:2])


OLD_FORMAT = r"This teacher cache is of format {}, .* reads format 4 only: rebuild it\..*build_teacher_cache"


def test_an_older_format_cache_is_refused_with_rebuild_it(train, teacher, tmp_path):
    cached = tc.build_teacher_cache(train, teacher)
    record = tc.teacher_cache_info(cached)
    # format 3: the same binary rows, no input digests; format 2: a list of floats per row
    three = cached.remove_columns([tc.INPUT_DIGEST_COLUMN])
    attach_record(three, {k: v for k, v in record.items() if k != "input_columns"} | {"format_version": 3})
    logits = tc.cached_logits_from_batch(cached.with_format(None)[:], 3).numpy().astype("float16")
    two = three.remove_columns([tc.DENSE_COLUMN]).add_column(
        tc.DENSE_COLUMN, logits.tolist(), feature=List(Value("float16"), length=3)
    )
    attach_record(two, {k: v for k, v in record.items() if k != "dense_encoding"} | {"format_version": 2})
    for version, old in ((3, three), (2, two)):
        with pytest.raises(ValueError, match=OLD_FORMAT.format(version)):
            DistillationTrainer(
                model=make_vit(), args=tiny_args(tmp_path), teacher=teacher, train_dataset=old
            )
        with pytest.raises(ValueError, match=OLD_FORMAT.format(version)):
            DistillationTrainer(model=make_vit(), args=tiny_args(tmp_path), train_dataset=old)
        old.save_to_disk(tmp_path / f"format{version}")
        with pytest.raises(ValueError, match=OLD_FORMAT.format(version)):
            tc.load_teacher_cache(tmp_path / f"format{version}")
    # the same cache with its own record is read
    assert DistillationTrainer(model=make_vit(), args=tiny_args(tmp_path), train_dataset=cached) is not None


def test_rows_keep_their_length_in_every_format():
    # the torch and numpy formats pass binary values through numpy's fixed-width bytes, which drop trailing NUL
    # bytes: raw float16 logits ending in 0.0 (00 00) would come back short; the size byte at the end is not NUL
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 0.0], [-1.0, 0.0, 3.0]])
    cached = logits_cache(logits)
    collate = tc.CacheCollator(lambda rows: {"n": len(rows)})
    for fmt in (None, "numpy", "torch"):
        data = cached.with_format(fmt)
        assert {len(data[i][tc.DENSE_COLUMN]) for i in range(3)} == {7}
        assert torch.equal(tc.cached_logits_from_batch(data[:], 3), logits)
        assert torch.equal(tc.cached_logits_from_batch(data[1:2], 3), logits[1:2])  # one row alone
        assert torch.equal(collate([data[i] for i in range(3)])[tc.DENSE_COLUMN].float(), logits)
    raw = Dataset.from_dict({"x": [b"\x01\x00"]}, features=Features({"x": Value("binary")}))
    assert raw.with_format("torch")[0]["x"] == b"\x01"  # what the marker byte protects against


def test_a_damaged_binary_row_is_refused_with_the_fix(train, teacher, tmp_path):
    cached = tc.build_teacher_cache(train, teacher)
    rows = cached.with_format(None)[tc.DENSE_COLUMN]

    def with_rows(new):  # the same cache and record, other bytes
        return cached.remove_columns([tc.DENSE_COLUMN]).add_column(
            tc.DENSE_COLUMN, new, feature=Value("binary")
        )

    short = with_rows([row[:-1] if i == 4 else row for i, row in enumerate(rows)])  # one row a byte short
    with pytest.raises(ValueError, match=DAMAGED):
        dense(short)
    trainer = DistillationTrainer(model=make_vit(), args=tiny_args(tmp_path), train_dataset=cached)
    with pytest.raises(ValueError, match=DAMAGED):
        trainer.evaluate(short)  # through the trainer's collator
    with pytest.raises(ValueError, match=DAMAGED):  # what the transforms call refuses it too
        tc.cache_columns_as_tensors(short.with_format(None)[:])
    with pytest.raises(ValueError, match=r"rows of unequal lengths \(\[6, 7\] bytes\)"):
        dense(short)
    with pytest.raises(ValueError, match=r"rows of 8 bytes whose last bytes are \[7\]"):
        dense(with_rows([row + b"\x07" for row in rows]))  # no size byte at the end
    with pytest.raises(ValueError, match=r"rows of 6 bytes whose last bytes are \[2\]"):
        dense(with_rows([row[1:] for row in rows]))  # 5 bytes of logits: not whole float16 values
    # whole rows of 2 logits: read, and refused by the per-batch width check like a list cache of 2 classes
    with pytest.raises(ValueError, match="Teacher logits have 2 classes but the student has 3"):
        trainer.evaluate(with_rows([row[2:] for row in rows]))
    assert torch.equal(dense(with_rows(rows)), dense(cached))  # the helper itself changes nothing


# ------------------------------------------------------------------------------------------ top-k fill
def test_renormalize_and_spread_give_the_intended_distributions():
    torch.manual_seed(0)
    logits = torch.randn(6, 10, dtype=torch.float64) * 3
    k = 4
    values, indices = logits.topk(k, dim=-1)
    tail = torch.logsumexp(logits.scatter(1, indices, -torch.inf), -1)  # the mass outside the top k
    probs = torch.softmax(logits, -1)
    top = probs.gather(1, indices)
    in_top = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, indices, True)

    renorm = torch.softmax(tc.topk_to_dense(values, indices, tail, 10, "renormalize").double(), -1)
    expected = torch.zeros_like(probs).scatter_(1, indices, top / top.sum(-1, keepdim=True))
    torch.testing.assert_close(renorm, expected, rtol=1e-5, atol=0)
    assert (renorm[~in_top] == 0).all()  # exactly: the fill underflows

    spread = torch.softmax(tc.topk_to_dense(values, indices, tail, 10, "spread").double(), -1)
    rest = (1 - top.sum(-1, keepdim=True)) / (10 - k)
    expected = rest.expand(-1, 10).clone().scatter_(1, indices, top)
    torch.testing.assert_close(spread, expected, rtol=1e-5, atol=1e-7)


def test_spread_with_no_remaining_mass_stays_finite():
    values = torch.tensor([[200.0, 0.0]])
    indices = torch.tensor([[3, 1]])
    tail = torch.tensor([-math.inf])  # no mass outside the top 2 (e.g. underflowed)
    dense = tc.topk_to_dense(values, indices, tail, 4, "spread")
    assert torch.isfinite(dense).all()
    probs = torch.softmax(dense, -1)
    assert probs[0, 3] == pytest.approx(1.0) and probs[0, [0, 2]].sum() == 0


class LogitsTeacher(torch.nn.Module):
    """A 'teacher' whose logits are its input row: caches of hand-made logits through build_teacher_cache."""

    def __init__(self, num_classes: int):
        super().__init__()
        from transformers import PretrainedConfig

        self.config = PretrainedConfig(num_labels=num_classes)
        self.one = torch.nn.Parameter(torch.ones(()))

    def forward(self, pixel_values):
        from types import SimpleNamespace

        return SimpleNamespace(logits=pixel_values * self.one)


def logits_cache(logits, **kwargs):
    logits = torch.as_tensor(logits, dtype=torch.float32)
    dataset = Dataset.from_dict({"pixel_values": logits.numpy()}).with_format("torch")
    return tc.build_teacher_cache(dataset, LogitsTeacher(logits.shape[-1]), **kwargs)


def test_spread_is_the_exact_softmax_at_t1_from_a_float16_cache():
    # a sharp teacher: the tail holds ~1e-4 of the mass, below the float16 rounding of the top-k logits
    torch.manual_seed(0)
    logits = torch.randn(8, 20) * 2
    logits[:, :4] += torch.tensor([14.0, 12.5, 11.0, 10.0])
    cached = logits_cache(logits, top_k=4)  # float16 logits, the default
    stored = logits.double()
    stored[:, :4] = logits[:, :4].half().double()  # the top-k logits as the cache holds them
    probs = torch.softmax(stored, -1)  # the dense softmax of those logits
    tail = probs[:, 4:].sum(-1)
    assert 1e-5 < tail.min() and tail.max() < 1e-3
    filled = torch.softmax(tc.cached_logits_from_batch(cached[:], 20, "spread").double(), -1)
    torch.testing.assert_close(filled[:, :4], probs[:, :4], rtol=1e-6, atol=0)
    torch.testing.assert_close(filled[:, 4:].sum(-1), tail, rtol=1e-6, atol=0)  # the tail mass, exactly
    torch.testing.assert_close(filled[:, 4:], (tail / 16)[:, None].expand(-1, 16), rtol=1e-6, atol=0)


def test_spread_at_t2_matches_a_hand_computation_through_the_trainer(tmp_path):
    # one row, m = 5, k = 2; these logits are exact in float16
    cached = logits_cache([[4.0, 2.0, 0.0, -1.0, -3.0]], top_k=2)
    cached = cached.add_column("labels", [0]).cast_column(
        "labels", ClassLabel(names=[f"LABEL_{i}" for i in range(5)])
    )
    rest = math.exp(0) + math.exp(-1) + math.exp(-3)  # the mass outside the top 2 at T = 1
    v = math.log(rest / 3)  # the logit of each of the 3 missing classes
    z = math.exp(4 / 2) + math.exp(2 / 2) + 3 * math.exp(v / 2)
    expected = [math.exp(2) / z, math.exp(1) / z, *[math.exp(v / 2) / z] * 3]
    args = tiny_args(tmp_path, objective="kd", temperature=2.0)  # the default fill
    assert args.teacher_topk_fill == "spread"
    student = make_vit(num_labels=5, names=[f"LABEL_{i}" for i in range(5)])
    trainer = DistillationTrainer(model=student, args=args, train_dataset=cached.with_format("torch"))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    targets = trainer.objective.teacher_probs(trainer.teacher_source.split_batch(batch)[2])
    torch.testing.assert_close(
        targets[0].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=0
    )
    assert not hasattr(tc, "TOPK_FILL")  # the fill is the trainer's argument, not a module global


def test_spread_is_clamped_below_the_kth_logit():
    values, indices = torch.tensor([[2.0, 1.0]]), torch.tensor([[0, 1]])
    # a tail heavier than the k-th logit allows: the 3 missing classes would get logit 1.5 > 1.0
    tail = torch.tensor([math.log(3) + 1.5])
    dense = tc.topk_to_dense(values, indices, tail, 5, "spread")
    assert torch.equal(dense, torch.tensor([[2.0, 1.0, 1.0, 1.0, 1.0]]))


@pytest.mark.parametrize(
    "num_classes, dtype, top_ids",
    [(10, "uint8", [9, 0]), (300, "uint16", [299, 256]), (70_000, "int32", [69_999, 65_536])],
)
def test_class_ids_use_the_smallest_integer_type_and_round_trip(num_classes, dtype, top_ids):
    logits = torch.zeros(2, num_classes)
    logits[:, top_ids[0]], logits[:, top_ids[1]] = 5.0, 4.0
    logits[1, 3] = 4.5
    cached = logits_cache(logits, top_k=3, dtype="float32")
    assert cached.features[cache_format.TOPK_INDICES_COLUMN].feature.dtype == dtype
    table = cached.data.table.column(cache_format.TOPK_INDICES_COLUMN).combine_chunks()
    assert str(table.type.value_type) == dtype  # the Arrow column itself, not only the declared feature
    expected = logits.topk(3, -1).indices
    stored = np.asarray(cached.with_format("numpy")[:][cache_format.TOPK_INDICES_COLUMN])
    assert np.array_equal(stored, expected.numpy())
    for indices in (torch.as_tensor(stored.astype(dtype)), cached[:][cache_format.TOPK_INDICES_COLUMN]):
        # raw narrow ids or the torch format's int64
        batch = {**cached[:], cache_format.TOPK_INDICES_COLUMN: indices}
        torch.testing.assert_close(
            tc.cached_logits_from_batch(batch, num_classes).gather(1, expected), logits.gather(1, expected)
        )


def test_renormalize_warns_once_where_it_drops_the_softened_tail(train, teacher, tmp_path, caplog, monkeypatch):
    """The policy: 'renormalize' at T > 1 drops the mass the softened teacher puts beyond the top-k: one
    warning per (fill, temperature), naming the fixes; none for 'spread', for T = 1, or a cache of every class."""
    monkeypatch.setattr(cache_format, "_warned", set())
    cached = tc.build_teacher_cache(train, teacher, top_k=2)
    caplog.set_level("WARNING", logger="hf_fairkd.teacher.cache_format")
    hot = dict(objective="kd", temperature=4.0, teacher_topk_fill="renormalize")
    for _ in range(2):
        DistillationTrainer(model=make_vit(), args=tiny_args(tmp_path, **hot), train_dataset=cached)
    warnings = [r.getMessage() for r in caplog.records if "teacher_topk_fill='renormalize'" in r.getMessage()]
    assert len(warnings) == 1 and "top-2 teacher cache of 3 classes at temperature 4" in warnings[0]
    assert "the 1 classes beyond the top-2 get zero probability" in warnings[0]
    assert "'spread'" in warnings[0] and "larger top_k" in warnings[0] and "dense cache" in warnings[0]
    caplog.clear()
    for fill, temperature in (("spread", 4.0), ("renormalize", 1.0)):
        args = tiny_args(tmp_path, objective="kd", temperature=temperature, teacher_topk_fill=fill)
        DistillationTrainer(model=make_vit(), args=args, train_dataset=cached)
    assert not [r for r in caplog.records if "teacher_topk_fill" in r.getMessage()]
    assert cache_format.topk_fill_warning("renormalize", 1.01, 2, 3) is not None
    assert cache_format.topk_fill_warning("renormalize", 4.0, 3, 3) is None  # every class cached: nothing dropped


# ------------------------------------------------------------------------------------------ fingerprints
def test_teacher_fingerprint_is_stable_and_sees_one_weight(teacher, tmp_path):
    first = tc.teacher_fingerprint(teacher)
    assert tc.teacher_fingerprint(teacher) == first
    teacher.save_pretrained(tmp_path / "t")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "t")
    assert tc.teacher_fingerprint(reloaded) == first
    inner = next(p for name, p in reloaded.named_parameters() if "layer" in name and p.ndim == 2)
    with torch.no_grad():
        inner[0, 0] += 1e-3  # one value of one encoder weight
    assert tc.teacher_fingerprint(reloaded) != first
    assert tc.teacher_fingerprint(make_vit(seed=1, hidden=32)) != first  # the unscaled head


def test_record_names_its_inputs(train, teacher):
    cached = tc.build_teacher_cache(train, teacher, top_k=2, preprocessing_id="resize-8")
    record = tc.teacher_cache_info(cached)
    assert record["teacher_fingerprint"] == tc.teacher_fingerprint(teacher)
    assert record["source_fingerprint"] == train._fingerprint
    assert (record["top_k"], record["num_classes"], record["dtype"]) == (2, 3, "float16")
    assert record["teacher_id2label"] == {"0": "cat", "1": "dog", "2": "bird"}
    again = tc.teacher_cache_info(
        tc.build_teacher_cache(train, teacher, top_k=2, preprocessing_id="resize-8")
    )
    other = tc.teacher_cache_info(
        tc.build_teacher_cache(train, teacher, top_k=2, preprocessing_id="resize-16")
    )
    assert again["cache_fingerprint"] == record["cache_fingerprint"] != other["cache_fingerprint"]
    assert train.info.description == ""  # the source dataset is not modified
    shuffled = cached.shuffle(seed=0).select(range(5)).with_format("numpy")
    assert tc.teacher_cache_info(shuffled) == record


def test_save_load_round_trip_keeps_the_record(train, teacher, tmp_path):
    cached = tc.build_teacher_cache(train, teacher, top_k=2)
    tc.save_teacher_cache(cached, tmp_path / "cache")
    loaded = tc.load_teacher_cache(tmp_path / "cache")
    assert tc.teacher_cache_info(loaded) == tc.teacher_cache_info(cached)
    assert loaded.with_format(None)[:] == cached.with_format(None)[:]
    assert tc.check_cache(loaded, teacher=teacher, num_classes=3) is not None


def test_interrupted_save_leaves_the_old_cache(train, teacher, tmp_path, monkeypatch):
    old = tc.build_teacher_cache(train, teacher)
    tc.save_teacher_cache(old, tmp_path / "cache")
    new = tc.build_teacher_cache(train, teacher, top_k=1)

    def crash(self, path, **kwargs):
        Path(path, "data-00000-of-00001.arrow").write_bytes(b"half")
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(Dataset, "save_to_disk", crash)
    with pytest.raises(KeyboardInterrupt):
        tc.save_teacher_cache(new, tmp_path / "cache")
    monkeypatch.undo()
    assert tc.teacher_cache_info(tc.load_teacher_cache(tmp_path / "cache"))["kind"] == "dense"
    assert sorted(os.listdir(tmp_path)) == ["cache"]  # no temporary folder left behind
    tc.save_teacher_cache(new, tmp_path / "cache")  # replacing an existing cache works
    assert tc.teacher_cache_info(tc.load_teacher_cache(tmp_path / "cache"))["kind"] == "topk"
    assert sorted(os.listdir(tmp_path)) == ["cache"]


# ------------------------------------------------------------------------------------------ refusals
def test_refusals(train, teacher, tmp_path):
    cached = tc.build_teacher_cache(train, teacher)
    with pytest.raises(ValueError, match="another teacher.*build_teacher_cache"):
        DistillationTrainer(
            model=make_vit(), args=tiny_args(tmp_path), teacher=sharp_teacher(seed=2), train_dataset=cached
        )
    four = make_vit(num_labels=4, seed=1, names=["cat", "dog", "bird", "fish"])
    with pytest.raises(ValueError, match="built for 4 classes but the student has 3"):
        DistillationTrainer(
            model=make_vit(), args=tiny_args(tmp_path), train_dataset=tc.build_teacher_cache(train, four)
        )
    with pytest.raises(ValueError, match="top_k=4 but the teacher has 3 classes"):
        tc.build_teacher_cache(train, teacher, top_k=4)
    stripped = cached.select(range(len(cached)))
    stripped.info.description = ""
    with pytest.raises(ValueError, match="no teacher-cache record.*build_teacher_cache"):
        DistillationTrainer(model=make_vit(), args=tiny_args(tmp_path), train_dataset=stripped)
    with pytest.raises(ValueError, match="dataset fingerprint"):
        tc.check_cache(cached, num_classes=3, source_fingerprint="0123456789abcdef")
    assert tc.check_cache(cached, num_classes=3, source_fingerprint=train._fingerprint)["kind"] == "dense"
    assert tc.check_cache(train, teacher=teacher, num_classes=3) is None  # no cache: nothing to check
    with pytest.raises(ValueError, match="already has teacher-cache columns"):
        tc.build_teacher_cache(cached, teacher)
    with pytest.raises(ValueError, match="not a cache dtype"):
        tc.build_teacher_cache(train, teacher, dtype="bfloat16")


def test_teacher_with_other_label_order(train, teacher):
    reordered = make_vit(seed=1, hidden=32, names=["bird", "cat", "dog"])
    perm = torch.tensor([2, 0, 1])  # reordered class k is the original class perm[k]
    reordered.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        reordered.classifier.weight.copy_(teacher.classifier.weight[perm])
        reordered.classifier.bias.copy_(teacher.classifier.bias[perm])
    student_id2label = make_vit().config.id2label
    unmapped = tc.build_teacher_cache(train, reordered)
    with pytest.raises(ValueError, match="label_permutation"):
        tc.check_cache(unmapped, num_classes=3, id2label=student_id2label)
    mapped = tc.build_teacher_cache(
        train, reordered, label_permutation=label_permutation(student_id2label, reordered.config.id2label)
    )
    assert tc.check_cache(mapped, num_classes=3, id2label=student_id2label) is not None
    reference = dense(tc.build_teacher_cache(train, teacher))
    torch.testing.assert_close(dense(mapped), reference, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------------ inputs
def test_transform_and_collate_fn_inputs_give_the_same_cache(train, teacher):
    reference = dense(tc.build_teacher_cache(train, teacher, dtype="float32"))
    raw = Dataset.from_dict(
        {"pixels": [np.asarray(x).ravel().tolist() for x in train.with_format("numpy")["pixel_values"]]}
    )

    def transform(batch):
        return {"pixel_values": [torch.tensor(p).reshape(1, 8, 8) for p in batch["pixels"]]}

    from_transform = tc.build_teacher_cache(
        raw.with_transform(transform), teacher, dtype="float32", batch_size=5
    )
    assert from_transform.format["type"] == "custom"  # the dataset's transform is kept
    values = dense(from_transform.with_format("torch", columns=[tc.DENSE_COLUMN]))
    torch.testing.assert_close(values, reference, rtol=1e-5, atol=1e-5)

    def collate(rows):
        return {"pixel_values": torch.tensor([r["pixels"] for r in rows]).reshape(-1, 1, 8, 8)}

    from_collate = tc.build_teacher_cache(raw, teacher, dtype="float32", collate_fn=collate)
    values = dense(from_collate)
    torch.testing.assert_close(values, reference, rtol=1e-5, atol=1e-5)

    def doubled(rows):
        return {"pixel_values": 2 * collate(rows)["pixel_values"]}

    fingerprints = {
        tc.teacher_cache_info(tc.build_teacher_cache(raw, teacher, collate_fn=fn))["cache_fingerprint"]
        for fn in (collate, doubled)
    }
    assert len(fingerprints) == 2  # another collate_fn is another cache, even with the same preprocessing_id
    with pytest.raises(ValueError, match="is an input of the teacher's forward.*collate_fn"):
        tc.build_teacher_cache(raw, teacher)


# ------------------------------------------------------------------------------------------ training
class Boom(RuntimeError):
    pass


def test_training_from_the_cache_never_runs_the_teacher(train, teacher, tmp_path):
    cached = tc.build_teacher_cache(train, teacher, top_k=2)
    trainer = DistillationTrainer(
        model=make_vit(), args=tiny_args(tmp_path / "a", objective="kd", max_steps=15), train_dataset=cached
    )
    before = trainer.evaluate(cached)["eval_loss"]
    trainer.train()
    assert trainer.evaluate(cached)["eval_loss"] < before * 0.95

    def boom(*args, **kwargs):
        raise Boom("the teacher was run")

    exploding = sharp_teacher()
    exploding.forward = boom
    assert tc.teacher_fingerprint(exploding) == tc.teacher_fingerprint(teacher)
    # remove_unused_columns=True (the Trainer default) must keep all three top-k columns
    args = tiny_args(tmp_path / "b", objective="kd", max_steps=3, remove_unused_columns=True)
    DistillationTrainer(model=make_vit(), args=args, teacher=exploding, train_dataset=cached).train()
    # without the cache the same teacher is run, so the test above could fail
    with pytest.raises(Boom):
        DistillationTrainer(model=make_vit(), args=args, teacher=exploding, train_dataset=train).train()


SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from accelerate import Accelerator
from tiny_models import image_dataset
from test_teacher_cache import sharp_teacher
from hf_fairkd import teacher as tc
acc = Accelerator(cpu=True)
ds = image_dataset((6, 4, 3), seed=0)
out = tc.build_teacher_cache(ds, sharp_teacher(), accelerator=acc, batch_size=2, top_k=2, dtype="float32")
dense = tc.build_teacher_cache(ds, sharp_teacher(), accelerator=acc, batch_size=2)
rows = out.with_format(None)[:]
with open({out!r} + str(acc.process_index), "w") as f:
    json.dump({{"rows": {{c: rows[c] for c in tc.TOPK_COLUMNS}}, "record": tc.teacher_cache_info(out),
               "format": out.format["type"], "columns": out.column_names,
               "dense": tc.cached_logits_from_batch(dense.with_format(None)[:], 3).tolist(),
               "dense_type": str(dense.data.table.column(tc.DENSE_COLUMN).type)}}, f)
"""


@pytest.mark.slow  # a third two-process launch; the sharded FSDP launch builds a cache in two processes by default (test_fsdp.py)
@pytest.mark.distributed
def test_two_processes_build_the_same_cache(train, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    script = tmp_path / "build.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), out=str(tmp_path / "rank")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{TESTS.parent}{os.pathsep}{TESTS}"}
    # its own session, so a hung run can be killed with its worker processes
    proc = subprocess.Popen(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, output.decode()[-3000:]
    single = tc.build_teacher_cache(
        image_dataset((6, 4, 3), seed=0), sharp_teacher(), top_k=2, dtype="float32"
    )
    expected = single.with_format(None)[:]
    single_dense = tc.build_teacher_cache(image_dataset((6, 4, 3), seed=0), sharp_teacher(), batch_size=2)
    for rank in (0, 1):
        got = json.loads(Path(f"{tmp_path / 'rank'}{rank}").read_text())
        assert got["record"] == tc.teacher_cache_info(single)
        assert (got["format"], got["columns"]) == ("torch", single.column_names)
        assert got["rows"][cache_format.TOPK_INDICES_COLUMN] == expected[cache_format.TOPK_INDICES_COLUMN]
        np.testing.assert_allclose(
            got["rows"][cache_format.TOPK_LOGITS_COLUMN], expected[cache_format.TOPK_LOGITS_COLUMN], rtol=1e-5
        )
        assert got["dense_type"] == "binary"  # gathered as Arrow: the rows stay binary
        np.testing.assert_allclose(got["dense"], dense(single_dense).numpy(), rtol=1e-3, atol=1e-3)


def test_cache_is_built_from_the_teachers_own_inputs_and_refuses_other_preprocessing(train, teacher):
    """Rows carrying ``teacher_pixel_values`` (the teacher's own preprocessing) feed the teacher those, not
    the student's ``pixel_values``; a cache whose record names other preprocessing is refused."""
    own = train.with_format(None).map(
        lambda row: {"teacher_pixel_values": (np.asarray(row["pixel_values"]) * 3 - 1).tolist()}
    )
    own = own.with_format("torch")
    cached = tc.build_teacher_cache(own, teacher, preprocessing_id='{"teacher": 1}')
    expected = online_logits(
        teacher, Dataset.from_dict({"pixel_values": own[:]["teacher_pixel_values"]}).with_format("torch")
    )
    stored = dense(cached.with_format("numpy"))
    assert torch.allclose(stored, expected.float(), atol=2e-2)
    assert not torch.allclose(stored, online_logits(teacher, train).float(), atol=2e-2)
    assert tc.teacher_cache_info(cached)["preprocessing_id"] == '{"teacher": 1}'
    assert tc.check_cache(cached, num_classes=3, preprocessing_id='{"teacher": 1}')["kind"] == "dense"
    with pytest.raises(ValueError, match="preprocessed otherwise.*teacher's own image processor"):
        tc.check_cache(cached, num_classes=3, preprocessing_id='{"student": 1}')
