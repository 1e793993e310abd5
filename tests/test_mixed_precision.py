"""bf16 on a CPU (autocast through accelerate's mixed_precision='bf16', which the Trainer sets up) against the
float32 run on the same batch: every objective's loss, gradient and class-DRO statistics, a teacher loaded in
bf16, a float16 teacher cache, evaluation, recipes/train_teacher.py --bf16 end to end, and --fp16 refused on a
CPU. (recipes/distill_vit.py --bf16 end to end is the default_recipe part of the gpu_check dry run:
tests/test_gpu_check.py.)

Measured here (torch 2.13 CPU, one thread; the first of two optimisation steps, batch 16, from a student trained
60 steps in float32, so that its logits and holdout errors are far from uniform), worst case over the objectives
and teacher sources; each tolerance is 3-5x the worst measured value:

    loss, relative difference                          3.1e-4 (kd)      LOSS_RTOL 1e-3
    gradient, ||g_bf16 - g_f32|| / ||g_f32||           9.6e-3 (kd)      GRAD_RTOL 3e-2
    logits of the same weights (evaluation, teacher),  8.3e-3           LOGIT_RTOL 3e-2
      max |difference| / max |logit|
    the student's holdout logits at the class-DRO      2.4e-2           STEPPED_LOGIT_RTOL 7e-2
      update, i.e. after one optimisation step (Adam's
      first step moves a weight by +-lr, so a gradient
      entry near 0 of another sign moves it apart)
    teacher-weighted class-DRO holdout errors          1.1e-4           ERROR_ATOL 5e-4
    class-DRO multipliers after one update             3.0e-6           MULTIPLIER_ATOL 1e-5
    eval loss, relative difference                     5.7e-4           EVAL_LOSS_RTOL 2e-3

Statistics of argmaxes (0-1 holdout errors, teacher recall, accuracy) are equal except on rows whose float32
top-2 margin is within twice the logit tolerance (near ties), which may flip: 1 of the 30 test rows did (margin
0.0003), none of the holdout rows.
"""

import json
import logging
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from test_recipes import TINY, load_recipe
from tiny_models import image_dataset, make_vit, tiny_args
from transformers import AutoModelForImageClassification, TrainerCallback

from hf_fairkd import DistillationArguments, DistillationTrainer
from hf_fairkd.objectives import OBJECTIVES
from hf_fairkd.teacher import build_teacher_cache, teacher_cache_info

LOSS_RTOL, GRAD_RTOL, LOGIT_RTOL, STEPPED_LOGIT_RTOL = 1e-3, 3e-2, 3e-2, 7e-2
ERROR_ATOL, MULTIPLIER_ATOL, EVAL_LOSS_RTOL = 5e-4, 1e-5, 2e-3
HOLDOUT_PER_CLASS = 6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these tiny models gain nothing from two, and on a shared 2-core machine a 2-thread pool
    slows down many-fold whenever another process takes a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return (
        image_dataset((24, 12, 6), seed=0),
        image_dataset((HOLDOUT_PER_CLASS,) * 3, seed=1),
        image_dataset((10, 10, 10), seed=2),
    )


def trained(path, objective, model, steps, train) -> str:
    trainer = DistillationTrainer(
        model=model, args=tiny_args(path, objective=objective, max_steps=steps), train_dataset=train
    )
    trainer.train()
    trainer.save_model(str(path / "model"))
    return str(path / "model")


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    return trained(tmp_path_factory.mktemp("teacher"), "erm", make_vit(seed=1, hidden=32), 30, data[0])


@pytest.fixture(scope="module")
def student(data, tmp_path_factory):
    """A student trained in float32 first: fresh logits are near 0, where every loss is near log(m)."""
    return trained(tmp_path_factory.mktemp("student"), "ce", make_vit(seed=0), 60, data[0])


# ------------------------------------------------------------------------------------------ one recorded run
@dataclass
class Run:
    """What one short training run computed: the first step's loss and gradient, the activations' dtype, the
    logits the objective's hooks saw on the holdout, and each class-DRO update's per-class errors."""

    trainer: DistillationTrainer = None
    losses: list = field(default_factory=list)
    grads: list = field(default_factory=list)
    activation_dtypes: set = field(default_factory=set)
    student_holdout: list = field(default_factory=list)
    teacher_holdout: list = field(default_factory=list)
    errors: list = field(default_factory=list)


class FirstGradient(TrainerCallback):
    def __init__(self, run: Run):
        self.run = run

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.run.grads.append(
            torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        )


class RecordingTrainer(DistillationTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            self.run.losses.append(float((out[0] if return_outputs else out).detach()))
        return out


def recording(method, into: list):
    def wrapper(*args, **kwargs):
        result = method(*args, **kwargs)
        into.append(result.detach().float().cpu().clone())
        return result

    return wrapper


def run(tmp_path, objective, bf16, student, teacher=None, train=None, holdout=None, **overrides) -> Run:
    """Two optimisation steps of ``objective`` (a class-DRO update after the first), recorded."""
    record = Run()
    args = tiny_args(
        tmp_path / f"{objective}_{bf16}", objective=objective, bf16=bf16, max_steps=2, dro_update_every=1,
        per_device_train_batch_size=16, max_grad_norm=0.0, **overrides,
    )  # fmt: skip
    model = AutoModelForImageClassification.from_pretrained(student)
    model.classifier.register_forward_hook(lambda m, i, output: record.activation_dtypes.add(output.dtype))
    trainer = RecordingTrainer(
        model=model,
        args=args,
        teacher=teacher if OBJECTIVES[objective].uses_teacher else None,
        train_dataset=train,
        holdout_dataset=holdout,
        callbacks=[FirstGradient(record)],
    )
    trainer.run, record.trainer = record, trainer
    context = trainer.objective_hooks.context
    context.student_logits = recording(context.student_logits, record.student_holdout)
    context.teacher_logits = recording(context.teacher_logits, record.teacher_holdout)
    if hasattr(trainer.objective, "update"):
        update = trainer.objective.update

        def recorded_update(error_sums, weight_sums):
            record.errors.append((error_sums / weight_sums.clamp_min(1e-12)).float())
            update(error_sums, weight_sums)

        trainer.objective.update = recorded_update
    trainer.train()
    return record


# ------------------------------------------------------------------------------------------ comparisons
def assert_close_logits(
    reference: torch.Tensor, other: torch.Tensor, rtol: float = LOGIT_RTOL
) -> torch.Tensor:
    """``other`` within ``rtol`` x max |logit| of ``reference``; returns the rows that may flip their argmax:
    those whose top-2 margin in ``reference`` is within twice that tolerance (near ties)."""
    tolerance = rtol * float(reference.abs().max())
    assert float((other - reference).abs().max()) <= tolerance
    top2 = reference.topk(2, dim=-1).values
    return (top2[:, 0] - top2[:, 1]) <= 2 * tolerance


def assert_step_matches(reference: Run, bf16: Run) -> None:
    """The first step's loss and gradient, and bf16 really used (the student's classifier ran in bf16)."""
    assert reference.activation_dtypes == {torch.float32} and bf16.activation_dtypes == {torch.bfloat16}
    loss, other = reference.losses[0], bf16.losses[0]
    assert abs(other - loss) <= LOSS_RTOL * abs(loss), (loss, other)
    grad, other = reference.grads[0], bf16.grads[0]
    assert float((other - grad).norm()) <= GRAD_RTOL * float(grad.norm())


def assert_dro_matches(reference: Run, bf16: Run, teacher_weighted: bool) -> None:
    """The per-class holdout errors the first class-DRO update used, and the multipliers after it."""
    assert len(reference.errors) == len(bf16.errors) == 1  # one update, after step 1
    holdout_f32, holdout_bf16 = torch.cat(reference.student_holdout), torch.cat(bf16.student_holdout)
    may_flip = assert_close_logits(holdout_f32, holdout_bf16, STEPPED_LOGIT_RTOL)
    flipped = holdout_f32.argmax(-1) != holdout_bf16.argmax(-1)
    assert not (flipped & ~may_flip).any()  # a prediction changes only at a near tie
    # a flipped row moves its class's error by one row's share (1/6), and a class-DRO step (eta 0.1) then moves a
    # multiplier by less than 0.01
    error_atol = (ERROR_ATOL if teacher_weighted else 1e-6) + int(flipped.sum()) / HOLDOUT_PER_CLASS
    assert float((bf16.errors[0] - reference.errors[0]).abs().max()) <= error_atol
    lam_f32, lam_bf16 = reference.trainer.objective.multipliers, bf16.trainer.objective.multipliers
    assert not torch.allclose(lam_f32, torch.full_like(lam_f32, 1 / 3))  # the update moved them
    assert float((lam_bf16 - lam_f32).abs().max()) <= MULTIPLIER_ATOL + 0.01 * int(flipped.sum())


def assert_reliability_matches(reference: Run, bf16: Run) -> None:
    """The teacher's per-class holdout recall (ada_alpha, ada_margin), measured through the bf16 run's teacher."""
    teacher_f32, teacher_bf16 = torch.cat(reference.teacher_holdout), torch.cat(bf16.teacher_holdout)
    may_flip = assert_close_logits(teacher_f32, teacher_bf16)
    flipped = teacher_f32.argmax(-1) != teacher_bf16.argmax(-1)
    assert not (flipped & ~may_flip).any()
    recall_f32 = reference.trainer.objective.teacher_reliability
    recall_bf16 = bf16.trainer.objective.teacher_reliability
    assert float((recall_bf16 - recall_f32).abs().max()) <= 1e-6 + int(flipped.sum()) / HOLDOUT_PER_CLASS


# ------------------------------------------------------------------------------------------ every objective
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_in_bf16_matches_float32(objective, data, teacher, student, tmp_path):
    train, holdout, _ = data
    kwargs = dict(student=student, teacher=teacher, train=train, holdout=holdout)
    reference = run(tmp_path, objective, False, **kwargs)
    bf16 = run(tmp_path, objective, True, **kwargs)
    assert_step_matches(reference, bf16)
    if objective in ("robust_kd", "dro"):
        assert_dro_matches(reference, bf16, teacher_weighted=False)
    if reference.trainer.objective.teacher_reliability is not None:  # ada_alpha / ada_margin at class level
        assert_reliability_matches(reference, bf16)


@pytest.mark.parametrize("source", ["bf16_teacher", "float16_cache"])
def test_bf16_teacher_and_float16_cache_match_the_float32_teacher(source, data, teacher, student, tmp_path):
    """robust_kd with teacher-weighted class-DRO errors reads the teacher in the loss and in the update."""
    train, holdout, _ = data
    common = dict(student=student, train=train, holdout=holdout, dro_error_weighting="teacher")
    reference = run(tmp_path, "robust_kd", False, teacher=teacher, **common)
    if source == "bf16_teacher":
        bf16 = run(tmp_path, "robust_kd", True, teacher=teacher, teacher_dtype="bfloat16", **common)
        assert next(bf16.trainer.teacher.parameters()).dtype == torch.bfloat16
    else:
        model = AutoModelForImageClassification.from_pretrained(teacher)
        cached = {name: build_teacher_cache(split, model, dtype="float16") for name, split in common.items()
                  if name in ("train", "holdout")}  # fmt: skip
        assert teacher_cache_info(cached["train"])["dtype"] == "float16"
        bf16 = run(tmp_path, "robust_kd", True, teacher=None, **{**common, **cached})
        assert bf16.trainer.teacher is None  # the cache alone: no teacher ran
    assert_step_matches(reference, bf16)
    assert_close_logits(torch.cat(reference.teacher_holdout), torch.cat(bf16.teacher_holdout))
    assert_dro_matches(reference, bf16, teacher_weighted=True)


# ------------------------------------------------------------------------------------------ evaluation
def test_evaluate_and_predict_in_bf16_match_float32(data, student, tmp_path):
    train, _, test = data
    results = {}
    for bf16 in (False, True):
        model = AutoModelForImageClassification.from_pretrained(student)
        dtypes = set()
        model.classifier.register_forward_hook(lambda m, i, output, seen=dtypes: seen.add(output.dtype))
        args = tiny_args(tmp_path / str(bf16), objective="ce", bf16=bf16)
        trainer = DistillationTrainer(model=model, args=args, train_dataset=train)
        results[bf16] = trainer.evaluate(test), trainer.predict(test), dtypes
    (metrics_f32, out_f32, dtypes_f32), (metrics_bf16, out_bf16, dtypes_bf16) = results[False], results[True]
    assert dtypes_f32 == {torch.float32} and dtypes_bf16 == {torch.bfloat16}
    logits_f32, logits_bf16 = torch.as_tensor(out_f32.predictions), torch.as_tensor(out_bf16.predictions)
    may_flip = assert_close_logits(logits_f32, logits_bf16)
    flipped = logits_f32.argmax(-1) != logits_bf16.argmax(-1)
    assert not (flipped & ~may_flip).any()
    loss = metrics_f32["eval_loss"]
    assert abs(metrics_bf16["eval_loss"] - loss) <= EVAL_LOSS_RTOL * loss
    # accuracies: within the near-tie rows that flipped (each row is 1/30 of the accuracy, 1/10 of its class)
    labels = np.asarray(out_f32.label_ids)
    assert metrics_bf16["eval_accuracy"] == pytest.approx(
        float(np.mean(logits_bf16.argmax(-1).numpy() == labels))
    )
    assert (
        abs(metrics_bf16["eval_accuracy"] - metrics_f32["eval_accuracy"]) <= flipped.sum().item() / 30 + 1e-9
    )
    for name in ("cat", "dog", "bird"):
        key = f"eval_accuracy_class/{name}"
        assert abs(metrics_bf16[key] - metrics_f32[key]) <= flipped.sum().item() / 10 + 1e-9


# ------------------------------------------------------------------------------------------ the recipes
def test_train_teacher_recipe_with_bf16_on_a_cpu(tmp_path, caplog):
    out = tmp_path / "teacher"
    with caplog.at_level(logging.WARNING, logger="hf_fairkd.run.arguments"):
        metrics = load_recipe("train_teacher").main([*TINY, "--output_dir", str(out), "--bf16"])
    assert "--bf16 on a machine without a GPU: use_cpu set to true (bf16 autocast on the CPU)." in caplog.text
    training = json.loads((out / "run_config.json").read_text())["DistillationArguments"]
    assert training["bf16"] is True and training["use_cpu"] is True
    assert json.loads((out / "subgroup_metrics.json").read_text())["teacher"]["accuracy"] == pytest.approx(
        metrics["teacher"]["accuracy"]
    )
    assert "per-class" in (out / "README.md").read_text().lower()


def parse(argv):
    from hf_fairkd.run.arguments import parse_recipe_args

    return parse_recipe_args(argv=["--output_dir", "unused", *argv])[2]


@pytest.mark.parametrize("gpu", [False, True], ids=["no_gpu", "bf16_gpu"])
def test_bf16_turns_use_cpu_on_only_without_a_gpu(monkeypatch, caplog, gpu):
    from hf_fairkd.run import arguments

    monkeypatch.setattr(arguments, "has_bf16_device", lambda: gpu)
    monkeypatch.setattr("transformers.training_args.is_torch_bf16_gpu_available", lambda: gpu)
    with caplog.at_level(logging.WARNING, logger="hf_fairkd.run.arguments"):
        args = parse(["--bf16"])
    assert args.bf16 is True and args.use_cpu is (not gpu)
    assert ("use_cpu set to true" in caplog.text) is (not gpu)
    if not gpu:  # bf16_full_eval alone needs it too; an explicit --use_cpu false keeps transformers' error
        assert parse(["--bf16_full_eval", "true"]).use_cpu is True
        with pytest.raises(ValueError, match="You need to assign use_cpu"):
            parse(["--bf16", "--use_cpu", "false"])


def test_bf16_arguments_in_python_without_a_gpu_keep_transformers_error(tmp_path):
    with pytest.raises(ValueError, match="Your setup doesn't support bf16/gpu. You need to assign use_cpu"):
        DistillationArguments(output_dir=str(tmp_path), bf16=True, report_to=[])


FP16_REFUSED = r"--fp16 needs a CUDA GPU \(its loss scaling runs on one\).*On a CPU use --bf16"


@pytest.mark.parametrize("spelling", ["cli", "yaml"])
def test_fp16_is_refused_on_a_cpu_before_any_work(tmp_path, spelling):
    out = tmp_path / "out"
    flags = ["--fp16"]
    if spelling == "yaml":
        config = tmp_path / "config.yaml"
        config.write_text("fp16: true\n")
        flags = [str(config)]
    with pytest.raises(ValueError, match=FP16_REFUSED):
        load_recipe("distill_vit").main([*flags, *TINY, "--output_dir", str(out)])
    assert not out.exists()


def test_fp16_is_refused_with_use_cpu_and_allowed_on_a_gpu(monkeypatch):
    from hf_fairkd.run import arguments

    with pytest.raises(ValueError, match=r"this run is on the CPU \(no GPU found\)"):
        parse(["--fp16"])
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ValueError, match="accelerate launch --mixed_precision fp16 needs a CUDA GPU"):
        parse([])
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert parse(["--fp16_full_eval", "true"]).fp16_full_eval is True  # casts for evaluation: works on a CPU
    monkeypatch.setattr(arguments, "has_fp16_device", lambda: True)  # as on a CUDA machine
    assert parse(["--fp16"]).fp16 is True
    with pytest.raises(ValueError, match=r"this run is on the CPU \(--use_cpu true\)"):
        parse(["--fp16", "--use_cpu", "true"])
