"""The model-index entries a card's YAML header carries, shared by the student's and the teacher's cards."""

from __future__ import annotations

import re
from collections.abc import Sequence

from huggingface_hub import EvalResult

from hf_fairkd.results.card_block import round_sig
from hf_fairkd.results.card_text import SCALARS, SHOTS, num, shot_acc
from hf_fairkd.results.schema import public_name


def dataset_name_of(metrics: dict) -> str:
    """The dataset a card's model-index names: ``settings["dataset_name"]``, else the dataset's source; a local
    folder by its own name (:func:`hf_fairkd.results.schema.public_name`)."""
    settings, dataset = metrics.get("settings") or {}, metrics.get("dataset") or {}
    return str(public_name(settings.get("dataset_name") or dataset.get("source")) or "unknown")


def worst_group_metric_type(column: str) -> str:
    """The metric type (and .eval_results task id) of a column's worst-group accuracy, e.g.
    "worst_group_accuracy_site"; characters other than letters, digits, "-" and "_" become "_"."""
    return "worst_group_accuracy_" + re.sub(r"[^A-Za-z0-9_-]+", "_", str(column))


def eval_results_of(report: dict, dataset_name: str, group_columns: Sequence[str] = ()) -> list[EvalResult]:
    """model-index entries for a report's defined headline metrics (undefined ones are left out), and the
    worst-group accuracy of each of ``group_columns`` the report has ("Worst-group accuracy (site)")."""
    named = [(metric_type, pretty, report.get(key)) for key, metric_type, pretty in SCALARS]
    named += [(f"accuracy_{s}", f"Accuracy on {s}-shot classes", shot_acc(report, s)) for s in SHOTS]
    for column in group_columns:
        summary = (report.get("groups") or {}).get(column) or {}
        value = summary.get("worst_group_accuracy", summary.get("min"))
        named.append((worst_group_metric_type(column), f"Worst-group accuracy ({column})", value))
    task = {"task_type": "image-classification", "task_name": "Image Classification", "dataset_split": "test"}
    return [
        EvalResult(
            **task,
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            metric_type=metric_type,
            metric_name=pretty,
            metric_value=round_sig(float(value)),  # 4 significant digits, like the hf_fairkd block
        )
        for metric_type, pretty, value in named
        if num(value) is not None
    ]
