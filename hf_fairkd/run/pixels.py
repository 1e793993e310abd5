"""The fast data path: every image decoded, converted to RGB and resized (or cropped) ONCE by each model's image
processor, kept as compact uint8 rows in a `datasets` column (a `Dataset.map`, cached on disk like any map when
the source has cache files), then rescaled, normalised and augmented on batches of tensors at training time.

Decoding is also the image check: it runs before any training, over ``num_proc`` processes for large datasets,
and a file that cannot be decoded stops the run with its split, row and path named.

The processor's own geometric steps (resize, centre crop) run on the decoded image, exactly as the processor
does them; the steps after them (rescale, normalise) are replayed on tensors, giving the processor's output to
float32 rounding (`TensorSteps`). A processor whose geometric output is not uint8 (one that resizes in float)
is not supported here: `decoded_pixels` raises `UnsupportedProcessor` and the caller keeps the on-the-fly path.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Features, Value
from datasets import Image as ImageFeature
from PIL import Image

PIXELS = "pixels"
TEACHER_PIXELS = "teacher_pixels"
ROWS_PER_PROCESS = 20_000  # below this, one process decodes faster than starting a pool


class UnsupportedProcessor(ValueError):
    """The image processor cannot be split into uint8 geometry + tensor normalisation."""


@dataclass(frozen=True)
class TensorSteps:
    """What an image processor does after its geometric steps, replayed on a uint8 batch (n, c, h, w)."""

    shape: tuple[int, int, int]
    scale: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def of(cls, processor, shape) -> TensorSteps:
        needed = ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")
        if not all(hasattr(processor, name) for name in needed):
            raise UnsupportedProcessor(f"{type(processor).__name__} has no rescale/normalise settings")
        normalize = bool(processor.do_normalize)
        return cls(
            shape=tuple(int(s) for s in shape),
            scale=float(processor.rescale_factor) if processor.do_rescale else None,
            mean=_per_channel(processor.image_mean, shape[0]) if normalize else None,
            std=_per_channel(processor.image_std, shape[0]) if normalize else None,
        )

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        # the processor's order and dtype: float32, rescale, then (x - mean) / std; in place on the one float
        # copy (out-of-place ops made the normalisation several times slower than the copy itself)
        x = pixels.to(torch.float32)
        if self.scale is not None:
            x.mul_(self.scale)
        if self.mean is not None:
            x.sub_(torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1))
            x.div_(torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1))
        return x


def _per_channel(values, channels: int) -> tuple[float, ...]:
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    return tuple(values * channels if len(values) == 1 else values)


def geometry(processor, images) -> np.ndarray:
    """The processor's output without rescaling and normalisation: uint8 (n, c, h, w)."""
    out = processor(images, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"]
    out = np.asarray(out)
    if out.dtype != np.uint8:
        rounded = np.rint(out)
        if out.size and (np.abs(out - rounded).max() > 1e-3 or rounded.min() < 0 or rounded.max() > 255):
            raise UnsupportedProcessor(
                f"{type(processor).__name__} does not resize on uint8 pixels (its resized output is not whole "
                "numbers in 0..255)"
            )
        out = rounded.astype(np.uint8)
    return out


class BadImages(ValueError):
    """Images that cannot be decoded; ``problems`` holds one "Image <where> (<path>): <why>" per image."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            image, why = self.problems[0].split(": ", 1)
            text = f"{image} cannot be decoded: {why}. Replace or remove that file"
        else:
            shown = "; ".join(self.problems[:20]) + (
                f"; and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
            )
            text = f"{len(self.problems)} images cannot be decoded: {shown}. Replace or remove those files"
        super().__init__(f"{text} (or filter the rows out of the dataset), then re-run.")


def open_image(value, where: str):
    """A decoded RGB image from a stored image value ({bytes, path}), or `BadImages` naming ``where``."""
    path = (value or {}).get("path") or "bytes embedded in the dataset"
    try:
        if not value or not (value.get("bytes") or value.get("path")):
            raise ValueError("the row has no image")
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        with Image.open(source) as image:
            return image.convert("RGB")
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
        raise BadImages([f"Image {where} ({path}): {type(err).__name__}: {err}"]) from None


def bad_images(raw_split, image_column: str, split_name: str) -> list[str]:
    """Every image of a split (its image column not decoded) that cannot be decoded, described as `BadImages`
    does: read after a first failure, so that one run names them all."""
    problems = []
    for index, value in enumerate(raw_split[image_column]):
        try:
            open_image(value, f"{index} of the {split_name} split")
        except BadImages as err:
            problems += err.problems
    return problems


def decoded_pixels(
    split, image_column: str, processors: dict, *, split_name: str = "train", num_proc: int | None = None
):
    """``split`` with one uint8 bytes column per processor (column name -> processor), the image column
    dropped, and the shape of each column's rows. Raises `UnsupportedProcessor` before decoding the whole split
    when a processor cannot be split; a bad image raises ValueError naming it."""
    if not len(split):
        return split.remove_columns([image_column]), {}
    try:
        return _decoded_pixels(split, image_column, processors, split_name=split_name, num_proc=num_proc)
    except BadImages:  # name every bad image of the split at once, not one per run
        raw = split.cast_column(image_column, ImageFeature(decode=False))
        raise BadImages(bad_images(raw, image_column, split_name)) from None


def _decoded_pixels(split, image_column: str, processors: dict, *, split_name: str, num_proc: int | None):
    probe = open_image(
        split.cast_column(image_column, ImageFeature(decode=False))[0][image_column],
        f"0 of the {split_name} split",
    )
    shapes = {column: geometry(p, [probe]).shape[1:] for column, p in processors.items()}
    steps = {column: TensorSteps.of(p, shapes[column]) for column, p in processors.items()}

    def decode(batch, indices):
        images = [
            open_image(value, f"{index} of the {split_name} split")
            for value, index in zip(batch[image_column], indices, strict=True)
        ]
        out = {}
        for column, processor in processors.items():
            pixels = geometry(processor, images)
            if pixels.shape[1:] != shapes[column]:
                raise UnsupportedProcessor(
                    f"{type(processor).__name__} gives images of different sizes ({pixels.shape[1:]} and "
                    f"{shapes[column]}): set a fixed size in the image processor"
                )
            out[column] = [row.tobytes() for row in pixels]
        return out

    raw = split.cast_column(image_column, ImageFeature(decode=False))
    features = Features({**{k: v for k, v in raw.features.items() if k != image_column}})
    features.update({column: Value("binary") for column in processors})
    if num_proc is None:
        num_proc = min(os.cpu_count() or 1, max(1, len(split) // ROWS_PER_PROCESS))
    mapped = raw.map(
        decode,
        batched=True,
        batch_size=256,
        with_indices=True,
        remove_columns=[image_column],
        features=features,
        num_proc=num_proc if num_proc > 1 else None,
        desc=f"Decoding {split_name} images once",
    )
    return mapped, steps


def random_views(
    n: int, width: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip flags and crop shifts (in pixels at ``width``, in [-pad, pad], pad = width // 8) for n rows, drawn
    from ``generator`` (default: torch's global one)."""
    pad = max(1, width // 8)
    flips = torch.rand(n, generator=generator) < 0.5
    return flips, torch.randint(-pad, pad + 1, (n, 2), generator=generator)


def draw_views(epochs: int, num_rows: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`random_views` of every row for each of ``epochs`` epochs, from a generator seeded with ``seed``: flips
    (epochs, num_rows) bool and shifts (epochs, num_rows, 2) int64. Epoch e's views do not depend on ``epochs``
    (drawn epoch after epoch), so a longer draw with the same seed starts with the shorter one."""
    generator = torch.Generator().manual_seed(int(seed))
    views = [random_views(num_rows, width, generator) for _ in range(epochs)]
    flips = torch.stack([f for f, _ in views]) if views else torch.zeros((0, num_rows), dtype=torch.bool)
    shifts = torch.stack([s for _, s in views]) if views else torch.zeros((0, num_rows, 2), dtype=torch.long)
    return flips, shifts


def augment_views(
    pixels: torch.Tensor, flips: torch.Tensor, shifts: torch.Tensor, base_width: int
) -> torch.Tensor:
    """Horizontal flip and pad-and-crop (zero padding) of a uint8 batch; ``shifts`` are in pixels at
    ``base_width`` and scaled to this batch's width, so models at other resolutions see the same view."""
    n, _, height, width = pixels.shape
    pad_x, pad_y = max(1, width // 8), max(1, height // 8)
    scaled = torch.round(shifts.to(torch.float64) * width / base_width).long()
    dx, dy = scaled[:, 0].clamp(-pad_x, pad_x), scaled[:, 1].clamp(-pad_y, pad_y)
    padded = F.pad(pixels, (pad_x, pad_x, pad_y, pad_y))
    out = torch.empty_like(pixels)
    # n small slice copies: cheaper than building a gather index; a flip of the crop is the crop, at the
    # mirrored shift, of the flipped image (the shifts are symmetric)
    for i, (x, y, flip) in enumerate(zip(dx.tolist(), dy.tolist(), flips.tolist(), strict=True)):
        crop = padded[i, :, pad_y + y : pad_y + y + height, pad_x + x : pad_x + x + width]
        out[i] = crop.flip(-1) if flip else crop
    return out


@dataclass(frozen=True)
class PixelInputs:
    """How a `decoded_pixels` split becomes model inputs: ``outputs`` maps each input (``pixel_values``,
    ``teacher_pixel_values``) to its uint8 column, ``steps`` each column to its `TensorSteps`. Every input of a
    row gets the same view; views are in pixels at the first input's width (``base_width``)."""

    steps: dict
    outputs: dict
    label_column: str
    augment: bool = False

    @property
    def base_width(self) -> int:
        return int(self.steps[next(iter(self.outputs.values()))].shape[-1])

    def __call__(self, batch, views: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
        """The inputs and labels of a batch of stored rows; ``views`` (flips, shifts) are applied when given,
        else random ones with ``augment``."""
        labels = batch[self.label_column]
        out = {}
        for name, column in self.outputs.items():
            pixels = as_tensor(batch[column], self.steps[column].shape)
            if views is None and self.augment:  # drawn once, at the first input's width
                views = random_views(len(labels), pixels.shape[-1])
            if views is not None:
                pixels = augment_views(pixels, *views, self.base_width)
            out[name] = self.steps[column](pixels)
        out["labels"] = torch.as_tensor(labels)
        return out


def as_tensor(rows: list[bytes], shape) -> torch.Tensor:
    """uint8 rows (bytes) as one (n, *shape) tensor."""
    buffer = bytearray(b"".join(rows))
    return (
        torch.frombuffer(buffer, dtype=torch.uint8).view(len(rows), *shape)
        if rows
        else torch.empty((0, *shape), dtype=torch.uint8)
    )
