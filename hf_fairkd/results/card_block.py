"""The machine-readable ``hf_fairkd`` block of a model card's YAML header, and rebuilding metrics from it.

Measured numbers are rounded to 4 significant digits in the block (the full precision stays in
subgroup_metrics.json); names, counts, the dataset description and the run settings are stored verbatim.
"""

from __future__ import annotations

import math
from typing import Any

from hf_fairkd.io_utils import nan_to_none
from hf_fairkd.results.schema import FORMAT_VERSION, ROLES, group_columns_of

__all__ = [
    "CARD_BLOCK_KEY",
    "SIGNIFICANT_DIGITS",
    "card_block",
    "check_card_record",
    "expand_card_block",
    "round_sig",
]

CARD_BLOCK_KEY = "hf_fairkd"
SIGNIFICANT_DIGITS = 4
BLOCK_SCALARS = (
    "num_examples",
    "accuracy",
    "balanced_accuracy",
    "worst_class_accuracy",
    "worst_class",
    "worst_class_accuracy_ci",
    "confidence_level",
    "interval_method",
    "worst_class_interval_method",
    "worst_class_interval_classes",
)
DELTA_KEYS = ("delta", "n10", "n01", "p_value", "ci_low", "ci_high")
# Per group of a report key: measured by each model, and the scalars of its group summary.
GROUP_LISTS = ("accuracy", "ci_low", "ci_high")
GROUP_SCALARS = (
    "worst_group",
    "worst_group_accuracy",
    "worst_group_accuracy_ci",
    "best_group",
    "min",
    "max",
    "difference",
    "ratio",
    "balanced_accuracy",
)
# A report key with more groups than this (e.g. class x site cells of 1,000 classes) stays out of the block
# (named under ``groups_left_out``); its numbers are only in subgroup_metrics.json.
BLOCK_MAX_GROUPS = 400


def round_sig(obj: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """Copy of ``obj`` with every finite float rounded to ``digits`` significant digits (recursively).

    Integers, booleans, strings and None are unchanged; NaN/inf become None.
    """
    if isinstance(obj, dict):
        return {key: round_sig(value, digits) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_sig(value, digits) for value in obj]
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else None
    return nan_to_none(obj)


def check_card_record(metrics: dict) -> None:
    """Refuse a record that a card cannot be built from (it needs the student's per-class report)."""
    if not isinstance(metrics, dict) or not isinstance(metrics.get("student"), dict):
        raise ValueError(
            "metrics must be the subgroup_metrics.json dict with at least a 'student' subgroup report; "
            "build it with hf_fairkd.metrics.subgroup_report (see the spec's subgroup_metrics.json format)."
        )
    if "per_class" not in metrics["student"]:
        raise ValueError(
            "metrics['student'] has no 'per_class' list; pass a report from hf_fairkd.metrics.subgroup_report."
        )


def class_names(metrics: dict) -> list[str]:
    return list(metrics.get("class_names") or [row["name"] for row in metrics["student"]["per_class"]])


def train_counts(metrics: dict) -> list[int | None]:
    return list(
        metrics.get("train_counts") or [row.get("train_count") for row in metrics["student"]["per_class"]]
    )


def card_block(metrics: dict) -> dict:
    """Compact, machine-readable results stored in the card's YAML under ``hf_fairkd`` (NaN -> None)."""
    check_card_record(metrics)
    student = metrics["student"]
    block: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "class_names": class_names(metrics),
        "train_counts": train_counts(metrics),
        "shot_thresholds": student.get("shot_thresholds"),
    }
    if student.get("shot_counts") is not None and student["shot_counts"] != block["train_counts"]:
        block["shot_counts"] = student["shot_counts"]
    for key in ROLES:
        report = metrics.get(key)
        if not report:
            continue
        small = {k: report.get(k) for k in BLOCK_SCALARS if k in report}
        small["shot_accuracy"] = {s: g.get("accuracy") for s, g in (report.get("shot_groups") or {}).items()}
        small["per_class_accuracy"] = [row["accuracy"] for row in report["per_class"]]
        small["per_class_support"] = [row["support"] for row in report["per_class"]]
        block[key] = round_sig(small)
    deltas = metrics.get("student_minus_baseline")
    if deltas:
        keys = [k for k in DELTA_KEYS if k in deltas[0]]
        block["student_minus_baseline"] = round_sig({k: [row.get(k) for row in deltas] for k in keys})
    _add_groups(block, metrics)
    dataset = metrics.get("dataset") or {}
    keep = (
        "source", "profile", "imbalance_factor", "seed", "rare_classes", "holdout_per_class", "test_carved",
    )  # fmt: skip
    block["dataset"] = {k: dataset[k] for k in keep if k in dataset}
    block["settings"] = metrics.get("settings") or {}
    return nan_to_none(block)


def _lists(rows: list[dict], keys) -> dict[str, list]:
    """{key: one value per row} for the keys that any row has a value for (all-None lists are left out)."""
    columns = {k: [row.get(k) for row in rows] for k in keys}
    return {k: v for k, v in columns.items() if any(x is not None for x in v)}


def _add_groups(block: dict, metrics: dict) -> None:
    """Add the groups to ``block``: ``group_columns``; ``groups`` {report key: names, train_count, support}
    (shared by the models); each model's ``groups`` {report key: accuracy and interval lists, summary
    scalars}; ``student_minus_baseline_groups`` {report key: delta lists}; ``groups_left_out`` {report key:
    number of groups} for keys too large for the block."""
    student_groups = metrics["student"].get("groups") or {}
    if not student_groups:
        return
    shared: dict[str, dict] = {}
    left_out: dict[str, int] = {}
    for key, summary in student_groups.items():
        by_group = summary.get("by_group") or {}
        if len(by_group) > BLOCK_MAX_GROUPS:
            left_out[key] = len(by_group)
            continue
        shared[key] = {"names": list(by_group), **_lists(list(by_group.values()), ("train_count", "support"))}
    block["group_columns"] = group_columns_of(metrics)
    block["groups"] = shared
    if left_out:
        block["groups_left_out"] = left_out
    for role in (r for r in ROLES if r in block):
        reports = (metrics.get(role) or {}).get("groups") or {}
        small = {}
        for key, entry in shared.items():
            if key not in reports:
                continue
            by_group = reports[key].get("by_group") or {}
            rows = [by_group.get(name) or {} for name in entry["names"]]
            scalars = {k: reports[key][k] for k in GROUP_SCALARS if k in reports[key]}
            small[key] = round_sig({**_lists(rows, GROUP_LISTS), **scalars})
        if small:
            block[role]["groups"] = small
    deltas = metrics.get("student_minus_baseline_groups") or {}
    if deltas:
        block["student_minus_baseline_groups"] = {
            key: round_sig(
                _lists(
                    [{r["group"]: r for r in deltas[key]}.get(n) or {} for n in entry["names"]], DELTA_KEYS
                )
            )
            for key, entry in shared.items()
            if key in deltas
        }


def _expand_groups(block: dict, out: dict) -> None:
    """Put the block's groups back in the record layout of ``out`` (see :func:`_add_groups`)."""
    from hf_fairkd.metrics.intervals import mcnemar_exact_p

    shared = block.get("groups") or {}
    out["group_columns"] = list(block.get("group_columns") or [])
    for role in (r for r in ROLES if r in out):
        small = block[role].get("groups")
        if not small:
            continue
        summaries = {}
        for key, measured in small.items():
            entry = shared[key]
            names = entry["names"]
            by_group = {}
            for i, name in enumerate(names):
                row = {k: entry[k][i] if k in entry else None for k in ("support", "train_count")}
                by_group[name] = {
                    **row,
                    **{k: measured[k][i] if k in measured else None for k in GROUP_LISTS},
                }
            summaries[key] = {
                "by_group": by_group,
                "num_groups": sum(1 for g in by_group.values() if g.get("support")),
                "missing_groups": [n for n, g in by_group.items() if g.get("support") == 0],
                **{k: measured[k] for k in GROUP_SCALARS if k in measured},
            }
        out[role]["groups"] = summaries
    deltas = {}
    for key, d in (block.get("student_minus_baseline_groups") or {}).items():
        entry, rows = shared[key], []
        for i, name in enumerate(entry["names"]):
            values = {k: d[k][i] for k in DELTA_KEYS if k in d}
            if all(v is None for v in values.values()):
                continue  # the group had no delta row
            if values.get("delta") is not None and None not in (values.get("n10"), values.get("n01")):
                values["p_value"] = float(mcnemar_exact_p(values["n10"], values["n01"]))
            support = entry["support"][i] if "support" in entry else None
            rows.append({"group": name, "support": support, **values})
        deltas[key] = rows
    if deltas:
        out["student_minus_baseline_groups"] = deltas
    if block.get("groups_left_out"):
        out["groups_left_out"] = dict(block["groups_left_out"])


def expand_card_block(block: dict) -> dict:
    """Rebuild the subgroup_metrics.json layout (the fields the card stores) from a card block.

    Numbers carry the block's 4 significant digits; McNemar p-values are recomputed exactly from the
    stored discordant counts, so the hurt / helped verdicts are the same as on the full metrics.
    """
    names, counts = block["class_names"], block.get("train_counts") or [None] * len(block["class_names"])
    out: dict[str, Any] = {
        k: block.get(k) for k in ("format_version", "class_names", "train_counts", "dataset", "settings")
    }
    out["recovered_from"] = "model_card"
    for key in ROLES:
        if key not in block:
            continue
        small = block[key]
        report = {k: small.get(k) for k in BLOCK_SCALARS if k in small}
        report["shot_thresholds"] = block.get("shot_thresholds")
        report["shot_counts"] = block.get("shot_counts", block.get("train_counts"))
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
        rows = [
            {"class_id": i, "name": names[i], **{k: d[k][i] for k in DELTA_KEYS if k in d}}
            for i in range(len(names))
        ]
        if "n10" in d and "n01" in d:
            from hf_fairkd.metrics.intervals import mcnemar_exact_p

            for row in rows:
                if row["n10"] is not None and row["n01"] is not None and row.get("delta") is not None:
                    row["p_value"] = float(mcnemar_exact_p(row["n10"], row["n01"]))
        out["student_minus_baseline"] = rows
    if "groups" in block:
        _expand_groups(block, out)
    return out
