"""Reproduce the papers' directional findings on CIFAR-10-LT (exp, rho=100) on a CPU budget, with CNNs.

Run from the repository root (this machine has no Hub access, so pass the local copy). The study is split
into runs that two (or more) worker processes share; start the same command once per core:

    for i in 1 2; do OMP_NUM_THREADS=1 nohup python benchmarks/reproduce_cifar10_lt.py \
        --dataset_name /work/shared/datasets/cifar10 > /tmp/repro_$i.log 2>&1 & done
    python benchmarks/make_cifar10_lt_table.py          # table + Pareto plot from the JSON alone

What runs (`cifar10_lt_plan.plan_runs`): three ResNet teachers (erm, balanced, dro;
recipes/configs/models/resnet_cifar.json), trained with flip + crop augmentation; small ResNet students
(resnet_cifar_small.json) distilled ONLINE from them (the teacher sees the student's augmented view): ce
(one-hot), kd (both conventions), ada_alpha, ada_margin, balanced_kd, robust_kd (a sweep over b),
label_smoothing, kd_pt and kd_sim from the ERM teacher; kd and robust_kd from the other two; 3 seeds for the
main objectives. Every model is evaluated per class on the balanced test split. Each run writes its own file
in ``--runs_dir`` as soon as it finishes (a rerun skips it) and the combined ``--output`` JSON is rewritten
from those files, so a stopped study keeps what it finished and its table says what is missing.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run from a checkout without `pip install -e .`

from cifar10_lt_plan import TEACHERS, RunFiles, next_run, plan_runs, run_key  # noqa: E402

from hf_fairkd.config import DistillationArguments  # noqa: E402
from hf_fairkd.io_utils import atomic_write_json, nan_to_none  # noqa: E402
from hf_fairkd.objectives import teacher_objectives  # noqa: E402
from hf_fairkd.run.arguments import ARGUMENT_FILE_SUFFIXES, DataArguments, ModelArguments, read_argument_file  # noqa: E402
from hf_fairkd.run.models import student_model, teacher_model  # noqa: E402
from hf_fairkd.run.preparation import load_data  # noqa: E402
from hf_fairkd.run.preprocessing import make_image_processor, prepare_splits, teacher_image_processor  # noqa: E402
from hf_fairkd.run.stages import train_stage  # noqa: E402

DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "cifar10_lt.json"
MODELS = REPO / "recipes" / "configs" / "models"
CUTS = (
    "Models: HF ResNets from configs (teacher {teacher_model}; student {student_model}) instead of ResNet-32 "
    "for both; optimiser AdamW (lr {lr}, wd {wd}, cosine schedule after {warmup:.0%} warm-up, close to a "
    "one-cycle) instead of SGD Nesterov lr 0.1 with step decay; {student_epochs:g} student and {teacher_epochs:g} "
    "teacher epochs instead of 200+; the teachers see {teacher_size}x{teacher_size} images (their own image "
    "processor; the stem of an HF ResNet divides the resolution by 4), the students {size}x{size}; random flip + "
    "crop augmentation{augment}; batch 128 as in the papers."
)


# ------------------------------------------------------------------------------------------------ arguments


def model_arguments(args: argparse.Namespace) -> ModelArguments:
    return ModelArguments(
        student_config_name=args.student_config,
        teacher_config_name=args.teacher_config,
        image_size=args.image_size,
        teacher_image_size=args.teacher_image_size,
    )


def code_version() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes), or 'unknown' outside git."""
    import subprocess

    def git(*cmd):
        return subprocess.run(
            ["git", "-C", str(REPO), *cmd], capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        # the code only: the study writes its own results into benchmarks/results
        dirty = bool(
            git("status", "--porcelain", "--untracked-files=no", "hf_fairkd", "recipes", "benchmarks/*.py")
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


CODE = code_version()  # at start: the code every run of this process trains with


def describe(model) -> str:
    return f"{type(model).__name__} {sum(p.numel() for p in model.parameters()):,} parameters"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dataset_name", default="uoft-cs/cifar10", help="Hub id or local folder with the Hub CIFAR layout."
    )
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="Combined results JSON (after every run).")
    p.add_argument(
        "--runs_dir", default=None, help="One result file per run (default: <output without .json>_runs/)."
    )
    p.add_argument("--work_dir", default="/tmp/hf_fairkd_repro", help="Teachers and trainer scratch folders.")
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
        default=0.5,
        help="b used for the seeded robust_kd runs and for the balanced / DRO teachers.",
    )
    p.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=teacher_objectives())
    p.add_argument("--student_config", default=str(MODELS / "resnet_cifar_small.json"))
    p.add_argument("--teacher_config", default=str(MODELS / "resnet_cifar.json"))
    p.add_argument("--student_epochs", type=float, default=30)
    p.add_argument("--teacher_epochs", type=float, default=60)
    p.add_argument("--image_size", type=int, default=32, help="The student's input resolution.")
    p.add_argument(
        "--teacher_image_size",
        type=int,
        default=48,
        help="The teachers' input resolution (their own image processor; the same augmented view, resized).",
    )
    p.add_argument("--no_augment", dest="augment", action="store_false", help="No flip + crop augmentation.")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--learning_rate", type=float, default=3e-3)
    p.add_argument("--weight_decay", type=float, default=0.05)
    p.add_argument("--warmup_ratio", type=float, default=0.15)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--kd_convention", default="hinton", choices=["mix", "hinton"])
    p.add_argument(
        "--other_convention", default="mix", help="kd also run once in this convention ('' for none)."
    )
    p.add_argument(
        "--dro_update_every", type=int, default=8, help="K (fewer steps than the papers: update more often)."
    )
    p.add_argument("--dro_step_size", type=float, default=0.2)
    p.add_argument(
        "--no_intervals",
        dest="intervals",
        action="store_false",
        help="No per-class intervals (point estimates).",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine start one worker per core instead).",
    )
    p.add_argument(
        "--max_runs", type=int, default=None, help="Stop after this many new runs (timing probes)."
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
    if args.runs_dir is None:
        args.runs_dir = str(Path(args.output).with_suffix("")) + "_runs"
    return args


def study_plan(args: argparse.Namespace) -> list[dict]:
    return plan_runs(
        args.teachers,
        args.seeds,
        args.tradeoffs,
        args.robust_tradeoff,
        args.kd_convention,
        args.other_convention,
    )


# ------------------------------------------------------------------------------------------------ data
def study_splits(args: argparse.Namespace):
    """Long-tailed train / holdout / test through the library's own data path (decoded once, augmented on
    tensors: `hf_fairkd.run.preprocessing.prepare_splits`)."""
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
    processor = make_image_processor(model_arguments(args))
    own = teacher_image_processor(model_arguments(args), processor)  # the teachers' resolution
    prepared = prepare_splits(splits, info, processor, augment=args.augment, teacher_processor=own)
    return prepared, info, own


# ------------------------------------------------------------------------------------------------ training
def training_args(args: argparse.Namespace, objective: str, seed: int, epochs: float, out: str, **extra):
    extra = {k: v for k, v in extra.items() if v is not None}
    return DistillationArguments(
        output_dir=out,
        objective=objective,
        seed=seed,
        num_train_epochs=epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=256,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_ratio,  # a float below 1: a fraction of the steps (transformers 5)
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
        dro_update_every=args.dro_update_every,
        dro_step_size=args.dro_step_size,
        **{"kd_convention": args.kd_convention, **extra},
    )


def test_logits(model, test) -> tuple[np.ndarray, np.ndarray]:
    """Logits over the whole test split, in order (one plain forward per chunk)."""
    model.eval()
    device = next(model.parameters()).device
    logits, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(test), 500):
            rows = test[start : start + 500]
            logits.append(model(pixel_values=rows["pixel_values"].to(device)).logits.float().cpu())
            labels.append(rows["labels"])
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


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
    from transformers import AutoModelForImageClassification

    path = teacher_dir(args, teacher)
    if not os.path.isdir(path):
        raise ValueError(
            f"the {teacher} teacher's run is done but its model is not in {path}; delete its result file in "
            "--runs_dir to retrain it (or pass the --work_dir of the first run)."
        )
    return AutoModelForImageClassification.from_pretrained(path)


def evaluate_run(
    run: dict, logits: np.ndarray, labels: np.ndarray, info, ce_predictions: dict, intervals: bool = True
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
        intervals=intervals,
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
def run_one(spec: dict, args, splits, info, files: RunFiles, teachers: dict, teacher_processor) -> dict:
    """Train and evaluate one run of the plan; its record (not yet written). Teachers train and are tested on
    their own view of ``splits`` (``teacher_processor``'s resolution); students on theirs."""
    key = run_key(spec)
    t0 = time.time()
    work = os.path.join(args.work_dir, key.replace("/", "_").replace("=", ""))
    run = {"name": key, "teacher": spec["teacher"], "objective": spec["objective"], "seed": spec["seed"]}
    run["code"] = CODE
    names, model_args = info.class_names, model_arguments(args)
    if spec["objective"] == "teacher":
        model_args.teacher_objective = spec["teacher"]
        stage = training_args(args, spec["teacher"], spec["seed"], args.teacher_epochs, work)
        trainer = train_stage(
            teacher_model(model_args, names, seed=spec["seed"]), stage, splits.teacher_view()
        )
        run["params"] = {"teacher_objective": spec["teacher"], **stage.objective_params()}
        run["model"] = describe(trainer.model)
    else:
        teacher = spec["teacher"]
        if teacher is not None and teacher not in teachers:
            teachers[teacher] = load_saved_teacher(args, teacher)
        extra = {"dro_tradeoff": spec["dro_tradeoff"], "kd_convention": spec.get("kd_convention")}
        stage = training_args(args, spec["objective"], spec["seed"], args.student_epochs, work, **extra)
        trainer = train_stage(
            student_model(model_args, names, seed=spec["seed"]), stage, splits, teacher=teachers.get(teacher)
        )
        run["params"] = stage.objective_params()
        run["model"] = describe(trainer.model)
    test = splits.for_teacher("test") if spec["objective"] == "teacher" else splits["test"]
    logits, labels = test_logits(trainer.model, test)
    run.update(objective_extras(trainer))
    run["wall_seconds"] = round(time.time() - t0, 1)
    if spec["objective"] == "teacher":
        trainer.model.save_pretrained(teacher_dir(args, spec["teacher"]))  # before its result file
        teacher_processor.save_pretrained(teacher_dir(args, spec["teacher"]))
        teachers[spec["teacher"]] = trainer.model
    ce = None
    if spec["objective"] != "ce":  # students and teachers are compared with the same seed's one-hot student
        ce_key = run_key({"teacher": None, "objective": "ce", "seed": spec["seed"]})
        ce = decode_predictions(files.read(ce_key)) if files.done(ce_key) else None
    return evaluate_run(
        run, logits, labels, info, {spec["seed"]: ce} if ce is not None else {}, args.intervals
    )


def combined(args, files: RunFiles, plan: list[dict], config: dict, machine: dict) -> dict:
    """The results JSON from the per-run files: every finished run, the plan, and what is missing."""
    runs = files.all_runs(plan)
    done = {r["name"] for r in runs}
    config = {**config, "planned_runs": [run_key(r) for r in plan]}
    config["missing_runs"] = [k for k in config["planned_runs"] if k not in done]
    machine = {
        **machine,
        "load_average_now": list(os.getloadavg()),
        "study_wall_seconds_sum": round(sum(r.get("wall_seconds", 0) for r in runs), 1),
    }
    return {"runs": runs, "config": config, "machine": machine}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    started = time.time()

    def say(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{time.time() - started:6.0f}s] {text}", flush=True)

    splits, info, teacher_processor = study_splits(args)
    say(
        f"data: train {sum(info.train_counts)} {info.train_counts}, holdout {sum(info.holdout_counts)}, "
        f"test {len(splits['test'])} ({time.time() - started:.0f}s to load and decode)"
    )
    names, model_args = info.class_names, model_arguments(args)
    config = {
        **vars(args),
        "code": CODE,
        "output": os.path.relpath(args.output, REPO) if os.path.isabs(args.output) else args.output,
        "student_model": f"{Path(args.student_config).name}: {describe(student_model(model_args, names, 0))}",
        "teacher_model": f"{Path(args.teacher_config).name}: {describe(teacher_model(model_args, names, 0))}",
        "schedule": f"AdamW lr {args.learning_rate}, weight decay {args.weight_decay}, cosine after "
        f"{args.warmup_ratio:.0%} warm-up, batch {args.batch_size}",
        "dataset": info.to_dict(),
        "test_examples": len(splits["test"]),
        "test_subset": args.test_per_class is not None,
        "shot_thresholds": {"many_above": 100, "few_below": 20},
        "teacher_signal": "online: the teacher runs on each student batch (the same augmented view)",
        "prediction": "argmax of the raw student logits (balanced_kd / robust_kd offsets act in the loss only)",
    }
    config["cuts"] = CUTS.format(
        teacher_model=config["teacher_model"],
        student_model=config["student_model"],
        lr=args.learning_rate,
        wd=args.weight_decay,
        warmup=args.warmup_ratio,
        student_epochs=args.student_epochs,
        teacher_epochs=args.teacher_epochs,
        teacher_size=args.teacher_image_size or args.image_size,
        size=args.image_size,
        augment=" (the teacher runs online on the augmented view)" if args.augment else ": off",
    )
    for name in ("runs_dir", "student_config", "teacher_config"):  # no machine paths in the results
        config[name] = os.path.relpath(config[name], REPO) if os.path.isabs(config[name]) else config[name]
    config.pop("work_dir")
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    files, plan = RunFiles(args.runs_dir), study_plan(args)
    teachers, new_runs = {}, 0
    while args.max_runs is None or new_runs < args.max_runs:
        spec, left = next_run(plan, files)
        if spec is None:
            if not left:
                break
            time.sleep(10)  # another worker is training what the remaining runs need
            continue
        key = run_key(spec)
        try:
            run = run_one(spec, args, splits, info, files, teachers, teacher_processor)
            atomic_write_json(files.path(key), run)
        finally:
            files.release(key)
        new_runs += 1
        atomic_write_json(args.output, combined(args, files, plan, config, machine))
        r = run["report"]
        say(
            f"{key}: {run['wall_seconds']:.0f}s  acc {r['accuracy']:.3f}  bal {r['balanced_accuracy']:.3f}  "
            f"worst {r['worst_class_accuracy']:.3f} ({r['worst_class']})  few {r['shot_groups']['few']['accuracy']}"
        )
    result = combined(args, files, plan, config, machine)
    atomic_write_json(args.output, result)
    say(
        f"stopped: {len(result['runs'])} runs in {args.output}, {len(result['config']['missing_runs'])} missing"
    )
    return result


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
