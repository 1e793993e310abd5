"""What the recipes share: their argument dataclasses, data preparation, models, training and evaluation.

`recipes/distill_vit.py` and `recipes/train_teacher.py` are thin scripts over these functions, so a user
can also call them from Python. Everything the recipes check is checked here, before any training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import DistillationArguments
from .io_utils import atomic_write_json
from .teacher_cache import CACHE_COLUMNS

logger = logging.getLogger(__name__)

RUN_CONFIG_NAME = "run_config.json"
DEFAULT_OUTPUT_DIR = "outputs/distill_vit"
# Defaults the recipes use where TrainingArguments' own defaults suit fine-tuning large models, not this.
RECIPE_TRAINING_DEFAULTS = {
    "output_dir": DEFAULT_OUTPUT_DIR,
    "num_train_epochs": 30,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "learning_rate": 2e-3,
    "weight_decay": 0.05,
    "warmup_steps": 10,
    "logging_steps": 20,
    "save_strategy": "no",
    "eval_strategy": "no",
    "report_to": "none",
    "remove_unused_columns": False,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": torch.cuda.is_available(),  # pinning needs an accelerator; on a CPU it only warns
}


@dataclass
class ModelArguments:
    """The student and the teacher."""

    student_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A pretrained student (local folder or Hub id); None builds a fresh ViT of the sizes below."
        },
    )
    student_hidden_size: int = field(default=64, metadata={"help": "Hidden size of a fresh ViT student."})
    student_num_layers: int = field(
        default=2, metadata={"help": "Transformer layers of a fresh ViT student."}
    )
    student_num_heads: int = field(default=4, metadata={"help": "Attention heads of a fresh ViT student."})
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A trained teacher (local folder or Hub id). None: a ViT teacher is trained here first."
        },
    )
    teacher_hidden_size: int = field(default=128, metadata={"help": "Hidden size of a teacher trained here."})
    teacher_num_layers: int = field(default=4, metadata={"help": "Layers of a teacher trained here."})
    teacher_num_heads: int = field(default=4, metadata={"help": "Attention heads of a teacher trained here."})
    teacher_objective: str = field(
        default="erm", metadata={"help": "How a teacher trained here is trained: erm, balanced or dro."}
    )
    teacher_signal: str = field(
        default="auto",
        metadata={
            "help": "'cached': run the teacher once over train/holdout and store its logits; 'online': run it every "
            "step (needed with augmentation); 'auto': cached unless --augment."
        },
    )
    teacher_num_train_epochs: float | None = field(
        default=None,
        metadata={
            "help": "Epochs for a teacher trained here (default: twice num_train_epochs: it is larger)."
        },
    )
    patch_size: int = field(default=4, metadata={"help": "Patch size of fresh ViTs."})
    image_size: int = field(
        default=16, metadata={"help": "Input resolution of fresh ViTs (images are resized)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom code from the Hub when loading models (off: safer)."}
    )


@dataclass
class DataArguments:
    """The data, as in the transformers image-classification examples, plus the long-tail settings."""

    dataset_name: str = field(
        default="digits",
        metadata={
            "help": "'digits' (embedded, no download), 'cifar10'/'cifar100' (Hub presets), a Hub dataset id, a local "
            "dataset folder, or a folder of images with one sub-folder per class."
        },
    )
    image_column_name: str | None = field(
        default=None, metadata={"help": "Image column (auto-detected if unset)."}
    )
    label_column_name: str | None = field(
        default=None, metadata={"help": "Label column (auto-detected if unset)."}
    )
    imbalance_factor: float | None = field(
        default=None,
        metadata={"help": "rho = n_max / n_min of the long tail (default: 10 for digits, else 100)."},
    )
    long_tail_profile: str = field(default="exp", metadata={"help": "'exp' or 'step'."})
    holdout_per_class: float | None = field(
        default=None,
        metadata={"help": "Holdout rows per class (an integer) or a fraction of each class (< 1)."},
    )
    rare_classes: str = field(
        default="label_id",
        metadata={"help": "Which classes are rare: 'label_id', 'reversed' or 'permutation'."},
    )
    data_seed_long_tail: int = field(
        default=0, metadata={"help": "Seed of the long-tail and holdout selection."}
    )
    augment: bool = field(
        default=False, metadata={"help": "Random crop + flip on training images (off with a cached teacher)."}
    )


@dataclass
class RunArguments:
    """What happens to the output directory."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write over an output directory that already holds another run."}
    )


# ------------------------------------------------------------------------------------------------ arguments
def yaml_to_argv(path: str) -> list[str]:
    """A YAML/JSON config file as command-line arguments, so the file and CLI overrides parse the same way."""
    import yaml

    if not os.path.exists(path):
        raise ValueError(f"Config file {path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values.")
    argv = []
    for key, value in config.items():
        if isinstance(value, list):
            argv += [f"--{key}", *[str(v) for v in value]]
        elif value is not None:
            argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def parse_recipe_args(dataclass_types, argv: list[str] | None = None):
    """Parse ``[config.yaml] [--overrides]`` into the dataclasses, with the recipe defaults."""
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        argv = yaml_to_argv(argv[0]) + argv[1:]
    parser = HfArgumentParser(dataclass_types)
    parser.set_defaults(**RECIPE_TRAINING_DEFAULTS)
    return parser.parse_args_into_dataclasses(args=argv)


def check_processes(state) -> None:
    """Refuse a multi-process launch in which every process would train alone (CPU without --use_cpu)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > state.num_processes:
        raise ValueError(
            f"Launched as {launched} processes but each would train alone (no GPU and --use_cpu is off): pass "
            "--use_cpu true, or launch one process."
        )


def check_output_dir(output_dir: str, *, overwrite: bool, resuming: bool) -> None:
    """Refuse to mix two runs in one folder; nothing is ever deleted here."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file; pass a folder path.")
    check_writable(path, what="--output_dir")
    if not path.exists():
        return
    entries = sorted(p.name for p in path.iterdir())
    if entries and not overwrite and not resuming:
        raise ValueError(
            f"--output_dir {output_dir} already holds a run ({', '.join(entries[:6])}{', ...' if len(entries) > 6 else ''}). "
            "Pass --overwrite_output_dir to write over it, --resume_from_checkpoint to continue it, or choose another "
            "--output_dir. Nothing was deleted."
        )


def check_writable(path: Path, what: str) -> None:
    """Create (and remove) a probe file in ``path``, or in its nearest existing parent, before any training.

    `os.access` is not enough: it says yes to root on a read-only mount, and the first real write would come
    only after the teacher has trained.
    """
    import tempfile

    probe_dir = path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    try:
        with tempfile.TemporaryFile(dir=probe_dir):
            pass
    except OSError as err:
        raise ValueError(
            f"{what} {path} is not writable ({probe_dir}: {err.strerror or err}); choose another folder, or fix "
            "its permissions or free space."
        ) from None


DISK_FULL_MESSAGE = (
    "error: writing the outputs failed ({reason}). Free disk space, raise the quota / file-size limit or fix the "
    "permissions (or pass another --output_dir), then re-run with --resume_from_checkpoint true to continue from the "
    "last complete checkpoint. The card, metrics file and plot are written atomically: none is left half-written."
)


def disk_write_failure(err: BaseException) -> str | None:
    """The reason when ``err`` is a failed write (full disk, file-size limit, quota, read-only), else None."""
    import errno
    import re

    codes = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES}
    if isinstance(err, OSError) and err.errno in codes:
        return err.strerror + (f": {err.filename}" if err.filename else "")
    match = re.search(r"I/O error: (.+?) \(os error (\d+)\)", str(err))  # how safetensors (Rust) reports them
    if match and int(match.group(2)) in codes:
        return match.group(1)
    return None


def resolved_config(*dataclass_objects) -> dict:
    """All arguments as one JSON-able dict, tokens masked by TrainingArguments.to_dict."""
    config = {}
    for obj in dataclass_objects:
        values = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        config[type(obj).__name__] = json.loads(json.dumps(values, default=str))
    return config


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


def check_holdout(objectives: dict[str, str], args: DistillationArguments, info) -> None:
    """Refuse, before any training, objectives that read the holdout (teacher reliability, class-DRO) when the
    holdout is empty. ``objectives`` maps the flag that chose each objective to its name."""
    from .objectives import get_objective

    if sum(info.holdout_counts):
        return
    counts = torch.tensor(info.train_counts, dtype=torch.float64)
    for flag, name in objectives.items():
        if get_objective(name)(args, counts).needs_holdout:
            raise ValueError(
                f"{flag} {name} needs a holdout split (teacher reliability or class-DRO updates) but the holdout is "
                "empty: set --holdout_per_class to 1 or more (or a fraction below 1), or choose another objective."
            )


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


def student_model(model_args: ModelArguments, class_names: list[str], seed: int):
    if model_args.student_model_name_or_path:
        torch.manual_seed(seed)
        return load_classifier(
            model_args.student_model_name_or_path, class_names, model_args.trust_remote_code
        )
    return build_vit(
        class_names,
        hidden_size=model_args.student_hidden_size,
        num_layers=model_args.student_num_layers,
        num_heads=model_args.student_num_heads,
        image_size=model_args.image_size,
        patch_size=model_args.patch_size,
        seed=seed,
    )


def teacher_model(model_args: ModelArguments, class_names: list[str], seed: int):
    return build_vit(
        class_names,
        hidden_size=model_args.teacher_hidden_size,
        num_layers=model_args.teacher_num_layers,
        num_heads=model_args.teacher_num_heads,
        image_size=model_args.image_size,
        patch_size=model_args.patch_size,
        seed=seed + 1,
    )


# ------------------------------------------------------------------------------------------------ training
def stage_args(args: DistillationArguments, **changes) -> DistillationArguments:
    """A copy of the training arguments for one stage (teacher, baseline, student) of a run."""
    changes.setdefault("push_to_hub", False)
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
    """Train one model with `DistillationTrainer` and save it (with the image processor) to ``save_dir``."""
    from .trainer import DistillationTrainer

    trainer = DistillationTrainer(
        model=model,
        args=args,
        teacher=teacher if get_objective_uses_teacher(args.objective) else None,
        train_dataset=splits["train"],
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


# ------------------------------------------------------------------------------------------------ results
def build_run_metrics(
    logits: dict[str, np.ndarray],
    labels: np.ndarray,
    info,
    settings: dict,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """The subgroup_metrics.json record: a subgroup report per model, the paired student - baseline deltas,
    the teacher's calibration, the dataset's metadata and the run's settings."""
    from .metrics import calibration_report, paired_delta, report_to_jsonable, softmax, subgroup_report

    names, counts = info.class_names, info.train_counts
    metrics = {"format_version": 1}
    for role, role_logits in logits.items():
        metrics[role] = subgroup_report(
            role_logits.argmax(-1),
            labels,
            class_names=names,
            train_counts=counts,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
    if "student" in logits and "baseline" in logits:
        metrics["student_minus_baseline"] = paired_delta(
            logits["student"].argmax(-1),
            logits["baseline"].argmax(-1),
            labels,
            class_names=names,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
    if "teacher" in logits:
        metrics["teacher_calibration"] = calibration_report(
            softmax(logits["teacher"]), labels, class_names=names
        )
    metrics.update(
        class_names=list(names), train_counts=list(counts), dataset=info.to_dict(), settings=settings
    )
    return report_to_jsonable(metrics)


def hurt_and_helped(metrics: dict) -> tuple[list[str], list[str]]:
    """Classes where the student is below / above the one-hot baseline beyond the paired interval."""
    rows = metrics.get("student_minus_baseline") or []
    hurt = [r["name"] for r in rows if r["ci_high"] is not None and r["ci_high"] < 0]
    helped = [r["name"] for r in rows if r["ci_low"] is not None and r["ci_low"] > 0]
    return hurt, helped


def format_summary(metrics: dict) -> str:
    """A closing summary a person can read in a terminal."""

    def pct(value):
        return "  n/a " if value is None else f"{100 * value:5.1f}%"

    lines = ["", f"{'model':<10}{'overall':>9}{'balanced':>10}{'worst class':>13}  worst", "-" * 52]
    for role in ("teacher", "baseline", "student"):
        report = metrics.get(role)
        if report:
            lines.append(
                f"{role:<10}{pct(report['accuracy']):>9}{pct(report['balanced_accuracy']):>10}"
                f"{pct(report['worst_class_accuracy']):>13}  {report['worst_class']}"
            )
    hurt, helped = hurt_and_helped(metrics)
    lines.append("")
    lines.append(
        "Classes distillation hurt (student below the one-hot baseline beyond the 95% interval): "
        + (", ".join(hurt) if hurt else "none")
    )
    lines.append("Classes it helped: " + (", ".join(helped) if helped else "none"))
    return "\n".join(lines)


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
