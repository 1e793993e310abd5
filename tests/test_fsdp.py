"""DistillationTrainer under FSDP2 (`fully_shard`, gloo) in two real CPU processes, checked against DDP.

tests/fsdp_worker.py runs once under `accelerate launch` with recipes/accelerate/cpu_fsdp_two_processes.yaml
(kd, robust_kd, ada_alpha and kd_sim students, one after the other in the same process group) and once with
recipes/accelerate/cpu_two_processes.yaml (DDP, the same students) for the loss comparison. Each launch has a
timeout: a rank left waiting in a collective (e.g. an all-gather of the sharded student that the other rank
never makes, with the 11-row holdout or the 31-row test set, neither divisible by 2) fails the test instead
of hanging it.

Accelerate 1.15 does not select FSDP in CPU processes on its own: the worker patches that in
(`fsdp_worker.allow_fsdp_on_cpu`); `test_the_yaml_alone_does_not_give_fsdp_on_cpu` (slow) records it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from fsdp_worker import (
    ACCUMULATION,
    HOLDOUT_COUNTS,
    MAX_STEPS,
    PER_DEVICE_BATCH,
    STUDENT_SEED,
    TEST_COUNTS,
    TRAIN_COUNTS,
    datasets,
)
from tiny_models import make_vit
from transformers import ViTForImageClassification
from two_processes import launch_two_processes

from hf_fairkd.metrics.trainer_metrics import SubgroupMetrics

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "fsdp_worker.py"
FSDP_CONFIG = REPO / "recipes" / "accelerate" / "cpu_fsdp_two_processes.yaml"
DDP_CONFIG = REPO / "recipes" / "accelerate" / "cpu_two_processes.yaml"
OBJECTIVES = ("kd", "robust_kd", "ada_alpha", "kd_sim")
WORLD_SIZE = 2
TIMEOUT_S = 300  # a launch takes ~15 s; this only bounds a hang
# FSDP2 reduce-scatters the same two per-rank float32 gradients DDP all-reduces (both average over the 2
# ranks) and AdamW is elementwise on the shards, so the runs should agree to float32 rounding; 1e-4 relative
# leaves room for a different summation order compounding over 24 steps, and is far below the step-to-step
# change of the loss (~1e-1), so a run that trained differently (one rank's rows, a missed gradient sync,
# a different global batch) cannot pass.
LOSS_RTOL = 1e-4
EVAL_BATCH = 5  # per device, as in fsdp_worker.student_args
HOLDOUT_BATCHES = math.ceil(sum(HOLDOUT_COUNTS) / (EVAL_BATCH * WORLD_SIZE))  # per rank and DRO update: 2
TEST_BATCHES = math.ceil(sum(TEST_COUNTS) / (EVAL_BATCH * WORLD_SIZE))  # per rank and test pass: 4
DRO_UPDATES = (MAX_STEPS - 1) // 2  # dro_update_every=2: steps 2, 4, ..., 22


def launch(config: Path, out_dir: Path, objectives=OBJECTIVES, shim: bool = True) -> float:
    """Run the worker in two processes; returns the seconds it took. Fails the test on error or timeout."""
    env = {} if shim else {"FSDP_WORKER_NO_SHIM": "1"}
    return launch_two_processes(config, WORKER, str(out_dir), *objectives, timeout_s=TIMEOUT_S, env=env)


def read_ranks(out_dir: Path) -> dict[str, list[dict]]:
    return {
        objective: [
            json.loads((out_dir / objective / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)
        ]
        for objective in OBJECTIVES
    }


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("fsdp") / "out"
    print(f"FSDP launch: {launch(FSDP_CONFIG, out_dir):.1f} s")
    return out_dir


@pytest.fixture(scope="module")
def fsdp(fsdp_run):
    return read_ranks(fsdp_run)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp") / "out"
    print(f"DDP launch: {launch(DDP_CONFIG, out_dir):.1f} s")
    return read_ranks(out_dir)


def test_launch_config_loads_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file
    from transformers.models.vit import modeling_vit

    config = load_config_from_file(str(FSDP_CONFIG))  # refuses unknown keys
    assert (config.distributed_type.value, config.num_processes, config.use_cpu) == ("FSDP", 2, True)
    assert config.fsdp_config["fsdp_version"] == 2
    assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # save_model writes a full model
    assert hasattr(modeling_vit, config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"])


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_two_processes_ran_under_fsdp(fsdp, objective):
    # a run that fell back to DDP or to one process would pass most checks below
    for r, record in enumerate(fsdp[objective]):
        assert record["rank"] == r
        assert record["world_size_accelerate"] == record["world_size_torch"] == WORLD_SIZE
        assert record["distributed_type"] == "DistributedType.FSDP"
        # FSDP2 shards in place: the Trainer's model is the sharded module (class FSDP<name>)
        assert record["wrapped_type"] == "FSDPViTForImageClassification"
        assert record["student_is_model_wrapped"]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_rank_makes_the_same_student_forwards(fsdp, objective):
    """Each forward of the sharded student all-gathers: the holdout passes (11 rows: 6 and 5 per rank, the
    last batch padded) and the test passes (31 rows) must give both ranks the same number of batches.
    That the launch finished at all shows no rank waited alone; the counts show the passes went through
    the sharded student, as many times as expected."""
    first, second = (record["forwards"] for record in fsdp[objective])
    assert first == second
    # 42 rows in micro-batches of 4 x 2 ranks: 6 per epoch (the last padded), 3 optimizer steps of 2
    micro_batches = math.ceil(sum(TRAIN_COUNTS) / (PER_DEVICE_BATCH * WORLD_SIZE))
    steps_per_epoch = math.ceil(micro_batches / ACCUMULATION)
    assert MAX_STEPS % steps_per_epoch == 0
    assert first["train"] == MAX_STEPS // steps_per_epoch * micro_batches
    holdout = DRO_UPDATES * HOLDOUT_BATCHES if objective == "robust_kd" else 0
    assert first["eval"] == holdout + 2 * TEST_BATCHES  # evaluate and predict


def test_class_dro_multipliers_identical_on_both_ranks(fsdp):
    first, second = fsdp["robust_kd"]
    assert first["multipliers"] == second["multipliers"]  # exact: both ranks took the same all-reduced step
    assert first["num_updates"] == second["num_updates"] == DRO_UPDATES
    multipliers = torch.tensor(first["multipliers"])
    assert multipliers.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (multipliers.max() - multipliers.min()).item() > 1e-3  # the updates moved them


def test_teacher_reliability_identical_on_both_ranks(fsdp):
    first, second = fsdp["ada_alpha"]
    assert first["teacher_reliability"] is not None
    assert first["teacher_reliability"] == second["teacher_reliability"]


def test_class_similarity_from_the_unsharded_teacher(fsdp, ddp):
    first, second = fsdp["kd_sim"]
    assert first["class_similarity"] is not None
    assert first["class_similarity"] == second["class_similarity"] == ddp["kd_sim"][0]["class_similarity"]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_saved_student_is_full_and_reproduces_the_test_metrics(fsdp_run, fsdp, objective):
    folder = fsdp_run / objective / "student"
    student = ViTForImageClassification.from_pretrained(folder).eval()
    # a full model, not rank 0's shard: every tensor at its unsharded shape
    reference = make_vit(seed=STUDENT_SEED).state_dict()
    loaded = student.state_dict()
    assert loaded.keys() == reference.keys()
    assert all(loaded[k].shape == reference[k].shape for k in reference)
    assert not torch.equal(loaded["classifier.weight"], reference["classifier.weight"])  # the trained one

    test = datasets()[2][:]
    with torch.no_grad():
        logits = student(pixel_values=test["pixel_values"]).logits
    predicted = logits.argmax(-1).tolist()
    for record in fsdp[objective]:
        assert record["label_ids"] == test["labels"].tolist()  # all 31 rows, in order, padding dropped
        assert record["predictions"] == predicted
    assert len(set(predicted)) > 1  # not a constant predictor, which would match trivially

    from transformers import EvalPrediction

    metrics = SubgroupMetrics(student.config, train_counts=list(TRAIN_COUNTS))(
        EvalPrediction(predictions=logits.numpy(), label_ids=test["labels"].numpy())
    )
    run_metrics = fsdp[objective][0]["eval_metrics"]
    for name, value in metrics.items():
        ran = run_metrics[f"eval_{name}"]
        assert (math.isnan(ran) and math.isnan(value)) or ran == pytest.approx(value, abs=1e-12), name


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_training_loss_matches_ddp(fsdp, ddp, objective):
    assert ddp[objective][0]["distributed_type"] == "DistributedType.MULTI_CPU"
    assert ddp[objective][0]["wrapped_type"] == "DistributedDataParallel"
    fsdp_losses = [h["loss"] for h in fsdp[objective][0]["log_history"] if "loss" in h]
    ddp_losses = [h["loss"] for h in ddp[objective][0]["log_history"] if "loss" in h]
    assert len(fsdp_losses) == len(ddp_losses) == MAX_STEPS
    assert fsdp_losses == [h["loss"] for h in fsdp[objective][1]["log_history"] if "loss" in h]
    assert fsdp_losses[-1] == pytest.approx(ddp_losses[-1], rel=LOSS_RTOL)
    if objective == "robust_kd":
        torch.testing.assert_close(
            torch.tensor(fsdp["robust_kd"][0]["multipliers"]),
            torch.tensor(ddp["robust_kd"][0]["multipliers"]),
            rtol=LOSS_RTOL,
            atol=1e-6,
        )


@pytest.mark.slow  # a third launch (~15 s)
def test_the_yaml_alone_does_not_give_fsdp_on_cpu(tmp_path):
    """Records why fsdp_worker.allow_fsdp_on_cpu exists: Accelerate 1.15's AcceleratorState selects FSDP only
    for GPU-family devices, so launched with cpu_fsdp_two_processes.yaml alone a CPU process stays
    MULTI_CPU and the Trainer wraps the student in DDP (two processes still train). When this fails,
    Accelerate selects FSDP on CPU itself: drop the shim and this test."""
    out_dir = tmp_path / "out"
    launch(FSDP_CONFIG, out_dir, objectives=("kd",), shim=False)
    for r in range(WORLD_SIZE):
        record = json.loads((out_dir / "kd" / f"rank{r}.json").read_text())
        assert record["world_size_torch"] == WORLD_SIZE
        assert (record["distributed_type"], record["wrapped_type"]) == (
            "DistributedType.MULTI_CPU",
            "DistributedDataParallel",
        )
