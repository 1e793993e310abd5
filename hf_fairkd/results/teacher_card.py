"""The model card of a teacher trained alone (``recipes/train_teacher.py``): its per-class test accuracy and
calibration, for the reader choosing a teacher to distil from. A record with a ``teacher`` report and no
``student`` one (what the teacher recipe writes) gets this card from `save_card_and_metrics`.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from hf_fairkd.results.card_metadata import dataset_name_of, eval_results_of
from hf_fairkd.results.card_text import (
    FOLD_CLASSES_ABOVE,
    data_values,
    escape_markdown_cell,
    fmt,
    interval_values,
    names_list,
    num,
    safe_filename,
    shot_acc,
    text,
)
from hf_fairkd.results.hub import is_repo_id
from hf_fairkd.results.schema import PLOT_FILE, public_name

TEACHER_TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "templates" / "teacher_card_template.md"
TEACHER_TAGS = ["hf-fairkd", "knowledge-distillation-teacher", "long-tail", "image-classification"]


def objective_description(name: str | None) -> str | None:
    """The one-line ``description`` of a registered objective (None for a name the registry does not know)."""
    from hf_fairkd.objectives import OBJECTIVES

    objective = OBJECTIVES.get(name) if name else None
    return objective.description if objective is not None else None


def is_teacher_record(metrics: dict) -> bool:
    """Whether ``metrics`` describes a teacher alone (a ``teacher`` report and no ``student`` one)."""
    return isinstance(metrics, dict) and "student" not in metrics and isinstance(metrics.get("teacher"), dict)


def check_teacher_record(metrics: dict) -> None:
    if not is_teacher_record(metrics) or "per_class" not in metrics["teacher"]:
        raise ValueError(
            "a teacher card needs the teacher recipe's subgroup_metrics.json: a 'teacher' report with "
            "'per_class' rows and no 'student' report."
        )


def _teacher_body(metrics: dict, plot_filename: str) -> dict:
    teacher, settings = metrics["teacher"], metrics.get("settings") or {}
    calibration = metrics.get("teacher_calibration") or {}
    overall = [
        ["Accuracy", fmt(teacher.get("accuracy"))],
        ["Balanced accuracy (mean per-class recall)", fmt(teacher.get("balanced_accuracy"))],
        [
            f"Worst-class accuracy ({escape_markdown_cell(teacher.get('worst_class'))})",
            fmt(teacher.get("worst_class_accuracy")),
        ],
    ]
    overall += [
        [f"Accuracy, {shot}-shot classes", fmt(shot_acc(teacher, shot))]
        for shot in ("many", "medium", "few")
        if num(shot_acc(teacher, shot)) is not None
    ]
    class_errors = calibration.get("per_class_calibration_error") or [None] * len(teacher["per_class"])
    per_class = [
        [
            escape_markdown_cell(row["name"]),
            text(row.get("train_count")) or "n/a",
            text(row.get("support")) or "n/a",
            fmt(row.get("accuracy")),
            f"[{fmt(row.get('ci_low'))}, {fmt(row.get('ci_high'))}]"
            if num(row.get("ci_low")) is not None
            else "n/a",
            fmt(error),
        ]
        for row, error in zip(teacher["per_class"], class_errors)
    ]
    scores = ("ece", "log_loss", "brier", "worst_class_calibration_error")
    objective = settings.get("objective")
    return {
        "overall_rows": overall,
        "per_class_rows": per_class,
        "fold_per_class": len(per_class) > FOLD_CLASSES_ABOVE,
        "num_classes": len(per_class),
        **data_values(metrics),
        **interval_values(teacher),
        "calibration": {
            **{k: fmt(calibration.get(k)) for k in scores},
            "n_bins": text(calibration.get("n_bins")) or "n/a",
            "worst_class": escape_markdown_cell(calibration.get("worst_calibration_class")),
        }
        if calibration
        else None,
        "objective": text(objective),
        "objective_description": text(objective_description(objective), 500),
        "teacher_model": text(public_name(settings.get("teacher_model"))),
        "seed": text(settings.get("seed")),
        "class_names": names_list([row["name"] for row in teacher["per_class"]], 100),
        "plot": safe_filename(plot_filename),
    }


def build_teacher_card(
    metrics: dict,
    *,
    model_id: str | None = None,
    license: str = "apache-2.0",
    datasets: str | list[str] | None = None,
    plot_filename: str = PLOT_FILE,
) -> ModelCard:
    """The teacher's card: YAML metadata (model-index with its headline metrics) and the sections above."""
    check_teacher_record(metrics)
    dataset_name = dataset_name_of(metrics)
    card_data = ModelCardData(
        model_name=model_id or "hf-fairkd-teacher",
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        datasets=[datasets] if isinstance(datasets, str) else datasets,
        tags=list(TEACHER_TAGS),
        metrics=["accuracy"],
        eval_results=eval_results_of(metrics["teacher"], dataset_name),
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEACHER_TEMPLATE_PATH),
        title=escape_markdown_cell(model_id or "Teacher (hf-fairkd)"),
        repo_hint=model_id if model_id and is_repo_id(model_id) else "your-name/your-teacher",
        **_teacher_body(metrics, plot_filename),
    )
