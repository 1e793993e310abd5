"""The fast data path (hf_fairkd.run.pixels via prepare_splits): decoded once, normalised and augmented on
tensors. Checked against the image processors themselves and an independent numpy augmentation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from transformers import ConvNextImageProcessorPil, ViTImageProcessorPil

from hf_fairkd.run.pixels import PIXELS, TensorSteps, augment_views, decoded_pixels, geometry, random_views
from hf_fairkd.run.preprocessing import prepare_splits, prepare_splits_on_the_fly


def image_splits(n=24, size=(20, 14), seed=0, paths=None) -> DatasetDict:
    rng = np.random.default_rng(seed)
    images = [PILImage.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]
    labels = [i % 3 for i in range(n)]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b", "c"])})
    data = Dataset.from_dict({"image": paths or images, "label": labels}, features=features)
    return DatasetDict(train=data, holdout=data.select(range(3)), test=data.select(range(3, 9)))


def long_tail_info(train):
    """What prepare_splits reads of a dataset's LongTailInfo."""
    counts = np.bincount(train["label"], minlength=3).tolist()
    return SimpleNamespace(image_column="image", label_column="label", train_counts=counts)


def vit(size, mean=0.5, std=0.5):
    return ViTImageProcessorPil(
        size={"height": size, "width": size}, image_mean=[mean] * 3, image_std=[std] * 3
    )


PROCESSORS = {
    "vit_16": vit(16),
    "vit_24_imagenet": ViTImageProcessorPil(
        size={"height": 24, "width": 24}, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
    ),
    # shortest edge + centre crop (crop_pct): geometry the fast path must leave to the processor
    "convnext_crop": ConvNextImageProcessorPil(size={"shortest_edge": 16}, crop_pct=0.875),
}


@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_fast_path_gives_the_processors_own_output(name):
    splits = image_splits()
    processor = PROCESSORS[name]
    fast = prepare_splits(splits, long_tail_info(splits["train"]), processor)
    assert PIXELS in fast["test"].column_names and "image" not in fast["test"].column_names
    rows = fast["test"][:]
    images = [im.convert("RGB") for im in splits["test"]["image"]]
    expected = torch.as_tensor(processor(images, return_tensors="np")["pixel_values"])
    assert rows["pixel_values"].dtype == torch.float32
    assert rows["pixel_values"].shape == expected.shape
    torch.testing.assert_close(rows["pixel_values"], expected, rtol=0, atol=1e-5)
    assert rows["labels"].tolist() == splits["test"]["label"]


def test_fast_and_on_the_fly_paths_agree_through_prepare_splits():
    splits = image_splits()
    info = long_tail_info(splits["train"])
    fast, slow = prepare_splits(splits, info, vit(16)), prepare_splits_on_the_fly(splits, info, vit(16))
    for name in ("train", "holdout", "test"):
        torch.testing.assert_close(
            fast[name][:]["pixel_values"], slow[name][:]["pixel_values"], rtol=0, atol=1e-5
        )
    assert fast.class_counts == slow.class_counts == info.train_counts


def numpy_augment(x: np.ndarray, flip: bool, dx: int, dy: int, pad: int) -> np.ndarray:
    """Independent reference: mirror, zero-pad by ``pad``, crop at offset (pad + dy, pad + dx)."""
    x = x[:, :, ::-1] if flip else x
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    h, w = x.shape[1:]
    return padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def test_augmentation_matches_an_independent_flip_and_crop():
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.integers(1, 256, (6, 3, 16, 16), dtype=np.uint8))
    flips = torch.tensor([True, False, True, False, True, False])
    shifts = torch.tensor([[2, -2], [0, 0], [-2, 1], [1, 2], [0, -1], [-2, -2]])
    out = augment_views(x, flips, shifts, base_width=16)
    for i in range(6):
        dx, dy = shifts[i].tolist()
        # the crop of the flipped image is taken at the shift mirrored (see augment_views)
        expected = numpy_augment(x[i].numpy(), bool(flips[i]), -dx if flips[i] else dx, dy, pad=2)
        assert np.array_equal(out[i].numpy(), expected), i
    # a model at twice the resolution gets the same view: shifts scaled by 2
    big = torch.repeat_interleave(torch.repeat_interleave(x, 2, dim=-1), 2, dim=-2)
    out_big = augment_views(big, flips, shifts, base_width=16)
    assert torch.equal(out_big[:, :, ::2, ::2], out)


def test_augmented_rows_differ_per_epoch_and_keep_their_pixels():
    splits = image_splits(n=64)
    fast = prepare_splits(splits, long_tail_info(splits["train"]), vit(16), augment=True)
    torch.manual_seed(0)
    a = fast["train"][:]["pixel_values"]
    b = fast["train"][:]["pixel_values"]
    assert not torch.equal(a, b)  # a new view per pass
    plain = prepare_splits(splits, long_tail_info(splits["train"]), vit(16))
    assert torch.equal(fast["test"][:]["pixel_values"], plain["test"][:]["pixel_values"])  # train only
    assert a.min() >= -1 and a.max() <= 1 and (a == -1).any()  # zero padding is black, then normalised


def test_teacher_with_other_normalisation_gets_the_same_augmented_view():
    splits = image_splits(n=32)
    student, teacher = vit(16), vit(16, mean=0.2, std=0.3)
    fast = prepare_splits(
        splits, long_tail_info(splits["train"]), student, augment=True, teacher_processor=teacher
    )
    rows = fast["train"][:]
    torch.testing.assert_close(rows["pixel_values"] * 0.5 + 0.5, rows["teacher_pixel_values"] * 0.3 + 0.2)
    teacher_view = fast.for_teacher("test")[:]["pixel_values"]
    images = [im.convert("RGB") for im in splits["test"]["image"]]
    expected = torch.as_tensor(teacher(images, return_tensors="np")["pixel_values"])
    torch.testing.assert_close(teacher_view, expected, rtol=0, atol=1e-5)


def test_a_bad_file_is_named_with_several_decoding_processes(tmp_path):
    paths = []
    for i in range(40):
        path = tmp_path / f"{i}.png"
        PILImage.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)).save(path)
        paths.append(str(path))
    (tmp_path / "33.png").write_bytes(b"not an image")
    splits = image_splits(n=40, paths=paths)
    with pytest.raises(
        ValueError, match=r"Image 33 of the train split \(.*33\.png\) cannot be decoded.*Replace"
    ):
        decoded_pixels(splits["train"], "image", {PIXELS: vit(8)}, split_name="train", num_proc=2)


def test_every_bad_file_of_every_split_is_named_at_once(tmp_path):
    paths = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        PILImage.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)).save(path)
        paths.append(str(path))
    for bad in (5, 10):  # 5 is in train; 10 in train only; the test split is rows 3..8
        (tmp_path / f"{bad}.png").write_bytes(b"not an image")
    splits = image_splits(n=12, paths=paths)
    with pytest.raises(ValueError) as err:
        prepare_splits(splits, long_tail_info(splits["train"]), vit(8))
    message = str(err.value)
    assert message.startswith("3 images cannot be decoded: Image 5 of the train split")
    for where in ("Image 5 of the train split", "Image 10 of the train split", "Image 2 of the test split"):
        assert where in message
    assert "Replace or remove those files" in message


class FloatResizer:
    """A processor that resizes in float (its geometric output is not uint8): not for the fast path."""

    do_rescale, rescale_factor, do_normalize, image_mean, image_std = True, 1 / 255, False, None, None

    def __call__(self, images, do_rescale=True, do_normalize=True, return_tensors="np"):
        out = np.stack([np.asarray(im, dtype=np.float32).transpose(2, 0, 1) * 0.999 for im in images])
        return {"pixel_values": out * (self.rescale_factor if do_rescale else 1)}

    def to_dict(self):
        return {"kind": "float"}


def test_a_processor_the_fast_path_cannot_split_falls_back_to_on_the_fly(caplog):
    splits = image_splits()
    with caplog.at_level("WARNING"):
        prepared = prepare_splits(splits, long_tail_info(splits["train"]), FloatResizer())
    assert "on the fly" in caplog.text and "image" in prepared["test"].column_names
    assert prepared["test"][:2]["pixel_values"].shape == (2, 3, 20, 14)


def test_tensor_steps_replay_rescale_and_normalisation():
    processor = PROCESSORS["vit_24_imagenet"]
    steps = TensorSteps.of(processor, (3, 24, 24))
    x = torch.arange(256, dtype=torch.uint8).repeat(3 * 24 * 24 // 256 * 4)[: 3 * 24 * 24].view(1, 3, 24, 24)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(steps(x), (x.double() / 255 - mean.double()) / std.double(), check_dtype=False)
    assert geometry(processor, [PILImage.new("RGB", (5, 7))]).dtype == np.uint8


def test_decoding_is_cached_like_any_map(tmp_path):
    splits = image_splits()
    splits.save_to_disk(str(tmp_path / "saved"))
    from datasets import load_from_disk

    loaded = load_from_disk(str(tmp_path / "saved"))
    first, _ = decoded_pixels(loaded["train"], "image", {PIXELS: vit(16)})
    second, _ = decoded_pixels(loaded["train"], "image", {PIXELS: vit(16)})
    assert (
        first.cache_files and first.cache_files == second.cache_files
    )  # the second run read the first's file
    other, _ = decoded_pixels(loaded["train"], "image", {PIXELS: vit(8)})
    assert other.cache_files != first.cache_files  # another processor, another cache


class ChannelMeans(torch.nn.Module):
    """A 'teacher' whose 3 logits are 10 x the means of its input's 3 channels: cached logits in closed form."""

    def __init__(self):
        super().__init__()
        from transformers import PretrainedConfig

        self.config = PretrainedConfig(num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
        self.scale = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, pixel_values):
        return SimpleNamespace(logits=pixel_values.mean((2, 3)) * self.scale)


@pytest.mark.parametrize("prepare", [prepare_splits, prepare_splits_on_the_fly], ids=["fast", "on_the_fly"])
def test_cache_columns_reach_the_trainers_batches_through_both_transforms(prepare, tmp_path):
    """A dense cache (binary rows) gives the trainer's batches the teacher's logits, through
    `with_pixel_transform` and `with_image_transform`."""
    from tiny_models import tiny_args

    from hf_fairkd import DistillationTrainer
    from hf_fairkd import teacher as tc
    from hf_fairkd.run.models import build_vit

    splits = image_splits()
    train = prepare(splits, long_tail_info(splits["train"]), vit(16))["train"]
    teacher = ChannelMeans()
    binary = tc.build_teacher_cache(train, teacher, dtype="float32", batch_size=5)
    assert binary.format["type"] == "custom"  # the split's transform reads the cache columns
    rows = binary[:5][tc.DENSE_COLUMN]  # through the transform: already the logits
    assert rows.dtype == torch.float32 and rows.shape == (5, 3)
    sizes = dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, image_size=16, patch_size=8)
    student = build_vit(["a", "b", "c"], num_channels=3, seed=0, **sizes)
    trainer = DistillationTrainer(model=student, args=tiny_args(tmp_path, objective="kd"), train_dataset=binary)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        expected = teacher(pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(trainer.teacher_source.split_batch(batch)[2], expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(("width", "pad"), [(16, 2), (32, 4), (4, 1)])
def test_random_views_cover_the_pad_range_and_flip_half(width, pad):
    torch.manual_seed(0)
    flips, shifts = random_views(4000, width)
    assert flips.dtype == torch.bool and shifts.shape == (4000, 2)
    assert 0.45 < flips.float().mean() < 0.55
    for axis in (0, 1):
        values, counts = shifts[:, axis].unique(return_counts=True)
        assert values.tolist() == list(range(-pad, pad + 1))  # every shift in [-pad, pad], and only those
        assert counts.min() > 4000 / (2 * pad + 1) * 0.8  # about uniform


def test_small_images_and_scaled_shifts_stay_within_the_pad():
    rng = np.random.default_rng(2)
    x = torch.as_tensor(rng.integers(1, 256, (3, 3, 4, 4), dtype=np.uint8))  # 4 // 8 = 0: pad 1 still
    flips = torch.tensor([False, True, False])
    shifts = torch.tensor([[1, -1], [-1, 1], [0, 1]])
    out = augment_views(x, flips, shifts, base_width=4)
    for i in range(3):
        dx, dy = shifts[i].tolist()
        expected = numpy_augment(x[i].numpy(), bool(flips[i]), -dx if flips[i] else dx, dy, pad=1)
        assert np.array_equal(out[i].numpy(), expected), i
    # shifts drawn at width 8 (pad 1) and scaled to width 12 (pad 1): 1 * 12 / 8 = 1.5 rounds to 2, clamped to 1
    wide = torch.as_tensor(rng.integers(1, 256, (2, 3, 12, 12), dtype=np.uint8))
    out = augment_views(wide, torch.tensor([False, False]), torch.tensor([[1, 1], [-1, -1]]), base_width=8)
    for i, shift in enumerate((1, -1)):
        assert np.array_equal(out[i].numpy(), numpy_augment(wide[i].numpy(), False, shift, shift, pad=1)), i
