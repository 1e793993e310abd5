"""The CIFAR-10-LT study's plan and bookkeeping: which runs, in which order, what each needs first, and the
per-run result files that make the study resumable and shareable between worker processes.

A run is one (teacher, objective, params, seed). It writes ``<runs_dir>/<file_name>.json`` as soon as it
finishes; a rerun skips every run whose file exists. Several workers take runs from the
same plan (start the script several times): a worker claims a run with an exclusive lock file (``<file_name>.claim``, holding its pid) and
only starts a run whose dependencies (its teacher, the same seed's one-hot student) are done; a claim left
by a dead process is taken over.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TEACHERS = ("erm", "balanced", "dro")  # the study's order: the students of the first (ERM) come first
SEEDED = ("ce", "kd", "ada_alpha", "ada_margin", "balanced_kd", "robust_kd")  # run with every seed
ONE_SEED = ("label_smoothing", "kd_pt", "kd_sim")  # from the first teacher, first seed
OTHER_TEACHER_OBJECTIVES = ("kd", "robust_kd")
OTHER_TEACHER_SEEDED = ("kd",)  # with every seed: "a robust teacher alone" compares it across seeds
TEACHER_SEED = 0  # one teacher of each kind; every student seed distils from it


def spec(teacher, objective, seed, b=None, convention=None) -> dict:
    return {
        "teacher": teacher,
        "objective": objective,
        "seed": seed,
        "dro_tradeoff": b,
        "kd_convention": convention,
    }


def run_key(run: dict) -> str:
    """'erm/robust_kd/b=0.5/seed1', 'None/ce/seed0', 'erm/kd/mix/seed0' (a convention other than the study's)."""
    b = "" if run.get("dro_tradeoff") is None else f"/b={run['dro_tradeoff']:g}"
    convention = f"/{run['kd_convention']}" if run.get("kd_convention") else ""
    return f"{run['teacher']}/{run['objective']}{b}{convention}/seed{run['seed']}"


def file_name(key: str) -> str:
    return key.replace("/", "_").replace("=", "")


def plan_runs(
    teachers, seeds, tradeoffs, robust_tradeoff: float, kd_convention: str, other_convention: str | None
) -> list[dict]:
    """Every run, in the order that keeps the most useful part if the budget runs out.

    1. the first teacher (normally ERM) and the one-hot student (``teacher`` None) of every seed;
    2. every seeded objective from the first teacher, first seed; then the one-seed objectives (kd in the
       other convention, label_smoothing, kd_pt, kd_sim) and the robust_kd sweep over b;
    3. the other teachers, each distilled with kd and robust_kd (b = robust_tradeoff), first seed;
    4. the other seeds of the seeded objectives (robust_kd at b = robust_tradeoff) from the first teacher;
    5. the other seeds of kd from the other teachers.
    """
    first, seed0 = teachers[0], seeds[0]
    if seed0 != TEACHER_SEED:
        raise ValueError(f"the first seed must be {TEACHER_SEED}, the teachers' seed (got {seeds})")
    runs = [spec(None, "ce", seed0), spec(first, "teacher", seed0)]
    runs += [spec(None, "ce", seed) for seed in seeds[1:]]

    def seeded(seed):
        b = {"robust_kd": robust_tradeoff}
        return [spec(first, objective, seed, b.get(objective)) for objective in SEEDED[1:]]

    runs += seeded(seed0)
    if other_convention and other_convention != kd_convention:
        runs.append(spec(first, "kd", seed0, convention=other_convention))
    runs += [spec(first, objective, seed0) for objective in ONE_SEED]
    runs += [spec(first, "robust_kd", seed0, b) for b in sorted(set(tradeoffs) - {robust_tradeoff})]
    for teacher in teachers[1:]:
        runs.append(spec(teacher, "teacher", seed0))
        runs += [
            spec(teacher, objective, seed0, robust_tradeoff if objective == "robust_kd" else None)
            for objective in OTHER_TEACHER_OBJECTIVES
        ]
    for seed in seeds[1:]:
        runs += seeded(seed)
    for seed in seeds[1:]:
        runs += [spec(t, objective, seed) for t in teachers[1:] for objective in OTHER_TEACHER_SEEDED]
    return runs


def dependencies(run: dict) -> list[str]:
    """Keys of the runs this one reads: its teacher's run, and the same seed's one-hot student (paired deltas)."""
    if run["objective"] == "teacher":  # compared with the one-hot student of its seed
        return [run_key(spec(None, "ce", run["seed"]))]
    needs = [] if run["teacher"] is None else [run_key(spec(run["teacher"], "teacher", TEACHER_SEED))]
    if run["objective"] != "ce":
        needs.append(run_key(spec(None, "ce", run["seed"])))
    return needs


class RunFiles:
    """The per-run result files and claims of a study in ``folder``."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{file_name(key)}.json"

    def done(self, key: str) -> bool:
        return self.path(key).exists()

    def read(self, key: str) -> dict:
        with open(self.path(key), encoding="utf-8") as f:
            return json.load(f)

    def all_runs(self, plan: list[dict]) -> list[dict]:
        """The finished runs, in plan order (runs of an older plan that are not in this one come last)."""
        keys = [run_key(r) for r in plan]
        found = {}
        for path in sorted(self.folder.glob("*.json")):
            with open(path, encoding="utf-8") as f:
                run = json.load(f)
            found[run["name"]] = run
        order = {key: i for i, key in enumerate(keys)}
        return sorted(found.values(), key=lambda r: order.get(r["name"], len(order)))

    def claim(self, key: str) -> bool:
        """Take the run for this process; False if another live process has it."""
        lock = self.folder / f"{file_name(key)}.claim"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if _alive(lock):
                    return False
                lock.unlink(missing_ok=True)  # left by a dead process: take it over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return True
        return False

    def release(self, key: str) -> None:
        (self.folder / f"{file_name(key)}.claim").unlink(missing_ok=True)


def _alive(lock: Path) -> bool:
    try:
        pid = int(lock.read_text() or 0)
    except (OSError, ValueError):
        return True  # being written right now
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def next_run(plan: list[dict], files: RunFiles) -> tuple[dict | None, bool]:
    """(the first run of the plan that is not done, not claimed and whose dependencies are done, claimed for
    this process; whether any run is still not done)."""
    left = False
    for run in plan:
        key = run_key(run)
        if files.done(key):
            continue
        left = True
        if all(files.done(need) for need in dependencies(run)) and files.claim(key):
            if files.done(key):  # finished by another worker between the check and the claim
                files.release(key)
                continue
            return run, True
    return None, left
