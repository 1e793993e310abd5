"""The CIFAR-10-LT reproduction table, Pareto plot and reading, from the results JSON alone.

    python benchmarks/make_cifar10_lt_table.py            # reads benchmarks/results/cifar10_lt.json

Writes benchmarks/results/cifar10_lt_table.md and benchmarks/results/cifar10_lt_pareto.png. Numbers are
test-set percentages; "a ± s" is the mean and sample standard deviation over seeds (shown when a setting
ran with several seeds). A "significant drop" is a class called hurt by hf_fairkd's one rule
(hf_fairkd.metrics.delta_verdict: exact McNemar test of the student against the one-hot student of the same
seed, p < 0.05, student worse); it is not corrected for the 10 classes tested. Runs written before the test
existed (no "p_value" in their rows) are not judged: re-run the reproduction to refresh them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hf_fairkd.io_utils import atomic_path, atomic_write_text  # noqa: E402
from hf_fairkd.metrics.paired import delta_verdict  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
STUDENT_ORDER = ("ce", "kd", "ada_alpha", "ada_margin", "balanced_kd", "robust_kd")
TEACHER_ORDER = ("erm", "balanced", "dro")


# ------------------------------------------------------------------------------------------------ numbers
def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def pct(values: list[float | None]) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "n/a"
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def shot(report: dict, group: str) -> float | None:
    return (report.get("shot_groups") or {}).get(group, {}).get("accuracy")


def setting_key(run: dict) -> tuple:
    b = run["params"].get("dro_tradeoff") if run["objective"] == "robust_kd" else None
    return run["teacher"], run["objective"], b


def group_runs(runs: list[dict]) -> dict[tuple, list[dict]]:
    """Student runs by (teacher, objective, b), in a fixed reading order."""
    groups = defaultdict(list)
    for run in runs:
        if run["objective"] != "teacher":
            groups[setting_key(run)].append(run)

    def order(key):
        teacher, objective, b = key
        t = -1 if teacher is None else TEACHER_ORDER.index(teacher) if teacher in TEACHER_ORDER else 9
        o = STUDENT_ORDER.index(objective) if objective in STUDENT_ORDER else 99
        return t, o, -1 if b is None else b

    return {k: sorted(groups[k], key=lambda r: r["seed"]) for k in sorted(groups, key=order)}


def label(key: tuple) -> str:
    teacher, objective, b = key
    name = objective if b is None else f"{objective} (b={b:g})"
    return name if teacher is None else f"{teacher} → {name}"


def significant_drops(runs: list[dict]) -> dict[str, int]:
    """Class name -> in how many of the runs it dropped significantly below the one-hot student."""
    drops = defaultdict(int)
    for run in runs:
        for row in run.get("delta_vs_ce") or []:
            if delta_verdict(row) == "hurt":
                drops[row["name"]] += 1
    return dict(drops)


def per_class_delta(runs: list[dict]) -> dict[str, float]:
    """Mean over seeds of the per-class delta vs the one-hot student."""
    rows = defaultdict(list)
    for run in runs:
        for row in run.get("delta_vs_ce") or []:
            if row["delta"] is not None:
                rows[row["name"]].append(row["delta"])
    return {name: statistics.fmean(v) for name, v in rows.items()}


def per_class_accuracy(runs: list[dict]) -> dict[str, float]:
    rows = defaultdict(list)
    for run in runs:
        for row in run["report"]["per_class"]:
            if row["accuracy"] is not None:
                rows[row["name"]].append(row["accuracy"])
    return {name: statistics.fmean(v) for name, v in rows.items()}


def metric(runs: list[dict], name: str) -> float | None:
    return mean_std([r["report"][name] for r in runs])[0]


# ------------------------------------------------------------------------------------------------ tables
def main_table(groups: dict) -> list[str]:
    lines = [
        "| teacher → student | seeds | overall | balanced | worst class | worst-3 mean | many | medium | few | "
        "min Δ vs ce | classes with a significant drop vs ce |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, runs in groups.items():
        reports = [r["report"] for r in runs]
        deltas = per_class_delta(runs)
        if key[1] == "ce":
            min_delta, drops_text = "—", "—"
        else:
            worst = min(deltas, key=deltas.get) if deltas else None
            min_delta = f"{100 * deltas[worst]:+.1f} ({worst})" if worst else "n/a"
            drops = significant_drops(runs)
            tested = any("p_value" in row for r in runs for row in r.get("delta_vs_ce") or [])
            drops_text = ", ".join(f"{n} ({c}/{len(runs)})" for n, c in drops.items()) or (
                "none" if tested else "not tested (re-run)"
            )
        worst_names = sorted({r["worst_class"] for r in reports})
        lines.append(
            f"| {label(key)} | {len(runs)} | {pct([r['accuracy'] for r in reports])} | "
            f"{pct([r['balanced_accuracy'] for r in reports])} | {pct([r['worst_class_accuracy'] for r in reports])} "
            f"({', '.join(worst_names)}) | {pct([r['worst_k_accuracy'] for r in reports])} | "
            f"{pct([shot(r, 'many') for r in reports])} | "
            f"{pct([shot(r, 'medium') for r in reports])} | {pct([shot(r, 'few') for r in reports])} | "
            f"{min_delta} | {drops_text} |"
        )
    return lines


def per_class_table(groups: dict, teacher_runs: dict, train_counts: list[int], names: list[str]) -> list[str]:
    """Per-class accuracy of the ERM-teacher students next to the one-hot student, rarest classes last."""
    columns = [("teacher erm", [teacher_runs["erm"]] if "erm" in teacher_runs else [])]
    columns += [(label(k), runs) for k, runs in groups.items() if k[0] in (None, "erm")]
    columns = [(n, runs) for n, runs in columns if runs]
    accs = [per_class_accuracy(runs) for _, runs in columns]
    lines = [
        "| class | train n | " + " | ".join(n for n, _ in columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for name, count in zip(names, train_counts):
        cells = [f"{100 * a[name]:.1f}" if name in a else "n/a" for a in accs]
        lines.append(f"| {name} | {count} | " + " | ".join(cells) + " |")
    return lines


def teacher_table(teacher_runs: dict, groups: dict, b_robust) -> list[str]:
    lines = [
        "| teacher | accuracy | worst class | log-loss | ECE | worst per-class calibration error | "
        "kd student: balanced / worst class | robust_kd student: balanced / worst class |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for teacher in [t for t in TEACHER_ORDER if t in teacher_runs]:
        run = teacher_runs[teacher]
        report, cal = run["report"], run.get("calibration") or {}
        kd = groups.get((teacher, "kd", None), [])
        robust = groups.get((teacher, "robust_kd", b_robust), [])

        def pair(runs):
            if not runs:
                return "n/a"
            return (
                f"{pct([r['report']['balanced_accuracy'] for r in runs])} / "
                f"{pct([r['report']['worst_class_accuracy'] for r in runs])}"
            )

        lines.append(
            f"| {teacher} | {100 * report['accuracy']:.1f} | {100 * report['worst_class_accuracy']:.1f} "
            f"({report['worst_class']}) | {cal.get('log_loss', float('nan')):.3f} | {cal.get('ece', float('nan')):.3f} | "
            f"{cal.get('worst_class_calibration_error', float('nan')):.3f} ({cal.get('worst_calibration_class', '?')}) | "
            f"{pair(kd)} | {pair(robust)} |"
        )
    return lines


# ------------------------------------------------------------------------------------------------ plot
def pareto_plot(groups: dict, path: Path) -> None:
    """Overall accuracy against worst-class accuracy (left) and against the mean of the worst 3 classes
    (right: informative when several models share a worst class at 0)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 5.5))  # no pyplot: no global backend is chosen
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    sweep = sorted(
        (k for k in groups if k[0] == "erm" and k[1] == "robust_kd" and k[2] is not None), key=lambda k: k[2]
    )
    markers = {None: "s", "erm": "o", "balanced": "^", "dro": "D"}
    for ax, x_metric, x_label in (
        (axes[0], "worst_class_accuracy", "worst-class test accuracy (%)"),
        (axes[1], "worst_k_accuracy", "mean accuracy of the worst 3 classes (%)"),
    ):
        if sweep:
            xs = [100 * metric(groups[k], x_metric) for k in sweep]
            ys = [100 * metric(groups[k], "accuracy") for k in sweep]
            ax.plot(xs, ys, "o-", color="tab:red", label="erm → robust_kd, b swept")
            for k, x, y in zip(sweep, xs, ys):
                ax.annotate(f"b={k[2]:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
        others = [k for k in groups if k not in sweep]
        for i, key in enumerate(others):  # a legend entry each: labels would overlap at worst class 0
            x, y = 100 * metric(groups[key], x_metric), 100 * metric(groups[key], "accuracy")
            ax.scatter(
                [x],
                [y],
                marker=markers.get(key[0], "o"),
                color=colormaps["tab10"]([0, 1, 2, 4, 5, 6, 7, 8, 9][i % 9]),
                s=45,
                label=label(key),
            )
        ax.set_xlabel(x_label)
        ax.set_ylabel("overall test accuracy (%)")
        ax.grid(alpha=0.3)

    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle("CIFAR-10-LT (rho=100), CPU budget: overall vs worst classes (means over seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


# ------------------------------------------------------------------------------------------------ reading
def reading(groups: dict, teacher_runs: dict, b_robust, names: list[str], counts: list[int]) -> list[str]:
    """Verdicts computed from the numbers; each says what was measured."""
    out = []
    ce, kd = groups.get((None, "ce", None), []), groups.get(("erm", "kd", None), [])
    if not ce or not kd:
        return ["Not enough runs for a reading (the ce and erm → kd runs are needed)."]
    acc = lambda runs, m="accuracy": 100 * metric(runs, m)  # noqa: E731
    gain = acc(kd) - acc(ce)
    out.append(
        f"- **KD vs one-hot (ERM teacher).** Overall accuracy kd {acc(kd):.1f} vs ce {acc(ce):.1f} "
        f"({gain:+.1f} points, {len(kd)} seed(s)); worst class "
        f"{acc(kd, 'worst_class_accuracy'):.1f} vs {acc(ce, 'worst_class_accuracy'):.1f}."
    )
    deltas = per_class_delta(kd)
    rare = [n for n, _ in sorted(zip(names, counts), key=lambda t: t[1])[:3]]
    drops = significant_drops(kd)
    rare_text = ", ".join(f"{n} {100 * deltas[n]:+.1f}" for n in rare if n in deltas)
    hurt = [n for n in names if n in deltas and deltas[n] < 0]
    out.append(
        f"- **Did KD hurt a rare class?** Mean per-class change kd − ce on the three rarest classes: {rare_text}. "
        f"Classes with a lower mean: {', '.join(hurt) or 'none'}. Significant drops (exact McNemar p < 0.05): "
        + (", ".join(f"{n} in {c}/{len(kd)} seeds" for n, c in drops.items()) or "none")
        + "."
    )
    targets = [n for n in names if deltas.get(n, 0) < 0] or rare
    for objective in ("ada_alpha", "ada_margin", "balanced_kd"):
        runs = groups.get(("erm", objective, None), [])
        if runs:
            d = per_class_delta(runs)
            recovered = statistics.fmean(d[n] for n in targets if n in d)
            before = statistics.fmean(deltas[n] for n in targets if n in deltas)
            out.append(
                f"- **{objective}** ({len(runs)} seed(s)): overall {acc(runs):.1f} ({acc(runs) - acc(kd):+.1f} vs kd), "
                f"worst class {acc(runs, 'worst_class_accuracy'):.1f}; mean change vs ce on "
                f"{'the classes kd lowered' if targets != rare else 'the three rarest classes'} "
                f"({', '.join(targets)}): {100 * recovered:+.1f} (kd: {100 * before:+.1f})."
            )
    robust = groups.get(("erm", "robust_kd", b_robust), [])
    if robust:
        out.append(
            f"- **robust_kd (b={b_robust:g})** ({len(robust)} seed(s)): overall {acc(robust):.1f} "
            f"({acc(robust) - acc(kd):+.1f} vs kd), worst class {acc(robust, 'worst_class_accuracy'):.1f} "
            f"({acc(robust, 'worst_class_accuracy') - acc(kd, 'worst_class_accuracy'):+.1f} vs kd)."
        )
    sweep = {k[2]: v for k, v in groups.items() if k[:2] == ("erm", "robust_kd") and k[2] is not None}
    if len(sweep) > 1:
        pts = ", ".join(
            f"b={b:g}: {acc(v):.1f}/{acc(v, 'worst_class_accuracy'):.1f}" for b, v in sorted(sweep.items())
        )
        dominated = [
            label(k)
            for k, v in groups.items()
            if k[0] == "erm"
            and k[1] != "robust_kd"
            and any(
                acc(s) >= acc(v) and acc(s, "worst_class_accuracy") >= acc(v, "worst_class_accuracy")
                for s in sweep.values()
            )
        ]
        out.append(
            f"- **Trade-off sweep** (overall/worst class): {pts}. ERM-teacher points matched or beaten on both axes "
            f"by some b: {', '.join(dominated) or 'none'}."
        )
    out += context(groups, teacher_runs, ce, b_robust, names)
    if len(teacher_runs) > 1:
        rows = []
        for t in [t for t in TEACHER_ORDER if t in teacher_runs]:
            student = groups.get((t, "kd", None), [])
            cal = teacher_runs[t].get("calibration") or {}
            if student:
                rows.append(
                    (
                        t,
                        teacher_runs[t]["report"]["worst_class_accuracy"],
                        cal.get("log_loss"),
                        metric(student, "balanced_accuracy"),
                        metric(student, "worst_class_accuracy"),
                    )
                )
        if rows:

            def best(index, largest=True):
                values = [r[index] for r in rows if r[index] is not None]
                top = max(values) if largest else min(values)
                return "/".join(r[0] for r in rows if r[index] == top), 100 * top

            teacher_best, teacher_value = best(1)
            student_best, student_value = best(4)
            calibrated, _ = best(2, largest=False)
            balanced_best, balanced_value = best(3)
            out.append(
                f"- **Teachers.** Best worst-class teacher: {teacher_best} ({teacher_value:.1f}); best worst-class kd "
                f"student: from {student_best} ({student_value:.1f}). Best-calibrated teacher (test log-loss): "
                f"{calibrated}; best balanced-accuracy kd student: from {balanced_best} ({balanced_value:.1f})."
            )
    return out + findings(groups, teacher_runs, ce, kd, b_robust)


def context(groups: dict, teacher_runs: dict, ce: list[dict], b_robust, names: list[str]) -> list[str]:
    """Facts that explain the verdicts: how much better the teacher is, what ada_alpha and DRO learned."""
    out = []
    if "erm" in teacher_runs:
        teacher = teacher_runs["erm"]["report"]
        zero = [row["name"] for row in teacher["per_class"] if row["accuracy"] == 0]
        out.append(
            f"- **How good is the ERM teacher?** {100 * teacher['accuracy']:.1f} overall vs "
            f"{100 * metric(ce, 'accuracy'):.1f} for the one-hot student ({100 * teacher['accuracy'] - 100 * metric(ce, 'accuracy'):+.1f} "
            f"points); classes it never gets right on test: {', '.join(zero) or 'none'}."
        )
    alpha_runs = groups.get(("erm", "ada_alpha", None), [])
    if alpha_runs and alpha_runs[0].get("class_alphas"):
        run = alpha_runs[0]
        pairs = ", ".join(f"{n} {a:.2f}" for n, a in zip(names, run["class_alphas"]))
        out.append(
            f"- **ada_alpha weights** (from the teacher's holdout recall, seed {run['seed']}): {pairs}."
        )
    robust = groups.get(("erm", "robust_kd", b_robust), [])
    if robust and robust[0].get("dro_multipliers"):
        lam = robust[0]["dro_multipliers"]
        top = max(range(len(lam)), key=lam.__getitem__)
        out.append(
            f"- **DRO multipliers after training** (erm → robust_kd b={b_robust:g}, seed {robust[0]['seed']}): "
            f"min {min(lam):.3f}, max {max(lam):.3f} ({names[top]}); uniform is {1 / len(lam):.3f}."
        )
    return out


def noise(groups: dict) -> float | None:
    """The largest seed-to-seed std of overall accuracy among the settings run with several seeds (points)."""
    stds = [mean_std([r["report"]["accuracy"] for r in runs])[1] for runs in groups.values() if len(runs) > 1]
    stds = [v for v in stds if v is not None]
    return 100 * max(stds) if stds else None


def findings(groups: dict, teacher_runs: dict, ce: list[dict], kd: list[dict], b_robust) -> list[str]:
    """The papers' directional claims, each with the measured numbers and a held / not seen verdict."""
    spread = noise(groups)
    margin = 2 * spread if spread is not None else 1.0  # a difference must exceed this to count
    acc = lambda runs, m="accuracy": 100 * metric(runs, m)  # noqa: E731
    out = [
        "",
        "### The papers' directional findings, as measured here",
        "",
        f"A difference counts only if it exceeds {margin:.1f} points (twice the largest seed-to-seed std of overall "
        "accuracy among the settings with several seeds"
        + ("" if spread is not None else "; none ran yet: 1 point")
        + "); settings with one seed are weaker evidence.",
        "",
    ]
    gain = acc(kd) - acc(ce)
    drops = {n: c for n, c in significant_drops(kd).items() if c > len(kd) / 2}
    out.append(
        f"- P1/P3 'KD raises overall accuracy': {gain:+.1f} points → "
        + ("**held**." if gain > margin else "**not seen** (within noise or negative).")
    )
    out.append(
        "- P1 'KD can lower accuracy on some (rare) classes': "
        + (
            f"**held** for {', '.join(drops)}."
            if drops
            else "**not seen**: no class dropped significantly in most seeds."
        )
    )
    alpha_runs = groups.get(("erm", "ada_alpha", None), [])
    if alpha_runs:
        d = acc(alpha_runs) - acc(kd)
        out.append(
            f"- P1 'lowering the teacher weight where it is unreliable keeps the gain and recovers hurt classes': "
            f"ada_alpha vs kd {d:+.1f} overall; "
            + (
                "no class was hurt by kd, so there was nothing to recover."
                if not drops
                else "see the rows above."
            )
        )
    robust = groups.get(("erm", "robust_kd", b_robust), [])
    if robust:
        dw = acc(robust, "worst_class_accuracy") - acc(kd, "worst_class_accuracy")
        do = acc(robust) - acc(kd)
        out.append(
            f"- P2 'robust objectives raise worst-class accuracy': robust_kd (b={b_robust:g}) vs kd {dw:+.1f} worst "
            f"class, {do:+.1f} overall → " + ("**held**." if dw > margin else "**not seen**.")
        )
    sweep = [v for k, v in groups.items() if k[:2] == ("erm", "robust_kd") and k[2] not in (None, 0.0)]
    if sweep:
        better = any(
            acc(v) >= acc(kd) - margin
            and acc(v, "worst_class_accuracy") > acc(kd, "worst_class_accuracy") + margin
            for v in sweep
        )
        out.append(
            "- P2 'the robust_kd trade-off gives a better overall/worst-class frontier than kd': "
            + (
                "**held**: some b > 0 raises the worst class without losing overall accuracy."
                if better
                else "**not seen**."
            )
        )
    others = [t for t in ("balanced", "dro") if t in teacher_runs and groups.get((t, "kd", None))]
    if others and "erm" in teacher_runs:
        parts, robust_students = [], 0
        for t in others:
            tw = 100 * teacher_runs[t]["report"]["worst_class_accuracy"]
            sw = acc(groups[(t, "kd", None)], "worst_class_accuracy")
            robust_students += sw > acc(kd, "worst_class_accuracy") + margin
            parts.append(f"{t} teacher worst class {tw:.1f} → its kd student {sw:.1f}")
        out.append(
            "- P2 'a robust teacher alone does not reliably make a robust student': "
            + "; ".join(parts)
            + f" (erm → kd: {acc(kd, 'worst_class_accuracy'):.1f}) → "
            + (
                "**held**."
                if robust_students < len(others)
                else "**not seen**: every robust teacher's kd student gained."
            )
        )
    rows = [
        (
            t,
            teacher_runs[t]["report"]["accuracy"],
            (teacher_runs[t].get("calibration") or {}).get("log_loss"),
            metric(groups[(t, "kd", None)], "balanced_accuracy"),
        )
        for t in TEACHER_ORDER
        if t in teacher_runs and groups.get((t, "kd", None))
    ]
    if len(rows) > 1:
        student_range = 100 * (max(r[3] for r in rows) - min(r[3] for r in rows))
        out.append(
            "- P3 'teacher calibration predicts the student better than teacher accuracy': teachers by accuracy "
            + ", ".join(f"{t} {100 * a:.1f}" for t, a, _, _ in sorted(rows, key=lambda r: -r[1]))
            + "; by log-loss "
            + ", ".join(f"{t} {ll:.2f}" for t, _, ll, _ in sorted(rows, key=lambda r: r[2]))
            + f"; their kd students span {student_range:.1f} points of balanced accuracy → "
            + (
                "**not testable here** (the students do not differ beyond noise)."
                if student_range <= margin
                else "see the teacher table."
            )
        )
    return out


README_START = (
    "<!-- cifar10_lt table: generated by benchmarks/make_cifar10_lt_table.py --readme README.md -->"
)
README_END = "<!-- end of cifar10_lt table -->"


def update_readme(path: Path, lines: list[str]) -> None:
    """Replace the text between the README markers with ``lines`` (the numbers are never typed by hand)."""
    text = path.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise ValueError(f"{path} has no '{README_START}' ... '{README_END}' block to fill.")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    atomic_write_text(path, head + README_START + "\n" + "\n".join(lines) + "\n" + README_END + tail)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--input", default=str(RESULTS / "cifar10_lt.json"))
    p.add_argument("--output_md", default=str(RESULTS / "cifar10_lt_table.md"))
    p.add_argument("--output_png", default=str(RESULTS / "cifar10_lt_pareto.png"))
    p.add_argument(
        "--readme",
        default=None,
        help="Also rewrite the block between the README_START / README_END markers of this file (README.md).",
    )
    args = p.parse_args(argv)
    with open(args.input, encoding="utf-8") as f:
        data = json.load(f)
    runs, config, machine = data["runs"], data["config"], data["machine"]
    if not runs:
        raise ValueError(f"{args.input} holds no runs yet; run benchmarks/reproduce_cifar10_lt.py first.")
    teacher_runs = {r["teacher"]: r for r in runs if r["objective"] == "teacher"}
    groups = group_runs(runs)
    names, counts = config["dataset"]["class_names"], config["dataset"]["train_counts"]
    b_robust = config["robust_tradeoff"]
    planned, finished = config.get("planned_runs", []), {r["name"] for r in runs}
    missing = [k for k in planned if k not in finished]
    total = sum(r["wall_seconds"] + r.get("cache_seconds", 0) for r in runs)
    merged = machine.get("merged_from")
    merged_text = (
        f" plus {merged['machine'].get('elapsed_seconds', 0) / 60:.1f} min for the {len(merged['runs'])} runs merged "
        f"from {merged['file']} ({merged['note']})"
        if merged
        else ""
    )

    md = [
        "# CIFAR-10-LT (exp, rho=100) reproduction on a CPU budget",
        "",
        f"Generated by `benchmarks/make_cifar10_lt_table.py` from `{Path(args.input).name}` "
        f"({len(runs)} runs; {len(missing)} planned runs missing{': ' + ', '.join(missing) if missing else ''}).",
        "",
        f"Data: {sum(counts)} training images {counts}, holdout {sum(config['dataset']['holdout_counts'])} "
        f"({config['holdout_per_class']} per class, carved from training), balanced test "
        f"{config['test_examples']} images{' (seeded subset)' if config.get('test_subset') else ' (all of it)'}. "
        "Shot groups: many > 100, medium 20–100, few < 20 training images; after the holdout CIFAR-10-LT's "
        "rarest class has 40, so **few is empty** (n/a) and medium = the two rarest classes.",
        "",
        f"Models: teacher ViT hidden {config['teacher_hidden']} × {config['teacher_layers']} layers, student ViT "
        f"hidden {config['student_hidden']} × {config['student_layers']} layers, {config['image_size']}×"
        f"{config['image_size']} images, patch {config['patch_size']}; teacher {config['teacher_epochs']:g} epochs, "
        f"student {config['student_epochs']:g} epochs, batch {config['batch_size']}. KD: convention "
        f"`{config['kd_convention']}`, alpha {config['alpha']}, T {config['temperature']}; robust_kd/dro: K = "
        f"{config['dro_update_every']}, eta = {config['dro_step_size']}. Teachers cached once (dense float16 logits).",
        "",
        f"Cut against the papers' recipe: {config['cuts']}",
        "",
        f"Compute: {total / 60:.1f} min of training/caching summed over runs, {machine.get('elapsed_seconds', 0) / 60:.1f} "
        f"min wall for the script{merged_text}; {machine['cpu_count']} CPU cores shared with other work, torch threads "
        f"{machine['torch_threads']}, load average at start {machine['load_average_at_start'][0]:.1f}.",
        "",
        "## Students (test accuracy, %)",
        "",
        "Mean ± std over seeds where there are several. Δ vs ce: per-class accuracy minus the one-hot (ce) student "
        "of the same seed, averaged over seeds; the significant-drop column counts seeds in which the paired 95% "
        "bootstrap interval is below zero. The test set is balanced, so overall = balanced accuracy.",
        "",
        *main_table(groups),
        "",
        "## Per-class accuracy (%), ERM teacher and its students (means over seeds)",
        "",
        *per_class_table(groups, teacher_runs, counts, names),
        "",
        "## Teachers",
        "",
        "Calibration on the balanced test split (softmax of the saved model's logits; 15 bins). Per-class "
        "calibration error as defined in `hf_fairkd.metrics.per_class_calibration_error`.",
        "",
        *teacher_table(teacher_runs, groups, b_robust),
        "",
        f"![Pareto plot]({Path(args.output_png).name})",
        "",
        "## Reading (generated from the numbers above)",
        "",
        *reading(groups, teacher_runs, b_robust, names, counts),
        "",
    ]
    atomic_write_text(args.output_md, "\n".join(md))
    pareto_plot(groups, Path(args.output_png))
    if args.readme:
        readme_block = [
            *main_table(groups),
            "",
            *teacher_table(teacher_runs, groups, b_robust),
            "",
            "![Overall vs worst-class accuracy](benchmarks/results/cifar10_lt_pareto.png)",
            "",
            *reading(groups, teacher_runs, b_robust, names, counts),
        ]
        update_readme(Path(args.readme), readme_block)
    print("\n".join(md))


if __name__ == "__main__":
    main()
