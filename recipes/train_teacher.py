"""Train a teacher on the long-tailed data with ERM, logit adjustment ('balanced') or class-DRO ('dro').

    accelerate launch recipes/train_teacher.py --objective balanced --output_dir outputs/teacher_balanced
    python recipes/distill_vit.py --teacher_model_name_or_path outputs/teacher_balanced

The teacher is a normal transformers model (safetensors + config + image processor) that loads with
`AutoModelForImageClassification.from_pretrained`. Its per-class test report goes to
subgroup_metrics.json beside it (key `teacher`), with its calibration (`teacher_calibration`), and into its
card (README.md: per-class accuracy and calibration) and per_class_accuracy.png.
"""

from __future__ import annotations

import logging

from hf_fairkd.config import DistillationArguments
from hf_fairkd.data.sources import hub_dataset_ids
from hf_fairkd.objectives import teacher_objectives
from hf_fairkd.results import finished_run_push, run_settings, save_card_and_metrics
from hf_fairkd.run import arguments, checks, models, preparation, preprocessing, stages

logger = logging.getLogger("train_teacher")
DEFAULT_OUTPUT_DIR = "outputs/teacher"


def main(argv: list[str] | None = None) -> dict:
    return run(*arguments.parse_recipe_args(argv=argv, output_dir=DEFAULT_OUTPUT_DIR, objective="erm"))


def run(model_args, data_args, args: DistillationArguments, run_args) -> dict:
    state = checks.start_run()
    if args.objective not in teacher_objectives():
        raise ValueError(
            f"--objective {args.objective!r} is not a teacher objective; use one of {', '.join(teacher_objectives())}."
        )
    if model_args.teacher_image_size is not None:
        raise ValueError(
            f"--teacher_image_size {model_args.teacher_image_size}: this recipe trains the teacher at --image_size; "
            f"pass --image_size {model_args.teacher_image_size} instead."
        )
    checks.check_before_work(args, run_args)
    splits, info = preparation.load_data(data_args, args.group_columns, args.max_group_values)
    preparation.check_objectives({"--objective": args.objective}, args, info)
    processor = preprocessing.make_image_processor(model_args)
    prepared = preprocessing.prepare_splits(splits, info, processor, augment=data_args.augment)
    teacher = models.teacher_model(model_args, info.class_names, args.seed)  # a bad config fails before work
    kind = models.model_description(model_args, "teacher")
    logger.info(
        f"Training a teacher, {kind}, with objective {args.objective} on {sum(info.train_counts)} rows."
    )
    trainer = stages.train_stage(
        teacher,
        args,
        prepared,
        processor=processor,
        resume_from_checkpoint=args.resume_from_checkpoint,
        save_dir=args.output_dir,
    )
    settings = run_settings(
        args,
        dataset_name=data_args.dataset_name,
        teacher_model=models.model_description(model_args, "teacher"),
    )
    metrics = stages.record_on_test_split({"teacher": trainer}, prepared, info, settings)
    card_kwargs = dict(model_id=args.hub_model_id, datasets=hub_dataset_ids(data_args.dataset_name))
    if state.is_main_process:  # the teacher's card, metrics file and plot
        save_card_and_metrics(args.output_dir, metrics, **card_kwargs)
        arguments.write_run_config(args.output_dir, model_args, data_args, args, run_args)
        report = metrics["teacher"]
        logger.info(
            f"Teacher ({args.objective}): accuracy {report['accuracy']:.3f}, balanced {report['balanced_accuracy']:.3f}, "
            f"worst class {report['worst_class_accuracy']:.3f} ({report['worst_class']}), ECE "
            f"{metrics['teacher_calibration']['ece']:.3f}. Saved to {args.output_dir}."
        )
    if args.push_to_hub:  # one commit: weights, processor, card, subgroup_metrics.json, plot, run_config.json
        with finished_run_push(
            args.output_dir, "teacher, README.md, subgroup_metrics.json, per_class_accuracy.png"
        ):
            trainer.push_to_hub(metrics=metrics, card_kwargs=card_kwargs)
    state.wait_for_everyone()
    return metrics


if __name__ == "__main__":
    checks.run_command_line(main)
