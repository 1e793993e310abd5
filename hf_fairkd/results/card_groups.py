"""The card's Subgroups section: accuracy per group of each group column (an attribute of the data such as
site or camera), the worst group of each model, the lowest class x group cells and the intersections.

Groups come from the record's reports (:mod:`hf_fairkd.metrics.groups`); the hurt / helped verdicts from
:func:`hf_fairkd.results.schema.group_verdicts_of`, the rule used for classes. A group with training rows
and no test rows is shown as "no test rows", never as an accuracy.
"""

from __future__ import annotations

from typing import Any

from hf_fairkd.results.card_text import escape_markdown_cell, fmt, names_list, num, p_text
from hf_fairkd.results.schema import ROLES, group_columns_of, group_key_label, group_verdicts_of

__all__ = ["MAX_GROUP_ROWS", "MAX_CELL_ROWS", "groups_body"]

MAX_GROUP_ROWS = 12  # groups of a column shown in its table; the rest are counted and left to the JSON file
MAX_CELL_ROWS = 5  # lowest class x group cells of the student shown per column
NO_TEST_ROWS = "no test rows"
MODEL_NAMES = {"teacher": "Teacher", "baseline": "One-hot baseline", "student": "Distilled student"}
GROUP_HEADER = [
    "Group",
    "Train count",
    "Test support",
    "Teacher",
    "One-hot baseline",
    "Distilled student",
    "Student − baseline",
    "McNemar p",
]
CELL_HEADER = [
    "Cell (class&group)",
    "Train count",
    "Test support",
    "One-hot baseline",
    "Distilled student",
    "Student − baseline",
    "McNemar p",
]
WORST_HEADER = ["Model", "Worst group", "Accuracy", "Simultaneous interval"]
INTERSECTION_HEADER = [
    "Groups",
    "Groups with test rows",
    "Worst group of the student",
    "Student",
    "Simultaneous interval",
    "Baseline on it",
    "Hurt",
    "Helped",
]


def _summary(metrics: dict, role: str, key: str) -> dict:
    return ((metrics.get(role) or {}).get("groups") or {}).get(key) or {}


def _count(value: Any) -> str:
    return "n/a" if value is None else escape_markdown_cell(value)


def _interval(low: Any, high: Any) -> str:
    return f"[{fmt(low)}, {fmt(high)}]" if num(low) is not None and num(high) is not None else "n/a"


def _acc(group: dict) -> str:
    """Accuracy with its interval; "no test rows" for a group without test rows; "n/a" when not measured."""
    if not group:
        return "n/a"
    if group.get("support") == 0:
        return NO_TEST_ROWS
    text = fmt(group.get("accuracy"))
    if num(group.get("ci_low")) is not None:
        text += f" {_interval(group.get('ci_low'), group.get('ci_high'))}"
    return text


def _student_order(by_group: dict) -> list[str]:
    """Groups with test rows, lowest student accuracy first (ties: larger support first, then the name)."""
    seen = [g for g, row in by_group.items() if row.get("support") and num(row.get("accuracy")) is not None]
    return sorted(seen, key=lambda g: (num(by_group[g]["accuracy"]), -by_group[g]["support"], g))


def _shown_groups(by_group: dict) -> tuple[list[str], int]:
    """The groups a column's table shows (report order; when there are too many, the groups without test
    rows and the lowest student accuracies) and how many are left out."""
    names = list(by_group)
    if len(names) <= MAX_GROUP_ROWS:
        return names, 0
    missing = [g for g in names if by_group[g].get("support") == 0][:MAX_GROUP_ROWS]
    lowest = _student_order(by_group)[: MAX_GROUP_ROWS - len(missing)]
    return lowest + missing, len(names) - len(lowest) - len(missing)


def _group_rows(metrics: dict, key: str, names: list[str], deltas: dict, verdicts: dict) -> list[list[str]]:
    student = _summary(metrics, "student", key)["by_group"]
    rows = []
    for name in names:
        row = student[name]
        d = deltas.get(name) or {}
        missing = row.get("support") == 0
        rows.append(
            [
                escape_markdown_cell(name),
                _count(row.get("train_count")),
                _count(row.get("support")),
                *[_acc(_summary(metrics, role, key).get("by_group", {}).get(name) or {}) for role in ROLES],
                "n/a" if missing else fmt(d.get("delta"), True),
                "n/a" if missing else p_text(d, verdicts.get(name)),
            ]
        )
    return rows


def _worst_rows(metrics: dict, key: str) -> list[list[str]]:
    rows = []
    for role in (r for r in ROLES if _summary(metrics, r, key)):
        summary = _summary(metrics, role, key)
        low, high = summary.get("worst_group_accuracy_ci") or (None, None)
        rows.append(
            [
                MODEL_NAMES[role],
                escape_markdown_cell(summary.get("worst_group")),
                fmt(summary.get("worst_group_accuracy", summary.get("min"))),
                _interval(low, high),
            ]
        )
    return rows


def _cells(metrics: dict, column: str, deltas: dict, verdicts: dict) -> dict[str, Any]:
    """The lowest class x column cells of the student, and the counts of cells for the sentence on them all."""
    key = f"class&{column}"
    by_group = _summary(metrics, "student", key).get("by_group") or {}
    if not by_group:
        return {"cell_rows": []}
    baseline = _summary(metrics, "baseline", key).get("by_group") or {}
    cell_deltas = {row["group"]: row for row in deltas.get(key) or []}
    cell_verdicts = verdicts.get(key) or {}
    order = _student_order(by_group)
    rows = []
    for name in order[:MAX_CELL_ROWS]:
        row, d = by_group[name], cell_deltas.get(name) or {}
        rows.append(
            [
                escape_markdown_cell(name),
                _count(row.get("train_count")),
                _count(row.get("support")),
                fmt((baseline.get(name) or {}).get("accuracy")) if baseline else "n/a",
                _acc(row),
                fmt(d.get("delta"), True),
                p_text(d, cell_verdicts.get(name)),
            ]
        )
    hurt = [g for g, v in cell_verdicts.items() if v == "hurt"]
    return {
        "cell_rows": rows,
        "cells_seen": len(order),
        "cells_missing": sum(1 for row in by_group.values() if row.get("support") == 0),
        "cells_hurt": (names_list(hurt, 10) or "none") if verdicts else None,
    }


def _column_section(metrics: dict, column: str, deltas: dict, verdicts: dict) -> dict[str, Any]:
    student = _summary(metrics, "student", column)
    by_group = student.get("by_group") or {}
    names, left_out = _shown_groups(by_group)
    column_deltas = {row["group"]: row for row in deltas.get(column) or []}
    return {
        "column": escape_markdown_cell(column),
        "rows": _group_rows(metrics, column, names, column_deltas, verdicts.get(column) or {}),
        "num_groups": len(by_group),
        "left_out": left_out,
        "worst_rows": _worst_rows(metrics, column),
        "spread": {k: fmt(student.get(k)) for k in ("min", "max", "difference", "ratio")},
        **_cells(metrics, column, deltas, verdicts),
    }


def _intersection_rows(metrics: dict, columns: list[str], deltas: dict, verdicts: dict) -> list[list[str]]:
    """One row per intersection key ("site&camera"): its worst group for the student, hurt and helped."""
    rows = []
    keys = (metrics["student"].get("groups") or {}).keys()
    for key in (k for k in keys if k not in columns and not k.startswith("class&")):
        student = _summary(metrics, "student", key)
        by_group = student.get("by_group") or {}
        worst = student.get("worst_group")
        low, high = student.get("worst_group_accuracy_ci") or (None, None)
        baseline = _summary(metrics, "baseline", key).get("by_group") or {}
        judged = verdicts.get(key) or {}
        seen = sum(1 for row in by_group.values() if row.get("support"))
        hurt = [g for g, v in judged.items() if v == "hurt"]
        helped = [g for g, v in judged.items() if v == "helped"]
        rows.append(
            [
                escape_markdown_cell(group_key_label(key, columns)[len("groups of ") :]),
                f"{seen} of {len(by_group)}",
                escape_markdown_cell(worst),
                fmt(student.get("worst_group_accuracy", student.get("min"))),
                _interval(low, high),
                fmt((baseline.get(worst) or {}).get("accuracy")) if baseline else "n/a",
                (names_list(hurt, 10) or "none") if key in deltas else "n/a",
                (names_list(helped, 10) or "none") if key in deltas else "n/a",
            ]
        )
    return rows


def groups_body(metrics: dict) -> dict[str, Any]:
    """Template values of the Subgroups section and of the Factors line ("subgroups": [] without groups)."""
    columns = [c for c in group_columns_of(metrics) if _summary(metrics, "student", c)]
    deltas = metrics.get("student_minus_baseline_groups") or {}
    verdicts = group_verdicts_of(metrics)
    return {
        "group_header": GROUP_HEADER,
        "worst_group_header": WORST_HEADER,
        "cell_header": CELL_HEADER,
        "intersection_header": INTERSECTION_HEADER,
        "subgroups": [_column_section(metrics, c, deltas, verdicts) for c in columns],
        "intersection_rows": _intersection_rows(metrics, columns, deltas, verdicts) if columns else [],
        "group_columns": names_list(columns),
        "group_cells": any(_summary(metrics, "student", f"class&{c}") for c in columns),
    }
