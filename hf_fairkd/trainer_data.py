"""What `DistillationTrainer` reads from its training data besides the rows: the labels and the class counts."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["class_counts_from_dataset", "dataset_labels"]


def dataset_labels(dataset) -> np.ndarray | None:
    """The 'label' (or 'labels') column of a `datasets.Dataset`, without its transform; None if it has none."""
    column = next((c for c in ("label", "labels") if c in (dataset.column_names or [])), None)
    if column is None:
        return None
    return np.asarray(dataset.with_format(None)[column], dtype=np.int64)


def class_counts_from_dataset(dataset, num_classes: int) -> torch.Tensor:
    """Training count of each class: the long-tail metadata when present, else a count of the label column."""
    try:
        from .data import long_tail_info

        counts = long_tail_info(dataset).train_counts
        if len(counts) == num_classes:
            return torch.tensor(counts, dtype=torch.float64)
    except (ImportError, ValueError, KeyError, AttributeError):
        pass
    labels = dataset_labels(dataset)
    if labels is None:
        raise ValueError(
            "Could not find the class counts: the training dataset has no 'label'/'labels' column and no long-tail "
            "metadata. Pass `class_counts=` (the training count of each class) to DistillationTrainer."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Training labels span [{labels.min()}, {labels.max()}] but the student has {num_classes} classes; "
            "set the student's num_labels / id2label to the dataset's classes."
        )
    return torch.tensor(np.bincount(labels, minlength=num_classes), dtype=torch.float64)
