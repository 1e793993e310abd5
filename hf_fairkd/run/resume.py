"""Resuming a recipe run stage by stage: a finished teacher/ or baseline/ folder is reused, not retrained.

A stage trained here (teacher, one-hot baseline) writes ``stage_complete.json`` into its folder as its last act
(after its weights and image processor), atomically: the stage's settings fingerprint (the data, the objective,
the training arguments that shape the weights, the model's sizes or config). On ``--resume_from_checkpoint``
a folder with that marker is reused when its fingerprint equals this run's for the stage; a different one is
an error naming the settings, before any training. A folder without it (killed half-way) is trained again,
from its own newest complete checkpoint when it has one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from transformers import TrainingArguments

from ..config import DistillationArguments
from ..io_utils import atomic_write_json

logger = logging.getLogger(__name__)

STAGE_COMPLETE_NAME = "stage_complete.json"
FINGERPRINT_VERSION = 1

# TrainingArguments that shape a stage's weights (logging, saving, output and Hub settings do not).
TRAINING_FIELDS = (
    "seed",
    "data_seed",
    "num_train_epochs",
    "max_steps",
    "learning_rate",
    "weight_decay",
    "warmup_steps",
    "warmup_ratio",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "optim",
    "optim_args",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "label_smoothing_factor",
    "fp16",
    "bf16",
)
# DistillationArguments about the teacher's signal: a teacher or a baseline stage has no teacher.
TEACHER_SIGNAL_PREFIXES = ("alpha", "temperature", "kd_", "teacher_", "ada_alpha", "reliability_")
MODEL_FIELDS = (
    "model_name_or_path",
    "config_name",
    "config_overrides",
    "hidden_size",
    "num_layers",
    "num_heads",
)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def resuming(args: DistillationArguments) -> bool:
    """Whether the run was asked to resume (``--resume_from_checkpoint`` true or a path)."""
    resume = args.resume_from_checkpoint
    return resume is not None and str(resume).strip().lower() not in ("false", "", "none")


def stage_fingerprint(stage: str, stage_args: DistillationArguments, model_args, dataset: dict) -> dict:
    """The settings a finished ``stage`` ('teacher' or 'baseline', whose model is the student's) depends on."""
    own = {f.name for f in dataclasses.fields(DistillationArguments)} - {
        f.name for f in dataclasses.fields(TrainingArguments)
    }
    objective_args = {
        name: getattr(stage_args, name)
        for name in sorted(own)
        if name != "objective" and not name.startswith(TEACHER_SIGNAL_PREFIXES)
    }
    # the objective's own settings, every one (given or default); None when it declares none, as a marker
    # written before the field existed reads (so such a finished stage still matches)
    objective_args["objective_settings"] = stage_args.resolved_objective_settings() or None
    role = "teacher" if stage == "teacher" else "student"
    model = {f"{role}_{name}": getattr(model_args, f"{role}_{name}", None) for name in MODEL_FIELDS}
    model.update(image_size=model_args.image_size, patch_size=model_args.patch_size)
    if role == "teacher" and getattr(model_args, "teacher_image_size", None) is not None:
        model["teacher_image_size"] = model_args.teacher_image_size  # only when set: older stages still match
    return _jsonable(
        {
            "version": FINGERPRINT_VERSION,
            "stage": stage,
            "objective": stage_args.objective,
            "training": {name: getattr(stage_args, name, None) for name in TRAINING_FIELDS},
            "objective_args": objective_args,
            "model": model,
            "dataset": dataset,
        }
    )


def mark_stage_complete(folder: str, fingerprint: dict) -> None:
    """The stage's last act: its fingerprint into ``folder``/stage_complete.json, atomically."""
    atomic_write_json(os.path.join(folder, STAGE_COMPLETE_NAME), fingerprint)


def clear_stage_marker(folder: str) -> None:
    """Before a stage trains: an earlier run's marker must not vouch for weights this run is rewriting."""
    marker = os.path.join(folder, STAGE_COMPLETE_NAME)
    if os.path.exists(marker):
        os.remove(marker)


def _differences(theirs, ours, prefix: str = "") -> list[tuple[str, object, object]]:
    if isinstance(theirs, dict) and isinstance(ours, dict):
        found = []
        for key in sorted(set(theirs) | set(ours), key=str):
            found += _differences(theirs.get(key), ours.get(key), f"{prefix}{key}.")
        return found
    return [] if theirs == ours else [(prefix.rstrip("."), theirs, ours)]


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def finished_stage(folder: str, fingerprint: dict) -> bool:
    """Whether ``folder`` holds this stage finished with this run's settings (reuse it), or not (train it).

    A folder without a readable marker was not finished (a kill mid-stage): False. A marker whose fingerprint
    differs from ``fingerprint``: a ValueError naming the settings that differ."""
    marker = os.path.join(folder, STAGE_COMPLETE_NAME)
    if not os.path.isfile(marker):
        return False
    try:
        with open(marker, encoding="utf-8") as f:
            theirs = json.load(f)
    except (OSError, ValueError):
        logger.warning(f"{marker} is unreadable: the {fingerprint['stage']} stage is trained again.")
        return False
    differ = _differences(theirs, fingerprint)
    if differ:
        shown = "; ".join(f"{key} {_short(a)} there, {_short(b)} here" for key, a, b in differ[:8])
        more = f"; and {len(differ) - 8} more" if len(differ) > 8 else ""
        raise ValueError(
            f"--resume_from_checkpoint: the finished {fingerprint['stage']} stage in {folder} was trained with "
            f"other settings than this run's ({shown}{more}). Resume with the original flags, or pass "
            "--overwrite_output_dir (without --resume_from_checkpoint) to start the run again. Nothing was "
            "trained or deleted."
        )
    return True
