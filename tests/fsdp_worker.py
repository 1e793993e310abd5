"""Worker for tests/test_fsdp.py: `DistillationTrainer` students in each of two processes, under FSDP2 or DDP.

    accelerate launch --config_file recipes/accelerate/cpu_fsdp_two_processes.yaml \
        tests/fsdp_worker.py OUT_DIR kd robust_kd ada_alpha kd_sim

(the same command with recipes/accelerate/cpu_two_processes.yaml gives the DDP runs the losses are compared
with). For each objective named, in the same process group: a student distilled from a teacher trained here
without a Trainer (the same deterministic loop on every rank, so every rank holds the same teacher), with 2
micro-batches of 4 rows per rank and optimizer step; ada_alpha measures the teacher's per-class holdout
reliability (summed over processes); kd_sim reads its targets from the teacher's classifier weights;
robust_kd updates its class-DRO multipliers every 2 steps from the whole 11-row holdout (11 does not divide
by 2: the ranks hold 6 and 5 rows, padded to the same number of batches); then `evaluate` and `predict` on the 31-row test set, and `save_model`.

Every rank writes OUT_DIR/<objective>/rank{r}.json as its last act for that objective (world size, distributed
type, multipliers, teacher reliability, forwards of the student per mode, training log, eval metrics,
predictions). Rank 0's save_model writes OUT_DIR/<objective>/student.
"""

from __future__ import annotations

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


def student_args(out_dir: Path, objective: str):
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
    """Let Accelerate 1.15 select FSDP in CPU processes (test shim; a no-op unless launched with FSDP).

    Launched with distributed_type FSDP and use_cpu, Accelerate builds the FSDP plugin from the launcher's
    environment (ACCELERATE_USE_FSDP=true, FSDP_VERSION=2, ...) but `AcceleratorState` switches the
    distributed type to FSDP only in its GPU-family branch (MULTI_GPU, MULTI_XPU, ...): a CPU process
    stays DistributedType.MULTI_CPU, drops the plugin, and the Trainer wraps the student in DDP. This does
    what that branch does, for MULTI_CPU; FSDP2 itself (fully_shard over gloo) runs on CPU.
    """
    import os

    from accelerate.state import AcceleratorState, DistributedType, PartialState

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or os.environ.get(
        "FSDP_WORKER_NO_SHIM"
    ):
        return
    original_init = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = __init__


def main(out_dir: Path, objectives: list[str]) -> None:
    import torch.distributed as dist

    allow_fsdp_on_cpu()

    train, holdout, test = datasets()
    teacher = train_teacher(train)
    for objective in objectives:
        run_dir = out_dir / objective
        run_dir.mkdir(parents=True, exist_ok=True)
        student = make_vit(seed=STUDENT_SEED)
        forwards = {"train": 0, "eval": 0}  # forwards of the student, which under FSDP each all-gather

        def count(module, args, kwargs, forwards=forwards):
            forwards["train" if module.training else "eval"] += 1

        # fully_shard swaps the class of the module in place: the hook stays on the root of the sharded student
        student.register_forward_pre_hook(count, with_kwargs=True)
        trainer = DistillationTrainer(
            model=student,
            args=student_args(run_dir / "run", objective),
            teacher=teacher,
            train_dataset=train,
            holdout_dataset=holdout,
        )
        trainer.train()
        metrics = trainer.evaluate(test)  # the evaluation loop, through the wrapped (sharded) student
        output = trainer.predict(test)
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        trainer.save_model(str(run_dir / "student"))  # a collective under FSDP: every rank calls it
        multipliers = getattr(trainer.objective, "multipliers", None)
        reliability = getattr(trainer.objective, "teacher_reliability", None)
        similarity = getattr(trainer.objective, "class_similarity", None)
        rank = trainer.accelerator.process_index
        result = {
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
            "forwards": forwards,
            "log_history": trainer.state.log_history,
            "eval_metrics": metrics,
            "predictions": logits.argmax(-1).tolist(),
            "label_ids": output.label_ids.tolist(),
        }
        trainer.accelerator.wait_for_everyone()  # rank 0's student is complete before any rank reports
        (run_dir / f"rank{rank}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: fsdp_worker.py OUT_DIR OBJECTIVE [OBJECTIVE ...]")
    main(Path(sys.argv[1]), sys.argv[2:])
