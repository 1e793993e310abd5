"""Worker for tests/test_distributed.py: one run of `DistillationTrainer` in each of several processes.

    accelerate launch --config_file recipes/accelerate/cpu_two_processes.yaml tests/distributed_worker.py OUT_DIR

Every rank writes OUT_DIR/rank{r}.json (world size, class-DRO multipliers, teacher reliability, the batches
it trained on, its training log, a digest of its weights) as its last act, so a file there means the rank
finished. Rank 0 also writes OUT_DIR/step1.safetensors (the student after one SGD step),
OUT_DIR/student/ (the final student) and OUT_DIR/metrics.json (predictions over the 31-row test set).
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
from transformers import TrainerCallback  # noqa: E402

from tiny_models import image_dataset, make_vit, tiny_args  # noqa: E402

# Shared with the test: what the run is made of.
TRAIN_COUNTS = (24, 12, 6)
HOLDOUT_COUNTS = (7, 6, 6)  # 19 rows: the two ranks hold 10 and 9 of them
TEST_COUNTS = (11, 10, 10)  # 31 rows: not divisible by the world size
STUDENT_SEED, TEACHER_SEED = 0, 9
PER_DEVICE_BATCH = 4
MAX_STEPS = 10
LEARNING_RATE = 0.5


def datasets():
    return (
        image_dataset(TRAIN_COUNTS, seed=0),
        image_dataset(HOLDOUT_COUNTS, seed=1),
        image_dataset(TEST_COUNTS, seed=2),
    )


def robust_kd_args(out_dir: Path, **overrides):
    """Plain SGD at a constant rate and no clipping, so one step is p - lr * grad and the test can redo it."""
    settings = dict(
        objective="robust_kd",
        per_device_train_batch_size=PER_DEVICE_BATCH,
        max_steps=MAX_STEPS,
        learning_rate=LEARNING_RATE,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        logging_steps=1,
        dro_update_every=2,
        dro_holdout_batch_size=11,  # odd: the ranks evaluate 6 and 5 holdout rows per update
        dro_step_size=1.0,
    )
    settings.update(overrides)
    return tiny_args(out_dir, **settings)


def row_fingerprints(pixel_values: torch.Tensor) -> list[float]:
    """Sum of each image in float64: identifies a training row (the test matches it to the dataset)."""
    return pixel_values.detach().double().flatten(1).sum(1).tolist()


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class SaveAfterFirstStep(TrainerCallback):
    """Rank 0 saves the student right after the first optimizer step."""

    def __init__(self, path: Path):
        self.path = path

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1 and state.is_world_process_zero:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(self.path))


def main(out_dir: Path) -> None:
    import torch.distributed as dist

    from hf_fairkd.metrics import report_to_jsonable, subgroup_report
    from hf_fairkd.trainer import DistillationTrainer

    class RecordingTrainer(DistillationTrainer):
        """Records which training rows this rank's micro-batches held, step by step."""

        seen: list[list[float]] = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                self.seen.append(row_fingerprints(inputs["pixel_values"]))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    out_dir.mkdir(parents=True, exist_ok=True)
    train, holdout, test = datasets()

    # 1. The teacher's per-class holdout reliability (ada_alpha, class level), summed over processes at start.
    reliability_trainer = DistillationTrainer(
        model=make_vit(seed=STUDENT_SEED),
        args=tiny_args(out_dir / "ada", objective="ada_alpha", max_steps=1, per_device_eval_batch_size=4),
        teacher=make_vit(seed=TEACHER_SEED),
        train_dataset=train,
        holdout_dataset=holdout,
    )
    reliability_trainer.train()
    reliability = reliability_trainer.objective.teacher_reliability.tolist()

    # 2. robust_kd: class-DRO multipliers updated every 2 steps from all-reduced holdout errors.
    trainer = RecordingTrainer(
        model=make_vit(seed=STUDENT_SEED),
        args=robust_kd_args(out_dir / "robust"),
        teacher=make_vit(seed=TEACHER_SEED),
        train_dataset=train,
        holdout_dataset=holdout,
        callbacks=[SaveAfterFirstStep(out_dir / "step1.safetensors")],
    )
    trainer.train()
    rank = trainer.accelerator.process_index

    # 3. Predictions over the test set, gathered from every process (the padding duplicates dropped).
    output = trainer.predict(test)
    predictions = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    predicted = predictions.argmax(-1)
    trainer.save_model(str(out_dir / "student"))
    if trainer.is_world_process_zero():
        names = [trainer.model.config.id2label[i] for i in range(trainer.model.config.num_labels)]
        report = subgroup_report(predicted, output.label_ids, class_names=names, n_bootstrap=0)
        record = {
            "num_predictions": int(len(predicted)),
            "predictions": predicted.tolist(),
            "label_ids": output.label_ids.tolist(),
            "report": report_to_jsonable(report),
        }
        (out_dir / "metrics.json").write_text(json.dumps(record, indent=1))

    objective = trainer.objective
    result = {
        "rank": rank,
        "world_size_accelerate": trainer.accelerator.num_processes,
        "world_size_torch": dist.get_world_size() if dist.is_initialized() else 1,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "multipliers": objective.multipliers.tolist(),
        "num_updates": objective.num_updates,
        "teacher_reliability": reliability,
        "seen": trainer.seen,
        "log_history": trainer.state.log_history,
        "weights_sha256": weights_digest(trainer.accelerator.unwrap_model(trainer.model)),
    }
    trainer.accelerator.wait_for_everyone()  # rank 0's files are complete before any rank reports success
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: distributed_worker.py OUT_DIR")
    main(Path(sys.argv[1]))
