"""DistillationTrainer in two real processes (gloo on CPU), checked against one process.

tests/distributed_worker.py runs once per module under `accelerate launch` with
recipes/accelerate/cpu_two_processes.yaml; these tests read what each rank wrote and redo the same maths
here, in a single process.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed_worker import (
    STUDENT_SEED,
    TEST_COUNTS,
    TRAIN_COUNTS,
    datasets,
    robust_kd_args,
    row_fingerprints,
)
from safetensors.torch import load_file
from tiny_models import make_vit
from transformers import ViTForImageClassification
from two_processes import launch_two_processes

from hf_fairkd.metrics import subgroup_report
from hf_fairkd.objectives import get_objective

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "distributed_worker.py"
LAUNCH_CONFIG = REPO / "recipes" / "accelerate" / "cpu_two_processes.yaml"
WORLD_SIZE = 2
TIMEOUT_S = 180  # the run takes ~25 s; this only bounds a hang


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Launch the worker once in two processes and return its output folder."""
    out_dir = tmp_path_factory.mktemp("distributed") / "out"
    seconds = launch_two_processes(LAUNCH_CONFIG, WORKER, str(out_dir), timeout_s=TIMEOUT_S)
    print(f"two-process worker: {seconds:.1f} s")
    return out_dir


@pytest.fixture(scope="module")
def ranks(run):
    return [json.loads((run / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def student_args(tmp_path_factory):
    """The worker's robust_kd settings, rebuilt here."""
    return robust_kd_args(tmp_path_factory.mktemp("args"))


@pytest.fixture(scope="module")
def data():
    """train, holdout, test as dicts of whole-column tensors."""
    return tuple(split[:] for split in datasets())


def test_two_processes_really_ran(ranks):
    # A run that silently fell back to one process would pass every other check here.
    for r, record in enumerate(ranks):
        assert record["rank"] == r
        assert record["world_size_accelerate"] == WORLD_SIZE
        assert record["world_size_torch"] == WORLD_SIZE
        assert record["distributed_type"] == "DistributedType.MULTI_CPU"


def test_ranks_train_on_different_rows(ranks, data):
    train = data[0]
    known = {round(v, 6) for v in row_fingerprints(train["pixel_values"])}
    assert len(known) == len(train["labels"])  # the fingerprints identify rows
    per_rank = [[[round(v, 6) for v in batch] for batch in rec["seen"]] for rec in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) > 0  # the same number of micro-batches: no rank waits alone
    for batch0, batch1 in zip(*per_rank):
        assert set(batch0) <= known and set(batch1) <= known
        assert not set(batch0) & set(batch1)  # each rank trains on its own shard of the global batch
    # micro-batch k of rank r is slice 2k + r of the shuffled epoch: together they cover the set once
    first_epoch = [v for batch0, batch1 in zip(*per_rank) for v in batch0 + batch1][: len(train["labels"])]
    assert set(first_epoch) == known


def test_class_dro_state_is_identical_on_both_ranks(ranks, student_args):
    first, second = ranks
    assert first["multipliers"] == second["multipliers"]  # exact: both ranks took the same all-reduced step
    multipliers = np.array(first["multipliers"])
    assert multipliers.sum() == pytest.approx(1.0, abs=1e-6)
    assert multipliers.max() - multipliers.min() > 1e-3  # moved away from uniform: the updates happened
    # updates at steps 2, 4, ..., 22 of 24 (none at step 0, and step 24 computes no loss)
    expected_updates = (student_args.max_steps - 1) // student_args.dro_update_every
    assert first["num_updates"] == second["num_updates"] == expected_updates
    assert first["first_grads_sha256"] == second["first_grads_sha256"]  # DDP's all-reduced gradients
    assert first["weights_sha256"] == second["weights_sha256"]


def test_teacher_reliability_matches_one_process(run, ranks, data):
    holdout = data[1]
    assert ranks[0]["teacher_reliability"] == ranks[1]["teacher_reliability"]
    teacher = ViTForImageClassification.from_pretrained(run / "teacher").eval()
    with torch.no_grad():
        predicted = teacher(pixel_values=holdout["pixel_values"]).logits.argmax(-1)
    labels = holdout["labels"]
    counts = torch.bincount(labels, minlength=3).double()
    correct = torch.bincount(labels[predicted == labels], minlength=3).double()
    overall = correct.sum() / counts.sum()
    expected = (correct + overall) / (counts + 1.0)  # pseudo-count 1, by hand
    np.testing.assert_allclose(ranks[0]["teacher_reliability"], expected.numpy(), rtol=1e-6)


def first_step_rows(ranks, train, accumulation: int) -> list[int]:
    """Dataset indices of the rows both ranks used for the first optimizer step."""
    index = {round(v, 6): i for i, v in enumerate(row_fingerprints(train["pixel_values"]))}
    return [index[round(v, 6)] for rec in ranks for batch in rec["seen"][:accumulation] for v in batch]


def test_first_gradient_is_the_mean_over_the_global_batch(run, ranks, data, student_args):
    """DDP x accumulation: 2 ranks x 2 micro-batches x 2 rows must give the gradient of the mean loss over the
    8 rows, computed here in one process with the same models and objective."""
    train = data[0]
    rows = first_step_rows(ranks, train, student_args.gradient_accumulation_steps)
    assert len(rows) == len(set(rows)) == 8
    student = make_vit(seed=STUDENT_SEED)
    teacher = ViTForImageClassification.from_pretrained(run / "teacher").eval()
    objective = get_objective("robust_kd")(student_args, torch.tensor(TRAIN_COUNTS))
    pixels, labels = train["pixel_values"][rows], train["labels"][rows]
    with torch.no_grad():
        teacher_logits = teacher(pixel_values=pixels).logits
    loss = objective.compute(student(pixel_values=pixels).logits, labels, teacher_logits).per_example.mean()
    loss.backward()
    recorded = load_file(run / "step1_grads.safetensors")
    expected = {n: p.grad for n, p in student.named_parameters()}
    assert recorded.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(recorded[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # the logged training loss of step 1 is that same global mean, on both ranks
    for record in ranks:
        assert record["log_history"][0]["loss"] == pytest.approx(loss.item(), rel=1e-5)


def test_training_loss_log_is_identical_on_both_ranks(ranks, student_args):
    losses = [[h["loss"] for h in rec["log_history"] if "loss" in h] for rec in ranks]
    assert len(losses[0]) == student_args.max_steps  # logging_steps=1
    assert losses[0] == losses[1]


def test_logged_loss_components_add_up_to_the_loss(ranks):
    # robust_kd: total = one-hot term + distillation term, example by example, so their means add up too,
    # provided the components are averaged over processes like 'loss' (rank-local means do not add up)
    for h in ranks[0]["log_history"]:
        if "loss" in h:
            assert h["loss_one_hot"] + h["loss_distill"] == pytest.approx(h["loss"], rel=1e-5)


def test_predictions_match_one_process(run, data):
    test = data[2]
    assert len(test["labels"]) == sum(TEST_COUNTS) and len(test["labels"]) % WORLD_SIZE == 1
    record = json.loads((run / "metrics.json").read_text())
    assert record["num_predictions"] == len(test["labels"])  # the padding rows of the last batch were dropped
    assert record["label_ids"] == test["labels"].tolist()  # gathered in dataset order
    student = ViTForImageClassification.from_pretrained(run / "student").eval()
    with torch.no_grad():
        predicted = student(pixel_values=test["pixel_values"]).logits.argmax(-1).numpy()
    assert record["predictions"] == predicted.tolist()
    assert len(set(predicted.tolist())) > 1  # not a constant predictor, which would match trivially
    names = [student.config.id2label[i] for i in range(student.config.num_labels)]
    report = subgroup_report(predicted, test["labels"].numpy(), class_names=names, intervals=False)
    two_process = record["report"]
    assert two_process["num_examples"] == report["num_examples"] == len(test["labels"])
    assert two_process["accuracy"] == report["accuracy"]
    assert two_process["balanced_accuracy"] == report["balanced_accuracy"]
    for ours, theirs in zip(report["per_class"], two_process["per_class"], strict=True):
        assert (ours["support"], ours["correct"], ours["accuracy"]) == (
            theirs["support"],
            theirs["correct"],
            theirs["accuracy"],
        )


@pytest.mark.parametrize(
    "name, distributed_type, num_processes",
    [
        ("single_process", "NO", 1),
        ("multi_gpu_ddp", "MULTI_GPU", 8),
        ("fsdp", "FSDP", 8),
        ("deepspeed_zero2", "DEEPSPEED", 8),
        ("cpu_two_processes", "MULTI_GPU", 2),  # MULTI_GPU on purpose: MULTI_CPU starts one process here
    ],
)
def test_launch_configs_load_with_accelerate(name, distributed_type, num_processes):
    from accelerate.commands.config.config_args import load_config_from_file
    from transformers.models.vit import modeling_vit

    config = load_config_from_file(str(LAUNCH_CONFIG.parent / f"{name}.yaml"))  # refuses unknown keys
    assert (config.distributed_type.value, config.num_processes) == (distributed_type, num_processes)
    if name == "fsdp":
        assert config.fsdp_config["fsdp_reshard_after_forward"] == "FULL_SHARD"
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert hasattr(modeling_vit, config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"])
    if name == "deepspeed_zero2":
        assert config.deepspeed_config["zero_stage"] == 2
