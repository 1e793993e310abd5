"""The one schema of a run's results: the subgroup_metrics.json record, its settings, the hurt / helped rule,
the file names and the format version.

Every producer builds the record with :func:`build_run_record` (the recipes, the trainer's card from its
eval_dataset, the comparison recipe); cards, plots and the Hub push only read it.
NaN / inf become None through :func:`hf_fairkd.io_utils.nan_to_none`, the package's one JSON cleaner.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from hf_fairkd.io_utils import nan_to_none

__all__ = [
    "CARD_FILE",
    "EVAL_RESULTS_FILE",
    "FORMAT_VERSION",
    "METRICS_FILE",
    "NAMED_SETTINGS",
    "PLOT_FILE",
    "RECORD_KEYS",
    "ROLES",
    "build_run_record",
    "class_verdicts",
    "format_summary",
    "group_columns_of",
    "group_key_label",
    "group_verdicts_of",
    "groups_hurt_and_helped",
    "public_name",
    "record_from_info",
    "run_settings",
]

FORMAT_VERSION = 2  # 2: the reports no longer carry n_bootstrap (the card block is the same as in 1)
METRICS_FILE = "subgroup_metrics.json"
PLOT_FILE = "per_class_accuracy.png"
CARD_FILE = "README.md"
EVAL_RESULTS_FILE = ".eval_results/hf_fairkd.yaml"
# The models a record can hold, in the order cards and plots show them.
ROLES = ("teacher", "baseline", "student")
# Keys every record has, whichever models it holds.
RECORD_KEYS = ("format_version", "class_names", "train_counts", "dataset", "settings")
# Settings that name a dataset or a model (a local one by its own name only: :func:`public_name`).
NAMED_SETTINGS = ("dataset_name", "student_model", "teacher_model", "baseline_model")


def public_name(name_or_path: str | None) -> str | None:
    """How a record names a dataset, model or config: a local folder or file by its own name (the last part of
    its path), so that no local path is published; anything else (a Hub id, a preset) as it is."""
    if not name_or_path:
        return name_or_path
    text = str(name_or_path)
    path = os.path.expanduser(text)
    if os.path.isabs(path) or text.startswith((".", "~")) or os.path.exists(path):
        return os.path.basename(os.path.normpath(os.path.abspath(path)))
    return text


def _predicted_ids(values) -> np.ndarray:
    values = np.asarray(values)
    return values.argmax(-1) if values.ndim == 2 else values


def build_run_record(
    logits: dict[str, np.ndarray],
    labels,
    *,
    class_names,
    train_counts,
    shot_counts=None,
    dataset: dict | None = None,
    settings: dict,
    groups: Mapping[str, list] | None = None,
    group_train_counts: Mapping[str, Mapping[str, int]] | None = None,
    intervals: bool = True,
) -> dict:
    """The subgroup_metrics.json record: a subgroup report per model, the paired student - baseline deltas,
    the teacher's calibration, the class names and counts, the dataset's metadata and the run's settings.

    ``groups`` ({column: group value per test row}) adds each model's group reports, the paired
    student - baseline deltas per group (``student_minus_baseline_groups``) and ``group_columns``;
    ``group_train_counts`` ({report key: {group: training rows}}) gives the groups their training counts.

    ``logits`` maps roles of :data:`ROLES` to (n, C) logits; a model whose logits are gone may give its
    (n,) predicted class ids (it then gets no calibration). ``shot_counts`` are the per-class counts that
    define the many / medium / few groups (default: ``train_counts``), e.g. the long-tail profile's counts
    before the holdout was carved. ``intervals=False`` leaves the intervals out (point estimates only). The
    dataset's ``source`` is named by :func:`public_name`. Returns a JSON-ready dict (NaN -> None).
    """
    from hf_fairkd.metrics import calibration_report, paired_delta, softmax, subgroup_report

    unknown = sorted(set(logits) - set(ROLES))
    if unknown:
        raise ValueError(f"build_run_record: unknown model role(s) {unknown}; use {list(ROLES)}.")
    names, counts = [str(n) for n in class_names], [int(c) for c in train_counts]
    predicted = {role: _predicted_ids(values) for role, values in logits.items()}
    group_args = {"groups": dict(groups), "group_train_counts": group_train_counts} if groups else {}
    record: dict = {"format_version": FORMAT_VERSION}
    for role in (r for r in ROLES if r in logits):
        record[role] = subgroup_report(
            predicted[role],
            labels,
            class_names=names,
            train_counts=counts,
            shot_counts=shot_counts,
            intervals=intervals,
            **group_args,
        )
    if "student" in predicted and "baseline" in predicted:
        record["student_minus_baseline"] = paired_delta(
            predicted["student"],
            predicted["baseline"],
            labels,
            class_names=names,
            intervals=intervals,
        )
    if groups and "student" in predicted and "baseline" in predicted:
        from hf_fairkd.metrics import paired_group_delta

        record["student_minus_baseline_groups"] = paired_group_delta(
            predicted["student"],
            predicted["baseline"],
            labels,
            dict(groups),
            class_names=names,
            intervals=intervals,
        )
    if groups:
        record["group_columns"] = [str(column) for column in groups]
    if "teacher" in logits and np.ndim(logits["teacher"]) == 2:
        record["teacher_calibration"] = calibration_report(
            softmax(logits["teacher"]), labels, class_names=names
        )
    dataset = dict(dataset or {})
    if dataset.get("source"):
        dataset["source"] = public_name(dataset["source"])
    record.update(class_names=names, train_counts=counts, dataset=dataset, settings=settings)
    return nan_to_none(record)


def record_from_info(
    logits: dict[str, np.ndarray],
    labels,
    info,
    settings: dict,
    *,
    groups: Mapping[str, list] | None = None,
) -> dict:
    """:func:`build_run_record` for a long-tailed dataset described by a ``LongTailInfo``.

    Shot groups come from ``info.long_tail_counts`` (the profile before the holdout was carved: the
    standard groups, e.g. 35 / 35 / 30 on CIFAR-100-LT); the per-class ``train_count`` stays the number of
    images actually trained on. ``groups`` are the group values of the test rows; their training counts
    come from ``info.group_train_counts`` (absent on older infos: no training counts).
    """
    return build_run_record(
        logits,
        labels,
        class_names=info.class_names,
        train_counts=info.train_counts,
        shot_counts=getattr(info, "long_tail_counts", None) or None,
        dataset=info.to_dict(),
        settings=settings,
        groups=groups,
        group_train_counts=getattr(info, "group_train_counts", None) if groups else None,
    )


def run_settings(args, **extra) -> dict:
    """The record's ``settings``: what defines the objective and its targets, plus ``extra`` (models, data).

    ``args`` is a :class:`hf_fairkd.config.DistillationArguments`; no secret (token) is ever read from it. The
    extras of :data:`NAMED_SETTINGS` are named by :func:`public_name` (a local folder by its own name).
    An objective that declares settings (``settings_class``) has each of them, given or default, among its
    ``objective_params`` (which the card prints) and, alone, in ``objective_settings`` (what to pass to
    ``--objective_settings`` to run it again).
    """
    declared = args.resolved_objective_settings()
    settings = {
        "objective": args.objective,
        "objective_params": {**args.objective_params(), **declared},
        **({"objective_settings": declared} if declared else {}),
        "teacher_target_mode": args.teacher_logit_mode,
        "temperature": args.temperature,
        "seed": args.seed,
    }
    settings.update({k: public_name(v) if k in NAMED_SETTINGS else v for k, v in extra.items()})
    return settings


def class_verdicts(record: Mapping) -> dict[int, str | None]:
    """class_id -> "hurt" / "helped" / "no clear change" (None: cannot be judged) of the student against
    the one-hot baseline; empty without a ``student_minus_baseline`` comparison.

    The one place a record is judged: the rule is :func:`hf_fairkd.metrics.paired.delta_verdict` (exact
    McNemar test per class, p < 0.05).
    """
    from hf_fairkd.metrics.paired import delta_verdict

    return {row["class_id"]: delta_verdict(row) for row in record.get("student_minus_baseline") or []}


def group_columns_of(record: Mapping) -> list[str]:
    """The record's group columns: ``group_columns``, else (older records) the report keys without ``&``."""
    if record.get("group_columns"):
        return list(record["group_columns"])
    report = record.get("student") or record.get("teacher") or {}
    return [key for key in report.get("groups") or {} if "&" not in key]


def group_key_label(key: str, columns: list[str]) -> str:
    """How a report key reads in text: "groups of site", "class x site cells" or "groups of site & camera"."""
    if key.startswith("class&") and key not in columns and key[len("class&") :] in columns:
        return f"class x {key[len('class&') :]} cells"
    return "groups of " + (key if key in columns else key.replace("&", " & "))


def group_verdicts_of(record: Mapping) -> dict[str, dict[str, str | None]]:
    """{report key: {group: "hurt" / "helped" / "no clear change" / None}} of the student against the
    baseline, by the rule for classes (:func:`hf_fairkd.metrics.groups.group_verdicts`); empty without
    ``student_minus_baseline_groups``."""
    from hf_fairkd.metrics.groups import group_verdicts

    return group_verdicts(record.get("student_minus_baseline_groups") or {})


def groups_hurt_and_helped(record: Mapping) -> dict[str, tuple[list[str], list[str]]]:
    """{report key: (groups the student is significantly below, above the baseline on)}; empty without
    group deltas."""
    return {
        key: (
            [g for g, v in verdicts.items() if v == "hurt"],
            [g for g, v in verdicts.items() if v == "helped"],
        )
        for key, verdicts in group_verdicts_of(record).items()
    }


def _listed(names: list[str], limit: int = 10) -> str:
    if not names:
        return "none"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _group_summary_lines(record: Mapping, pct) -> list[str]:
    """Per group column the worst group of each model; per report key the groups hurt and helped."""
    columns = group_columns_of(record)
    if not columns:
        return []
    lines = [""]
    for column in columns:
        worst = []
        for role in (r for r in ROLES if record.get(r)):
            summary = (record[role].get("groups") or {}).get(column) or {}
            if summary.get("worst_group") is None:
                continue
            low, high = summary.get("worst_group_accuracy_ci") or (None, None)
            interval = f" [{pct(low).strip()}, {pct(high).strip()}]" if low is not None else ""
            acc = summary.get("worst_group_accuracy", summary.get("min"))
            worst.append(f"{role} {summary['worst_group']} {pct(acc).strip()}{interval}")
        lines.append(f"Worst group of {column} (simultaneous interval): " + ("; ".join(worst) or "n/a"))
    for key, (hurt, helped) in groups_hurt_and_helped(record).items():
        label = group_key_label(key, columns)
        lines.append(
            f"{label[0].upper()}{label[1:]} distillation hurt: {_listed(hurt)}; helped: {_listed(helped)}"
        )
    return lines


def format_summary(record: Mapping) -> str:
    """A closing summary a person can read in a terminal."""

    def pct(value):
        return "  n/a " if value is None else f"{100 * value:5.1f}%"

    lines = ["", f"{'model':<10}{'overall':>9}{'balanced':>10}{'worst class':>13}  worst", "-" * 52]
    for role in ROLES:
        report = record.get(role)
        if report:
            lines.append(
                f"{role:<10}{pct(report['accuracy']):>9}{pct(report['balanced_accuracy']):>10}"
                f"{pct(report['worst_class_accuracy']):>13}  {report['worst_class']}"
            )
    from hf_fairkd.metrics.paired import hurt_and_helped_classes

    hurt, helped = hurt_and_helped_classes(record.get("student_minus_baseline"))
    lines.append("")
    lines.append(
        "Classes distillation hurt (student below the one-hot baseline, exact McNemar test p < 0.05): "
        + (", ".join(hurt) if hurt else "none")
    )
    lines.append("Classes it helped: " + (", ".join(helped) if helped else "none"))
    lines.extend(_group_summary_lines(record, pct))
    return "\n".join(lines)
