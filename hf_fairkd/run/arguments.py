"""The recipes' arguments: the model, data and run dataclasses, the recipe defaults, and parsing of
``[config.yaml|json] [--overrides]`` (the file's values become parser defaults, typed by the parser's own
actions; nothing is turned back into command-line strings, so lists, dicts and nulls survive)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from ..config import DistillationArguments
from ..data.sources import DEFAULT_GROUP_COLUMNS
from ..io_utils import atomic_write_json
from ..objectives import teacher_objectives
from .argument_files import (
    ARGUMENT_FILE_SUFFIXES,
    given_arguments,
    read_argument_file,
    unknown_flags_message,
)
from .checks import has_accelerator, has_bf16_device, has_fp16_device

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
    student_config_name: str | None = field(
        default=None,
        metadata={
            "help": "A fresh student of any AutoModelForImageClassification type: a config JSON file, a folder "
            "with config.json, or a Hub id (e.g. recipes/configs/models/resnet_cifar.json). None: a fresh ViT of "
            "the sizes below."
        },
    )
    student_config_overrides: str | None = field(
        default=None,
        metadata={"help": "JSON overrides of --student_config_name, e.g. '{\"hidden_sizes\": [16, 32]}'."},
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
    teacher_config_name: str | None = field(
        default=None,
        metadata={
            "help": "A teacher trained here of any AutoModelForImageClassification type: a config JSON file, a "
            "folder with config.json, or a Hub id. None: a ViT of the teacher sizes below."
        },
    )
    teacher_config_overrides: str | None = field(
        default=None, metadata={"help": "JSON overrides of --teacher_config_name."}
    )
    teacher_image_processor_name: str | None = field(
        default=None,
        metadata={
            "help": "The image processor of a given teacher (Hub id or folder), when it is not saved with the "
            "teacher. The teacher sees its own preprocessing; the student sees its own."
        },
    )
    teacher_architecture: str = field(
        default="resnet",
        metadata={
            "help": "A teacher trained here without --teacher_config_name: 'resnet' (a small ResNet, 0.2M "
            "parameters: on small images it learns what a ViT of the student's size cannot) or 'vit' (sized by "
            "--teacher_hidden_size/--teacher_num_layers/--teacher_num_heads).",
            "choices": ["resnet", "vit"],
        },
    )
    teacher_hidden_size: int = field(default=128, metadata={"help": "Hidden size of a teacher trained here."})
    teacher_num_layers: int = field(default=4, metadata={"help": "Layers of a teacher trained here."})
    teacher_num_heads: int = field(default=4, metadata={"help": "Attention heads of a teacher trained here."})
    teacher_objective: str = field(
        default="erm",
        metadata={
            "help": "How a teacher trained here is trained: one of the registry's teacher objectives "
            f"({', '.join(teacher_objectives())})."
        },
    )
    teacher_signal: str = field(
        default="auto",
        metadata={
            "help": "'cached': run the teacher once over train/holdout and store its logits; 'online': run it every "
            "step (needed with augmentation); 'auto': cached unless --augment."
        },
    )
    teacher_view_cache: str | None = field(
        default=None,
        metadata={
            "help": "With --augment and a given teacher: a view cache folder (hf_fairkd.run.view_cache."
            "build_view_cache, or compare_objectives --view_cache): the student and the baseline train on its "
            "stored augmented views, the student with the teacher's stored logits (no teacher forward per step)."
        },
    )
    teacher_num_train_epochs: float | None = field(
        default=None,
        metadata={
            "help": "Epochs for a teacher trained here (default: num_train_epochs, the student's schedule)."
        },
    )
    patch_size: int = field(default=4, metadata={"help": "Patch size of fresh ViTs."})
    image_size: int = field(
        default=16, metadata={"help": "Input resolution of fresh ViTs (images are resized)."}
    )
    teacher_image_size: int | None = field(
        default=None,
        metadata={
            "help": "Input resolution of a teacher trained here (default: --image_size). It gets its own image "
            "processor, saved with it, and sees the student's augmented view at this resolution."
        },
    )
    baseline_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A finished one-hot baseline to reuse (e.g. <earlier run>/baseline) instead of training one; "
            "checked against the data's classes."
        },
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
            "help": "'digits' (embedded, no download), 'digits_spurious' (the digits with an ink colour correlated "
            "with the class in training only: a spurious-attribute benchmark, group column 'colour'), "
            "'cifar10'/'cifar100' (Hub presets), a Hub dataset id, a local dataset folder, or a folder of images "
            "with one sub-folder per class (plus a metadata.csv / metadata.jsonl for attribute columns)."
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
        metadata={
            "help": "rho = n_max / n_min of an exp/step long tail (default: 10 for digits, else 100). Not with the "
            "natural profile (an error there: its imbalance is measured, not chosen)."
        },
    )
    long_tail_profile: str | None = field(
        default=None,
        metadata={
            "help": "'natural' (your data as it is: every training row kept, only a stratified holdout carved, and a "
            "stratified test split if there is none), 'exp' or 'step' (a long tail built from the data). Default: "
            "exp for the benchmarks digits/cifar10/cifar100 (or when --imbalance_factor is given), else natural."
        },
    )
    test_fraction: float | None = field(
        default=None,
        metadata={
            "help": "A dataset without a test split gets a stratified one of this fraction of each class (at least "
            "1 row per class; default 0.2 with the natural profile; exp/step without it carve a balanced one)."
        },
    )
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
    min_cell_rows: int | None = field(
        default=None,
        metadata={
            "help": "With --group_columns: refuse a class x group cell that would get fewer than this many holdout "
            "or test rows (default: a warning names such cells)."
        },
    )


@dataclass
class RunArguments:
    """What happens to the output directory."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write over an output directory that already holds another run."}
    )


# ------------------------------------------------------------------------------------------------ parsing
def parse_recipe_args(dataclass_types=None, argv: list[str] | None = None, **defaults):
    """Parse ``[config.yaml] [--overrides]`` into the dataclasses (default: model, data, distillation and run
    arguments). Under the user's values: the recipe defaults, then ``defaults`` (a recipe's own); the file's
    values are defaults too, so the command line overrides them."""
    dataclass_types = dataclass_types or (ModelArguments, DataArguments, DistillationArguments, RunArguments)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    from_file = (
        read_argument_file(parser, argv.pop(0)) if argv and argv[0].endswith(ARGUMENT_FILE_SUFFIXES) else {}
    )
    known = {action.dest for action in parser._actions}
    if unknown := sorted(set(defaults) - known):
        raise ValueError(f"parse_recipe_args: no argument named {', '.join(unknown)}.")
    defaults = {**{k: v for k, v in RECIPE_TRAINING_DEFAULTS.items() if k in known}, **defaults}
    given = given_arguments(HfArgumentParser(dataclass_types), argv)
    from_file = yield_to_command_line(from_file, given)
    explicit = set(from_file) | set(given)
    chosen = {**defaults, **from_file, **given}  # the value each argument will have, before implied ones
    dataset = chosen.get("dataset_name", parser.get_default("dataset_name"))
    if "group_columns" in known and "group_columns" not in explicit and dataset in DEFAULT_GROUP_COLUMNS:
        defaults["group_columns"] = DEFAULT_GROUP_COLUMNS[dataset]  # a benchmark's own subgroups
    implied = implied_defaults(explicit, defaults, chosen)
    check_precision({**chosen, **implied})
    defaults.update(implied)
    parser.set_defaults(**{**defaults, **from_file})
    *parsed, unused = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unused:
        raise ValueError(unknown_flags_message(parser, unused))
    return tuple(parsed)


# A model given on the command line replaces a config file's way of building that model: the file's flags that
# would contradict it (refused together by check_model_arguments) are dropped, with a note.
FILE_VALUES_THAT_YIELD = {
    "teacher_model_name_or_path": ("teacher_config_name", "teacher_image_size"),
    "teacher_config_name": ("teacher_model_name_or_path",),
    "student_model_name_or_path": ("student_config_name",),
    "student_config_name": ("student_model_name_or_path",),
}


def yield_to_command_line(from_file: dict, given: dict) -> dict:
    """``from_file`` without the values that contradict a model named on the command line."""
    dropped = [
        name
        for flag, names in FILE_VALUES_THAT_YIELD.items()
        if given.get(flag)
        for name in names
        if from_file.get(name) is not None and name not in given
    ]
    if dropped:
        note(
            f"The config file's {', '.join(dropped)} ignored: the command line's "
            f"{', '.join(f for f in FILE_VALUES_THAT_YIELD if given.get(f))} names the model instead."
        )
    return {k: v for k, v in from_file.items() if k not in dropped}


# An interval given explicitly means its strategy is "steps" (TrainingArguments would ignore it under "no").
STEPS_STRATEGIES = {
    "save_steps": "save_strategy",
    "eval_steps": "eval_strategy",
    "logging_steps": "logging_strategy",
}


def implied_defaults(explicit: set[str], defaults: dict, chosen: dict | None = None) -> dict:
    """Defaults the user's explicit arguments imply, each said in one log line (on the main process).
    ``chosen``: every argument's value so far (default: ``defaults``), read for --bf16."""
    chosen = defaults if chosen is None else chosen
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
    # TrainingArguments refuses bf16 without a bf16 GPU unless use_cpu is set; the intent is plain: CPU autocast.
    # (A GPU without bf16, e.g. pre-Ampere CUDA, keeps transformers' own error, which names the GPU it needs.)
    bf16 = [flag for flag in ("bf16", "bf16_full_eval") if chosen.get(flag)]
    user_cpu = "use_cpu" in explicit or chosen.get("use_cpu") or implied.get("use_cpu")
    if bf16 and not user_cpu and not has_bf16_device():
        implied["use_cpu"] = True
        what = "bf16 autocast" if bf16[0] == "bf16" else "bf16 evaluation"
        note(f"--{bf16[0]} on a machine without a GPU: use_cpu set to true ({what} on the CPU).")
    return implied


def check_precision(chosen: dict) -> None:
    """Refuse fp16 training where it would silently train in float32: on a CPU, accelerate turns on neither
    fp16 autocast nor its loss scaling (GradScaler), both of which need a GPU. (``fp16_full_eval`` casts the
    model to float16 for evaluation and works on a CPU: it is left alone.)"""
    # `accelerate launch --mixed_precision fp16` asks for the same through the environment
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION") == "fp16"
    on_cpu = bool(chosen.get("use_cpu")) or not has_fp16_device()
    if not (chosen.get("fp16") or launcher) or not on_cpu:
        return
    flag = "--fp16" if chosen.get("fp16") else "accelerate launch --mixed_precision fp16"
    where = "--use_cpu true" if has_fp16_device() else "no GPU found"
    raise ValueError(
        f"{flag} needs a CUDA GPU (its loss scaling runs on one), and this run is on the CPU ({where}), where it "
        "would silently train in float32. On a CPU use --bf16 (CPU autocast)."
    )


def note(message: str) -> None:
    """A warning from the main process only (logging is not configured yet when the arguments are parsed)."""
    if int(os.environ.get("RANK", "0")) == 0:
        logger.warning(message)


def resolved_config(*dataclass_objects) -> dict:
    """All arguments as one JSON-able dict, tokens masked by TrainingArguments.to_dict."""
    config = {}
    for obj in dataclass_objects:
        values = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        config[type(obj).__name__] = json.loads(json.dumps(values, default=str))
    return config


def write_run_config(output_dir: str, *dataclass_objects) -> None:
    """``run_config.json``: every argument of the run, resolved (see `resolved_config`)."""
    atomic_write_json(os.path.join(output_dir, RUN_CONFIG_NAME), resolved_config(*dataclass_objects))
