"""recipes/compare_objectives.py end to end on the embedded digits with tiny ViTs: ce, kd and robust_kd with one
seed, one teacher and one baseline reused by every student, the reports, one push of the chosen student to the
local Hub, a rerun that trains nothing, and the refusals that come before any training."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from test_recipes import ROOT, TINY, load_recipe

REPO_ID = "test-user/compare-e2e"


@pytest.fixture(scope="module")
def compared(hub_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "out"
    argv = [*TINY, "--output_dir", str(out), "--objectives", "ce", "kd", "robust_kd", "--seeds", "0",
            "--settings", "robust_kd:dro_update_every=2", "--push_to_hub", "true", "--hub_model_id", REPO_ID,
            "--hub_token", hub_server.token]  # fmt: skip
    requests = hub_server.stats["commit"]
    result = load_recipe("compare_objectives").main(argv)
    pushed = {"requests": hub_server.stats["commit"] - requests, "commits": hub_server.commits(REPO_ID)}
    return out, argv, result, pushed


def load_benchmark(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_file(out, stem):
    return json.loads((out / "runs" / f"{stem}.json").read_text())


def test_comparison_writes_its_reports_and_reuses_one_teacher_and_baseline(compared):
    out, _, result, _ = compared
    assert result["new_runs"] == 4
    report = json.loads((out / "comparison.json").read_text())
    assert [r["key"] for r in report["runs"]] == [
        "teacher", "baseline/seed0", "kd/seed0", "robust_kd/dro_update_every=2/seed0"
    ]  # fmt: skip
    for run in report["runs"]:
        metrics = run["metrics"]
        assert {
            "accuracy",
            "worst_class_accuracy",
            "worst_class",
            "worst_group_accuracy",
            "worst_group",
        } <= set(metrics)
        assert metrics["worst_group"].startswith("stroke=")  # the digits' group column
        assert run["wall_seconds"] > 0 and run["cpu_seconds"] > 0 and run["code"]["hf_fairkd"]
    assert report["missing_runs"] == [] and report["choice"]["rule"] == "best_worst_group"
    assert [s["label"] for s in report["settings"]] == [
        "ce (baseline)",
        "kd",
        "robust_kd (dro_update_every=2)",
    ]
    text = (out / "comparison.md").read_text()
    for row in ("| ce (baseline) | 1 |", "| kd | 1 |", "| robust_kd (dro_update_every=2) | 1 |"):
        assert row in text
    assert "## Which objective should I use" in text and "Missing runs: none (4 of 4" in text
    assert (out / "comparison_pareto.png").read_bytes()[:4] == b"\x89PNG"
    # every student distilled from the one teacher and was compared with the one baseline of its seed
    baseline = run_file(out, "baseline--seed0")["record"]["student"]["per_class"]
    for stem in ("kd--seed0", "robust_kd--dro_update_every=2--seed0"):
        record = run_file(out, stem)["record"]
        assert record["baseline"]["per_class"] == baseline
        assert record["settings"]["teacher_given"] and record["settings"]["teacher_objective"] == "erm"
        assert record["settings"]["baseline_model"].startswith("reused")
    assert (
        run_file(out, "robust_kd--dro_update_every=2--seed0")["record"]["settings"]["objective_params"][
            "dro_update_every"
        ]
        == 2
    )
    assert not (out / "models" / "kd--seed0" / "teacher").exists()  # no student run trained a teacher


def test_the_chosen_student_is_pushed_once_with_its_comparison(compared, hub_server):
    out, _, result, pushed = compared
    assert pushed["requests"] == 1 and len(pushed["commits"]) == 2  # the Hub's initial commit + ONE publish
    files = hub_server.files(REPO_ID)
    assert {"model.safetensors", "config.json", "README.md", "subgroup_metrics.json", "comparison.md",
            "comparison.json", "comparison_pareto.png"} <= set(files)  # fmt: skip
    card = files["README.md"].decode()
    assert "Chosen by the hf-fairkd objective comparison" in card and "comparison.md" in card
    label = json.loads((out / "comparison.json").read_text())["choice"]["label"]
    assert label.split(" ")[0] in card
    assert result["published"] and json.loads((out / "published.json").read_text())["repo_id"] == REPO_ID
    assert all(hub_server.token.encode() not in content for content in files.values())


def test_a_rerun_trains_nothing_and_publishes_nothing_again(compared, hub_server):
    out, argv, _, _ = compared
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    requests = hub_server.stats["commit"]
    again = load_recipe("compare_objectives").main(argv)
    assert again["new_runs"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == stamps
    assert hub_server.stats["commit"] == requests


def test_another_plan_in_the_same_folder_is_refused_before_training(compared):
    out, argv, _, _ = compared
    with pytest.raises(ValueError, match="holds another plan.*runs only in this one: baseline/seed1"):
        load_recipe("compare_objectives").main([*argv, "--seeds", "0", "1"])
    assert not (out / "models" / "baseline--seed1").exists()


@pytest.mark.slow  # a second comparison; the views test also gives a teacher and trains none
def test_a_given_teacher_is_used_by_every_student_and_not_trained(compared, tmp_path):
    out, *_ = compared
    teacher = out / "models" / "teacher" / "teacher"
    other = tmp_path / "given"
    argv = [*TINY, "--output_dir", str(other), "--objectives", "kd", "--seeds", "1", "--choose", "best_overall",
            "--teacher_model_name_or_path", str(teacher)]  # fmt: skip
    result = load_recipe("compare_objectives").main(argv)
    assert [r["key"] for r in result["comparison"]["runs"]] == ["baseline/seed1", "kd/seed1"]
    record = run_file(other, "kd--seed1")["record"]
    assert (
        record["teacher"] == run_file(out, "teacher")["record"]["teacher"]
    )  # the same model, the same test split
    assert not (other / "models" / "teacher").exists()
    assert "teacher given (" in (other / "comparison.md").read_text()


def test_with_augmentation_every_run_trains_on_views_drawn_once(compared, tmp_path, caplog):
    """--augment: the teacher's views are built once (the views run), the baseline and every student train on
    them, and no student runs the teacher per step: its batches carry the stored logits."""
    import logging

    out, *_ = compared
    teacher = out / "models" / "teacher" / "teacher"
    other = tmp_path / "views"
    argv = [*TINY, "--output_dir", str(other), "--objectives", "kd", "--seeds", "0", "--choose", "best_overall",
            "--teacher_model_name_or_path", str(teacher), "--augment", "true"]  # fmt: skip
    with caplog.at_level(logging.INFO):
        result = load_recipe("compare_objectives").main(argv)
    assert [r["key"] for r in result["comparison"]["runs"]] == ["views", "baseline/seed0", "kd/seed0"]
    views = run_file(other, "views")["record"]["views"]
    assert views["epochs"] == 1 and views["view_seed"] == 0 and views["kind"] == "dense"
    assert (other / "models" / "views" / "view_cache.json").is_file() or any(
        (other / "models" / "views").iterdir()
    )
    assert (
        "Batches carry cached teacher logits: they are used and the online teacher is not run." in caplog.text
    )
    settings = run_file(other, "kd--seed0")["record"]["settings"]
    assert settings["objective"] == "kd"
    assert settings["teacher_batches"] == {"train_cached": 6}  # every step from the stored views, none online
    # the study's table reads such a folder (the views run is no model); a run in two folders counts once
    md = tmp_path / "t.md"
    load_benchmark("make_cifar10_lt_table").main(
        [
            "--comparisons",
            str(other),
            str(other),
            "--output_md",
            str(md),
            "--output_png",
            str(tmp_path / "p.png"),
        ]
    )
    assert "| erm → kd | 1 |" in md.read_text() and "Missing runs: none" in md.read_text()
    with pytest.raises(ValueError, match="--view_cache caches augmented views: it needs --augment"):
        load_recipe("compare_objectives").main(
            [*argv[:-2], "--view_cache", "true", "--output_dir", str(tmp_path / "x")]
        )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--objectives", "ce", "robsut_kd"], "did you mean 'robust_kd'?"),
        (["--settings", "robust_kd:dro_tradof=0.5"], "did you mean 'dro_tradeoff'?"),
        (["--settings", "robust_kd:dro_groups=class_x_groups"], "is not one of"),
        (["--settings", "kd:dro_tradeoff=0.5"], "objective 'kd' has no setting 'dro_tradeoff'"),
        (["--objective", "kd"], "--objective (use --objectives)"),
        (["--choose", "best_worst_group", "--group_columns", "none"], "needs groups of the data"),
    ],
)
def test_bad_names_are_refused_before_anything_trains(tmp_path, extra, message):
    out = tmp_path / "out"
    argv = [*TINY, "--output_dir", str(out), "--objectives", "ce", "kd", "robust_kd", *extra]
    with pytest.raises(ValueError) as err:
        load_recipe("compare_objectives").main(argv)
    assert message in str(err.value)
    assert not out.exists()  # not even the plan was written


def test_the_study_scripts_read_a_comparison_folder(compared, tmp_path):
    out, *_ = compared
    table = load_benchmark("make_cifar10_lt_table")
    md, png = tmp_path / "t.md", tmp_path / "p.png"
    table.main(["--comparisons", str(out), "--output_md", str(md), "--output_png", str(png)])
    text = md.read_text()
    assert "| ce | 1 |" in text and "| erm → kd | 1 |" in text and "| erm → robust_kd (b=1) | 1 |" in text
    assert "written by `recipes/compare_objectives.py`" in text and "Missing runs: none" in text


@pytest.mark.slow  # two processes under accelerate launch, end to end
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback is for machines without a GPU")
def test_the_recipe_under_accelerate_launch_on_two_processes(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(port), str(ROOT / "recipes" / "compare_objectives.py"), *TINY,
           "--output_dir", str(out), "--objectives", "ce", "kd", "--seeds", "0", "1"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "comparison.json").read_text())
    assert report["missing_runs"] == [] and len(report["runs"]) == 5
    assert all(run["processes"] == 2 for run in report["runs"])
    record = run_file(out, "kd--seed1")["record"]
    assert record["settings"]["world_size"] == 2
    assert sum(row["support"] for row in record["student"]["per_class"]) == 300  # gathered once, no padding


def test_another_comparison_reuses_the_baselines_and_refuses_other_training_flags(compared, tmp_path):
    """--baselines_from: a comparison with another teacher flag and other kd settings takes the first one's
    baseline (run file marked shared_from, model linked, every student compared with it) and trains only its
    student; other training flags are refused, naming the flag, before anything trains."""
    out, *_ = compared
    teacher = out / "models" / "teacher" / "teacher"

    def argv(folder, *extra):
        return [*TINY, "--output_dir", str(folder), "--objectives", "kd", "--seeds", "0", "--choose", "best_overall",
                "--teacher_model_name_or_path", str(teacher), "--temperature", "2", "--baselines_from", str(out),
                *extra]  # fmt: skip

    other = tmp_path / "second"
    result = load_recipe("compare_objectives").main(argv(other))
    assert result["new_runs"] == 1  # the kd student only
    shared = run_file(other, "baseline--seed0")
    assert (
        shared["shared_from"] == str(out) and shared["record"] == run_file(out, "baseline--seed0")["record"]
    )
    link = other / "models" / "baseline--seed0"
    assert link.is_symlink() and link.resolve() == (out / "models" / "baseline--seed0").resolve()
    record = run_file(other, "kd--seed0")["record"]
    assert record["baseline"]["per_class"] == shared["record"]["student"]["per_class"]
    assert record["settings"]["objective_params"]["temperature"] == 2
    assert "Missing runs: none" in (other / "comparison.md").read_text()

    refused = tmp_path / "refused"
    with pytest.raises(
        ValueError, match=r"baselines were trained with other settings.*learning_rate: 0\."
    ) as err:
        load_recipe("compare_objectives").main(argv(refused, "--learning_rate", "0.5"))
    assert "drop --baselines_from" in str(err.value)
    assert not refused.exists()
    with pytest.raises(ValueError, match="no plan.json there"):
        load_recipe("compare_objectives").main(argv(refused, "--baselines_from", str(tmp_path)))


def test_the_rerun_benchmark_prices_a_comparison_against_its_ce_runs(compared, tmp_path):
    """benchmarks/cifar10_lt_rerun.py on a finished comparison: the cost ratio recomputed from the run files
    (elapsed from the first start to the last end, over the teacher plus one ce run per student run), each
    student's teacher signal, and the rows matched with the committed study."""
    import datetime

    out, *_ = compared
    rerun = load_benchmark("cifar10_lt_rerun")
    tables = tmp_path / "results"
    tables.mkdir()
    result = rerun.main(
        [
            "--comparison",
            str(out),
            "--plain_ce",
            str(tmp_path / "none"),
            "--output",
            str(tmp_path / "r.json"),
            "--table_dir",
            str(tables),
            "--second",
            str(out),
            "--second_log",
            str(tmp_path / "none.log"),
            "--also",
        ]  # fmt: skip
    )
    runs = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    ends = {r["key"]: datetime.datetime.fromisoformat(r["finished_at"]).timestamp() for r in runs}
    starts = [ends[r["key"]] - r["wall_seconds"] for r in runs]
    teacher = next(r for r in runs if r["kind"] == "teacher")["wall_seconds"]
    ce = next(r for r in runs if r["kind"] == "baseline")["wall_seconds"]
    students = sum(r["kind"] in ("baseline", "student") for r in runs)
    expected = (max(ends.values()) - min(starts)) / (teacher + students * ce)
    assert result["cost"]["ratio_elapsed"] == pytest.approx(expected, abs=1e-3)
    assert result["cost"]["student_runs"] == 3 and result["missing_runs"] == []
    assert result["second_run"]["cost"] == result["cost"] and result["second_run"]["missing_runs"] == []
    batches = result["teacher_batches_of_each_student"]
    assert set(batches) == {"kd/seed0", "robust_kd/dro_update_every=2/seed0"}
    assert all(sum(counts.values()) > 0 for counts in batches.values()), batches
    assert "ce" in result["reproduction"]["settings"]
    assert "| ce | 1 |" in (tables / "cifar10_lt_rerun_table.md").read_text()


def test_a_comparison_of_baselines_alone_trains_no_teacher(tmp_path):
    out = tmp_path / "plain"
    argv = [*TINY, "--output_dir", str(out), "--objectives", "ce", "--settings", "none", "--seeds", "0", "1",
            "--choose", "best_overall"]  # fmt: skip
    result = load_recipe("compare_objectives").main(argv)
    assert [r["key"] for r in result["comparison"]["runs"]] == ["baseline/seed0", "baseline/seed1"]
    assert not (out / "models" / "teacher").exists()
    assert run_file(out, "baseline--seed1")["record"]["student"]["accuracy"] > 0


def test_a_teacher_built_from_a_config_here_serves_the_views_and_students(tmp_path):
    """The CIFAR-10-LT preset's shape: the teacher trained here from a config file at its own resolution, then the
    views and the students take it as a given teacher (the flags that built it do not contradict it there)."""
    from test_recipes import TINY_RESNET

    config = tmp_path / "resnet.json"
    config.write_text(json.dumps(TINY_RESNET))
    out = tmp_path / "out"
    argv = [*TINY, "--output_dir", str(out), "--objectives", "ce", "kd", "--settings", "none", "--seeds", "0",
            "--teacher_config_name", str(config), "--teacher_image_size", "16", "--augment", "true",
            "--choose", "best_overall"]  # fmt: skip
    result = load_recipe("compare_objectives").main(argv)
    assert [r["key"] for r in result["comparison"]["runs"]] == [
        "teacher",
        "views",
        "baseline/seed0",
        "kd/seed0",
    ]
    settings = run_file(out, "kd--seed0")["record"]["settings"]
    assert settings["teacher_given"] and settings["teacher_batches"] == {"train_cached": 6}
    assert (out / "models" / "teacher" / "teacher" / "config.json").is_file()


def test_the_students_of_one_worker_predict_its_teacher_and_baseline_once(compared, tmp_path, monkeypatch):
    """A given teacher's and a seed's baseline's test predictions are made once per worker process and kept for
    the next student (prediction_memo); the students' records are those of fresh predictions."""
    from hf_fairkd.run import prediction_memo, stages

    out, *_ = compared
    prediction_memo.clear()
    made, real = [], stages.predict_logits

    def counted(trainer, dataset):
        made.append(getattr(trainer, "predicts_only", False))
        return real(trainer, dataset)

    monkeypatch.setattr(stages, "predict_logits", counted)
    other = tmp_path / "given"
    argv = [*TINY, "--output_dir", str(other), "--objectives", "kd", "robust_kd", "--seeds", "0", "--choose",
            "best_overall", "--teacher_model_name_or_path", str(out / "models" / "teacher" / "teacher")]  # fmt: skip
    load_recipe("compare_objectives").main(argv)
    # the baseline run predicts its student; each student run its student; the teacher and baseline once in all
    assert made.count(False) == 3 and made.count(True) == 2, made
    first, second = (run_file(other, stem)["record"] for stem in ("kd--seed0", "robust_kd--seed0"))
    assert first["teacher"] == second["teacher"] and first["baseline"] == second["baseline"]
    fresh = json.loads((out / "models" / "teacher" / "teacher" / "subgroup_metrics.json").read_text())
    assert first["teacher"]["per_class"] == fresh["teacher"]["per_class"]  # the teacher run's own predictions


def test_a_kept_prediction_is_not_reused_for_other_weights_or_a_model_in_memory(tmp_path):
    from types import SimpleNamespace

    import numpy as np
    from transformers import TrainingArguments

    from hf_fairkd.run import prediction_memo

    prediction_memo.clear()
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"1234")
    args = TrainingArguments(output_dir=str(tmp_path / "o"), report_to=[])

    class Rows(list):
        _fingerprint, format = "f0", {"type": None, "columns": None}

    rows = Rows(range(3))
    trainer = SimpleNamespace(
        model=SimpleNamespace(config=SimpleNamespace(_name_or_path=str(folder))),
        args=args,
        processing_class=None,
    )
    calls = []

    def predict(trainer, data):
        calls.append(1)
        return np.full((3, 2), float(len(calls)), dtype=np.float32), np.zeros(3)

    first = prediction_memo.predict(trainer, rows, predict)
    assert (
        prediction_memo.predict(trainer, rows, predict)[0].tolist() == first[0].tolist() and len(calls) == 1
    )
    (folder / "model.safetensors").write_bytes(b"123456")  # other weights in the same folder
    assert prediction_memo.predict(trainer, rows, predict)[0][0, 0] == 2.0 and len(calls) == 2
    rows._fingerprint = "f1"  # other test rows
    assert prediction_memo.predict(trainer, rows, predict)[0][0, 0] == 3.0
    in_memory = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(_name_or_path="")), args=args)
    prediction_memo.predict(in_memory, rows, predict)
    prediction_memo.predict(in_memory, rows, predict)
    assert len(calls) == 5  # a model not loaded from a folder is predicted every time


def test_the_rerun_benchmark_counts_a_given_teachers_training():
    rerun = load_benchmark("cifar10_lt_rerun")

    def run(key, kind, minute, wall):
        return {"key": key, "kind": kind, "finished_at": f"2026-12-07T10:0{minute}:00", "wall_seconds": wall}

    runs = [
        run("views", "views", 1, 60),
        run("baseline/seed0", "baseline", 3, 120),
        run("kd/seed0", "student", 6, 180),
    ]
    cost = rerun.cost(runs, [{"wall_seconds": 100}, {"wall_seconds": 140}], teacher_run={"wall_seconds": 600})
    # 10:00:00 (the views' start) to 10:06:00 is 360 s, plus the given teacher's 600; per student run 120 s of ce
    assert cost["elapsed_seconds"] == 960 and cost["summed_run_wall_seconds"] == 960
    assert cost["teacher_plus_ce_equivalent_seconds"] == 600 + 2 * 120
    assert cost["ratio_elapsed"] == round(960 / 840, 3) and cost["met"] is True  # 1.143 <= 1.15
