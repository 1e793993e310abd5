"""The finished run files read as settings: each run's headline metrics (overall, worst class, worst group, cost)
and, per setting, its values over seeds and the classes and groups the rule calls hurt or helped."""

from __future__ import annotations

from dataclasses import dataclass, field

from .plan import TEACHER, Run
from .spec import Setting
from .stats import Diff, majority, mean_std

ACCURACY_METRICS = ("accuracy", "balanced_accuracy", "worst_class_accuracy", "worst_group_accuracy")
COST_METRICS = ("wall_seconds", "cpu_seconds")


def run_report(run: dict) -> dict:
    """The report of the model a run trained: the teacher's for the teacher, else the record's student (for a
    baseline run, the baseline itself)."""
    record = run.get("record") or {}
    return record.get("teacher" if run.get("kind") == TEACHER else "student") or {}


def group_columns(run: dict) -> list[str]:
    record = run.get("record") or {}
    return list(record.get("group_columns") or [])


def run_metrics(run: dict) -> dict:
    """accuracy, balanced_accuracy, worst_class_accuracy, worst_class, worst_group_accuracy, worst_group (the
    lowest of the group columns' worst groups, named 'column=group'; None without groups), wall and CPU seconds."""
    report = run_report(run)
    out = {k: report.get(k) for k in ("accuracy", "balanced_accuracy", "worst_class_accuracy", "worst_class")}
    out["worst_group_accuracy"] = out["worst_group"] = None
    for column in group_columns(run):
        summary = (report.get("groups") or {}).get(column) or {}
        value = summary.get("worst_group_accuracy")
        if value is not None and (out["worst_group_accuracy"] is None or value < out["worst_group_accuracy"]):
            out["worst_group_accuracy"], out["worst_group"] = value, f"{column}={summary.get('worst_group')}"
    out.update({k: run.get(k) for k in COST_METRICS})
    return out


def class_rows(run: dict) -> list[dict]:
    """The run's paired rows per class against its seed's baseline (empty for the baseline and the teacher)."""
    return (run.get("record") or {}).get("student_minus_baseline") or []


def group_rows(run: dict) -> list[dict]:
    """The run's paired rows per group of each group column, each named 'column=group'."""
    deltas = (run.get("record") or {}).get("student_minus_baseline_groups") or {}
    return [
        {**row, "name": f"{column}={row['group']}"}
        for column in group_columns(run)
        for row in deltas.get(column) or []
    ]


@dataclass
class SettingSummary:
    """One setting's finished runs (by seed) and the seeds its plan has."""

    setting: Setting
    runs: list[dict] = field(default_factory=list)
    planned_seeds: list[int] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        """The metric of every finished seed, None dropped; accuracies in percentage points."""
        scale = 100.0 if metric in ACCURACY_METRICS else 1.0
        out = [run_metrics(run).get(metric) for run in self.runs]
        return [scale * v for v in out if v is not None]

    def mean(self, metric: str) -> float | None:
        return mean_std(self.values(metric))[0]

    def text(self, metric: str, digits: int = 1) -> str:
        mean, std = mean_std(self.values(metric))
        if mean is None:
            return "n/a"
        return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")

    def diff(self, other: SettingSummary, metric: str) -> Diff:
        return Diff(self.values(metric), other.values(metric))

    def calls(self, verdict: str = "hurt") -> tuple[set[str], set[str]]:
        """(classes, groups) the rule calls ``verdict`` against the baseline in most of the seeds tested."""
        return (
            majority([class_rows(r) for r in self.runs], verdict)[1],
            majority([group_rows(r) for r in self.runs], verdict)[1],
        )

    def tested(self) -> bool:
        return majority([class_rows(r) for r in self.runs])[0] > 0

    def hurts_nothing(self) -> bool:
        hurt_classes, hurt_groups = self.calls("hurt")
        return not hurt_classes and not hurt_groups

    @property
    def seeds_text(self) -> str:
        n, planned = len(self.runs), len(self.planned_seeds)
        return f"{n} of {planned}" if planned and n < planned else str(n)

    @property
    def worst_names(self) -> tuple[str, str]:
        """(the worst classes, the worst groups) of its seeds, e.g. 'truck' or 'cat, truck'."""
        metrics = [run_metrics(r) for r in self.runs]
        return tuple(
            ", ".join(sorted({str(m[k]) for m in metrics if m.get(k) is not None})) or "n/a"
            for k in ("worst_class", "worst_group")
        )


def summarize(plan: list[Run], finished: dict[str, dict]) -> list[SettingSummary]:
    """One summary per compared setting (the baseline first), in plan order, with its finished runs."""
    summaries: dict[Setting, SettingSummary] = {}
    for run in plan:
        setting = run.compared_setting
        if setting is None:
            continue
        summary = summaries.setdefault(setting, SettingSummary(setting))
        summary.planned_seeds.append(run.seed)
        if run.key in finished:
            summary.runs.append(finished[run.key])
    ordered = sorted(summaries.values(), key=lambda s: not s.setting.is_baseline)
    for summary in ordered:
        summary.runs.sort(key=lambda r: r.get("seed", 0))
    return ordered


def has_groups(finished: dict[str, dict]) -> bool:
    return any(group_columns(run) for run in finished.values())
