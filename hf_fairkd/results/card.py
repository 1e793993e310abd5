"""The model card (Mitchell et al. sections) from a run record, written with the record and its plot.

All text that comes from users or data (class names, group values, dataset and model names) reaches the
Markdown body only through :func:`escape_markdown_cell`; the YAML header is written by the YAML dumper
of huggingface_hub, so names are stored there verbatim and parse back unchanged. Reading a record back
(from a folder or the Hub) is :func:`hf_fairkd.results.hub.load_subgroup_metrics`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData

from hf_fairkd.io_utils import atomic_write_json, atomic_write_text
from hf_fairkd.results.card_block import CARD_BLOCK_KEY, card_block, check_card_record
from hf_fairkd.results.card_groups import groups_body
from hf_fairkd.results.card_metadata import dataset_name_of, eval_results_of
from hf_fairkd.results.card_text import card_body, escape_markdown_cell
from hf_fairkd.results.hub import is_repo_id
from hf_fairkd.results.plots import plot_per_class_accuracy
from hf_fairkd.results.schema import CARD_FILE, EVAL_RESULTS_FILE, METRICS_FILE, PLOT_FILE, group_columns_of
from hf_fairkd.results.teacher_card import build_teacher_card, check_teacher_record, is_teacher_record

__all__ = [
    "TEMPLATE_PATH",
    "build_model_card",
    "escape_markdown_cell",
    "save_card_and_metrics",
    "write_eval_results",
]

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "templates" / "model_card_template.md"
TAGS = ["knowledge-distillation", "hf-fairkd", "long-tail", "image-classification"]


def build_model_card(
    metrics: dict,
    *,
    model_id: str | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
    datasets: str | list[str] | None = None,
    plot_filename: str = PLOT_FILE,
    extra_text: str | None = None,
) -> ModelCard:
    """Render the hf_fairkd model card (YAML metadata + Mitchell et al. sections) from subgroup metrics.

    ``base_model`` defaults to ``settings["teacher_hub_id"]``. ``extra_text`` is shown as plain text
    (escaped, paragraphs kept).
    """
    check_card_record(metrics)
    settings = metrics.get("settings") or {}
    dataset_name = dataset_name_of(metrics)
    model_name = model_id or "hf-fairkd-distilled-student"
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        base_model=base_model or settings.get("teacher_hub_id") or None,
        datasets=[datasets] if isinstance(datasets, str) else datasets,
        tags=list(TAGS),
        metrics=["accuracy"],
        eval_results=eval_results_of(metrics["student"], dataset_name, group_columns_of(metrics)),
        **{CARD_BLOCK_KEY: card_block(metrics)},
    )
    paragraphs = [p for p in re.split(r"\n\s*\n", extra_text or "") if p.strip()]
    repo_hint = model_id if model_id and is_repo_id(model_id) else "your-name/your-model"
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        title=escape_markdown_cell(model_id or "Distilled student (hf-fairkd)"),
        extra_text="\n\n".join(escape_markdown_cell(p, 5000) for p in paragraphs),
        repo_hint=repo_hint,
        **card_body(metrics, plot_filename),
        **groups_body(metrics),
    )


def write_eval_results(folder: str | os.PathLike, metrics: dict) -> Path | None:
    """Write the Hub's ``.eval_results/hf_fairkd.yaml`` (huggingface_hub ``EvalResultEntry`` format).

    One entry per defined metric of the student (of the teacher, for a teacher's record), with the metric name
    as ``task_id``, including a worst-group accuracy per group column when the record has groups. Returns None (and writes nothing) when ``settings["dataset_name"]`` is not a Hub dataset
    id, since entries must name one.
    """
    from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

    role = "teacher" if is_teacher_record(metrics) else "student"
    if role == "teacher":
        check_teacher_record(metrics)
    else:
        check_card_record(metrics)
    dataset_id = str((metrics.get("settings") or {}).get("dataset_name") or "")
    if not is_repo_id(dataset_id):
        return None
    entries = [
        EvalResultEntry(
            dataset_id=dataset_id,
            task_id=r.metric_type,
            value=r.metric_value,
            notes=f"hf-fairkd: {r.metric_name} of the {'teacher' if role == 'teacher' else 'distilled student'} "
            "on the test split",
        )
        for r in eval_results_of(
            metrics[role], dataset_id, group_columns_of(metrics) if role == "student" else ()
        )
    ]
    path = Path(folder) / EVAL_RESULTS_FILE
    atomic_write_text(
        path, yaml.safe_dump(eval_result_entries_to_yaml(entries), sort_keys=False, allow_unicode=True)
    )
    return path


def save_card_and_metrics(
    output_dir: str | os.PathLike, metrics: dict, *, eval_results: bool = True, **card_kwargs
) -> Path:
    """Write subgroup_metrics.json, the plot, README.md (and .eval_results/) into ``output_dir`` atomically.

    ``card_kwargs`` go to :func:`build_model_card` (to `build_teacher_card` for a teacher's record, which has
    a ``teacher`` report and no ``student`` one). The card is built first, so a bad input leaves the folder
    untouched. Returns the README path.
    """
    if is_teacher_record(metrics):
        card = build_teacher_card(metrics, **card_kwargs)
    else:
        card = build_model_card(metrics, **card_kwargs)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / METRICS_FILE, metrics)
    plot_per_class_accuracy(metrics, out / card_kwargs.get("plot_filename", PLOT_FILE))
    if eval_results:
        write_eval_results(out, metrics)
    text = str(card)
    return atomic_write_text(out / CARD_FILE, text if text.endswith("\n") else text + "\n")
