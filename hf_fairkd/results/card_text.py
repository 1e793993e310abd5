"""The Markdown body of the model card: escaped cells, tables and sentences for the Jinja template.

All text that comes from users or data (class names, group values, dataset and model names) reaches the
body only through :func:`escape_markdown_cell`.
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

from hf_fairkd.results.card_block import class_names as _class_names
from hf_fairkd.results.card_block import train_counts as _train_counts
from hf_fairkd.results.schema import ROLES as _MODELS
from hf_fairkd.results.schema import class_verdicts

__all__ = ["card_body", "escape_markdown_cell", "fmt"]

SHOTS = ("many", "medium", "few")
FOLD_CLASSES_ABOVE = 30  # with more classes the full per-class table is folded away (<details>)
LISTED_CLASSES = 10  # worst and most-hurt classes listed before the folded table
# (report key, model-index metric type, pretty name)
SCALARS = (
    ("accuracy", "accuracy", "Accuracy"),
    ("balanced_accuracy", "balanced_accuracy", "Balanced accuracy (mean per-class recall)"),
    ("worst_class_accuracy", "worst_class_accuracy", "Worst-class accuracy"),
)
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


def num(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def fmt(value: Any, signed: bool = False) -> str:
    """Accuracy-like number with 3 decimals ("n/a" when undefined); ``signed`` adds + for deltas."""
    x = num(value)
    return "n/a" if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")


def _names_list(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(escape_markdown_cell(n, 60) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _cells(metrics: dict, get) -> list[str]:
    """One formatted cell per model (teacher, baseline, student); ``get(report)`` picks the value."""
    return [fmt(get(metrics[key])) if metrics.get(key) else "n/a" for key in _MODELS]


def shot_acc(report: dict, shot: str) -> Any:
    return (report.get("shot_groups") or {}).get(shot, {}).get("accuracy")


def _classes(n: int) -> str:
    return "no class" if n == 0 else "1 class" if n == 1 else f"{n} classes"


def _p_text(row: dict, verdict: str | None) -> str:
    p = num(row.get("p_value"))
    if p is None:
        return "n/a"
    text = "< 0.001" if p < 0.001 else f"{p:.3f}"
    return f"{text} ({verdict})" if verdict in ("hurt", "helped") else text


def _per_class(metrics: dict) -> tuple[list[list[str]], dict[str, list[str]]]:
    """Per-class table rows and the classes where distillation helped / hurt / made no clear change."""
    names, counts = _class_names(metrics), _train_counts(metrics)
    deltas = {row["class_id"]: row for row in metrics.get("student_minus_baseline") or []}
    judged = class_verdicts(metrics)  # the one hurt / helped rule (hf_fairkd.results.schema)
    rows, verdicts = [], {"helped": [], "hurt": [], "no clear change": []}
    for i, row in enumerate(metrics["student"]["per_class"]):
        d = deltas.get(row["class_id"], {})
        verdict = judged.get(row["class_id"])
        if verdict is not None:
            verdicts[verdict].append(names[i])
        accs = _cells(metrics, lambda r, i=i: r["per_class"][i]["accuracy"])
        count = "n/a" if counts[i] is None else str(counts[i])
        delta = fmt(d.get("delta"), True)
        rows.append(
            [escape_markdown_cell(names[i]), count, str(row["support"]), *accs, delta, _p_text(d, verdict)]
        )
    return rows, verdicts


def _most_hurt(metrics: dict, verdicts: dict, limit: int = LISTED_CLASSES) -> list[list[str]]:
    """Rows of the classes the student lost most on against the baseline: significantly hurt first (by
    McNemar p, then delta), then the other classes with a negative delta (by delta); at most ``limit``."""
    if not metrics.get("baseline"):
        return []
    names, counts = _class_names(metrics), _train_counts(metrics)
    student, baseline = metrics["student"]["per_class"], metrics["baseline"]["per_class"]
    judged = class_verdicts(metrics)
    losses = [
        row for row in metrics.get("student_minus_baseline") or [] if (num(row.get("delta")) or 0.0) < 0
    ]

    def key(row: dict) -> tuple:
        hurt = judged.get(row["class_id"]) == "hurt"
        p = num(row.get("p_value"))
        return (not hurt, p if hurt and p is not None else 1.0, float(row["delta"]), row["class_id"])

    rows = []
    for d in sorted(losses, key=key)[:limit]:
        i = d["class_id"]
        rows.append(
            [
                escape_markdown_cell(names[i]),
                "n/a" if counts[i] is None else str(counts[i]),
                str(student[i]["support"]),
                fmt(baseline[i]["accuracy"]),
                fmt(student[i]["accuracy"]),
                fmt(d.get("delta"), True),
                _p_text(d, judged.get(i)),
            ]
        )
    return rows


def _verdict_phrase(names: list[str]) -> str:
    return _classes(len(names)) + (f" ({_names_list(names)})" if names else "")


def _shot_source(metrics: dict) -> tuple[str, str]:
    """(sentence saying which per-class counts define the shot groups, header of the shot table's count column)."""
    student, dataset = metrics["student"], metrics.get("dataset") or {}
    shot, train = student.get("shot_counts"), _train_counts(metrics)
    long_tail, holdout = dataset.get("long_tail_counts"), dataset.get("holdout_counts") or []
    if shot is not None and shot == long_tail and shot != train:
        return (
            f"Shot groups from the {len(shot)} per-class training counts of the long-tail profile, before the "
            f"holdout was carved (the per-class table's train counts are after it).",
            "Train count (before holdout)",
        )
    if shot is None or shot == train:
        after = " (after the holdout was carved)" if sum(c or 0 for c in holdout) > 0 else ""
        return (
            f"Shot groups use the per-class training counts of the per-class table{after}.",
            "Train count",
        )
    return (
        "Shot groups from the per-class counts stored as `shot_counts` in `subgroup_metrics.json`.",
        "Count",
    )


def _uncertainty(student: dict, confidence: str) -> str:
    method = student.get("interval_method")
    if method == "none":
        return "no intervals were computed for this card."
    if method is None:
        return (
            "percentile-bootstrap intervals, written before hf-fairkd switched to exact intervals; they cover "
            "less than their stated level on small classes, so re-evaluate before relying on them."
        )
    if method != "clopper_pearson":
        return f"intervals by the method {escape_markdown_cell(method)} (see `subgroup_metrics.json`)."
    level = float(student.get("confidence_level") or 0.95)
    k = student.get("worst_class_interval_classes") or sum(1 for r in student["per_class"] if r["support"])
    return (
        f"per-class accuracy intervals (in `subgroup_metrics.json`) are {confidence} Clopper-Pearson (exact "
        f"binomial) intervals, which keep their coverage at any test support. The worst-class interval "
        f"covers the true worst-class accuracy with probability at least {confidence}: it runs from the "
        f"lowest lower to the lowest upper bound of Clopper-Pearson intervals at level 1 − {1 - level:.2g}/{k}, "
        f"Bonferroni over the {_classes(int(k))} with test images."
    )


def _model_sentences(settings: dict) -> dict[str, str]:
    def e(key: str, default: str = "not recorded") -> str:
        value = settings.get(key)
        return default if value in (None, "", {}, []) else escape_markdown_cell(value)

    hub_id = settings.get("teacher_hub_id")
    if settings.get("teacher_model") or hub_id:
        teacher = escape_markdown_cell(settings.get("teacher_model") or hub_id) + (
            f" (on the Hub as {escape_markdown_cell(hub_id)})" if hub_id else " (not on the Hub)"
        )
    else:
        teacher = "not recorded"
    if settings.get("teacher_objective"):
        teacher += f", trained with the {e('teacher_objective')} objective"
    params = settings.get("objective_params") or {}
    objective = e("objective")
    if settings.get("objective"):
        objective += (
            f" with parameters {escape_markdown_cell(', '.join(f'{k}={v}' for k, v in params.items()))}"
            if params
            else " with its default parameters"
        )
    targets = ", ".join(
        text
        for text in (
            f"mode {e('teacher_target_mode')}" if settings.get("teacher_target_mode") else "",
            f"temperature {e('temperature')}" if settings.get("temperature") is not None else "",
        )
        if text
    )
    return {
        "teacher_sentence": teacher,
        "objective_sentence": objective,
        "targets": targets or "not recorded",
    }


def _profile_sentences(metrics: dict) -> dict[str, str]:
    """How the training data was made (the natural profile: the data as it is; else a long-tail profile)."""
    dataset, settings = metrics.get("dataset") or {}, metrics.get("settings") or {}

    def e(value: Any, default: str = "not recorded") -> str:
        return default if value in (None, "", {}, []) else escape_markdown_cell(value)

    name = e(settings.get("dataset_name") or dataset.get("source"))
    rho = num(dataset.get("imbalance_factor"))
    carved = dataset.get("test_carved") or {}
    if carved.get("kind") == "stratified" and num(carved.get("fraction")) is not None:
        test_origin = (
            f"A stratified test split carved from the training images of {name} (the source has none): "
            f"{100 * float(carved['fraction']):g}% of each class, at least {e(carved.get('min_per_class'), '1')}"
        )
    else:
        test_origin = f"The test split of {name}"
    if dataset.get("profile") == "natural":
        measured = f"{rho:.3g}" if rho is not None else "not recorded"
        return {
            "data_intro": f"**{name}** as it is (the natural profile: its own class imbalance)",
            "data_sentence": (
                f"{name}, used as it is (the natural profile): every training image was kept, none dropped to "
                f"build a long tail; measured imbalance factor (largest / smallest class, before the holdout) "
                f"{measured} (seed {e(dataset.get('seed'))})."
            ),
            "test_origin": test_origin,
        }
    return {
        "data_intro": f"a long-tailed version of **{name}**",
        "data_sentence": (
            f"{name}, made long-tailed with the {e(dataset.get('profile'))} profile and imbalance factor "
            f"{e(dataset.get('imbalance_factor'))} (rare-class order: {e(dataset.get('rare_classes'))}, seed "
            f"{e(dataset.get('seed'))})."
        ),
        "test_origin": test_origin,
    }


def _data_sentences(metrics: dict) -> dict[str, str]:
    dataset, student = metrics.get("dataset") or {}, metrics["student"]
    holdout = dataset.get("holdout_counts")
    split = "training split" if dataset.get("profile") == "natural" else "long-tailed training split"
    if holdout is None:
        holdout_text = "not recorded."
    elif sum(holdout) == 0:
        holdout_text = f"none; every image of the {split} was used for training."
    else:
        per_class = dataset.get("holdout_per_class")
        each = f" ({escape_markdown_cell(per_class)} per class)" if per_class not in (None, "") else ""
        holdout_text = (
            f"{sum(holdout)} images{each} carved from the {split} for model selection; "
            "they are not used for training."
        )
    supports = [r["support"] for r in student["per_class"] if r["support"]]
    if supports and min(supports) == max(supports):
        support_text = f"every class has {supports[0]} test images"
    elif supports:
        support_text = f"classes have {min(supports)} to {max(supports)} test images"
    else:
        support_text = "no class has test images"
    return {"holdout": holdout_text, "support": support_text}


def card_body(metrics: dict, plot_filename: str) -> dict[str, Any]:
    """Data-dependent parts of the card body (escaped cells and sentences) for the template."""
    student, baseline = metrics["student"], metrics.get("baseline")
    settings, dataset = metrics.get("settings") or {}, metrics.get("dataset") or {}

    def e(value: Any, default: str = "not recorded") -> str:
        return default if value in (None, "", {}, []) else escape_markdown_cell(value)

    overall = [[pretty, *_cells(metrics, lambda r, k=key: r.get(k))] for key, _, pretty in SCALARS]
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
    for shot in (s for s in SHOTS if s in shots):
        overall.append([f"Accuracy, {shot}-shot classes", *_cells(metrics, lambda r, s=shot: shot_acc(r, s))])
        g = shots[shot]
        shot_rows.append(
            [
                shot,
                ranges[shot],
                e(g.get("num_classes"), "n/a"),
                e(g.get("support"), "n/a"),
                *_cells(metrics, lambda r, s=shot: shot_acc(r, s)),
            ]
        )
    shot_sentence, shot_header = _shot_source(metrics)

    by_name = {r["name"]: r for r in student["per_class"]}
    fold = len(student["per_class"]) > FOLD_CLASSES_ABOVE
    worst_names = student.get("worst_k_classes") or [student.get("worst_class")]
    if fold:  # many classes: list more of the worst ones, since the full table is folded away
        seen = [r for r in student["per_class"] if num(r["accuracy"]) is not None]
        ranked = sorted(seen, key=lambda r: (r["accuracy"], r["class_id"]))
        worst_names = list(dict.fromkeys([*worst_names, *(r["name"] for r in ranked)]))
        worst_names = worst_names[: max(LISTED_CLASSES, len(student.get("worst_k_classes") or []))]
    worst_rows = [
        [
            escape_markdown_cell(n),
            e(by_name[n]["train_count"], "n/a"),
            e(by_name[n]["support"], "n/a"),
            fmt(by_name[n]["accuracy"]),
        ]
        for n in worst_names
        if n in by_name
    ]
    per_class_rows, verdicts = _per_class(metrics)
    ci = student.get("worst_class_accuracy_ci") or [None, None]
    confidence = f"{100 * float(student.get('confidence_level') or 0.95):g}%"
    return {
        "overall_rows": overall,
        "per_class_rows": per_class_rows,
        "shot_rows": shot_rows,
        "shot_sentence": shot_sentence,
        "shot_header": shot_header,
        "worst_rows": worst_rows,
        "fold_per_class": fold,
        "most_hurt_rows": _most_hurt(metrics, verdicts) if fold else [],
        "few": e(few, "n/a"),
        "many": e(many, "n/a"),
        "worst_class": e(student.get("worst_class")),
        "worst_acc": fmt(student.get("worst_class_accuracy")),
        "worst_ci": f"[{fmt(ci[0])}, {fmt(ci[1])}]" if num(ci[0]) is not None else None,
        "has_baseline": bool(baseline and metrics.get("student_minus_baseline")),
        "has_baseline_report": bool(baseline),
        "num_compared": _classes(sum(len(v) for v in verdicts.values())),
        **{f"{k.replace(' ', '_')}_text": _verdict_phrase(v) for k, v in verdicts.items()},
        **{
            f"{m}_{k}": fmt((metrics.get(m) or {}).get(k))
            for m in _MODELS
            for k in ("balanced_accuracy", "worst_class_accuracy")
        },
        "missing": _names_list(student.get("missing_classes") or [], 50) or "none",
        "plot": f"![Per-class accuracy against training count]({_safe_filename(plot_filename)})",
        "class_names": _names_list(_class_names(metrics), 100),
        **_model_sentences(settings),
        "student_model": e(settings.get("student_model")),
        "baseline_model": e(settings["baseline_model"]) if settings.get("baseline_model") else "",
        "seed": e(settings.get("seed")),
        "dataset_name": e(settings.get("dataset_name") or dataset.get("source")),
        **{k: e(dataset.get(k)) for k in ("profile", "imbalance_factor", "rare_classes")},
        "data_seed": e(dataset.get("seed")),
        **_data_sentences(metrics),
        **_profile_sentences(metrics),
        "train_total": e(sum(c for c in _train_counts(metrics) if c is not None)),
        "num_test": e(student.get("num_examples")),
        "num_classes": e(student.get("num_classes", len(_class_names(metrics)))),
        "confidence": confidence,
        "uncertainty": _uncertainty(student, confidence),
    }


def _safe_filename(name: str) -> str:
    # The plot link is a relative URL: allow only plain file-name characters.
    if not re.fullmatch(r"[A-Za-z0-9._/-]+", name) or ".." in name:
        raise ValueError(
            f"plot_filename {name!r} must be a plain relative file name like 'per_class_accuracy.png'."
        )
    return name
