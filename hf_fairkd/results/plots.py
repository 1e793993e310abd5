"""Plot of per-class accuracy against training count (teacher, one-hot baseline, student), from a run record.

The figure is a plain ``matplotlib.figure.Figure`` drawn on an Agg canvas: pyplot is never imported and no
global backend is chosen, so a notebook's backend is untouched and nothing needs a display.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import matplotlib.ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hf_fairkd.io_utils import atomic_path
from hf_fairkd.results.plot_groups import draw_group_panel, group_panel_columns
from hf_fairkd.results.schema import METRICS_FILE

__all__ = ["count_bins", "plot_per_class_accuracy"]

# (key in the run record, legend label, colour, marker); drawn in this order so the student is on top.
_MODELS = (
    ("teacher", "teacher", "#7f7f7f", "s"),
    ("baseline", "one-hot baseline (no distillation)", "#1f77b4", "^"),
    ("student", "distilled student", "#d62728", "o"),
)
_MAX_LABEL_CHARS = 18
_ALL_LABELS_UP_TO = 12  # with more classes only a few informative ones are named
BIN_CLASSES_ABOVE = 60  # with more classes, accuracy is drawn per bin of training count, not per class
NUM_BINS = 12


def count_bins(train_counts: list[float], num_bins: int = NUM_BINS) -> list[list[int]]:
    """Class indices grouped into (at most ``num_bins``) log-spaced bins of training count, rarest first.

    Empty bins are dropped; every class is in exactly one bin.
    """
    logs = [math.log10(max(float(c), 0.5)) for c in train_counts]
    lo, hi = min(logs), max(logs)
    width = (hi - lo) / num_bins if hi > lo else 1.0
    bins: list[list[int]] = [[] for _ in range(num_bins)]
    for i, v in enumerate(logs):
        bins[min(int((v - lo) / width), num_bins - 1)].append(i)
    return [b for b in bins if b]


def _binned_series(xs: list[float], acc: list[float], bins: list[list[int]]):
    """Per bin: x (geometric mean count), mean accuracy, 25th and 75th percentile (classes with test images)."""
    import numpy as np

    out = []
    for members in bins:
        values = np.array([acc[i] for i in members], dtype=float)
        values = values[~np.isnan(values)]
        if values.size == 0:
            continue
        x = float(np.exp(np.mean(np.log([xs[i] for i in members]))))
        q25, q75 = np.percentile(values, [25, 75])
        out.append((x, float(values.mean()), float(q25), float(q75)))
    return out


def _plain_label(text: object, max_chars: int = _MAX_LABEL_CHARS) -> str:
    """One-line label safe for matplotlib: whitespace collapsed, ``$`` escaped (no mathtext), truncated."""
    label = re.sub(r"\s+", " ", str(text)).strip()
    if len(label) > max_chars:
        label = label[: max_chars - 1] + "…"
    return label.replace("$", r"\$")


def _accuracy(value: object) -> float:
    return math.nan if value is None else float(value)


def _classes_to_name(xs: list[float], ys: list[float], baseline: list[float] | None) -> list[int]:
    """Indices of classes to annotate, skipping any label that would sit on top of one already placed.

    With few classes every class is a candidate; with many, only the worst (student), rarest, commonest
    and most improved over the baseline are, so the plot stays readable.
    """
    n = len(xs)
    seen = [i for i in range(n) if not math.isnan(ys[i])]
    worst = sorted(seen, key=lambda i: ys[i])
    by_count = sorted(seen, key=lambda i: xs[i])  # classes without test images have no point to label
    if n <= _ALL_LABELS_UP_TO:
        candidates = worst + by_count
    else:
        gains = []
        if baseline is not None:
            gains = sorted(
                (i for i in seen if not math.isnan(baseline[i])), key=lambda i: baseline[i] - ys[i]
            )
        candidates = worst[:2] + by_count[:2] + by_count[-1:] + gains[:1]
    log_lo, log_hi = math.log10(min(xs)), math.log10(max(xs))
    span = max(log_hi - log_lo, 1e-9)
    placed: list[tuple[float, float]] = []
    chosen: list[int] = []
    for i in dict.fromkeys(candidates):  # keeps priority order, drops repeats
        point = ((math.log10(xs[i]) - log_lo) / span, ys[i])
        if all(abs(point[0] - px) > 0.1 or abs(point[1] - py) > 0.05 for px, py in placed):
            placed.append(point)
            chosen.append(i)
    return sorted(chosen)


def plot_per_class_accuracy(metrics: dict, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Save a PNG of per-class test accuracy (y) against per-class training count (x, log scale).

    ``metrics`` is a subgroup_metrics.json dict; the teacher, baseline and student reports present are
    drawn as markers joined by lines in order of training count. With more than ``BIN_CLASSES_ABOVE``
    classes the classes are grouped into log-spaced bins of training count (:func:`count_bins`) and each
    model is drawn as its mean accuracy per bin with a band from the 25th to the 75th percentile. A record
    with groups gets a panel per group column below (:mod:`hf_fairkd.results.plot_groups`). The file
    is written atomically.
    """
    main = metrics.get("student") or metrics.get(
        "teacher"
    )  # a teacher's record (train_teacher.py) has no student
    if not isinstance(main, dict) or "per_class" not in main:
        raise ValueError(
            f"metrics has no 'student' (or 'teacher') report with 'per_class' rows; pass the {METRICS_FILE} record "
            "written by the recipe."
        )
    student_rows = main["per_class"]
    train_counts = metrics.get("train_counts") or [row.get("train_count") for row in student_rows]
    if any(count is None for count in train_counts):
        raise ValueError("plot_per_class_accuracy needs per-class train_counts; add metrics['train_counts'].")
    names = metrics.get("class_names") or [row["name"] for row in student_rows]
    # A log axis cannot show 0; classes with no training rows sit at 0.5 and are flagged in the label.
    xs = [max(float(c), 0.5) for c in train_counts]
    order = sorted(range(len(xs)), key=lambda i: (xs[i], i))

    columns = group_panel_columns(metrics)
    fig = Figure(figsize=(9, 9) if columns else (9, 5.5), dpi=110)
    FigureCanvasAgg(fig)  # savefig renders with Agg whatever backend pyplot (if anyone uses it) has
    if columns:  # the per-class plot on top, one panel per group column below
        grid = fig.add_gridspec(2, len(columns), height_ratios=[3, 2])
        ax = fig.add_subplot(grid[0, :])
        for i, column in enumerate(columns):
            draw_group_panel(fig.add_subplot(grid[1, i]), metrics, column, _MODELS, _plain_label)
    else:
        ax = fig.subplots()
    binned = len(xs) > BIN_CLASSES_ABOVE
    bins = count_bins(xs) if binned else []
    for key, label, colour, marker in _MODELS:
        if key not in metrics or metrics[key] is None:
            continue
        acc = [_accuracy(row["accuracy"]) for row in metrics[key]["per_class"]]
        if binned:
            # Many classes: one point per bin of training count (mean), with the middle half of the classes
            # of the bin as a band, so 1,000 classes stay readable.
            series = _binned_series(xs, acc, bins)
            bx, mean, q25, q75 = (list(v) for v in zip(*series)) if series else ([], [], [], [])
            ax.fill_between(bx, q25, q75, color=colour, alpha=0.15, linewidth=0, zorder=1)
            ax.plot(
                bx,
                mean,
                marker=marker,
                color=colour,
                label=f"{label} (mean per bin)",
                linewidth=1.8 if key == "student" else 1.2,
                markersize=7 if key == "student" else 5,
                zorder=3 if key == "student" else 2,
            )
            continue
        ax.plot(
            [xs[i] for i in order],
            [acc[i] for i in order],
            marker=marker,
            color=colour,
            label=label,
            linewidth=1.8 if key == "student" else 1.2,
            markersize=7 if key == "student" else 5,
            zorder=3 if key == "student" else 2,
        )

    student_acc = [_accuracy(row["accuracy"]) for row in student_rows]
    baseline_acc = None
    if metrics.get("baseline"):
        baseline_acc = [_accuracy(row["accuracy"]) for row in metrics["baseline"]["per_class"]]
    for i in [] if binned else _classes_to_name(xs, student_acc, baseline_acc):
        y = student_acc[i]
        text = _plain_label(names[i]) + (" (0 train)" if train_counts[i] <= 0 else "")
        ax.annotate(
            text,
            (xs[i], y),
            textcoords="offset points",
            xytext=(4, 6),
            fontsize=8,
            color="#333333",
            annotation_clip=False,
        )

    lo, hi = min(xs) / 1.6, max(xs) * 1.8  # margins leave room for the class labels
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    thresholds = main.get("shot_thresholds") or {}
    few, many = thresholds.get("few_below"), thresholds.get("many_above")
    if few and many:
        # Shade the three shot groups so readers see where the rare classes are.
        for start, end, name, shade in (
            (lo, few, "few", "#f2dede"),
            (few, many, "medium", "#fcf8e3"),
            (many, hi, "many", "#eef5ea"),
        ):
            start, end = max(start, lo), min(end, hi)
            if start < end:
                ax.axvspan(start, end, color=shade, alpha=0.6, zorder=0, linewidth=0)
                ax.text(math.sqrt(start * end), 1.045, name, ha="center", fontsize=8, color="#666666")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylim(-0.03, 1.08)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel(
        f"mean test accuracy of the classes of a bin ({len(bins)} bins)\nband: 25th–75th percentile"
        if binned
        else "test accuracy of the class (recall)"
    )
    dataset = (metrics.get("settings") or {}).get("dataset_name")
    default_title = "Per-class accuracy vs. training count" + (
        f" — {_plain_label(dataset, 40)}" if dataset else ""
    )
    if binned:
        default_title += f" ({len(xs)} classes, binned)"
    ax.set_title(_plain_label(title, 120) if title else default_title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=9, framealpha=0.9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
