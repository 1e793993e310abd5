"""The Pareto view of a comparison: overall accuracy against worst-class accuracy (and against worst-group
accuracy when the data has groups), means over seeds with ± one seed standard deviation.

`pareto_front` is the maths (which points no other point beats on both axes); `plot_pareto` draws any panels
of points; `comparison_points` turns setting summaries into points, joining a sweep of one numeric setting
into a line. No pyplot: no global matplotlib backend is chosen.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..io_utils import atomic_path
from .spec import value_text
from .stats import mean_std


def pareto_front(points) -> list[int]:
    """Indices of the points (x, y) on the front, maximising both: those no other point is >= on both and >
    on one. Points with a None coordinate are never on it. Sorted by x descending, then y descending."""
    kept = [(x, y, i) for i, (x, y) in enumerate(points) if x is not None and y is not None]
    kept.sort(key=lambda p: (-p[0], -p[1]))
    front, best_y, i = [], None, 0
    while i < len(kept):  # one x at a time: the points sharing the highest y of that x are its candidates
        j = i
        while j < len(kept) and kept[j][0] == kept[i][0]:
            j += 1
        top = kept[i][1]  # the highest y at this x
        if best_y is None or top > best_y:
            front += [p[2] for p in kept[i:j] if p[1] == top]
            best_y = top
        i = j
    return front


@dataclass
class Point:
    """One setting in the plot: its mean ± sd per metric (percent), and the line (a sweep) it belongs to."""

    label: str
    values: dict[str, tuple[float | None, float]] = field(default_factory=dict)
    line: str | None = None  # points sharing a line are joined in the given order
    note: str | None = None  # written beside a point on a line, e.g. 'dro_tradeoff=0.5'


def comparison_points(summaries) -> list[Point]:
    """Points of the settings with finished runs; settings of one objective that differ only in one numeric
    setting form a line (a sweep), ordered by that value."""
    metrics = ("accuracy", "worst_class_accuracy", "worst_group_accuracy")
    lines: dict[tuple, list] = defaultdict(list)
    for s in summaries:
        for name, value in s.setting.params:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rest = tuple(p for p in s.setting.params if p[0] != name)
                lines[(s.setting.objective, name, rest)].append((value, s))
    member: dict = {}
    for (objective, name, rest), items in lines.items():
        if len(items) > 1:
            title = objective + (f" ({', '.join(f'{k}={value_text(v)}' for k, v in rest)})" if rest else "")
            for value, s in sorted(items, key=lambda item: item[0]):
                member.setdefault(s.setting, (f"{title}, {name} swept", f"{name}={value_text(value)}", value))
    points = []
    for s in summaries:
        if not s.runs:
            continue
        values = {}
        for metric in metrics:
            mean, std = mean_std(s.values(metric))
            values[metric] = (mean, std or 0.0)
        line, note, _ = member.get(s.setting, (None, None, None))
        points.append(Point(s.setting.label, values, line, note))
    order = {s.setting.label: member.get(s.setting, (None, None, 0))[2] for s in summaries}
    return sorted(points, key=lambda p: (p.line is not None, p.line or "", order.get(p.label) or 0))


def plot_pareto(
    points: list[Point],
    path,
    panels: list[tuple[str, str]],
    title: str,
    y_metric: str = "accuracy",
    y_label: str = "overall test accuracy (%)",
) -> Path | None:
    """One panel per (x metric, x label) with every point, sweeps as lines and the Pareto front (maximising both
    axes) as a dashed step line. Panels whose metric no point has are left out; nothing is written without any."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [
        (m, label) for m, label in panels if any(p.values.get(m, (None,))[0] is not None for p in points)
    ]
    if not panels:
        return None
    fig = Figure(figsize=(7.5 * len(panels), 5.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    palette = colormaps["tab20"]
    for ax, (x_metric, x_label) in zip(axes, panels):
        xy = [(p.values.get(x_metric, (None, 0))[0], p.values.get(y_metric, (None, 0))[0]) for p in points]
        colour = 0
        drawn_lines = set()
        for p in points:
            if p.line is None or p.line in drawn_lines:
                continue
            drawn_lines.add(p.line)
            members = [q for q in points if q.line == p.line]
            _errorbar(ax, members, x_metric, y_metric, "o-", palette(colour % 20), p.line)
            for q in members:
                x, y = q.values[x_metric][0], q.values[y_metric][0]
                if x is not None and y is not None:
                    ax.annotate(q.note, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
            colour += 2
        for p in points:
            if p.line is None:
                _errorbar(ax, [p], x_metric, y_metric, "s", palette(colour % 20), p.label)
                colour += 1
        front = sorted((xy[i] for i in pareto_front(xy)), key=lambda v: v[0])
        if front:
            ax.scatter(
                [x for x, _ in front], [y for _, y in front], s=160, facecolors="none", edgecolors="black",
                linewidths=1, zorder=3,
            )  # fmt: skip
            ax.step(
                [x for x, _ in front], [y for _, y in front], where="pre", linestyle="--", color="grey",
                linewidth=1, label="Pareto front",
            )  # fmt: skip
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(path)


def _errorbar(ax, points: list[Point], x_metric: str, y_metric: str, fmt: str, colour, label: str) -> None:
    kept = [
        p
        for p in points
        if p.values.get(x_metric, (None,))[0] is not None and p.values[y_metric][0] is not None
    ]
    if not kept:
        return
    ax.errorbar(
        [p.values[x_metric][0] for p in kept],
        [p.values[y_metric][0] for p in kept],
        xerr=[p.values[x_metric][1] for p in kept],
        yerr=[p.values[y_metric][1] for p in kept],
        fmt=fmt,
        color=colour,
        capsize=2,
        markersize=6,
        label=label,
    )
