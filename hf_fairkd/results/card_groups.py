"""The card's Subgroups section: accuracy per group of each group column (an attribute of the data such as
site or camera), the worst group of each model, the lowest class x group cells and the intersections.

Groups come from the record's reports (:mod:`hf_fairkd.metrics.groups`); the hurt / helped verdicts from
:func:`hf_fairkd.results.schema.group_verdicts_of`, the rule used for classes. A group with training rows
and no test rows is shown as "no test rows", never as an accuracy.
"""

from __future__ import annotations

from typing import Any

from hf_fairkd.results.card_text import _names_list, _p_text, escape_markdown_cell, fmt, num
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
                "n/a" if missing else _p_text(d, verdicts.get(name)),
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
    """The lowest class x column cells of the student, and a sentence on the cells as a whole."""
    key = f"class&{column}"
    by_group = _summary(metrics, "student", key).get("by_group") or {}
    if not by_group:
        return {"cell_rows": [], "cell_sentence": ""}
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
                _p_text(d, cell_verdicts.get(name)),
            ]
        )
    missing = [g for g, row in by_group.items() if row.get("support") == 0]
    hurt = [g for g, v in cell_verdicts.items() if v == "hurt"]
    cells = f"class × {escape_markdown_cell(column)} cells with test rows"
    if len(rows) < len(order):
        sentence = f"The {len(rows)} lowest of the {len(order)} {cells}, lowest student accuracy first"
    else:
        sentence = f"The {len(order)} {cells}, lowest student accuracy first"
    if missing:
        more = "1 more cell has" if len(missing) == 1 else f"{len(missing)} more cells have"
        sentence += f" ({more} training rows but no test rows)"
    if verdicts:
        sentence += f"; cells distillation hurt: {_names_list(hurt, 10) if hurt else 'none'}"
    return {"cell_rows": rows, "cell_sentence": sentence + "."}


def _column_section(metrics: dict, column: str, deltas: dict, verdicts: dict) -> dict[str, Any]:
    student = _summary(metrics, "student", column)
    by_group = student.get("by_group") or {}
    names, left_out = _shown_groups(by_group)
    column_deltas = {row["group"]: row for row in deltas.get(column) or []}
    note = ""
    if left_out:
        note = (
            f"{len(names)} of {len(by_group)} groups are shown (the lowest student accuracy first, then those "
            f"without test rows); {left_out} more are left out. Every group is in `subgroup_metrics.json`."
        )
    spread = ", ".join(f"{k} {fmt(student.get(k))}" for k in ("min", "max", "difference", "ratio"))
    return {
        "column": escape_markdown_cell(column),
        "rows": _group_rows(metrics, column, names, column_deltas, verdicts.get(column) or {}),
        "left_out": note,
        "worst_rows": _worst_rows(metrics, column),
        "spread": f"Student over the groups with test rows: {spread}.",
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
                (_names_list(hurt, 10) or "none") if key in deltas else "n/a",
                (_names_list(helped, 10) or "none") if key in deltas else "n/a",
            ]
        )
    return rows


def groups_body(metrics: dict) -> dict[str, Any]:
    """Template values of the Subgroups section and of the Factors line ("subgroups": [] without groups)."""
    headers = {
        "group_header": GROUP_HEADER,
        "worst_group_header": WORST_HEADER,
        "cell_header": CELL_HEADER,
        "intersection_header": INTERSECTION_HEADER,
    }
    columns = [c for c in group_columns_of(metrics) if _summary(metrics, "student", c)]
    if not columns:
        return {
            **headers,
            "subgroups": [],
            "intersection_rows": [],
            "group_factor": "none evaluated (the run was given no group columns)",
        }
    deltas = metrics.get("student_minus_baseline_groups") or {}
    verdicts = group_verdicts_of(metrics)
    crossed = ["each alone"]
    if any(_summary(metrics, "student", f"class&{c}") for c in columns):
        crossed.append("crossed with the class (class × group cells such as cat&A)")
    if len(columns) > 1:
        crossed.append("and crossed with each other")
    return {
        **headers,
        "subgroups": [_column_section(metrics, c, deltas, verdicts) for c in columns],
        "intersection_rows": _intersection_rows(metrics, columns, deltas, verdicts),
        "group_factor": (
            f"accuracy per value of the group {'column' if len(columns) == 1 else 'columns'} "
            f"{_names_list(columns)} (attributes of the images, not their class), {', '.join(crossed)}; "
            "see Subgroups below"
        ),
    }
