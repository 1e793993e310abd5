"""Worker for tests/test_distributed.py: one run of `DistillationTrainer` in each of several processes.

    accelerate launch --config_file recipes/accelerate/cpu_two_processes.yaml tests/distributed_worker.py OUT_DIR

Stages, all in the same process group: a teacher trained with `erm`; an `ada_alpha` trainer that measures the
teacher's per-class holdout reliability (summed over processes); the `robust_kd` student, whose class-DRO
multipliers are updated every 2 steps from all-reduced holdout errors, with 2 micro-batches of 2 rows per
rank and optimizer step (global batch 8).

Every rank writes OUT_DIR/rank{r}.json (world size, multipliers, reliability, the rows it trained on, its
training log, digests of its weights and first gradients) as its last act, so a file there means the rank
finished. Rank 0 also writes OUT_DIR/teacher/ and OUT_DIR/student/ (save_model), OUT_DIR/step1_grads.safetensors
(the student's gradients at the first optimizer step) and OUT_DIR/metrics.json (the 31-row test set).
The test process rebuilds the same data and models from the constants below and checks all of it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # tiny_models and hf_fairkd, whatever the working directory

import torch  # noqa: E402
from tiny_models import image_dataset, make_vit, tiny_args  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_fairkd.trainer import DistillationTrainer  # noqa: E402

# Shared with the test: what the run is made of.
TRAIN_COUNTS = (24, 12, 6)
HOLDOUT_COUNTS = (7, 6, 6)  # 19 rows: the two ranks hold 10 and 9 of them
TEST_COUNTS = (11, 10, 10)  # 31 rows: not divisible by the world size
STUDENT_SEED, TEACHER_SEED = 0, 9
PER_DEVICE_BATCH, ACCUMULATION = 2, 2


def datasets():
    return (
        image_dataset(TRAIN_COUNTS, seed=0),
        image_dataset(HOLDOUT_COUNTS, seed=1),
        image_dataset(TEST_COUNTS, seed=2),
    )


def robust_kd_args(out_dir: Path, **overrides):
    """The student's settings (the test rebuilds the objective from them)."""
    settings = dict(
        objective="robust_kd",
        per_device_train_batch_size=PER_DEVICE_BATCH,
        gradient_accumulation_steps=ACCUMULATION,
        max_steps=24,
        learning_rate=5e-3,
        # T=1: the class-DRO offsets act at full strength on both terms at any T now (they are added after the
        # division by T); at T=2 this 24-step student collapsed to one class and the prediction check is void.
        temperature=1.0,
        max_grad_norm=0.0,  # no clipping: the gradients recorded are the raw ones
        logging_steps=1,
        dro_update_every=2,
        dro_holdout_batch_size=11,  # odd: the ranks evaluate 6 and 5 holdout rows per update ...
        per_device_eval_batch_size=5,  # ... in 2 and 1 batches: only the sums may be collective
        dro_step_size=0.5,
        dro_tradeoff=0.5,
    )
    settings.update(overrides)
    return tiny_args(out_dir, **settings)


def row_fingerprints(pixel_values: torch.Tensor) -> list[float]:
    """Sum of each image in float64: identifies a training row (the test matches it to the dataset)."""
    return pixel_values.detach().double().flatten(1).sum(1).tolist()


def digest(tensors: dict[str, torch.Tensor]) -> str:
    sha = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        sha.update(name.encode())
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


class FirstGradients(TrainerCallback):
    """Keeps the gradients every rank holds right before the first optimizer step (after DDP's all-reduce)."""

    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self.grads = {
                n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
            }


class RecordingTrainer(DistillationTrainer):
    """Records which training rows each of this rank's micro-batches held."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[list[float]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.seen.append(row_fingerprints(inputs["pixel_values"]))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def main(out_dir: Path) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    from hf_fairkd.metrics import report_to_jsonable, subgroup_report

    out_dir.mkdir(parents=True, exist_ok=True)
    train, holdout, test = datasets()

    # 1. The teacher, trained here with erm.
    teacher_trainer = DistillationTrainer(
        model=make_vit(seed=TEACHER_SEED),
        args=tiny_args(out_dir / "teacher_run", objective="erm", max_steps=60, learning_rate=5e-3),
        train_dataset=train,
    )
    teacher_trainer.train()
    teacher_trainer.save_model(str(out_dir / "teacher"))
    teacher = teacher_trainer.accelerator.unwrap_model(teacher_trainer.model)

    # 2. Its per-class holdout reliability (ada_alpha, class level), computed at the first step from 10 and
    # 9 holdout rows (4 and 3 batches of 3) on the two ranks.
    reliability_trainer = DistillationTrainer(
        model=make_vit(seed=STUDENT_SEED),
        args=tiny_args(out_dir / "ada_run", objective="ada_alpha", max_steps=1, per_device_eval_batch_size=3),
        teacher=teacher,
        train_dataset=train,
        holdout_dataset=holdout,
    )
    reliability_trainer.train()
    reliability = reliability_trainer.objective.teacher_reliability.tolist()

    # 3. The robust_kd student.
    first_gradients = FirstGradients()
    trainer = RecordingTrainer(
        model=make_vit(seed=STUDENT_SEED),
        args=robust_kd_args(out_dir / "student_run"),
        teacher=teacher,
        train_dataset=train,
        holdout_dataset=holdout,
        callbacks=[first_gradients],
    )
    trainer.train()
    trainer.save_model(str(out_dir / "student"))
    rank = trainer.accelerator.process_index
    if trainer.is_world_process_zero():
        save_file(
            {k: v.contiguous() for k, v in first_gradients.grads.items()},
            str(out_dir / "step1_grads.safetensors"),
        )

    # 4. Predictions over the test set, gathered from every process (the padding duplicates dropped).
    output = trainer.predict(test)
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    predicted = logits.argmax(-1)
    if trainer.is_world_process_zero():
        config = trainer.model.config
        names = [config.id2label[i] for i in range(config.num_labels)]
        report = subgroup_report(predicted, output.label_ids, class_names=names, intervals=False)
        record = {
            "num_predictions": int(len(predicted)),
            "predictions": predicted.tolist(),
            "label_ids": output.label_ids.tolist(),
            "report": report_to_jsonable(report),
        }
        (out_dir / "metrics.json").write_text(json.dumps(record, indent=1))

    result = {
        "rank": rank,
        "world_size_accelerate": trainer.accelerator.num_processes,
        "world_size_torch": dist.get_world_size() if dist.is_initialized() else 1,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "multipliers": trainer.objective.multipliers.tolist(),
        "num_updates": trainer.objective.num_updates,
        "teacher_reliability": reliability,
        "seen": trainer.seen,
        "log_history": trainer.state.log_history,
        "weights_sha256": digest(trainer.accelerator.unwrap_model(trainer.model).state_dict()),
        "first_grads_sha256": digest(first_gradients.grads),
    }
    trainer.accelerator.wait_for_everyone()  # rank 0's files are complete before any rank reports success
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: distributed_worker.py OUT_DIR")
    main(Path(sys.argv[1]))
