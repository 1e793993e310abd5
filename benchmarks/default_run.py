"""The README's default-run numbers: the bare default command on 3 seeds, and other objectives beside it.

Run from the repo root:  python benchmarks/default_run.py [--seeds 0 1 2]
Writes benchmarks/results/default_run.json after every run (a rerun skips what is done) and prints the
README's tables. Each seed runs the README's first command (`recipes/distill_vit.py` with its defaults and
`--seed S`: a small ResNet teacher, the one-hot baseline and the robust_kd student on the long-tailed digits,
subgroup column `stroke`), timed in wall and CPU seconds (the child's user + system time) with the torch
threads the bare command takes; then every other objective of the table is distilled from that seed's teacher
and compared with that seed's baseline (`--teacher_model_name_or_path`, `--baseline_model_name_or_path`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hf_fairkd.io_utils import atomic_write_json
from hf_fairkd.metrics import hurt_and_helped_classes
from hf_fairkd.results import groups_hurt_and_helped

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "default_run.json"
WORK = REPO / "benchmarks" / "work" / "default_run"
GROUP, CELLS = "stroke", "class&stroke"
DEFAULT = "default (robust_kd, b = 0.5)"
# label -> extra recipe flags; DEFAULT is the bare command and comes first (it trains the teacher and baseline)
VARIANTS = {
    DEFAULT: [],
    "kd": ["--objective", "kd"],
    "balanced_kd": ["--objective", "balanced_kd"],
    "ada_alpha": ["--objective", "ada_alpha"],
    "robust_kd b = 0.5, class x stroke": ["--dro_groups", "class_x_group"],
    "robust_kd b = 1": ["--dro_tradeoff", "1"],
}
DEFAULT_SETUP = "digits rho 10, group stroke; small ResNet teacher; robust_kd b = 0.5"
THREADS = None  # --threads
QUIET = ["--disable_tqdm", "true", "--logging_steps", "100000"]


def summary(metrics: dict) -> dict:
    hurt, helped = hurt_and_helped_classes(metrics.get("student_minus_baseline"))
    groups = groups_hurt_and_helped(metrics)
    out = {
        "hurt": hurt,
        "helped": helped,
        "groups_hurt": groups.get(GROUP, ([], []))[0],
        "cells_hurt": groups.get(CELLS, ([], []))[0],
    }
    for role in ("teacher", "baseline", "student"):
        report = metrics[role]
        out[role] = {
            "accuracy": report["accuracy"],
            "balanced_accuracy": report["balanced_accuracy"],
            "worst_class_accuracy": report["worst_class_accuracy"],
            "worst_class": report["worst_class"],
            "worst_group_accuracy": report["groups"][GROUP]["worst_group_accuracy"],
            "worst_group": report["groups"][GROUP]["worst_group"],
            "worst_cell_accuracy": report["groups"][CELLS]["worst_group_accuracy"],
        }
    return out


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """Run ``command``; its wall seconds and CPU seconds (user + system of the child and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_one(seed: int, label: str, results: dict) -> None:
    key = f"seed{seed}/{label}"
    if key in results["runs"]:
        return
    default_dir = WORK / f"seed{seed}" / "default"
    out = default_dir if label == DEFAULT else WORK / f"seed{seed}" / label.replace(" ", "_").replace(",", "")
    flags = ["--output_dir", str(out), "--seed", str(seed), "--overwrite_output_dir", "true", *QUIET]
    if label != DEFAULT:
        flags += [
            "--teacher_model_name_or_path", str(default_dir / "teacher"),
            "--baseline_model_name_or_path", str(default_dir / "baseline"),
        ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's package, even beside an editable install
    env.pop("OMP_NUM_THREADS", None)  # the threads the bare command takes, unless --threads
    if THREADS:  # on a shared machine, idle torch threads spin and cost several times the CPU of one thread
        env["OMP_NUM_THREADS"] = str(THREADS)
    command = [sys.executable, "recipes/distill_vit.py", *flags, *VARIANTS[label]]
    wall, cpu = timed(command, env)
    metrics = json.loads((out / "subgroup_metrics.json").read_text())
    results["runs"][key] = {
        "seed": seed,
        "label": label,
        "seconds": wall,
        "cpu_seconds": cpu,
        "cores": os.cpu_count(),
        "torch_threads": THREADS or "default",
        **summary(metrics),
    }
    atomic_write_json(RESULTS, results)


def time_bare_command(results: dict, repeats: int) -> None:
    """The README's first command as a newcomer runs it (`accelerate launch recipes/distill_vit.py`, torch's own
    threads, seed 42), ``repeats`` times one after the other: wall and CPU seconds of each."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS", None)
    out = WORK / "bare"
    runs = []
    for _ in range(repeats):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                   "recipes/distill_vit.py", "--output_dir", str(out), "--overwrite_output_dir", "true", *QUIET]  # fmt: skip
        wall, cpu = timed(command, env)
        runs.append({"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)})
    results["bare_command"] = {
        "command": "accelerate launch --num_processes 1 recipes/distill_vit.py",
        "cores": os.cpu_count(),
        "runs": runs,
        "goal_wall_seconds": 60,
        "met": max(r["wall_seconds"] for r in runs) <= 60,
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
    default = [r for r in runs if r["label"] == DEFAULT]
    lines = [
        "| model (3 seeds, mean ± sd) | overall | worst class | worst stroke group | worst class x stroke cell |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = [
        ("teacher (small ResNet, trained here)", "teacher", default),
        ("one-hot baseline (`ce`)", "baseline", default),
    ]
    rows += [
        (
            f"`{label}`" if label != DEFAULT else f"**{label}**",
            "student",
            [r for r in runs if r["label"] == label],
        )
        for label in VARIANTS
    ]
    for name, role, chosen in rows:
        if chosen:
            lines.append(
                f"| {name} | {pct([r[role]['accuracy'] for r in chosen])} | "
                f"{pct([r[role]['worst_class_accuracy'] for r in chosen])} | "
                f"{pct([r[role]['worst_group_accuracy'] for r in chosen])} | "
                f"{pct([r[role]['worst_cell_accuracy'] for r in chosen])} |"
            )
    lines += [
        "",
        "| student objective | classes hurt vs the baseline (seeds) | stroke groups hurt | cells hurt |",
    ]
    lines.append("|---|---|---|---|")
    for label in VARIANTS:
        chosen = [r for r in runs if r["label"] == label]
        if chosen:
            lines.append(
                f"| {label} | {seeds_hurt(chosen, 'hurt')} | {seeds_hurt(chosen, 'groups_hurt')} | "
                f"{seeds_hurt(chosen, 'cells_hurt')} |"
            )
    if "bare_command" in results:
        bare = results["bare_command"]
        lines += [
            "",
            f"Bare command ({bare['command']}, {bare['cores']} cores): "
            + ", ".join(
                f"{r['wall_seconds']:.0f} s wall / {r['cpu_seconds']:.0f} s CPU" for r in bare["runs"]
            ),
        ]
    if default:
        wall, cpu = [r["seconds"] for r in default], [r["cpu_seconds"] for r in default]
        lines += [
            "",
            f"Default command: {statistics.mean(wall):.0f} s wall (min {min(wall):.0f} s), {statistics.mean(cpu):.0f} s "
            f"of CPU, mean over {len(wall)} seed(s) on {default[0]['cores']} cores, torch threads "
            f"{default[0]['torch_threads']}.",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--table_only", action="store_true")
    parser.add_argument("--time_bare", type=int, default=0, help="also time the bare README command N times")
    parser.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS of every run (default: torch's)"
    )
    options = parser.parse_args()
    global THREADS
    THREADS = options.threads
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": {}}
    if results.get("default") != DEFAULT_SETUP:
        results = {"default": DEFAULT_SETUP, "runs": {}}  # runs of an earlier default are not mixed in
    if not options.table_only:
        for seed in options.seeds:
            for label in VARIANTS:
                run_one(seed, label, results)
        if options.time_bare:
            time_bare_command(results, options.time_bare)
    print(tables(results))


if __name__ == "__main__":
    main()
