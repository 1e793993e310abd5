"""What `DistillationTrainer` does with groups of the data (``group_columns``: site, camera ...).

`RunGroups` reads the group values of the train, holdout and eval datasets (a missing column is refused before
any training), codes their intersection keys with one `GroupIndex`, and, for an objective that uses groups
(`Objective.uses_groups`), attaches the groups with their training cell counts and adds the ``group_ids`` column
to those datasets. The default metrics report every group (`SubgroupMetrics` ``groups=``), read from the dataset
being evaluated.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch
from datasets import Value

from .groups import (
    GROUP_ID_COLUMN,
    GroupIndex,
    cell_counts,
    count_groupings,
    intersect,
    read_group_values,
    report_groupings,
)
from .trainer_data import dataset_labels

__all__ = [
    "RunGroups",
    "dataset_labels",
    "default_metrics",
    "group_arguments",
    "metrics_for",
    "prepare_groups",
]


def _named(train, holdout, eval_dataset) -> dict:
    """{split name: dataset} of the datasets given; an eval dict gives 'eval/<key>' for each of its datasets."""
    named = {"train": train, "holdout": holdout}
    if isinstance(eval_dataset, dict):
        named.update({f"eval/{key}": dataset for key, dataset in eval_dataset.items()})
    else:
        named["eval"] = eval_dataset
    return {name: dataset for name, dataset in named.items() if dataset is not None}


class RunGroups:
    """The group columns of a run: every split's group values and one `GroupIndex` over their intersection keys.

    ``values``: {split name: {column: group name per row}} (names: train, holdout, eval or eval/<key>).
    """

    def __init__(self, columns, max_group_values: int, train=None, holdout=None, eval_dataset=None):
        self.columns = list(columns)
        self.max_group_values = max_group_values
        datasets = _named(train, holdout, eval_dataset)
        self.values = {name: self.read(dataset, f"the {name} dataset") for name, dataset in datasets.items()}
        self.index = GroupIndex.from_keys(*(intersect(values) for values in self.values.values()))
        self._by_id = {id(dataset): self.values[name] for name, dataset in datasets.items()}

    def read(self, dataset, where: str) -> dict[str, list[str]]:
        """{column: group name per row} of ``dataset``; a missing column is refused, naming the ones it has."""
        if not hasattr(dataset, "column_names"):
            raise TypeError(
                f"group_columns={self.columns} are read from {where}, which is a {type(dataset).__name__}: pass a "
                "datasets.Dataset (it has named columns), or drop group_columns."
            )
        return read_group_values(dataset, self.columns, self.max_group_values, where=where)

    def codes(self, name: str) -> np.ndarray:
        """The group code of every row of split ``name``."""
        return self.index.codes(intersect(self.values[name]))

    def train_cell_counts(self, train, num_classes: int) -> torch.Tensor:
        """[num_classes, groups] training rows of every class x group cell."""
        labels = dataset_labels(train)
        if labels is None:
            raise ValueError(
                "The objective weights groups by their training counts, but the train dataset has no "
                f"'label'/'labels' column (it has {train.column_names}): add the label column."
            )
        return torch.as_tensor(
            cell_counts(labels, self.codes("train"), num_classes, len(self.index))
        ).double()

    def attach(self, objective, train, holdout, eval_dataset):
        """Give ``objective`` the groups and their training cell counts; return (train, holdout, eval) with the
        ``group_ids`` column added (the datasets' formats and transforms are kept)."""
        if train is None:
            raise ValueError(
                f"objective={objective.name!r} with {objective.group_setting()} needs the training count of every "
                "group: pass train_dataset=."
            )
        objective.attach_groups(self.index.names, self.train_cell_counts(train, objective.num_classes))
        holdout = None if holdout is None else self.with_group_ids(holdout, "holdout")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self.with_group_ids(d, f"eval/{k}") for k, d in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = self.with_group_ids(eval_dataset, "eval")
        return self.with_group_ids(train, "train"), holdout, eval_dataset

    def with_group_ids(self, dataset, name: str):
        """``dataset`` with the int64 ``group_ids`` column of split ``name`` (replacing one it had)."""
        if GROUP_ID_COLUMN in dataset.column_names:
            dataset = dataset.remove_columns(GROUP_ID_COLUMN)
        out = dataset.add_column(GROUP_ID_COLUMN, self.codes(name), feature=Value("int64"))
        self._by_id[id(out)] = self.values[name]
        return out

    def coded(self, dataset):
        """A dataset given to evaluate / predict with its ``group_ids`` column, when it has the group columns and
        only groups the index knows (so the eval loss has its group terms); else ``dataset`` as it is."""
        names = getattr(dataset, "column_names", None) or []
        if isinstance(dataset, dict) or GROUP_ID_COLUMN in names or not all(c in names for c in self.columns):
            return dataset
        values = self.values_of(dataset)
        try:
            codes = self.index.codes(intersect(values))
        except ValueError:  # a group the run never saw: evaluated without the group terms (warned once)
            return dataset
        out = dataset.add_column(GROUP_ID_COLUMN, codes, feature=Value("int64"))
        self._by_id[id(out)] = values
        return out

    def values_of(self, dataset) -> dict[str, list[str]] | None:
        """The group values of an evaluated dataset: read at start-up, else now; None without the columns (or
        for None or a dict of datasets)."""
        if dataset is None or isinstance(dataset, dict):
            return None
        if id(dataset) in self._by_id:
            return self._by_id[id(dataset)]
        names = getattr(dataset, "column_names", None) or []
        if not all(column in names for column in self.columns):
            return None
        return self.read(dataset, "the evaluated dataset")


def prepare_groups(objective, columns, max_group_values: int, train, holdout, eval_dataset):
    """(`RunGroups` or None without ``columns``, train, holdout, eval): for an objective that uses groups, the
    groups attached and the datasets with their ``group_ids`` column. Refuses an objective that uses groups
    without any (`Objective.check_groups`)."""
    groups = RunGroups(columns, max_group_values, train, holdout, eval_dataset) if columns else None
    if groups is not None and objective.uses_groups:
        train, holdout, eval_dataset = groups.attach(objective, train, holdout, eval_dataset)
    objective.check_groups()
    return groups, train, holdout, eval_dataset


@contextmanager
def metrics_for(trainer, dataset):
    """Run an evaluation of ``dataset`` (a dataset, a key of ``trainer.eval_dataset`` or None for it) with the
    trainer's default metrics built for that dataset's own group values. Nothing changes with metrics of the
    caller's, without group columns, or for a dict of datasets (the Trainer evaluates each through `evaluate`)."""
    dataset = trainer.eval_dataset if dataset is None else dataset
    if isinstance(dataset, str):
        dataset = trainer.eval_dataset[dataset]
    if trainer.groups is None or trainer.make_metrics is None or dataset is None or isinstance(dataset, dict):
        yield
        return
    saved = trainer.compute_metrics
    trainer.compute_metrics = trainer.make_metrics(trainer.groups.values_of(dataset))
    try:
        yield
    finally:
        trainer.compute_metrics = saved


def default_metrics(config, args, class_counts, groups: RunGroups | None, train_counts: dict | None):
    """``make(groups)``: the default `SubgroupMetrics` of a run for an eval set's group values (None: classes
    only), with the training count of every class, group and cell."""
    from .metrics.trainer_metrics import SubgroupMetrics

    make = partial(
        SubgroupMetrics,
        config,
        train_counts=class_counts.long().tolist(),
        per_class=args.per_class_eval_metrics,
        per_class_max_classes=args.per_class_eval_max_classes,
    )
    if groups is None:
        return lambda values=None: make()

    def make_for(values=None):
        if values is None:  # an eval set without the group columns: per-class metrics only
            return make()
        return make(groups=values, group_train_counts=train_counts)

    return make_for


def group_train_counts(config, groups: RunGroups | None, train) -> dict | None:
    """The training count of every group, class x group cell and pair of columns (`groups.count_groupings`), or
    None without groups or a labelled train dataset."""
    labels = None if train is None or groups is None else dataset_labels(train)
    if labels is None or "train" not in groups.values:
        return None
    class_names = [str(config.id2label[i]) for i in range(config.num_labels)]
    return count_groupings(report_groupings(groups.values["train"], [class_names[y] for y in labels]))


def group_arguments(objective, batch: dict, training: bool) -> dict:
    """The ``group_ids=`` keyword of `Objective.compute` for ``batch`` (none for an objective that uses no groups,
    so a compute(student_logits, labels, teacher_logits) keeps working)."""
    if not objective.uses_groups:
        return {}
    group_ids = batch.get(GROUP_ID_COLUMN)
    if group_ids is None and training:
        raise ValueError(
            f"objective={objective.name!r} with {objective.group_setting()} reads each row's group, but this "
            f"training batch has no {GROUP_ID_COLUMN!r} column (it has {sorted(batch)}). The trainer adds it to "
            "the train dataset; a custom set_transform or data collator must pass it through."
        )
    if group_ids is None:
        warnings.warn(
            f"Evaluation batches carry no {GROUP_ID_COLUMN!r} column (the trainer adds it to its own train, holdout "
            f"and eval datasets, not to one passed to evaluate/predict): the eval loss of "
            f"objective={objective.name!r} is computed without its group terms.",
            stacklevel=2,
        )
    return {"group_ids": group_ids}
