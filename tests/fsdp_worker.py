"""Worker for tests/test_fsdp.py: `DistillationTrainer` students in each of two processes, under FSDP2 or DDP.

    accelerate launch --config_file recipes/accelerate/cpu_fsdp_two_processes.yaml \
        tests/fsdp_worker.py OUT_DIR kd robust_kd ada_alpha kd_sim kd@replicate kd@cached

(the same command with recipes/accelerate/cpu_two_processes.yaml and the first four runs gives the DDP runs the
losses are compared with). For each run named, in the same process group: a student distilled from a teacher
trained here without a Trainer (the same deterministic loop on every rank, so every rank holds the same
teacher; each run gets its own copy), with 2 micro-batches of 4 rows per rank and optimizer step; ada_alpha
measures the teacher's per-class holdout reliability (summed over processes); kd_sim reads its targets from
the teacher's classifier weights; robust_kd updates its class-DRO multipliers every 2 steps from the whole
11-row holdout (11 does not divide by 2: the ranks hold 6 and 5 rows, padded to the same number of batches);
then `evaluate` and `predict` on the 31-row test set, and `save_model`. ``OBJECTIVE`` runs with the default
teacher_sharding ('auto': under FSDP the teacher is sharded like the student); ``kd@replicate`` with
teacher_sharding='replicate'; ``kd@cached`` with no teacher at all, from the train and holdout caches built
by the teacher sharded over the two processes (`cache_step`, run before it, which writes
OUT_DIR/cache/rank{r}.json: those caches, the same caches built by the whole teacher over both processes and in
one process, their teacher fingerprints, and the sharded teacher's forwards).

Every rank writes OUT_DIR/<run>/rank{r}.json as its last act for that run (world size, distributed type, the
teacher's memory, multipliers, teacher reliability, forwards of the student and teacher per mode, training
log, eval metrics, predictions). Rank 0's save_model writes OUT_DIR/<run>/student.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # tiny_models and hf_fairkd, whatever the working directory

import torch  # noqa: E402
from tiny_models import image_dataset, make_vit, tiny_args  # noqa: E402

from hf_fairkd.trainer import DistillationTrainer  # noqa: E402

TRAIN_COUNTS = (24, 12, 6)
HOLDOUT_COUNTS = (4, 4, 3)  # 11 rows: does not divide by the 2 processes
TEST_COUNTS = (11, 10, 10)  # 31 rows: neither
STUDENT_SEED, TEACHER_SEED = 0, 9
PER_DEVICE_BATCH, ACCUMULATION = 4, 2  # global batch 16: a tiny student learns in 24 steps
MAX_STEPS = 24


def datasets():
    return (
        image_dataset(TRAIN_COUNTS, seed=0),
        image_dataset(HOLDOUT_COUNTS, seed=1),
        image_dataset(TEST_COUNTS, seed=2),
    )


def student_args(out_dir: Path, objective: str, **overrides):
    return tiny_args(
        out_dir,
        objective=objective,
        per_device_train_batch_size=PER_DEVICE_BATCH,
        gradient_accumulation_steps=ACCUMULATION,
        max_steps=MAX_STEPS,
        learning_rate=1e-2,
        temperature=1.0,
        max_grad_norm=0.0,  # no clipping (clip_grad_norm_ over DTensors is its own code path; not under test)
        logging_steps=1,
        dro_update_every=2,
        dro_holdout_batch_size=11,  # the whole holdout at each update
        dro_step_size=0.5,
        dro_tradeoff=0.5,
        per_device_eval_batch_size=5,  # holdout: 6 and 5 rows -> 2 batches on each rank (the last padded)
        **overrides,
    )


def train_teacher(train) -> torch.nn.Module:
    """A plain full-batch loop: deterministic on CPU, hence the same teacher on every rank."""
    teacher = make_vit(seed=TEACHER_SEED)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=5e-3)
    pixels, labels = train[:]["pixel_values"], train[:]["labels"]
    teacher.train()
    for _ in range(40):
        optimizer.zero_grad()
        teacher(pixel_values=pixels, labels=labels).loss.backward()
        optimizer.step()
    return teacher.eval().requires_grad_(False)


def allow_fsdp_on_cpu() -> None:
    """The tests' patch (`fsdp_on_cpu.allow_fsdp_on_cpu`): Accelerate keeps FSDP in CPU processes only with
    it; ``FSDP_WORKER_NO_SHIM=1`` leaves it out (what the yaml alone gives: DDP)."""
    import os

    from fsdp_on_cpu import allow_fsdp_on_cpu as patch

    if not os.environ.get("FSDP_WORKER_NO_SHIM"):
        patch()


CACHE_BATCH = 5  # holdout 11 rows: 6 + 5 per rank -> 2 + 1 teacher batches, test 31: 16 + 15 -> 4 + 3


def cache_step(out_dir: Path, teacher, train, holdout, test) -> dict:
    """Train, holdout and test caches built three ways: by the teacher sharded over the processes (FSDP2 under the
    FSDP launch), by the whole teacher over the processes, and by the whole teacher in this process alone."""
    from accelerate import Accelerator

    from hf_fairkd.teacher import (
        build_teacher_cache,
        cached_logits_from_batch,
        prepare_teacher,
        teacher_cache_info,
    )

    def dense(dataset):  # the cached logits (binary rows)
        return cached_logits_from_batch(dataset.with_format(None)[:], teacher.config.num_labels)

    accelerator = Accelerator(cpu=True)
    sharded, memory = prepare_teacher(copy.deepcopy(teacher), accelerator, "auto")
    forwards = []
    sharded.register_forward_pre_hook(lambda *_: forwards.append(1))
    built = {
        name: {
            split: build_teacher_cache(data, model, batch_size=CACHE_BATCH, accelerator=acc)
            for split, data in (("train", train), ("holdout", holdout), ("test", test))
        }
        for name, model, acc in (
            ("sharded", sharded, accelerator),
            ("replicated", teacher, accelerator),
            ("single", teacher, None),
        )
    }
    result = {
        "placement": memory.placement,
        "teacher_forwards": len(forwards),
        "logits": {
            name: {split: dense(ds).tolist() for split, ds in splits.items()}
            for name, splits in built.items()
        },
        "fingerprints": {
            name: teacher_cache_info(splits["holdout"])["teacher_fingerprint"]
            for name, splits in built.items()
        },
    }
    (out_dir / "cache").mkdir(parents=True, exist_ok=True)
    (out_dir / "cache" / f"rank{accelerator.process_index}.json").write_text(json.dumps(result))
    return built["sharded"]


def main(out_dir: Path, objectives: list[str]) -> None:
    import torch.distributed as dist

    allow_fsdp_on_cpu()

    train, holdout, test = datasets()
    teacher = train_teacher(train)
    cached = None
    for run in objectives:
        objective, _, variant = run.partition("@")
        run_dir = out_dir / run
        run_dir.mkdir(parents=True, exist_ok=True)
        student = make_vit(seed=STUDENT_SEED)
        # forwards of the student (train / eval) and of the teacher: under FSDP, each one all-gathers
        forwards = {"train": 0, "eval": 0, "teacher": 0}

        def count(module, args, kwargs, forwards=forwards):
            forwards["train" if module.training else "eval"] += 1

        # fully_shard swaps the class of the module in place: the hook stays on the root of the sharded student
        student.register_forward_pre_hook(count, with_kwargs=True)
        own_teacher = copy.deepcopy(teacher)  # sharded in place under FSDP: each run gets a whole copy
        own_teacher.register_forward_pre_hook(lambda *_, f=forwards: f.update(teacher=f["teacher"] + 1))
        run_train, run_holdout, run_teacher = train, holdout, own_teacher
        if variant == "cached":  # the documented way for a teacher too large for one device: no teacher here
            cached = cached or cache_step(out_dir, teacher, train, holdout, test)
            run_train, run_holdout, run_teacher = cached["train"], cached["holdout"], None
        run_test = cached["test"] if variant == "cached" else test
        sharding = {"replicate": {"teacher_sharding": "replicate"}}.get(variant, {})
        trainer = DistillationTrainer(
            model=student,
            args=student_args(run_dir / "run", objective, **sharding),
            teacher=run_teacher,
            train_dataset=run_train,
            holdout_dataset=run_holdout,
        )
        trainer.train()
        metrics = trainer.evaluate(run_test)  # the evaluation loop, through the wrapped (sharded) student
        output = trainer.predict(run_test)
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        trainer.save_model(str(run_dir / "student"))  # a collective under FSDP: every rank calls it
        multipliers = getattr(trainer.objective, "multipliers", None)
        reliability = getattr(trainer.objective, "teacher_reliability", None)
        similarity = getattr(trainer.objective, "class_similarity", None)
        rank = trainer.accelerator.process_index
        memory = trainer.teacher_source.memory
        result = {
            "teacher_memory": None if memory is None else vars(memory),
            "rank": rank,
            "world_size_accelerate": trainer.accelerator.num_processes,
            "world_size_torch": dist.get_world_size() if dist.is_initialized() else 1,
            "distributed_type": str(trainer.accelerator.distributed_type),
            "wrapped_type": type(trainer.model_wrapped).__name__,
            "multipliers": None if multipliers is None else multipliers.tolist(),
            "num_updates": getattr(trainer.objective, "num_updates", None),
            "teacher_reliability": None if reliability is None else reliability.tolist(),
            "class_similarity": None if similarity is None else similarity.tolist(),
            "student_is_model_wrapped": trainer.model is trainer.model_wrapped,
            "forwards": dict(forwards),
            "log_history": trainer.state.log_history,
            "eval_metrics": metrics,
            "predictions": logits.argmax(-1).tolist(),
            "label_ids": output.label_ids.tolist(),
        }
        if run == "kd":  # after the forwards were counted
            result["unsharded_copy"] = unsharded_copy_check(trainer, holdout)
        trainer.accelerator.wait_for_everyone()  # rank 0's student is complete before any rank reports
        (run_dir / f"rank{rank}.json").write_text(json.dumps(result, indent=1))


def unsharded_copy_check(trainer, holdout) -> dict:
    """The run's (sharded) teacher prepared again with teacher_sharding='replicate': its memory, and the largest
    difference between its logits and the sharded teacher's on the holdout (both ranks make both forwards)."""
    from hf_fairkd.teacher import prepare_teacher

    sharded = trainer.teacher
    whole, memory = prepare_teacher(sharded, trainer.accelerator, "replicate")
    pixels = holdout[:]["pixel_values"]
    with torch.no_grad():
        difference = (whole(pixel_values=pixels).logits - sharded(pixel_values=pixels).logits).abs().max()
    return {"memory": vars(memory), "max_abs_difference": float(difference), "type": type(whole).__name__}


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: fsdp_worker.py OUT_DIR OBJECTIVE [OBJECTIVE ...]")
    main(Path(sys.argv[1]), sys.argv[2:])
