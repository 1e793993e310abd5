"""The recipes' command-line arguments: dataclasses, parsing (YAML/JSON + overrides), and the checks that
run before any work (processes, output folder, disk)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

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


def parse_recipe_args(dataclass_types=None, argv: list[str] | None = None, **defaults):
    """Parse ``[config.yaml] [--overrides]`` into the dataclasses (default: model, data, distillation and run
    arguments), with the recipe defaults and then ``defaults`` (a recipe's own) under the user's values."""
    from transformers import HfArgumentParser

    from .config import DistillationArguments

    dataclass_types = dataclass_types or (ModelArguments, DataArguments, DistillationArguments, RunArguments)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        argv = yaml_to_argv(argv[0]) + argv[1:]
    defaults = {**RECIPE_TRAINING_DEFAULTS, **defaults}
    explicit = explicit_arguments(HfArgumentParser(dataclass_types), argv)
    defaults.update(implied_defaults(explicit, defaults))
    parser = HfArgumentParser(dataclass_types)
    parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(args=argv)


def explicit_arguments(parser, argv: list[str]) -> set[str]:
    """The argument names ``argv`` sets (in any spelling argparse accepts: ``--x=1``, abbreviations, ``--no_x``)."""
    import argparse

    for action in parser._actions:
        action.default, action.required = argparse.SUPPRESS, False
    given, _ = parser.parse_known_args(argv)
    return set(vars(given))


# An interval given explicitly means its strategy is "steps" (TrainingArguments would ignore it under "no").
STEPS_STRATEGIES = {
    "save_steps": "save_strategy",
    "eval_steps": "eval_strategy",
    "logging_steps": "logging_strategy",
}


def implied_defaults(explicit: set[str], defaults: dict) -> dict:
    """Defaults the user's explicit arguments imply, each said in one log line (on the main process)."""
    implied = {}
    for steps, strategy in STEPS_STRATEGIES.items():
        if steps in explicit and strategy not in explicit and str(defaults.get(strategy, "steps")) != "steps":
            implied[strategy] = "steps"
            note(f"--{steps} given: {strategy} set to 'steps' (it was {defaults[strategy]!r}).")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and "use_cpu" not in explicit and not defaults.get("use_cpu") and not has_accelerator():
        implied["use_cpu"] = True
        note(
            f"Launched as {launched} processes on a machine without a GPU: use_cpu set to true (the processes "
            "train together on CPU, gloo backend)."
        )
    return implied


def has_accelerator() -> bool:
    """Whether a device accelerate can run several processes on (CUDA, XPU, NPU, ...) is present."""
    if torch.cuda.is_available():
        return True
    from accelerate import utils

    checks = (
        "is_xpu_available",
        "is_npu_available",
        "is_mlu_available",
        "is_musa_available",
        "is_sdaa_available",
    )
    return any(getattr(utils, name, lambda: False)() for name in checks) or utils.is_torch_xla_available()


def note(message: str) -> None:
    """A warning from the main process only (logging is not configured yet when the arguments are parsed)."""
    if int(os.environ.get("RANK", "0")) == 0:
        logger.warning(message)


def start_run():
    """The process state of a recipe run: checked launch, and INFO logs from the main process only."""
    from accelerate import PartialState

    state = PartialState()
    check_processes(state)
    level = logging.INFO if state.is_main_process else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s")
    return state


def check_processes(state) -> None:
    """Refuse a multi-process launch in which every process would train alone (CPU without --use_cpu)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > state.num_processes:
        raise ValueError(
            f"Launched as {launched} processes but each would train alone (no GPU and --use_cpu false): pass "
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
