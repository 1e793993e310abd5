"""The CIFAR-10-LT study's "which objective should I use" table and Pareto plot, from its results (a
``cifar10_lt_study.Study``): one row per need, the setting with the best mean over seeds for it
(`hf_fairkd.compare.choice.pick_best`), what it gave and cost against the one-hot student, and whether its lead
passes the significance rule (`hf_fairkd.compare.stats.verdict_vs_baseline`); the plot is
`hf_fairkd.compare.pareto.plot_pareto` with each robust_kd sweep over b as a line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hf_fairkd.compare.choice import pick_best
from hf_fairkd.compare.pareto import Point, plot_pareto
from hf_fairkd.compare.stats import mean_std, verdict_vs_baseline

# benchmarks/ is no package: its sibling scripts import by plain name, as benchmarks/scale.py's do
sys.path.insert(0, str(Path(__file__).resolve().parent))


import cifar10_lt_study as study_module  # noqa: E402

Study, TEACHER_FREE = study_module.Study, study_module.TEACHER_FREE

NEEDS = (
    ("I care about average accuracy", "accuracy", True, False),
    ("I care about the rare classes", "rare", True, False),
    ("I care about the worst class", "worst_class_accuracy", True, False),
    ("I have no teacher (best average accuracy)", "accuracy", True, True),
    ("I want the cheapest run (student wall time)", "wall_seconds", False, False),
)


def which_objective(study: Study) -> list[str]:
    """'Which objective should I use', picked from the measured means (`hf_fairkd.compare.choice.pick_best`: ties
    go to the first in reading order) and judged against ce by the rule."""
    ce = study.get(None, "ce")
    lines = [
        "| need | use | seeds | overall | rare classes | worst class | wall s per run | pick vs ce, by the rule |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for need, metric, higher, teacherless in NEEDS:
        keys = [
            k for k in study.settings() if not teacherless or k.teacher is None or k.objective in TEACHER_FREE
        ]
        key = pick_best(keys, lambda k, m=metric: study.mean(study.groups[k], m), higher)
        if key is None:
            lines.append(f"| {need} | no runs | | | | | | |")
            continue
        runs = study.groups[key]
        cells = []
        for m in ("accuracy", "rare", "worst_class_accuracy"):
            v, base = study.mean(runs, m), study.mean(ce, m)
            cells.append(
                "n/a" if v is None else f"{v:.1f}" + ("" if base is None or not ce else f" ({v - base:+.1f})")
            )
        wall, wall_ce = study.mean(runs, "wall_seconds"), study.mean(ce, "wall_seconds")
        cells.append(
            f"{wall:.0f}" + (f" ({wall / wall_ce:.2f}× ce)" if wall and wall_ce else "") if wall else "n/a"
        )
        if key.objective == "ce" and key.teacher is None:
            judged = "is the ce baseline"
        else:
            judged = verdict_vs_baseline(study.values(runs, metric), study.values(ce, metric), higher, "ce")
        lines.append(
            f"| {need} | {study.label(key)}{params_text(runs[0])} | {study.seeds_text(key)} | "
            + " | ".join(cells)
            + f" | {judged} |"
        )
    teacher_cost = [
        f"{t} {r['wall_seconds'] + r.get('cache_seconds', 0):.0f} s"
        for t, r in study.teacher_runs.items()
        if r.get("wall_seconds") is not None
    ]
    lines += [
        "",
        "Picked by the mean over seeds among the settings run here (ties: the first in table order); in brackets "
        "the difference to the one-hot ce student. A distilled student also needs its teacher, trained once "
        f"({', '.join(teacher_cost) or 'teacher times not recorded'}). A pick that the last column does not call "
        "above (below) ce is a measurement of this study, not an established advantage.",
    ]
    return lines


def params_text(run: dict) -> str:
    """The settings that distinguish the objective, e.g. '; hinton, alpha 0.5, T 2'."""
    p = run.get("params") or {}
    names = (("kd_convention", "{}"), ("alpha", "alpha {:g}"), ("temperature", "T {:g}"))
    names += (("label_smoothing_epsilon", "eps {:g}"), ("kd_sim_rho", "rho {:g}"))
    parts = [fmt.format(p[k]) for k, fmt in names if p.get(k) is not None]
    return f"; {', '.join(parts)}" if parts else ""


def pareto_plot(study: Study, path: Path) -> None:
    """Overall accuracy against the worst class and the worst-3 mean (`hf_fairkd.compare.pareto.plot_pareto`);
    each robust_kd sweep over b (per teacher) is a line."""
    sweeps = {}
    for key in study.settings(objective="robust_kd"):
        if key.b is not None:
            sweeps.setdefault((key.teacher, key.convention), []).append(key)
    lines = {k: v for k, v in sweeps.items() if len(v) > 1}
    on_line = {
        key: f"{study.label(keys[0]).split(' (')[0]}, b swept" for keys in lines.values() for key in keys
    }
    points = []
    for key in study.settings():
        values = {}
        for metric in ("accuracy", "worst_class_accuracy", "worst_k_accuracy"):
            mean, std = mean_std(study.values(study.groups[key], metric))
            values[metric] = (mean, std or 0.0)
        line = on_line.get(key)
        points.append(Point(study.label(key), values, line, f"b={key.b:g}" if line else None))
    points.sort(key=lambda p: p.line is not None)  # lines after the single points, each in b order
    panels = [
        ("worst_class_accuracy", "worst-class test accuracy (%)"),
        ("worst_k_accuracy", "mean accuracy of the worst 3 classes (%)"),
    ]
    title = "CIFAR-10-LT (rho=100): overall vs worst classes (means over seeds, bars ± 1 seed std)"
    plot_pareto(points, path, panels, title)
