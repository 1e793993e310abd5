"""The CIFAR-10-LT study rerun through recipes/compare_objectives.py, with the view cache: what the comparison cost
against its one-hot runs, and whether it reproduces the committed study's rows.

The rerun (one worker, one thread, the other core busy with another job; about 100 min):

    OMP_NUM_THREADS=1 python recipes/compare_objectives.py recipes/configs/compare_cifar10_lt.yaml \
        --dataset_name ../shared/datasets/cifar10 --objectives ce kd ada_alpha balanced_kd robust_kd \
        --settings robust_kd:dro_tradeoff=0.5 --seeds 0 1 2 --output_dir benchmarks/work/cifar10_lt_compare/out

the plain one-hot runs it is measured against (the same ce students, augmented online, without the view cache):

    OMP_NUM_THREADS=1 python recipes/compare_objectives.py recipes/configs/compare_cifar10_lt.yaml \
        --dataset_name ../shared/datasets/cifar10 --objectives ce --settings none --seeds 0 1 2 \
        --view_cache false --output_dir benchmarks/work/cifar10_lt_compare/plain_ce      # baselines only, no teacher

the study's other settings with the same teacher and views (reproduction and table only; --also):

    C="recipes/compare_objectives.py recipes/configs/compare_cifar10_lt.yaml --dataset_name ../shared/datasets/cifar10
       --teacher_model_name_or_path benchmarks/work/cifar10_lt_compare/out/models/teacher/teacher
       --baselines_from benchmarks/work/cifar10_lt_compare/out"
    python $C --objectives label_smoothing kd kd_pt kd_sim ada_margin robust_kd --seeds 0 \
        --settings kd:kd_convention=mix robust_kd:dro_tradeoff=0,0.25,0.75,1 --output_dir .../rest
    python $C --objectives ada_margin --settings none --seeds 0 1 2 --output_dir .../ada_margin

and, after a code change, the first comparison again with its teacher given (--second: its cost, the first run's
teacher training counted): the first command with --teacher_model_name_or_path .../out/models/teacher/teacher
--output_dir .../out2. Then ``python benchmarks/cifar10_lt_rerun.py`` writes benchmarks/results/cifar10_lt_rerun.json and the rerun's own
table (cifar10_lt_rerun_table.md, through make_cifar10_lt_table.py).

Cost: the comparison's elapsed time (first run start to last run end: the teacher, the views, 3 baselines and 12
students, one after another) over one teacher training plus 15 plain ce runs (the mean of the measured ones).
Reproduction: every setting of the rerun against the same setting of benchmarks/results/cifar10_lt.json, by the
study's rule (a difference of means over seeds counts when it exceeds 2·s_p).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import sys
from pathlib import Path

from hf_fairkd.compare.stats import RULE, Diff
from hf_fairkd.io_utils import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts by plain name, as scale.py's

import cifar10_lt_study as study_module  # noqa: E402
import make_cifar10_lt_table as table_module  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "benchmarks" / "work" / "cifar10_lt_compare"
RESULTS = REPO / "benchmarks" / "results"
METRICS = ("accuracy", "worst_class_accuracy", "worst_k_accuracy", "many", "medium")
GOAL = 1.15  # the bound on elapsed / (teacher + 15 ce runs)


def run_files(folder: Path) -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((folder / "runs").glob("*.json"))]


def code_versions(runs: list[dict]) -> list[str]:
    return sorted(
        {f"{r['code'].get('git_commit')}{'+dirty' if r['code'].get('git_dirty') else ''}" for r in runs}
    )


def window(runs: list[dict]) -> tuple[float, float]:
    """(first start, last end) in epoch seconds, from each run's finish time and wall seconds."""
    ends = [datetime.datetime.fromisoformat(r["finished_at"]).timestamp() for r in runs]
    return min(e - r["wall_seconds"] for e, r in zip(ends, runs)), max(ends)


def train_seconds(log: Path) -> dict[str, float]:
    """Each run's training time alone (the Trainer's ``train_runtime``) from a worker's log: a run's wall time
    less this is its set-up and its test-split evaluation (of the student, and of the teacher and baseline it
    is compared with)."""
    found, current = {}, None
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    for match in re.finditer(r"\[compare\] (\S+): starting|'train_runtime': '([0-9.]+)'", text):
        if match.group(1):
            current = match.group(1)
        elif current is not None:
            found[current] = float(match.group(2))
    return found


def training_alone(runs: list[dict], plain_ce: list[dict], trained: dict, plain_trained: dict) -> dict:
    """Per setting: training seconds (from the logs) against the plain ce runs' own, and the rest of each run
    (set-up, the test-split evaluations), so the cost ratio can be split into training and the rest."""

    def parts(group, seconds):
        timed = [r for r in group if r["key"] in seconds]
        if not timed:
            return None
        train = statistics.fmean(seconds[r["key"]] for r in timed)
        rest = statistics.fmean(r["wall_seconds"] - seconds[r["key"]] for r in timed)
        return round(train, 1), round(rest, 1)

    reference = parts(plain_ce, plain_trained)
    out = {
        "plain_ce": {"train_seconds": reference[0], "rest_of_the_run_seconds": reference[1]}
        if reference
        else None
    }
    for key, group in _by_setting([r for r in runs if r["kind"] in ("baseline", "student")]).items():
        found = parts(group, trained)
        if found:
            out[key] = {"train_seconds": found[0], "rest_of_the_run_seconds": found[1]}
            if reference:
                out[key]["train_over_plain_ce_train"] = round(found[0] / reference[0], 3)
    return out


def cost(runs: list[dict], plain_ce: list[dict], teacher_run: dict | None = None) -> dict:
    """The comparison's cost against one teacher training plus its student runs as plain ce runs; a comparison
    given the teacher (``teacher_run``: the run that trained it) counts that run's wall seconds as its own."""
    by_kind = {
        kind: [r for r in runs if r["kind"] == kind] for kind in ("teacher", "views", "baseline", "student")
    }
    teacher = (by_kind["teacher"][0] if by_kind["teacher"] else teacher_run)["wall_seconds"]
    start, end = window(runs)
    if not by_kind["teacher"]:
        start -= teacher  # as if the teacher had trained right before the first run
    ce_views = statistics.fmean(r["wall_seconds"] for r in by_kind["baseline"])
    students = by_kind["baseline"] + by_kind["student"]
    out = {
        "elapsed_seconds": round(end - start, 1),
        "summed_run_wall_seconds": round(
            sum(r["wall_seconds"] for r in runs) + (0 if by_kind["teacher"] else teacher), 1
        ),
        "teacher_wall_seconds": teacher,
        "views_wall_seconds": [r["wall_seconds"] for r in by_kind["views"]],
        "student_runs": len(students),
        "mean_wall_seconds_per_objective": {
            key: round(statistics.fmean(r["wall_seconds"] for r in group), 1)
            for key, group in _by_setting(students).items()
        },
        "ce_on_the_views_mean_wall_seconds": round(ce_views, 1),
    }
    reference = ce_views
    if plain_ce:
        reference = statistics.fmean(r["wall_seconds"] for r in plain_ce)
        out["plain_ce_wall_seconds"] = [r["wall_seconds"] for r in plain_ce]
    out["reference"] = (
        "plain ce runs (augmented online, no view cache)"
        if plain_ce
        else "the ce runs on the views (no plain ce run)"
    )
    denominator = teacher + len(students) * reference
    out["teacher_plus_ce_equivalent_seconds"] = round(denominator, 1)
    out["ratio_elapsed"] = round((end - start) / denominator, 3)
    out["ratio_summed_runs"] = round(out["summed_run_wall_seconds"] / denominator, 3)
    out["goal"] = f"<= {GOAL}"
    out["met"] = out["ratio_elapsed"] <= GOAL
    return out


def second_run(folder: Path, log: Path, first: list[dict], plain_ce: list[dict], plain_trained: dict):
    """The cost of the same comparison run again (after a code change) with the first run's teacher given."""
    if not (folder / "plan.json").is_file():
        return None
    runs = run_files(folder)
    plan = json.loads((folder / "plan.json").read_text(encoding="utf-8"))
    teacher = next(r for r in first if r["kind"] == "teacher")
    return {
        "folder": str(folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder),
        "teacher": "the first run's (given), its wall seconds counted",
        "missing_runs": [r["key"] for r in plan["runs"] if r["key"] not in {x["key"] for x in runs}],
        "code": code_versions(runs),
        "cost": cost(runs, plain_ce, teacher_run=teacher) if runs else None,
        "training_alone": training_alone(runs, plain_ce, train_seconds(log), plain_trained),
        "teacher_batches_of_each_student": teacher_batches(runs),
    }


def _by_setting(runs: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["key"].rsplit("/seed", 1)[0], []).append(r)
    return groups


def teacher_batches(runs: list[dict]) -> dict:
    """Each student's own count of its batches by teacher signal (``train_cached``: the stored views' logits;
    ``train_online``: a teacher forward), from its record: the variant ran as named."""
    return {
        r["key"]: (r["record"].get("settings") or {}).get("teacher_batches")
        for r in runs
        if r["kind"] == "student"
    }


def reproduction(committed: study_module.Study, rerun: study_module.Study) -> dict:
    """Per setting and metric: rerun vs committed by the rule; reproduced = no difference beyond 2·s_p."""
    out = {}
    for key in rerun.settings():
        old_key = committed.find(key.teacher, key.objective, key.b, key.convention)
        if old_key is None:
            continue
        new_runs, old_runs = rerun.groups[key], committed.groups[old_key]
        rows = {}
        for metric in METRICS:
            d = Diff(rerun.values(new_runs, metric), committed.values(old_runs, metric))
            rows[metric] = {"text": d.text(), "outcome": d.outcome}
        out[rerun.label(key)] = {
            "seeds": [len(new_runs), len(old_runs)],
            "metrics": rows,
            "reproduced": all(r["outcome"] in ("within", "one seed") for r in rows.values()),
        }
    teachers = {}
    for name, run in rerun.teacher_runs.items():
        old = committed.teacher_runs.get(name)
        if old:
            teachers[name] = {
                m: f"{100 * run['report'][m]:.1f} vs {100 * old['report'][m]:.1f}"
                for m in ("accuracy", "worst_class_accuracy")
            }
    return {"settings": out, "teachers (one run each)": teachers}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--comparison", default=str(WORK / "out"))
    parser.add_argument("--plain_ce", default=str(WORK / "plain_ce"))
    parser.add_argument(
        "--logs",
        nargs="*",
        default=[str(WORK / "worker1.log"), str(WORK / "plain_ce.log")],
        help="the comparison's log and the plain ce runs' log, in this order (training seconds per run)",
    )
    parser.add_argument(
        "--second",
        default=str(WORK / "out2"),
        help="the same comparison run again after a code change, the first one's teacher given (cost only)",
    )
    parser.add_argument("--second_log", default=str(WORK / "worker2.log"))
    parser.add_argument(
        "--also",
        nargs="*",
        default=[str(WORK / "rest"), str(WORK / "ada_margin")],
        help="comparisons of the study's other settings on the same teacher (reproduction and table, not cost)",
    )
    parser.add_argument("--output", default=str(RESULTS / "cifar10_lt_rerun.json"))
    parser.add_argument("--table_dir", default=str(RESULTS), help="where the rerun's table and plot go")
    options = parser.parse_args(argv)
    folder, plain = Path(options.comparison), Path(options.plain_ce)
    also = [Path(f) for f in options.also if (Path(f) / "plan.json").is_file()]
    runs = run_files(folder)
    extra_runs = [r for f in also for r in run_files(f)]
    plain_ce = [r for r in run_files(plain) if r["kind"] == "baseline"] if (plain / "runs").is_dir() else []
    logged = [train_seconds(Path(log)) for log in options.logs] + [{}, {}]  # the comparison's, plain ce's
    committed = study_module.Study(json.loads((RESULTS / "cifar10_lt.json").read_text(encoding="utf-8")))
    rerun = study_module.Study(study_module.from_comparisons([folder, *also]))
    plan = json.loads((folder / "plan.json").read_text(encoding="utf-8"))
    result = {
        "command": "see benchmarks/cifar10_lt_rerun.py",
        "plan": {"digest": plan["digest"], "runs": [r["key"] for r in plan["runs"]]},
        "missing_runs": [r["key"] for r in plan["runs"] if r["key"] not in {x["key"] for x in runs}],
        "also": {
            str(f.relative_to(REPO) if f.is_relative_to(REPO) else f): sorted(r["key"] for r in run_files(f))
            for f in also
        },
        "code": code_versions(runs),
        "cost": cost(runs, plain_ce),
        "teacher_batches_of_each_student": teacher_batches(runs + extra_runs),
        "training_alone": training_alone(runs, plain_ce, *logged[:2]),
        "second_run": second_run(Path(options.second), Path(options.second_log), runs, plain_ce, logged[1]),
        "rule": RULE,
        "reproduction": reproduction(committed, rerun),
    }
    atomic_write_json(options.output, result)
    table_module.main(
        [
            "--comparisons",
            str(folder),
            *map(str, also),
            "--output_md",
            str(Path(options.table_dir) / "cifar10_lt_rerun_table.md"),
            "--output_png",
            str(Path(options.table_dir) / "cifar10_lt_rerun_pareto.png"),
        ]
    )
    print(json.dumps({k: result[k] for k in ("missing_runs", "cost")}, indent=1))
    return result


if __name__ == "__main__":
    main()
