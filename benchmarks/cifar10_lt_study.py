"""The CIFAR-10-LT study's results read as settings, for its table and findings: the committed results JSON
(``benchmarks/results/cifar10_lt.json``, written by the study script this recipe replaced), or the output folders
of ``recipes/compare_objectives.py recipes/configs/compare_cifar10_lt.yaml`` (one per teacher), converted by
`from_comparisons` into the same runs.

A *setting* is (teacher, objective, b, kd convention): its runs differ only by their seed. Run names read
"erm/robust_kd/b=0.5/seed1", "None/ce/seed0", "erm/kd/mix/seed0" (a convention part only when it is not the
study's ``config["kd_convention"]``). The numbers and the significance rule are `hf_fairkd.compare.stats`'.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from hf_fairkd.compare.stats import mean_std

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


def run_name(teacher, objective: str, seed, b=None, convention=None) -> str:
    return (
        f"{teacher}/{objective}"
        + (f"/b={b:g}" if b is not None else "")
        + (f"/{convention}" if convention else "")
        + f"/seed{seed}"
    )


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
    params, objective = run.get("params") or {}, run["objective"]
    if objective == "teacher":
        return Setting(run["teacher"], "teacher")
    b = params.get("dro_tradeoff") if objective == "robust_kd" else None
    convention = params.get("kd_convention", default_convention) if objective in KD_FAMILY else None
    return Setting(run["teacher"], objective, None if b is None else float(b), convention)


def _order(key: Setting) -> tuple:
    t = -1 if key.teacher is None else TEACHER_ORDER.index(key.teacher) if key.teacher in TEACHER_ORDER else 9
    o = STUDENT_ORDER.index(key.objective) if key.objective in STUDENT_ORDER else len(STUDENT_ORDER)
    c = CONVENTION_ORDER.index(key.convention) if key.convention in CONVENTION_ORDER else -1
    return t, o, str(key.teacher), key.objective, -1.0 if key.b is None else key.b, c


def shot(report: dict, group: str) -> float | None:
    return ((report.get("shot_groups") or {}).get(group) or {}).get("accuracy")


def delta_rows(runs: list[dict]) -> list[list[dict]]:
    """Each run's per-class rows against the same seed's one-hot student (the rule's input)."""
    return [run.get("delta_vs_ce") or [] for run in runs]


# ------------------------------------------------------------------------------------------------ the study
class Study:
    """The results as settings, with the plan, the rare classes and per-setting values."""

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


# ------------------------------------------------------------------------------------------------ the recipe's output
def from_comparisons(folders) -> dict:
    """The study's results from compare_objectives output folders (one per teacher objective, or several of one
    teacher; the first folder's baselines are the ce students, and a setting and seed run in two folders counts
    once, the first folder's), in the committed JSON's form."""
    runs, planned, config = [], [], {}
    for i, folder in enumerate(map(Path, folders)):
        plan = json.loads((folder / "plan.json").read_text(encoding="utf-8"))
        model, data, train = (
            plan["config"].get(k) or {} for k in ("ModelArguments", "DataArguments", "DistillationArguments")
        )
        teacher, convention = model.get("teacher_objective"), train.get("kd_convention")
        default_b = train.get("dro_tradeoff")
        if i == 0:
            config = {
                "writer": "recipes/compare_objectives.py",
                "kd_convention": convention,
                "augment": data.get("augment"),
                "student_epochs": train.get("num_train_epochs"),
                "teacher_epochs": model.get("teacher_num_train_epochs"),
                "image_size": model.get("image_size"),
                "teacher_image_size": model.get("teacher_image_size"),
                **{k: train.get(k) for k in ("learning_rate", "weight_decay", "alpha", "temperature")},
                "batch_size": train.get("per_device_train_batch_size"),
            }
        for spec in plan["runs"]:
            if spec["kind"] == "baseline" and i or spec["kind"] == "views":
                continue  # one ce student per seed: the first folder's; the views are no model
            found = folder / "runs" / f"{_file_name(spec['key'])}.json"
            name = _name(spec, teacher, convention, default_b)
            if name in planned:
                continue  # the same setting and seed in two folders: the first folder's run
            planned.append(name)
            if found.exists():
                runs.append(_study_run(json.loads(found.read_text(encoding="utf-8")), name, teacher))
    if runs:
        record = runs[0].pop("_record")
        config["dataset"] = {
            **(record.get("dataset") or {}),
            "class_names": record["class_names"],
            "train_counts": record["train_counts"],
        }
        config["student_model"] = (record.get("settings") or {}).get("student_model")
    for run in runs:
        run.pop("_record", None)
    config["planned_runs"] = planned
    return {"runs": runs, "config": config, "machine": {}}


def _file_name(key: str) -> str:
    from hf_fairkd.compare.plan import file_name

    return file_name(key)


def _name(spec: dict, teacher: str, convention: str | None, default_b: float | None) -> str:
    if spec["kind"] == "teacher":
        return run_name(teacher, "teacher", spec["seed"])
    if spec["kind"] == "baseline":
        return run_name(None, "ce", spec["seed"])
    settings = spec["settings"]
    other = settings.get("kd_convention") if settings.get("kd_convention") != convention else None
    b = settings.get("dro_tradeoff", default_b) if spec["objective"] == "robust_kd" else None
    return run_name(teacher, spec["objective"], spec["seed"], b, other)


def _study_run(found: dict, name: str, teacher: str) -> dict:
    record = found.get("record") or {}
    kind = found["kind"]
    settings = record.get("settings") or {}
    run = {
        "name": name,
        "teacher": None if kind == "baseline" else teacher,
        "objective": "teacher" if kind == "teacher" else found["objective"],
        "seed": found["seed"],
        "params": dict(
            settings.get("objective_params") or {},
            **({"teacher_objective": teacher} if kind == "teacher" else {}),
        ),
        "report": record.get("teacher" if kind == "teacher" else "student"),
        "delta_vs_ce": record.get("student_minus_baseline"),
        "wall_seconds": found.get("wall_seconds"),
        "code": (found.get("code") or {}).get("git_commit") or (found.get("code") or {}).get("hf_fairkd"),
        "_record": record,
    }
    if kind == "teacher":
        run["calibration"] = record.get("teacher_calibration")
    return run
