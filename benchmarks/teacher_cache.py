"""Teacher-cache throughput, size, and the accuracy cost of storing only the top-k logits.

Run from the repo root:  python benchmarks/teacher_cache.py
Writes benchmarks/results/teacher_cache.json and prints a table.

1. Throughput: `build_teacher_cache` (Dataset.map over the dataset's torch format, dense float16 and top-10)
   against the teacher's bare forward over the same batches, already stacked in memory, under
   inference_mode; plus the alternative the issue mentioned (read ``dataset[start:end]``, run the teacher,
   attach the column at the end). Repetitions are interleaved in rotating order; medians are reported.
2. Size: Arrow bytes per example of the cache columns (dense and top-10 of 100 classes).
3. Accuracy: a 100-class synthetic task with 20 super-classes of 5 (the teacher's probabilities carry
   which classes are alike). A ViT teacher is trained with ERM, cached densely and as top-10, and students
   (seeds 0..n-1, the same seeds for every variant) are distilled (kd) from each cache at T = 1, 2 and 4,
   each top-k fill selected the way the trainer reads it: DistillationArguments(teacher_topk_fill=...).
   After each run the benchmark reads a batch through that trainer's own dataloader and
   `teacher_source.split_batch` and checks that the teacher logits it trained on are the ones of the fill it reports (and that the fills'
   logits differ), so a variant that did not really run fails the benchmark instead of printing a row.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from datasets import Array3D, ClassLabel, Dataset, Features, concatenate_datasets, disable_progress_bars
from transformers import ViTForImageClassification
from transformers.utils import logging as hf_logging

import hf_fairkd.teacher as tc
from hf_fairkd import DistillationArguments, DistillationTrainer
from hf_fairkd.io_utils import atomic_write_json
from hf_fairkd.run.models import build_vit
from hf_fairkd.teacher.cache_format import TOPK_INDICES_COLUMN, cache_features, dense_rows_as_binary

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "teacher_cache.json"
NUM_CLASSES, TOP_K, BATCH = 100, 10, 64
GOALS = {"cache_over_raw_throughput": 0.90}


def vit(hidden, layers, image, channels, seed, heads=4) -> ViTForImageClassification:
    names = [f"c{i:02d}" for i in range(NUM_CLASSES)]
    sizes = dict(hidden_size=hidden, num_layers=layers, num_heads=heads, image_size=image, patch_size=4)
    return build_vit(names, num_channels=channels, seed=seed, **sizes)


def images(pixels: np.ndarray, labels: np.ndarray) -> Dataset:
    features = Features(
        {"pixel_values": Array3D(pixels.shape[1:], "float32"), "labels": ClassLabel(num_classes=NUM_CLASSES)}
    )
    return Dataset.from_dict({"pixel_values": pixels, "labels": labels}, features=features).with_format(
        "torch"
    )


# ------------------------------------------------------------------------------------------ throughput
def build_by_slices(dataset: Dataset, teacher, batch_size: int) -> Dataset:
    """The alternative to Dataset.map: formatted slices in, one column attached at the end."""
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            pixels = dataset[start : start + batch_size]["pixel_values"]
            chunks.append(teacher(pixel_values=pixels).logits.float().numpy())
    column = Dataset.from_dict(
        {tc.DENSE_COLUMN: dense_rows_as_binary(np.concatenate(chunks), "float16")},  # the cache's own format
        features=Features({tc.DENSE_COLUMN: cache_features(NUM_CLASSES, "float16", None)[tc.DENSE_COLUMN]}),
    )
    return concatenate_datasets([dataset, column], axis=1)


def throughput(repetitions: int, rows: int) -> dict:
    rng = np.random.default_rng(0)
    data = images(rng.normal(size=(rows, 3, 32, 32)).astype(np.float32), rng.integers(0, NUM_CLASSES, rows))
    teacher = vit(128, 4, 32, 3, seed=1).eval()
    batches = [data[i : i + BATCH]["pixel_values"] for i in range(0, rows, BATCH)]

    def raw():
        with torch.inference_mode():
            for pixels in batches:
                teacher(pixel_values=pixels).logits.float().numpy()

    runs = {
        "raw_forward": raw,
        "build_dense": lambda: tc.build_teacher_cache(data, teacher, batch_size=BATCH),
        "build_topk": lambda: tc.build_teacher_cache(data, teacher, batch_size=BATCH, top_k=TOP_K),
        "slices_dense": lambda: build_by_slices(data, teacher, BATCH),
    }
    for run in runs.values():  # warm-up
        run()
    seconds = {name: [] for name in runs}
    names = list(runs)
    for rep in range(repetitions):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            start = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - start)
    per_second = {name: rows / statistics.median(times) for name, times in seconds.items()}
    dense = tc.build_teacher_cache(data, teacher, batch_size=BATCH)
    topk = tc.build_teacher_cache(data, teacher, batch_size=BATCH, top_k=TOP_K)
    return {
        "rows": rows,
        "examples_per_second": {k: round(v, 1) for k, v in per_second.items()},
        "raw_seconds": {k: [round(x, 4) for x in v] for k, v in seconds.items()},
        "cache_over_raw_throughput": per_second["build_dense"] / per_second["raw_forward"],
        # the same ratio from the repetitions run side by side, median over the repetitions
        "cache_over_raw_throughput_paired": statistics.median(
            r / c for r, c in zip(seconds["raw_forward"], seconds["build_dense"])
        ),
        "topk_cache_over_raw_throughput": per_second["build_topk"] / per_second["raw_forward"],
        "map_over_slices_throughput": per_second["build_dense"] / per_second["slices_dense"],
        "bytes_per_example_dense": dense.data.table.select([tc.DENSE_COLUMN]).nbytes / rows,
        "bytes_per_example_topk": topk.data.table.select(list(tc.TOPK_COLUMNS)).nbytes / rows,
    }


# ------------------------------------------------------------------------------------------ accuracy
def hierarchical_task(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8x8 one-channel images: super-class pattern + weaker class pattern + noise."""
    rng = np.random.default_rng(1234)  # the same class patterns for train and test
    coarse = rng.normal(size=(20, 64))
    fine = rng.normal(size=(NUM_CLASSES, 64))
    means = 1.0 * coarse[np.arange(NUM_CLASSES) // 5] + 0.6 * fine
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(NUM_CLASSES), per_class)
    pixels = means[labels] + rng.normal(scale=1.0, size=(len(labels), 64))
    order = rng.permutation(len(labels))
    return pixels[order].reshape(-1, 1, 8, 8).astype(np.float32), labels[order]


# (temperature, alpha): T = 1, the package defaults, and a strong-distillation setting common on CIFAR
KD_SETTINGS = {"T1_alpha0.5": (1.0, 0.5), "T2_alpha0.5": (2.0, 0.5), "T4_alpha0.9": (4.0, 0.9)}


def train_args(out: Path, objective: str, steps: int, seed=0, **kd) -> DistillationArguments:
    return DistillationArguments(
        output_dir=str(out),
        objective=objective,
        per_device_train_batch_size=BATCH,
        learning_rate=3e-3,
        max_steps=steps,
        lr_scheduler_type="cosine",
        warmup_steps=steps // 20,
        logging_steps=10_000,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **kd,
    )


def accuracy(model, test: Dataset) -> float:
    model.eval()
    with torch.inference_mode():
        batch = test[:]
        predictions = model(pixel_values=batch["pixel_values"]).logits.argmax(-1)
    return float((predictions == batch["labels"]).float().mean())


def trained_on(trainer: DistillationTrainer) -> tuple[torch.Tensor, float]:
    """The teacher logits of the first training batch as the trainer itself reads them (its dataloader,
    `_prepare_inputs`, `teacher_source.split_batch`, hence its `teacher_topk_fill`), checked against the fill it reports;
    and the mean mass its targets (softmax at its temperature) put outside the stored top k."""
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    _, _, logits = trainer.teacher_source.split_batch(batch)
    fill = trainer.args.teacher_topk_fill
    expected = tc.cached_logits_from_batch(batch, NUM_CLASSES, topk_fill=fill)
    if not torch.equal(logits, expected):
        raise AssertionError(f"the trainer did not read the cache with teacher_topk_fill={fill!r}")
    targets = trainer.objective.teacher_probs(logits)
    top = targets.gather(1, batch[TOPK_INDICES_COLUMN].long()).sum(-1)
    return logits, float((1 - top).mean())


def tail_mass_estimates(cache: Dataset, logits: torch.Tensor) -> dict:
    """Mass outside the top k at each temperature: the teacher's, and what each fill's logits give."""
    rows = cache[:]
    out = {}
    for temperature in sorted({t for t, _ in KD_SETTINGS.values()}):
        true = 1 - torch.softmax(logits.double() / temperature, -1).topk(TOP_K, -1).values.sum(-1)
        out[f"T{temperature:g}"] = {"teacher": float(true.mean())}
        for fill in tc.TOPK_FILLS:
            dense = tc.cached_logits_from_batch(rows, NUM_CLASSES, topk_fill=fill).double()
            top = torch.softmax(dense / temperature, -1).gather(1, rows[TOPK_INDICES_COLUMN].long())
            out[f"T{temperature:g}"][fill] = float((1 - top.sum(-1)).mean())
    return out


def distillation_accuracy(steps: int, seeds: int, out: Path) -> dict:
    train = images(*hierarchical_task(per_class=30, seed=0))
    test = images(*hierarchical_task(per_class=20, seed=1))
    teacher = vit(64, 2, 8, 1, seed=1)
    DistillationTrainer(model=teacher, args=train_args(out, "erm", 2 * steps), train_dataset=train).train()
    teacher.eval()
    dense, topk = tc.build_teacher_cache(train, teacher), tc.build_teacher_cache(train, teacher, top_k=TOP_K)
    with torch.inference_mode():
        logits = teacher(pixel_values=train[:]["pixel_values"]).logits
    results = {"teacher": accuracy(teacher, test), "tail_mass": tail_mass_estimates(topk, logits)}
    runs = []

    def run(variant, setting, seed, dataset, objective="kd", **kd):
        student = vit(32, 1, 8, 1, seed=seed, heads=2)
        trainer = DistillationTrainer(
            model=student, args=train_args(out, objective, steps, seed=seed, **kd), train_dataset=dataset
        )
        loss = trainer.train().training_loss
        row = {"variant": variant, "setting": setting, "seed": seed, "train_loss": loss}
        row["accuracy"] = accuracy(student, test)
        if variant.startswith("top"):
            row["fill_used"] = trainer.args.teacher_topk_fill
            row["_logits"], row["target_tail_mass"] = trained_on(trainer)
        runs.append(row)
        print(f"{variant:<24}{setting:<14}seed {seed}  {row['accuracy']:.4f}", file=sys.stderr, flush=True)
        return row

    for seed in range(seeds):
        run("ce", "-", seed, train, objective="ce")
    for setting, (temperature, alpha) in KD_SETTINGS.items():
        kd = {"temperature": temperature, "alpha": alpha}
        for seed in range(seeds):
            run("dense", setting, seed, dense, **kd)
            rows = [
                run(f"top{TOP_K}_{fill}", setting, seed, topk, teacher_topk_fill=fill, **kd)
                for fill in tc.TOPK_FILLS
            ]
            # each variant really ran: the fills reached the trainer and gave it different teacher logits
            assert [r["fill_used"] for r in rows] == list(tc.TOPK_FILLS), rows
            assert not torch.equal(rows[0]["_logits"], rows[1]["_logits"]), "the fills gave the same logits"
            if temperature > 1:  # at T = 1 this teacher's tail is ~1e-4 of the mass: losses may coincide
                assert len({r["train_loss"] for r in rows}) == len(rows), "two fills gave the same loss"
    for row in runs:
        row.pop("_logits", None)
    results["runs"] = runs
    results["mean_accuracy"] = {}
    for setting in ["-", *KD_SETTINGS]:
        variants = dict.fromkeys(r["variant"] for r in runs if r["setting"] == setting)
        for variant in variants:
            accs = [r["accuracy"] for r in runs if (r["variant"], r["setting"]) == (variant, setting)]
            key = variant if setting == "-" else f"{variant}_{setting}"
            results["mean_accuracy"][key] = statistics.mean(accs)
    means = results["mean_accuracy"]
    results["gap_points_dense_minus_topk"] = {
        fill: {
            f"{KD_SETTINGS[s][0]:g}": 100 * (means[f"dense_{s}"] - means[f"top{TOP_K}_{fill}_{s}"])
            for s in KD_SETTINGS
        }
        for fill in tc.TOPK_FILLS
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see benchmarks/README.md)")
    parser.add_argument("--repetitions", type=int, default=15)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--steps", type=int, default=600, help="student training steps (teacher: twice)")
    parser.add_argument("--seeds", type=int, default=3, help="student seeds per variant (the same for each)")
    cli = parser.parse_args()
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    disable_progress_bars()
    torch.set_num_threads(cli.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    speed = throughput(cli.repetitions, cli.rows)
    print(f"throughput done in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    out = REPO / "benchmarks" / "results" / "_teacher_cache_tmp"
    accuracies = distillation_accuracy(cli.steps, cli.seeds, out)
    ratio = speed["cache_over_raw_throughput"]
    results = {
        "cache_over_raw_throughput": round(ratio, 4),
        "goals": {"cache_over_raw_throughput": {"target": ">= 0.90", "met": ratio >= 0.90}},
        "bytes_per_example_dense": speed["bytes_per_example_dense"],
        "bytes_per_example_topk": speed["bytes_per_example_topk"],
        "top_k": TOP_K,
        "num_classes": NUM_CLASSES,
        "accuracy": accuracies,
        "throughput": {
            k: v for k, v in speed.items() if k not in ("bytes_per_example_dense", "bytes_per_example_topk")
        },
        "setup": {
            "throughput_teacher": "ViT hidden 128, 4 layers, image 32x32x3, patch 4, 100 classes, batch 64",
            "accuracy_task": "100 classes = 20 super-classes x 5, 8x8x1 images, 30 train / 20 test per class",
            "accuracy_teacher": f"ViT hidden 64, 2 layers, ERM, {2 * cli.steps} steps",
            "accuracy_student": (
                f"ViT hidden 32, 1 layer, seeds 0..{cli.seeds - 1} (init and data order), {cli.steps} steps, "
                "kd (hinton) in each KD_SETTING, every variant on the same seeds"
            ),
            "kd_settings": KD_SETTINGS,
            "cache_dtype": "float16",
        },
        "seconds_total": round(time.perf_counter() - started, 1),
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
    eps = speed["examples_per_second"]
    print(f"{'measurement':<36}{'value':>12}")
    for name in ("raw_forward", "build_dense", "build_topk", "slices_dense"):
        print(f"{name + ' (examples/s)':<36}{eps[name]:>12.1f}")
    print(
        f"{'cache_over_raw_throughput':<36}{ratio:>12.4f}   goal >= 0.90: {'met' if ratio >= 0.90 else 'MISSED'}"
    )
    print(f"{'  same, paired repetitions':<36}{speed['cache_over_raw_throughput_paired']:>12.4f}")
    print(f"{'topk_cache_over_raw_throughput':<36}{speed['topk_cache_over_raw_throughput']:>12.4f}")
    print(f"{'map_over_slices_throughput':<36}{speed['map_over_slices_throughput']:>12.4f}")
    print(f"{'bytes_per_example_dense':<36}{speed['bytes_per_example_dense']:>12.1f}")
    print(f"{'bytes_per_example_topk':<36}{speed['bytes_per_example_topk']:>12.1f}")
    print(f"{'teacher accuracy':<36}{accuracies['teacher']:>12.4f}")
    for name, value in accuracies["mean_accuracy"].items():
        print(f"{'mean accuracy ' + name:<48}{value:>8.4f}")
    for fill, gaps in accuracies["gap_points_dense_minus_topk"].items():
        print(
            f"{'gap dense - ' + fill + ' (points)':<36}"
            + "  ".join(f"T={t}: {g:+.2f}" for t, g in gaps.items())
        )
    atomic_write_json(RESULTS, results)  # a reader never sees half a results file
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
