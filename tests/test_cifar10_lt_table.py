"""The CIFAR-10-LT table, findings and "which objective" table, on small hand-built results JSONs, and the
committed study: its table regenerates from its results JSON, byte for byte.

Four classes a, b, c, d with 100, 50, 10 and 5 training images: c and d form the few-shot group (the rare
classes). Accuracies are fractions, as in the study's reports. The benchmark scripts are loaded by file
(benchmarks/ is no package); the significance rule they use is the package's (`hf_fairkd.compare.stats`).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from hf_fairkd.compare.stats import Diff

REPO = Path(__file__).resolve().parent.parent
NAMES, COUNTS = ["a", "b", "c", "d"], [100, 50, 10, 5]


def _load(name: str):
    """A benchmark script by file, registered under its name as its siblings import it (dataclasses
    look their module up there)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def _table():
    return _load("make_cifar10_lt_table")


_findings = _load("cifar10_lt_findings")
HELD, NOT_HELD, NOT_TESTABLE = _findings.HELD, _findings.NOT_HELD, _findings.NOT_TESTABLE
findings, Study = _findings.findings, _findings.Study
parse_name = _findings.study_module.parse_name
which_objective = _load("cifar10_lt_choice").which_objective


def name_of(teacher, objective, seed, b=None, convention=None) -> str:
    return (
        f"{teacher}/{objective}"
        + (f"/b={b:g}" if b is not None else "")
        + (f"/{convention}" if convention else "")
        + f"/seed{seed}"
    )


def make_run(teacher, objective, seed, per_class, b=None, convention=None, hurt=(), wall=100.0, **extra):
    """One run record; ``hurt``: classes whose delta row has an exact-test p < 0.05 with the student worse."""
    acc = sum(per_class) / len(per_class)
    worst = min(range(len(per_class)), key=per_class.__getitem__)
    report = {
        "accuracy": acc,
        "balanced_accuracy": acc,
        "worst_class_accuracy": per_class[worst],
        "worst_class": NAMES[worst],
        "worst_k_accuracy": sum(sorted(per_class)[:2]) / 2,
        "per_class": [{"name": n, "accuracy": a, "support": 100} for n, a in zip(NAMES, per_class)],
        "shot_groups": {
            "many": {"accuracy": sum(per_class[:2]) / 2, "classes": NAMES[:2]},
            "medium": {"accuracy": None, "classes": []},
            "few": {"accuracy": sum(per_class[2:]) / 2, "classes": NAMES[2:]},
        },
    }
    params = {"alpha": 0.5, "temperature": 2.0, "kd_convention": convention or "hinton"}
    if objective in ("ce", "teacher", "label_smoothing"):
        params = {"label_smoothing_epsilon": 0.1} if objective == "label_smoothing" else {}
    if b is not None:
        params["dro_tradeoff"] = b
    delta = None
    if objective not in ("ce", "teacher"):
        delta = [
            {
                "name": n,
                "delta": -0.1 if n in hurt else 0.0,
                "n10": 0,
                "n01": 20 if n in hurt else 0,
                "p_value": 1e-6 if n in hurt else 1.0,
            }
            for n in NAMES
        ]
    name = name_of(teacher, objective, seed, b, convention if convention not in (None, "hinton") else None)
    return {
        "name": name,
        "teacher": teacher,
        "objective": objective,
        "seed": seed,
        "params": params,
        "report": report,
        "delta_vs_ce": delta,
        "wall_seconds": wall,
        **extra,
    }


def shifted(base, delta):
    return [min(1.0, max(0.0, a + delta)) for a in base]


CE = [0.80, 0.60, 0.10, 0.05]


def study_data(seeds=(0, 1, 2)) -> dict:
    """A complete synthetic study, every seed shifted by -1 / 0 / +1 point on every class (so each setting's
    seed std is 1 point): kd gains 8 points over ce and lowers d (rare) in every seed; ada_alpha keeps the gain
    and recovers d; robust_kd raises the worst class; balanced_kd is best on the rare and the worst class;
    the kd students follow their teachers' ECE (balanced > dro > erm), not their accuracy (erm > balanced > dro)."""
    runs = []
    teachers = (
        ("erm", 0.30, [0.95, 0.90, 0.40, 0.35]),
        ("balanced", 0.05, [0.80, 0.70, 0.50, 0.40]),
        ("dro", 0.10, [0.80, 0.70, 0.40, 0.30]),
    )
    for t, ece, acc in teachers:
        runs.append(make_run(t, "teacher", 0, acc, wall=300.0, calibration={"ece": ece, "log_loss": 1.0}))
    noise = {0: -0.01, 1: 0.0, 2: 0.01}
    for s in seeds:
        e = noise[s]
        runs.append(make_run(None, "ce", s, shifted(CE, e), wall=90.0))
        runs.append(make_run("erm", "kd", s, shifted([0.92, 0.80, 0.12, 0.03], e), hurt=("d",)))
        runs.append(make_run("erm", "ada_alpha", s, shifted([0.92, 0.80, 0.12, 0.06], e)))
        runs.append(make_run("erm", "robust_kd", s, shifted([0.80, 0.60, 0.25, 0.20], e), b=1.0, hurt=("a",)))
        runs.append(make_run("erm", "balanced_kd", s, shifted([0.50, 0.45, 0.40, 0.40], e), hurt=("a", "b")))
        runs.append(make_run("balanced", "kd", s, shifted([0.92, 0.82, 0.16, 0.06], e)))
        runs.append(make_run("dro", "kd", s, shifted([0.92, 0.81, 0.14, 0.05], e), wall=60.0))
    runs.append(make_run("erm", "robust_kd", 0, [0.85, 0.70, 0.20, 0.12], b=0.5))
    config = {
        "kd_convention": "hinton",
        "robust_tradeoff": 1.0,
        "dataset": {"class_names": NAMES, "train_counts": COUNTS, "holdout_counts": [1] * 4},
        "planned_runs": [r["name"] for r in runs],
        "teacher_model": "resnet_cifar.json: ResNet 1,000 parameters",
        "student_model": "resnet_cifar_small.json: ResNet 100 parameters",
        "augment": True,
        "teacher_epochs": 30,
        "student_epochs": 30,
    }
    return {"runs": runs, "config": config, "machine": {"cpu_count": 2, "elapsed_seconds": 600.0}}


def by_code(found, code):
    return [f for f in found if f.code.startswith(code)]


def drop(data, *names):
    data = copy.deepcopy(data)
    data["runs"] = [r for r in data["runs"] if r["name"] not in names]
    return data


# ------------------------------------------------------------------------------------------------ tests
def test_missing_runs_are_listed_exactly_and_seeds_counted():
    table = _table()
    data = study_data()
    gone = {"erm/ada_alpha/seed2", "dro/kd/seed0", "dro/kd/seed1", "dro/kd/seed2", "dro/teacher/seed0"}
    gone = [name for name in data["config"]["planned_runs"] if name in gone]  # in plan order
    study = Study(drop(data, *gone))
    n = len(data["config"]["planned_runs"])
    lines = table.missing_lines(study)
    assert lines[0] == f"Missing runs (5 of {n}): " + ", ".join(f"`{g}`" for g in gone)
    rows = {line.split(" | ")[0][2:]: line for line in table.main_table(study)[2:]}
    assert rows["erm → ada_alpha"].split(" | ")[1] == "2 of 3"
    assert rows["erm → kd"].split(" | ")[1] == "3"
    assert rows["dro → kd"].split(" | ")[1:3] == ["0 of 3", "not run"]
    assert any(line.startswith("| dro | not run |") for line in table.teacher_table(study))
    complete = table.missing_lines(Study(data))
    assert complete == [f"Missing runs: none, the study is complete ({n} of {n} planned runs present)."]


def test_rule_threshold_flips_a_finding():
    """F1 is held just above 2·s_p and not held just below it: the rule can fail."""
    ce = [50.0, 51.0, 52.0]  # sd 1 on both sides: s_p = 1, threshold 2 points
    assert Diff([x + 2.1 for x in ce], ce).outcome == "higher"
    assert Diff([x + 1.9 for x in ce], ce).outcome == "within"
    assert Diff([x - 2.1 for x in ce], ce).outcome == "lower"
    assert Diff([55.0], ce).outcome == "one seed"

    def f1(gain):
        data = study_data()
        for run in data["runs"]:
            if run["objective"] == "kd" and run["teacher"] == "erm":
                ce_acc = shifted(CE, {0: -0.01, 1: 0.0, 2: 0.01}[run["seed"]])
                run["report"]["accuracy"] = sum(ce_acc) / 4 + gain
        return by_code(findings(Study(data)), "F1")[0].verdict

    # per-seed accuracies of ce: 0.3875 ± 0.01, so s_p = 1 point and the threshold is 2 points
    assert f1(0.021) == HELD
    assert f1(0.019) == NOT_HELD
    assert f1(-0.05) == NOT_HELD


def test_findings_on_the_synthetic_study():
    found = findings(Study(study_data()))
    verdicts = {f.code: f.verdict for f in found}
    assert verdicts["F1"] == HELD  # +5 points, noise 1
    assert (
        verdicts["F2"] == HELD
        and "Lowered by the test in most of 3 seed(s): d" in by_code(found, "F2")[0].evidence
    )
    assert verdicts["F3 [erm → ada_alpha]"] == HELD  # gain kept, d no longer hurt
    assert verdicts["F4 [erm → robust_kd (b=1)]"] == HELD
    assert verdicts["F5"] == HELD
    assert verdicts["F6 [dro teacher]"] == HELD
    # F7: student accuracy ranks balanced > dro > erm; ECE ranks balanced < dro < erm -> rho(-ECE) = 1, above
    # the teacher-accuracy rho (balanced = dro); with 3 teachers the line says how weak that is
    f7 = by_code(found, "F7")[0]
    assert f7.verdict == HELD and "1/6" in f7.evidence


def test_per_class_part_of_the_rule_can_fail():
    """kd lowers d in only 1 of 3 seeds: not a majority, so F2 is not held and F3 has nothing to recover."""
    data = study_data()
    for run in data["runs"]:
        if run["name"] in ("erm/kd/seed1", "erm/kd/seed2"):
            run["delta_vs_ce"] = [dict(row, p_value=1.0, n01=0, delta=0.0) for row in run["delta_vs_ce"]]
    found = {f.code: f.verdict for f in findings(Study(data))}
    assert found["F2"] == NOT_HELD and found["F3 [erm → ada_alpha]"] == NOT_TESTABLE
    # ada_alpha still lowers d in every seed: recovery fails, F3 is not held
    data = study_data()
    for run in data["runs"]:
        if run["objective"] == "ada_alpha":
            for row in run["delta_vs_ce"]:
                if row["name"] == "d":
                    row.update(p_value=1e-6, n01=20, delta=-0.1)
    assert {f.code: f.verdict for f in findings(Study(data))}["F3 [erm → ada_alpha]"] == NOT_HELD


def test_not_testable_when_runs_are_absent_or_single_seed():
    data = study_data()
    ada = [r["name"] for r in data["runs"] if r["objective"] == "ada_alpha"]
    no_ada = {f.code: f for f in findings(Study(drop(data, *ada)))}
    assert no_ada["F3 [ada_alpha]"].verdict == NOT_TESTABLE
    no_dro = {f.code: f.verdict for f in findings(Study(drop(data, "dro/teacher/seed0")))}
    assert no_dro["F7"] == NOT_TESTABLE  # only 2 teachers
    one_seed = {f.code: f.verdict for f in findings(Study(study_data(seeds=(0,))))}
    for code in ("F1", "F4 [erm → robust_kd (b=1)]", "F5", "F6 [dro teacher]", "F7"):
        assert one_seed[code] == NOT_TESTABLE, code
    old = copy.deepcopy(data)  # delta rows written before the exact test: no per-class verdicts
    for run in old["runs"]:
        for row in run["delta_vs_ce"] or []:
            row.pop("p_value"), row.pop("n10"), row.pop("n01")
    assert {f.code: f.verdict for f in findings(Study(old))}["F2"] == NOT_TESTABLE


def test_which_objective_picks_the_best_rare_class_setting():
    data = study_data()
    lines = which_objective(Study(data))
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[2:7]}
    assert rows["I care about the rare classes"][1].startswith(
        "erm → balanced_kd"
    )  # 45% on c and d, the best
    assert rows["I care about the worst class"][1].startswith("erm → balanced_kd")
    assert rows["I care about average accuracy"][1].startswith("balanced → kd")
    assert rows["I have no teacher (best average accuracy)"][1] == "ce"
    assert rows["I want the cheapest run (student wall time)"][1].startswith("dro → kd")
    assert rows["I care about the rare classes"][-1].startswith("above ce")
    # label_smoothing reads no teacher, although the study names its run after one
    data["runs"].append(make_run("erm", "label_smoothing", 0, [0.85, 0.65, 0.10, 0.05]))
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in which_objective(Study(data))[2:7]}
    assert rows["I have no teacher (best average accuracy)"][1] == "label_smoothing; eps 0.1"
    assert rows["I have no teacher (best average accuracy)"][-1].startswith("not established: 1 seed(s)")


def test_kd_conventions_are_labelled_apart():
    data = study_data()
    assert "| erm → kd | 3 |" in "\n".join(_table().main_table(Study(data)))
    data["runs"].append(make_run("erm", "kd", 0, [0.9, 0.7, 0.1, 0.05], convention="mix"))
    data["config"]["planned_runs"] += ["erm/kd/mix/seed0", "erm/kd/mix/seed1"]
    study = Study(data)
    text = "\n".join(_table().main_table(study))
    assert "| erm → kd (hinton) | 3 |" in text and "| erm → kd (mix) | 1 of 2 |" in text
    assert "| erm → ada_alpha | 3 |" in text  # one convention: no label
    assert parse_name("erm/kd/mix/seed1", "hinton")[0] == parse_name("erm/kd/seed1", "mix")[0]
    codes = [f.code for f in findings(study)]
    assert "F1 [erm → kd (hinton)]" in codes and "F1 [erm → kd (mix)]" in codes


def test_readme_block_is_replaced_idempotently(tmp_path):
    table = _table()
    results = tmp_path / "cifar10_lt.json"
    results.write_text(json.dumps(study_data()), encoding="utf-8")
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nText before.\n\n", "\n\nText after.\n"
    readme.write_text(
        f"{before}{table.README_START}\nold numbers\n{table.README_END}{after}", encoding="utf-8"
    )
    argv = [
        "--input",
        str(results),
        "--output_md",
        str(tmp_path / "t.md"),
        "--output_png",
        str(tmp_path / "p.png"),
    ]
    table.main([*argv, "--readme", str(readme)])
    first = readme.read_text(encoding="utf-8")
    assert first.startswith(before + table.README_START) and first.endswith(table.README_END + after)
    assert "old numbers" not in first and "| erm → kd | 3 |" in first and "**Provenance**" in first
    assert "student resnet_cifar_small.json: ResNet 100 parameters" in first and "flip + crop" in first
    assert "](p.png)" in first and "F7" in first and "| I care about the rare classes |" in first
    table.main([*argv, "--readme", str(readme)])  # a second run changes nothing
    assert readme.read_text(encoding="utf-8") == first
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    no_markers = tmp_path / "other.md"
    no_markers.write_text("nothing here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="block to fill"):
        table.update_readme(no_markers, ["x"])


def test_significant_drops_use_the_one_hurt_rule():
    """The table calls a drop significant exactly when hf_fairkd.metrics.delta_verdict says "hurt"."""
    rows = [
        # 0 vs 9 discordant rows: exact McNemar p = 2/512, although this interval reaches above 0
        {"name": "cat", "delta": -0.45, "n10": 0, "n01": 9, "p_value": 2 / 512, "ci_high": 0.01},
        # 1 vs 6: p = 0.125, not significant, although this interval lies below 0
        {"name": "dog", "delta": -0.25, "n10": 1, "n01": 6, "p_value": 0.125, "ci_high": -0.01},
        # a row written before the test existed is not judged
        {"name": "frog", "delta": -0.4, "ci_low": -0.6, "ci_high": -0.2},
    ]
    assert _table().significant_drops([{"delta_vs_ce": rows}, {"delta_vs_ce": rows[:1]}]) == {"cat": 2}


def test_provenance_names_every_code_version_the_runs_were_trained_at():
    data = study_data()
    data["config"]["code"] = "new1234"
    for i, run in enumerate(data["runs"]):
        run["code"] = "old5678" if i % 3 else "new1234"
    data["runs"][0].pop("code")
    counts = {"old5678": sum(1 for r in data["runs"] if r.get("code") == "old5678")}
    counts["new1234"] = sum(1 for r in data["runs"] if r.get("code") == "new1234")
    text = _table().provenance(Study(data), "x.json")
    assert (
        f"(code: old5678 for {counts['old5678']} runs, new1234 for {counts['new1234']} runs, not recorded for 1)"
        in text
    )
    for run in data["runs"]:
        run["code"] = "new1234"
    assert "(code new1234)" in _table().provenance(Study(data), "x.json")


def test_the_committed_table_regenerates_from_the_committed_results(tmp_path):
    """benchmarks/results/cifar10_lt_table.md is exactly what the scripts make of cifar10_lt.json (the plot's
    file name aside, which follows --output_png)."""
    results = REPO / "benchmarks" / "results"
    md = tmp_path / "cifar10_lt_table.md"
    _table().main(["--input", str(results / "cifar10_lt.json"), "--output_md", str(md), "--output_png",
                   str(tmp_path / "cifar10_lt_pareto.png")])  # fmt: skip
    assert md.read_text(encoding="utf-8") == (results / "cifar10_lt_table.md").read_text(encoding="utf-8")
    assert (tmp_path / "cifar10_lt_pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_the_study_page_block_is_the_generated_one(tmp_path):
    """docs/CIFAR10_LT_STUDY.md holds exactly the block `--readme` writes from the committed results."""
    doc = REPO / "docs" / "CIFAR10_LT_STUDY.md"
    page = tmp_path / "docs" / doc.name  # the same place relative to the plot as the real page
    page.parent.mkdir()
    page.write_text(doc.read_text(encoding="utf-8"), encoding="utf-8")
    png = tmp_path / "benchmarks" / "results" / "cifar10_lt_pareto.png"
    png.parent.mkdir(parents=True)
    _table().main(["--output_md", str(tmp_path / "t.md"), "--output_png", str(png), "--readme", str(page)])
    assert page.read_text(encoding="utf-8") == doc.read_text(encoding="utf-8")
