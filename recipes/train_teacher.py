"""Train a teacher on the long-tailed data with ERM, logit adjustment ('balanced') or class-DRO ('dro').

    accelerate launch recipes/train_teacher.py --objective balanced --output_dir outputs/teacher_balanced
    python recipes/distill_vit.py --teacher_model_name_or_path outputs/teacher_balanced

The teacher is a normal transformers model (safetensors + config + image processor) that loads with
`AutoModelForImageClassification.from_pretrained`. Its per-class test report goes to
subgroup_metrics.json beside it (key `teacher`), with its calibration (`teacher_calibration`).
"""

from __future__ import annotations

import logging
import os
import sys

from hf_fairkd import hub, pipeline
from hf_fairkd.config import DistillationArguments
from hf_fairkd.objectives import TEACHER_OBJECTIVES

logger = logging.getLogger("train_teacher")
DEFAULT_OUTPUT_DIR = "outputs/teacher"


def main(argv: list[str] | None = None) -> dict:
    return run(*pipeline.parse_recipe_args(argv=argv, output_dir=DEFAULT_OUTPUT_DIR, objective="erm"))


def run(model_args, data_args, args: DistillationArguments, run_args) -> dict:
    from hf_fairkd.io_utils import atomic_write_json

    state = pipeline.start_run()
    if args.objective not in TEACHER_OBJECTIVES:
        raise ValueError(
            f"--objective {args.objective!r} is not a teacher objective; use one of {TEACHER_OBJECTIVES}."
        )
    pipeline.check_output_dir(
        args.output_dir, overwrite=run_args.overwrite_output_dir, resuming=bool(args.resume_from_checkpoint)
    )
    if args.push_to_hub:  # an unreachable Hub or a refused token fails now, not after the training
        repo_id = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
        hub.preflight(repo_id, args.hub_token, args.hub_private_repo, folder=args.output_dir)
    splits, info = pipeline.load_data(data_args)
    pipeline.check_objectives({"--objective": args.objective}, args, info)
    processor = pipeline.make_image_processor(model_args)
    prepared = pipeline.prepare_splits(splits, info, processor, augment=data_args.augment)
    logger.info(f"Training a ViT teacher with objective {args.objective} on {sum(info.train_counts)} rows.")
    trainer = pipeline.train_stage(
        pipeline.teacher_model(model_args, info.class_names, args.seed),
        args,
        prepared,
        processor=processor,
        resume_from_checkpoint=args.resume_from_checkpoint,
        save_dir=args.output_dir,
    )
    logits, labels = pipeline.predict_logits(trainer, prepared["test"])
    settings = {
        "objective": args.objective,
        "objective_params": args.objective_params(),
        "seed": args.seed,
        "dataset_name": data_args.dataset_name,
    }
    metrics = pipeline.build_run_metrics({"teacher": logits}, labels, info, settings, seed=args.seed)
    if state.is_main_process:
        atomic_write_json(f"{args.output_dir}/subgroup_metrics.json", metrics)
        pipeline.write_run_config(
            args.output_dir, pipeline.resolved_config(model_args, data_args, args, run_args)
        )
        report = metrics["teacher"]
        logger.info(
            f"Teacher ({args.objective}): accuracy {report['accuracy']:.3f}, balanced {report['balanced_accuracy']:.3f}, "
            f"worst class {report['worst_class_accuracy']:.3f} ({report['worst_class']}), ECE "
            f"{metrics['teacher_calibration']['ece']:.3f}. Saved to {args.output_dir}."
        )
    if args.push_to_hub:  # one commit: weights, processor, card, subgroup_metrics.json, run_config.json
        with hub.finished_run_push(args.output_dir, "teacher, README.md, subgroup_metrics.json"):
            trainer.push_to_hub()
    state.wait_for_everyone()
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (ValueError, hub.HubPushError) as err:  # bad input or Hub problem: a clear message, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
