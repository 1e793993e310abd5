"""Worker for the two-process test of tests/test_group_objectives.py: objectives over groups of the data in each of
several processes.

    accelerate launch --config_file recipes/accelerate/cpu_two_processes.yaml tests/group_worker.py OUT_DIR

Stages, in the same process group: the `dro` teacher objective with ``dro_groups='group'`` over the 'site' column
(learning rate 0, so the student's holdout predictions stay those of its initial weights and the test can redo
every update by hand), and `ada_alpha` with ``reliability_groups='class_x_group'``, which measures the teacher's
per-cell holdout recall once. Each rank sees its own share of the holdout rows and records them.

Every rank writes OUT_DIR/rank{r}.json (world size, multipliers, cell reliability, the holdout rows it saw) as its
last act. The test rebuilds the same data and models from the constants below.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # tiny_models and hf_fairkd, whatever the working directory

from tiny_models import image_dataset, make_vit, tiny_args  # noqa: E402

from hf_fairkd.trainer import DistillationTrainer  # noqa: E402

STUDENT_SEED, TEACHER_SEED = 0, 4
MAX_STEPS, UPDATE_EVERY, STEP_SIZE, ADJUSTMENT = 6, 2, 0.5, 0.5  # updates at steps 2 and 4


def sites(n: int, period: int) -> list[str]:
    return ["A" if i % period else "B" for i in range(n)]


def datasets():
    train = image_dataset((24, 12, 6), seed=0)
    holdout = image_dataset((7, 6, 6), seed=1)  # 19 rows: the two ranks hold 10 and 9 of them
    train = train.add_column("site", sites(len(train), 3))
    holdout = holdout.add_column("site", ["C" if i == 18 else s for i, s in enumerate(sites(19, 2))])
    return train, holdout


def dro_args(out_dir: Path):
    return tiny_args(
        out_dir,
        objective="dro",
        dro_groups="group",
        group_columns=["site"],
        dro_group_adjustment=ADJUSTMENT,
        dro_update_every=UPDATE_EVERY,
        dro_step_size=STEP_SIZE,
        dro_holdout_batch_size=100,  # every holdout row at every update
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,  # 10 and 9 rows per rank: batches of 4, 4, 2 and 4, 4, 1
        learning_rate=0.0,
        max_steps=MAX_STEPS,
    )


def record_holdout_rows(trainer) -> list[float]:
    """Makes the hooks' context note the pixel sum of every holdout row this rank reads group ids of."""
    seen: list[float] = []
    context = trainer.objective_hooks.context
    group_ids = context.group_ids

    def recording(batch):
        seen.extend(batch["pixel_values"].double().flatten(1).sum(1).tolist())
        return group_ids(batch)

    context.group_ids = recording
    return seen


def main(out_dir: Path) -> None:
    import torch.distributed as dist

    out_dir.mkdir(parents=True, exist_ok=True)
    train, holdout = datasets()

    dro = DistillationTrainer(
        model=make_vit(seed=STUDENT_SEED),
        args=dro_args(out_dir / "dro"),
        train_dataset=train,
        holdout_dataset=holdout,
    )
    dro_rows = record_holdout_rows(dro)
    dro.train()

    reliability = DistillationTrainer(
        model=make_vit(seed=STUDENT_SEED),
        args=tiny_args(
            out_dir / "ada",
            objective="ada_alpha",
            reliability_groups="class_x_group",
            group_columns=["site"],
            max_steps=1,
            per_device_eval_batch_size=3,
        ),
        teacher=make_vit(seed=TEACHER_SEED),
        train_dataset=train,
        holdout_dataset=holdout,
    )
    reliability_rows = record_holdout_rows(reliability)
    reliability.train()

    rank = dro.accelerator.process_index
    result = {
        "rank": rank,
        "world_size_accelerate": dro.accelerator.num_processes,
        "world_size_torch": dist.get_world_size() if dist.is_initialized() else 1,
        "group_names": dro.objective.group_names,
        "multipliers": dro.objective.multipliers.tolist(),
        "num_updates": dro.objective.num_updates,
        "dro_holdout_rows": dro_rows,
        "cell_reliability": reliability.objective.cell_reliability.tolist(),
        "reliability_holdout_rows": reliability_rows,
    }
    dro.accelerator.wait_for_everyone()
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: group_worker.py OUT_DIR")
    main(Path(sys.argv[1]))
