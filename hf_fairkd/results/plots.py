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
from hf_fairkd.results.schema import METRICS_FILE, public_name

__all__ = ["count_bins", "draw_per_class_accuracy", "plot_per_class_accuracy"]

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
    """Indices of the classes to name: every class with a point when there are few; with many, the worst
    (student), rarest, commonest and most improved over the baseline, so the plot stays readable."""
    seen = [i for i in range(len(xs)) if not math.isnan(ys[i])]  # a class without test images has no point
    if len(xs) <= _ALL_LABELS_UP_TO:
        return seen
    worst = sorted(seen, key=lambda i: ys[i])
    by_count = sorted(seen, key=lambda i: xs[i])
    gains = []
    if baseline is not None:
        gains = sorted((i for i in seen if not math.isnan(baseline[i])), key=lambda i: baseline[i] - ys[i])
    return sorted(dict.fromkeys(worst[:2] + by_count[:2] + by_count[-1:] + gains[:1]))


# Label positions tried in turn, in points from the point: (dx, dy, horizontal alignment).
_LABEL_OFFSETS = [
    (dx, dy, ha) for dy in (6, -13, 16, -23, 26, -33, 36, -43) for dx, ha in ((5, "left"), (-5, "right"))
]


def _name_classes(ax, points: list[tuple[float, float, str]], taken: list) -> None:
    """Annotate every point with its label, at the first offset where the label stays inside the axes and
    overlaps no other label nor the ``taken`` boxes (e.g. the shot-group names); a label that fits nowhere is
    kept at the first offset, so no class goes unnamed. Call after the layout is final."""
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    placed = list(taken)
    for x, y, label in points:
        first = None
        for dx, dy, ha in _LABEL_OFFSETS:
            note = ax.annotate(
                label, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=8, color="#333333",
                annotation_clip=False,
            )  # fmt: skip
            box = note.get_window_extent(renderer)
            fits = inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            if fits and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                if first is not None:
                    first.remove()
                break
            if first is None:
                first = note
            else:
                note.remove()
        else:
            placed.append(first.get_window_extent(renderer))


def _class_counts(metrics: dict, rows: list[dict]) -> tuple[list[float], list[int], str]:
    """Where each class is drawn (x), its training count, and the x axis label. A class is drawn at the count its
    shot group uses (``shot_counts``, e.g. before the holdout), so that it sits in the band of its group."""
    train = metrics.get("train_counts") or [row.get("train_count") for row in rows]
    if any(count is None for count in train):
        raise ValueError("plot_per_class_accuracy needs per-class train_counts; add metrics['train_counts'].")
    shot = (metrics.get("student") or metrics.get("teacher") or {}).get("shot_counts")
    if shot is not None and list(shot) != list(train):
        label = "training images of the class before the holdout (the count of its shot group; log scale)"
        return [float(c) for c in shot], list(train), label
    return [float(c) for c in train], list(train), "training images of the class (log scale)"


def _interval_bars(ax, xs: list[float], rows: list[dict], colour: str) -> bool:
    """Error bars of the per-class intervals (``ci_low`` / ``ci_high``) where the report has them."""
    bars = [
        (x, row["accuracy"], row["accuracy"] - row["ci_low"], row["ci_high"] - row["accuracy"])
        for x, row in zip(xs, rows)
        if None not in (row.get("accuracy"), row.get("ci_low"), row.get("ci_high"))
        and not any(math.isnan(row[k]) for k in ("accuracy", "ci_low", "ci_high"))
    ]
    if bars:
        bx, by, down, up = (list(v) for v in zip(*bars))
        ax.errorbar(
            bx,
            by,
            yerr=[down, up],
            fmt="none",
            ecolor=colour,
            elinewidth=0.9,
            capsize=2.5,
            alpha=0.55,
            zorder=2,
        )
    return bool(bars)


def draw_per_class_accuracy(metrics: dict, *, title: str | None = None) -> Figure:
    """The figure of :func:`plot_per_class_accuracy` (a ``matplotlib.figure.Figure`` on an Agg canvas)."""
    main_key = "student" if isinstance(metrics.get("student"), dict) else "teacher"
    main = metrics.get(main_key)  # a teacher's record (train_teacher.py) has no student
    if not isinstance(main, dict) or "per_class" not in main:
        raise ValueError(
            f"metrics has no 'student' (or 'teacher') report with 'per_class' rows; pass the {METRICS_FILE} record "
            "written by the recipe."
        )
    rows = main["per_class"]
    counts, train_counts, xlabel = _class_counts(metrics, rows)
    names = metrics.get("class_names") or [row["name"] for row in rows]
    # A log axis cannot show 0; classes with no training rows sit at 0.5 and are flagged in the label.
    xs = [max(c, 0.5) for c in counts]
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
    confidence = f"{100 * float(main.get('confidence_level') or 0.95):g}%"
    for key, label, colour, marker in _MODELS:
        if key not in metrics or metrics[key] is None:
            continue
        acc = [_accuracy(row["accuracy"]) for row in metrics[key]["per_class"]]
        style = {
            "linewidth": 1.8 if key == main_key else 1.2,
            "markersize": 7 if key == main_key else 5,
            "zorder": 3 if key == main_key else 2,
        }
        if binned:
            # Many classes: one point per bin of training count (mean), with the middle half of the classes
            # of the bin as a band, so 1,000 classes stay readable.
            series = _binned_series(xs, acc, bins)
            bx, mean, q25, q75 = (list(v) for v in zip(*series)) if series else ([], [], [], [])
            ax.fill_between(bx, q25, q75, color=colour, alpha=0.15, linewidth=0, zorder=1)
            ax.plot(bx, mean, marker=marker, color=colour, label=f"{label} (mean per bin)", **style)
            continue
        if key == main_key and _interval_bars(ax, xs, metrics[key]["per_class"], colour):
            label += f" (bars: {confidence} interval)"
        ax.plot(
            [xs[i] for i in order], [acc[i] for i in order], marker=marker, color=colour, label=label, **style
        )

    lo, hi = min(xs) / 1.6, max(xs) * 1.8  # margins leave room for the class labels
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    thresholds = main.get("shot_thresholds") or {}
    few, many = thresholds.get("few_below"), thresholds.get("many_above")
    band_names = []
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
                band_names.append(
                    ax.text(math.sqrt(start * end), 1.045, name, ha="center", fontsize=8, color="#666666")
                )
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylim(-0.03, 1.08)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(
        f"mean test accuracy of the classes of a bin ({len(bins)} bins)\nband: 25th–75th percentile"
        if binned
        else "test accuracy of the class (recall)"
    )
    dataset = public_name((metrics.get("settings") or {}).get("dataset_name"))
    default_title = "Per-class accuracy vs. training count" + (
        f" — {_plain_label(dataset, 40)}" if dataset else ""
    )
    if binned:
        default_title += f" ({len(xs)} classes, binned)"
    ax.set_title(_plain_label(title, 120) if title else default_title)
    ax.grid(True, which="major", alpha=0.3)
    # below the axes, so that it hides no point and no class label
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    if not binned:
        main_acc = [_accuracy(row["accuracy"]) for row in rows]
        baseline_acc = None
        if metrics.get("baseline") and main_key == "student":
            baseline_acc = [_accuracy(row["accuracy"]) for row in metrics["baseline"]["per_class"]]
        named = _classes_to_name(xs, main_acc, baseline_acc)
        points = [
            (xs[i], main_acc[i], _plain_label(names[i]) + (" (0 train)" if train_counts[i] <= 0 else ""))
            for i in named
        ]
        renderer = fig.canvas.get_renderer()
        _name_classes(ax, points, [t.get_window_extent(renderer) for t in band_names])
    return fig


def plot_per_class_accuracy(metrics: dict, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Save a PNG of per-class test accuracy (y) against per-class training count (x, log scale).

    ``metrics`` is a subgroup_metrics.json dict; the teacher, baseline and student reports present are
    drawn as markers joined by lines in order of training count, the student's (a teacher record's: the
    teacher's) per-class intervals as error bars. Each class is drawn at the count its shot group uses (the
    count before the holdout when the groups were formed from it), so it lies in the shaded band of its group;
    with up to 12 classes every class is named. With more than ``BIN_CLASSES_ABOVE`` classes the classes are
    grouped into log-spaced bins of training count (:func:`count_bins`) and each model is drawn as its mean
    accuracy per bin with a band from the 25th to the 75th percentile. A record with groups gets a panel per
    group column below (:mod:`hf_fairkd.results.plot_groups`). The file is written atomically.
    """
    fig = draw_per_class_accuracy(metrics, title=title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
