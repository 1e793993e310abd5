"""Distil a ViT teacher into a small ViT student on a long-tailed dataset, and report every class.

    accelerate launch recipes/distill_vit.py                      # embedded long-tailed digits, ~2 min on CPU
    accelerate launch recipes/distill_vit.py recipes/configs/cifar10_lt_budget.yaml
    python recipes/distill_vit.py --objective robust_kd --dro_tradeoff 0.5 --output_dir outputs/robust

Stages: (1) a teacher, trained here with `--teacher_objective` unless `--teacher_model_name_or_path` is
given; (2) the one-hot baseline student (objective `ce`); (3) the distilled student (`--objective`).
All three are evaluated per class on the balanced test split. Each model sees its own inputs: a given teacher
its own image processor's (saved with it, or `--teacher_image_processor_name`), from the same decoded (and
augmented) image as the student's. OUTPUT_DIR receives the student
(`save_pretrained` + image processor), subgroup_metrics.json, per_class_accuracy.png, README.md (the model
card), run_config.json, and teacher/ and baseline/ sub-folders (each marked finished by stage_complete.json).
`--resume_from_checkpoint true` reuses a finished teacher/ and baseline/ (their settings checked against this
run's: `hf_fairkd.run.resume`), resumes the interrupted stage from its own newest complete checkpoint, and
trains the stages after it.
"""

from __future__ import annotations

import logging
import os

from accelerate import PartialState

from hf_fairkd.config import DistillationArguments
from hf_fairkd.data.info import describe_profile
from hf_fairkd.data.sources import hub_dataset_ids, looks_like_hub_id
from hf_fairkd.objectives import get_objective, teacher_objectives
from hf_fairkd.results import (
    finished_run_push,
    format_summary,
    public_name,
    recorded_objective,
    run_settings,
    save_card_and_metrics,
)
from hf_fairkd.run import arguments, checks, models, preparation, preprocessing, resume, stages
from hf_fairkd.teacher import label_permutation, load_teacher

logger = logging.getLogger("distill_vit")


def main(argv: list[str] | None = None) -> dict:
    return run(*arguments.parse_recipe_args(argv=argv))


def run(model_args, data_args, args: DistillationArguments, run_args) -> dict:
    state = checks.start_run()
    say = logger.info
    if model_args.teacher_objective not in teacher_objectives():
        raise ValueError(
            f"--teacher_objective {model_args.teacher_objective!r}: use one of {', '.join(teacher_objectives())}."
        )
    output_dir = args.output_dir
    stages.use_cached_teacher(model_args, data_args)  # validates --teacher_signal before any work
    models.check_model_arguments(model_args)
    checks.check_before_work(args, run_args)

    # ---- data
    splits, info = preparation.load_data(data_args, args.group_columns, args.max_group_values)
    trained_here = (
        {} if model_args.teacher_model_name_or_path else {"--teacher_objective": model_args.teacher_objective}
    )
    preparation.check_objectives({"--objective": args.objective, **trained_here}, args, info)
    say(
        f"Dataset {data_args.dataset_name}: {len(info.class_names)} classes, {describe_profile(info)}; holdout "
        f"{sum(info.holdout_counts)}, test "
        f"{sum(info.test_counts)}. Per-class training counts: {info.train_counts}"
    )
    processor = preprocessing.make_image_processor(model_args)
    student = models.student_model(model_args, info.class_names, seed=args.seed)
    given_teacher = load_given_teacher(model_args, student)  # checked before anything trains
    # each model sees its own inputs: a given teacher its own image processor's, from the same decoded image
    teacher_processor = preprocessing.teacher_image_processor(model_args, processor)
    prepared = preprocessing.prepare_splits(
        splits, info, processor, augment=data_args.augment, teacher_processor=teacher_processor
    )
    reused = model_args.baseline_model_name_or_path
    if reused:  # checked against the data before anything trains
        baseline = models.load_baseline(
            reused,
            info.class_names,
            model_args.trust_remote_code,
            dataset=info.to_dict(),
            processor=processor,
        )
        if type(baseline) is not type(student):
            logger.warning(
                f"The reused baseline is a {type(baseline).__name__}, the student a {type(student).__name__}: "
                "the student - baseline comparison also compares the two architectures."
            )

    # ---- with --overwrite_output_dir, an earlier run's stage this run does not rewrite must not stay behind
    not_written = [s for s, given in (("teacher", given_teacher is not None), ("baseline", reused)) if given]
    if run_args.overwrite_output_dir and not resume.resuming(args) and state.is_main_process:
        for folder in checks.remove_stale_stages(output_dir, not_written):
            say(f"Removed {folder} of an earlier run (--overwrite_output_dir; this run does not write it).")

    # ---- on --resume_from_checkpoint, finished teacher/ and baseline/ folders of these settings are reused
    baseline_dir = os.path.join(output_dir, "baseline")
    baseline_args = stages.stage_args(args, output_dir=baseline_dir, objective="ce")
    fingerprints = {
        "baseline": resume.stage_fingerprint("baseline", baseline_args, model_args, info.to_dict())
    }
    if given_teacher is None:
        fingerprints["teacher"] = resume.stage_fingerprint(
            "teacher", teacher_stage_args(model_args, args), model_args, info.to_dict()
        )
    if reused:
        del fingerprints["baseline"]
    finished = {  # checked before anything trains: a mismatch is an error now
        stage: resume.resuming(args) and resume.finished_stage(os.path.join(output_dir, stage), fingerprint)
        for stage, fingerprint in fingerprints.items()
    }

    # ---- teacher (given, or trained here), one-hot baseline, distilled student
    if finished.get("teacher"):
        teacher_dir = os.path.join(output_dir, "teacher")
        say(
            f"Reusing the finished teacher stage {teacher_dir} (its settings match this run's): not retrained."
        )
        teacher, teacher_trainer = load_teacher(teacher_dir), None
    else:
        teacher, teacher_trainer = teacher_stage(
            model_args,
            args,
            info,
            prepared,
            teacher_processor,
            given_teacher,
            fingerprint=fingerprints.get("teacher"),
        )
    if stages.use_cached_teacher(model_args, data_args) and get_objective(args.objective).uses_teacher:
        say(
            "Caching the teacher's logits on train and holdout (computed once; the teacher is not run per step)."
        )
        stages.cache_teacher_signal(prepared, teacher, teacher_processor, args.per_device_eval_batch_size)
    if reused:
        say(f"Reusing the one-hot baseline {reused} (--baseline_model_name_or_path): no baseline is trained.")
        baseline_trainer = None
    elif finished["baseline"]:
        say(
            f"Reusing the finished baseline stage {baseline_dir} (its settings match this run's): not retrained."
        )
        baseline = models.load_classifier(baseline_dir)
        baseline_trainer = None
    else:
        say("Training the one-hot baseline student (objective ce).")
        baseline_trainer = train_marked_stage(
            models.student_model(model_args, info.class_names, seed=args.seed),
            baseline_args,
            prepared,
            processor,
            fingerprints["baseline"],
            resuming=resume.resuming(args),
        )
    say(f"Training the distilled student (objective {args.objective}).")
    student_trainer = stages.train_stage(
        student,
        args,
        prepared,
        teacher=teacher,
        processor=processor,
        resume_from_checkpoint=args.resume_from_checkpoint,
        save_dir=output_dir,
    )

    # ---- evaluation of all three on the balanced test split (gathered over processes)
    trainers = {
        "teacher": teacher_trainer or stages.prediction_trainer(teacher, args, prepared, teacher_processor),
        "baseline": baseline_trainer or stages.prediction_trainer(baseline, args, prepared, processor),
        "student": student_trainer,
    }
    settings = distillation_settings(model_args, data_args, args, state.num_processes)
    metrics = stages.record_on_test_split(trainers, prepared, info, settings)
    card_kwargs = dict(model_id=args.hub_model_id, datasets=hub_dataset_ids(data_args.dataset_name))
    if state.is_main_process:
        save_card_and_metrics(output_dir, metrics, **card_kwargs)
        for trainer in (student_trainer, baseline_trainer, teacher_trainer):  # every model trained here
            if trainer is not None:  # with its own processor (a teacher's may have its own resolution)
                (trainer.processing_class or processor).save_pretrained(trainer.args.output_dir)
        arguments.write_run_config(output_dir, model_args, data_args, args, run_args)
        say(format_summary(metrics))
        say(
            f"\nOutputs in {output_dir}: the student, subgroup_metrics.json, per_class_accuracy.png, README.md."
        )
    if args.push_to_hub:
        contents = "student, README.md, subgroup_metrics.json, per_class_accuracy.png"
        with finished_run_push(output_dir, contents):
            student_trainer.push_to_hub(metrics=metrics, card_kwargs=card_kwargs)
    state.wait_for_everyone()
    return metrics


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


def teacher_stage_args(model_args, args: DistillationArguments) -> DistillationArguments:
    """The training arguments of a teacher trained here: its objective and epochs, its own folder."""
    return stages.stage_args(
        args,
        output_dir=os.path.join(args.output_dir, "teacher"),
        objective=model_args.teacher_objective,
        num_train_epochs=model_args.teacher_num_train_epochs or 2 * args.num_train_epochs,
    )


def teacher_stage(
    model_args, args: DistillationArguments, info, prepared, processor, given=None, fingerprint=None
):
    """The teacher and, when it is trained here (no ``--teacher_model_name_or_path``), its trainer (else None),
    trained on the teacher's view of ``prepared`` with ``processor``, the teacher's own image processor.
    ``given``: the given teacher (`load_given_teacher`), already checked before anything trains.
    ``fingerprint``: the stage's settings (`resume.stage_fingerprint`), written into teacher/ once it is done."""
    if given is not None:
        return given, None
    objective = model_args.teacher_objective
    logger.info(
        f"No teacher given (--teacher_model_name_or_path): training a "
        f"{'teacher from ' + model_args.teacher_config_name if model_args.teacher_config_name else 'ViT teacher'} "
        f"with objective {objective}."
    )
    teacher_args = teacher_stage_args(model_args, args)
    if fingerprint is None:
        fingerprint = resume.stage_fingerprint("teacher", teacher_args, model_args, info.to_dict())
    trainer = train_marked_stage(
        models.teacher_model(model_args, info.class_names, args.seed),
        teacher_args,
        prepared.teacher_view(),  # its own resolution with --teacher_image_size
        processor,
        fingerprint,
        resuming=resume.resuming(args),
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


if __name__ == "__main__":
    checks.run_command_line(main)
