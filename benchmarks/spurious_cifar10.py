"""Does distillation lose a minority group of a spurious attribute on CIFAR-10, and which objective keeps it?

The spurious CIFAR-10 (`hf_fairkd.data.spurious`): 600 train (incl. a 100-row holdout) and 200 test rows per class
of the local CIFAR-10 copy, a 4-pixel colour border red for classes 0-4 and green for 5-9 on 95% of each training
class (the other 5%, the minority cells, get the other colour), each colour on half of every class in test. The
group column is `colour`; the groups that matter are the 20 class x colour cells.

Run from the repo root:  python benchmarks/spurious_cifar10.py            (everything, resumable, in order)
                         python benchmarks/spurious_cifar10.py --report   (only the results of what finished)
Steps (each one process at a time, OMP_NUM_THREADS=1 unless STUDY_THREADS says otherwise): the data; the ERM
teacher and the group-DRO teacher (b = 0.5) (`recipes/train_teacher.py`, once each); four comparisons (`recipes/compare_objectives.py` with
recipes/configs/compare_spurious_cifar10.yaml, the teacher given), interleaved seed by seed with --max_runs so a
stopped study has whole seeds of the main settings:
  erm_main   (ERM teacher, seeds 0 1 2): ce, kd, robust_kd class_x_group (b = 1)
  dro_main   (group-DRO teacher, seeds 0 1 2): ce, kd
  erm_single (ERM teacher, seed 0): robust_kd class / group (b = 1), ada_alpha class / class_x_group, balanced_kd
  erm_sweep  (ERM teacher, seed 0): robust_kd class_x_group at b = 0.25 and 0.5
Students train with flip + crop augmentation on views drawn once per comparison (the view cache: the teacher runs
once over every epoch's views, no student runs it per step). The one-hot baselines are trained once, in erm_main;
the other comparisons reuse them with --baselines_from erm_main (same data, student, flags and views), since a
baseline does not depend on the teacher or on the students compared. After every step the results are written:
benchmarks/results/spurious_cifar10.json (every run, the teachers, the findings G1-G5, the elapsed time),
spurious_cifar10_table.md, spurious_cifar10_pareto.png and the run files under spurious_cifar10_runs/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hf_fairkd.io_utils import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts by plain name, as scale.py's

from spurious_cifar10_findings import report  # noqa: E402
from spurious_cifar10_study import (  # noqa: E402
    DATA,
    DATA_COMMAND,
    OUT_TABLE,
    REPO,
    SCHEDULE,
    TEACHER_FLAGS,
    TEACHERS,
    WORK,
    compare_command,
)

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("STUDY_THREADS", "1")}


# ----------------------------------------------------------------------------------------------- running
def log_path(name: str) -> Path:
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    return WORK / "logs" / f"{name}.log"


def run_command(command: list[str], name: str, cwd: Path = REPO) -> float:
    start = time.time()
    with open(log_path(name), "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {' '.join(command)}\n")
        log.flush()
        subprocess.run([sys.executable, *command], cwd=cwd, env=ENV, stdout=log, stderr=log, check=True)
    return time.time() - start


def build_data() -> None:
    if not (DATA / "dataset_dict.json").exists():
        run_command(DATA_COMMAND, "data")


def train_teacher(name: str) -> None:
    folder = WORK / f"teacher_{name}"
    if (folder / "subgroup_metrics.json").exists():
        return
    seconds = run_command(
        [
            "recipes/train_teacher.py",
            *TEACHERS[name],
            *TEACHER_FLAGS,
            "--output_dir",
            str(folder.relative_to(REPO)),
        ],
        f"teacher_{name}",
    )
    atomic_write_json(folder / "wall.json", {"wall_seconds": round(seconds, 2)})


def run_step(kind: str, name: str, max_runs: int | None) -> None:
    if kind == "teacher":
        train_teacher(name)
        return
    run_command(compare_command(name, max_runs), name, cwd=WORK)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--report", action="store_true", help="only write the results of what finished")
    options = parser.parse_args()
    if not options.report:
        start = WORK / "study_start_epoch"
        WORK.mkdir(parents=True, exist_ok=True)
        if not start.exists():
            start.write_text(str(time.time()))
        build_data()
        for kind, name, max_runs in SCHEDULE:
            run_step(kind, name, max_runs)
            report()
    result = report()
    print(OUT_TABLE.read_text())
    print(json.dumps(result["findings"], indent=1))


if __name__ == "__main__":
    main()
