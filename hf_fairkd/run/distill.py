"""The distillation run of `recipes/distill_vit.py` as library steps: `distill` runs all of them; a script that
needs one step (a comparison reusing one teacher, a benchmark) calls that step.

Every check runs in `prepare_distillation`, before anything trains. Then: the teacher (given, reused from a
finished ``teacher/`` stage, or trained here), the one-hot baseline (given, reused, or trained here), the
distilled student, and the evaluation of all three on the balanced test split."""

from __future__ import annotations

import dataclasses
import logging
import os

from accelerate import PartialState

from ..config import DistillationArguments
from ..data.info import describe_profile
from ..data.sources import hub_dataset_ids, looks_like_hub_id
from ..objectives import get_objective, teacher_objectives
from ..results import (
    finished_run_push,
    format_summary,
    public_name,
    recorded_objective,
    run_settings,
    save_card_and_metrics,
)
from ..teacher import label_permutation, load_teacher
from . import arguments, checks, models, preparation, preprocessing, resume, stages

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PreparedRun:
    """What a distillation run has checked and built before anything trains."""

    model_args: object
    data_args: object
    args: DistillationArguments
    run_args: object
    info: object
    processor: object
    teacher_processor: object
    prepared: preprocessing.PreparedSplits
    student: object
    given_teacher: object | None
    given_baseline: object | None
    fingerprints: dict
    finished: dict
    views: dict | None = None  # with --teacher_view_cache: role (baseline, student) -> its train split

    def stage_dir(self, stage: str) -> str:
        return os.path.join(self.args.output_dir, stage)

    def splits_for(self, role: str) -> preprocessing.PreparedSplits:
        """The splits a stage trains on: the prepared ones, or their train split reading the view cache."""
        if not self.views:
            return self.prepared
        train = {**self.prepared, "train": self.views[role]}
        return preprocessing.PreparedSplits(train, self.prepared.class_counts, self.prepared.teacher_splits)


def distill(model_args, data_args, args: DistillationArguments, run_args) -> dict:
    """Teacher, one-hot baseline and distilled student, evaluated per class (and group) on the test split; the
    student, its card, metrics and plot written to ``args.output_dir`` (and pushed with ``--push_to_hub``)."""
    state = checks.start_run()
    run = prepare_distillation(model_args, data_args, args, run_args)
    teacher, teacher_trainer = obtain_teacher(run)
    if stages.use_cached_teacher(model_args, data_args) and get_objective(args.objective).uses_teacher:
        logger.info(
            "Caching the teacher's logits on train and holdout (computed once; the teacher is not run per step)."
        )
        stages.cache_teacher_signal(
            run.prepared, teacher, run.teacher_processor, args.per_device_eval_batch_size
        )
    baseline, baseline_trainer = obtain_baseline(run)
    logger.info(f"Training the distilled student (objective {args.objective}).")
    student_trainer = stages.train_stage(
        run.student,
        args,
        run.splits_for("student"),
        teacher=teacher,
        processor=run.processor,
        resume_from_checkpoint=args.resume_from_checkpoint,
        save_dir=args.output_dir,
    )
    trainers = {
        "teacher": teacher_trainer
        or stages.prediction_trainer(teacher, args, run.prepared, run.teacher_processor),
        "baseline": baseline_trainer
        or stages.prediction_trainer(baseline, args, run.prepared, run.processor),
        "student": student_trainer,
    }
    settings = distillation_settings(model_args, data_args, args, state.num_processes)
    if student_trainer.teacher_batches:  # the student's own count: cached (stored logits) or online teacher
        settings["teacher_batches"] = dict(sorted(student_trainer.teacher_batches.items()))
    metrics = stages.record_on_test_split(trainers, run.prepared, run.info, settings)
    card_kwargs = dict(model_id=args.hub_model_id, datasets=hub_dataset_ids(data_args.dataset_name))
    if state.is_main_process:
        save_card_and_metrics(args.output_dir, metrics, **card_kwargs)
        for trainer in (student_trainer, baseline_trainer, teacher_trainer):  # every model trained here
            if trainer is not None:  # with its own processor (a teacher's may have its own resolution)
                (trainer.processing_class or run.processor).save_pretrained(trainer.args.output_dir)
        arguments.write_run_config(args.output_dir, model_args, data_args, args, run_args)
        logger.info(format_summary(metrics))
        logger.info(
            f"\nOutputs in {args.output_dir}: the student, subgroup_metrics.json, per_class_accuracy.png, README.md."
        )
    if args.push_to_hub:
        contents = "student, README.md, subgroup_metrics.json, per_class_accuracy.png"
        with finished_run_push(args.output_dir, contents):
            student_trainer.push_to_hub(metrics=metrics, card_kwargs=card_kwargs)
    state.wait_for_everyone()
    return metrics


def prepare_distillation(model_args, data_args, args: DistillationArguments, run_args) -> PreparedRun:
    """Every check of the run (arguments, data, models, a given teacher's labels, a reused baseline, finished
    stages on resume), the splits decoded once, and an earlier run's stale stage folders removed."""
    if model_args.teacher_objective not in teacher_objectives():
        raise ValueError(
            f"--teacher_objective {model_args.teacher_objective!r}: use one of {', '.join(teacher_objectives())}."
        )
    stages.use_cached_teacher(model_args, data_args)  # validates --teacher_signal before any work
    views = model_args.teacher_view_cache
    if views and not (data_args.augment and model_args.teacher_model_name_or_path):
        raise ValueError(
            f"--teacher_view_cache {views}: a view cache holds augmented views of a given teacher; pass --augment "
            "true and --teacher_model_name_or_path (the teacher the cache was built with)."
        )
    models.check_model_arguments(model_args)
    checks.check_before_work(args, run_args)

    splits, info = preparation.load_data(data_args, args.group_columns, args.max_group_values)
    trained_here = (
        {} if model_args.teacher_model_name_or_path else {"--teacher_objective": model_args.teacher_objective}
    )
    preparation.check_objectives({"--objective": args.objective, **trained_here}, args, info)
    logger.info(
        f"Dataset {data_args.dataset_name}: {len(info.class_names)} classes, {describe_profile(info)}; holdout "
        f"{sum(info.holdout_counts)}, test {sum(info.test_counts)}. Per-class training counts: {info.train_counts}"
    )
    processor = preprocessing.make_image_processor(model_args)
    student = models.student_model(model_args, info.class_names, seed=args.seed)
    given_teacher = load_given_teacher(model_args, student)
    # each model sees its own inputs: a given teacher its own image processor's, from the same decoded image
    teacher_processor = preprocessing.teacher_image_processor(model_args, processor)
    prepared = preprocessing.prepare_splits(
        splits, info, processor, augment=data_args.augment, teacher_processor=teacher_processor
    )
    given_baseline = load_given_baseline(model_args, info, processor, student)

    # with --overwrite_output_dir, an earlier run's stage this run does not rewrite must not stay behind
    not_written = [
        stage
        for stage, given in (("teacher", given_teacher), ("baseline", given_baseline))
        if given is not None
    ]
    if run_args.overwrite_output_dir and not resume.resuming(args) and PartialState().is_main_process:
        for folder in checks.remove_stale_stages(args.output_dir, not_written):
            logger.info(
                f"Removed {folder} of an earlier run (--overwrite_output_dir; this run does not write it)."
            )

    # on --resume_from_checkpoint, finished teacher/ and baseline/ folders of these settings are reused
    fingerprints = {}
    if given_teacher is None:
        fingerprints["teacher"] = resume.stage_fingerprint(
            "teacher", teacher_stage_args(model_args, args), model_args, info.to_dict()
        )
    if given_baseline is None:
        fingerprints["baseline"] = resume.stage_fingerprint(
            "baseline", baseline_stage_args(args), model_args, info.to_dict()
        )
    finished = {  # checked before anything trains: a mismatch is an error now
        stage: resume.resuming(args)
        and resume.finished_stage(os.path.join(args.output_dir, stage), fingerprint)
        for stage, fingerprint in fingerprints.items()
    }
    views = stored_views(model_args, data_args, args, prepared, given_teacher, student)
    return PreparedRun(
        model_args, data_args, args, run_args, info, processor, teacher_processor, prepared, student,
        given_teacher, given_baseline, fingerprints, finished, views,
    )  # fmt: skip


def stored_views(model_args, data_args, args, prepared, given_teacher, student) -> dict | None:
    """With ``--teacher_view_cache``: the train split of the baseline (the stored views) and of the student (the
    stored views and, for an objective with a teacher, the teacher's logits), the cache checked against the given
    teacher and these rows before anything trains. None without."""
    path = model_args.teacher_view_cache
    if not path:
        return None
    from .cached_views import with_cached_views

    student_views = with_cached_views(
        prepared["train"],
        path,
        teacher=given_teacher,
        logits=get_objective(args.objective).uses_teacher,
        id2label=student.config.id2label,
    )
    return {
        "student": student_views,
        "baseline": with_cached_views(prepared["train"], path, logits=False, check=False),
    }


def load_given_teacher(model_args, student):
    """The teacher given with ``--teacher_model_name_or_path`` (None: it is trained here), checked against the
    student's label space."""
    if not model_args.teacher_model_name_or_path:
        return None
    teacher = load_teacher(
        model_args.teacher_model_name_or_path, trust_remote_code=model_args.trust_remote_code
    )
    label_permutation(student.config.id2label, teacher.config.id2label)
    return teacher


def load_given_baseline(model_args, info, processor, student):
    """The one-hot baseline given with ``--baseline_model_name_or_path`` (None: it is trained here), checked
    against the data."""
    given = model_args.baseline_model_name_or_path
    if not given:
        return None
    baseline = models.load_baseline(
        given, info.class_names, model_args.trust_remote_code, dataset=info.to_dict(), processor=processor
    )
    if type(baseline) is not type(student):
        logger.warning(
            f"The reused baseline is a {type(baseline).__name__}, the student a {type(student).__name__}: "
            "the student - baseline comparison also compares the two architectures."
        )
    return baseline


def teacher_stage_args(model_args, args: DistillationArguments) -> DistillationArguments:
    """The training arguments of a teacher trained here: its objective and epochs, its own folder."""
    return stages.stage_args(
        args,
        output_dir=os.path.join(args.output_dir, "teacher"),
        objective=model_args.teacher_objective,
        num_train_epochs=model_args.teacher_num_train_epochs or args.num_train_epochs,
    )


def baseline_stage_args(args: DistillationArguments) -> DistillationArguments:
    """The training arguments of the one-hot baseline: the student's, objective ce, its own folder."""
    return stages.stage_args(args, output_dir=os.path.join(args.output_dir, "baseline"), objective="ce")


def obtain_teacher(run: PreparedRun):
    """The teacher and, when it is trained here, its trainer (else None): the given one, the finished stage of
    these settings on resume, or a new one trained on the teacher's view of the data with its own processor."""
    if run.given_teacher is not None:
        return run.given_teacher, None
    if run.finished.get("teacher"):
        logger.info(
            f"Reusing the finished teacher stage {run.stage_dir('teacher')} (its settings match this run's): "
            "not retrained."
        )
        return load_teacher(run.stage_dir("teacher")), None
    model_args = run.model_args
    logger.info(
        f"No teacher given (--teacher_model_name_or_path): training a teacher here, "
        f"{models.model_description(model_args, 'teacher')}, with objective {model_args.teacher_objective}."
    )
    trainer = train_marked_stage(
        models.teacher_model(model_args, run.info.class_names, run.args.seed),
        teacher_stage_args(model_args, run.args),
        run.prepared.teacher_view(),  # its own resolution with --teacher_image_size
        run.teacher_processor,
        run.fingerprints["teacher"],
        resuming=resume.resuming(run.args),
    )
    return trainer.model, trainer


def obtain_baseline(run: PreparedRun):
    """The one-hot baseline and, when it is trained here, its trainer (else None)."""
    if run.given_baseline is not None:
        logger.info(
            f"Reusing the one-hot baseline {run.model_args.baseline_model_name_or_path} "
            "(--baseline_model_name_or_path): no baseline is trained."
        )
        return run.given_baseline, None
    if run.finished["baseline"]:
        logger.info(
            f"Reusing the finished baseline stage {run.stage_dir('baseline')} (its settings match this run's): "
            "not retrained."
        )
        return models.load_classifier(run.stage_dir("baseline")), None
    logger.info("Training the one-hot baseline student (objective ce).")
    trainer = train_marked_stage(
        models.student_model(run.model_args, run.info.class_names, seed=run.args.seed),
        baseline_stage_args(run.args),
        run.splits_for("baseline"),
        run.processor,
        run.fingerprints["baseline"],
        resuming=resume.resuming(run.args),
    )
    return trainer.model, trainer


def train_marked_stage(model, stage_args, prepared, processor, fingerprint: dict, resuming: bool):
    """Train a teacher or baseline stage into ``stage_args.output_dir`` (on resume: from that folder's own newest
    complete checkpoint, if any) and mark it finished (`resume.mark_stage_complete`) as its last act."""
    folder = stage_args.output_dir
    main_process = PartialState().is_main_process
    if main_process:
        resume.clear_stage_marker(folder)
    trainer = stages.train_stage(
        model,
        stage_args,
        prepared,
        processor=processor,
        resume_from_checkpoint=True if resuming else None,
        save_dir=folder,
    )
    if main_process:
        resume.mark_stage_complete(folder, fingerprint)
    return trainer


def distillation_settings(model_args, data_args, args: DistillationArguments, world_size: int) -> dict:
    """The record's ``settings`` for a distillation run: the objective's, plus the models and the data (a local
    folder named by its own name). A given teacher's objective is read from its own record (None without one)."""
    given = model_args.teacher_model_name_or_path
    return run_settings(
        args,
        teacher_objective=recorded_objective(given) if given else model_args.teacher_objective,
        teacher_given=bool(given),
        student_model=model_args.student_model_name_or_path
        or models.model_description(model_args, "student"),
        teacher_model=given or models.model_description(model_args, "teacher", " (trained here)"),
        baseline_model=f"reused: {public_name(model_args.baseline_model_name_or_path)}"
        if model_args.baseline_model_name_or_path
        else "trained here (objective ce)",
        teacher_hub_id=given if looks_like_hub_id(given) else None,
        dataset_name=data_args.dataset_name,
        world_size=world_size,
    )
