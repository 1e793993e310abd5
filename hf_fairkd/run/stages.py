"""The stages of a recipe run (teacher, one-hot baseline, student): each stage's training arguments, its
training with `DistillationTrainer`, the teacher's signal cached once, and predictions gathered over
processes for the evaluation."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from accelerate import PartialState

from ..config import DistillationArguments
from ..groups import read_group_values
from ..objectives import get_objective, teacher_objectives
from ..results.schema import record_from_info
from ..teacher import build_teacher_cache
from ..trainer import DistillationTrainer
from . import prediction_memo
from .arguments import DataArguments, ModelArguments
from .preprocessing import PreparedSplits


def stage_args(args: DistillationArguments, **changes) -> DistillationArguments:
    """A copy of the training arguments for one stage (teacher, baseline, student) of a run."""
    changes.setdefault("push_to_hub", False)
    if (
        changes.get("objective", args.objective) != args.objective
    ):  # settings belong to the student's objective
        changes.setdefault("objective_settings", None)
    if changes.get("objective") in teacher_objectives():  # a teacher has no teacher to weight DRO errors by
        changes.setdefault("dro_error_weighting", "label")
    return dataclasses.replace(args, **changes)


def train_stage(
    model,
    args: DistillationArguments,
    splits: PreparedSplits,
    *,
    teacher=None,
    processor=None,
    resume_from_checkpoint=None,
    save_dir: str | None = None,
):
    """Train one model with `DistillationTrainer` and save it (with the image processor) to ``save_dir``.

    A stage never publishes: the recipes check the Hub before training (`preflight`) and push once, at the
    end, with `trainer.push_to_hub()`."""
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
        teacher=teacher if get_objective(args.objective).uses_teacher else None,
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
    """Replace train and holdout by copies carrying the teacher's logits (computed once, gathered in order).

    ``processor`` is the teacher's image processor: the teacher runs on its own inputs (the rows'
    ``teacher_pixel_values`` when they carry them) and the cache record names that preprocessing."""
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
    with warnings.catch_warnings():  # only the predictions are read here, not the loss
        warnings.filterwarnings("ignore", message="Evaluation batches carry no 'group_ids'")
        output = trainer.predict(dataset)
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return np.asarray(logits, dtype=np.float32), np.asarray(output.label_ids)


def record_on_test_split(trainers: dict, splits: PreparedSplits, info, settings: dict) -> dict:
    """The run record of every model (``trainers``: role -> trainer) on the balanced test split: predictions
    gathered over processes, per-class reports with the long-tail profile's shot groups, the dataset's
    metadata and ``settings``."""
    logits = {}
    for role, trainer in trainers.items():  # the teacher sees the test images through its own processor
        own = role == "teacher" and hasattr(splits, "for_teacher")
        test = splits.for_teacher("test") if own else splits["test"]
        if getattr(trainer, "predicts_only", False):  # a given model: its predictions kept for the next run
            logits[role], labels = prediction_memo.predict(trainer, test, predict_logits)
        else:
            logits[role], labels = predict_logits(trainer, test)
    columns = getattr(info, "group_columns", None) or []
    groups = read_group_values(splits["test"], columns, where="the test split") if columns else None
    return record_from_info(logits, labels, info, settings, groups=groups)


def prediction_trainer(model, args: DistillationArguments, splits: PreparedSplits, processor=None):
    """A trainer that only predicts, for a model trained elsewhere (a given teacher): objective erm (no teacher
    needed) and the run's own output folder, where prediction writes nothing."""
    trainer = DistillationTrainer(
        model=model,
        args=stage_args(args, objective="erm"),
        class_counts=splits.class_counts,
        processing_class=processor,
    )
    # the model is not trained here, so its test predictions may be kept for the next run (prediction_memo)
    trainer.predicts_only = True
    return trainer
