"""What the recipes share: data preparation, models, training and evaluation (arguments: `recipe_args`,
results: `reporting`).

`recipes/distill_vit.py` and `recipes/train_teacher.py` are thin scripts over these functions, so a user
can also call them from Python. Everything the recipes check is checked here, before any training.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import torch

from .config import DistillationArguments
from .io_utils import atomic_write_json
from .recipe_args import (  # noqa: F401 - the recipes reach everything through `pipeline`
    DEFAULT_OUTPUT_DIR,
    DISK_FULL_MESSAGE,
    RECIPE_TRAINING_DEFAULTS,
    RUN_CONFIG_NAME,
    DataArguments,
    ModelArguments,
    RunArguments,
    check_output_dir,
    check_processes,
    check_writable,
    disk_write_failure,
    parse_recipe_args,
    resolved_config,
    start_run,
    yaml_to_argv,
)
from .reporting import build_run_metrics, format_summary, hurt_and_helped  # noqa: F401
from .teacher_cache import CACHE_COLUMNS

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ data
class PreparedSplits(dict):
    """train / holdout / test with their transforms, plus the class counts the objectives need."""

    def __init__(self, splits, class_counts):
        super().__init__(splits)
        self.class_counts = class_counts


def load_data(data_args: DataArguments):
    """The long-tailed DatasetDict (train / holdout / test) and its metadata."""
    from .data import load_long_tailed, long_tail_info

    holdout = data_args.holdout_per_class
    if holdout is not None and (holdout >= 1 or holdout == 0):  # 0: no holdout (the CLI parses floats)
        if holdout != int(holdout):
            raise ValueError(
                f"--holdout_per_class {holdout} must be a whole number of rows, or a fraction below 1."
            )
        holdout = int(holdout)
    splits = load_long_tailed(
        data_args.dataset_name,
        imbalance_factor=data_args.imbalance_factor,
        profile=data_args.long_tail_profile,
        holdout_per_class=holdout,
        label_column=data_args.label_column_name,
        image_column=data_args.image_column_name,
        rare_classes=data_args.rare_classes,
        seed=data_args.data_seed_long_tail,
    )
    info = long_tail_info(splits["train"])
    if info.image_column is None:
        raise ValueError(
            f"{data_args.dataset_name} has no image column; pass --image_column_name (columns: "
            f"{splits['train'].column_names})."
        )
    for split in ("train", "test"):
        if len(splits[split]) == 0:
            raise ValueError(
                f"The {split} split of {data_args.dataset_name} is empty; supply a dataset whose {split} split has "
                "rows (without a 'test' split, a balanced one is carved from train)."
            )
    check_images(splits, info.image_column)
    return splits, info


def check_images(splits, image_column: str) -> None:
    """Decode every image once, before any training: a corrupt file (e.g. a truncated JPEG) fails here, by
    name, instead of inside a data loader hours later."""
    import io

    from datasets import Image as ImageFeature
    from PIL import Image

    for name, split in splits.items():
        if not isinstance(split.features.get(image_column), ImageFeature) or not len(split):
            continue
        raw = split.select_columns([image_column]).cast_column(image_column, ImageFeature(decode=False))
        row = 0
        for batch in raw.iter(batch_size=256):
            for value in batch[image_column]:
                where = (value or {}).get("path") or "bytes embedded in the dataset"
                try:
                    if not value or not (value.get("bytes") or value.get("path")):
                        raise ValueError("the row has no image")
                    source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
                    with Image.open(source) as image:
                        image.load()
                except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
                    raise ValueError(
                        f"Image {row} of the {name} split ({where}) cannot be decoded: {type(err).__name__}: {err}. "
                        "Replace or remove that file (or filter the row out of the dataset), then re-run."
                    ) from None
                row += 1


def check_objectives(objectives: dict[str, str], args: DistillationArguments, info) -> None:
    """Refuse, before any training, what an objective cannot train on: an empty holdout for objectives that read
    it (teacher reliability, class-DRO), and classes without training rows for objectives that read the class
    prior. ``objectives`` maps the flag that chose each objective to its name."""
    from .objectives import get_objective

    counts = torch.tensor(info.train_counts, dtype=torch.float64)
    for flag, name in objectives.items():
        objective = get_objective(name)(args, counts)
        if objective.needs_holdout and not sum(info.holdout_counts):
            raise ValueError(
                f"{flag} {name} needs a holdout split (teacher reliability or class-DRO updates) but the holdout is "
                "empty: set --holdout_per_class to 1 or more (or a fraction below 1), or choose another objective."
            )
        objective.check_prior(list(info.class_names))


def make_image_processor(model_args: ModelArguments):
    """The student's own image processor when it has one, else explicit resizing and normalisation."""
    if model_args.student_model_name_or_path:
        from transformers import AutoImageProcessor

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
    import random

    from PIL import ImageOps

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


# ------------------------------------------------------------------------------------------------ models
def build_vit(
    class_names: list[str],
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    image_size: int,
    patch_size: int,
    seed: int,
):
    """A fresh ViT classifier with the dataset's label names."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=3,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        label2id={name: i for i, name in enumerate(class_names)},
    )
    return ViTForImageClassification(config)


def load_classifier(name_or_path: str, class_names: list[str] | None = None, trust_remote_code: bool = False):
    """A pretrained image classifier; with ``class_names`` its head is re-sized to the dataset's classes."""
    from transformers import AutoModelForImageClassification

    kwargs = {}
    if class_names is not None:
        kwargs = dict(
            num_labels=len(class_names),
            id2label=dict(enumerate(class_names)),
            label2id={n: i for i, n in enumerate(class_names)},
            ignore_mismatched_sizes=True,
        )
    return AutoModelForImageClassification.from_pretrained(
        name_or_path, trust_remote_code=trust_remote_code, **kwargs
    )


def fresh_vit(model_args: ModelArguments, class_names: list[str], role: str, seed: int):
    """A fresh ViT of the student's or the teacher's sizes (``role``: 'student' or 'teacher')."""
    return build_vit(
        class_names,
        hidden_size=getattr(model_args, f"{role}_hidden_size"),
        num_layers=getattr(model_args, f"{role}_num_layers"),
        num_heads=getattr(model_args, f"{role}_num_heads"),
        image_size=model_args.image_size,
        patch_size=model_args.patch_size,
        seed=seed,
    )


def student_model(model_args: ModelArguments, class_names: list[str], seed: int):
    if model_args.student_model_name_or_path:
        torch.manual_seed(seed)
        return load_classifier(
            model_args.student_model_name_or_path, class_names, model_args.trust_remote_code
        )
    return fresh_vit(model_args, class_names, "student", seed)


def teacher_model(model_args: ModelArguments, class_names: list[str], seed: int):
    return fresh_vit(model_args, class_names, "teacher", seed + 1)


# ------------------------------------------------------------------------------------------------ training
def stage_args(args: DistillationArguments, **changes) -> DistillationArguments:
    """A copy of the training arguments for one stage (teacher, baseline, student) of a run."""
    from .objectives import TEACHER_OBJECTIVES

    changes.setdefault("push_to_hub", False)
    if changes.get("objective") in TEACHER_OBJECTIVES:  # a teacher has no teacher to weight DRO errors by
        changes.setdefault("dro_error_weighting", "label")
    return dataclasses.replace(args, **changes)


def train_stage(
    model,
    args: DistillationArguments,
    splits,
    *,
    teacher=None,
    processor=None,
    resume_from_checkpoint=None,
    save_dir: str | None = None,
):
    """Train one model with `DistillationTrainer` and save it (with the image processor) to ``save_dir``.

    A stage never publishes: the recipes check the Hub before training (`hub.preflight`) and push once, at
    the end, with `trainer.push_to_hub()`."""
    from .trainer import DistillationTrainer

    if args.push_to_hub:  # no Hub call from the Trainer's constructor in the middle of a run
        args = stage_args(args)

    evaluating = args.eval_strategy != "no"  # e.g. --eval_steps: the holdout is the only split not trained on
    if evaluating and not len(splits["holdout"]):
        raise ValueError(
            "--eval_strategy/--eval_steps evaluate on the holdout, which is empty: set --holdout_per_class."
        )
    trainer = DistillationTrainer(
        model=model,
        args=args,
        teacher=teacher if get_objective_uses_teacher(args.objective) else None,
        train_dataset=splits["train"],
        eval_dataset=splits["holdout"] if evaluating else None,
        holdout_dataset=splits["holdout"] if len(splits["holdout"]) else None,
        class_counts=splits.class_counts,
        processing_class=processor,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    if save_dir is not None:
        trainer.save_model(save_dir)
    return trainer


def get_objective_uses_teacher(name: str) -> bool:
    from .objectives import get_objective

    return get_objective(name).uses_teacher


def use_cached_teacher(model_args: ModelArguments, data_args: DataArguments) -> bool:
    """Whether the distillation reads a cached teacher signal; a cache cannot follow random augmentation."""
    signal = model_args.teacher_signal
    if signal not in ("auto", "cached", "online"):
        raise ValueError(f"--teacher_signal {signal!r}: use auto, cached or online.")
    if signal == "cached" and data_args.augment:
        raise ValueError(
            "--teacher_signal cached with --augment: cached logits belong to un-augmented images. Use "
            "--teacher_signal online, or drop --augment."
        )
    return signal == "cached" or (signal == "auto" and not data_args.augment)


def cache_teacher_signal(splits: PreparedSplits, teacher, processor, batch_size: int) -> None:
    """Replace train and holdout by copies carrying the teacher's logits (computed once, gathered in order)."""
    from accelerate import PartialState

    from .teacher_cache import build_teacher_cache

    for name in ("train", "holdout"):
        if len(splits[name]):
            splits[name] = build_teacher_cache(
                splits[name],
                teacher,
                batch_size=batch_size,
                preprocessing_id=processor.to_json_string(),
                accelerator=PartialState() if PartialState().num_processes > 1 else None,
            )


def predict_logits(trainer, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels over the whole dataset, gathered from every process in order."""
    output = trainer.predict(dataset)
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return np.asarray(logits, dtype=np.float32), np.asarray(output.label_ids)


def write_run_config(output_dir: str, config: dict) -> None:
    atomic_write_json(os.path.join(output_dir, RUN_CONFIG_NAME), config)


def evaluation_trainer(model, args: DistillationArguments, splits, processor=None):
    """A trainer that only predicts (objective erm: no teacher needed), for a model trained elsewhere."""
    import atexit
    import shutil
    import tempfile

    from .trainer import DistillationTrainer

    # an output folder of its own that nobody reads (prediction writes nothing there), removed at exit
    folder = tempfile.mkdtemp(prefix="hf_fairkd_eval_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    eval_args = stage_args(args, objective="erm", output_dir=folder)
    return DistillationTrainer(
        model=model, args=eval_args, class_counts=splits.class_counts, processing_class=processor
    )


def looks_like_hub_id(name: str | None) -> bool:
    """'owner/name' that is not a local path."""
    import re

    return bool(name) and not os.path.exists(name) and bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name))


def hub_dataset_ids(dataset_name: str) -> list[str] | None:
    from .data.sources import PRESETS

    hub_id = PRESETS[dataset_name]["hub_id"] if dataset_name in PRESETS else None
    hub_id = hub_id or (dataset_name if looks_like_hub_id(dataset_name) else None)
    return [hub_id] if hub_id else None
