"""Distil a ViT teacher into a small ViT student on a long-tailed dataset, and report every class.

    accelerate launch recipes/distill_vit.py                      # embedded long-tailed digits, ~2 min on CPU
    accelerate launch recipes/distill_vit.py recipes/configs/cifar10_lt_budget.yaml
    python recipes/distill_vit.py --objective robust_kd --dro_tradeoff 0.5 --output_dir outputs/robust

Stages: (1) a teacher, trained here with `--teacher_objective` unless `--teacher_model_name_or_path` is
given; (2) the one-hot baseline student (objective `ce`); (3) the distilled student (`--objective`).
All three are evaluated per class on the balanced test split. OUTPUT_DIR receives the student
(`save_pretrained` + image processor), subgroup_metrics.json, per_class_accuracy.png, README.md (the model
card), run_config.json, and teacher/ and baseline/ sub-folders.
"""

from __future__ import annotations

import logging
import os
import sys

from hf_fairkd import hub, pipeline
from hf_fairkd.config import DistillationArguments

logger = logging.getLogger("distill_vit")


def main(argv: list[str] | None = None) -> dict:
    return run(*pipeline.parse_recipe_args(argv=argv))


def run(model_args, data_args, args: DistillationArguments, run_args) -> dict:
    from hf_fairkd.cards import save_card_and_metrics
    from hf_fairkd.objectives import get_objective
    from hf_fairkd.teacher import label_permutation, load_teacher

    state = pipeline.start_run()
    say = logger.info
    if model_args.teacher_objective not in ("erm", "balanced", "dro"):
        raise ValueError(f"--teacher_objective {model_args.teacher_objective!r}: use erm, balanced or dro.")
    output_dir = args.output_dir
    pipeline.use_cached_teacher(model_args, data_args)  # validates --teacher_signal before any work
    pipeline.check_output_dir(
        output_dir, overwrite=run_args.overwrite_output_dir, resuming=bool(args.resume_from_checkpoint)
    )
    if args.push_to_hub:  # an unreachable Hub or a refused token fails now, not after the training
        repo_id = args.hub_model_id or os.path.basename(os.path.abspath(output_dir))
        hub.preflight(repo_id, args.hub_token, args.hub_private_repo, folder=output_dir)

    # ---- data
    splits, info = pipeline.load_data(data_args)
    trained_here = (
        {} if model_args.teacher_model_name_or_path else {"--teacher_objective": model_args.teacher_objective}
    )
    pipeline.check_objectives({"--objective": args.objective, **trained_here}, args, info)
    say(
        f"Dataset {data_args.dataset_name}: {len(info.class_names)} classes, {sum(info.train_counts)} training rows "
        f"(rho={info.imbalance_factor:g}, {info.profile}), holdout {sum(info.holdout_counts)}, test "
        f"{sum(info.test_counts)}. Per-class training counts: {info.train_counts}"
    )
    processor = pipeline.make_image_processor(model_args)
    prepared = pipeline.prepare_splits(splits, info, processor, augment=data_args.augment)
    student = pipeline.student_model(model_args, info.class_names, seed=args.seed)

    # ---- teacher: given (checked against the data before anything trains) or trained here
    teacher_dir = None
    if model_args.teacher_model_name_or_path:
        teacher = load_teacher(
            model_args.teacher_model_name_or_path, trust_remote_code=model_args.trust_remote_code
        )
        label_permutation(student.config.id2label, teacher.config.id2label)
        teacher_objective = "given"
    else:
        teacher_dir = os.path.join(output_dir, "teacher")
        teacher_objective = model_args.teacher_objective
        say(
            f"No teacher given (--teacher_model_name_or_path): training a ViT teacher with objective {teacher_objective}."
        )
        teacher_args = pipeline.stage_args(
            args,
            output_dir=teacher_dir,
            objective=teacher_objective,
            num_train_epochs=model_args.teacher_num_train_epochs or 2 * args.num_train_epochs,
        )
        teacher_trainer = pipeline.train_stage(
            pipeline.teacher_model(model_args, info.class_names, args.seed),
            teacher_args,
            prepared,
            processor=processor,
            save_dir=teacher_dir,
        )
        teacher = teacher_trainer.model

    if pipeline.use_cached_teacher(model_args, data_args) and get_objective(args.objective).uses_teacher:
        say(
            "Caching the teacher's logits on train and holdout (computed once; the teacher is not run per step)."
        )
        pipeline.cache_teacher_signal(prepared, teacher, processor, args.per_device_eval_batch_size)

    # ---- one-hot baseline, then the distilled student
    say("Training the one-hot baseline student (objective ce).")
    baseline_dir = os.path.join(output_dir, "baseline")
    baseline_trainer = pipeline.train_stage(
        pipeline.student_model(model_args, info.class_names, seed=args.seed),
        pipeline.stage_args(args, output_dir=baseline_dir, objective="ce"),
        prepared,
        processor=processor,
        save_dir=baseline_dir,
    )
    say(f"Training the distilled student (objective {args.objective}).")
    student_trainer = pipeline.train_stage(
        student,
        args,
        prepared,
        teacher=teacher,
        processor=processor,
        resume_from_checkpoint=args.resume_from_checkpoint,
        save_dir=output_dir,
    )

    # ---- evaluation of all three on the balanced test split (gathered over processes)
    logits = {}
    for role, trainer in (("teacher", None), ("baseline", baseline_trainer), ("student", student_trainer)):
        if trainer is None:
            trainer = pipeline.evaluation_trainer(teacher, args, prepared, processor)
        logits[role], labels = pipeline.predict_logits(trainer, prepared["test"])
    settings = {
        "objective": args.objective,
        "objective_params": args.objective_params(),
        "teacher_objective": teacher_objective,
        "teacher_target_mode": args.teacher_logit_mode,
        "temperature": args.temperature,
        "seed": args.seed,
        "student_model": model_args.student_model_name_or_path
        or f"fresh ViT (hidden {model_args.student_hidden_size}, {model_args.student_num_layers} layers)",
        "teacher_model": model_args.teacher_model_name_or_path
        or "fresh ViT "
        f"(hidden {model_args.teacher_hidden_size}, {model_args.teacher_num_layers} layers, trained here)",
        "teacher_hub_id": model_args.teacher_model_name_or_path
        if pipeline.looks_like_hub_id(model_args.teacher_model_name_or_path)
        else None,
        "dataset_name": data_args.dataset_name,
        "world_size": state.num_processes,
    }
    metrics = pipeline.build_run_metrics(logits, labels, info, settings, seed=args.seed)
    card_kwargs = dict(model_id=args.hub_model_id, datasets=pipeline.hub_dataset_ids(data_args.dataset_name))
    if state.is_main_process:
        save_card_and_metrics(output_dir, metrics, **card_kwargs)
        processor.save_pretrained(output_dir)
        for folder in (teacher_dir, baseline_dir):
            if folder:
                processor.save_pretrained(folder)
        pipeline.write_run_config(output_dir, pipeline.resolved_config(model_args, data_args, args, run_args))
        say(pipeline.format_summary(metrics))
        say(
            f"\nOutputs in {output_dir}: the student, subgroup_metrics.json, per_class_accuracy.png, README.md."
        )
    if args.push_to_hub:
        student_trainer.subgroup_metrics, student_trainer.card_kwargs = metrics, card_kwargs
        contents = "student, README.md, subgroup_metrics.json, per_class_accuracy.png"
        with hub.finished_run_push(output_dir, contents):
            student_trainer.push_to_hub()
    state.wait_for_everyone()
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (ValueError, hub.HubPushError) as err:  # bad input or Hub problem: a clear message, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # a full disk mid-run: say so, and how to continue
        reason = pipeline.disk_write_failure(err)
        if reason is None:
            raise
        print(pipeline.DISK_FULL_MESSAGE.format(reason=reason), file=sys.stderr)
        sys.exit(1)
