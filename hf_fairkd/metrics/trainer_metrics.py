"""`compute_metrics` for the Trainer: the subgroup report flattened to the scalars its logs accept."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from .groups import check_group_inputs, group_names
from .subgroup import flatten_report, subgroup_report

PER_CLASS_MODES = ("auto", "always", "never")


class SubgroupMetrics:
    """Per-class, balanced, worst-class, many/medium/few and per-group accuracy from an `EvalPrediction`.

    No intervals here: they belong in the final report, not in every evaluation during training.
    ``per_class`` decides whether the per-class scalars (``accuracy_class/<name>``) and the per-group ones
    (``accuracy_group/<key>/<group>``) are returned: "auto" (default) only when there are at most
    ``per_class_max_classes`` classes (groups: in total over all report keys), so 1,000 classes do not
    flood the logs; "always"; "never". The summary scalars, ``worst_group_accuracy/<key>`` included, are
    always returned.

    ``groups``: {column: group value of every row of the ONE eval dataset, in dataset order} (the Trainer
    predicts in that order); ``group_train_counts``: {report key: {group: training count}} (the format of
    `hf_fairkd.groups.count_groupings`).
    """

    def __init__(
        self,
        config,
        train_counts: list[int] | None = None,
        worst_k: int = 3,
        per_class: str = "auto",
        per_class_max_classes: int = 50,
        groups: Mapping[str, Sequence] | None = None,
        group_train_counts: Mapping[str, Mapping[str, int]] | None = None,
    ):
        if per_class not in PER_CLASS_MODES:
            raise ValueError(f"per_class={per_class!r} is not one of {', '.join(PER_CLASS_MODES)}.")
        self.class_names = [str(config.id2label[i]) for i in range(config.num_labels)]
        self.train_counts = train_counts
        self.worst_k = worst_k
        self.per_class = per_class
        self.per_class_max_classes = int(per_class_max_classes)
        # Group names once, not at every evaluation.
        self.groups = {str(c): group_names(values) for c, values in (groups or {}).items()}
        lengths = {column: len(values) for column, values in self.groups.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"group columns have different lengths {lengths}; give every column one value per row of the "
                "eval dataset."
            )
        self.num_rows = next(iter(lengths.values()), None)
        self.group_train_counts = check_group_inputs(self.groups, group_train_counts, self.num_rows or 0)

    @property
    def logs_per_class(self) -> bool:
        if self.per_class == "auto":
            return len(self.class_names) <= self.per_class_max_classes
        return self.per_class == "always"

    def logs_per_group(self, report: Mapping) -> bool:
        """The per-class rule applied to the number of groups over all report keys (missing ones included)."""
        if self.per_class == "auto":
            total = sum(len(summary["by_group"]) for summary in report["groups"].values())
            return total <= self.per_class_max_classes
        return self.per_class == "always"

    def __call__(self, eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        labels = np.asarray(eval_prediction.label_ids)
        if self.groups and len(labels) != self.num_rows:
            raise ValueError(
                f"compute_metrics got {len(labels)} predictions but the eval dataset's group columns have "
                f"{self.num_rows} rows: groups are given for one eval dataset, in its row order. Build "
                "SubgroupMetrics with the group values of the dataset you evaluate (one SubgroupMetrics per eval "
                "dataset), and keep every eval row (dataloader_drop_last=False)."
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing classes show as NaN in the logs
            report = subgroup_report(
                np.asarray(logits).argmax(-1),
                labels,
                class_names=self.class_names,
                train_counts=self.train_counts,
                groups=self.groups or None,
                group_train_counts=self.group_train_counts or None,
                worst_k=min(self.worst_k, len(self.class_names)),
                intervals=False,
            )
        return flatten_report(report, per_class=self.logs_per_class, per_group=self.logs_per_group(report))
