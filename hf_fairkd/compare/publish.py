"""Publishing the chosen student with its comparison, in ONE Hub commit.

The chosen setting's first-seed model folder gets its card rewritten with a short section on how it was chosen
(`report.card_section`), and comparison.md, comparison.json and the Pareto plot beside it; then the folder is
pushed as the recipes push a finished run (`hf_fairkd.results.push_output_dir` inside `finished_run_push`:
one commit; a failure says the local outputs are complete and how to push them later)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .report import JSON_FILE, MD_FILE, PLOT_FILE, Comparison, card_section


def publication_folder(comparison: Comparison, output_dir) -> Path:
    """The chosen model's folder; a ValueError when nothing can be published yet."""
    run = comparison.chosen_run()
    if run is None:
        s = comparison.choice.summary
        what = (
            "no setting could be chosen"
            if s is None
            else f"{s.setting.label} seed {s.planned_seeds[0]} has not finished"
        )
        raise ValueError(f"Nothing to publish: {what}.")
    return Path(output_dir) / run["model_dir"]


def publish_choice(comparison: Comparison, output_dir, args, data_args):
    """Write the chosen model's card (with the comparison section) and the comparison files into its folder, and
    push that folder in one commit to ``args.hub_model_id`` (default: the output folder's name). Returns the
    commit info."""
    from ..data.sources import hub_dataset_ids
    from ..results import finished_run_push, push_output_dir, save_card_and_metrics
    from ..results.hub import output_repo_id

    folder = publication_folder(comparison, output_dir)
    record = comparison.chosen_run()["record"]
    save_card_and_metrics(
        folder,
        record,
        model_id=args.hub_model_id,
        datasets=hub_dataset_ids(data_args.dataset_name),
        extra_text=card_section(comparison),
    )
    for name in (MD_FILE, JSON_FILE, PLOT_FILE):
        source = Path(output_dir) / name
        if source.exists():
            shutil.copyfile(source, folder / name)
    s = comparison.choice.summary
    repo_id = output_repo_id(args.hub_model_id, output_dir)
    contents = f"the chosen student ({s.setting.label}), README.md, subgroup_metrics.json, comparison.md"
    with finished_run_push(folder, contents):
        return push_output_dir(
            folder,
            repo_id,
            token=args.hub_token,
            revision=args.hub_revision,
            private=args.hub_private_repo,
            commit_message=f"Upload the student chosen by hf-fairkd compare_objectives ({s.setting.label}, "
            f"--choose {comparison.rule}) with its comparison",
        )
