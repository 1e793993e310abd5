"""The model card of a teacher trained alone (``recipes/train_teacher.py``): its per-class test accuracy and
calibration, for the reader choosing a teacher to distil from. A record with a ``teacher`` report and no
``student`` one (what the teacher recipe writes) gets this card from `save_card_and_metrics`.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from hf_fairkd.results.card_metadata import eval_results_of
from hf_fairkd.results.card_text import (
    FOLD_CLASSES_ABOVE,
    _names_list,
    _profile_sentences,
    _safe_filename,
    _uncertainty,
    escape_markdown_cell,
    fmt,
    num,
    shot_acc,
)
from hf_fairkd.results.hub import is_repo_id
from hf_fairkd.results.schema import PLOT_FILE

TEACHER_TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "templates" / "teacher_card_template.md"
TEACHER_TAGS = ["hf-fairkd", "knowledge-distillation-teacher", "long-tail", "image-classification"]
TEACHER_OBJECTIVES = {
    "erm": "ERM: plain cross-entropy on the long-tailed data",
    "balanced": "logit adjustment ('balanced'): cross-entropy with the log class priors added to the logits "
    "in training, so that the rare classes are not crowded out",
    "dro": "class-DRO ('dro'): cross-entropy reweighted towards the classes with the highest loss",
}


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
    confidence = f"{100 * float(teacher.get('confidence_level') or 0.95):g}%"
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
            escape_markdown_cell(row.get("train_count", "n/a")),
            escape_markdown_cell(row.get("support", "n/a")),
            fmt(row.get("accuracy")),
            f"[{fmt(row.get('ci_low'))}, {fmt(row.get('ci_high'))}]"
            if num(row.get("ci_low")) is not None
            else "n/a",
            fmt(error),
        ]
        for row, error in zip(teacher["per_class"], class_errors)
    ]
    if calibration:
        calibration_sentence = (
            f"Expected calibration error {fmt(calibration.get('ece'))} ({calibration.get('n_bins', 'n/a')} bins), "
            f"log-loss {fmt(calibration.get('log_loss'))}, Brier score {fmt(calibration.get('brier'))}; the "
            f"least calibrated class is {escape_markdown_cell(calibration.get('worst_calibration_class'))} "
            f"({fmt(calibration.get('worst_class_calibration_error'))}). Soft targets from a calibrated teacher "
            "carry more than its top-1 answer."
        )
    else:
        calibration_sentence = "No calibration was recorded."
    objective = settings.get("objective")
    profile = _profile_sentences(metrics)
    return {
        "overall_rows": overall,
        "per_class_rows": per_class,
        "fold_per_class": len(per_class) > FOLD_CLASSES_ABOVE,
        "num_classes": len(per_class),
        "confidence": confidence,
        "uncertainty": "The " + _uncertainty(teacher, confidence),
        "calibration_sentence": calibration_sentence,
        "objective_sentence": escape_markdown_cell(
            TEACHER_OBJECTIVES.get(objective, objective or "not recorded")
        ),
        "teacher_model": escape_markdown_cell(settings.get("teacher_model") or "not recorded"),
        "seed": escape_markdown_cell(settings.get("seed", "not recorded")),
        "data_intro": profile["data_intro"],
        "data_sentence": profile["data_sentence"],
        "class_names": _names_list([row["name"] for row in teacher["per_class"]], 100),
        "plot": _safe_filename(plot_filename),
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
    settings = metrics.get("settings") or {}
    dataset_name = str(
        settings.get("dataset_name") or (metrics.get("dataset") or {}).get("source") or "unknown"
    )
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
