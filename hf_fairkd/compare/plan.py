"""The plan of a comparison: its runs, in the order that keeps the most useful part if the budget runs out, what
each needs first, and the plan document that several workers in one folder must share.

A run is (kind, setting, seed): the one ``teacher`` (first seed; absent when a teacher is given), the optional
``views`` (the teacher's augmented views, built once), one ``baseline`` (ce) per seed, and one ``student`` per
setting and seed. A student needs the teacher, the views if planned, and the same seed's baseline (its paired
comparison is against that baseline)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from .spec import BASELINE, Setting

PLAN_FORMAT = 1
TEACHER, VIEWS, BASELINE_KIND, STUDENT = "teacher", "views", "baseline", "student"


@dataclass(frozen=True)
class Run:
    kind: str
    seed: int
    setting: Setting | None = None

    @property
    def key(self) -> str:
        """'teacher', 'views', 'baseline/seed0', 'robust_kd/dro_tradeoff=0.5/seed1'."""
        if self.kind in (TEACHER, VIEWS):
            return self.kind
        if self.kind == BASELINE_KIND:
            return f"baseline/seed{self.seed}"
        return f"{self.setting.key}/seed{self.seed}"

    @property
    def file_name(self) -> str:
        return file_name(self.key)

    @property
    def compared_setting(self) -> Setting | None:
        """The setting this run is a seed of in the comparison (the baseline's is ce); None for teacher/views."""
        return BASELINE if self.kind == BASELINE_KIND else self.setting

    def describe(self) -> dict:
        setting = self.compared_setting
        return {
            "key": self.key,
            "kind": self.kind,
            "seed": self.seed,
            "objective": setting.objective if setting else None,
            "settings": dict(setting.params) if setting else {},
        }


def file_name(key: str) -> str:
    """A run key as a portable file stem: 'robust_kd--dro_tradeoff=0.5--seed1'."""
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", key.replace("/", "--"))


def plan_runs(
    settings: list[Setting], seeds: list[int], train_teacher: bool = True, view_cache: bool = False
) -> list[Run]:
    """Every run: the teacher (and the views), then seed by seed the baseline and every student, so a stopped
    comparison has whole seeds (every setting at the first seed first)."""
    first = seeds[0]
    runs = [Run(TEACHER, first)] if train_teacher else []
    if view_cache:
        runs.append(Run(VIEWS, first))
    for seed in seeds:
        runs.append(Run(BASELINE_KIND, seed))
        runs += [Run(STUDENT, seed, s) for s in settings if not s.is_baseline]
    return runs


def dependencies(run: Run, plan: list[Run]) -> list[str]:
    """Keys of the runs that must be finished before ``run`` starts."""
    keys = {r.key for r in plan}
    if run.kind == TEACHER:
        return []
    if run.kind == BASELINE_KIND:  # it trains on the views when there are any
        return [k for k in (TEACHER, VIEWS) if VIEWS in keys and k in keys]
    needs = [k for k in (TEACHER,) if k in keys]
    if run.kind == STUDENT:
        needs += [k for k in (VIEWS,) if k in keys]
        needs.append(Run(BASELINE_KIND, run.seed).key)
    return needs


# Arguments that do not change what a run computes: they may differ between the workers of one plan.
OPERATIONAL = (
    "output_dir",
    "logging_",
    "report_to",
    "disable_tqdm",
    "push_to_hub",
    "hub_",
    "run_name",
    "save_",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "project",
    "trackio_",
    "log_level",
    "log_on_each_node",
    "local_rank",
    "seed",  # each run has its own
    "objective",  # each run has its own (objective_settings too)
    "max_runs",
    "wait_seconds",
    "choose",
    "runs_dir",
    "rerun_other_code",
    "stale_claim_hours",
    "baselines_from",
)


def base_config(*dataclass_objects) -> dict:
    """What every run of the plan shares, from the arguments: everything but the operational ones."""
    from ..run.arguments import resolved_config

    config = {}
    for name, values in resolved_config(*dataclass_objects).items():
        config[name] = {
            k: v
            for k, v in sorted(values.items())
            if not any(k == o or (o.endswith("_") and k.startswith(o)) for o in OPERATIONAL)
        }
    return config


def plan_document(plan: list[Run], config: dict) -> dict:
    """The plan file's content: the runs, the shared configuration and a digest of both."""
    runs = [r.describe() for r in plan]
    body = json.dumps({"runs": runs, "config": config}, sort_keys=True, default=str)
    return {
        "format": PLAN_FORMAT,
        "digest": hashlib.sha256(body.encode()).hexdigest()[:16],
        "runs": runs,
        "config": json.loads(json.dumps(config, default=str)),
    }


def plan_differences(theirs: dict, ours: dict, limit: int = 6) -> list[str]:
    """How two plan documents differ, in words: runs only in one, configuration values that differ."""
    out = []
    their_keys = [r["key"] for r in theirs.get("runs", [])]
    our_keys = [r["key"] for r in ours.get("runs", [])]
    only_theirs = [k for k in their_keys if k not in our_keys]
    only_ours = [k for k in our_keys if k not in their_keys]
    if only_theirs:
        out.append(f"runs only in the folder's plan: {', '.join(only_theirs[:limit])}")
    if only_ours:
        out.append(f"runs only in this one: {', '.join(only_ours[:limit])}")
    for group in sorted(set(theirs.get("config", {})) | set(ours.get("config", {}))):
        a, b = theirs.get("config", {}).get(group, {}), ours.get("config", {}).get(group, {})
        for name in sorted(set(a) | set(b)):
            if name not in a or name not in b:  # a setting one version of the code has and the other has not
                side = "this version's plan only" if name not in a else "the folder's plan only"
                out.append(f"{name}: in {side} ({(a | b)[name]!r}; the code changed since the folder's plan)")
            elif a[name] != b[name]:
                out.append(f"{name}: {a[name]!r} there, {b[name]!r} here")
    return out[: 2 * limit] or ["the plan format"]
