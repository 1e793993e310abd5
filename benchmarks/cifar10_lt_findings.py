"""The papers' directional findings on CIFAR-10-LT, each judged held / not held / not testable by the one rule
of `hf_fairkd.compare.stats` (pooled-sd over seeds for means, majority of seeds for the per-class exact test),
from the study's results (a ``cifar10_lt_study.Study``).

    python benchmarks/cifar10_lt_findings.py                                  # the committed results JSON
    python benchmarks/cifar10_lt_findings.py --comparisons outputs/cifar10_lt/erm outputs/cifar10_lt/balanced ...
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from hf_fairkd.compare.stats import Diff, majority, mean_delta, mean_std

# benchmarks/ is no package: its sibling scripts import by plain name, as benchmarks/scale.py's do
sys.path.insert(0, str(Path(__file__).resolve().parent))


import cifar10_lt_study as study_module  # noqa: E402

Study = study_module.Study
RESULTS = Path(__file__).resolve().parent / "results" / "cifar10_lt.json"

HELD, NOT_HELD, NOT_TESTABLE = "held", "not held", "not testable"
F3_CLAIM = (
    "lowering the teacher's weight where it is unreliable keeps the gain over ce and recovers the rare classes "
    "kd lowered"
)
RULE = (
    "**How each finding is judged (one rule for all).** A difference of means over seeds between two settings "
    "counts only when both ran with at least 2 seeds and |difference| > 2·s_p, where s_p is the pooled sample "
    "standard deviation over seeds of the same metric in the two settings, s_p² = ((n₁−1)s₁² + (n₂−1)s₂²) / "
    "(n₁+n₂−2). With one seed in either setting no mean difference counts: a finding that rests on one is "
    "**not testable**, never held. A class counts as lowered (raised) against the one-hot student when the "
    "exact McNemar test in the delta rows (`hf_fairkd.metrics.delta_verdict`: p < 0.05, student wrong on more "
    "(fewer) of the discordant images; not corrected for the {n} classes) says so in more than half of the "
    "seeds tested. **held**: the rule finds the claimed direction; **not held**: testable, but the rule finds "
    "no difference or the opposite one; **not testable**: runs missing, one seed, or delta rows without the "
    "exact test. F7 (a rank correlation over the teachers) is judged only when some pair of their kd students "
    "differs by this rule. Numbers are test accuracy in %, mean over seeds. Rare classes: {rare}."
)


__all__ = ["Diff", "Finding", "Study", "findings", "findings_lines", "load_study"]


def claim_verdict(d: Diff, want: str = "higher") -> str:
    if d.outcome in ("missing", "one seed"):
        return NOT_TESTABLE
    return HELD if d.outcome == want else NOT_HELD


def combine(verdicts: list[str]) -> str:
    """All parts held -> held; any part not held -> not held; otherwise not testable."""
    if NOT_HELD in verdicts:
        return NOT_HELD
    return HELD if verdicts and all(v == HELD for v in verdicts) else NOT_TESTABLE


@dataclass
class Finding:
    code: str
    claim: str
    verdict: str
    evidence: str

    def line(self) -> str:
        return f"- **{self.code}** {self.claim}: **{self.verdict}**. {self.evidence}"


def spearman(x: list[float], y: list[float]) -> float | None:
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    if sx == 0 or sy == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(rx, ry)) / (sx * sy)


# ------------------------------------------------------------------------------------------------ findings
def findings(study: Study) -> list[Finding]:
    out: list[Finding] = []
    t0 = study.main_teacher
    compare = lambda a, b, metric: Diff(study.values(a, metric), study.values(b, metric))  # noqa: E731
    ce = study.get(None, "ce")
    kd_settings = study.settings(t0, "kd")  # one per kd convention run
    suffix = lambda key: f" [{study.label(key)}]" if len(kd_settings) > 1 else ""  # noqa: E731
    hurt_by_kd: dict[str, tuple[str, set]] = {}

    if not kd_settings:
        out.append(Finding("F1", "KD raises overall accuracy (kd vs ce)", NOT_TESTABLE, "No kd runs."))
        out.append(Finding("F2", "KD lowers some rare classes against ce", NOT_TESTABLE, "No kd runs."))
    for key in kd_settings:
        kd = study.groups[key]
        d = compare(kd, ce, "accuracy")
        out.append(
            Finding(
                f"F1{suffix(key)}", "KD raises overall accuracy (kd vs ce)", claim_verdict(d), d.text() + "."
            )
        )
        verdict, hurt, text = rare_drops(study, kd, ce)
        hurt_by_kd[key.convention] = (verdict, hurt)
        out.append(Finding(f"F2{suffix(key)}", "KD lowers some rare classes against ce", verdict, text))

    for objective in ("ada_alpha", "ada_margin"):
        keys = study.settings(t0, objective)
        if not keys:
            out.append(Finding(f"F3 [{objective}]", F3_CLAIM, NOT_TESTABLE, "No runs."))
        for key in keys:
            runs = study.groups[key]
            gain = compare(runs, ce, "accuracy")
            parts = [claim_verdict(gain)]
            f2, hurt = hurt_by_kd.get(
                key.convention, hurt_by_kd.get(study.default_convention, (NOT_TESTABLE, set()))
            )
            if f2 == HELD:
                tested, still = majority(study_module.delta_rows(runs), "hurt")
                still &= hurt
                parts.append(NOT_TESTABLE if not tested else NOT_HELD if still else HELD)
                deltas = mean_delta(study_module.delta_rows(runs))
                rec = ", ".join(f"{n} {100 * deltas[n]:+.1f}" for n in sorted(hurt) if n in deltas)
                rec = (
                    f"the rare classes kd lowered, Δ vs ce {rec}; still lowered by the test: "
                    f"{', '.join(sorted(still)) or 'none'}"
                    + ("" if tested else " (rows without the exact test)")
                )
            else:
                parts.append(NOT_TESTABLE)
                rec = (
                    "nothing to recover, kd lowered no rare class (F2 not held)"
                    if f2 == NOT_HELD
                    else "whether kd lowered a rare class is itself not testable (F2)"
                )
            out.append(
                Finding(
                    f"F3 [{study.label(key)}]",
                    F3_CLAIM,
                    combine(parts),
                    f"Keeps the gain over ce ({parts[0]}): {gain.text()}. Recovers ({parts[1]}): {rec}.",
                )
            )

    kd = study.get(t0, "kd")
    for objective in ("robust_kd", "balanced_kd"):
        runs = study.get(t0, objective)
        key = study.find(t0, objective)
        name = study.label(key) if key else objective
        d, do = compare(runs, kd, "worst_class_accuracy"), compare(runs, kd, "accuracy")
        out.append(
            Finding(
                f"F4 [{name}]",
                "a robust objective raises worst-class accuracy over kd",
                claim_verdict(d),
                f"Worst class: {d.text()}; overall: {do.text()}.",
            )
        )
    out.append(frontier(study, kd, compare))

    robust = study.get(t0, "robust_kd")
    others = [t for t in ("balanced", "dro") if t in study.teacher_runs or study.settings(t)]
    for teacher in others or ["dro"]:
        student = study.get(teacher, "kd")
        d = compare(robust, student, "worst_class_accuracy")
        teacher_run = study.teacher_runs.get(teacher)
        tw = f"{100 * teacher_run['report']['worst_class_accuracy']:.1f}" if teacher_run else "n/a"
        out.append(
            Finding(
                f"F6 [{teacher} teacher]",
                f"a robust teacher alone does not make a robust student: kd from the {teacher} teacher stays "
                f"below {study.label(study.find(t0, 'robust_kd')) if robust else 'robust_kd'} on the worst class",
                claim_verdict(d),
                f"Worst class, robust_kd from {t0} vs kd from {teacher}: {d.text()}; the {teacher} teacher's "
                f"own worst class {tw}; kd from {t0}: {pct_mean(study.values(kd, 'worst_class_accuracy'))}.",
            )
        )
    out.append(calibration_finding(study, compare))
    return out


def pct_mean(values: list[float]) -> str:
    mean, std = mean_std(values)
    return "n/a" if mean is None else f"{mean:.1f}" + ("" if std is None else f" ± {std:.1f}")


def rare_drops(study: Study, kd: list[dict], ce: list[dict]) -> tuple[str, set, str]:
    """F2: rare classes the exact test calls hurt in most seeds (verdict, those classes, evidence)."""
    if not kd or not ce:
        return NOT_TESTABLE, set(), "Needs kd and ce runs."
    tested, hurt = majority(study_module.delta_rows(kd), "hurt")
    deltas = mean_delta(study_module.delta_rows(kd))
    means = ", ".join(f"{n} {100 * deltas[n]:+.1f}" for n in study.rare_classes if n in deltas)
    text = f"Mean Δ kd − ce on the rare classes: {means or 'n/a'}."
    if not tested:
        return (
            NOT_TESTABLE,
            set(),
            text + " The delta rows carry no exact-test p-values (written before the "
            "test existed): re-run to judge them.",
        )
    rare_hurt = hurt & set(study.rare_classes)
    other = sorted(hurt - rare_hurt)
    text += (
        f" Lowered by the test in most of {tested} seed(s): {', '.join(sorted(rare_hurt)) or 'no rare class'}"
    )
    text += f" (other classes: {', '.join(other)})." if other else "."
    return (HELD if rare_hurt else NOT_HELD), rare_hurt, text


def frontier(study: Study, kd: list[dict], compare) -> Finding:
    """F5: some b > 0 of robust_kd beats kd on the worst class without a clear overall loss."""
    t0 = study.main_teacher
    kd_key = study.find(t0, "kd")
    sweep = [
        k
        for k in study.settings(t0, "robust_kd")
        if k.b and (kd_key is None or k.convention == kd_key.convention)
    ]
    claim = "the trade-off b of robust_kd gives a better overall / worst-class frontier than kd"
    if not sweep or not kd:
        return Finding("F5", claim, NOT_TESTABLE, "Needs kd and robust_kd with some b > 0.")
    point = lambda runs: (  # noqa: E731
        f"{pct_mean(study.values(runs, 'accuracy'))} / {pct_mean(study.values(runs, 'worst_class_accuracy'))}"
    )
    parts, verdicts = [], []
    for key in sweep:
        runs = study.groups[key]
        w, o = compare(runs, kd, "worst_class_accuracy"), compare(runs, kd, "accuracy")
        text = f"b={key.b:g} {point(runs)}"
        if "one seed" in (w.outcome, o.outcome):
            verdicts.append(NOT_TESTABLE)
            text += " (one seed)"
        else:
            verdicts.append(HELD if w.outcome == "higher" and o.outcome != "lower" else NOT_HELD)
            text += (
                f" ({len(runs)} seeds; worst class {w.diff:+.1f} vs 2·s_p = {w.threshold:.1f}, overall "
                f"{o.diff:+.1f} vs 2·s_p = {o.threshold:.1f}: {'beats kd' if verdicts[-1] == HELD else 'does not beat kd'})"
            )
        parts.append(text)
    verdict = HELD if HELD in verdicts else NOT_HELD if NOT_HELD in verdicts else NOT_TESTABLE
    return Finding(
        "F5",
        claim + " (held when some b > 0 is above kd on the worst class by the rule and not below it overall)",
        verdict,
        f"Overall / worst class: {study.label(kd_key)} {point(kd)} ({len(kd)} seed(s)); "
        + "; ".join(parts)
        + ".",
    )


def calibration_finding(study: Study, compare) -> Finding:
    """F7: across the teachers, rank correlation of (−ECE) and of accuracy with their kd student's accuracy."""
    claim = "teacher calibration (ECE) predicts the kd student's accuracy better than teacher accuracy does"
    rows = []
    for teacher, run in study.teacher_runs.items():
        ece = (run.get("calibration") or {}).get("ece")
        student = study.get(teacher, "kd")
        if ece is not None and student:
            rows.append((teacher, ece, 100 * run["report"]["accuracy"], student))
    if len(rows) < 3:
        return Finding(
            "F7",
            claim,
            NOT_TESTABLE,
            f"Needs 3 teachers with a calibration report and a kd student; {len(rows)} here.",
        )
    acc = [study.mean(r[3], "accuracy") for r in rows]
    rho_cal = spearman([-r[1] for r in rows], acc)
    rho_acc = spearman([r[2] for r in rows], acc)
    apart = [
        (rows[i][0], rows[j][0])
        for i in range(len(rows))
        for j in range(i + 1, len(rows))
        if compare(rows[i][3], rows[j][3], "accuracy").outcome in ("higher", "lower")
    ]
    fmt = lambda v: "undefined (ties)" if v is None else f"{v:+.2f}"  # noqa: E731
    evidence = (
        "Teachers (ECE, accuracy → kd student accuracy): "
        + "; ".join(
            f"{t} {e:.3f}, {a:.1f} → {pct_mean(study.values(s, 'accuracy'))} ({len(s)} seed(s))"
            for t, e, a, s in rows
        )
        + f". Spearman ρ(−ECE, student) = {fmt(rho_cal)}, ρ(teacher accuracy, student) = {fmt(rho_acc)}. "
        f"Student pairs apart by the rule: {', '.join('/'.join(p) for p in apart) or 'none'}. How weak this is: "
        f"with {len(rows)} teachers ρ can only take a few values and even ρ = 1 has an exact permutation p of "
        f"1/{math.factorial(len(rows))}, so at best this is a direction seen on {len(rows)} points, not a result."
    )
    if not apart:
        return Finding(
            "F7",
            claim,
            NOT_TESTABLE,
            evidence + " The kd students do not differ by the rule: there is nothing to predict.",
        )
    verdict = HELD if (rho_cal or 0) > (rho_acc or 0) else NOT_HELD
    return Finding("F7", claim, verdict, evidence)


def findings_lines(study: Study) -> list[str]:
    return [
        RULE.format(n=len(study.class_names) or "C", rare=study.rare_definition),
        "",
        *(f.line() for f in findings(study)),
    ]


def load_study(path: str | None = None, comparisons=None) -> Study:
    """The study from the results JSON (default: the committed one) or from compare_objectives output folders."""
    if comparisons:
        return Study(study_module.from_comparisons(comparisons))
    with open(path or RESULTS, encoding="utf-8") as f:
        return Study(json.load(f))


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=str(RESULTS), help="The study's results JSON.")
    p.add_argument(
        "--comparisons", nargs="+", help="compare_objectives output folders, the ERM teacher's first."
    )
    args = p.parse_args(argv)
    lines = findings_lines(load_study(args.input, args.comparisons))
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
