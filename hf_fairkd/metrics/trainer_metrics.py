"""`compute_metrics` for the Trainer: the subgroup report flattened to the scalars its logs accept."""

from __future__ import annotations

import warnings

import numpy as np

from .subgroup import flatten_report, subgroup_report

PER_CLASS_MODES = ("auto", "always", "never")


class SubgroupMetrics:
    """Per-class, balanced, worst-class and many/medium/few accuracy from an `EvalPrediction`.

    No bootstrap here: intervals belong in the final report, not in every evaluation during training.
    ``per_class`` decides whether the per-class scalars (``accuracy_class/<name>``) are returned: "auto"
    (default) only when there are at most ``per_class_max_classes`` classes, so 1,000 classes do not
    flood the logs; "always"; "never". The summary scalars are always returned.
    """

    def __init__(
        self,
        config,
        train_counts: list[int] | None = None,
        worst_k: int = 3,
        per_class: str = "auto",
        per_class_max_classes: int = 50,
    ):
        if per_class not in PER_CLASS_MODES:
            raise ValueError(f"per_class={per_class!r} is not one of {', '.join(PER_CLASS_MODES)}.")
        self.class_names = [str(config.id2label[i]) for i in range(config.num_labels)]
        self.train_counts = train_counts
        self.worst_k = worst_k
        self.per_class = per_class
        self.per_class_max_classes = int(per_class_max_classes)

    @property
    def logs_per_class(self) -> bool:
        if self.per_class == "auto":
            return len(self.class_names) <= self.per_class_max_classes
        return self.per_class == "always"

    def __call__(self, eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing classes show as NaN in the logs
            report = subgroup_report(
                np.asarray(logits).argmax(-1),
                np.asarray(eval_prediction.label_ids),
                class_names=self.class_names,
                train_counts=self.train_counts,
                worst_k=min(self.worst_k, len(self.class_names)),
                n_bootstrap=0,
            )
        return flatten_report(report, per_class=self.logs_per_class)
