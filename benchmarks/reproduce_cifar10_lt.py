"""Reproduce the papers' directional findings on CIFAR-10-LT (exp, rho=100) on a CPU budget.

Run from the repository root (this machine has no Hub access, so pass the local copy):

    nohup python benchmarks/reproduce_cifar10_lt.py --dataset_name /work/shared/datasets/cifar10 \
        --teacher_epochs 8 --student_epochs 8 > /tmp/repro.log 2>&1 &
    python benchmarks/reproduce_cifar10_lt.py benchmarks/configs/cifar10_lt_repro_gpu.yaml   # GPU, full size
    python benchmarks/make_cifar10_lt_table.py          # table + Pareto plot from the JSON alone

What runs: three ViT teachers (erm, balanced, dro), each cached once on train + holdout with
`build_teacher_cache`; then small ViT students from the cache: ce (one-hot), kd, ada_alpha, ada_margin,
balanced_kd and a robust_kd sweep over dro_tradeoff from the ERM teacher; kd and robust_kd from the other
two teachers; several seeds for ce, kd, ada_alpha and robust_kd (one b value). Every model is evaluated per
class on the balanced test split. Each finished run is appended atomically to the output JSON, so a stopped
run keeps what it finished; ``--resume`` skips the runs already there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without `pip install -e .`

from hf_fairkd.config import DistillationArguments  # noqa: E402
from hf_fairkd.io_utils import atomic_write_json, nan_to_none  # noqa: E402
from hf_fairkd.objectives import teacher_objectives  # noqa: E402
from hf_fairkd.run.arguments import ARGUMENT_FILE_SUFFIXES, DataArguments, ModelArguments, read_argument_file  # noqa: E402
from hf_fairkd.run.models import build_vit  # noqa: E402
from hf_fairkd.run.preparation import load_data  # noqa: E402
from hf_fairkd.run.preprocessing import PreparedSplits, make_image_processor  # noqa: E402
from hf_fairkd.run.stages import train_stage  # noqa: E402

DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "cifar10_lt.json"
TEACHERS = ("erm", "balanced", "dro")  # the study's order: the students of the first (ERM) come first
SWEEP_OBJECTIVES = ("ce", "kd", "ada_alpha", "ada_margin", "balanced_kd")
SEEDED_OBJECTIVES = ("ce", "kd", "ada_alpha", "robust_kd")
CUTS = (
    "Models: ViT students/teachers from scratch instead of ResNet-32; optimiser AdamW (lr {lr}, wd {wd}, linear "
    "decay, {warmup} warm-up steps) instead of SGD Nesterov lr 0.1 with step decay; {student_epochs} student and "
    "{teacher_epochs} teacher epochs instead of 200+; no augmentation (random crop + flip) because the teacher "
    "is cached; batch 128 as in the papers."
)


# ------------------------------------------------------------------------------------------------ arguments


def vit(args, class_names, role: str, seed: int):
    """A fresh ViT of the student's or the teacher's sizes from this script's arguments."""
    return build_vit(
        class_names,
        hidden_size=getattr(args, f"{role}_hidden"),
        num_layers=getattr(args, f"{role}_layers"),
        num_heads=args.num_heads,
        image_size=args.image_size,
        patch_size=args.patch_size,
        seed=seed,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dataset_name", default="uoft-cs/cifar10", help="Hub id or local folder with the Hub CIFAR layout."
    )
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="Results JSON (written after every run).")
    p.add_argument("--work_dir", default="/tmp/hf_fairkd_repro", help="Teachers and trainer scratch folders.")
    p.add_argument("--resume", action="store_true", help="Keep the runs already in --output and skip them.")
    p.add_argument("--imbalance_factor", type=float, default=100.0)
    p.add_argument("--holdout_per_class", type=int, default=10)
    p.add_argument(
        "--test_per_class", type=int, default=None, help="Seeded balanced test subset (default: all)."
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tradeoffs", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument(
        "--robust_tradeoff",
        type=float,
        default=1.0,
        help="b used for the seeded robust_kd runs and for the balanced / DRO teachers.",
    )
    p.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=teacher_objectives())
    p.add_argument("--student_epochs", type=float, default=8)
    p.add_argument("--teacher_epochs", type=float, default=10)
    p.add_argument("--student_hidden", type=int, default=64)
    p.add_argument("--student_layers", type=int, default=2)
    p.add_argument("--teacher_hidden", type=int, default=128)
    p.add_argument("--teacher_layers", type=int, default=4)
    p.add_argument("--num_heads", type=int, default=4)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--patch_size", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--learning_rate", type=float, default=2e-3)
    p.add_argument("--weight_decay", type=float, default=0.05)
    p.add_argument("--warmup_steps", type=int, default=10)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--kd_convention", default="mix", choices=["mix", "hinton"])
    p.add_argument(
        "--dro_update_every", type=int, default=8, help="K (fewer steps than the papers: update more often)."
    )
    p.add_argument("--dro_step_size", type=float, default=0.2)
    p.add_argument("--n_bootstrap", type=int, default=1000)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine a 2-thread pool slowed training 2-8x).",
    )
    p.add_argument(
        "--max_runs", type=int, default=None, help="Stop after this many new runs (timing probes)."
    )
    p.add_argument(
        "--extra_seeds_only",
        action="store_true",
        help="Run only the seeds after the first (step 3 of the plan), from the first teacher saved in --work_dir "
        "by an earlier run: a second process can do them in parallel; combine the files with --merge.",
    )
    p.add_argument(
        "--merge",
        default=None,
        help="Append the runs of this results JSON that --output lacks to --output, then stop (no training).",
    )
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "auto"], help="'auto': the accelerator the Trainer finds."
    )
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU only).")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(ARGUMENT_FILE_SUFFIXES):  # a config file first, CLI overrides after it
        p.set_defaults(**read_argument_file(p, argv.pop(0)))
    args = p.parse_args(argv)
    if not 0 <= args.robust_tradeoff <= 1 or any(not 0 <= b <= 1 for b in args.tradeoffs):
        raise ValueError("--tradeoffs and --robust_tradeoff must lie in [0, 1].")
    if args.student_epochs <= 0 or args.teacher_epochs <= 0:
        raise ValueError("--student_epochs and --teacher_epochs must be > 0.")
    return args


def plan_runs(args: argparse.Namespace) -> list[dict]:
    """Every run, in the order that keeps the most useful part if the budget runs out.

    1. the first teacher (normally ERM), the ce baseline and every objective from it with the first seed;
    2. kd and robust_kd (b = --robust_tradeoff) from each other teacher, first seed;
    3. the other seeds of ce, kd, ada_alpha and robust_kd (b = --robust_tradeoff) from the first teacher.
    The ce baseline uses no teacher (``teacher`` None); it runs first so every student has its reference.
    """

    def spec(teacher, objective, seed, b=None):
        return {"teacher": teacher, "objective": objective, "seed": seed, "dro_tradeoff": b}

    first, seed0 = args.teachers[0], args.seeds[0]
    runs = [spec(first, "teacher", 0), spec(None, "ce", seed0)]
    runs += [spec(first, objective, seed0) for objective in SWEEP_OBJECTIVES[1:]]
    runs += [spec(first, "robust_kd", seed0, b) for b in sorted(set(args.tradeoffs) | {args.robust_tradeoff})]
    for teacher in args.teachers[1:]:
        runs += [
            spec(teacher, "teacher", 0),
            spec(teacher, "kd", seed0),
            spec(teacher, "robust_kd", seed0, args.robust_tradeoff),
        ]
    if args.extra_seeds_only:
        runs = []
    for seed in args.seeds[1:]:
        runs.append(spec(None, "ce", seed))
        runs += [spec(first, objective, seed) for objective in SEEDED_OBJECTIVES[1:-1]]
        runs.append(spec(first, "robust_kd", seed, args.robust_tradeoff))
    return runs


def run_key(run: dict) -> str:
    b = "" if run.get("dro_tradeoff") is None else f"/b={run['dro_tradeoff']:g}"
    return f"{run['teacher']}/{run['objective']}{b}/seed{run['seed']}"


# ------------------------------------------------------------------------------------------------ data
def tensor_splits(args: argparse.Namespace):
    """Long-tailed train / holdout / test, decoded and preprocessed ONCE into torch-format datasets."""
    from datasets import disable_progress_bars

    disable_progress_bars()
    data_args = DataArguments(
        dataset_name=args.dataset_name,
        imbalance_factor=args.imbalance_factor,
        long_tail_profile="exp",
        holdout_per_class=args.holdout_per_class,
    )
    splits, info = load_data(data_args)
    if args.test_per_class is not None:
        from hf_fairkd.data.longtail import plan_holdout, read_labels

        labels = read_labels(splits["test"], info.label_column)
        _, subset = plan_holdout(labels, len(info.class_names), args.test_per_class, seed=0)
        splits["test"] = splits["test"].select(np.sort(subset))
    model_args = ModelArguments(image_size=args.image_size, patch_size=args.patch_size)
    processor = make_image_processor(model_args)

    def preprocess(batch):
        images = [image.convert("RGB") for image in batch[info.image_column]]
        return {
            "pixel_values": processor(images, return_tensors="np")["pixel_values"],
            "labels": batch[info.label_column],
        }

    out = {}
    for name, split in splits.items():
        mapped = split.map(
            preprocess, batched=True, batch_size=500, remove_columns=split.column_names, keep_in_memory=True
        )
        out[name] = mapped.with_format("torch")
    return PreparedSplits(out, class_counts=info.train_counts), info, processor


# ------------------------------------------------------------------------------------------------ training
def training_args(args: argparse.Namespace, objective: str, seed: int, epochs: float, out: str, **extra):
    return DistillationArguments(
        output_dir=out,
        objective=objective,
        seed=seed,
        num_train_epochs=epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=256,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        logging_steps=50,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=args.device == "cpu",
        bf16=args.bf16,
        alpha=args.alpha,
        temperature=args.temperature,
        kd_convention=args.kd_convention,
        dro_update_every=args.dro_update_every,
        dro_step_size=args.dro_step_size,
        **extra,
    )


def test_logits(model, test) -> tuple[np.ndarray, np.ndarray]:
    """Logits over the whole test split, in order (one plain forward per chunk)."""
    model.eval()
    rows = test[:]  # one torch batch of the whole split
    pixels, labels = rows["pixel_values"], rows["labels"]
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = [
            model(pixel_values=pixels[i : i + 500].to(device)).logits.float().cpu()
            for i in range(0, len(labels), 500)
        ]
    return torch.cat(logits).numpy(), labels.numpy()


def objective_extras(trainer) -> dict:
    """What the objective learned, for the reading: DRO multipliers, teacher reliability, ada_alpha weights."""
    objective, extras = trainer.objective, {}
    if getattr(objective, "multipliers", None) is not None:
        extras["dro_multipliers"] = [round(float(v), 5) for v in objective.multipliers]
        extras["dro_class_weights"] = [round(float(v), 5) for v in objective.class_weights()]
    if objective.teacher_reliability is not None:
        extras["teacher_holdout_recall"] = [round(float(v), 4) for v in objective.teacher_reliability]
        if hasattr(objective, "class_alphas"):
            extras["class_alphas"] = [round(float(v), 4) for v in objective.class_alphas()]
    losses = [h["train_loss"] for h in trainer.state.log_history if "train_loss" in h]
    if losses:
        extras["train_loss"] = losses[-1]
    return extras


def teacher_dir(args: argparse.Namespace, teacher: str) -> str:
    return os.path.join(args.work_dir, f"teacher_{teacher}")


def load_saved_teacher(args: argparse.Namespace, teacher: str):
    from transformers import ViTForImageClassification

    path = teacher_dir(args, teacher)
    if not os.path.isdir(path):
        raise ValueError(
            f"--resume: the {teacher} teacher's run is in the JSON but its model is not in {path}; rerun without "
            "--resume (or with the --work_dir of the first run)."
        )
    return ViTForImageClassification.from_pretrained(path)


def cache_teacher(model, splits, processor) -> PreparedSplits:
    """Train and holdout with the teacher's dense logits as a column (the teacher runs once, here)."""
    from hf_fairkd.teacher_cache import build_teacher_cache

    cached = {
        name: build_teacher_cache(
            splits[name], model, batch_size=256, preprocessing_id=processor.to_json_string()
        )
        for name in ("train", "holdout")
    }
    return PreparedSplits(cached, class_counts=splits.class_counts)


def evaluate_run(
    run: dict, logits: np.ndarray, labels: np.ndarray, info, ce_predictions: dict, n_bootstrap: int
):
    """The run's report, paired delta against the same seed's one-hot student and (teachers) calibration,
    taken from the one run record (hf_fairkd.results.build_run_record)."""
    from hf_fairkd.results.schema import build_run_record

    names = info.class_names
    models = {"student": logits}  # the evaluated model; a teacher is also compared against the ce student
    if run["objective"] == "teacher":
        models["teacher"] = logits
    baseline = ce_predictions.get(run["seed"])
    if baseline is not None and run["objective"] != "ce":
        models["baseline"] = baseline
    record = build_run_record(
        models,
        labels,
        class_names=names,
        train_counts=info.train_counts,
        shot_counts=info.long_tail_counts,  # standard shot groups: the counts before the holdout
        dataset=info.to_dict(),
        settings={"objective": run["objective"], "seed": run["seed"], **run.get("params", {})},
        n_bootstrap=n_bootstrap,
        seed=0,
    )
    run["report"] = record["student"]
    run["delta_vs_ce"] = record.get("student_minus_baseline")
    if run["objective"] == "teacher":
        run["calibration"] = record["teacher_calibration"]
    predictions = logits.argmax(-1)
    run["predictions"] = (
        "".join(str(int(p)) for p in predictions) if len(names) <= 10 else predictions.tolist()
    )
    return nan_to_none(run)


def decode_predictions(run: dict) -> np.ndarray:
    stored = run["predictions"]
    return np.array([int(c) for c in stored] if isinstance(stored, str) else stored, dtype=np.int64)


# ------------------------------------------------------------------------------------------------ main
def merge_results(output: str, other: str) -> dict:
    """``output`` plus the runs of ``other`` it lacks (by name); both machines' records are kept."""
    with open(output, encoding="utf-8") as f:
        data = json.load(f)
    with open(other, encoding="utf-8") as f:
        extra = json.load(f)
    names = {r["name"] for r in data["runs"]}
    added = [r for r in extra["runs"] if r["name"] not in names]
    data["runs"] += added
    data["machine"]["merged_from"] = {
        "file": os.path.basename(other),
        "runs": [r["name"] for r in added],
        "machine": extra["machine"],
        "note": "a second process on the same machine, with the same settings",
    }
    atomic_write_json(output, data)
    return data


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.merge:
        return merge_results(args.output, args.merge)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    started = time.time()

    def say(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{time.time() - started:6.0f}s] {text}", flush=True)

    splits, info, processor = tensor_splits(args)
    say(
        f"data: train {sum(info.train_counts)} {info.train_counts}, holdout {sum(info.holdout_counts)}, "
        f"test {len(splits['test'])} ({time.time() - started:.0f}s to load and preprocess)"
    )
    config = {
        **vars(args),
        "output": os.path.relpath(args.output, REPO) if os.path.isabs(args.output) else args.output,
        "dataset": info.to_dict(),
        "test_examples": len(splits["test"]),
        "test_subset": args.test_per_class is not None,
        "shot_thresholds": {"many_above": 100, "few_below": 20},
        "teacher_cache": "dense float16 logits on train + holdout, built once per teacher",
        "prediction": "argmax of the raw student logits (balanced_kd / robust_kd offsets act in the loss only)",
        "cuts": CUTS.format(
            lr=args.learning_rate,
            wd=args.weight_decay,
            warmup=args.warmup_steps,
            student_epochs=args.student_epochs,
            teacher_epochs=args.teacher_epochs,
        ),
    }
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
    }
    done = {}
    if args.resume and os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as f:
            done = {run_key(r): r for r in json.load(f)["runs"]}
        say(f"resuming: {len(done)} runs already in {args.output}")
    runs = list(done.values())
    plan = plan_runs(args)
    config["planned_runs"] = [run_key(r) for r in plan]
    ce_predictions = {r["seed"]: decode_predictions(r) for r in runs if r["objective"] == "ce"}

    def write():
        machine["load_average_now"] = list(os.getloadavg())
        machine["elapsed_seconds"] = round(time.time() - started, 1)
        atomic_write_json(args.output, {"runs": runs, "config": config, "machine": machine})

    class_names = info.class_names
    teacher_splits, new_runs = {}, 0
    for spec in plan:
        key = run_key(spec)
        if key in done or (args.max_runs is not None and new_runs >= args.max_runs):
            continue
        t0 = time.time()
        work = os.path.join(args.work_dir, key.replace("/", "_").replace("=", ""))
        run = {"name": key, "teacher": spec["teacher"], "objective": spec["objective"], "seed": spec["seed"]}
        if spec["objective"] == "teacher":
            stage = training_args(args, spec["teacher"], spec["seed"], args.teacher_epochs, work)
            trainer = train_stage(
                vit(args, class_names, "teacher", spec["seed"] + 1),
                stage,
                splits,
            )
            model = trainer.model
            run["params"] = {"teacher_objective": spec["teacher"], **stage.objective_params()}
        else:
            teacher = spec["teacher"]
            if teacher is not None and teacher not in teacher_splits:  # resumed: the teacher was saved
                teacher_splits[teacher] = cache_teacher(load_saved_teacher(args, teacher), splits, processor)
            extra = {} if spec["dro_tradeoff"] is None else {"dro_tradeoff": spec["dro_tradeoff"]}
            stage = training_args(args, spec["objective"], spec["seed"], args.student_epochs, work, **extra)
            trainer = train_stage(
                vit(args, class_names, "student", spec["seed"]),
                stage,
                teacher_splits.get(teacher, splits),
            )
            model = trainer.model
            run["params"] = stage.objective_params()
        logits, labels = test_logits(model, splits["test"])
        train_seconds = time.time() - t0
        run.update(objective_extras(trainer))
        if spec["objective"] == "teacher":
            # the students read these logits; the teacher is never run again
            c0 = time.time()
            model.save_pretrained(teacher_dir(args, spec["teacher"]))  # for --resume
            teacher_splits[spec["teacher"]] = cache_teacher(model, splits, processor)
            run["cache_seconds"] = round(time.time() - c0, 1)
        run["wall_seconds"] = round(train_seconds, 1)
        run = evaluate_run(run, logits, labels, info, ce_predictions, args.n_bootstrap)
        if spec["objective"] == "ce":
            ce_predictions[spec["seed"]] = logits.argmax(-1)
        runs.append(run)
        new_runs += 1
        write()
        r = run["report"]
        say(
            f"{key}: {run['wall_seconds']:.0f}s  acc {r['accuracy']:.3f}  bal {r['balanced_accuracy']:.3f}  "
            f"worst {r['worst_class_accuracy']:.3f} ({r['worst_class']})  few {r['shot_groups']['few']['accuracy']}"
        )
    write()
    say(f"done: {len(runs)} runs in {args.output}")
    return {"runs": runs, "config": config, "machine": machine}


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
