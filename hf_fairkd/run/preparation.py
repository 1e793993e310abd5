"""Data preparation for a recipe run: the long-tailed splits with their metadata, and the objectives' demands on
the data (a holdout, training rows in every class) checked before anything trains. Decoding the images (once,
which also checks them) and turning them into model inputs is `preprocessing`'s job."""

from __future__ import annotations

import torch

from ..config import DistillationArguments
from ..data import load_long_tailed, long_tail_info
from ..objectives import get_objective
from .arguments import DataArguments


def load_data(data_args: DataArguments, group_columns=None, max_group_values: int | None = None):
    """The long-tailed DatasetDict (train / holdout / test) and its metadata; ``group_columns`` (the run's
    ``--group_columns``) are kept in every split, the holdout and a carved test split stratified by their cells."""
    holdout = data_args.holdout_per_class
    if holdout is not None and (holdout >= 1 or holdout == 0):  # 0: no holdout (the CLI parses floats)
        if holdout != int(holdout):
            raise ValueError(
                f"--holdout_per_class {holdout} must be a whole number of rows, or a fraction below 1."
            )
        holdout = int(holdout)
    splits = load_long_tailed(
        data_args.dataset_name,
        imbalance_factor=data_args.imbalance_factor,
        profile=data_args.long_tail_profile,
        holdout_per_class=holdout,
        test_fraction=data_args.test_fraction,
        label_column=data_args.label_column_name,
        image_column=data_args.image_column_name,
        rare_classes=data_args.rare_classes,
        seed=data_args.data_seed_long_tail,
        **({"group_columns": list(group_columns)} if group_columns else {}),
        **({"max_group_values": max_group_values} if group_columns and max_group_values else {}),
        **({"min_cell_rows": data_args.min_cell_rows} if group_columns and data_args.min_cell_rows else {}),
    )
    info = long_tail_info(splits["train"])
    if info.image_column is None:
        raise ValueError(
            f"{data_args.dataset_name} has no image column; pass --image_column_name (columns: "
            f"{splits['train'].column_names})."
        )
    for split in ("train", "test"):
        if len(splits[split]) == 0:
            raise ValueError(
                f"The {split} split of {data_args.dataset_name} is empty; supply a dataset whose {split} split has "
                "rows (without a 'test' split, a balanced one is carved from train)."
            )
    return splits, info


def check_objectives(objectives: dict[str, str], args: DistillationArguments, info) -> None:
    """Refuse, before any training, what an objective cannot train on: an empty holdout for objectives that read
    it (teacher reliability, class-DRO), and classes without training rows for objectives that read the class
    prior. ``objectives`` maps the flag that chose each objective to its name."""
    counts = torch.tensor(info.train_counts, dtype=torch.float64)
    for flag, name in objectives.items():
        objective = get_objective(name)(args, counts)
        if objective.needs_holdout and not sum(info.holdout_counts):
            raise ValueError(
                f"{flag} {name} needs a holdout split (teacher reliability or class-DRO updates) but the holdout is "
                "empty: set --holdout_per_class to 1 or more (or a fraction below 1), or choose another objective."
            )
        objective.check_prior(list(info.class_names))
