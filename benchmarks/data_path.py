"""How much of a student step is data: the recipe's training throughput against the model's own, same batches.

    OMP_NUM_THREADS=1 python benchmarks/data_path.py [--dataset_name /work/shared/datasets/cifar10]

On the budget CIFAR-10-LT preset (recipes/configs/cifar10_lt_budget.yaml) the splits, image processor,
student and stage arguments are built exactly as recipes/distill_vit.py builds them for the one-hot baseline
stage (objective ``ce``). Three measurements, each of STEPS optimisation steps, repeated in ROUNDS rounds:

* ``train``: the recipe's path. A `DistillationTrainer` (objective ``ce``) steps through its own train
  dataloader the way its training loop does (as benchmarks/step_overhead.py): fetch and collate the next batch
  (decode, resize, normalise on the fly), count its items, ``training_step`` (forward, loss, backward),
  optimizer step, scheduler step, zero_grad.
* ``model``: the model alone on the SAME batches, already collated into tensors in memory:
  ``model(pixel_values, labels).loss``, backward, optimizer step, scheduler step, zero_grad, with an optimizer
  and scheduler made by a second trainer of the same arguments (same AdamW groups and learning rate).
* ``trainer_in_memory`` (for the split of the gap): the first path's ``training_step`` + optimizer step on the
  same in-memory batches, i.e. the trainer without its data loading.

The three paths are interleaved step by step: the train path draws a batch and steps, then the other two step on
that batch, so a change of machine load hits all three alike.
Throughputs are images/s over each round's timed steps; medians over the rounds are reported. torch runs with
one thread (on a shared 2-core machine a 2-thread pool slows down many-fold whenever another process takes a
core). Writes benchmarks/results/data_path.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import datasets
import torch
import transformers
from transformers.utils import logging as hf_logging

from hf_fairkd import DistillationTrainer
from hf_fairkd.io_utils import atomic_write_json
from hf_fairkd.run import arguments, models, preparation, preprocessing, stages

REPO = Path(__file__).resolve().parent.parent
PRESET = REPO / "recipes" / "configs" / "cifar10_lt_budget.yaml"
RESULTS = REPO / "benchmarks" / "results" / "data_path.json"
DATASET = "/work/shared/datasets/cifar10"
WARMUP, STEPS, ROUNDS = 5, 60, 3
GOAL = 0.85  # the target for train_over_model_throughput


def make_trainer(student, args, prepared, processor) -> DistillationTrainer:
    """The baseline stage's trainer, built as `stages.train_stage` builds it (without training)."""
    return DistillationTrainer(
        model=student,
        args=args,
        teacher=None,
        train_dataset=prepared["train"],
        eval_dataset=None,
        holdout_dataset=prepared["holdout"] if len(prepared["holdout"]) else None,
        class_counts=prepared.class_counts,
        processing_class=processor,
    )


def endless(loader):
    """The dataloader's batches, epoch after epoch (a new epoch starts a new iterator, as the loop does)."""
    while True:
        yield from loader


def synchronize(device) -> None:
    """Wait for a GPU's queued kernels, so that a step's wall time is its own (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def splits_columns(prepared) -> list[str]:
    """The stored columns of the prepared train split (the fast path stores uint8 ``pixels``)."""
    return list(prepared["train"].column_names)


def images(batch) -> int:
    return int(batch["labels"].shape[0])


def measure(
    dataset_name: str,
    preset: str,
    work: str,
    steps: int = STEPS,
    rounds: int = ROUNDS,
    warmup: int = WARMUP,
    extra_argv: tuple[str, ...] = (),
) -> dict:
    """The three paths' throughputs (see the module docstring) on ``preset`` with ``dataset_name``, the stage's
    scratch folder in ``work``; ``extra_argv``: more recipe arguments (e.g. ``--use_cpu true``). Returns the
    results without the machine's description."""
    total_steps = warmup + rounds * steps

    # ---- the recipe's own construction (recipes/distill_vit.py, baseline stage)
    model_args, data_args, args, _ = arguments.parse_recipe_args(
        argv=[
            preset,
            "--dataset_name",
            dataset_name,
            "--output_dir",
            work,
            "--disable_tqdm",
            "true",
            "--logging_steps",
            "100000",
            *extra_argv,
        ]  # fmt: skip
    )
    start = time.perf_counter()
    splits, info = preparation.load_data(data_args)
    processor = preprocessing.make_image_processor(model_args)
    teacher_processor = preprocessing.teacher_image_processor(model_args, processor)
    prepared = preprocessing.prepare_splits(
        splits, info, processor, augment=data_args.augment, teacher_processor=teacher_processor
    )
    setup_seconds = time.perf_counter() - start
    baseline_args = stages.stage_args(args, output_dir=os.path.join(work, "baseline"), objective="ce")
    batch_size = baseline_args.per_device_train_batch_size

    trainer = make_trainer(
        models.student_model(model_args, info.class_names, seed=args.seed), baseline_args, prepared, processor
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=total_steps)
    device = trainer.args.device
    batches = endless(trainer.get_train_dataloader())
    train_model = trainer.model
    train_model.train()

    # the model alone: same init, and the optimizer/scheduler a trainer of the same arguments makes
    plain = make_trainer(
        models.student_model(model_args, info.class_names, seed=args.seed), baseline_args, prepared, processor
    )
    plain.create_optimizer_and_scheduler(num_training_steps=total_steps)
    model = plain.model
    model.train()

    def trainer_step_in_memory(batch: dict) -> None:
        num_items = trainer._get_num_items_in_batch([batch], device)
        trainer.current_gradient_accumulation_steps = 1
        trainer.training_step(train_model, batch, num_items)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        train_model.zero_grad()
        synchronize(device)

    def train_step() -> dict:
        """The recipe's path: the next batch from the trainer's own dataloader, then the same step."""
        batch = next(batches)
        trainer_step_in_memory(batch)
        return batch

    def model_step(batch: dict) -> None:
        loss = model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss
        loss.backward()
        plain.optimizer.step()
        plain.lr_scheduler.step()
        model.zero_grad()
        synchronize(device)

    # warm-up (not timed): first batches, allocator, kernels
    for _ in range(warmup):
        batch = train_step()
        model_step(batch)

    per_round = []
    for _ in range(rounds):
        count, step_seconds = 0, {"train": [], "model": [], "trainer_in_memory": []}
        for _ in range(steps):
            # the three paths interleaved step by step: a change of machine load hits all three alike
            start = time.perf_counter()
            batch = train_step()
            step_seconds["train"].append(time.perf_counter() - start)
            for name, step in (("model", model_step), ("trainer_in_memory", trainer_step_in_memory)):
                start = time.perf_counter()
                step(batch)
                step_seconds[name].append(time.perf_counter() - start)
            count += images(batch)
        throughput = {name: count / sum(seconds) for name, seconds in step_seconds.items()}
        per_round.append(
            {
                "images": count,
                "images_per_second": {k: round(v, 2) for k, v in throughput.items()},
                "train_over_model_throughput": round(throughput["train"] / throughput["model"], 4),
                "median_step_ms": {k: round(1000 * statistics.median(v), 3) for k, v in step_seconds.items()},
            }
        )

    med = {
        name: statistics.median(r["images_per_second"][name] for r in per_round)
        for name in ("train", "model", "trainer_in_memory")
    }
    ratio = statistics.median(r["train_over_model_throughput"] for r in per_round)
    step_ms = {
        name: statistics.median(r["median_step_ms"][name] for r in per_round)
        for name in ("train", "model", "trainer_in_memory")
    }
    return {
        "train_over_model_throughput": round(ratio, 4),
        "goal": {"target": f">= {GOAL}", "met": ratio >= GOAL},
        "train_images_per_second": round(med["train"], 2),
        "model_images_per_second": round(med["model"], 2),
        "trainer_in_memory_images_per_second": round(med["trainer_in_memory"], 2),
        # shares of the median train step: data (fetch + collate) and trainer bookkeeping over the model's step
        "median_step_ms": step_ms,
        "data_share_of_train_step": round(1 - step_ms["trainer_in_memory"] / step_ms["train"], 4),
        "batch_size": batch_size,
        "steps_per_round": steps,
        "rounds": rounds,
        "warmup_steps": warmup,
        "torch_threads": torch.get_num_threads(),
        "per_round": per_round,
        "setup": {
            "preset": Path(preset).name,
            "dataset": dataset_name,
            "device": str(device),
            "train_rows": sum(info.train_counts),
            "stage": "one-hot baseline student (objective ce), stages.stage_args as in recipes/distill_vit.py",
            "student": f"{type(train_model).__name__}, {sum(p.numel() for p in train_model.parameters()):,} "
            f"parameters, image {model_args.image_size}",
            "data_path": "decoded once (hf_fairkd.run.pixels), normalised and augmented on tensors"
            if "pixels" in splits_columns(prepared)
            else "decoded and preprocessed on the fly",
            "augment": bool(data_args.augment),
            "image_processor": type(processor).__name__,
            "dataloader_num_workers": baseline_args.dataloader_num_workers,
            "optimizer": f"{getattr(baseline_args.optim, 'value', baseline_args.optim)} lr {baseline_args.learning_rate}, weight decay "
            f"{baseline_args.weight_decay} (both paths: Trainer.create_optimizer_and_scheduler)",
            "data_setup_seconds": round(setup_seconds, 2),
            "measurements": "train: trainer.get_train_dataloader() batch + _get_num_items_in_batch + "
            "training_step + optimizer/scheduler step + zero_grad; model: model(pixel_values, labels).loss "
            "backward + optimizer/scheduler step + zero_grad on the same collated batches in memory; "
            "trainer_in_memory: the train step without the dataloader, on the same batches. Interleaved "
            "step by step (train path, then the other two on its batch); medians over rounds.",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_name", default=DATASET)
    parser.add_argument(
        "--preset", default=str(PRESET), help="Recipe argument file (default: the budget preset)."
    )
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    cli = parser.parse_args()
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="hf_fairkd_data_path_")
    results = measure(cli.dataset_name, cli.preset, work, steps=cli.steps, rounds=cli.rounds)
    results["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    atomic_write_json(cli.output, results)  # a reader never sees half a results file
    shutil.rmtree(work, ignore_errors=True)
    med = {
        "train": results["train_images_per_second"],
        "model": results["model_images_per_second"],
        "trainer_in_memory": results["trainer_in_memory_images_per_second"],
    }
    print(f"{'path':<20}{'images/s':>12}{'median step ms':>16}")
    for name in ("train", "model", "trainer_in_memory"):
        print(f"{name:<20}{med[name]:>12.1f}{results['median_step_ms'][name]:>16.2f}")
    ratio = results["train_over_model_throughput"]
    print(
        f"train_over_model_throughput {ratio:.4f} (goal >= {GOAL}: {'met' if ratio >= GOAL else 'MISSED'}); "
        f"batch {results['batch_size']}, {cli.steps} steps x {cli.rounds} rounds, torch threads "
        f"{torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
