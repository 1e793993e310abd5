"""Teacher-logit cache: same loss as the online teacher, top-k reconstruction, fingerprints and refusals."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from tiny_models import image_dataset, make_vit, tiny_args
from transformers import AutoModelForImageClassification

from hf_fairkd import DistillationTrainer
from hf_fairkd import teacher_cache as tc
from hf_fairkd.teacher import label_permutation

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


def batch_loss(dataset, tmp_path, teacher=None, **args) -> float:
    trainer = DistillationTrainer(
        model=make_vit(seed=0), args=tiny_args(tmp_path, **args), teacher=teacher, train_dataset=dataset
    )
    return trainer.compute_loss(trainer.model, dict(dataset[:10])).item()


# ------------------------------------------------------------------------------------------ same loss
@pytest.mark.parametrize("dtype, rel", [("float16", 1e-3), ("float32", 1e-6)])
def test_cached_loss_equals_online_loss(dtype, rel, train, teacher, tmp_path):
    cached = tc.build_teacher_cache(train, teacher, dtype=dtype, batch_size=7)
    stored = cached[:][tc.DENSE_COLUMN]
    torch.testing.assert_close(stored, online_logits(teacher, train), rtol=rel, atol=rel)
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


def test_topk_columns_hold_the_largest_logits_and_the_log_normaliser(train, teacher):
    cached = tc.build_teacher_cache(train, teacher, top_k=2, dtype="float32")
    logits = online_logits(teacher, train)
    rows = cached[:]
    values, indices = logits.topk(2, dim=-1)
    torch.testing.assert_close(rows[tc.TOPK_LOGITS_COLUMN], values, rtol=1e-6, atol=1e-5)
    assert torch.equal(rows[tc.TOPK_INDICES_COLUMN].long(), indices)
    torch.testing.assert_close(rows[tc.LOGSUMEXP_COLUMN], torch.logsumexp(logits, -1), rtol=1e-6, atol=1e-5)
    assert cached.features[tc.TOPK_INDICES_COLUMN].feature.dtype == "int32"


# ------------------------------------------------------------------------------------------ top-k fill
def test_renormalize_and_spread_give_the_intended_distributions():
    torch.manual_seed(0)
    logits = torch.randn(6, 10, dtype=torch.float64) * 3
    k = 4
    values, indices = logits.topk(k, dim=-1)
    lse = torch.logsumexp(logits, -1)
    probs = torch.softmax(logits, -1)
    top = probs.gather(1, indices)
    in_top = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, indices, True)

    renorm = torch.softmax(tc.topk_to_dense(values, indices, lse, 10, "renormalize").double(), -1)
    expected = torch.zeros_like(probs).scatter_(1, indices, top / top.sum(-1, keepdim=True))
    torch.testing.assert_close(renorm, expected, rtol=1e-5, atol=0)
    assert (renorm[~in_top] == 0).all()  # exactly: the fill underflows

    spread = torch.softmax(tc.topk_to_dense(values, indices, lse, 10, "spread").double(), -1)
    rest = (1 - top.sum(-1, keepdim=True)) / (10 - k)
    expected = rest.expand(-1, 10).clone().scatter_(1, indices, top)
    torch.testing.assert_close(spread, expected, rtol=1e-5, atol=1e-7)


def test_spread_with_no_remaining_mass_stays_finite():
    values = torch.tensor([[200.0, 0.0]])
    indices = torch.tensor([[3, 1]])
    lse = torch.logsumexp(torch.tensor([[200.0, 0.0, -300.0, -300.0]]), -1)  # remaining mass ~ e^-500
    dense = tc.topk_to_dense(values, indices, lse, 4, "spread")
    assert torch.isfinite(dense).all()
    probs = torch.softmax(dense, -1)
    assert probs[0, 3] == pytest.approx(1.0) and probs[0, [0, 2]].sum() == 0


def test_module_default_fill_is_used(train, teacher, monkeypatch):
    cached = tc.build_teacher_cache(train, teacher, top_k=1)
    batch = cached[:4]
    monkeypatch.setattr(tc, "TOPK_FILL", "spread")
    assert torch.equal(tc.cached_logits_from_batch(batch, 3), tc.cached_logits_from_batch(batch, 3, "spread"))
    assert not torch.equal(
        tc.cached_logits_from_batch(batch, 3), tc.cached_logits_from_batch(batch, 3, "renormalize")
    )


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
    reference = tc.build_teacher_cache(train, teacher)[:][tc.DENSE_COLUMN]
    torch.testing.assert_close(mapped[:][tc.DENSE_COLUMN], reference, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------------ inputs
def test_transform_and_collate_fn_inputs_give_the_same_cache(train, teacher):
    reference = tc.build_teacher_cache(train, teacher, dtype="float32")[:][tc.DENSE_COLUMN]
    raw = Dataset.from_dict(
        {"pixels": [np.asarray(x).ravel().tolist() for x in train.with_format("numpy")["pixel_values"]]}
    )

    def transform(batch):
        return {"pixel_values": [torch.tensor(p).reshape(1, 8, 8) for p in batch["pixels"]]}

    from_transform = tc.build_teacher_cache(
        raw.with_transform(transform), teacher, dtype="float32", batch_size=5
    )
    assert from_transform.format["type"] == "custom"  # the dataset's transform is kept
    values = from_transform.with_format("torch", columns=[tc.DENSE_COLUMN])[:][tc.DENSE_COLUMN]
    torch.testing.assert_close(values, reference, rtol=1e-5, atol=1e-5)

    def collate(rows):
        return {"pixel_values": torch.tensor([r["pixels"] for r in rows]).reshape(-1, 1, 8, 8)}

    from_collate = tc.build_teacher_cache(raw, teacher, dtype="float32", collate_fn=collate)
    values = torch.tensor(from_collate[tc.DENSE_COLUMN])
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
from hf_fairkd import teacher_cache as tc
acc = Accelerator(cpu=True)
ds = image_dataset((6, 4, 3), seed=0)
out = tc.build_teacher_cache(ds, sharp_teacher(), accelerator=acc, batch_size=2, top_k=2, dtype="float32")
rows = out.with_format(None)[:]
with open({out!r} + str(acc.process_index), "w") as f:
    json.dump({{"rows": {{c: rows[c] for c in tc.TOPK_COLUMNS}}, "record": tc.teacher_cache_info(out),
               "format": out.format["type"], "columns": out.column_names}}, f)
"""


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
    for rank in (0, 1):
        got = json.loads(Path(f"{tmp_path / 'rank'}{rank}").read_text())
        assert got["record"] == tc.teacher_cache_info(single)
        assert (got["format"], got["columns"]) == ("torch", single.column_names)
        assert got["rows"][tc.TOPK_INDICES_COLUMN] == expected[tc.TOPK_INDICES_COLUMN]
        np.testing.assert_allclose(
            got["rows"][tc.TOPK_LOGITS_COLUMN], expected[tc.TOPK_LOGITS_COLUMN], rtol=1e-5
        )
