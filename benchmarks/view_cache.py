"""Augmented views cached once (hf_fairkd.run.view_cache.build_view_cache): what a distilled student's epoch costs from
the view cache, against the one-hot student and against the online teacher, and what building the cache costs
against the teacher's bare forward over the same views.

    OMP_NUM_THREADS=1 python benchmarks/view_cache.py [--dataset_name ../shared/datasets/cifar10] [--quick]
    OMP_NUM_THREADS=1 python benchmarks/view_cache.py --part equivalence [--quick]

The budget CIFAR-10-LT preset (recipes/configs/cifar10_lt_budget.yaml): ResNet teacher at 48x48 (its own image
processor), small ResNet student at 32x32, batch 128, flip + crop augmentation, objective kd. The teacher is a
fresh, UNTRAINED one (its weights do not change the timing). A seeded subset of the long-tailed train split.

1. Build: `build_view_cache` (E epochs of views of N rows, dense float16) against the teacher's plain forward
   over the same views (the views made outside the timer, the same batch size, no grad), alternating which
   goes first, repeated; medians.
2. Epochs: four students trained by `DistillationTrainer` for E epochs each, their epochs interleaved (an
   epoch of each in turn, the order rotated each round, one trainer per thread and only one running):
   ``ce`` (today's one-hot student, random views), ``ce_view_cache`` (one-hot on the stored views),
   ``kd_view_cache`` (kd from the stored views and logits; the teacher is passed too, so that any forward
   of it would be counted) and ``kd_online`` (today's kd: the teacher runs on each random view).
   Per-epoch wall and thread CPU seconds; medians over epochs. Teacher forwards are counted per epoch,
   and the cache epoch each view-cache epoch read is recorded, so a variant that did not run as named shows.

3. Equivalence (``--part equivalence``, run apart; merged into the JSON under ``equivalence``, and kept when
   the speed part rewrites the file): on the embedded long-tailed digits, small ResNets, a teacher trained here
   (erm) and a dense float16 view cache built once, for seeds 0, 1, 2 a kd student (a) from the view cache and
   (b) with the online teacher on the same stored views, plus for the first 100 steps (c) the online teacher
   with its logits rounded to float16 (must give (a)'s curve) and (d) with them moved by their float16 rounding
   error the other way (the curve's sensitivity to a float16-sized change). Per-step losses, the direct float16
   bound, test accuracies (paired over seeds), teacher forwards per variant.

Writes benchmarks/results/view_cache.json (``--quick``: tiny sizes on the embedded digits, for the tests).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from transformers import TrainerCallback
from transformers.utils import logging as hf_logging

from hf_fairkd import DistillationTrainer
from hf_fairkd.io_utils import atomic_write_json
from hf_fairkd.run import arguments, models, preparation, preprocessing, stages
from hf_fairkd.run import cached_views as cv

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts by plain name, as scale.py's

from view_cache_build import PRESET, REPO, Forwards, measure_build, median  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "view_cache.json"
DATASET = REPO.parent / "shared" / "datasets" / "cifar10"
FULL = {"rows": 4096, "epochs": 6, "build_rounds": 5, "batch": None, "extra": ()}
QUICK = {"rows": 96, "epochs": 2, "build_rounds": 1, "batch": 32, "extra": ("--imbalance_factor", "10")}
VARIANTS = ("ce", "ce_view_cache", "kd_view_cache", "kd_online")
PAIRS = (
    ("kd_view_cache", "ce_view_cache"),
    ("kd_view_cache", "ce"),
    ("kd_online", "ce"),
    ("kd_online", "kd_view_cache"),
    ("ce_view_cache", "ce"),
)
GOALS = {
    "kd_view_cache_over_ce_view_cache": 1.05,
    "build_over_plain_forward": 1.1,
    "build_over_its_forwards": 1.1,
}


# ------------------------------------------------------------------------------------------ setup
def setup(dataset: str, rows: int, batch: int | None, work: Path, extra=()) -> dict:
    """The preset's arguments, models and a seeded subset of its long-tailed train split, prepared as the recipe
    prepares it (decoded once, teacher inputs at 48x48, augmented on tensors)."""
    argv = [
        str(PRESET),
        "--dataset_name",
        dataset,
        "--output_dir",
        str(work / "run"),
        "--disable_tqdm",
        "true",
    ]
    argv += [
        "--logging_steps",
        "100000",
        *extra,
        *(["--per_device_train_batch_size", str(batch)] if batch else []),
    ]
    model_args, data_args, args, _ = arguments.parse_recipe_args(argv=argv)
    start = time.perf_counter()
    splits, info = preparation.load_data(data_args)
    subset = splits["train"].shuffle(seed=0).select(range(min(rows, len(splits["train"]))))
    processor = preprocessing.make_image_processor(model_args)
    own = preprocessing.teacher_image_processor(model_args, processor)
    prepared = preprocessing.prepare_splits(
        {"train": subset}, info, processor, augment=True, teacher_processor=own
    )
    labels = np.asarray(subset[info.label_column])
    return {
        "model_args": model_args,
        "args": args,
        "train": prepared["train"],
        "names": info.class_names,
        "counts": np.bincount(labels, minlength=len(info.class_names)).tolist(),
        "setup_seconds": time.perf_counter() - start,
    }


# ------------------------------------------------------------------------------------------ 2. the epochs
class Baton:
    """One variant's epoch at a time, in a rotating order; the others wait."""

    def __init__(self, names, rounds: int):
        self.order = [names[(i + r) % len(names)] for r in range(rounds) for i in range(len(names))]
        self.turn, self.cond = 0, threading.Condition()
        self.startup = threading.Lock()  # trainers set up one at a time, too
        self.ready = threading.Barrier(len(names))  # and the first epoch waits for every set-up

    @property
    def current(self) -> str | None:
        return self.order[self.turn] if self.turn < len(self.order) else None

    def wait_for(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.current == name)

    def pass_on(self) -> None:
        with self.cond:
            self.turn += 1
            self.cond.notify_all()


class Turn(TrainerCallback):
    """Waits for its variant's turn at each epoch, and times the epoch (wall, this thread's CPU)."""

    def __init__(self, name: str, baton: Baton, forwards: Forwards, views=None):
        self.name, self.baton, self.forwards, self.views = name, baton, forwards, views
        self.wall, self.cpu, self.teacher_forwards, self.cache_epochs, self.steps = [], [], [], [], []

    def on_train_begin(self, args, state, control, **kwargs):
        self.baton.startup.release()
        self.baton.ready.wait()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.baton.wait_for(self.name)
        self.forwards.now, self.step0 = self.name, state.global_step
        self.start, self.start_cpu = time.perf_counter(), time.thread_time()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.wall.append(time.perf_counter() - self.start)
        self.cpu.append(time.thread_time() - self.start_cpu)
        self.teacher_forwards.append(self.forwards.take(self.name))
        self.steps.append(state.global_step - self.step0)
        if self.views is not None:
            self.cache_epochs.append(self.views.epoch)
        self.baton.pass_on()


def measure_epochs(run: dict, teacher, forwards: Forwards, cache: Path, epochs: int, work: Path) -> dict:
    train, views = run["train"], {}
    datasets_ = {
        "ce": train,
        "ce_view_cache": cv.with_cached_views(train, cache, logits=False),
        "kd_view_cache": cv.with_cached_views(train, cache, teacher=teacher, epochs=epochs),
        "kd_online": train,
    }
    baton = Baton(VARIANTS, epochs)
    trainers, turns = {}, {}
    for name in VARIANTS:
        kd = name.startswith("kd")
        cached = name.endswith("view_cache")
        views[name] = cv.view_cache_callback(datasets_[name]) if cached else None
        turns[name] = Turn(name, baton, forwards, views[name])
        args = stages.stage_args(
            run["args"], objective="kd" if kd else "ce", num_train_epochs=epochs, output_dir=str(work / name)
        )
        trainers[name] = DistillationTrainer(
            model=models.student_model(run["model_args"], run["names"], seed=run["args"].seed),
            args=args,
            teacher=teacher if kd else None,
            train_dataset=datasets_[name],
            class_counts=run["counts"],
            callbacks=[turns[name], *([views[name]] if cached else [])],
        )
    errors = {}

    def train(name):
        try:
            trainers[name].train()
        except BaseException as error:  # noqa: BLE001 - re-raised below, in the main thread
            errors[name] = error
            baton.ready.abort()  # the others stop too, instead of waiting for this one
            baton.pass_on()
            if baton.startup.locked():
                baton.startup.release()

    threads = []
    for name in VARIANTS:
        baton.startup.acquire()  # released by the trainer's on_train_begin: set-ups never overlap
        threads.append(threading.Thread(target=train, args=(name,), name=name))
        threads[-1].start()
    for thread in threads:
        thread.join()
    if errors:
        raise next(iter(errors.values()))
    results = {}
    for name, turn in turns.items():
        results[name] = {
            "epoch_wall_seconds": [round(x, 3) for x in turn.wall],
            "epoch_cpu_seconds": [round(x, 3) for x in turn.cpu],
            "median_epoch_wall_seconds": round(median(turn.wall), 3),
            "median_epoch_cpu_seconds": round(median(turn.cpu), 3),
            "teacher_forwards_per_epoch": turn.teacher_forwards,
            "steps_per_epoch": turn.steps,
            "cache_epoch_read": turn.cache_epochs if views[name] is not None else None,
            "final_train_loss": trainers[name].state.log_history[-1].get("train_loss"),
        }
    return results


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_name", default=str(DATASET))
    parser.add_argument("--rows", type=int, help="train rows (a seeded subset of the long-tailed split)")
    parser.add_argument("--epochs", type=int, help="epochs of views cached, and trained by each student")
    parser.add_argument("--build_rounds", type=int)
    parser.add_argument("--quick", action="store_true", help="tiny sizes on the embedded digits (the tests)")
    parser.add_argument("--output", help=f"default {RESULTS.relative_to(REPO)} (quick: in the work folder)")
    parser.add_argument("--work_dir", help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument(
        "--part",
        choices=("speed", "equivalence"),
        default="speed",
        help="speed (the build and the epochs, rewrites the JSON but its 'equivalence') or equivalence (the "
        "cached student against the online one on the same views, merged into the JSON under 'equivalence')",
    )
    cli = parser.parse_args(argv)
    sizes = dict(QUICK if cli.quick else FULL)
    sizes.update({k: getattr(cli, k) for k in ("rows", "epochs", "build_rounds") if getattr(cli, k)})
    dataset = "digits" if cli.quick else cli.dataset_name
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.set_num_threads(1)
    work = Path(cli.work_dir or tempfile.mkdtemp(prefix="hf_fairkd_view_cache_"))
    work.mkdir(parents=True, exist_ok=True)
    output = Path(cli.output) if cli.output else work / "view_cache.json" if cli.quick else RESULTS
    if cli.part == "equivalence":
        # the equivalence part: its own module beside this one
        from view_cache_equivalence import run_equivalence

        try:
            return run_equivalence(cli, output, work)
        finally:
            if not cli.work_dir:
                shutil.rmtree(work, ignore_errors=True)
    load_before, wall0, cpu0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
    try:
        run = setup(dataset, sizes["rows"], sizes["batch"], work, sizes["extra"])
        teacher = models.teacher_model(run["model_args"], run["names"], seed=0).eval()
        forwards = Forwards(teacher)
        batch = run["args"].per_device_train_batch_size
        epochs = sizes["epochs"]
        build = measure_build(run["train"], teacher, forwards, epochs, sizes["build_rounds"], batch, work)
        students = measure_epochs(run, teacher, forwards, build.pop("path"), epochs, work)
    finally:
        if not cli.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    ratios, cpu_ratios = {}, {}
    for (a, b), out in itertools.product(PAIRS, ((ratios, "wall"), (cpu_ratios, "cpu"))):
        # paired: each round's epochs of the two variants ran one after the other, under the same load
        seconds = [students[v][f"epoch_{out[1]}_seconds"] for v in (a, b)]
        out[0][f"{a}_over_{b}"] = median(x / y for x, y in zip(*seconds, strict=True))
    for key in ("build_over_plain_forward", "build_over_its_forwards"):
        ratios[key], cpu_ratios[key] = build[key], build[f"{key}_cpu"]
    train, model_args = run["train"], run["model_args"]
    results = {
        "mode": "quick" if cli.quick else "full",
        "ratios": {k: round(v, 4) for k, v in ratios.items()},
        "ratios_cpu_seconds": {k: round(v, 4) for k, v in cpu_ratios.items()},
        "goals": {
            k: {"target": f"<= {v}", "met": ratios[k] <= v, "met_in_cpu_seconds": cpu_ratios[k] <= v}
            for k, v in GOALS.items()
        },
        "teacher_forwards_per_epoch": {
            name: max(students[name]["teacher_forwards_per_epoch"]) for name in VARIANTS
        },
        "students": students,
        "build": build,
        "setup": {
            "preset": PRESET.name,
            "dataset": dataset,
            "teacher": "UNTRAINED (fresh, seeded) "
            f"{type(teacher).__name__} from {model_args.teacher_config_name}, "
            f"{sum(p.numel() for p in teacher.parameters()):,} parameters, image {model_args.teacher_image_size}: "
            "timing only",
            "student": f"{model_args.student_config_name}, image {model_args.image_size}",
            "train_rows": len(train),
            "epochs": epochs,
            "batch_size": batch,
            "objective_kd": f"alpha {run['args'].alpha}, temperature {run['args'].temperature}",
            "view_cache": "dense float16, view_seed 0",
            "kd_view_cache_teacher_passed": True,
            "data_setup_seconds": round(run["setup_seconds"], 2),
            "torch_threads": torch.get_num_threads(),
            "dataloader_num_workers": run["args"].dataloader_num_workers,
            "interleaving": "build vs plain forward alternate first per round; the students' epochs run in turn "
            "(one thread each, one running), the order rotated each round",
            "ratios": "medians over rounds of paired ratios (each round's two measurements ran back to back); wall "
            "seconds on a machine shared with other work are noisy, CPU seconds (this thread's) much less",
        },
        "total_wall_seconds": round(time.perf_counter() - wall0, 1),
        "total_process_cpu_seconds": round(time.process_time() - cpu0, 1),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
            "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    if output.exists():  # the equivalence part's result, measured apart, is kept
        previous = json.loads(output.read_text())
        if "equivalence" in previous:
            results["equivalence"] = previous["equivalence"]
    atomic_write_json(output, results)
    print(f"{'variant':<16}{'epoch wall s':>14}{'epoch cpu s':>13}{'teacher fwd/epoch':>19}")
    for name in VARIANTS:
        s = students[name]
        print(
            f"{name:<16}{s['median_epoch_wall_seconds']:>14.2f}{s['median_epoch_cpu_seconds']:>13.2f}"
            f"{results['teacher_forwards_per_epoch'][name]:>19}"
        )
    print(", ".join(f"{k} {v:.3f}" for k, v in results["ratios"].items()))
    print(f"wrote {output} ({results['total_wall_seconds']} s)")
    return results


if __name__ == "__main__":
    main()
