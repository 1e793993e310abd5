"""One epoch of distillation on the budget CIFAR-10-LT preset: cached teacher vs online teacher, wall time.

    python benchmarks/epoch_cached_vs_online.py --dataset_name ../shared/datasets/cifar10

Uses the models of benchmarks/configs/cifar10_lt_budget_vit.yaml (the budget preset before the study moved to
CNNs: student ViT 64 x 2, teacher ViT 128 x 4, patch 8; ``--preset`` for another) with the recipe's own data
pipeline. The teacher's weights do not change the timing, so it is not trained.
The cached run includes building the cache. Writes benchmarks/results/epoch_cached_vs_online.json.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import datasets
import torch

from hf_fairkd.io_utils import atomic_write_json
from hf_fairkd.run import arguments, models, preparation, preprocessing, stages

RESULTS = Path(__file__).resolve().parent / "results" / "epoch_cached_vs_online.json"
PRESET = Path(__file__).resolve().parent / "configs" / "cifar10_lt_budget_vit.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset_name", default="cifar10")
    parser.add_argument("--preset", default=str(PRESET))
    cli = parser.parse_args()
    datasets.disable_caching()  # time the cache build itself, not a reload of an earlier run's Arrow file
    work = tempfile.mkdtemp(prefix="hf_fairkd_epoch_")
    model_args, data_args, args, _ = arguments.parse_recipe_args(
        argv=[
            cli.preset,
            "--dataset_name",
            cli.dataset_name,
            "--output_dir",
            work,
            "--num_train_epochs",
            "1",
            "--disable_tqdm",
            "true",
            "--logging_steps",
            "1000",
        ]  # fmt: skip
    )
    splits, info = preparation.load_data(data_args)
    processor = preprocessing.make_image_processor(model_args)
    teacher = models.teacher_model(model_args, info.class_names, seed=0).eval()
    seconds = {}
    for signal in ("online", "cached"):  # the same student init, data order and steps in both
        prepared = preprocessing.prepare_splits(splits, info, processor)
        start = time.perf_counter()
        if signal == "cached":
            stages.cache_teacher_signal(prepared, teacher, processor, args.per_device_eval_batch_size)
            seconds["cache_build"] = time.perf_counter() - start
        student = models.student_model(model_args, info.class_names, seed=0)
        stages.train_stage(student, stages.stage_args(args, objective="kd"), prepared, teacher=teacher)
        seconds[signal] = time.perf_counter() - start
    epoch_cached = seconds["cached"] - seconds["cache_build"]
    results = {
        # the cache is built once per run and reused by every epoch (and every student of the recipe)
        "cached_over_online_epoch_seconds": epoch_cached / seconds["online"],
        "cached_with_build_over_online_one_epoch": seconds["cached"] / seconds["online"],
        "seconds": seconds,
        "train_rows": sum(info.train_counts),
        "setup": {"preset": Path(cli.preset).name, "epochs": 1, "cached_includes_cache_build": True},
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }
    atomic_write_json(RESULTS, results)
    print(
        f"online epoch {seconds['online']:.1f} s; cached epoch {epoch_cached:.1f} s (ratio "
        f"{results['cached_over_online_epoch_seconds']:.3f}); cache build, once: {seconds['cache_build']:.1f} s"
    )


if __name__ == "__main__":
    main()
