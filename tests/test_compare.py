"""hf_fairkd.compare without training: the plan, claims shared by real processes, the plan file, run files of
another code version, the statistics rule, the choice, the Pareto front and the refusal of bad names."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_fairkd.compare import plan as plan_lib
from hf_fairkd.compare import store as store_lib
from hf_fairkd.compare.choice import choose, pick_best, which_objective_lines
from hf_fairkd.compare.pareto import pareto_front
from hf_fairkd.compare.report import Comparison
from hf_fairkd.compare.spec import BASELINE, Setting, expand_settings, parse_setting_specs
from hf_fairkd.compare.stats import Diff, majority, verdict_vs_baseline
from hf_fairkd.compare.summary import SettingSummary

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ plan
def test_settings_expand_to_the_product_of_sweeps_and_the_plan_to_every_seed():
    settings = expand_settings(
        ["ce", "kd", "robust_kd", "kd"],
        ["robust_kd:dro_tradeoff=0.25,0.5", "robust_kd:dro_groups=class,group", "kd:alpha=0.3"],
    )
    assert settings[0] == BASELINE and [s.objective for s in settings].count("robust_kd") == 4
    robust = {s.params for s in settings if s.objective == "robust_kd"}
    assert robust == {
        (("dro_groups", g), ("dro_tradeoff", b)) for g in ("class", "group") for b in (0.25, 0.5)
    }
    assert Setting("kd", (("alpha", 0.3),)) in settings and Setting("kd") not in settings  # kd only at 0.3
    assert Setting("robust_kd", (("dro_groups", "group"), ("dro_tradeoff", 0.5))).key == (
        "robust_kd/dro_groups=group,dro_tradeoff=0.5"
    )
    runs = plan_lib.plan_runs(settings, [3, 1])
    keys = [r.key for r in runs]
    assert len(keys) == len(set(keys)) == 1 + 2 * (1 + 5)  # teacher; per seed the baseline and 5 students
    assert keys[:3] == ["teacher", "baseline/seed3", "kd/alpha=0.3/seed3"]  # whole seeds, first seed first
    assert keys[7] == "baseline/seed1"
    student = runs[2]
    assert plan_lib.dependencies(student, runs) == ["teacher", "baseline/seed3"]
    assert plan_lib.dependencies(runs[7], runs) == [] and plan_lib.dependencies(runs[0], runs) == []
    given = plan_lib.plan_runs(settings, [0], train_teacher=False, view_cache=False)
    assert given[0].key == "baseline/seed0" and plan_lib.dependencies(given[1], given) == ["baseline/seed0"]
    with_views = plan_lib.plan_runs(settings, [0], view_cache=True)
    assert plan_lib.dependencies(with_views[-1], with_views) == ["teacher", "views", "baseline/seed0"]
    assert plan_lib.file_name("robust_kd/dro_tradeoff=0.5/seed1") == "robust_kd--dro_tradeoff=0.5--seed1"


@pytest.mark.parametrize(
    "objectives, specs, message",
    [
        (["ce", "robsut_kd"], [], "no objective named 'robsut_kd' (did you mean 'robust_kd'?)"),
        (["kd", "dro"], [], "'dro' is a teacher objective"),
        (
            ["robust_kd"],
            ["robust_kd:dro_tradof=0.5"],
            "no setting 'dro_tradof' (did you mean 'dro_tradeoff'?)",
        ),
        (["kd"], ["kd:dro_tradeoff=0.5"], "objective 'kd' has no setting 'dro_tradeoff'"),
        (["kd"], ["robust_kd:alpha=0.5"], "which is not in --objectives kd"),
        (["kd"], ["kd:alpha"], "write OBJECTIVE:NAME=VALUE"),
        (["kd"], ["kd:alpha=0.1", "kd:alpha=0.2"], "gives kd:alpha twice"),
        (["robust_kd"], ["robust_kd:dro_groups=cls"], "is not one of"),
        (["kd"], ["kd:alpha=high"], "is not a valid float"),
    ],
)
def test_bad_objective_or_setting_names_the_nearest(objectives, specs, message):
    with pytest.raises(ValueError) as err:
        expand_settings(objectives, specs)
    assert message in str(err.value)


def test_parse_keeps_the_given_order():
    assert parse_setting_specs(["a:x=1,2", "a:y=z", "b:x=3"]) == {
        "a": {"x": ["1", "2"], "y": ["z"]},
        "b": {"x": ["3"]},
    }


# ------------------------------------------------------------------------------------------------ files
def _plan(seeds=(0, 1)):
    settings = expand_settings(["ce", "kd", "robust_kd"], [])
    return plan_lib.plan_runs(settings, list(seeds))


def test_a_dead_claim_is_taken_over_a_live_one_is_not(tmp_path):
    store = store_lib.RunStore(tmp_path)
    assert store.claim("teacher") and not store.claim("teacher")  # this process holds it
    assert store.claimed("teacher")["pid"] == os.getpid()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = socket.gethostname()
    store.claim_path("baseline/seed0").write_text(
        json.dumps({"pid": int(dead.stdout), "host": host, "since": 0})
    )
    assert store.claim("baseline/seed0") and store.claimed("baseline/seed0")["pid"] == os.getpid()
    # another host's claim cannot be asked: taken over only once it is older than the stale limit
    far = {"pid": 1, "host": "elsewhere", "since": time.time() - 3600}
    store.claim_path("kd/seed0").write_text(json.dumps(far))
    assert not store.claim("kd/seed0")
    assert store_lib.RunStore(tmp_path, stale_claim_hours=0.5).claim("kd/seed0")
    store.release("teacher")
    assert not store.claim_path("teacher").exists()


def test_next_run_waits_for_dependencies_and_skips_finished_runs(tmp_path):
    plan, store = _plan(), store_lib.RunStore(tmp_path)
    first, _ = store_lib.next_run(plan, store)
    second, _ = store_lib.next_run(plan, store)  # another worker: the teacher is taken, so seed 0's baseline
    third, _ = store_lib.next_run(plan, store)
    assert [first.key, second.key, third.key] == ["teacher", "baseline/seed0", "baseline/seed1"]
    assert store_lib.next_run(plan, store) == (None, True)  # every student waits for the teacher
    for run in (first, second):
        store.write(run.key, {"key": run.key})
        store.release(run.key)
    assert store_lib.next_run(plan, store)[0].key == "kd/seed0"
    for run in plan:  # a rerun of a finished plan takes nothing
        store.write(run.key, {"key": run.key})
    assert store_lib.next_run(plan, store) == (None, False)


WORKER = """
import json, os, sys, time
from pathlib import Path
from hf_fairkd.compare import plan as plan_lib, runner, store as store_lib
from hf_fairkd.compare.spec import expand_settings
folder, log = Path(sys.argv[1]), Path(sys.argv[2])
plan = plan_lib.plan_runs(expand_settings(["ce", "kd", "robust_kd", "balanced_kd"], []), [0, 1, 2])
store = store_lib.RunStore(folder)
def run_one(run):
    missing = [k for k in plan_lib.dependencies(run, plan) if not store.done(k)]
    with open(log, "a") as f:
        f.write(json.dumps({"key": run.key, "pid": os.getpid(), "missing": missing}) + "\\n")
    time.sleep(0.15)
    return {"key": run.key}
runner.work(plan, store, run_one, wait_seconds=0.05)
"""


def test_two_worker_processes_share_a_plan_and_run_nothing_twice(tmp_path):
    log = tmp_path / "log.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "runs"), str(log)], env=env, cwd=REPO)
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    keys = [e["key"] for e in entries]
    assert len(keys) == len(set(keys)) == 1 + 3 * 4  # every run exactly once
    assert all(not e["missing"] for e in entries)  # no run started before what it needs
    assert len({e["pid"] for e in entries}) == 2  # both workers took runs
    assert not list((tmp_path / "runs").glob("*.claim"))


def test_a_different_plan_in_the_same_folder_is_refused(tmp_path):
    config = {"DataArguments": {"dataset_name": "digits"}}
    ours = plan_lib.plan_document(_plan(), config)
    assert store_lib.write_plan_once(tmp_path, ours) == ours
    assert (
        store_lib.write_plan_once(tmp_path, plan_lib.plan_document(_plan(), config))["digest"]
        == ours["digest"]
    )
    with pytest.raises(ValueError, match="runs only in this one: baseline/seed2") as err:
        store_lib.write_plan_once(tmp_path, plan_lib.plan_document(_plan((0, 1, 2)), config))
    assert "Use another --output_dir" in str(err.value)
    other = plan_lib.plan_document(_plan(), {"DataArguments": {"dataset_name": "cifar10"}})
    with pytest.raises(ValueError, match="dataset_name: 'digits' there, 'cifar10' here"):
        store_lib.write_plan_once(tmp_path, other)


# ------------------------------------------------------------------------------------------------ results
NAMES = ["a", "b", "c"]


def record(per_class, hurt=(), helped=(), group=None, hurt_groups=()):
    """A run record: the student's per-class report, paired rows against the baseline (p < 0.05 where named)."""
    worst = min(range(len(per_class)), key=per_class.__getitem__)
    student = {
        "accuracy": sum(per_class) / len(per_class),
        "balanced_accuracy": sum(per_class) / len(per_class),
        "worst_class_accuracy": per_class[worst],
        "worst_class": NAMES[worst],
        "per_class": [{"name": n, "accuracy": a} for n, a in zip(NAMES, per_class)],
    }
    rec = {"student": student, "class_names": NAMES}
    rows = [
        {"name": n, "delta": 0.1 if n in helped else -0.1 if n in hurt else 0.0, "p_value": 0.001 if n in hurt + helped else 1.0,
         "n10": 20 if n in helped else 0, "n01": 20 if n in hurt else 0}
        for n in NAMES
    ]  # fmt: skip
    if hurt or helped or group is not None:
        rec["student_minus_baseline"] = rows
    if group is not None:
        rec["group_columns"] = ["site"]
        student["groups"] = {"site": {"worst_group": "x", "worst_group_accuracy": group}}
        rec["student_minus_baseline_groups"] = {
            "site": [
                {
                    "group": "x",
                    "delta": -0.1,
                    "p_value": 0.001 if "x" in hurt_groups else 1.0,
                    "n10": 0,
                    "n01": 20,
                }
            ]
        }
    return rec


def run_file(setting, seed, rec, code=None):
    kind = "baseline" if setting.is_baseline else "student"
    return {"key": f"{setting.key}/seed{seed}", "kind": kind, "seed": seed, "record": rec,
            "code": code or store_lib.code_version(), "wall_seconds": 10.0, "cpu_seconds": 9.0}  # fmt: skip


def summary(setting, records):
    return SettingSummary(
        setting, [run_file(setting, i, r) for i, r in enumerate(records)], list(range(len(records)))
    )


def test_the_rule_against_closed_form_values():
    d = Diff([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])  # s = 1 on both sides: s_p = 1, threshold 2
    assert (d.diff, d.threshold, d.outcome) == (-3.0, 2.0, "lower")
    d = Diff([0.0, 2.0], [1.0, 1.0, 4.0])  # variances 2 and 3: s_p² = (1·2 + 2·3) / 3 = 8/3
    assert d.threshold == pytest.approx(2 * (8 / 3) ** 0.5) and d.outcome == "within"
    assert Diff([5.0], [1.0, 2.0]).outcome == "one seed" and Diff([], [1.0]).outcome == "missing"
    assert Diff([3.1, 4.1, 5.1], [1.0, 2.0, 3.0]).outcome == "higher"  # 2.1 > 2
    assert Diff([2.9, 3.9, 4.9], [1.0, 2.0, 3.0]).outcome == "within"  # 1.9 < 2
    hurt = {"name": "a", "delta": -0.1, "p_value": 0.01, "n10": 0, "n01": 9}
    fine = {"name": "a", "delta": -0.1, "p_value": 0.2, "n10": 2, "n01": 6}
    untested = {"name": "a", "delta": -0.3}  # written before the exact test: not judged
    assert majority([[hurt], [hurt], [fine]]) == (3, {"a"})  # 2 of 3 seeds
    assert majority([[hurt], [fine], [fine]]) == (3, set())
    assert majority([[hurt], [fine], [untested]]) == (2, set())  # 1 of the 2 tested: not more than half
    assert verdict_vs_baseline([3.1, 4.1, 5.1], [1.0, 2.0, 3.0]) == "above ce (+2.1, beyond 2·s_p = 2.0)"
    assert verdict_vs_baseline([5.0], [1.0, 2.0], baseline="b") == "not established: 1 seed(s) against b's 2"


def test_the_choice_follows_the_named_rule():
    base = summary(BASELINE, [record([0.9, 0.5, 0.1], group=0.40), record([0.9, 0.6, 0.1], group=0.42)])
    kd = summary(Setting("kd"), [record([0.95, 0.7, 0.1], group=0.41), record([0.95, 0.7, 0.1], group=0.43)])
    robust = summary(
        Setting("robust_kd", (("dro_tradeoff", 0.5),)),
        [record([0.6, 0.5, 0.4], hurt=("a",), group=0.5, hurt_groups=("x",)) for _ in range(2)],
    )
    tie = summary(Setting("kd", (("alpha", 0.9),)), [record([0.95, 0.7, 0.1], group=0.41)] * 2)
    summaries = [base, kd, robust, tie]
    assert choose(summaries, "best_worst_class").summary is robust
    assert choose(summaries, "best_worst_group").summary is robust
    overall = choose(summaries, "best_overall")  # robust_kd hurts class a: not offered
    assert overall.summary is kd and overall.summary is not tie  # a tie goes to the first
    assert overall.verdict.startswith("above the baseline")
    assert (
        choose([base, summary(Setting("kd"), [record([0.9, 0.5, 0.1])] * 2)], "best_overall").summary is base
    )
    lines = "\n".join(which_objective_lines(summaries, "best_worst_group", groups=True))
    assert (
        "| I care about the worst group | `best_worst_group` (**--choose**) | robust_kd (dro_tradeoff=0.5) |"
        in lines
    )
    assert pick_best([3, 1, 3], lambda v: v) == 3 and pick_best([3, 1, 1], lambda v: v, higher=False) == 1


def test_pareto_front_matches_brute_force():
    def brute(points):
        def dominated(p):
            return any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points if None not in q)

        return {i for i, p in enumerate(points) if None not in p and not dominated(p)}

    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(0, 12)
        points = [(rng.randint(0, 5), rng.randint(0, 5)) for _ in range(n)]  # small ints: ties and duplicates
        points += [(None, 1)] * rng.randint(0, 1)
        assert set(pareto_front(points)) == brute(points), points


def test_runs_of_another_code_version_are_listed_and_retrained_on_request(tmp_path):
    settings = [BASELINE, Setting("kd")]
    plan = plan_lib.plan_runs(settings, [0], train_teacher=False)
    document = plan_lib.plan_document(plan, {})
    old = dict(store_lib.code_version(), git_commit="0ldc0de", hf_fairkd="0.0.9")
    store = store_lib.RunStore(tmp_path, digest=document["digest"])
    store.write(
        "baseline/seed0",
        {**run_file(BASELINE, 0, record([0.5, 0.5, 0.5])), "plan_digest": document["digest"]},
    )
    store.write(
        "kd/seed0",
        {**run_file(Setting("kd"), 0, record([0.6, 0.5, 0.5]), code=old), "plan_digest": document["digest"]},
    )
    assert store.done("kd/seed0")  # kept by default ...
    comparison = Comparison(plan, store.finished(plan), document, "best_worst_class")
    assert comparison.other_code == [
        ("kd/seed0", "0.0.9+git0ldc0de" + (".dirty" if old["git_dirty"] else ""))
    ]
    text = comparison.markdown(plot_name=None)
    assert (
        "Runs from another code version (kept; `--rerun_other_code` retrains them): `kd/seed0` (0.0.9+git0ldc0de"
        in text
    )
    assert comparison.to_json()["other_code_runs"][0]["key"] == "kd/seed0"
    assert not store_lib.RunStore(tmp_path, digest=document["digest"], rerun_other_code=True).done("kd/seed0")
    assert not store_lib.RunStore(tmp_path, digest="another plan").done("baseline/seed0")


def test_the_study_configs_parse_and_pass_every_check_but_the_data():
    """The CIFAR-10-LT study's configs are read by the recipes' one reader; the command line overrides them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "compare_objectives", REPO / "recipes" / "compare_objectives.py"
    )
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    from hf_fairkd.compare.spec import check_settings

    for name in ("compare_cifar10_lt.yaml", "compare_cifar10_lt_gpu.yaml"):
        model_args, data_args, args, _, compare_args = recipe.parse(
            [str(REPO / "recipes" / "configs" / name), "--seeds", "7", "8"]
        )
        assert compare_args.seeds == [7, 8] and data_args.augment and model_args.teacher_objective == "erm"
        settings = expand_settings(compare_args.objectives, compare_args.settings)
        check_settings(args, settings, compare_args.seeds)
        assert len(settings) == 14 and Setting("kd", (("kd_convention", "mix"),)) in settings
        assert len(plan_lib.plan_runs(settings, compare_args.seeds)) == 1 + 2 * 14


def test_a_plan_of_another_code_version_names_the_setting_it_lacks():
    """A folder's plan written before a setting existed (absent there, None here) is named, not 'the plan format'."""
    from hf_fairkd.compare.plan import plan_differences

    theirs = {"runs": [{"key": "teacher"}], "config": {"model": {"teacher_objective": "erm"}}}
    ours = {
        "runs": [{"key": "teacher"}],
        "config": {"model": {"teacher_objective": "erm", "teacher_view_cache": None}},
    }
    assert plan_differences(theirs, ours) == [
        "teacher_view_cache: in this version's plan only (None; the code changed since the folder's plan)"
    ]
    assert plan_differences(ours, theirs) == [
        "teacher_view_cache: in the folder's plan only (None; the code changed since the folder's plan)"
    ]
    assert plan_differences(ours, ours) == ["the plan format"]


def test_a_baseline_depends_on_the_student_training_and_views_not_on_the_teacher_or_other_objectives():
    from hf_fairkd.compare.sharing import baseline_differences

    def document(views_seed=None, **changes):
        config = {
            "ModelArguments": {
                "teacher_model_name_or_path": "t1",
                "teacher_objective": "erm",
                "image_size": 32,
            },
            "DistillationArguments": {"learning_rate": 0.003, "alpha": 0.5, "dro_tradeoff": 1.0, "seed": 0},
            "DataArguments": {"augment": True},
        }
        for name, value in changes.items():
            group = next(g for g, values in config.items() if name in values)
            config[group][name] = value
        runs = [{"kind": "views", "seed": views_seed}] if views_seed is not None else []
        return {"config": config, "runs": runs + [{"kind": "baseline", "seed": 0}]}

    ours = document(views_seed=0)
    same = document(
        views_seed=0, teacher_model_name_or_path="t2", teacher_objective="dro", alpha=0.9, dro_tradeoff=0.5
    )
    assert baseline_differences(same, ours) == []
    assert baseline_differences(document(views_seed=0, learning_rate=0.1), ours) == [
        "learning_rate: 0.1 there, 0.003 here"
    ]
    assert baseline_differences(document(views_seed=0, image_size=48), ours) == [
        "image_size: 48 there, 32 here"
    ]
    assert baseline_differences(document(views_seed=1), ours) == ["view_seed: 1 there, 0 here"]
    assert baseline_differences(document(), ours) == ["views: None there, {'view_seed': 0} here"]


def test_settings_none_drops_a_config_files_settings():
    assert expand_settings(["ce", "kd"], ["none"]) == [BASELINE, Setting("kd")]
    assert expand_settings(["ce"], ["None"]) == [BASELINE]
    with pytest.raises(ValueError, match="--settings for 'robust_kd', which is not in --objectives ce"):
        expand_settings(["ce"], ["robust_kd:dro_tradeoff=0.5"])
