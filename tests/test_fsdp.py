"""DistillationTrainer under FSDP2 (`fully_shard`, gloo) in two real CPU processes, checked against DDP.

tests/fsdp_worker.py runs once under `accelerate launch` with recipes/accelerate/cpu_fsdp_two_processes.yaml
(kd, robust_kd, ada_alpha and kd_sim students with the teacher sharded like the student, then kd with the
teacher replicated, then kd from a teacher cache built by the sharded teacher with no teacher at all, one after
the other in the same process group) and once with recipes/accelerate/cpu_two_processes.yaml (DDP, the first
four) for the loss comparison. Each launch has a timeout: a rank left waiting in a collective (e.g. an
all-gather of the sharded student or teacher that the other rank never makes, with the 11-row holdout or the
31-row test set, neither divisible by 2) fails the test instead of hanging it (a mismatch that gloo notices
fails the launch at once).

Accelerate does not select FSDP in CPU processes on its own: the worker applies the tests' patch
(tests/fsdp_on_cpu.py; the package never patches Accelerate, it tells the user the run is DDP:
`test_fsdp_on_cpu_notice`); `test_the_yaml_alone_does_not_give_fsdp_on_cpu` (slow) records why, and
`test_recipe_with_the_fsdp_config_runs_fsdp_on_cpu` runs recipes/distill_vit.py with that config and the patch.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
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
OBJECTIVES = ("kd", "robust_kd", "ada_alpha", "kd_sim")  # teacher_sharding 'auto': sharded under FSDP
VARIANTS = ("kd@replicate", "kd@cached")  # FSDP launch only: teacher replicated; no teacher, a cache instead
FSDP_RUNS = OBJECTIVES + VARIANTS
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


def read_ranks(out_dir: Path, runs=OBJECTIVES) -> dict[str, list[dict]]:
    return {
        run: [json.loads((out_dir / run / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
        for run in runs
    }


def losses(record: dict) -> list[float]:
    return [h["loss"] for h in record["log_history"] if "loss" in h]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("fsdp") / "out"
    print(f"FSDP launch: {launch(FSDP_CONFIG, out_dir, objectives=FSDP_RUNS):.1f} s")
    return out_dir


@pytest.fixture(scope="module")
def fsdp(fsdp_run):
    return read_ranks(fsdp_run, FSDP_RUNS)


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


def test_deepspeed_zero3_config_loads_with_accelerate():
    """Kept for GPUs (DeepSpeed is not installed here, so never run): it loads, at ZeRO stage 3."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(FSDP_CONFIG.parent / "deepspeed_zero3.yaml"))  # refuses unknown keys
    assert (config.distributed_type.value, config.num_processes) == ("DEEPSPEED", 8)
    assert config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_init_flag"]


@pytest.mark.parametrize("objective", FSDP_RUNS)
def test_two_processes_ran_under_fsdp(fsdp, objective):
    # a run that fell back to DDP or to one process would pass most checks below
    for r, record in enumerate(fsdp[objective]):
        assert record["rank"] == r
        assert record["world_size_accelerate"] == record["world_size_torch"] == WORLD_SIZE
        assert record["distributed_type"] == "DistributedType.FSDP"
        # FSDP2 shards in place: the Trainer's model is the sharded module (class FSDP<name>)
        assert record["wrapped_type"] == "FSDPViTForImageClassification"
        assert record["student_is_model_wrapped"]


@pytest.mark.parametrize("objective", FSDP_RUNS)
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
    # the teacher's forwards (all-gathers too when it is sharded) are equal on both ranks (first == second);
    # kd's: one per student forward of the loss (training, evaluate, predict); none with a cache
    if objective in ("kd", "kd@replicate", "kd@cached"):
        assert first["teacher"] == (0 if objective == "kd@cached" else first["train"] + 2 * TEST_BATCHES)


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


@pytest.mark.slow  # needs the DDP launch (~50 s) beside the FSDP one; DDP alone: test_distributed.py
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


@pytest.mark.slow  # needs the DDP launch (~50 s) beside the FSDP one; DDP alone: test_distributed.py
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_training_loss_matches_ddp(fsdp, ddp, objective):
    assert ddp[objective][0]["distributed_type"] == "DistributedType.MULTI_CPU"
    assert ddp[objective][0]["wrapped_type"] == "DistributedDataParallel"
    fsdp_losses, ddp_losses = losses(fsdp[objective][0]), losses(ddp[objective][0])
    assert len(fsdp_losses) == len(ddp_losses) == MAX_STEPS
    assert fsdp_losses == losses(fsdp[objective][1])
    assert fsdp_losses[-1] == pytest.approx(ddp_losses[-1], rel=LOSS_RTOL)
    if objective == "robust_kd":
        torch.testing.assert_close(
            torch.tensor(fsdp["robust_kd"][0]["multipliers"]),
            torch.tensor(ddp["robust_kd"][0]["multipliers"]),
            rtol=LOSS_RTOL,
            atol=1e-6,
        )


# ------------------------------------------------------------------------------ the teacher: sharded or not
@pytest.mark.slow  # needs the DDP launch (~50 s) beside the FSDP one; DDP alone: test_distributed.py
def test_teacher_sharded_like_the_student_or_replicated_by_choice(fsdp, ddp):
    """teacher_sharding 'auto' under FSDP: each rank holds its FSDP2 shard of the teacher's parameters, the two
    shards making the whole (about half each: FSDP2 splits every tensor along its first dimension, and the
    tiny teacher's tensors do not all split evenly); 'replicate': the whole teacher on each rank; DDP: whole."""
    sharded = [r["teacher_memory"] for r in fsdp["kd"]]
    full = sharded[0]["full_bytes"]
    assert full > 0 and all(m["full_bytes"] == full for m in sharded)
    assert all(m["placement"] == "sharded with FSDP2 over 2 processes" for m in sharded)
    assert sum(m["local_bytes"] for m in sharded) == full
    assert all(0.4 * full <= m["local_bytes"] <= 0.6 * full for m in sharded)
    for record in (*fsdp["kd@replicate"], *ddp["kd"]):
        memory = record["teacher_memory"]
        assert memory["placement"].startswith("replicated")
        assert memory["local_bytes"] == memory["full_bytes"] == full
    assert all(r["teacher_memory"] is None for r in fsdp["kd@cached"])  # no teacher at all


def test_sharded_and_replicated_teacher_train_the_same_student(fsdp):
    """The sharded teacher's forward all-gathers the same weights the replicated one holds: the same logits,
    so the same losses (measured bit-identical; asserted within 1e-6 relative, float32 rounding)."""
    sharded, replicated = losses(fsdp["kd"][0]), losses(fsdp["kd@replicate"][0])
    assert len(sharded) == MAX_STEPS
    assert sharded == pytest.approx(replicated, rel=1e-6)
    assert fsdp["kd"][0]["predictions"] == fsdp["kd@replicate"][0]["predictions"]


def test_a_sharded_teacher_replicated_later_is_gathered_whole(fsdp):
    """prepare_teacher(sharded teacher, 'replicate') (a teacher trained under FSDP, then wanted whole) gathers
    a plain copy whose logits equal the sharded teacher's."""
    for record in fsdp["kd"]:
        check = record["unsharded_copy"]
        assert check["type"] == "ViTForImageClassification"  # not the FSDP class
        assert check["memory"]["local_bytes"] == check["memory"]["full_bytes"]
        assert check["max_abs_difference"] <= 1e-6


def test_cache_built_by_the_sharded_teacher_equals_the_whole_teachers(fsdp_run):
    """build_teacher_cache over 2 processes with the teacher sharded: each rank runs its contiguous share of the
    rows; the holdout (6 + 5 rows) and test (16 + 15) give the second rank one batch fewer (of 5), so it makes a
    dummy forward each time to keep in step (without them gloo fails on a collective mismatch). The caches
    equal the whole teacher's over 2 processes and in one process (to float16 tolerance: measured equal),
    with the same teacher fingerprint."""
    records = [json.loads((fsdp_run / "cache" / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    shares = {"train": (21, 21), "holdout": (6, 5), "test": (16, 15)}
    most = sum(math.ceil(max(rows) / 5) for rows in shares.values())  # fsdp_worker.CACHE_BATCH = 5
    for record in records:
        assert record["placement"] == "sharded with FSDP2 over 2 processes"
        assert record["teacher_forwards"] == most == 11  # on both ranks, though rank 1 has 9 batches of rows
        assert len(set(record["fingerprints"].values())) == 1
        logits = record["logits"]
        for split, rows in shares.items():
            single = torch.tensor(logits["single"][split])
            assert single.shape == (sum(rows), 3)
            for name in ("sharded", "replicated"):
                torch.testing.assert_close(torch.tensor(logits[name][split]), single, rtol=1e-3, atol=1e-3)
    assert records[0]["logits"] == records[1]["logits"]  # every rank returns the same full cache


def test_student_from_the_sharded_teachers_cache_needs_no_teacher(fsdp):
    """The way to distil from a teacher too large for one device: cache it sharded, train with no teacher.
    The losses follow the online (sharded) teacher's within the float16 rounding of the cached logits
    (measured: at most 4.7e-5 relative over the 24 steps; asserted within 1e-3)."""
    for record in fsdp["kd@cached"]:
        assert record["forwards"]["teacher"] == 0 and record["teacher_memory"] is None
    assert losses(fsdp["kd@cached"][0]) == pytest.approx(losses(fsdp["kd"][0]), rel=1e-3)


def test_teacher_sharding_choices_are_checked_before_any_work(tmp_path):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from tiny_models import tiny_args

    from hf_fairkd.teacher import prepare_teacher

    with pytest.raises(ValueError, match="teacher_sharding='sharded' is not one of auto, shard, replicate"):
        tiny_args(tmp_path, teacher_sharding="sharded")
    ddp = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=2)
    with pytest.raises(ValueError, match="teacher_sharding='shard' needs FSDP or DeepSpeed ZeRO-3"):
        prepare_teacher(make_vit(), ddp, "shard")


def test_teacher_deepspeed_config_follows_trl_with_nested_bucket_sizes():
    """DeepSpeed is not installed here: the config its engine would get is checked (TRL's rule, nested keys)."""
    from types import SimpleNamespace

    from hf_fairkd.teacher.placement import teacher_deepspeed_config

    student = {
        "train_micro_batch_size_per_gpu": 4,
        "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
        "scheduler": {"type": "WarmupLR"},
        "zero_optimization": {
            "stage": 3,
            "reduce_bucket_size": "auto",
            "stage3_param_persistence_threshold": 7,
        },
    }
    config = teacher_deepspeed_config(student, SimpleNamespace(hidden_size=16))
    assert "optimizer" not in config and "scheduler" not in config
    assert config["zero_optimization"] == {
        "stage": 3,
        "reduce_bucket_size": 256,  # h*h, filled where "auto"
        "stage3_param_persistence_threshold": 7,  # the user's own value kept
        "stage3_prefetch_bucket_size": 230,  # int(0.9*h*h), filled where absent
    }
    assert student["zero_optimization"]["reduce_bucket_size"] == "auto"  # a copy: the student's is untouched
    zero2 = {"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}
    assert teacher_deepspeed_config(zero2, SimpleNamespace(hidden_sizes=[8, 32]))["zero_optimization"] == {
        "stage": 0
    }
    replicated = teacher_deepspeed_config(student, SimpleNamespace(hidden_size=16), stage=0)
    assert replicated["zero_optimization"] == {"stage": 0}


FSDP1_SCRIPT = """
import copy, json, os, socket, sys
import torch
import torch.distributed as dist
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]; sock.close()
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
dist.init_process_group("gloo")
from torch.distributed.fsdp import FullyShardedDataParallel
from tiny_models import make_vit
from hf_fairkd.teacher import teacher_fingerprint
from hf_fairkd.teacher.model import class_similarity
from hf_fairkd.teacher.sharding import is_sharded
plain = make_vit(seed=1, hidden=32)
wrapped = FullyShardedDataParallel(copy.deepcopy(plain), device_id=torch.device("cpu"))
print(json.dumps({
    "sharded": [is_sharded(wrapped), is_sharded(plain)],
    "names": [name for name, _ in wrapped.named_parameters()],
    "fingerprints": [teacher_fingerprint(wrapped), teacher_fingerprint(plain)],
    "similarity": [class_similarity(wrapped, 0.5).tolist(), class_similarity(plain, 0.5).tolist()],
}))
dist.destroy_process_group()
"""


@pytest.mark.slow  # a separate FSDP1 launch; FSDP2 is the default suite's
def test_an_fsdp1_teacher_is_read_whole_for_its_fingerprint_and_class_similarity():
    """The FSDP1 wrapper (one process, gloo): its flat shard unsharded for the block, under the plain names."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", FSDP1_SCRIPT], capture_output=True, text=True, env=env, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["sharded"] == [True, False]
    assert got["names"] == ["_fsdp_wrapped_module._flat_param"]  # what a plain read would see
    assert got["fingerprints"][0] == got["fingerprints"][1]
    assert got["similarity"][0] == got["similarity"][1]
    assert got["similarity"][0] != torch.eye(3).tolist()  # a similarity of the weights, not the identity


# ------------------------------------------------------------------------------ the recipes under this config
@pytest.mark.slow  # the recipe end to end under FSDP; the trainer under FSDP is tested in the default suite above
@pytest.mark.skipif(torch.cuda.is_available(), reason="the FSDP-on-CPU patch is for machines without a GPU")
def test_recipe_with_the_fsdp_config_runs_fsdp_on_cpu(tmp_path):
    """`accelerate launch --config_file recipes/accelerate/cpu_fsdp_two_processes.yaml recipes/distill_vit.py`
    with the tests' patch (tests/fsdp_recipe.py): the teacher trained under FSDP is cached sharded (equal
    forwards on both ranks) and given, sharded, to the student's trainer, and the run ends with the usual
    outputs, gathered from both ranks."""
    import accelerate
    from fsdp_on_cpu import KEPT_MESSAGE
    from test_recipes import TINY
    from two_processes import free_port

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
           "--main_process_port", str(free_port()), str(REPO / "tests" / "fsdp_recipe.py"), *TINY,
           "--output_dir", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]
    kept = KEPT_MESSAGE.format(version=accelerate.__version__, processes=2)
    assert result.stderr.count(kept) == 1
    assert "Teacher: sharded with FSDP2 over 2 processes" in result.stderr  # the student stage's teacher
    saved = json.loads((out / "subgroup_metrics.json").read_text())
    assert saved["settings"]["world_size"] == 2
    assert sum(row["support"] for row in saved["student"]["per_class"]) == 300  # gathered once, no padding
    assert ViTForImageClassification.from_pretrained(out).config.num_labels == 10  # a full saved student


def test_fsdp_on_cpu_notice(monkeypatch):
    """Launched with an FSDP config over several CPU processes, a recipe says the run is DDP (Accelerate's
    choice there), naming the process count; not with one process, not without FSDP, not with a GPU."""
    from hf_fairkd.run import checks

    monkeypatch.setattr(checks, "has_accelerator", lambda: False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    notice = checks.fsdp_on_cpu_notice(2)
    assert "these 2 CPU processes run DDP" in notice and "Sharding (FSDP) needs GPUs" in notice
    assert checks.fsdp_on_cpu_notice(1) is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert checks.fsdp_on_cpu_notice(2) is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr(checks, "has_accelerator", lambda: True)
    assert checks.fsdp_on_cpu_notice(2) is None


@pytest.mark.slow  # a third launch (~15 s)
def test_the_yaml_alone_does_not_give_fsdp_on_cpu(tmp_path):
    """Records why the tests' patch exists and why the recipes' notice is true: Accelerate's AcceleratorState selects FSDP only
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
