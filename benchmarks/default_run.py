"""The README's default-run numbers: the embedded default on 3 seeds, and every fix on the same teachers.

Run from the repo root:  python benchmarks/default_run.py [--seeds 0 1 2]
Writes benchmarks/results/default_run.json after every run (a rerun skips what is done) and prints the
README's tables. Each seed runs the README's first command (`recipes/distill_vit.py` with its defaults and
`--seed S`), which trains the teacher, the one-hot baseline and the kd student; then each student objective
of the table is distilled from that seed's teacher (`--teacher_model_name_or_path <run>/teacher`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hf_fairkd.io_utils import atomic_write_json  # noqa: E402
from hf_fairkd.metrics import hurt_and_helped_classes  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "default_run.json"
WORK = REPO / "benchmarks" / "work" / "default_run"
# label -> extra recipe flags; "kd" is the default command itself
VARIANTS = {
    "kd": [],
    "ada_alpha": ["--objective", "ada_alpha"],
    "ada_margin": ["--objective", "ada_margin"],
    "balanced_kd": ["--objective", "balanced_kd"],
    "kd --teacher_logit_mode prior_adjusted": ["--teacher_logit_mode", "prior_adjusted"],
    "robust_kd --dro_tradeoff 1": ["--objective", "robust_kd", "--dro_tradeoff", "1"],
    "robust_kd --dro_tradeoff 0.5": ["--objective", "robust_kd", "--dro_tradeoff", "0.5"],
}


def summary(metrics: dict) -> dict:
    hurt, helped = hurt_and_helped_classes(metrics.get("student_minus_baseline"))
    out = {"hurt": hurt, "helped": helped}
    for role in ("teacher", "baseline", "student"):
        report = metrics[role]
        out[role] = {
            "accuracy": report["accuracy"],
            "balanced_accuracy": report["balanced_accuracy"],
            "worst_class_accuracy": report["worst_class_accuracy"],
            "worst_class": report["worst_class"],
        }
    return out


def run_one(seed: int, label: str, results: dict) -> None:
    key = f"seed{seed}/{label}"
    if key in results["runs"]:
        return
    out = WORK / f"seed{seed}" / label.replace(" ", "_").replace("-", "")
    flags = ["--output_dir", str(out), "--seed", str(seed), "--overwrite_output_dir", "true"]
    if label != "kd":
        flags += ["--teacher_model_name_or_path", str(WORK / f"seed{seed}" / "kd" / "teacher")]
    start = time.perf_counter()
    # this checkout's package, even beside an editable install; one thread: on 2 shared cores two OpenMP threads
    # slowed these tiny models down by 10-100x whenever another job ran
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "recipes/distill_vit.py", *flags, *VARIANTS[label]]
    subprocess.run(command, cwd=REPO, env=env, check=True)
    metrics = json.loads((out / "subgroup_metrics.json").read_text())
    results["runs"][key] = {
        "seed": seed,
        "label": label,
        "seconds": time.perf_counter() - start,
        **summary(metrics),
    }
    atomic_write_json(RESULTS, results)


def pct(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    return f"{mean:.1f}%" if len(values) < 2 else f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}%"


def seeds_hurt(rows: list[dict], key: str) -> str:
    """The names listed under ``key`` in any of the rows (one per seed), each with the number of seeds."""
    hurt: dict[str, int] = {}
    for row in rows:
        for name in row[key]:
            hurt[name] = hurt.get(name, 0) + 1
    return ", ".join(f"{n} ({k}/{len(rows)})" for n, k in sorted(hurt.items())) or "none"


def tables(results: dict) -> str:
    runs = list(results["runs"].values())
    default = [r for r in runs if r["label"] == "kd"]
    lines = ["| model | overall | balanced | worst class |", "|---|---:|---:|---:|"]
    for role in ("teacher", "baseline", "student"):
        lines.append(
            f"| {role} | {pct([r[role]['accuracy'] for r in default])} | "
            f"{pct([r[role]['balanced_accuracy'] for r in default])} | "
            f"{pct([r[role]['worst_class_accuracy'] for r in default])} |"
        )
    lines += [
        "",
        "| student objective (same teacher per seed) | overall | worst class | classes hurt (seeds) |",
    ]
    lines.append("|---|---:|---:|---|")
    base = [r["baseline"] for r in default]
    lines.append(
        f"| one-hot baseline (`ce`) | {pct([b['accuracy'] for b in base])} | "
        f"{pct([b['worst_class_accuracy'] for b in base])} | — |"
    )
    for label in VARIANTS:
        rows = [r for r in runs if r["label"] == label]
        if not rows:
            continue
        lines.append(
            f"| `{label}` | {pct([r['student']['accuracy'] for r in rows])} | "
            f"{pct([r['student']['worst_class_accuracy'] for r in rows])} | {seeds_hurt(rows, 'hurt')} |"
        )
    seconds = [r["seconds"] for r in default]
    lines += [
        "",
        f"Default command wall time: {statistics.mean(seconds):.0f} s mean over {len(seconds)} seed(s).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--table_only", action="store_true")
    options = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": {}}
    if not options.table_only:
        for seed in options.seeds:
            for label in VARIANTS:
                run_one(seed, label, results)
    print(tables(results))


if __name__ == "__main__":
    main()
