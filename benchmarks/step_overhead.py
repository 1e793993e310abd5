"""Per-step cost of DistillationTrainer against a plain transformers.Trainer on the same student, batch and optimizer.

Run from the repo root:  python benchmarks/step_overhead.py
Writes benchmarks/results/step_overhead.json and prints a table.

Three trainers are built on the same student weights: a plain Trainer with the model's own CE loss, a
DistillationTrainer (kd) reading a float16 teacher cache, and a DistillationTrainer (kd) running the teacher
online. One optimisation step is the Trainer's inner loop, using each trainer's own dataloader, optimizer,
scheduler and `training_step`: fetch and collate the next batch (reading the cached column is part of the
cached path's cost), count its items, forward + backward, optimizer step, scheduler step, zero_grad. The
steps of the three trainers and one teacher forward alone (no_grad, as the trainer runs it, on the same
batch) are interleaved one by one in rotating order, so changes in machine speed (other processes on a
shared machine) hit all four alike; medians over the timed steps are reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from datasets import Array3D, ClassLabel, Dataset, Features, disable_progress_bars
from transformers import Trainer, TrainingArguments, ViTForImageClassification
from transformers.utils import logging as hf_logging

from hf_fairkd import DistillationArguments, DistillationTrainer
from hf_fairkd.io_utils import atomic_write_json
from hf_fairkd.run.models import build_vit
from hf_fairkd.teacher import build_teacher_cache

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "step_overhead.json"
NUM_CLASSES, BATCH, IMAGE = 10, 32, 32
WARMUP, TIMED = 5, 80  # steps per trainer
GOALS = {"cached_over_plain": 1.03, "online_over_plain_plus_teacher": 1.05}


def vit(hidden: int, layers: int, seed: int) -> ViTForImageClassification:
    names = [f"class_{i}" for i in range(NUM_CLASSES)]
    sizes = dict(hidden_size=hidden, num_layers=layers, num_heads=4, image_size=IMAGE, patch_size=4)
    return build_vit(names, seed=seed, **sizes)


def synthetic_images(rows: int) -> Dataset:
    rng = np.random.default_rng(0)
    features = Features(
        {"pixel_values": Array3D((3, IMAGE, IMAGE), "float32"), "labels": ClassLabel(num_classes=NUM_CLASSES)}
    )
    pixels = rng.normal(size=(rows, 3, IMAGE, IMAGE)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, rows)
    return Dataset.from_dict({"pixel_values": pixels, "labels": labels}, features=features).with_format(
        "torch"
    )


def synchronize(device) -> None:
    """Wait for a GPU's queued kernels, so that a step's wall time is its own (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def stepper(trainer: Trainer, steps: int):
    """A function running one optimisation step of ``trainer`` the way its training loop does."""
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    batches = iter(trainer.get_train_dataloader())
    model, device = trainer.model, trainer.args.device
    model.train()

    def step() -> None:
        batch = next(batches)
        num_items = trainer._get_num_items_in_batch([batch], device)
        trainer.current_gradient_accumulation_steps = 1
        trainer.training_step(model, batch, num_items)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad()
        synchronize(device)

    return step


def common_args(out: Path, use_cpu: bool = True) -> dict:
    return dict(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        learning_rate=1e-4,
        max_steps=WARMUP + TIMED,
        logging_steps=10_000,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=use_cpu,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def measure(
    out: Path, warmup: int = WARMUP, timed: int = TIMED, use_cpu: bool = True
) -> dict[str, list[float]]:
    """Seconds of each timed step of the plain, cached and online trainers and of the teacher forward alone,
    interleaved step by step in rotating order (``use_cpu=False``: on the accelerator, if there is one)."""
    steps = warmup + timed
    data = synthetic_images(BATCH * steps)
    teacher = vit(128, 4, seed=1).eval().requires_grad_(False)
    cached = build_teacher_cache(data, teacher, batch_size=64)
    student_state = vit(64, 2, seed=0).state_dict()

    def student():
        model = vit(64, 2, seed=0)
        model.load_state_dict(student_state)
        return model

    base = {**common_args(out, use_cpu), "max_steps": steps}
    kd_args = dict(objective="kd", **base)
    counts = [1] * NUM_CLASSES
    trainers = {
        "plain": Trainer(model=student(), args=TrainingArguments(**base), train_dataset=data),
        "cached": DistillationTrainer(
            model=student(), args=DistillationArguments(**kd_args), train_dataset=cached, class_counts=counts
        ),
        "online": DistillationTrainer(
            model=student(),
            args=DistillationArguments(**kd_args),
            teacher=teacher,
            train_dataset=data,
            class_counts=counts,
        ),
    }
    run = {name: stepper(trainer, steps) for name, trainer in trainers.items()}
    device = trainers["plain"].args.device
    teacher.to(device)  # the online trainer placed it there already; the forward alone runs beside it
    pixels = data[:BATCH]["pixel_values"].to(device)

    def teacher_forward() -> None:
        with torch.no_grad():
            teacher(pixel_values=pixels)
        synchronize(device)

    run["teacher_forward"] = teacher_forward
    names = list(run)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(steps):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            start = time.perf_counter()
            run[name]()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def ratios(times: dict[str, list[float]]) -> dict[str, float]:
    """The two overhead ratios of `measure`'s times, from the medians."""
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "cached_over_plain": med["cached"] / med["plain"],
        "online_over_plain_plus_teacher": med["online"] / (med["plain"] + med["teacher_forward"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine a 2-thread OpenMP pool slows down many-fold "
        "whenever another process takes a core, which swamps the few percent measured here)",
    )
    cli = parser.parse_args()
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    disable_progress_bars()
    torch.set_num_threads(cli.threads)
    load_before = os.getloadavg()
    out = REPO / "benchmarks" / "results" / "_step_overhead_tmp"
    times = measure(out)
    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = ratios(times)
    results = {
        **{k: round(v, 4) for k, v in ratio.items()},
        "goals": {k: {"target": f"<= {v}", "met": ratio[k] <= v} for k, v in GOALS.items()},
        "median_seconds": {k: round(v, 5) for k, v in med.items()},
        # the same ratios from the steps taken side by side (index by index), median over the steps
        "paired_median_ratios": {
            "cached_over_plain": statistics.median(c / p for c, p in zip(times["cached"], times["plain"])),
            "online_over_plain_plus_teacher": statistics.median(
                o / (p + t) for o, p, t in zip(times["online"], times["plain"], times["teacher_forward"])
            ),
        },
        "raw_seconds": {name: [round(x, 5) for x in t] for name, t in times.items()},
        "setup": {
            "student": "ViT hidden 64, 2 layers, 4 heads, image 32, patch 4",
            "teacher": "ViT hidden 128, 4 layers, 4 heads, image 32, patch 4",
            "num_classes": NUM_CLASSES,
            "batch_size": BATCH,
            "optimizer": "adamw_torch (Trainer default), lr 1e-4",
            "objective": "kd (hinton, alpha 0.5, T 2)",
            "cache": "dense float16",
            "timed_steps": TIMED,
            "warmup_steps": WARMUP,
            "step": "next batch + item count + training_step (forward, loss, backward) + optimizer/scheduler step "
            "+ zero_grad; the four measurements interleaved step by step in rotating order",
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
    print(f"{'measurement':<34}{'median ms':>12}")
    for name in ("plain", "cached", "online", "teacher_forward"):
        print(f"{name:<34}{1000 * med[name]:>12.2f}")
    for name, value in ratio.items():
        print(
            f"{name:<34}{value:>12.4f}   goal <= {GOALS[name]}: {'met' if value <= GOALS[name] else 'MISSED'}"
        )
    atomic_write_json(RESULTS, results)  # a reader never sees half a results file
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
