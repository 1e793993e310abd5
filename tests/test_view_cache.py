"""View cache (augmented views drawn once, the teacher run once over them): the stored views, a student trained
from them against the online teacher on the same views, refusals, atomic builds, top-k storage."""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from tiny_models import tiny_args
from transformers import TrainerCallback

try:  # transformers >= 5.x splits the PIL processors out; 5.0 (the lowest version) has only ViTImageProcessor
    from transformers import ViTImageProcessorPil
except ImportError:
    from transformers import ViTImageProcessor as ViTImageProcessorPil

from hf_fairkd import DistillationTrainer
from hf_fairkd import teacher as tc
from hf_fairkd.run import cached_views as cv
from hf_fairkd.run import view_cache
from hf_fairkd.run.models import build_vit
from hf_fairkd.run.pixels import draw_views
from hf_fairkd.run.preprocessing import prepare_splits

REPO = Path(__file__).resolve().parent.parent
NAMES = ["a", "b", "c"]
ROWS, EPOCHS, BATCH = 64, 3, 8  # 8 steps an epoch, 24 in all
STUDENT, TEACHER = 16, 24  # image widths: the teacher sees the same crops at its own resolution


def image_splits(n=ROWS, seed=0) -> DatasetDict:
    rng = np.random.default_rng(seed)
    images = [PILImage.fromarray(rng.integers(0, 256, (20, 14, 3), dtype=np.uint8)) for _ in range(n)]
    features = Features({"image": Image(), "label": ClassLabel(names=NAMES)})
    data = Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)]}, features=features)
    return DatasetDict(train=data, holdout=data.select(range(3)), test=data.select(range(3, 9)))


def processor(size, mean=0.5, std=0.5):
    return ViTImageProcessorPil(
        size={"height": size, "width": size}, image_mean=[mean] * 3, image_std=[std] * 3
    )


def prepared_train(seed=0, teacher_mean=0.2):
    splits = image_splits(seed=seed)
    info = SimpleNamespace(image_column="image", label_column="label", train_counts=[22, 21, 21])
    own = processor(TEACHER, mean=teacher_mean, std=0.3)
    return prepare_splits(splits, info, processor(STUDENT), augment=True, teacher_processor=own)["train"]


def vit(size, seed, hidden=16):
    sizes = dict(hidden_size=hidden, num_layers=1, num_heads=2, intermediate_size=2 * hidden, patch_size=8)
    return build_vit(NAMES, num_channels=3, seed=seed, image_size=size, **sizes)


def sharp_teacher(seed=1):
    teacher = vit(TEACHER, seed, hidden=32)
    with torch.no_grad():
        teacher.classifier.weight.mul_(20)  # logits far from uniform: the kd term depends on the teacher
    return teacher.eval()


class Forwards:
    """Counts a module's forward calls."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


@pytest.fixture(scope="module")
def train():
    return prepared_train()


@pytest.fixture(scope="module")
def teacher():
    return sharp_teacher()


@pytest.fixture(scope="module")
def cache(train, teacher, tmp_path_factory):
    return view_cache.build_view_cache(
        train, teacher, tmp_path_factory.mktemp("views") / "c", epochs=EPOCHS, view_seed=3, batch_size=24
    )


def numpy_view(x: np.ndarray, flip: bool, dx: int, dy: int) -> np.ndarray:
    """Independent reference: mirror, zero-pad by width // 8, crop at (pad + dy, pad + dx)."""
    pad = x.shape[-1] // 8
    x = x[:, :, ::-1] if flip else x
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    h, w = x.shape[1:]
    return padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def stored_pixels(split, column, size):
    rows = split.with_format(None)[column]
    return np.stack([np.frombuffer(r, dtype=np.uint8).reshape(3, size, size) for r in rows])


# ------------------------------------------------------------------------------------------ the views
def test_views_come_from_the_seed_and_differ_across_epochs(cache):
    flips, shifts = draw_views(EPOCHS, ROWS, STUDENT, seed=3)
    assert torch.equal(torch.from_numpy(np.load(cache / "flips.npy")), flips)
    assert torch.equal(torch.from_numpy(np.load(cache / "shifts.npy")).long(), shifts)
    again = draw_views(EPOCHS + 2, ROWS, STUDENT, seed=3)  # deterministic; a longer draw starts with it
    assert torch.equal(again[0][:EPOCHS], flips) and torch.equal(again[1][:EPOCHS], shifts)
    assert not torch.equal(draw_views(EPOCHS, ROWS, STUDENT, seed=4)[1], shifts)
    for a, b in ((0, 1), (1, 2)):
        assert not torch.equal(shifts[a], shifts[b]) and not torch.equal(flips[a], flips[b])
    assert shifts.abs().max() == STUDENT // 8 and 0.3 < flips.float().mean() < 0.7
    record = view_cache.view_cache_info(cache)
    assert record["epochs"] == EPOCHS and record["view_seed"] == 3 and record["num_rows"] == ROWS


def test_rows_are_the_stored_views_and_their_teacher_logits(train, teacher, cache):
    views = cv.with_cached_views(train, cache, teacher=teacher, teacher_inputs=True)
    with pytest.raises(ValueError, match=r"No epoch is set.*view_cache_callback"):
        views[:2]
    callback = cv.view_cache_callback(views)
    flips, shifts = (np.load(cache / name) for name in ("flips.npy", "shifts.npy"))
    student, own = stored_pixels(train, "pixels", STUDENT), stored_pixels(train, "teacher_pixels", TEACHER)
    logits = []
    for epoch in range(EPOCHS):
        callback.set_epoch(epoch)
        rows = views[:]
        for n in range(0, ROWS, 7):
            flip, (dx, dy) = bool(flips[epoch, n]), shifts[epoch, n].tolist()
            dx = -dx if flip else dx  # the crop of a flipped image is at the mirrored shift (augment_views)
            expected = (numpy_view(student[n], flip, dx, dy) / 255 - 0.5) / 0.5
            np.testing.assert_allclose(rows["pixel_values"][n].numpy(), expected, atol=1e-6)
            # the teacher's view: the same crop at its width (shifts scaled 24 / 16, pad 3)
            scaled = [int(np.clip(np.round(s * TEACHER / STUDENT), -3, 3)) for s in (dx, dy)]
            expected = (numpy_view(own[n], flip, *scaled) / 255 - 0.2) / 0.3
            np.testing.assert_allclose(rows["teacher_pixel_values"][n].numpy(), expected, atol=1e-5)
        with torch.no_grad():
            online = teacher(pixel_values=rows["teacher_pixel_values"]).logits
        torch.testing.assert_close(rows[tc.DENSE_COLUMN].float(), online, rtol=2e-3, atol=2e-2)
        assert rows[tc.DENSE_COLUMN].dtype == torch.float16
        logits.append(rows[tc.DENSE_COLUMN])
    assert not torch.equal(logits[0], logits[1])  # each epoch's own views
    # to a spawned dataloader worker: the path and the epoch travel, the arrays are opened again
    clone = pickle.loads(pickle.dumps(callback))
    assert clone.epoch == EPOCHS - 1 and len(pickle.dumps(callback)) < 4000
    batch = {cv.VIEW_ROW_COLUMN: [5, 1]}
    assert all(torch.equal(a, b) for a, b in zip(clone.params(batch), callback.params(batch), strict=True))
    assert torch.equal(clone.columns(batch)[tc.DENSE_COLUMN], callback.columns(batch)[tc.DENSE_COLUMN])


# ------------------------------------------------------------------------------------------ training from it
class Epochs(TrainerCallback):
    """The cache epoch each step read."""

    def __init__(self, views):
        self.views, self.seen = views, []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append(self.views.epoch)


def losses(trainer) -> list[float]:
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


def train_student(dataset, tmp_path, teacher=None, objective="kd", **overrides):
    callback = cv.view_cache_callback(dataset)
    epochs = Epochs(callback)
    args = dict(objective=objective, max_steps=-1, num_train_epochs=EPOCHS, logging_steps=1, temperature=2.0)
    trainer = DistillationTrainer(
        model=vit(STUDENT, seed=0),
        args=tiny_args(tmp_path, per_device_train_batch_size=BATCH, **{**args, **overrides}),
        teacher=teacher,
        train_dataset=dataset,
        callbacks=[epochs],  # DistillationTrainer adds the view cache's own callback (before these)
    )
    trainer.train()
    return trainer, epochs.seen


@pytest.mark.parametrize("dtype, rel", [("float32", 1e-5), ("float16", 2e-3)])
def test_student_from_the_cache_equals_the_online_teacher_on_the_same_views(dtype, rel, train, tmp_path):
    teacher = sharp_teacher()
    forwards = Forwards(teacher)
    path = view_cache.build_view_cache(
        train, teacher, tmp_path / "c", epochs=EPOCHS, view_seed=3, dtype=dtype
    )
    assert forwards.calls == EPOCHS * 1  # 64 rows in one batch of 256, once per epoch
    online_views = cv.with_cached_views(train, path, logits=False, teacher_inputs=True)
    online, seen = train_student(online_views, tmp_path / "online", teacher=teacher)
    assert forwards.calls == EPOCHS + EPOCHS * ROWS // BATCH  # the online teacher: one forward a step
    assert seen == [e for e in range(EPOCHS) for _ in range(ROWS // BATCH)]  # each epoch read its own views
    for given in (None, teacher):  # from the cache: no teacher forward, whether a teacher is passed or not
        before = forwards.calls
        cached, seen = train_student(cv.with_cached_views(train, path), tmp_path / "cached", teacher=given)
        assert forwards.calls == before and cached.teacher_source.model is given
        assert len(losses(cached)) == EPOCHS * ROWS // BATCH == 24
        np.testing.assert_allclose(losses(cached), losses(online), rtol=rel)
    if dtype == "float32":  # a dataloader worker (a new one each epoch) reads the epoch set before it started
        workers, seen = train_student(
            cv.with_cached_views(train, path), tmp_path / "w", dataloader_num_workers=1
        )
        assert losses(workers) == losses(cached)
    # the curve does depend on the teacher: the equality above is not vacuous
    other = view_cache.build_view_cache(
        train, sharp_teacher(seed=7), tmp_path / "o", epochs=EPOCHS, view_seed=3
    )
    far, _ = train_student(cv.with_cached_views(train, other), tmp_path / "other")
    assert abs(losses(far)[0] - losses(online)[0]) > 0.1 * losses(online)[0]  # 50x the float16 tolerance


def test_ce_student_trains_on_the_same_stored_views(train, cache, tmp_path):
    kd, ce = cv.with_cached_views(train, cache), cv.with_cached_views(train, cache, logits=False)
    cv.view_cache_callback(kd).set_epoch(1)
    cv.view_cache_callback(ce).set_epoch(1)
    rows = ce[:]
    assert tc.DENSE_COLUMN not in rows and "teacher_pixel_values" not in rows
    assert torch.equal(rows["pixel_values"], kd[:]["pixel_values"])
    trainer, seen = train_student(ce, tmp_path, objective="ce")
    assert trainer.teacher is None and len(losses(trainer)) == 24 and sorted(set(seen)) == [0, 1, 2]
    assert cv.view_cache_callback(ce).epoch is None  # reset after training: no stale epoch for the next run


# ------------------------------------------------------------------------------------------ refusals
def test_a_cache_of_another_teacher_data_preprocessing_or_seed_is_refused(train, teacher, cache, tmp_path):
    changed = sharp_teacher()
    with torch.no_grad():
        changed.classifier.bias.add_(1e-3)
    with pytest.raises(ValueError, match=r"another teacher.*rebuild it with this teacher.*build_view_cache"):
        cv.with_cached_views(train, cache, teacher=changed)
    with pytest.raises(ValueError, match=r"built from other training rows: 16 of 16 rows checked"):
        cv.with_cached_views(prepared_train(seed=5), cache)
    with pytest.raises(ValueError, match=r"built for 64 training rows and this split has 60"):
        cv.with_cached_views(train.select(range(60)), cache)
    with pytest.raises(ValueError, match=r"other preprocessing of the teacher's inputs \(mean"):
        cv.with_cached_views(prepared_train(teacher_mean=0.4), cache)
    with pytest.raises(ValueError, match=r"view_seed=3, not 4: pass view_seed=3 to use it, or rebuild"):
        cv.with_cached_views(train, cache, view_seed=4)
    with pytest.raises(ValueError, match=r"holds views for 3 epochs and the run trains 5"):
        cv.with_cached_views(train, cache, epochs=5)
    with pytest.raises(ValueError, match=r"stores classes in the order \['a', 'b', 'c'\], not the student's"):
        cv.with_cached_views(train, cache, id2label={0: "b", 1: "a", 2: "c"})
    views = cv.with_cached_views(train, cache, teacher=teacher, view_seed=3, epochs=3)
    with pytest.raises(
        ValueError, match=r"already reads views of a view cache: pass the prepared train split"
    ):
        view_cache.build_view_cache(views, teacher, tmp_path / "x", epochs=1)
    with pytest.raises(ValueError, match=r"not made by the fast pixel path"):
        cv.with_cached_views(train.with_format(None), cache)


def test_another_augmentation_is_refused(train, teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(view_cache, "AUGMENTATION", "flip+pad_crop/v0")
    old = view_cache.build_view_cache(train, teacher, tmp_path / "old", epochs=1)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"another augmentation \('flip\+pad_crop/v0'.*rebuild it"):
        cv.with_cached_views(train, old)


def test_too_few_epochs_or_persistent_workers_are_refused_before_training(train, cache, tmp_path):
    views = cv.with_cached_views(train, cache)
    for overrides, match in (
        ({"num_train_epochs": EPOCHS + 1}, r"holds views for 3 epochs and the run trains 4: train at most 3"),
        ({"dataloader_persistent_workers": True, "dataloader_num_workers": 1}, r"persistent_workers=True"),
    ):
        student = vit(STUDENT, seed=0)
        steps = Forwards(student)
        args = tiny_args(
            tmp_path, objective="kd", max_steps=-1, per_device_train_batch_size=BATCH, **overrides
        )
        trainer = DistillationTrainer(
            model=student, args=args, train_dataset=views, callbacks=[cv.view_cache_callback(views)]
        )
        with pytest.raises(ValueError, match=match):
            trainer.train()
        assert steps.calls == 0 and trainer.state.global_step == 0


def test_a_crash_mid_build_leaves_no_cache_and_keeps_the_old_one(train, teacher, tmp_path):
    class Crash(RuntimeError):
        pass

    def crash_on_third(module, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Crash("killed mid-build")

    calls = []
    handle = teacher.register_forward_pre_hook(crash_on_third, with_kwargs=True)
    try:
        with pytest.raises(Crash):
            view_cache.build_view_cache(train, teacher, tmp_path / "c", epochs=EPOCHS, batch_size=16)
        assert not (tmp_path / "c").exists() and list(tmp_path.iterdir()) == []  # no temporary folder either
        with pytest.raises(ValueError, match=r"missing or incomplete \(no view_cache.json"):
            cv.with_cached_views(train, tmp_path / "c")
        handle.remove()
        good = view_cache.build_view_cache(train, teacher, tmp_path / "c", epochs=1, batch_size=16)
        before = {p.name: p.read_bytes() for p in good.iterdir()}
        calls.clear()
        handle = teacher.register_forward_pre_hook(crash_on_third, with_kwargs=True)
        with pytest.raises(Crash):
            view_cache.build_view_cache(train, teacher, tmp_path / "c", epochs=EPOCHS, batch_size=16)
        assert {p.name: p.read_bytes() for p in good.iterdir()} == before  # the complete old cache, untouched
        assert [p.name for p in tmp_path.iterdir()] == ["c"]
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------------ top-k
def test_topk_storage_reads_like_the_teacher_cache_formats(train, teacher, cache, tmp_path):
    dense = cv.with_cached_views(train, cache)
    cv.view_cache_callback(dense).set_epoch(2)
    exact = view_cache.build_view_cache(train, teacher, tmp_path / "k3", epochs=EPOCHS, view_seed=3, top_k=3)
    topk = view_cache.build_view_cache(
        train, teacher, tmp_path / "k2", epochs=EPOCHS, view_seed=3, top_k=2, dtype="float32"
    )
    assert json.loads((topk / "view_cache.json").read_text())["kind"] == "topk"
    for path in (exact, topk):
        assert not (path / "teacher_logits.npy").exists()
    rows = {}
    for name, path in (("k3", exact), ("k2", topk)):
        views = cv.with_cached_views(train, path)
        cv.view_cache_callback(views).set_epoch(2)
        rows[name] = views[:]
        assert set(tc.TOPK_COLUMNS) <= set(rows[name]) and tc.DENSE_COLUMN not in rows[name]
    # all classes kept: exactly the dense cache's logits
    assert torch.equal(tc.cached_logits_from_batch(rows["k3"], 3), tc.cached_logits_from_batch(dense[:], 3))
    # top-2: the two largest float32 logits of each view, their ids, and the log-mass of the third class
    with torch.no_grad():
        logits = teacher(pixel_values=_teacher_view(train, topk, epoch=2)).logits
    values, indices = logits.topk(2, dim=-1)
    torch.testing.assert_close(rows["k2"][tc.TOPK_COLUMNS[0]], values, rtol=1e-5, atol=1e-5)
    assert torch.equal(rows["k2"][tc.TOPK_COLUMNS[1]].long(), indices)
    tail = torch.logsumexp(logits.scatter(1, indices, -torch.inf), -1)
    torch.testing.assert_close(rows["k2"][tc.TOPK_COLUMNS[2]], tail, rtol=1e-5, atol=1e-5)
    trainer, _ = train_student(cv.with_cached_views(train, topk), tmp_path / "t", num_train_epochs=1)
    assert len(losses(trainer)) == ROWS // BATCH


def _teacher_view(train, path, epoch):
    views = cv.with_cached_views(train, path, logits=False, teacher_inputs=True)
    cv.view_cache_callback(views).set_epoch(epoch)
    return views[:]["teacher_pixel_values"]


# ------------------------------------------------------------------------------------------ the benchmark
def test_the_benchmark_runs_in_quick_mode(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_view_cache", REPO / "benchmarks" / "view_cache.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = tmp_path / "view_cache.json"
    module.main(["--quick", "--output", str(output), "--work_dir", str(tmp_path / "work")])
    results = json.loads(output.read_text())
    assert results["mode"] == "quick"
    forwards = results["teacher_forwards_per_epoch"]
    assert forwards["kd_view_cache"] == 0 and forwards["ce"] == 0 and forwards["kd_online"] > 0
    assert set(results["ratios"]) >= {
        "kd_view_cache_over_ce",
        "kd_online_over_ce",
        "build_over_plain_forward",
    }
    # the equivalence part: merged into the same file under "equivalence", the speed results kept
    module.main(
        ["--quick", "--part", "equivalence", "--output", str(output), "--work_dir", str(tmp_path / "eq")]
    )
    merged = json.loads(output.read_text())
    assert merged["ratios"] == results["ratios"] and merged["students"] == results["students"]
    equivalence = merged["equivalence"]
    forwards = equivalence["teacher_forwards"]
    assert forwards["ran_as_named"] and set(forwards["cached_per_seed"]) == {0}
    assert min(forwards["online_per_seed"]) > 0
    curve = equivalence["loss_curve"]
    # the online teacher with float16-rounded logits gives the cached curve
    assert curve["control_max_abs_diff"] <= 1e-5
    assert curve["max_abs_diff"] < 1e-3 and curve["direct_float16_bound_max_per_step"] > 0
    assert len(equivalence["curves"]["0"]["cached"]) == curve["steps_compared"]
    assert equivalence["accuracy"]["rule"] and len(equivalence["accuracy"]["paired_diff_per_seed"]) == 2


def test_the_recipe_refuses_a_view_cache_without_augmentation_or_a_given_teacher(tmp_path):
    """--teacher_view_cache holds augmented views of a given teacher: without either, refused before training."""
    from test_recipes import TINY, load_recipe

    recipe = load_recipe("distill_vit")
    for extra in (["--teacher_model_name_or_path", str(tmp_path / "t")], ["--augment", "true"]):
        argv = [
            *TINY,
            "--output_dir",
            str(tmp_path / "o"),
            "--teacher_view_cache",
            str(tmp_path / "v"),
            *extra,
        ]
        with pytest.raises(
            ValueError, match="a view cache holds augmented views of a given teacher; pass --augment"
        ):
            recipe.main(argv)
        assert not (tmp_path / "o" / "baseline").exists()  # nothing trained
