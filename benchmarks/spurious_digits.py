"""Does distillation lose the minority cells of a spurious attribute, and which objective keeps them?

The spurious digits (`--dataset_name digits_spurious`, `hf_fairkd.data.spurious`): the embedded digits with the ink
coloured red for classes 0-4 and green for 5-9 on 95% of the training rows (the other 5%, the minority cells, get
the other colour); in the test split each colour covers half of every class. The group column is `colour`; the
cells are class x colour.

Run from the repo root:  python benchmarks/spurious_digits.py [--seeds 0 1 2]
Writes benchmarks/results/spurious_digits.json after every run (a rerun skips what is done) and prints the table.
Each seed first runs the recipe with `--objective kd` (which trains the teacher and the one-hot baseline); every
other objective is then distilled from that seed's teacher and compared with that seed's baseline
(`--teacher_model_name_or_path`, `--baseline_model_name_or_path`).
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

from benchmarks.default_run import pct, seeds_hurt  # noqa: E402  (the default-run table's formatting)
from hf_fairkd.io_utils import atomic_write_json  # noqa: E402
from hf_fairkd.results import groups_hurt_and_helped  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "spurious_digits.json"
WORK = REPO / "benchmarks" / "work" / "spurious_digits"
# the recipe's defaults when this study was run (docs/GROUPS_STUDY.md): a ViT teacher trained for 60 epochs
COMMON = ["--dataset_name", "digits_spurious", "--group_columns", "colour", "--teacher_architecture", "vit",
          "--teacher_num_train_epochs", "60"]  # fmt: skip
CELLS = "class&colour"
# label -> extra recipe flags; "kd" comes first: it trains the teacher and the baseline the others reuse
VARIANTS = {
    "kd": ["--objective", "kd"],
    "robust_kd class_x_group": ["--objective", "robust_kd", "--dro_groups", "class_x_group"],
    "robust_kd class_x_group b=0.5": [
        "--objective", "robust_kd", "--dro_groups", "class_x_group", "--dro_tradeoff", "0.5",
    ],  # fmt: skip
    "robust_kd class_x_group eta=1": [
        "--objective", "robust_kd", "--dro_groups", "class_x_group", "--dro_step_size", "1.0",
    ],  # fmt: skip
    "robust_kd group": ["--objective", "robust_kd", "--dro_groups", "group"],
    "robust_kd class": ["--objective", "robust_kd", "--dro_groups", "class"],
    "ada_alpha class_x_group": ["--objective", "ada_alpha", "--reliability_groups", "class_x_group"],
}
QUIET = ["--disable_tqdm", "true", "--logging_steps", "100000"]


def minority_cells(cells: dict) -> list[str]:
    """The cells against the correlation: fewer training rows than the other colour of the same class."""
    by_class: dict[str, int] = {}
    for name, cell in cells["by_group"].items():
        by_class[name.split("&")[0]] = by_class.get(name.split("&")[0], 0) + cell["train_count"]
    return [n for n, c in cells["by_group"].items() if c["train_count"] < by_class[n.split("&")[0]] / 2]


def summary(metrics: dict) -> dict:
    out = {"cells_hurt": groups_hurt_and_helped(metrics).get(CELLS, ([], []))[0]}
    for role in ("teacher", "baseline", "student"):
        report = metrics[role]
        colour, cells = report["groups"]["colour"], report["groups"][CELLS]
        minority = minority_cells(cells)
        out[role] = {
            "accuracy": report["accuracy"],
            "worst_class_accuracy": report["worst_class_accuracy"],
            "worst_colour": colour["worst_group"],
            "worst_colour_accuracy": colour["worst_group_accuracy"],
            "worst_cell": cells["worst_group"],
            "worst_cell_accuracy": cells["worst_group_accuracy"],
            "minority_cells_accuracy": statistics.mean(cells["by_group"][n]["accuracy"] for n in minority),
        }
    return out


def run_one(seed: int, label: str, results: dict) -> None:
    key = f"seed{seed}/{label}"
    if key in results["runs"]:
        return
    first = WORK / f"seed{seed}" / "kd"
    out = WORK / f"seed{seed}" / label.replace(" ", "_").replace("=", "")
    flags = ["--output_dir", str(out), "--seed", str(seed), "--overwrite_output_dir", "true", *COMMON]
    if label != "kd":
        flags += ["--teacher_model_name_or_path", str(first / "teacher")]
        flags += ["--baseline_model_name_or_path", str(first / "baseline")]
    start, cpu = time.perf_counter(), os.times()
    # this checkout's package; one thread: two OpenMP threads on 2 shared cores slow these tiny models down
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "recipes/distill_vit.py", *flags, *QUIET, *VARIANTS[label]]
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = os.times()
    metrics = json.loads((out / "subgroup_metrics.json").read_text())
    results["runs"][key] = {
        "seed": seed,
        "label": label,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": (after.children_user + after.children_system) - (cpu.children_user + cpu.children_system),
        **summary(metrics),
    }
    atomic_write_json(RESULTS, results)


def table(results: dict) -> str:
    runs = list(results["runs"].values())
    first = [r for r in runs if r["label"] == "kd"]
    columns = ("accuracy", "minority_cells_accuracy", "worst_cell_accuracy", "worst_colour_accuracy")
    lines = [
        "| model | overall | minority cells (mean) | worst class x colour cell | worst colour | cells hurt (seeds) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for role in ("teacher", "baseline"):
        cells = " | ".join(pct([r[role][c] for r in first]) for c in columns)
        lines.append(f"| {role} ({'ERM, trained here' if role == 'teacher' else 'ce'}) | {cells} | — |")
    for label in VARIANTS:
        rows = [r for r in runs if r["label"] == label]
        if not rows:
            continue
        cells = " | ".join(pct([r["student"][c] for r in rows]) for c in columns)
        lines.append(f"| `{label}` | {cells} | {seeds_hurt(rows, 'cells_hurt')} |")
    seeds = sorted({r["seed"] for r in runs})
    wall = sum(r["seconds"] for r in runs)
    lines += ["", f"Seeds {seeds}; {len(runs)} runs, {wall / 60:.1f} min of wall time in all (one thread each)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", default=list(VARIANTS), help="variants to run (kd always first)")
    parser.add_argument("--table_only", action="store_true")
    options = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": {}}
    if not options.table_only:
        for seed in options.seeds:
            for label in ["kd", *[v for v in options.only if v != "kd"]]:
                run_one(seed, label, results)
                print(table(results), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
