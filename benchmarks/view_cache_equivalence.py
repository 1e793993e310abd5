"""Part 3 of benchmarks/view_cache.py (``--part equivalence``): a student trained from the view cache against the
same student trained with the online teacher on the same stored views. See view_cache.py's docstring; run it as

    OMP_NUM_THREADS=1 python benchmarks/view_cache.py --part equivalence [--quick]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from hf_fairkd import DistillationTrainer
from hf_fairkd.io_utils import atomic_write_json
from hf_fairkd.run import arguments, models, preparation, preprocessing, stages
from hf_fairkd.run import cached_views as cv
from hf_fairkd.run.view_cache import build_view_cache

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts by plain name, as scale.py's

from view_cache_build import PRESET, REPO, Forwards  # noqa: E402

# ------------------------------------------------------------------------------------------ 3. equivalence
# "A student trained from the view cache equals the same student trained with the online teacher on the same
# views: loss curve within float16 rounding of the cached logits over the first 100 steps; final accuracy
# within noise over 3 seeds."
EQUIVALENCE_FULL = {"rows": None, "epochs": 7, "teacher_epochs": 6, "seeds": (0, 1, 2), "curve_steps": 100}
EQUIVALENCE_QUICK = {"rows": 64, "epochs": 2, "teacher_epochs": 1, "seeds": (0, 1), "curve_steps": 4}
SMALL_RESNET = REPO / "recipes" / "configs" / "models" / "resnet_cifar_small.json"
NOISE_RULE = (
    "within noise: |mean over seeds of the paired accuracy difference (cached - online)| <= 2 x the larger "
    "of the two variants' sd over seeds of the per-seed test accuracy"
)


def equivalence_setup(rows: int | None, work: Path) -> dict:
    """The budget preset on the embedded long-tailed digits (imbalance 10, 5 holdout rows a class): small ResNets
    for both teacher (48x48, its own processor) and student (32x32), batch 32, flip + crop, kd (alpha 0.5, T 4);
    train and test prepared as the recipe prepares them."""
    argv = [
        str(PRESET),
        "--dataset_name",
        "digits",
        "--output_dir",
        str(work / "run"),
        "--disable_tqdm",
        "true",
    ]
    argv += ["--imbalance_factor", "10", "--holdout_per_class", "5", "--per_device_train_batch_size", "32"]
    argv += ["--teacher_config_name", str(SMALL_RESNET), "--logging_steps", "1"]
    model_args, data_args, args, _ = arguments.parse_recipe_args(argv=argv)
    splits, info = preparation.load_data(data_args)
    train = splits["train"] if rows is None else splits["train"].shuffle(seed=0).select(range(rows))
    test = (
        splits["test"] if rows is None else splits["test"].select(range(min(len(splits["test"]), 2 * rows)))
    )
    processor = preprocessing.make_image_processor(model_args)
    own = preprocessing.teacher_image_processor(model_args, processor)
    prepared = preprocessing.prepare_splits(
        {"train": train, "test": test}, info, processor, augment=True, teacher_processor=own
    )
    labels = np.asarray(train[info.label_column])
    return {
        "model_args": model_args,
        "args": args,
        "prepared": prepared,
        "names": info.class_names,
        "counts": np.bincount(labels, minlength=len(info.class_names)).tolist(),
    }


def predictions(model, split) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    preds, refs = [], []
    with torch.no_grad():
        for start in range(0, len(split), 256):
            batch = split[start : start + 256]
            preds.append(model(pixel_values=batch["pixel_values"]).logits.argmax(-1).numpy())
            refs.append(np.asarray(batch["labels"]))
    return np.concatenate(preds), np.concatenate(refs)


class StopAt(TrainerCallback):
    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True


class RoundingBound:
    """Wraps the objective of the online run: at each step, the loss of the same student logits and labels with
    the online (float32) teacher logits and with them rounded to float16, in a direct computation."""

    def __init__(self, objective):
        self.compute, self.per_step = objective.compute, []
        objective.compute = self

    def __call__(self, logits, labels, teacher_logits=None, **kw):
        result = self.compute(logits, labels, teacher_logits, **kw)
        with torch.no_grad():
            s, t = logits.detach(), teacher_logits.detach().float()
            exact = self.compute(s, labels, t, **kw).per_example.double().mean()
            rounded = self.compute(s, labels, t.half().float(), **kw).per_example.double().mean()
        self.per_step.append(abs(float(exact - rounded)))
        return result


def round_logits_to_float16(module, args, output):
    output["logits"] = output["logits"].half().float()
    return output


def mirror_float16_rounding(module, args, output):
    """The logits moved by their float16 rounding error in the other direction (2 t - fp16(t)): a perturbation of
    exactly the cache's size that is not the cache's."""
    t = output["logits"]
    output["logits"] = 2 * t - t.half().float()
    return output


def train_kd_student(run, dataset, teacher, seed, epochs, work, stop_at=None, bound=False):
    args = stages.stage_args(
        run["args"], objective="kd", num_train_epochs=epochs, output_dir=str(work), seed=seed, logging_steps=1
    )
    trainer = DistillationTrainer(
        model=models.student_model(run["model_args"], run["names"], seed=seed),
        args=args,
        teacher=teacher,
        train_dataset=dataset,
        class_counts=run["counts"],
        callbacks=[StopAt(stop_at)] if stop_at else None,
    )
    trainer.remove_callback(PrinterCallback)  # a log line a step otherwise
    rounding = RoundingBound(trainer.objective) if bound else None
    t, c = time.perf_counter(), time.process_time()
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return trainer, losses, rounding, (time.perf_counter() - t, time.process_time() - c)


def train_hooked(run, dataset, teacher, seed, epochs, work, steps, hook):
    """`train_kd_student` for ``steps`` steps with the online teacher's logits changed by the forward ``hook``."""
    handle = teacher.register_forward_hook(hook)
    try:
        _, losses, _, cost = train_kd_student(run, dataset, teacher, seed, epochs, work, stop_at=steps)
    finally:
        handle.remove()
    return losses, cost


def curve_comparison(a, b, steps) -> dict:
    a, b = np.asarray(a[:steps]), np.asarray(b[:steps])
    diff = np.abs(a - b)
    return {
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float((diff / np.abs(b)).max()),
        "mean_abs_diff": float(diff.mean()),
    }


def measure_equivalence(sizes: dict, work: Path) -> dict:
    from hf_fairkd.metrics.intervals import mcnemar_exact_p

    wall0, cpu0 = time.perf_counter(), time.process_time()
    run = equivalence_setup(sizes["rows"], work)
    prepared, epochs, steps = run["prepared"], sizes["epochs"], sizes["curve_steps"]
    setup_seconds = time.perf_counter() - wall0
    # the teacher: trained once here (objective erm) on its own view of the data
    teacher_args = stages.stage_args(
        run["args"],
        objective="erm",
        num_train_epochs=sizes["teacher_epochs"],
        output_dir=str(work / "teacher"),
        logging_steps=100000,
    )
    teacher = models.teacher_model(run["model_args"], run["names"], seed=run["args"].seed)
    DistillationTrainer(
        model=teacher,
        args=teacher_args,
        train_dataset=prepared.for_teacher("train"),
        class_counts=run["counts"],
    ).train()
    teacher.eval()
    teacher_preds, refs = predictions(teacher, prepared.for_teacher("test"))
    forwards = Forwards(teacher)
    forwards.now = "build"
    cache = build_view_cache(prepared["train"], teacher, work / "views", epochs=epochs, view_seed=0)
    build_forwards = forwards.take("build")
    per_seed, curves = [], {}
    for seed in sizes["seeds"]:
        out = {"seed": seed}
        # (a) from the view cache: stored views and float16 logits; the teacher is passed, so a forward would count
        forwards.now = "cached"
        cached_views = cv.with_cached_views(prepared["train"], cache, teacher=teacher, epochs=epochs)
        cached, cached_losses, _, cached_cost = train_kd_student(
            run, cached_views, teacher, seed, epochs, work / f"cached{seed}"
        )
        out["cached_teacher_forwards"] = forwards.take("cached")
        # (b) the online teacher on the same stored views (float32 logits), with the direct float16 bound
        forwards.now = "online"
        same_views = cv.with_cached_views(prepared["train"], cache, logits=False, teacher_inputs=True)
        online, online_losses, rounding, online_cost = train_kd_student(
            run, same_views, teacher, seed, epochs, work / f"online{seed}", bound=True
        )
        out["online_teacher_forwards"] = forwards.take("online")
        # (c) control, first steps only: the online teacher with its logits rounded to float16 as the cache stores
        # them; equal to (a) up to float32 noise, it shows (a) - (b) is the float16 rounding and nothing else
        forwards.now = "control"
        control_losses, control_cost = train_hooked(
            run, same_views, teacher, seed, epochs, work / f"control{seed}", steps, round_logits_to_float16
        )
        out["control_teacher_forwards"] = forwards.take("control")
        # (d) sensitivity, first steps only: the online teacher with its logits moved by the float16 rounding error
        # the other way; |loss(d) - loss(b)| is how far a float16-sized change of the logits moves the curve
        forwards.now = "mirrored"
        mirrored_losses, mirrored_cost = train_hooked(
            run, same_views, teacher, seed, epochs, work / f"mirrored{seed}", steps, mirror_float16_rounding
        )
        out["mirrored_teacher_forwards"] = forwards.take("mirrored")
        out["steps"] = {
            "cached": len(cached_losses),
            "online": len(online_losses),
            "control": len(control_losses),
            "mirrored": len(mirrored_losses),
        }
        if min(out["steps"].values()) < steps:
            raise RuntimeError(f"fewer than {steps} steps logged: {out['steps']}")
        bound = np.asarray(rounding.per_step[:steps])
        out["cached_vs_online"] = curve_comparison(cached_losses, online_losses, steps)
        out["cached_vs_control"] = curve_comparison(cached_losses, control_losses, steps)
        out["mirrored_vs_online"] = curve_comparison(mirrored_losses, online_losses, steps)
        diff = np.abs(np.asarray(cached_losses[:steps]) - np.asarray(online_losses[:steps]))
        out["step0_diff_over_bound"] = float(diff[0] / bound[0]) if bound[0] > 0 else None
        beyond = np.flatnonzero(diff > 2 * bound)
        out["steps_within_2x_direct_bound"] = int(beyond[0]) if len(beyond) else steps
        out["float16_rounding_bound"] = {
            "max_per_step": float(bound.max()),
            "mean_per_step": float(bound.mean()),
            "sum_over_steps": float(bound.sum()),
        }
        cached_preds, _ = predictions(cached.model, prepared["test"])
        online_preds, _ = predictions(online.model, prepared["test"])
        right_a, right_b = cached_preds == refs, online_preds == refs
        n10, n01 = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
        out.update(
            {
                "cached_test_accuracy": float(right_a.mean()),
                "online_test_accuracy": float(right_b.mean()),
                "paired_accuracy_diff": float(right_a.mean() - right_b.mean()),
                "prediction_agreement": float((cached_preds == online_preds).mean()),
                "mcnemar": {"n10": n10, "n01": n01, "p_value": float(mcnemar_exact_p(n10, n01))},
                "seconds_wall_cpu": {
                    "cached": [round(x, 2) for x in cached_cost],
                    "online": [round(x, 2) for x in online_cost],
                    "control": [round(x, 2) for x in control_cost],
                    "mirrored": [round(x, 2) for x in mirrored_cost],
                },
            }
        )
        curves[str(seed)] = {
            "cached": cached_losses[:steps],
            "online": online_losses[:steps],
            "control": control_losses[:steps],
            "mirrored": mirrored_losses[:steps],
            "float16_rounding_bound": bound.tolist(),
        }
        per_seed.append(out)
    acc_a = np.array([s["cached_test_accuracy"] for s in per_seed])
    acc_b = np.array([s["online_test_accuracy"] for s in per_seed])
    paired = acc_a - acc_b
    noise = max(acc_a.std(ddof=1), acc_b.std(ddof=1))
    sensitivity = max(s["mirrored_vs_online"]["max_abs_diff"] for s in per_seed)
    return {
        "goal": "A student trained from the view cache equals the same student trained with the online teacher on "
        "the same views: loss curve within float16 rounding of the cached logits over the first 100 steps; "
        "final accuracy within noise over 3 seeds.",
        "loss_curve": {
            "steps_compared": steps,
            "max_abs_diff": max(s["cached_vs_online"]["max_abs_diff"] for s in per_seed),
            "max_rel_diff": max(s["cached_vs_online"]["max_rel_diff"] for s in per_seed),
            "direct_float16_bound_max_per_step": max(
                s["float16_rounding_bound"]["max_per_step"] for s in per_seed
            ),
            "step0_diff_over_direct_bound_per_seed": [s["step0_diff_over_bound"] for s in per_seed],
            "steps_within_2x_direct_bound_per_seed": [s["steps_within_2x_direct_bound"] for s in per_seed],
            "sensitivity_max_abs_diff": sensitivity,
            "control_max_abs_diff": max(s["cached_vs_control"]["max_abs_diff"] for s in per_seed),
            "rule": "within float16 rounding: (1) the control (c) - the online teacher with its logits rounded to "
            "float16 - gives the cached curve (a) to float32 noise (control_max_abs_diff <= 1e-5): (a) - (b) is "
            "the float16 rounding of the logits and nothing else; and (2) max |loss(a) - loss(b)| over the steps "
            "and seeds <= 2 x the sensitivity: max |loss(d) - loss(b)|, (d) the online teacher with its logits "
            "moved by their float16 rounding error the other way (2 t - fp16(t), a float16-sized change)",
            "within_float16_rounding": bool(
                max(s["cached_vs_control"]["max_abs_diff"] for s in per_seed) <= 1e-5
                and max(s["cached_vs_online"]["max_abs_diff"] for s in per_seed) <= 2 * sensitivity
            ),
            "compared_with": "direct bound = at each step of the online run (b), |kd loss of its student logits "
            "with the online float32 teacher logits - the same with those logits rounded to float16| (the "
            "objective's own compute, the batch mean the trainer logs). It applies exactly at step 0 (the same "
            "parameters: step0_diff_over_direct_bound = 1); after that, |loss(a) - loss(b)| also carries the drift "
            "of the parameters from every earlier step's rounded logits, which training amplifies (a 1e-4 change "
            "becomes 1e-2..1e-1 within 10-20 steps), so the curves are compared with the sensitivity (d) instead.",
        },
        "accuracy": {
            "test_rows": int(len(refs)),
            "teacher_test_accuracy": float((teacher_preds == refs).mean()),
            "cached_mean": float(acc_a.mean()),
            "cached_sd": float(acc_a.std(ddof=1)),
            "online_mean": float(acc_b.mean()),
            "online_sd": float(acc_b.std(ddof=1)),
            "paired_diff_per_seed": paired.tolist(),
            "paired_diff_mean": float(paired.mean()),
            "rule": NOISE_RULE,
            "noise_sd": float(noise),
            "within_noise": bool(abs(paired.mean()) <= 2 * noise),
            "mcnemar_p_per_seed (information only)": [s["mcnemar"]["p_value"] for s in per_seed],
        },
        "teacher_forwards": {
            "build": build_forwards,
            "cached_per_seed": [s["cached_teacher_forwards"] for s in per_seed],
            "online_per_seed": [s["online_teacher_forwards"] for s in per_seed],
            "control_per_seed": [s["control_teacher_forwards"] for s in per_seed],
            "mirrored_per_seed": [s["mirrored_teacher_forwards"] for s in per_seed],
            "ran_as_named": all(
                s["cached_teacher_forwards"] == 0 and s["online_teacher_forwards"] > 0 for s in per_seed
            ),
        },
        "per_seed": per_seed,
        "curves": curves,
        "setup": {
            "dataset": "digits (embedded), long-tailed, imbalance factor 10, holdout 5 a class",
            "train_rows": len(prepared["train"]),
            "teacher": f"small ResNet ({SMALL_RESNET.name}, "
            f"{sum(p.numel() for p in teacher.parameters()):,} parameters) at image "
            f"{run['model_args'].teacher_image_size} (its own processor), trained here {sizes['teacher_epochs']} "
            "epochs, objective erm",
            "student": f"small ResNet ({SMALL_RESNET.name}) at image {run['model_args'].image_size}, "
            "the same init seed and data order (trainer seed) in (a), (b), (c)",
            "objective_kd": f"alpha {run['args'].alpha}, temperature {run['args'].temperature}, "
            f"{run['args'].kd_convention}",
            "optimizer": f"AdamW lr {run['args'].learning_rate}, {run['args'].lr_scheduler_type}, "
            f"warm-up {run['args'].warmup_steps}, batch {run['args'].per_device_train_batch_size}",
            "epochs": epochs,
            "view_cache": f"dense float16, view_seed 0, {epochs} epochs, built once",
            "variants": "(a) cached: with_cached_views(train, cache, teacher=teacher); (b) online: "
            "with_cached_views(train, cache, logits=False, teacher_inputs=True) + teacher=; (c) control: as (b) "
            "with the teacher's logits rounded to float16, first steps only; (d) sensitivity: as (b) with the "
            "logits moved by their float16 rounding error the other way, first steps only",
            "seeds": list(sizes["seeds"]),
            "data_setup_seconds": round(setup_seconds, 2),
        },
        "total_wall_seconds": round(time.perf_counter() - wall0, 1),
        "total_process_cpu_seconds": round(time.process_time() - cpu0, 1),
    }


def run_equivalence(cli, output: Path, work: Path) -> dict:
    sizes = dict(EQUIVALENCE_QUICK if cli.quick else EQUIVALENCE_FULL)
    sizes.update({k: getattr(cli, k) for k in ("rows", "epochs") if getattr(cli, k)})
    load_before = os.getloadavg()[0]
    result = measure_equivalence(sizes, work)
    result["mode"] = "quick" if cli.quick else "full"
    result["machine"] = {
        "cpu_count": os.cpu_count(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    merged = json.loads(output.read_text()) if output.exists() else {}
    merged["equivalence"] = result  # the speed results already there are kept
    atomic_write_json(output, merged)
    curve, acc = result["loss_curve"], result["accuracy"]
    print(
        f"loss curve ({curve['steps_compared']} steps): max |diff| {curve['max_abs_diff']:.3g} "
        f"(rel {curve['max_rel_diff']:.3g}); direct float16 bound max/step "
        f"{curve['direct_float16_bound_max_per_step']:.3g}; sensitivity {curve['sensitivity_max_abs_diff']:.3g}; "
        f"control max |diff| {curve['control_max_abs_diff']:.3g}; within: {curve['within_float16_rounding']}"
    )
    print(
        f"test accuracy: cached {acc['cached_mean']:.4f} +- {acc['cached_sd']:.4f}, online {acc['online_mean']:.4f} "
        f"+- {acc['online_sd']:.4f}, paired diff {acc['paired_diff_mean']:+.4f} (within noise: {acc['within_noise']})"
    )
    print(f"teacher forwards {result['teacher_forwards']}")
    print(f"wrote {output} (equivalence, {result['total_wall_seconds']} s)")
    return result
