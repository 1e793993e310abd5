"""Model cards from subgroup metrics (Mitchell et al. sections), and reading the metrics back.

All text that comes from users or data (class names, group values, dataset and model names) reaches the
Markdown body only through :func:`escape_markdown_cell`; the YAML header is written by the YAML dumper
of huggingface_hub, so names are stored there verbatim and parse back unchanged.
"""

from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hf_fairkd.hub import load_subgroup_metrics  # re-exported: reading results back lives with Hub I/O
from hf_fairkd.io_utils import atomic_write_json, atomic_write_text, nan_to_none
from hf_fairkd.plots import plot_per_class_accuracy

__all__ = [
    "CARD_BLOCK_KEY",
    "FORMAT_VERSION",
    "METRICS_FILENAME",
    "TEMPLATE_PATH",
    "build_model_card",
    "card_block",
    "escape_markdown_cell",
    "expand_card_block",
    "load_subgroup_metrics",
    "save_card_and_metrics",
    "write_eval_results",
]

FORMAT_VERSION = 1
CARD_BLOCK_KEY = "hf_fairkd"
METRICS_FILENAME = "subgroup_metrics.json"
CARD_FILENAME = "README.md"
EVAL_RESULTS_PATH = ".eval_results/hf_fairkd.yaml"
TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "model_card_template.md"
TAGS = ["knowledge-distillation", "hf-fairkd", "long-tail", "image-classification"]
_MODELS = ("teacher", "baseline", "student")
_SHOTS = ("many", "medium", "few")
_BLOCK_SCALARS = ("num_examples", "accuracy", "balanced_accuracy", "worst_class_accuracy", "worst_class")
_DELTA_KEYS = ("delta", "ci_low", "ci_high")
# (report key, model-index metric type, pretty name)
_SCALARS = (
    ("accuracy", "accuracy", "Accuracy"),
    ("balanced_accuracy", "balanced_accuracy", "Balanced accuracy (mean per-class recall)"),
    ("worst_class_accuracy", "worst_class_accuracy", "Worst-class accuracy"),
)
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def escape_markdown_cell(text: Any, max_len: int = 200) -> str:
    """Make ``text`` safe inside a Markdown table cell or sentence.

    Whitespace runs (newlines included) become one space, the text is cut to ``max_len`` characters
    with an ellipsis, Markdown specials ``| \\ ` * _ [ ] # ~`` are backslash-escaped and HTML
    (``< > & " '``) is entity-escaped, so no tag or table break can be injected.
    """
    s = re.sub(r"\s+", " ", "" if text is None else str(text)).strip()
    s = "".join(ch for ch in s if ch.isprintable())  # drop control characters and invisible breaks
    if len(s) > max_len:
        s = s[: max(max_len - 1, 0)].rstrip() + "…"
    return html.escape(_MD_SPECIAL.sub(r"\\\1", s), quote=True)


def _num(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def fmt(value: Any, signed: bool = False) -> str:
    """Accuracy-like number with 3 decimals ("n/a" when undefined); ``signed`` adds + for deltas."""
    x = _num(value)
    return "n/a" if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")


def _names_list(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(escape_markdown_cell(n, 60) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check(metrics: dict) -> None:
    if not isinstance(metrics, dict) or not isinstance(metrics.get("student"), dict):
        raise ValueError(
            "metrics must be the subgroup_metrics.json dict with at least a 'student' subgroup report; "
            "build it with hf_fairkd.metrics.subgroup_report (see the spec's subgroup_metrics.json format)."
        )
    if "per_class" not in metrics["student"]:
        raise ValueError(
            "metrics['student'] has no 'per_class' list; pass a report from hf_fairkd.metrics.subgroup_report."
        )


def _class_names(metrics: dict) -> list[str]:
    return list(metrics.get("class_names") or [row["name"] for row in metrics["student"]["per_class"]])


def _train_counts(metrics: dict) -> list[int | None]:
    return list(
        metrics.get("train_counts") or [row.get("train_count") for row in metrics["student"]["per_class"]]
    )


def card_block(metrics: dict) -> dict:
    """Compact, machine-readable results stored in the card's YAML under ``hf_fairkd`` (NaN -> None)."""
    _check(metrics)
    block: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "class_names": _class_names(metrics),
        "train_counts": _train_counts(metrics),
        "shot_thresholds": metrics["student"].get("shot_thresholds"),
    }
    for key in _MODELS:
        report = metrics.get(key)
        if not report:
            continue
        block[key] = {k: report.get(k) for k in _BLOCK_SCALARS}
        block[key]["shot_accuracy"] = {
            s: g.get("accuracy") for s, g in (report.get("shot_groups") or {}).items()
        }
        block[key]["per_class_accuracy"] = [row["accuracy"] for row in report["per_class"]]
        block[key]["per_class_support"] = [row["support"] for row in report["per_class"]]
    deltas = metrics.get("student_minus_baseline")
    if deltas:
        block["student_minus_baseline"] = {k: [row[k] for row in deltas] for k in _DELTA_KEYS}
    dataset = metrics.get("dataset") or {}
    keep = ("source", "profile", "imbalance_factor", "seed", "rare_classes", "holdout_per_class")
    block["dataset"] = {k: dataset[k] for k in keep if k in dataset}
    block["settings"] = metrics.get("settings") or {}
    return nan_to_none(block)


def expand_card_block(block: dict) -> dict:
    """Rebuild the subgroup_metrics.json layout (the fields the card stores) from a card block."""
    names, counts = block["class_names"], block.get("train_counts") or [None] * len(block["class_names"])
    out: dict[str, Any] = {
        k: block.get(k) for k in ("format_version", "class_names", "train_counts", "dataset", "settings")
    }
    out["recovered_from"] = "model_card"
    for key in _MODELS:
        if key not in block:
            continue
        small = block[key]
        report = {k: small.get(k) for k in _BLOCK_SCALARS}
        report["shot_thresholds"] = block.get("shot_thresholds")
        report["shot_groups"] = {
            shot: {"accuracy": acc} for shot, acc in (small.get("shot_accuracy") or {}).items()
        }
        report["per_class"] = [
            {"class_id": i, "name": names[i], "train_count": counts[i], "support": s, "accuracy": a}
            for i, (a, s) in enumerate(zip(small["per_class_accuracy"], small["per_class_support"]))
        ]
        out[key] = report
    if "student_minus_baseline" in block:
        d = block["student_minus_baseline"]
        out["student_minus_baseline"] = [
            {"class_id": i, "name": names[i], **{k: d[k][i] for k in _DELTA_KEYS}} for i in range(len(names))
        ]
    return out


def _eval_results(metrics: dict, dataset_name: str) -> list[EvalResult]:
    """model-index entries for the student's defined headline metrics (undefined ones are left out)."""
    student = metrics["student"]
    named = [(metric_type, pretty, student.get(key)) for key, metric_type, pretty in _SCALARS]
    named += [(f"accuracy_{s}", f"Accuracy on {s}-shot classes", _shot_acc(student, s)) for s in _SHOTS]
    task = {"task_type": "image-classification", "task_name": "Image Classification", "dataset_split": "test"}
    return [
        EvalResult(
            **task,
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            metric_type=metric_type,
            metric_name=pretty,
            metric_value=float(value),
        )
        for metric_type, pretty, value in named
        if _num(value) is not None
    ]


def _cells(metrics: dict, get) -> list[str]:
    """One formatted cell per model (teacher, baseline, student); ``get(report)`` picks the value."""
    return [fmt(get(metrics[key])) if metrics.get(key) else "n/a" for key in _MODELS]


def _shot_acc(report: dict, shot: str) -> Any:
    return (report.get("shot_groups") or {}).get(shot, {}).get("accuracy")


def _group_acc(report: dict, column: str, value: str) -> Any:
    return ((report.get("groups") or {}).get(column, {}).get("by_group", {}).get(value) or {}).get("accuracy")


def _per_class(metrics: dict) -> tuple[list[list[str]], dict[str, list[str]]]:
    """Per-class table rows and the classes where distillation helped / hurt / made no clear change."""
    names, counts = _class_names(metrics), _train_counts(metrics)
    deltas = {row["class_id"]: row for row in metrics.get("student_minus_baseline") or []}
    rows, verdict = [], {"helped": [], "hurt": [], "unclear": []}
    for i, row in enumerate(metrics["student"]["per_class"]):
        d = deltas.get(row["class_id"], {})
        delta, lo, hi = _num(d.get("delta")), _num(d.get("ci_low")), _num(d.get("ci_high"))
        if delta is not None:
            # Helped/hurt only when the whole paired-bootstrap interval is on one side of zero.
            key = (
                "helped" if lo is not None and lo > 0 else "hurt" if hi is not None and hi < 0 else "unclear"
            )
            verdict[key].append(names[i])
        delta_text = "n/a" if delta is None else f"{fmt(delta, True)} [{fmt(lo, True)}, {fmt(hi, True)}]"
        accs = _cells(metrics, lambda r, i=i: r["per_class"][i]["accuracy"])
        count = "n/a" if counts[i] is None else str(counts[i])
        rows.append([escape_markdown_cell(names[i]), count, str(row["support"]), *accs, delta_text])
    return rows, verdict


def _body(metrics: dict, plot_filename: str) -> dict[str, Any]:
    """Data-dependent parts of the card body (escaped cells and sentences) for the template."""
    student, baseline = metrics["student"], metrics.get("baseline")
    settings, dataset = metrics.get("settings") or {}, metrics.get("dataset") or {}

    def e(value: Any, default: str = "not recorded") -> str:
        return default if value in (None, "", {}, []) else escape_markdown_cell(value)

    overall = [[pretty, *_cells(metrics, lambda r, k=key: r.get(k))] for key, _, pretty in _SCALARS]
    overall.append(
        [
            f"Worst-{e(student.get('worst_k'), 'k')} accuracy",
            *_cells(metrics, lambda r: r.get("worst_k_accuracy")),
        ]
    )
    shots, th = student.get("shot_groups") or {}, student.get("shot_thresholds") or {}
    few, many = th.get("few_below"), th.get("many_above")
    ranges = {"many": f"> {many}", "medium": f"{few}–{many}", "few": f"< {few}"}
    shot_rows = []
    for shot in (s for s in _SHOTS if s in shots):
        overall.append(
            [f"Accuracy, {shot}-shot classes", *_cells(metrics, lambda r, s=shot: _shot_acc(r, s))]
        )
        g = shots[shot]
        shot_rows.append(
            [
                shot,
                ranges[shot],
                e(g.get("num_classes"), "n/a"),
                e(g.get("support"), "n/a"),
                *_cells(metrics, lambda r, s=shot: _shot_acc(r, s)),
            ]
        )

    groups = []
    for column, summary in (student.get("groups") or {}).items():
        rows = [
            [
                escape_markdown_cell(value),
                e(cell.get("support"), "n/a"),
                *_cells(metrics, lambda r, c=column, v=value: _group_acc(r, c, v)),
            ]
            for value, cell in summary["by_group"].items()
        ]
        groups.append(
            {
                "column": escape_markdown_cell(column),
                "rows": rows,
                "worst": e(summary.get("worst_group")),
                **{k: fmt(summary.get(k)) for k in ("min", "max", "difference", "ratio")},
            }
        )

    by_name = {r["name"]: r for r in student["per_class"]}
    worst_rows = [
        [
            escape_markdown_cell(n),
            e(by_name[n]["train_count"], "n/a"),
            fmt(by_name[n]["accuracy"]),
            f"[{fmt(by_name[n]['ci_low'])}, {fmt(by_name[n]['ci_high'])}]",
        ]
        for n in student.get("worst_k_classes") or [student.get("worst_class")]
        if n in by_name
    ]
    per_class_rows, verdict = _per_class(metrics)
    params = settings.get("objective_params") or {}
    holdout = dataset.get("holdout_counts")
    ci = student.get("worst_class_accuracy_ci") or [None, None]
    return {
        "overall_rows": overall,
        "per_class_rows": per_class_rows,
        "shot_rows": shot_rows,
        "groups": groups,
        "worst_rows": worst_rows,
        "few": e(few, "n/a"),
        "many": e(many, "n/a"),
        "worst_class": e(student.get("worst_class")),
        "worst_acc": fmt(student.get("worst_class_accuracy")),
        "worst_ci": f"[{fmt(ci[0])}, {fmt(ci[1])}]",
        "has_baseline": bool(baseline and metrics.get("student_minus_baseline")),
        **{k: len(v) for k, v in verdict.items()},
        **{f"{k}_names": _names_list(v) or "none" for k, v in verdict.items()},
        **{
            f"{m}_{k}": fmt((metrics.get(m) or {}).get(k))
            for m in _MODELS
            for k in ("balanced_accuracy", "worst_class_accuracy")
        },
        "missing": _names_list(student.get("missing_classes") or [], 50) or "none",
        "plot": f"![Per-class accuracy against training count]({_safe_filename(plot_filename)})",
        "class_names": _names_list(_class_names(metrics), 100),
        **{
            k: e(settings.get(k))
            for k in (
                "student_model",
                "teacher_model",
                "objective",
                "teacher_objective",
                "teacher_target_mode",
                "temperature",
                "seed",
            )
        },
        "teacher_hub_id": e(settings.get("teacher_hub_id"), "none (the teacher is not on the Hub)"),
        "objective_params": e(", ".join(f"{k}={v}" for k, v in params.items()), "defaults"),
        "dataset_name": e(settings.get("dataset_name") or dataset.get("source")),
        **{
            k: e(dataset.get(k)) for k in ("profile", "imbalance_factor", "rare_classes", "holdout_per_class")
        },
        "data_seed": e(dataset.get("seed")),
        "holdout_total": e(sum(holdout) if holdout else None),
        "train_total": e(sum(c for c in _train_counts(metrics) if c is not None)),
        "num_test": e(student.get("num_examples")),
        "num_classes": e(student.get("num_classes", len(_class_names(metrics)))),
        "confidence": f"{100 * float(student.get('confidence_level') or 0.95):g}%",
        "n_bootstrap": e(student.get("n_bootstrap")),
        "group_columns": _names_list(list((student.get("groups") or {}).keys())) or "none",
    }


def _safe_filename(name: str) -> str:
    # The plot link is a relative URL: allow only plain file-name characters.
    if not re.fullmatch(r"[A-Za-z0-9._/-]+", name) or ".." in name:
        raise ValueError(
            f"plot_filename {name!r} must be a plain relative file name like 'per_class_accuracy.png'."
        )
    return name


def build_model_card(
    metrics: dict,
    *,
    model_id: str | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
    datasets: str | list[str] | None = None,
    plot_filename: str = "per_class_accuracy.png",
    extra_text: str | None = None,
) -> ModelCard:
    """Render the hf_fairkd model card (YAML metadata + Mitchell et al. sections) from subgroup metrics.

    ``base_model`` defaults to ``settings["teacher_hub_id"]``. ``extra_text`` is shown as plain text
    (escaped, paragraphs kept).
    """
    _check(metrics)
    settings = metrics.get("settings") or {}
    dataset_name = str(
        settings.get("dataset_name") or (metrics.get("dataset") or {}).get("source") or "unknown"
    )
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
        eval_results=_eval_results(metrics, dataset_name),
        **{CARD_BLOCK_KEY: card_block(metrics)},
    )
    paragraphs = [p for p in re.split(r"\n\s*\n", extra_text or "") if p.strip()]
    repo_hint = model_id if model_id and _REPO_ID.fullmatch(model_id) else "your-name/your-model"
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        title=escape_markdown_cell(model_id or "Distilled student (hf-fairkd)"),
        extra_text="\n\n".join(escape_markdown_cell(p, 5000) for p in paragraphs),
        repo_hint=repo_hint,
        **_body(metrics, plot_filename),
    )


def write_eval_results(folder: str | os.PathLike, metrics: dict) -> Path | None:
    """Write the Hub's ``.eval_results/hf_fairkd.yaml`` (huggingface_hub ``EvalResultEntry`` format).

    One entry per defined student metric, with the metric name as ``task_id``. Returns None (and writes
    nothing) when ``settings["dataset_name"]`` is not a Hub dataset id, since entries must name one.
    """
    from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

    _check(metrics)
    dataset_id = str((metrics.get("settings") or {}).get("dataset_name") or "")
    if not _REPO_ID.fullmatch(dataset_id):
        return None
    entries = [
        EvalResultEntry(
            dataset_id=dataset_id,
            task_id=r.metric_type,
            value=r.metric_value,
            notes=f"hf-fairkd: {r.metric_name} of the distilled student on the test split",
        )
        for r in _eval_results(metrics, dataset_id)
    ]
    path = Path(folder) / EVAL_RESULTS_PATH
    atomic_write_text(
        path, yaml.safe_dump(eval_result_entries_to_yaml(entries), sort_keys=False, allow_unicode=True)
    )
    return path


def save_card_and_metrics(
    output_dir: str | os.PathLike, metrics: dict, *, eval_results: bool = True, **card_kwargs
) -> Path:
    """Write subgroup_metrics.json, the plot, README.md (and .eval_results/) into ``output_dir`` atomically.

    ``card_kwargs`` go to :func:`build_model_card`. The card is built first, so a bad input leaves the
    folder untouched. Returns the README path.
    """
    card = build_model_card(metrics, **card_kwargs)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / METRICS_FILENAME, metrics)
    plot_per_class_accuracy(metrics, out / card_kwargs.get("plot_filename", "per_class_accuracy.png"))
    if eval_results:
        write_eval_results(out, metrics)
    text = str(card)
    return atomic_write_text(out / CARD_FILENAME, text if text.endswith("\n") else text + "\n")
