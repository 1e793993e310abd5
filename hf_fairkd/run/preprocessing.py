"""Model preprocessing: the image processor of a run, and the transform that turns a split's images into
``pixel_values`` for the models (decoded, optionally augmented, resized and normalised on the fly)."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from PIL import ImageOps
from transformers import AutoImageProcessor

from ..teacher_cache import CACHE_COLUMNS
from .arguments import ModelArguments

logger = logging.getLogger(__name__)


class PreparedSplits(dict):
    """train / holdout / test with their transforms, plus the class counts the objectives need."""

    def __init__(self, splits, class_counts):
        super().__init__(splits)
        self.class_counts = class_counts


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


def with_image_transform(dataset, processor, image_column: str, label_column: str, augment: bool = False):
    """Decode, (augment,) resize and normalise on the fly; rows become {pixel_values, labels}."""

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
        out.update({c: torch.as_tensor(np.asarray(batch[c])) for c in CACHE_COLUMNS if c in batch})
        return out

    return dataset.with_transform(transform)


def prepare_splits(splits, info, processor, augment: bool = False) -> PreparedSplits:
    """Every split with the image transform (augmentation on train only), and the training class counts."""
    return PreparedSplits(
        {
            name: with_image_transform(
                split, processor, info.image_column, info.label_column, augment=augment and name == "train"
            )
            for name, split in splits.items()
        },
        class_counts=info.train_counts,
    )
