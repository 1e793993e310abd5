"""The per-group panels of the run plot: test accuracy per group of a group column for the teacher, the one-hot
baseline and the student, with each group's interval. Drawn on axes the caller makes (no pyplot)."""

from __future__ import annotations

import math

from hf_fairkd.results.schema import group_columns_of

__all__ = ["MAX_GROUP_PANELS", "MAX_PANEL_GROUPS", "draw_group_panel", "group_panel_columns", "panel_groups"]

MAX_GROUP_PANELS = 2  # panels below the per-class plot: the first group columns
MAX_PANEL_GROUPS = 10  # groups per panel; with more, the ones with the lowest student accuracy
NO_TEST_ROWS = "no test rows"


def _report(metrics: dict) -> dict:
    return metrics.get("student") or metrics.get("teacher") or {}


def group_panel_columns(metrics: dict) -> list[str]:
    """The group columns that get a panel (at most :data:`MAX_GROUP_PANELS`; [] without groups)."""
    groups = _report(metrics).get("groups") or {}
    return [c for c in group_columns_of(metrics) if c in groups][:MAX_GROUP_PANELS]


def _value(row: dict | None, key: str) -> float:
    value = (row or {}).get(key)
    return math.nan if value is None else float(value)


def panel_groups(metrics: dict, column: str) -> tuple[list[str], int]:
    """The groups a column's panel shows, in report order, and how many groups the column has.

    With more than :data:`MAX_PANEL_GROUPS`: those with the lowest accuracy of the student (of the teacher
    for a teacher's record), groups without test rows last."""
    by_group = _report(metrics)["groups"][column].get("by_group") or {}
    names = list(by_group)
    if len(names) <= MAX_PANEL_GROUPS:
        return names, len(names)

    def rank(name: str) -> tuple:
        acc = _value(by_group[name], "accuracy")
        return (math.isnan(acc), acc, name)

    keep = set(sorted(names, key=rank)[:MAX_PANEL_GROUPS])
    return [n for n in names if n in keep], len(names)


def draw_group_panel(ax, metrics: dict, column: str, models, label) -> None:
    """Bars of accuracy per group of ``column`` for each model in ``models`` ((key, legend label, colour,
    marker) as in :mod:`hf_fairkd.results.plots`), with interval whiskers; ``label`` makes safe tick text.
    A group without test rows gets no bar and the words "no test rows"."""
    names, total = panel_groups(metrics, column)
    present = [m for m in models if (metrics.get(m[0]) or {}).get("groups", {}).get(column)]
    width = 0.8 / max(len(present), 1)
    for j, (key, _, colour, _) in enumerate(present):
        by_group = metrics[key]["groups"][column].get("by_group") or {}
        xs = [i + (j - (len(present) - 1) / 2) * width for i in range(len(names))]
        acc = [_value(by_group.get(n), "accuracy") for n in names]
        low = [_value(by_group.get(n), "ci_low") for n in names]
        high = [_value(by_group.get(n), "ci_high") for n in names]
        ax.bar(xs, [0.0 if math.isnan(a) else a for a in acc], width=width, color=colour, zorder=2)
        whiskers = [
            (x, a, a - lo, hi - a)
            for x, a, lo, hi in zip(xs, acc, low, high)
            if not (math.isnan(a) or math.isnan(lo) or math.isnan(hi))
        ]
        if whiskers:
            wx, wy, down, up = (list(v) for v in zip(*whiskers))
            ax.errorbar(
                wx, wy, yerr=[down, up], fmt="none", ecolor="#333333", elinewidth=0.8, capsize=2, zorder=3
            )
    by_main = _report(metrics)["groups"][column].get("by_group") or {}
    for i, name in enumerate(names):
        if (by_main.get(name) or {}).get("support") == 0:
            ax.text(i, 0.03, NO_TEST_ROWS, rotation=90, ha="center", va="bottom", fontsize=7, color="#666666")
    ax.set_xticks(range(len(names)))
    tilt = len(names) > 4  # long rows of names are tilted so that they do not overlap
    ax.set_xticklabels(
        [label(n) for n in names], rotation=30 if tilt else 0, ha="right" if tilt else "center", fontsize=8
    )
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("test accuracy of the group", fontsize=8)
    shown = f" ({len(names)} of {total}: lowest accuracy)" if total > len(names) else ""
    ax.set_title(f"Accuracy per group of {label(column)}{shown}", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
