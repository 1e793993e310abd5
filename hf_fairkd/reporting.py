"""The results of a run: the subgroup_metrics.json record and the summary printed at the end."""

from __future__ import annotations

import numpy as np


def build_run_metrics(
    logits: dict[str, np.ndarray],
    labels: np.ndarray,
    info,
    settings: dict,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """The subgroup_metrics.json record: a subgroup report per model, the paired student - baseline deltas,
    the teacher's calibration, the dataset's metadata and the run's settings.

    Shot groups (many / medium / few) come from ``info.long_tail_counts``, the per-class counts of the
    long-tail profile before the holdout was carved (the standard groups, e.g. 35 / 35 / 30 on
    CIFAR-100-LT); the per-class ``train_count`` stays the number of images actually trained on.
    """
    from .metrics import calibration_report, paired_delta, report_to_jsonable, softmax, subgroup_report

    names, counts = info.class_names, info.train_counts
    shot_counts = getattr(info, "long_tail_counts", None) or counts
    metrics = {"format_version": 1}
    for role, role_logits in logits.items():
        metrics[role] = subgroup_report(
            role_logits.argmax(-1),
            labels,
            class_names=names,
            train_counts=counts,
            shot_counts=shot_counts,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
    if "student" in logits and "baseline" in logits:
        metrics["student_minus_baseline"] = paired_delta(
            logits["student"].argmax(-1),
            logits["baseline"].argmax(-1),
            labels,
            class_names=names,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
    if "teacher" in logits:
        metrics["teacher_calibration"] = calibration_report(
            softmax(logits["teacher"]), labels, class_names=names
        )
    metrics.update(
        class_names=list(names), train_counts=list(counts), dataset=info.to_dict(), settings=settings
    )
    return report_to_jsonable(metrics)


def hurt_and_helped(metrics: dict) -> tuple[list[str], list[str]]:
    """Classes the student is significantly below / above the one-hot baseline on.

    The rule is :func:`hf_fairkd.metrics.paired.delta_verdict` (exact McNemar test per class, p < 0.05).
    """
    from .metrics.paired import hurt_and_helped_classes

    return hurt_and_helped_classes(metrics.get("student_minus_baseline"))


def format_summary(metrics: dict) -> str:
    """A closing summary a person can read in a terminal."""

    def pct(value):
        return "  n/a " if value is None else f"{100 * value:5.1f}%"

    lines = ["", f"{'model':<10}{'overall':>9}{'balanced':>10}{'worst class':>13}  worst", "-" * 52]
    for role in ("teacher", "baseline", "student"):
        report = metrics.get(role)
        if report:
            lines.append(
                f"{role:<10}{pct(report['accuracy']):>9}{pct(report['balanced_accuracy']):>10}"
                f"{pct(report['worst_class_accuracy']):>13}  {report['worst_class']}"
            )
    hurt, helped = hurt_and_helped(metrics)
    lines.append("")
    lines.append(
        "Classes distillation hurt (student below the one-hot baseline, exact McNemar test p < 0.05): "
        + (", ".join(hurt) if hurt else "none")
    )
    lines.append("Classes it helped: " + (", ".join(helped) if helped else "none"))
    return "\n".join(lines)
