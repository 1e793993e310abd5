"""The worked example of docs/ADDING_AN_OBJECTIVE.md: an objective with its own holdout statistic and its own setting
(``every``), added in one module, trains, measures its statistic through the hooks' context at the steps its setting
says, and uses it in the loss."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import image_dataset, make_vit, tiny_args
from transformers import TrainerCallback

from hf_fairkd import DistillationTrainer
from hf_fairkd.objectives import student_objectives

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "custom_objective.py"
sys.path.insert(0, str(EXAMPLE.parent))
import custom_objective  # noqa: E402  (registers kd_student_recall, once per process)


def hand_recall(model, holdout) -> np.ndarray:
    """The student's per-class holdout recall, computed here without the trainer."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        predicted = model(pixel_values=holdout[:]["pixel_values"]).logits.argmax(-1).numpy()
    model.train(was_training)
    labels = np.asarray(holdout["labels"])
    return np.array([(predicted[labels == c] == c).mean() for c in range(3)])


class RecallAtEachStep(TrainerCallback):
    """Runs after the objective's callback (the trainer puts that one first): the recall it holds now."""

    def __init__(self, trainer_ref, holdout):
        self.trainer_ref, self.holdout, self.checks = trainer_ref, holdout, {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.on_step_end(args, state, control, model=model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        objective = self.trainer_ref[0].objective
        if objective.measured_at and objective.measured_at[-1] == state.global_step:
            self.checks[state.global_step] = (
                objective.recall.numpy().copy(),
                hand_recall(model, self.holdout),
            )


def test_the_docs_show_the_example_verbatim():
    readme = (REPO / "docs" / "ADDING_AN_OBJECTIVE.md").read_text(encoding="utf-8")
    found = re.search(
        r"<!-- custom objective example -->\s*```python\n(.*?)```\s*<!-- end custom objective example -->",
        readme,
        re.S,
    )
    assert found, "docs/ADDING_AN_OBJECTIVE.md has no custom objective example block"
    assert found.group(1).strip() == EXAMPLE.read_text(encoding="utf-8").strip()
    assert len(EXAMPLE.read_text(encoding="utf-8").splitlines()) <= 70


def test_the_example_declares_every_as_a_setting_given_on_the_command_line(tmp_path):
    from hf_fairkd.objectives.base import objective_settings_help
    from hf_fairkd.run.arguments import parse_recipe_args

    counts = torch.tensor([4, 2, 1])
    assert (
        custom_objective.StudentRecallKD(
            tiny_args(tmp_path, objective="kd_student_recall"), counts
        ).settings.every
        == 3
    )
    argv = [
        "--objective",
        "kd_student_recall",
        "--objective_settings",
        "every=5",
        "--output_dir",
        str(tmp_path),
    ]
    args = parse_recipe_args(argv=[*argv, "--use_cpu", "true"])[2]
    assert args.objective_settings == {"every": 5}
    assert custom_objective.StudentRecallKD(args, counts).settings.every == 5
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):  # its own check, before any training
        tiny_args(tmp_path, objective="kd_student_recall", objective_settings="every=0")
    assert "every (int, default 3): optimisation steps" in objective_settings_help("kd_student_recall")


def test_a_custom_objective_measures_its_holdout_statistic_and_uses_it(tmp_path):
    assert "kd_student_recall" in student_objectives()  # the registry lists it once registered
    train, holdout = image_dataset((24, 12, 6), seed=0), image_dataset((6, 6, 6), seed=1)
    args = tiny_args(
        tmp_path,
        objective="kd_student_recall",
        objective_settings="every=4",  # as on the command line; the default is 3
        max_steps=10,
        alpha=0.3,
        logging_steps=10,
        learning_rate=1e-2,
    )
    trainer_ref = []
    recorder = RecallAtEachStep(trainer_ref, holdout)
    with pytest.raises(ValueError, match="needs a holdout split"):
        DistillationTrainer(model=make_vit(), args=args, teacher=make_vit(seed=4), train_dataset=train)
    trainer = DistillationTrainer(
        model=make_vit(),
        args=args,
        teacher=make_vit(seed=4),
        train_dataset=train,
        holdout_dataset=holdout,
        callbacks=[recorder],
    )
    trainer_ref.append(trainer)
    assert isinstance(trainer.objective, custom_objective.StudentRecallKD)
    trainer.train()

    objective = trainer.objective
    assert objective.settings.every == 4
    assert objective.measured_at == [0, 4, 8]  # before training, then every 4 steps (none after the last)
    assert sorted(recorder.checks) == [0, 4, 8]
    for step, (held, expected) in recorder.checks.items():
        np.testing.assert_allclose(held, expected, rtol=0, atol=1e-6, err_msg=f"step {step}")
    assert len(set(objective.recall.tolist())) > 1  # classes get different teacher weights below

    # used: the teacher weight of each example is alpha * (1 - recall of its class)
    batch = {"pixel_values": train[:12]["pixel_values"], "labels": train[:12]["labels"]}
    logits = trainer.model(pixel_values=batch["pixel_values"]).logits
    teacher_logits = trainer.teacher(pixel_values=batch["pixel_values"]).logits
    out = objective.compute(logits, batch["labels"], teacher_logits)
    expected_alpha = 0.3 * (1 - objective.recall.numpy()[batch["labels"].numpy()])
    assert out.scalars["alpha_mean"] == pytest.approx(expected_alpha.mean(), rel=1e-6)
    np.testing.assert_allclose(
        out.components["one_hot"].detach().numpy(),
        (1 - expected_alpha)
        * torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none").detach().numpy(),
        rtol=1e-5,
    )
    last_log = [h for h in trainer.state.log_history if "loss" in h][-1]
    assert last_log["student_recall_min"] == pytest.approx(float(objective.recall.min()))


class Wrapped(torch.nn.Module):
    """Stands for DDP / FSDP around the student: counts the forwards that go through the wrapper."""

    def __init__(self, module):
        super().__init__()
        self.module, self.calls, self.modes = module, 0, []

    def forward(self, **inputs):
        self.calls += 1
        self.modes.append((self.training, self.module.training, torch.is_grad_enabled()))
        return self.module(**inputs)


def test_the_context_reads_the_holdout_through_the_wrapped_student_and_leaves_the_rng_alone(tmp_path):
    train, holdout = image_dataset((6, 6, 6), seed=0), image_dataset((4, 3, 3), seed=1)
    args = tiny_args(tmp_path, objective="kd", per_device_eval_batch_size=4)
    trainer = DistillationTrainer(
        model=make_vit(), args=args, teacher=make_vit(seed=4), train_dataset=train, holdout_dataset=holdout
    )
    ctx = trainer.objective_hooks.context
    trainer.model_wrapped = wrapped = Wrapped(trainer.model)
    wrapped.train()
    rng_before = torch.random.get_rng_state()
    batches = list(ctx.holdout_batches([7, 0, 3]))
    assert [len(ctx.labels(b)) for b in batches] == [3]  # the rows asked for, in one batch of up to 4
    assert ctx.labels(batches[0]).tolist() == [holdout[i]["labels"].item() for i in (7, 0, 3)]
    assert [len(ctx.labels(b)) for b in ctx.holdout_batches()] == [
        4,
        4,
        2,
    ]  # every row, the Trainer's batch size
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the training run's randomness is untouched
    logits = ctx.student_logits(batches[0])
    assert wrapped.calls == 1 and wrapped.modes == [(False, False, False)]  # eval mode, no grad, inside
    assert wrapped.training and trainer.model.training  # train mode restored after
    assert not logits.requires_grad
    with torch.no_grad():
        trainer.model.eval()
        expected = trainer.model(pixel_values=batches[0]["pixel_values"]).logits
    torch.testing.assert_close(logits, expected)
    teacher = trainer.teacher(pixel_values=batches[0]["pixel_values"]).logits
    torch.testing.assert_close(ctx.teacher_logits(batches[0]), teacher)
    torch.testing.assert_close(ctx.gather(logits), logits)  # one process: nothing to join
