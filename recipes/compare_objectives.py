"""Which objective for my data? Train one teacher, one one-hot baseline per seed and a student of every objective
setting per seed; report them side by side with the significance rule; optionally publish the chosen student.

    python recipes/compare_objectives.py --objectives ce kd robust_kd --seeds 0 1 2
    accelerate launch recipes/compare_objectives.py recipes/configs/compare_digits.yaml \
        --settings robust_kd:dro_tradeoff=0.25,0.5 --choose best_worst_class
    python recipes/compare_objectives.py --dataset_name digits_spurious --group_columns colour \
        --objectives ce kd robust_kd --settings robust_kd:dro_groups=group,class_x_group --choose best_worst_group \
        --push_to_hub true --hub_model_id you/digits-student

Every data, model, group and teacher flag of recipes/distill_vit.py applies (the same dataclasses); besides them
`hf_fairkd.compare.CompareArguments`: --objectives, --settings OBJECTIVE:NAME=V1,V2 (a sweep; several settings:
their product), --seeds, --choose, --max_runs, --runs_dir, --rerun_other_code, --view_cache. OUTPUT_DIR receives
plan.json, runs/ (one result file per finished run), models/ (teacher, baselines, students), comparison.json,
comparison.md and comparison_pareto.png. Start the same command several times (one per core or GPU) and the
workers share the plan; a rerun skips finished runs. See docs/COMPARING_OBJECTIVES.md.
"""

from __future__ import annotations

from hf_fairkd.compare import CompareArguments, compare
from hf_fairkd.run import arguments, checks

DEFAULT_OUTPUT_DIR = "outputs/compare_objectives"
SINGLE_RUN_FLAGS = {"objective": "--objectives", "seed": "--seeds"}  # distill_vit's, meaningless here


def parse(argv: list[str] | None = None):
    """The four dataclasses of distill_vit plus `CompareArguments`, from ``[config.yaml] [--overrides]``."""
    import sys

    from transformers import HfArgumentParser

    types = (
        arguments.ModelArguments,
        arguments.DataArguments,
        arguments.DistillationArguments,
        arguments.RunArguments,
        CompareArguments,
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = argv[1:] if argv and argv[0].endswith(arguments.ARGUMENT_FILE_SUFFIXES) else argv
    given = arguments.given_arguments(HfArgumentParser(types), flags)
    if wrong := [f"--{k} (use {v})" for k, v in SINGLE_RUN_FLAGS.items() if k in given]:
        raise ValueError(f"compare_objectives compares several runs: {', '.join(wrong)}.")
    return arguments.parse_recipe_args(types, argv=argv, output_dir=DEFAULT_OUTPUT_DIR)


def main(argv: list[str] | None = None) -> dict:
    return compare(*parse(argv))


if __name__ == "__main__":
    checks.run_command_line(main)
