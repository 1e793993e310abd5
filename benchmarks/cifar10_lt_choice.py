"""The "which objective should I use" table, picked from the measured results (a ``cifar10_lt_runs.Study``):
one row per need, the setting with the best mean over seeds for it, what it gave and cost against the one-hot
student, and whether its lead over ce passes the findings' significance rule (``cifar10_lt_findings.Diff``).
"""

from __future__ import annotations

from cifar10_lt_findings import Diff
from cifar10_lt_runs import TEACHER_FREE, Study

NEEDS = (
    ("I care about average accuracy", "accuracy", max, False),
    ("I care about the rare classes", "rare", max, False),
    ("I care about the worst class", "worst_class_accuracy", max, False),
    ("I have no teacher (best average accuracy)", "accuracy", max, True),
    ("I want the cheapest run (student wall time)", "wall_seconds", min, False),
)


def which_objective(study: Study) -> list[str]:
    """'Which objective should I use', picked from the measured means (ties: the first in reading order)."""
    ce = study.get(None, "ce")
    lines = [
        "| need | use | seeds | overall | rare classes | worst class | wall s per run | pick vs ce, by the rule |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for need, metric, pick, teacherless in NEEDS:
        keys = [
            k for k in study.settings() if not teacherless or k.teacher is None or k.objective in TEACHER_FREE
        ]
        keys = [k for k in keys if study.mean(study.groups[k], metric) is not None]
        if not keys:
            lines.append(f"| {need} | no runs | | | | | | |")
            continue
        key = pick(keys, key=lambda k: study.mean(study.groups[k], metric))
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
            d = Diff(study.values(runs, metric), study.values(ce, metric))
            good, bad = ("higher", "lower") if pick is max else ("lower", "higher")
            word = "above" if pick is max else "below"
            judged = {
                good: f"{word} ce ({d.diff:+.1f}, beyond 2·s_p = {d.threshold or 0:.1f})",
                bad: f"on the wrong side of ce ({d.diff:+.1f}, beyond 2·s_p = {d.threshold or 0:.1f})",
                "within": f"within the seed noise of ce ({d.diff:+.1f}, 2·s_p = {d.threshold or 0:.1f})",
                "one seed": f"not established: {len(d.a)} seed(s) against ce's {len(d.b)}",
                "missing": "no ce runs",
            }[d.outcome]
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
    """The settings that distinguish the objective, e.g. ' (hinton, alpha 0.5, T 2)'."""
    p = run.get("params") or {}
    names = (("kd_convention", "{}"), ("alpha", "alpha {:g}"), ("temperature", "T {:g}"))
    names += (("label_smoothing_epsilon", "eps {:g}"), ("kd_sim_rho", "rho {:g}"))
    parts = [fmt.format(p[k]) for k, fmt in names if p.get(k) is not None]
    return f"; {', '.join(parts)}" if parts else ""
