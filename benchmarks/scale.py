"""Many classes, many images (issue #14): the recipe's data path and stages on an ImageNet-LT-shaped dataset.

    OMP_NUM_THREADS=1 python benchmarks/scale.py          # 1,000 classes, exp long tail 1280 .. 5 rows per class
    python benchmarks/scale.py --classes 30 --max_rows_per_class 40 --min_rows_per_class 4 --work_dir /tmp/s

A GENERATED dataset (random noise plus a class-dependent colour, PNG bytes in a datasets ``Image()`` column,
``save_to_disk`` so it is memory-mapped when loaded back): a balanced source of ``max_rows_per_class`` rows per
class (the library's exp profile takes n_max from the smallest source class) and a balanced test split of
``test_per_class`` rows per class. It is generated once into ``--work_dir`` and reused while its settings match;
its generation time is reported, not timed as a stage. Cache files left by an earlier run's maps are deleted
first, so every stage runs cold.

Stages, each timed in wall seconds, through the library's public path as recipes/distill_vit.py takes it
(arguments from `parse_recipe_args`): long_tail_build (`preparation.load_data`, exp profile, rho = max / min),
image_check (`preprocessing.prepare_splits`: every image decoded once, a process pool for large splits),
teacher_cache_dense / teacher_cache_topk (`build_teacher_cache` on train with a fresh teacher), train_epoch (one
epoch of a fresh student, objective kd, from the dense cache, `stages.train_stage`), predict_test (the three
models' test logits, `stages.predict_logits`) and report_and_card (`build_run_record` with intervals, card, plot;
`card_scale.time_record_and_card`). The JSON is rewritten atomically after every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling modules card_scale and scale_data
sys.path.insert(1, str(HERE.parent))  # run from a checkout without `pip install -e .`

from card_scale import time_record_and_card  # noqa: E402
from scale_data import (  # noqa: E402
    current_rss_gb,
    file_backing,
    generate,
    machine,
    map_processes,
    peak_rss,
    remove_stale_caches,
)

from hf_fairkd.data import long_tail_counts  # noqa: E402
from hf_fairkd.io_utils import atomic_write_json  # noqa: E402

RESULTS = HERE / "results" / "scale.json"
GOALS = {"peak_rss_gb": "< 4", "report_and_card_seconds": "< 10"}
GOAL_LIMITS = {"peak_rss_gb": 4.0, "report_and_card_seconds": 10.0}
TOP_K = 10
DATA_FORMAT = 1  # bump when the generated data changes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--max_rows_per_class", type=int, default=1280)
    p.add_argument("--min_rows_per_class", type=int, default=5)
    p.add_argument("--test_per_class", type=int, default=20)
    p.add_argument("--holdout_per_class", type=int, default=1)
    p.add_argument("--image_size", type=int, default=8, help="generated images are image_size^2 RGB PNGs")
    p.add_argument("--batch_size", type=int, default=128, help="training batch of the student's epoch")
    p.add_argument("--work_dir", default="/tmp/hf_fairkd_scale")
    p.add_argument("--output", default=str(RESULTS))
    p.add_argument("--regenerate", action="store_true", help="generate the dataset even if it exists")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ main
class Results(dict):
    """The JSON being built; ``stage`` times a block and rewrites the file atomically after it."""

    def __init__(self, output: str, **fields):
        super().__init__(**fields)
        self.output = output
        self.write()

    def write(self) -> None:
        self["peak_rss"] = peak_rss()
        self["peak_rss_gb"] = self["peak_rss"]["self_gb"]
        atomic_write_json(self.output, self)

    def record(self, name: str, seconds: float, details: dict) -> None:
        self[f"{name}_seconds"] = round(seconds, 3)
        self["stages"][name] = {
            **details,
            "peak_rss_after": peak_rss(),
            "rss_after_gb": current_rss_gb(),
        }
        self["stages_done"].append(name)
        print(f"{name}: {seconds:.2f} s, {json.dumps(details)[:300]}", flush=True)
        self.write()


def recipe_arguments(cli: argparse.Namespace, folder: Path, run_dir: Path):
    """The recipe's four argument dataclasses, parsed as recipes/distill_vit.py parses its command line."""
    from hf_fairkd.run import arguments

    rho = cli.max_rows_per_class / cli.min_rows_per_class
    argv = [
        "--dataset_name", str(folder), "--imbalance_factor", repr(rho), "--long_tail_profile", "exp",
        "--holdout_per_class", str(cli.holdout_per_class), "--output_dir", str(run_dir),
        "--objective", "kd", "--num_train_epochs", "1", "--per_device_train_batch_size", str(cli.batch_size),
        "--per_device_eval_batch_size", "256", "--image_size", str(cli.image_size), "--patch_size", "4",
        "--student_hidden_size", "32", "--student_num_layers", "1", "--student_num_heads", "2",
        "--teacher_architecture", "vit", "--teacher_hidden_size", "64", "--teacher_num_layers", "2",
        "--teacher_num_heads", "4",
        "--seed", str(cli.seed), "--disable_tqdm", "true", "--logging_steps", "1000000",
    ]  # fmt: skip
    return arguments.parse_recipe_args(argv=argv)


def main(argv: list[str] | None = None) -> dict:
    cli = parse_args(argv)
    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    from hf_fairkd.results import run_settings
    from hf_fairkd.run import models, preparation, preprocessing, stages
    from hf_fairkd.run.pixels import ROWS_PER_PROCESS
    from hf_fairkd.teacher import build_teacher_cache, teacher_cache_info

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.set_num_threads(1)
    work = Path(cli.work_dir)
    folder, run_dir = work / "data", work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    planned = long_tail_counts(
        cli.max_rows_per_class, cli.classes, cli.max_rows_per_class / cli.min_rows_per_class, "exp"
    )
    spec = {
        "format": DATA_FORMAT,
        "classes": cli.classes,
        "source_per_class": cli.max_rows_per_class,
        "test_per_class": cli.test_per_class,
        "image_size": cli.image_size,
        "seed": cli.seed,
    }
    out = Results(
        cli.output,
        status="running",
        num_classes=cli.classes,
        planned={**spec, "min_rows_per_class": cli.min_rows_per_class, "long_tail_rows": sum(planned)},
        goals=GOALS,
        machine=machine(torch.get_num_threads()),
        stages={},
        stages_done=[],
    )
    if cli.regenerate:
        shutil.rmtree(folder, ignore_errors=True)
    seconds = generate(folder, spec)
    out["generation"] = {
        "seconds": None if seconds is None else round(seconds, 1),
        "reused": seconds is None,
        "folder": str(folder),
        "source_rows": cli.classes * cli.max_rows_per_class,
        "test_rows": cli.classes * cli.test_per_class,
        "image": f"{cli.image_size}x{cli.image_size} RGB PNG (noise + class colour)",
        "stale_cache_files_removed": remove_stale_caches(folder),
        "peak_rss_after": peak_rss(),
    }
    out.write()
    model_args, data_args, args, _ = recipe_arguments(cli, folder, run_dir)

    # ---- 1. long tail
    start = time.perf_counter()
    splits, info = preparation.load_data(data_args)
    seconds = time.perf_counter() - start
    counts = info.long_tail_counts
    out["rows"] = len(splits["train"])
    out.record(
        "long_tail_build",
        seconds,
        {
            "rows": {name: len(split) for name, split in splits.items()},
            "profile": info.profile,
            "imbalance_factor": info.imbalance_factor,
            "long_tail_max_min": [max(counts), min(counts)],
            "long_tail_rows": sum(counts),
            "matches_plan": sorted(counts, reverse=True) == planned,
            "source_file_backed": file_backing(splits["train"])["file_backed"],
        },
    )

    # ---- 2. decoding every image once (the image check)
    processor = preprocessing.make_image_processor(model_args)
    teacher_processor = preprocessing.teacher_image_processor(model_args, processor)
    start = time.perf_counter()
    prepared = preprocessing.prepare_splits(
        splits, info, processor, augment=False, teacher_processor=teacher_processor, num_proc=None
    )
    seconds = time.perf_counter() - start
    procs = {name: map_processes(split) for name, split in prepared.items()}
    cpus = os.cpu_count() or 1
    expected = {n: min(cpus, max(1, len(s) // ROWS_PER_PROCESS)) for n, s in splits.items()}
    first = prepared["train"][0]
    out.record(
        "image_check",
        seconds,
        {
            "num_proc": procs,
            "num_proc_by_rule": expected,
            "columns": prepared["train"].column_names,
            "pixel_values_shape": list(first["pixel_values"].shape),
            "rows_decoded": sum(len(s) for s in prepared.values()),
            "file_backed": {name: file_backing(s)["file_backed"] for name, s in prepared.items()},
        },
    )

    # ---- 3. teacher cache, dense and top-k (a fresh teacher: the cost does not depend on its training)
    teacher = models.teacher_model(model_args, info.class_names, args.seed)
    caches, preprocessing_id = {}, teacher_processor.to_json_string()
    for kind, top_k in (("dense", None), ("topk", TOP_K)):
        start = time.perf_counter()
        cache = build_teacher_cache(
            prepared["train"],
            teacher,
            batch_size=args.per_device_eval_batch_size,
            top_k=top_k,
            preprocessing_id=preprocessing_id,
        )
        seconds = time.perf_counter() - start
        caches[kind] = cache
        record = teacher_cache_info(cache)
        backing = file_backing(cache)
        out["cache_file_backed"] = out.get("cache_file_backed", True) and backing["file_backed"]
        out.record(
            f"teacher_cache_{kind}",
            seconds,
            {
                **backing,
                "rows": len(cache),
                "cache_columns": [c for c in cache.column_names if c.startswith("teacher_")],
                "record_kind": record["kind"],
                "top_k": record["top_k"],
                "num_classes": record["num_classes"],
                "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
            },
        )
    holdout = prepared["holdout"]
    if len(holdout):  # as the recipe's cache_teacher_signal: the holdout carries the teacher's logits too
        holdout = build_teacher_cache(
            holdout, teacher, batch_size=args.per_device_eval_batch_size, preprocessing_id=preprocessing_id
        )

    # ---- 4. one epoch of the student (kd) from the dense cache
    train_splits = preprocessing.PreparedSplits(
        {"train": caches["dense"], "holdout": holdout, "test": prepared["test"]},
        class_counts=prepared.class_counts,
    )
    student = models.student_model(model_args, info.class_names, seed=args.seed)
    baseline = models.student_model(
        model_args, info.class_names, seed=args.seed
    )  # the student before training
    start = time.perf_counter()
    trainer = stages.train_stage(student, args, train_splits, teacher=teacher, processor=processor)
    seconds = time.perf_counter() - start
    history = trainer.state.log_history
    summary = next((h for h in reversed(history) if "train_runtime" in h), {})
    out.record(
        "train_epoch",
        seconds,
        {
            "objective": args.objective,
            "objective_class": type(trainer.objective).__name__,
            "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "batch_size": args.per_device_train_batch_size,
            "rows": len(caches["dense"]),
            "train_loss": summary.get("train_loss"),
            "train_samples_per_second": summary.get("train_samples_per_second"),
            "student_parameters": sum(p.numel() for p in student.parameters()),
        },
    )

    # ---- 5. test logits of the three models, then the record, the card and its plot
    trainers = {
        "teacher": stages.prediction_trainer(teacher, args, train_splits, teacher_processor),
        "baseline": stages.prediction_trainer(baseline, args, train_splits, processor),
        "student": trainer,
    }
    start = time.perf_counter()
    logits = {}
    for role, role_trainer in trainers.items():
        logits[role], labels = stages.predict_logits(role_trainer, prepared["test"])
    seconds = time.perf_counter() - start
    out.record(
        "predict_test",
        seconds,
        {
            "rows": int(len(labels)),
            "logits_shape": list(logits["student"].shape),
            "accuracy": {r: round(float((v.argmax(-1) == labels).mean()), 4) for r, v in logits.items()},
        },
    )
    settings = run_settings(
        args,
        teacher_objective="fresh (untrained) teacher",
        student_model="fresh ViT (hidden 32, 1 layer), one epoch of kd",
        teacher_model="fresh ViT (hidden 64, 2 layers), untrained",
        baseline_model="the student's initialisation, untrained",
        dataset_name=data_args.dataset_name,
        world_size=1,
    )
    card = time_record_and_card(
        logits,
        labels,
        run_dir / "card",
        class_names=info.class_names,
        train_counts=info.train_counts,
        shot_counts=info.long_tail_counts,
        dataset=info.to_dict(),
        settings=settings,
    )
    out["card_num_classes"] = card["per_class_read_back"]
    out.record("report_and_card", card["seconds_record_card_plot"], {**card, "folder": str(run_dir / "card")})

    # ---- goals and the machine after
    out["goals_met"] = {
        "peak_rss_gb": out["peak_rss_gb"] < GOAL_LIMITS["peak_rss_gb"],
        "report_and_card_seconds": out["report_and_card_seconds"] < GOAL_LIMITS["report_and_card_seconds"],
    }
    out["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    out["status"] = "done"
    out.write()
    return dict(out)


if __name__ == "__main__":
    print(json.dumps(main(), indent=2, default=str)[:4000])
