"""Model preprocessing: the image processors of a run (the student's, and a given teacher's own), and the
transforms that turn a split's images into ``pixel_values`` for the models. `prepare_splits` takes the fast path
(`pixels`: decoded and resized once, normalised and augmented on tensors); `with_image_transform` is the
on-the-fly path kept for processors the fast path cannot split. When the teacher's processor differs from the
student's, the same decoded (and augmented) image also becomes ``teacher_pixel_values``, made by the teacher's
processor."""

from __future__ import annotations

import logging
import random

import torch
from PIL import ImageOps
from transformers import AutoImageProcessor

from ..groups import GROUP_ID_COLUMN
from ..teacher import TEACHER_INPUT_COLUMNS, cache_columns_as_tensors
from .arguments import ModelArguments
from .pixels import (
    PIXELS,
    TEACHER_PIXELS,
    BadImages,
    PixelInputs,
    UnsupportedProcessor,
    decoded_pixels,
)

logger = logging.getLogger(__name__)


TEACHER_PIXEL_VALUES = next(iter(TEACHER_INPUT_COLUMNS))  # "teacher_pixel_values"


def passed_through(batch) -> dict:
    """The columns a row carries to the trainer besides its images and labels: the teacher cache, and the group
    codes that an objective weighting groups reads (added by the trainer)."""
    out = cache_columns_as_tensors(batch)
    if GROUP_ID_COLUMN in batch:
        out[GROUP_ID_COLUMN] = torch.as_tensor(batch[GROUP_ID_COLUMN])
    return out


class PreparedSplits(dict):
    """train / holdout / test with their transforms, plus the class counts the objectives need.

    ``teacher_splits`` (name -> split), when the teacher has its own image processor: the same rows with the
    teacher's preprocessing as ``pixel_values``, to evaluate the teacher alone (`for_teacher`)."""

    def __init__(self, splits, class_counts, teacher_splits=None):
        super().__init__(splits)
        self.class_counts = class_counts
        self.teacher_splits = dict(teacher_splits or {})

    def for_teacher(self, name: str):
        """Split ``name`` as the teacher sees it (its own processor's ``pixel_values``)."""
        return self.teacher_splits.get(name, self[name])

    def teacher_view(self) -> PreparedSplits:
        """Every split as the teacher sees it (train augmented like the student's), to train a teacher here."""
        return PreparedSplits({name: self.for_teacher(name) for name in self}, self.class_counts)


def make_image_processor(model_args: ModelArguments):
    """The student's own image processor when it has one, else explicit resizing and normalisation."""
    if model_args.student_model_name_or_path:
        try:
            return AutoImageProcessor.from_pretrained(
                model_args.student_model_name_or_path, trust_remote_code=model_args.trust_remote_code
            )
        except OSError:
            logger.warning("The student has no image processor; resizing and normalising explicitly.")
    try:  # the PIL backend: the default one needs torchvision, which is optional here
        from transformers import ViTImageProcessorPil as Processor
    except ImportError:
        from transformers import ViTImageProcessor as Processor
    size = model_args.image_size
    return Processor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def teacher_image_processor(model_args: ModelArguments, processor):
    """The image processor of the teacher: for a teacher trained here ``processor`` (the run's), resized to
    ``--teacher_image_size`` when given; else the given teacher's own (``--teacher_image_processor_name``, else
    the one saved with the teacher). Refuses a given teacher whose processor cannot be loaded: its inputs
    would be guessed."""
    if not model_args.teacher_model_name_or_path:
        return resized_processor(processor, getattr(model_args, "teacher_image_size", None))
    source = (
        getattr(model_args, "teacher_image_processor_name", None) or model_args.teacher_model_name_or_path
    )
    try:
        return AutoImageProcessor.from_pretrained(source, trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"The teacher's image processor could not be loaded from {source!r} "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). The teacher must see its inputs "
            "preprocessed as in its own training (resolution, mean/std). Save its image processor with it "
            "(`processor.save_pretrained(<teacher folder>)`, which writes preprocessor_config.json), or pass "
            "--teacher_image_processor_name <Hub id or folder of the teacher's image processor>."
        ) from None


def resized_processor(processor, size: int | None):
    """A copy of ``processor`` making ``size`` x ``size`` images (``processor`` itself for None or its own size)."""
    if size is None:
        return processor
    if size <= 0:
        raise ValueError(f"--teacher_image_size must be a positive number of pixels, got {size}.")
    current = processor.to_dict().get("size") or {}
    fixed = {key: value for key, value in current.items() if value is not None}
    if set(fixed) != {"height", "width"}:
        raise ValueError(
            f"--teacher_image_size {size}: the run's image processor resizes by {fixed}, not to a fixed height "
            "and width, so it cannot be resized for the teacher. Drop --teacher_image_size, or train the teacher "
            "first (recipes/train_teacher.py) and pass it as --teacher_model_name_or_path."
        )
    if fixed == {"height": size, "width": size}:
        return processor
    return type(processor).from_dict({**processor.to_dict(), "size": {"height": size, "width": size}})


def same_preprocessing(processor, other) -> bool:
    """Whether two image processors preprocess alike (equal ``to_dict()``)."""
    return other is processor or (other is not None and processor.to_dict() == other.to_dict())


def with_image_transform(
    dataset, processor, image_column: str, label_column: str, augment: bool = False, teacher_processor=None
):
    """Decode, (augment,) resize and normalise on the fly; rows become {pixel_values, labels}, plus
    ``teacher_pixel_values`` from ``teacher_processor`` (the same decoded, augmented image) when given."""

    def transform(batch):
        images = []
        for image in batch[image_column]:
            image = image.convert("RGB")
            if augment:
                if random.random() < 0.5:
                    image = ImageOps.mirror(image)
                pad = max(1, image.width // 8)
                image = ImageOps.expand(image, border=pad)
                x, y = random.randint(0, 2 * pad), random.randint(0, 2 * pad)
                image = image.crop((x, y, x + image.width - 2 * pad, y + image.height - 2 * pad))
            images.append(image)
        pixel_values = processor(images, return_tensors="pt")["pixel_values"]
        out = {"pixel_values": pixel_values, "labels": torch.as_tensor(batch[label_column])}
        if teacher_processor is not None:
            out[TEACHER_PIXEL_VALUES] = teacher_processor(images, return_tensors="pt")["pixel_values"]
        out.update(passed_through(batch))
        return out

    return dataset.with_transform(transform)


def with_pixel_transform(
    decoded, steps: dict, label_column: str, outputs: dict, augment: bool = False, views=None
):
    """Rows of a `decoded_pixels` split become tensors: ``outputs`` maps each model input (``pixel_values``,
    ``teacher_pixel_values``) to the uint8 column it is made from; with ``augment`` every input gets the same
    flip and crop (shifts drawn at the first input's width, scaled to each one's).

    ``views`` replaces the random draw with given views: an object with ``params(batch) -> (flips, shifts)``
    and ``columns(batch) -> dict`` of extra batch columns (e.g. `hf_fairkd.teacher.view_cache.CachedViews`).
    The transform carries ``pixel_inputs`` and ``views``, so the split can be read back (`pixel_inputs_of`)."""
    inputs = PixelInputs(dict(steps), dict(outputs), label_column, augment)

    def transform(batch):
        out = inputs(batch, views.params(batch) if views is not None else None)
        out.update(passed_through(batch))
        if views is not None:
            out.update(views.columns(batch))
        return out

    transform.pixel_inputs, transform.views = inputs, views
    return decoded.with_transform(transform)


def pixel_transform_of(split):
    """The `with_pixel_transform` function of a split, or None (another format, or the on-the-fly path)."""
    transform = (split.format.get("format_kwargs") or {}).get("transform")
    return transform if getattr(transform, "pixel_inputs", None) is not None else None


def pixel_inputs_of(split):
    """(the stored split without its transform, its `PixelInputs`) of a split made by `with_pixel_transform`;
    a ValueError for any other split."""
    transform = pixel_transform_of(split)
    if transform is None:
        raise ValueError(
            "This split was not made by the fast pixel path (hf_fairkd.run.preprocessing.prepare_splits with an "
            "image processor it can split, images decoded once into uint8 columns): the views cannot be "
            f"replayed on it (its format: {split.format.get('type')!r}, columns {split.column_names[:6]})."
        )
    return split.with_format(None), transform.pixel_inputs


def prepare_splits(
    splits, info, processor, augment: bool = False, teacher_processor=None, num_proc: int | None = None
) -> PreparedSplits:
    """Every split with the image transform (augmentation on train only), and the training class counts.

    Images are decoded and resized once (`pixels.decoded_pixels`, ``num_proc`` processes; a bad file is named
    here, before any training) and normalised / augmented on tensors. A ``teacher_processor`` that
    preprocesses otherwise than ``processor`` adds ``teacher_pixel_values`` to every split's rows and the
    teacher's view of every split (`PreparedSplits.for_teacher`)."""
    own = None if same_preprocessing(processor, teacher_processor) else teacher_processor
    columns = {PIXELS: processor, **({TEACHER_PIXELS: own} if own is not None else {})}
    try:
        decoded, bad = {}, []
        for name, split in splits.items():  # every split is read, so that every bad image is named at once
            try:
                decoded[name] = decoded_pixels(
                    split, info.image_column, columns, split_name=name, num_proc=num_proc
                )
            except BadImages as err:
                bad += err.problems
        if bad:
            raise BadImages(bad)
    except UnsupportedProcessor as why:
        logger.warning(f"Preprocessing on the fly, every epoch: {why}.")
        return prepare_splits_on_the_fly(splits, info, processor, augment, own)
    student_inputs = {"pixel_values": PIXELS, **({TEACHER_PIXEL_VALUES: TEACHER_PIXELS} if own else {})}
    label = info.label_column
    return PreparedSplits(
        {
            name: with_pixel_transform(split, steps, label, student_inputs, augment and name == "train")
            for name, (split, steps) in decoded.items()
        },
        class_counts=info.train_counts,
        teacher_splits={
            name: with_pixel_transform(
                split, steps, label, {"pixel_values": TEACHER_PIXELS}, augment and name == "train"
            )
            for name, (split, steps) in decoded.items()
        }
        if own is not None
        else None,
    )


def prepare_splits_on_the_fly(splits, info, processor, augment: bool = False, own=None) -> PreparedSplits:
    """`prepare_splits` decoding and preprocessing every image on every pass (``own``: the teacher's processor
    when it differs from ``processor``)."""
    columns = info.image_column, info.label_column
    return PreparedSplits(
        {
            name: with_image_transform(
                split, processor, *columns, augment=augment and name == "train", teacher_processor=own
            )
            for name, split in splits.items()
        },
        class_counts=info.train_counts,
        teacher_splits={
            name: with_image_transform(split, own, *columns, augment=augment and name == "train")
            for name, split in splits.items()
        }
        if own is not None
        else None,
    )
