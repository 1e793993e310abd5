"""The CIFAR-10-LT study's results JSON read as settings: which runs belong together, what was planned and is
missing, and the per-setting numbers the table and the findings are built from.

A *setting* is (teacher, objective, b, kd convention): the runs of one setting differ only by their seed. The
convention is part of the setting for the distillation objectives, so kd in the Hinton and the target-mixing
conventions are two settings (labelled "kd (hinton)" / "kd (mix)" when the study has both). Run names follow
``benchmarks/cifar10_lt_plan.run_key``: "erm/robust_kd/b=0.5/seed1", "None/ce/seed0", "erm/kd/mix/seed0" (a
convention part only when it is not the study's ``config["kd_convention"]``).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import NamedTuple

from hf_fairkd.metrics.paired import delta_verdict

TEACHER_ORDER = ("erm", "balanced", "dro")
STUDENT_ORDER = (
    "ce",
    "label_smoothing",
    "kd",
    "kd_pt",
    "kd_sim",
    "ada_alpha",
    "ada_margin",
    "balanced_kd",
    "robust_kd",
)
# objectives that take kd_convention (hf_fairkd.objectives: every _Distillation subclass)
KD_FAMILY = ("kd", "kd_pt", "kd_sim", "ada_alpha", "ada_margin", "balanced_kd", "robust_kd")
TEACHER_FREE = ("ce", "label_smoothing")  # read no teacher, whatever teacher their run names
CONVENTION_ORDER = ("hinton", "mix")
ACCURACY_METRICS = ("accuracy", "balanced_accuracy", "worst_class_accuracy", "worst_k_accuracy", "rare")


class Setting(NamedTuple):
    teacher: str | None
    objective: str
    b: float | None = None
    convention: str | None = None


def parse_name(name: str, default_convention: str | None = None) -> tuple[Setting, int | None]:
    """(setting, seed) of a run name; a distillation run without a convention part has the study's."""
    parts = name.split("/")
    teacher = None if parts[0] == "None" else parts[0]
    objective = parts[1] if len(parts) > 1 else "?"
    seed = int(parts[-1][4:]) if parts[-1].startswith("seed") and parts[-1][4:].isdigit() else None
    b = convention = None
    for part in parts[2:-1]:
        if part.startswith("b="):
            b = float(part[2:])
        else:
            convention = part
    if objective == "teacher":
        return Setting(teacher, "teacher"), seed
    if convention is None and objective in KD_FAMILY:
        convention = default_convention
    return Setting(teacher, objective, b if objective == "robust_kd" else None, convention), seed


def run_setting(run: dict, default_convention: str | None = None) -> Setting:
    params = run.get("params") or {}
    objective = run["objective"]
    if objective == "teacher":
        return Setting(run["teacher"], "teacher")
    b = params.get("dro_tradeoff") if objective == "robust_kd" else None
    convention = params.get("kd_convention", default_convention) if objective in KD_FAMILY else None
    return Setting(run["teacher"], objective, None if b is None else float(b), convention)


def _order(key: Setting) -> tuple:
    t = (
        -1
        if key.teacher is None
        else TEACHER_ORDER.index(key.teacher)
        if key.teacher in TEACHER_ORDER
        else len(TEACHER_ORDER)
    )
    o = STUDENT_ORDER.index(key.objective) if key.objective in STUDENT_ORDER else len(STUDENT_ORDER)
    c = CONVENTION_ORDER.index(key.convention) if key.convention in CONVENTION_ORDER else -1
    return t, o, str(key.teacher), key.objective, -1.0 if key.b is None else key.b, c


# ------------------------------------------------------------------------------------------------ numbers
def mean_std(values) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def pct(values) -> str:
    """'a ± s' in percent (fractions in), 'a' for one value, 'n/a' for none."""
    mean, std = mean_std(values)
    if mean is None:
        return "n/a"
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def shot(report: dict, group: str) -> float | None:
    return ((report.get("shot_groups") or {}).get(group) or {}).get("accuracy")


def per_class_accuracy(runs: list[dict]) -> dict[str, float]:
    """Class name -> mean accuracy over the runs."""
    rows = defaultdict(list)
    for run in runs:
        for row in run["report"]["per_class"]:
            if row["accuracy"] is not None:
                rows[row["name"]].append(row["accuracy"])
    return {name: statistics.fmean(v) for name, v in rows.items()}


def per_class_delta(runs: list[dict]) -> dict[str, float]:
    """Class name -> mean over seeds of the per-class delta against the same seed's one-hot student."""
    rows = defaultdict(list)
    for run in runs:
        for row in run.get("delta_vs_ce") or []:
            if row.get("delta") is not None:
                rows[row["name"]].append(row["delta"])
    return {name: statistics.fmean(v) for name, v in rows.items()}


def significant_drops(runs: list[dict]) -> dict[str, int]:
    """Class name -> in how many of the runs it dropped significantly below the one-hot student."""
    return class_calls(runs, "hurt")[1]


def class_calls(runs: list[dict], verdict: str = "hurt") -> tuple[int, dict[str, int]]:
    """(runs whose delta rows carry the exact test, class -> in how many of them delta_verdict says ``verdict``)."""
    tested, calls = 0, defaultdict(int)
    for run in runs:
        rows = run.get("delta_vs_ce") or []
        verdicts = [(row["name"], delta_verdict(row)) for row in rows]
        if any(v is not None for _, v in verdicts):
            tested += 1
        for name, v in verdicts:
            if v == verdict:
                calls[name] += 1
    return tested, dict(calls)


def majority(runs: list[dict], verdict: str = "hurt") -> tuple[int, set[str]]:
    """(tested runs, classes called ``verdict`` in more than half of them): the per-class part of the rule."""
    tested, calls = class_calls(runs, verdict)
    return tested, {name for name, count in calls.items() if count > tested / 2}


# ------------------------------------------------------------------------------------------------ the study
class Study:
    """The results JSON as settings, with the plan, the rare classes and per-setting values."""

    def __init__(self, data: dict):
        self.runs, self.config, self.machine = (
            data["runs"],
            data.get("config") or {},
            data.get("machine") or {},
        )
        self.default_convention = self.config.get("kd_convention")
        dataset = self.config.get("dataset") or {}
        self.class_names = list(dataset.get("class_names") or [])
        self.train_counts = list(dataset.get("train_counts") or [])
        if not self.class_names and self.runs:
            self.class_names = [row["name"] for row in self.runs[0]["report"]["per_class"]]
        self.teacher_runs = {r["teacher"]: r for r in self.runs if r["objective"] == "teacher"}
        groups = defaultdict(list)
        for run in self.runs:
            if run["objective"] != "teacher":
                groups[run_setting(run, self.default_convention)].append(run)
        self.planned = list(self.config.get("planned_runs") or [])
        present = {r["name"] for r in self.runs}
        self.missing = [name for name in self.planned if name not in present]
        self.extra = [r["name"] for r in self.runs if self.planned and r["name"] not in set(self.planned)]
        by_name = {r["name"]: run_setting(r, self.default_convention) for r in self.runs}
        self.planned_seeds: dict[Setting, set] = defaultdict(set)
        self.missing_teachers = []
        for name in self.planned:
            key, seed = parse_name(name, self.default_convention)
            key = by_name.get(name, key)
            if key.objective == "teacher":
                if name in self.missing:
                    self.missing_teachers.append(key.teacher)
                continue
            self.planned_seeds[key].add(seed)
            groups.setdefault(key, [])
        self.groups = {k: sorted(groups[k], key=lambda r: r["seed"]) for k in sorted(groups, key=_order)}
        conventions = defaultdict(set)
        for key in self.groups:
            if key.convention is not None:
                conventions[key.objective].add(key.convention)
        self.labelled_conventions = {o for o, c in conventions.items() if len(c) > 1}
        teachers = [k.teacher for k in self.groups if k.teacher is not None] + list(self.teacher_runs)
        self.main_teacher = "erm" if "erm" in teachers else (teachers[0] if teachers else None)
        self.rare_classes, self.rare_definition = self._rare()
        self.b_robust = self._robust_tradeoff()

    def _rare(self) -> tuple[list[str], str]:
        for run in self.runs:
            few = ((run["report"].get("shot_groups") or {}).get("few") or {}).get("classes")
            if few:
                return list(few), "the few-shot group (" + ", ".join(few) + ")"
        if len(self.train_counts) == len(self.class_names) and self.class_names:
            order = sorted(range(len(self.class_names)), key=lambda i: self.train_counts[i])
            rare = [self.class_names[i] for i in order[: max(1, len(order) // 2)]]
            return rare, (
                "the few-shot group is empty here, so the rarest half of the classes by training count ("
                + ", ".join(f"{self.class_names[i]} {self.train_counts[i]}" for i in order[: len(rare)])
                + ")"
            )
        return [], "unknown (the config lists no training counts)"

    def _robust_tradeoff(self) -> float | None:
        b = self.config.get("robust_tradeoff")
        swept = {k.b: len(v) for k, v in self.groups.items() if k.objective == "robust_kd" and v}
        if b is not None and float(b) in swept:
            return float(b)
        return max(swept, key=lambda x: (swept[x], x)) if swept else (None if b is None else float(b))

    # ---------------------------------------------------------------------------------------- look-ups
    def label(self, key: Setting) -> str:
        extras = [] if key.b is None else [f"b={key.b:g}"]
        if key.objective in self.labelled_conventions and key.convention:
            extras.append(key.convention)
        name = key.objective + (f" ({', '.join(extras)})" if extras else "")
        return name if key.teacher is None or key.objective in TEACHER_FREE else f"{key.teacher} → {name}"

    def seeds_text(self, key: Setting) -> str:
        n, planned = len(self.groups.get(key, [])), self.planned_seeds.get(key)
        return f"{n} of {len(planned)}" if planned and n < len(planned) else str(n)

    def find(self, teacher, objective: str, b=None, convention=None) -> Setting | None:
        """The setting; for a distillation objective without ``convention``: the study's, else the only one."""
        if objective == "robust_kd" and b is None:
            b = self.b_robust
        if objective not in KD_FAMILY:
            key = Setting(teacher, objective)
            return key if key in self.groups else None
        matches = [k for k in self.groups if k[:3] == (teacher, objective, b)]
        for c in (convention,) if convention else (self.default_convention, None):
            for key in matches:
                if key.convention == c:
                    return key
        return matches[0] if matches and not convention and len(matches) == 1 else None

    def get(self, teacher, objective: str, b=None, convention=None) -> list[dict]:
        key = self.find(teacher, objective, b, convention)
        return self.groups.get(key, []) if key else []

    def settings(self, teacher="*", objective: str | None = None) -> list[Setting]:
        """Settings with at least one run, in reading order (``teacher="*"``: any teacher)."""
        return [
            k
            for k, runs in self.groups.items()
            if runs and (teacher == "*" or k.teacher == teacher) and objective in (None, k.objective)
        ]

    def value(self, run: dict, metric: str) -> float | None:
        """One run's metric: a report field, a shot group, 'rare' (mean accuracy of the rare classes) or
        'wall_seconds'."""
        report = run["report"]
        if metric == "wall_seconds":
            return run.get("wall_seconds")
        if metric == "rare":
            acc = {row["name"]: row["accuracy"] for row in report["per_class"]}
            values = [acc[n] for n in self.rare_classes if acc.get(n) is not None]
            return statistics.fmean(values) if values else None
        if metric in ("many", "medium", "few"):
            return shot(report, metric)
        return report.get(metric)

    def values(self, runs: list[dict], metric: str) -> list[float]:
        """The metric over the runs (seeds), None dropped; accuracies in percentage points."""
        scale = 100.0 if metric in ACCURACY_METRICS or metric in ("many", "medium", "few") else 1.0
        out = [self.value(r, metric) for r in runs]
        return [scale * v for v in out if v is not None]

    def mean(self, runs: list[dict], metric: str) -> float | None:
        return mean_std(self.values(runs, metric))[0]
