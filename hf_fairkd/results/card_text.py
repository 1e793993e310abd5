"""The values of the model card's template: escaped names, formatted numbers and table rows.

The prose is in the template (``model_cards/model_card_template.md``); this module only hands it values. All
text that comes from users or data (class names, group values, dataset and model names) reaches the body
only through :func:`escape_markdown_cell` (by way of :func:`text`).
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

from hf_fairkd.results.card_block import class_names as _class_names
from hf_fairkd.results.card_block import train_counts as _train_counts
from hf_fairkd.results.schema import NAMED_SETTINGS, class_verdicts, public_name
from hf_fairkd.results.schema import ROLES as _MODELS

__all__ = ["card_body", "escape_markdown_cell", "fmt", "text"]

SHOTS = ("many", "medium", "few")
FOLD_CLASSES_ABOVE = 30  # with more classes the full per-class table is folded away (<details>)
LISTED_CLASSES = 10  # worst and most-hurt classes listed before the folded table
# (report key, model-index metric type, pretty name)
SCALARS = (
    ("accuracy", "accuracy", "Accuracy"),
    ("balanced_accuracy", "balanced_accuracy", "Balanced accuracy (mean per-class recall)"),
    ("worst_class_accuracy", "worst_class_accuracy", "Worst-class accuracy"),
)
# the dataset's descriptions the cards' sentences quote
DATASET_KEYS = ("profile", "imbalance_factor", "rare_classes", "seed", "holdout_per_class")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")


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


def text(value: Any, max_len: int = 200) -> str | None:
    """A recorded value as escaped text (:func:`escape_markdown_cell`); None when nothing was recorded."""
    return None if value in (None, "", {}, []) else escape_markdown_cell(value, max_len)


def num(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def fmt(value: Any, signed: bool = False) -> str:
    """Accuracy-like number with 3 decimals ("n/a" when undefined); ``signed`` adds + for deltas."""
    x = num(value)
    return "n/a" if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")


def names_list(names: list[str], limit: int = 20) -> str:
    """Escaped names joined by commas, the ones past ``limit`` counted ("and 3 more")."""
    shown = ", ".join(escape_markdown_cell(n, 60) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def shot_acc(report: dict, shot: str) -> Any:
    return (report.get("shot_groups") or {}).get(shot, {}).get("accuracy")


def p_text(row: dict, verdict: str | None) -> str:
    """The McNemar p-value cell, with the verdict when it is hurt or helped."""
    p = num(row.get("p_value"))
    if p is None:
        return "n/a"
    shown = "< 0.001" if p < 0.001 else f"{p:.3f}"
    return f"{shown} ({verdict})" if verdict in ("hurt", "helped") else shown


def _cells(metrics: dict, get) -> list[str]:
    """One formatted cell per model (teacher, baseline, student); ``get(report)`` picks the value."""
    return [fmt(get(metrics[key])) if metrics.get(key) else "n/a" for key in _MODELS]


def _shot_source(metrics: dict) -> str:
    """Which per-class counts formed the shot groups: "long_tail" (the profile's, before the holdout),
    "train" (the table's training counts) or "stored" (other counts, in ``shot_counts``)."""
    shot, long_tail = (
        metrics["student"].get("shot_counts"),
        (metrics.get("dataset") or {}).get("long_tail_counts"),
    )
    if shot is None or shot == _train_counts(metrics):
        return "train"
    return "long_tail" if shot == long_tail else "stored"


def _count_cells(metrics: dict, i: int) -> list[str]:
    """The count cells of class ``i``: its training count, and the count its shot group used when that differs."""
    train = _train_counts(metrics)[i]
    cells = [text(train) or "n/a"]
    if _shot_source(metrics) != "train":
        cells.append(text(metrics["student"]["shot_counts"][i]) or "n/a")
    return cells


def _per_class(metrics: dict) -> tuple[list[list[str]], dict[str, list[str]]]:
    """Per-class table rows and the classes where distillation helped / hurt / made no clear change."""
    names = _class_names(metrics)
    deltas = {row["class_id"]: row for row in metrics.get("student_minus_baseline") or []}
    judged = class_verdicts(metrics)  # the one hurt / helped rule (hf_fairkd.results.schema)
    rows, verdicts = [], {"helped": [], "hurt": [], "no clear change": []}
    for i, row in enumerate(metrics["student"]["per_class"]):
        d, verdict = deltas.get(row["class_id"], {}), judged.get(row["class_id"])
        if verdict is not None:
            verdicts[verdict].append(names[i])
        accs = _cells(metrics, lambda r, i=i: r["per_class"][i]["accuracy"])
        rows.append(
            [
                escape_markdown_cell(names[i]),
                *_count_cells(metrics, i),
                str(row["support"]),
                *accs,
                fmt(d.get("delta"), True),
                p_text(d, verdict),
            ]
        )
    return rows, verdicts


def _most_hurt(metrics: dict, limit: int = LISTED_CLASSES) -> list[list[str]]:
    """Rows of the classes the student lost most on against the baseline: significantly hurt first (by
    McNemar p, then delta), then the other classes with a negative delta (by delta); at most ``limit``."""
    if not metrics.get("baseline"):
        return []
    names = _class_names(metrics)
    student, baseline = metrics["student"]["per_class"], metrics["baseline"]["per_class"]
    judged = class_verdicts(metrics)
    losses = [
        row for row in metrics.get("student_minus_baseline") or [] if (num(row.get("delta")) or 0.0) < 0
    ]

    def key(row: dict) -> tuple:
        hurt = judged.get(row["class_id"]) == "hurt"
        p = num(row.get("p_value"))
        return (not hurt, p if hurt and p is not None else 1.0, float(row["delta"]), row["class_id"])

    return [
        [
            escape_markdown_cell(names[d["class_id"]]),
            *_count_cells(metrics, d["class_id"]),
            str(student[d["class_id"]]["support"]),
            fmt(baseline[d["class_id"]]["accuracy"]),
            fmt(student[d["class_id"]]["accuracy"]),
            fmt(d.get("delta"), True),
            p_text(d, judged.get(d["class_id"])),
        ]
        for d in sorted(losses, key=key)[:limit]
    ]


def _worst_rows(metrics: dict, fold: bool) -> list[list[str]]:
    """The student's worst classes (its worst k; with a folded table, at least ``LISTED_CLASSES``)."""
    student = metrics["student"]
    worst_names = student.get("worst_k_classes") or [student.get("worst_class")]
    if fold:  # many classes: list more of the worst ones, since the full table is folded away
        seen = [r for r in student["per_class"] if num(r["accuracy"]) is not None]
        ranked = sorted(seen, key=lambda r: (r["accuracy"], r["class_id"]))
        worst_names = list(dict.fromkeys([*worst_names, *(r["name"] for r in ranked)]))
        worst_names = worst_names[: max(LISTED_CLASSES, len(student.get("worst_k_classes") or []))]
    by_name = {r["name"]: r for r in student["per_class"]}
    return [
        [
            escape_markdown_cell(n),
            *_count_cells(metrics, by_name[n]["class_id"]),
            text(by_name[n]["support"]) or "n/a",
            fmt(by_name[n]["accuracy"]),
        ]
        for n in worst_names
        if n in by_name
    ]


def _shot_rows(metrics: dict) -> list[list[str]]:
    """One row per shot group: its count range, classes, test support and each model's accuracy."""
    student = metrics["student"]
    shots, th = student.get("shot_groups") or {}, student.get("shot_thresholds") or {}
    few, many = th.get("few_below"), th.get("many_above")
    ranges = {"many": f"> {many}", "medium": f"{few}–{many}", "few": f"< {few}"}
    return [
        [
            shot,
            ranges[shot],
            text(shots[shot].get("num_classes")) or "n/a",
            text(shots[shot].get("support")) or "n/a",
            *_cells(metrics, lambda r, s=shot: shot_acc(r, s)),
        ]
        for shot in SHOTS
        if shot in shots
    ]


def data_values(metrics: dict) -> dict[str, Any]:
    """How the training and test data were made, for the sentences of both cards (student and teacher)."""
    dataset, settings = metrics.get("dataset") or {}, metrics.get("settings") or {}
    carved = dataset.get("test_carved") or {}
    stratified = carved.get("kind") == "stratified" and num(carved.get("fraction")) is not None
    rho = num(dataset.get("imbalance_factor"))
    return {
        "dataset_name": text(public_name(settings.get("dataset_name") or dataset.get("source"))),
        "dataset": {k: text(dataset.get(k)) for k in DATASET_KEYS},
        "natural": dataset.get("profile") == "natural",
        "measured_imbalance": f"{rho:.3g}" if rho is not None else None,
        "carved_percent": f"{100 * float(carved['fraction']):g}" if stratified else None,
        "carved_min": text(carved.get("min_per_class")) or "1",
    }


def interval_values(report: dict) -> dict[str, Any]:
    """The report's intervals: their kind ("exact", "none", "bootstrap" for records without a method, or
    "other"), level and the number of classes of the worst-class interval's Bonferroni correction."""
    method = report.get("interval_method")
    kinds = {"clopper_pearson": "exact", "none": "none", None: "bootstrap"}
    level = float(report.get("confidence_level") or 0.95)
    k = report.get("worst_class_interval_classes") or sum(1 for r in report["per_class"] if r.get("support"))
    return {
        "intervals": kinds.get(method, "other"),
        "interval_method": text(method),
        "confidence": f"{100 * level:g}%",
        "alpha": f"{1 - level:.2g}",
        "bonferroni_classes": int(k),
    }


def card_body(metrics: dict, plot_filename: str) -> dict[str, Any]:
    """The template's values (escaped cells, names and numbers) for the card of a distilled student."""
    student, baseline, settings = metrics["student"], metrics.get("baseline"), metrics.get("settings") or {}
    overall = [[pretty, *_cells(metrics, lambda r, k=key: r.get(k))] for key, _, pretty in SCALARS]
    overall.append(
        [
            f"Worst-{text(student.get('worst_k')) or 'k'} accuracy",
            *_cells(metrics, lambda r: r.get("worst_k_accuracy")),
        ]
    )
    overall += [
        [f"Accuracy, {shot}-shot classes", *_cells(metrics, lambda r, s=shot: shot_acc(r, s))]
        for shot in SHOTS
        if shot in (student.get("shot_groups") or {})
    ]
    fold = len(student["per_class"]) > FOLD_CLASSES_ABOVE
    per_class_rows, verdicts = _per_class(metrics)
    thresholds = student.get("shot_thresholds") or {}
    holdout = (metrics.get("dataset") or {}).get("holdout_counts")
    supports = [r["support"] for r in student["per_class"] if r["support"]]
    ci = student.get("worst_class_accuracy_ci") or [None, None]
    params = settings.get("objective_params") or {}
    return {
        "settings": {k: text(public_name(v) if k in NAMED_SETTINGS else v) for k, v in settings.items()},
        "objective_parameters": text(", ".join(f"{k}={v}" for k, v in params.items())),
        "teacher_given": bool(settings.get("teacher_given")),
        **data_values(metrics),
        **interval_values(student),
        "overall_rows": overall,
        "per_class_rows": per_class_rows,
        "shot_rows": _shot_rows(metrics),
        "shot_source": _shot_source(metrics),
        "shot_classes": len(student.get("shot_counts") or []),
        "few": text(thresholds.get("few_below")),
        "many": text(thresholds.get("many_above")),
        "worst_rows": _worst_rows(metrics, fold),
        "fold_per_class": fold,
        "most_hurt_rows": _most_hurt(metrics) if fold else [],
        "worst_class": text(student.get("worst_class")),
        "worst_acc": fmt(student.get("worst_class_accuracy")),
        "worst_ci": f"[{fmt(ci[0])}, {fmt(ci[1])}]" if num(ci[0]) is not None else None,
        "has_baseline": bool(baseline and metrics.get("student_minus_baseline")),
        "has_baseline_report": bool(baseline),
        "verdicts": {k.replace(" ", "_"): {"n": len(v), "names": names_list(v)} for k, v in verdicts.items()},
        "compared": {
            m: {k: fmt((metrics.get(m) or {}).get(k)) for k in ("balanced_accuracy", "worst_class_accuracy")}
            for m in _MODELS
        },
        "missing": names_list(student.get("missing_classes") or [], 50),
        "plot": safe_filename(plot_filename),
        "class_names": names_list(_class_names(metrics), 100),
        "holdout_total": None if holdout is None else sum(holdout),
        "support_range": (min(supports), max(supports)) if supports else None,
        "train_total": sum(c for c in _train_counts(metrics) if c is not None),
        "num_test": text(student.get("num_examples")),
        "num_classes": text(student.get("num_classes", len(_class_names(metrics)))),
    }


def safe_filename(name: str) -> str:
    """The plot link is a relative URL: allow only plain file-name characters."""
    if not re.fullmatch(r"[A-Za-z0-9._/-]+", name) or ".." in name:
        raise ValueError(
            f"plot_filename {name!r} must be a plain relative file name like 'per_class_accuracy.png'."
        )
    return name
