"""DistillationTrainer end to end on tiny models: loss falls, accumulation invariance, resume, teachers, errors."""

import os

import numpy as np
import pytest
import torch
from tiny_models import image_dataset, make_bert, make_vit, text_dataset, tiny_args
from transformers import AutoModelForImageClassification, TrainerCallback

from hf_fairkd import DistillationTrainer
from hf_fairkd.objectives import OBJECTIVES
from hf_fairkd.trainer import OBJECTIVE_STATE_NAME


@pytest.fixture(scope="module")
def data():
    return (
        image_dataset((24, 12, 6), seed=0),
        image_dataset((6, 6, 6), seed=1),
        image_dataset((10, 10, 10), seed=2),
    )


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    """A teacher trained here with ERM (the 'same machinery'), saved and loadable with from_pretrained."""
    train, _, _ = data
    path = tmp_path_factory.mktemp("teacher")
    trainer = DistillationTrainer(
        model=make_vit(seed=1, hidden=32),
        args=tiny_args(path, objective="erm", max_steps=40),
        train_dataset=train,
    )
    trainer.train()
    trainer.save_model(str(path / "model"))
    return str(path / "model")


def eval_loss(trainer, dataset):
    return trainer.evaluate(dataset)["eval_loss"]


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_trains_and_the_loss_falls(objective, data, teacher, tmp_path):
    train, holdout, _ = data
    args = tiny_args(tmp_path, objective=objective, max_steps=25, dro_update_every=5)
    trainer = DistillationTrainer(
        model=make_vit(seed=0), args=args, teacher=teacher, train_dataset=train, holdout_dataset=holdout
    )
    before = eval_loss(trainer, train)
    trainer.train()
    after = eval_loss(trainer, train)
    assert after < before * 0.95, (objective, before, after)
    if objective in ("robust_kd", "dro"):
        assert trainer.objective.num_updates == 25 // 5 - (1 if 25 % 5 == 0 else 0)
        assert not torch.allclose(trainer.objective.multipliers, torch.full((3,), 1 / 3))


def test_losses_components_and_class_weights_are_logged(data, teacher, tmp_path):
    train, holdout, _ = data
    args = tiny_args(
        tmp_path,
        objective="robust_kd",
        max_steps=10,
        logging_steps=5,
        dro_update_every=2,
        dro_tradeoff=0.5,
        dro_step_size=1.0,
    )
    trainer = DistillationTrainer(
        model=make_vit(), args=args, teacher=teacher, train_dataset=train, holdout_dataset=holdout
    )
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged, trainer.state.log_history
    for key in ("loss_one_hot", "loss_distill", "alpha_mean", "class_weight_min", "class_weight_max"):
        assert key in logged[-1], key
    # the class weights are state: the log shows their current value, recomputed here by hand as
    # w = (1 - b) * prior + b * lambda (the last update ran at step 8, before the step-10 log)
    lam = trainer.objective.multipliers.double().numpy()
    assert trainer.objective.num_updates == 4 and not np.allclose(lam, 1 / 3, atol=1e-4)
    w = 0.5 * np.array([24, 12, 6]) / 42 + 0.5 * lam
    assert logged[-1]["class_weight_min"] == pytest.approx(w.min(), rel=1e-6)
    assert logged[-1]["class_weight_max"] == pytest.approx(w.max(), rel=1e-6)
    assert logged[-1]["class_weight_argmax"] == float(w.argmax())
    assert logged[-1]["class_weight_entropy"] == pytest.approx(-(w * np.log(w)).sum(), rel=1e-6)


def test_evaluation_reports_per_class_metrics(data, teacher, tmp_path):
    train, _, test = data
    trainer = DistillationTrainer(
        model=make_vit(), args=tiny_args(tmp_path), teacher=teacher, train_dataset=train
    )
    trainer.train()
    metrics = trainer.evaluate(test)
    # recomputed independently from the predictions
    output = trainer.predict(test)
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    predictions, labels = np.asarray(logits).argmax(-1), np.asarray(output.label_ids)
    per_class = np.array([(predictions[labels == c] == c).mean() for c in range(3)])
    assert metrics["eval_accuracy"] == pytest.approx((predictions == labels).mean())
    assert metrics["eval_balanced_accuracy"] == pytest.approx(per_class.mean())
    assert metrics["eval_worst_class_accuracy"] == pytest.approx(per_class.min())
    for c, name in enumerate(["cat", "dog", "bird"]):
        assert metrics[f"eval_accuracy_class/{name}"] == pytest.approx(per_class[c])


def test_evaluation_per_class_metrics_follow_the_arguments(data, teacher, tmp_path):
    """per_class_eval_metrics reaches the Trainer's compute_metrics; the summary scalars stay either way."""
    _, _, test = data
    for mode, max_classes, expected in (("never", 50, False), ("auto", 2, False), ("auto", 3, True)):
        args = tiny_args(tmp_path, per_class_eval_metrics=mode, per_class_eval_max_classes=max_classes)
        trainer = DistillationTrainer(model=make_vit(), args=args, teacher=teacher, train_dataset=data[0])
        metrics = trainer.evaluate(test)
        assert "eval_worst_class_accuracy" in metrics and "eval_balanced_accuracy" in metrics
        assert any(k.startswith("eval_accuracy_class/") for k in metrics) == expected, (mode, max_classes)
    with pytest.raises(ValueError, match="per_class_eval_metrics"):
        tiny_args(tmp_path, per_class_eval_metrics="sometimes")


def _one_step_params(
    tmp_path, model_fn, dataset, batch, accumulation, objective="kd", teacher=None, holdout=None, **overrides
):
    settings = dict(
        objective=objective,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        logging_steps=1,
        weight_decay=0.0,
        max_grad_norm=0.0,
    )
    args = tiny_args(tmp_path / f"{batch}x{accumulation}", **{**settings, **overrides})
    trainer = DistillationTrainer(
        model=model_fn(), args=args, teacher=teacher, train_dataset=dataset, holdout_dataset=holdout
    )
    trainer.train()
    loss = trainer.state.log_history[0]["loss"]
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}, loss, trainer.objective


@pytest.mark.parametrize("kind", ["vit", "bert"])
def test_gradient_accumulation_invariance(kind, tmp_path):
    if kind == "vit":
        dataset, model_fn = image_dataset((3, 3, 2), seed=3), lambda: make_vit(seed=5)
        teacher = make_vit(seed=9)
    else:
        dataset, model_fn = text_dataset((3, 3, 2), seed=3), lambda: make_bert(seed=5)
        teacher = make_bert(seed=9)
    assert len(dataset) == 8
    params_a, loss_a, _ = _one_step_params(tmp_path, model_fn, dataset, 8, 1, teacher=teacher)
    params_b, loss_b, _ = _one_step_params(tmp_path, model_fn, dataset, 1, 8, teacher=teacher)
    start = model_fn()
    moved = max((params_a[k] - p).abs().max().item() for k, p in start.named_parameters())
    assert moved > 1e-3  # the step did something, so equality below means something
    assert loss_a == pytest.approx(loss_b, rel=1e-4)
    for name in params_a:
        torch.testing.assert_close(params_a[name], params_b[name], rtol=1e-4, atol=1e-6)


def test_gradient_accumulation_invariance_across_a_dro_update(tmp_path):
    # two steps, a class-DRO update at the start of the second: 1x8 and 8x1 must agree on lambda and weights
    dataset, model_fn = image_dataset((3, 3, 2), seed=3), lambda: make_vit(seed=5)
    holdout = image_dataset((4, 4, 4), seed=4)
    runs = [
        _one_step_params(
            tmp_path,
            model_fn,
            dataset,
            batch,
            accumulation,
            objective="robust_kd",
            teacher=make_vit(seed=9),
            holdout=holdout,
            max_steps=2,
            dro_update_every=1,
            dro_step_size=2.0,
        )
        for batch, accumulation in ((8, 1), (1, 8))
    ]
    (params_a, _, objective_a), (params_b, _, objective_b) = runs
    assert objective_a.num_updates == objective_b.num_updates == 1
    assert not torch.allclose(objective_a.multipliers, torch.full((3,), 1 / 3), atol=1e-3)
    torch.testing.assert_close(objective_a.multipliers, objective_b.multipliers, rtol=1e-5, atol=1e-7)
    for name in params_a:
        torch.testing.assert_close(params_a[name], params_b[name], rtol=1e-4, atol=1e-6)


def _constant_student(bias):
    """A student whose logits are ``bias`` for every input (zero classifier weights)."""
    model = make_vit(seed=0)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(bias))
    return model


def _dro_multipliers_after_one_update(tmp_path, train, holdout, bias):
    args = tiny_args(
        tmp_path, objective="dro", max_steps=2, dro_update_every=1, dro_step_size=1.0, learning_rate=0.0
    )
    trainer = DistillationTrainer(
        model=_constant_student(bias), args=args, train_dataset=train, holdout_dataset=holdout
    )
    trainer.train()
    assert trainer.objective.num_updates == 1
    return trainer.objective.multipliers


def test_dro_holdout_errors_use_the_unadjusted_argmax(data, tmp_path):
    train, holdout, _ = data
    bias = [0.0, 0.0, 1.0]
    # raw argmax: class 2. With uniform lambda the loss adds -log c = log(3 pi): argmax of the adjusted logits is 0
    offsets = np.log(3 * np.array([24, 12, 6]) / 42)
    assert np.argmax(np.array(bias) + offsets) == 0
    got = _dro_multipliers_after_one_update(tmp_path, train, holdout, bias).double().numpy()
    errors = np.array([1.0, 1.0, 0.0])  # every example predicted as class 2
    expected = np.exp(errors) / np.exp(errors).sum()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_dro_class_absent_from_the_holdout_batch_keeps_its_weight(data, tmp_path):
    train, _, _ = data
    holdout = image_dataset((6, 6, 0), seed=5)  # no bird in the holdout
    got = _dro_multipliers_after_one_update(tmp_path, train, holdout, [0.0, 1.0, 0.0])
    assert got[2].item() == torch.tensor(1 / 3).item()  # exactly its old weight
    errors = np.array([1.0, 0.0])  # every example predicted as class 1
    seen = (2 / 3) * np.exp(errors) / np.exp(errors).sum()
    np.testing.assert_allclose(got[:2].double().numpy(), seen, rtol=1e-6)


def test_class_level_reliability_is_measured_on_the_adjusted_teacher(data, tmp_path):
    train, holdout, _ = data
    teacher = make_vit(seed=4)
    args = tiny_args(
        tmp_path, objective="ada_alpha", teacher_logit_mode="prior_adjusted", teacher_logit_tau=2.0
    )
    trainer = DistillationTrainer(
        model=make_vit(), args=args, teacher=teacher, train_dataset=train, holdout_dataset=holdout
    )
    trainer.objective.on_train_begin(trainer.objective_hooks.context)
    with torch.no_grad():
        pixels = torch.stack([holdout[i]["pixel_values"] for i in range(len(holdout))])
        logits = teacher(pixel_values=pixels).logits.double().numpy()
    labels = np.asarray(holdout["labels"])
    adjusted = logits - 2.0 * np.log(np.array([24, 12, 6]) / 42)
    assert (adjusted.argmax(-1) != logits.argmax(-1)).any()  # so raw and adjusted recall differ
    correct = np.bincount(labels[adjusted.argmax(-1) == labels], minlength=3)
    counts = np.bincount(labels, minlength=3)
    expected = (correct + correct.sum() / counts.sum()) / (counts + 1)  # pseudo count 1
    np.testing.assert_allclose(trainer.objective.teacher_reliability.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "objective, extra",
    [
        ("balanced_kd", {}),
        ("balanced_kd", {"balanced_form": "reweighted"}),
        ("robust_kd", {}),
        ("dro", {}),
        ("balanced", {}),
        ("balanced", {"balanced_form": "posthoc"}),
        ("kd", {"teacher_logit_mode": "prior_adjusted"}),
    ],
)
def test_a_class_without_training_rows_is_refused_when_the_prior_is_used(data, tmp_path, objective, extra):
    train, _, _ = data
    with pytest.raises(ValueError, match=r"no training rows: \['bird'\].*add training rows"):
        DistillationTrainer(
            model=make_vit(),
            args=tiny_args(tmp_path, objective=objective, **extra),
            teacher=make_vit(seed=4),
            train_dataset=train,
            class_counts=[24, 12, 0],
        )


@pytest.mark.parametrize(
    "objective, extra",
    [
        ("kd", {}),
        ("ce", {}),
        ("ada_alpha", {"ada_alpha_level": "instance"}),
        ("robust_kd", {"dro_tau": 0.0, "dro_base": "uniform"}),
    ],
)
def test_a_class_without_training_rows_is_fine_when_the_prior_is_not_used(data, tmp_path, objective, extra):
    train, holdout, _ = data
    trainer = DistillationTrainer(
        model=make_vit(),
        args=tiny_args(tmp_path, objective=objective, **extra),
        teacher=make_vit(seed=4),
        train_dataset=train,
        holdout_dataset=holdout,
        class_counts=[24, 12, 0],
    )
    batch = {"pixel_values": train[:5]["pixel_values"], "labels": train[:5]["labels"]}
    loss = trainer.compute_loss(trainer.model, batch)
    assert torch.isfinite(loss) and loss.item() < 5.0


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated crash")


def test_resume_continues_exactly(data, teacher, tmp_path):
    train, holdout, _ = data
    common = dict(
        objective="robust_kd", max_steps=12, dro_update_every=2, save_strategy="steps", save_steps=4
    )

    def make(out, callbacks=None):
        return DistillationTrainer(
            model=make_vit(seed=3),
            args=tiny_args(out, **common),
            teacher=teacher,
            train_dataset=train,
            holdout_dataset=holdout,
            callbacks=callbacks,
        )

    full = make(tmp_path / "full")
    full.train()

    crashed = make(tmp_path / "resumed", callbacks=[StopAt(6)])
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    checkpoint = tmp_path / "resumed" / "out" / "checkpoint-4"
    assert (checkpoint / OBJECTIVE_STATE_NAME).exists()
    resumed = make(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))

    torch.testing.assert_close(resumed.objective.multipliers, full.objective.multipliers, rtol=0, atol=0)
    assert resumed.objective.num_updates == full.objective.num_updates == 5
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_resume_refuses_a_checkpoint_without_objective_state(data, teacher, tmp_path):
    train, holdout, _ = data
    args = tiny_args(tmp_path, objective="robust_kd", max_steps=4, save_strategy="steps", save_steps=2)
    trainer = DistillationTrainer(
        model=make_vit(), args=args, teacher=teacher, train_dataset=train, holdout_dataset=holdout
    )
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    os.remove(checkpoint / OBJECTIVE_STATE_NAME)
    again = DistillationTrainer(
        model=make_vit(), args=args, teacher=teacher, train_dataset=train, holdout_dataset=holdout
    )
    with pytest.raises(ValueError, match="has no fairkd_objective_state"):
        again.train(resume_from_checkpoint=str(checkpoint))


def test_a_checkpoint_of_the_old_update_order_is_refused(tmp_path):
    # older versions ran the class-DRO update of step s after checkpoint-s was saved (metadata last_dro_step):
    # resuming one now would skip that update, so it is refused rather than silently diverging
    from safetensors.torch import save_file

    from hf_fairkd.checkpoints import read_objective_state
    from hf_fairkd.objectives import get_objective

    objective = get_objective("robust_kd")(tiny_args(tmp_path, objective="robust_kd"), torch.ones(3))
    save_file(
        objective.state_dict(),
        str(tmp_path / OBJECTIVE_STATE_NAME),
        metadata={"objective": "robust_kd", "last_dro_step": "2"},
    )
    with pytest.raises(ValueError, match="older hf_fairkd.*skip an update"):
        read_objective_state(str(tmp_path), objective)


def test_teacher_is_frozen_in_eval_mode_and_not_wrapped(data, teacher, tmp_path):
    train, _, _ = data
    trainer = DistillationTrainer(
        model=make_vit(),
        args=tiny_args(tmp_path, teacher_dtype="bfloat16"),
        teacher=teacher,
        train_dataset=train,
    )
    assert not trainer.teacher.training
    assert all(not p.requires_grad for p in trainer.teacher.parameters())
    assert next(trainer.teacher.parameters()).dtype == torch.bfloat16
    assert isinstance(trainer.teacher, type(AutoModelForImageClassification.from_pretrained(teacher)))
    before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.train()
    for k, v in trainer.teacher.state_dict().items():
        assert torch.equal(v, before[k])


def test_teacher_with_reordered_labels_is_mapped(data, tmp_path):
    train, _, _ = data
    batch = {"pixel_values": train[:5]["pixel_values"], "labels": train[:5]["labels"]}
    teacher = make_vit(seed=4)
    # the same teacher with its classes stored in another order (rows of the head permuted)
    reordered = make_vit(seed=4, names=["bird", "cat", "dog"])
    reordered.load_state_dict(teacher.state_dict())
    perm = torch.tensor([2, 0, 1])  # reordered class k is original class perm[k]
    with torch.no_grad():
        reordered.classifier.weight.copy_(teacher.classifier.weight[perm])
        reordered.classifier.bias.copy_(teacher.classifier.bias[perm])
    losses = []
    for t in (teacher, reordered):
        trainer = DistillationTrainer(
            model=make_vit(seed=0), args=tiny_args(tmp_path), teacher=t, train_dataset=train
        )
        losses.append(trainer.compute_loss(trainer.model, dict(batch)).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_teacher_with_other_classes_is_refused(data, tmp_path):
    train, _, _ = data
    other = make_vit(names=["cat", "dog", "horse"])
    with pytest.raises(
        ValueError, match=r"only in the student: \['bird'\], only in the teacher: \['horse'\]"
    ):
        DistillationTrainer(model=make_vit(), args=tiny_args(tmp_path), teacher=other, train_dataset=train)


def test_bad_setups_fail_before_training(data, teacher, tmp_path):
    train, _, _ = data
    with pytest.raises(ValueError, match="needs a holdout split"):
        DistillationTrainer(
            model=make_vit(),
            args=tiny_args(tmp_path, objective="ada_alpha"),
            teacher=teacher,
            train_dataset=train,
        )
    with pytest.raises(ValueError, match="distils from a teacher"):
        DistillationTrainer(model=make_vit(), args=tiny_args(tmp_path, objective="kd"), train_dataset=train)
    with pytest.raises(ValueError, match="Could not load the teacher"):
        DistillationTrainer(
            model=make_vit(), args=tiny_args(tmp_path), teacher=str(tmp_path / "missing"), train_dataset=train
        )


def test_cached_teacher_column_checks(data, tmp_path):
    from hf_fairkd.teacher import build_teacher_cache

    train, _, _ = data
    plain = train.with_format(None)
    handmade = plain.add_column("teacher_logits", [[0.0, 1.0, 2.0]] * len(plain)).with_format("torch")
    with pytest.raises(ValueError, match="no teacher-cache record"):
        DistillationTrainer(model=make_vit(), args=tiny_args(tmp_path, max_steps=1), train_dataset=handmade)
    trainer = DistillationTrainer(
        model=make_vit(),
        args=tiny_args(tmp_path, max_steps=1),
        train_dataset=build_teacher_cache(train, make_vit(seed=4)),
    )
    wrong = plain.add_column("teacher_logits", [[0.0, 1.0]] * len(plain)).with_format("torch")
    with pytest.raises(ValueError, match="Teacher logits have 2 classes but the student has 3"):
        trainer.evaluate(wrong)  # eval datasets are not checked at start-up, so the per-batch checks fire
    bad = plain.add_column("teacher_logits", [[0.0, float("nan"), 1.0]] * len(plain)).with_format("torch")
    with pytest.raises(ValueError, match="Non-finite teacher logits in the batch at step 0"):
        trainer.evaluate(bad)


def test_posthoc_balanced_teacher_shifts_the_bias(data, tmp_path):
    train, _, _ = data
    args = tiny_args(tmp_path, objective="balanced", balanced_form="posthoc", max_steps=2, learning_rate=0.0)
    trainer = DistillationTrainer(model=make_vit(), args=args, train_dataset=train)
    bias = trainer.model.classifier.bias.detach().clone()
    trainer.train()
    prior = torch.tensor([24.0, 12.0, 6.0]) / 42
    torch.testing.assert_close(trainer.model.classifier.bias.detach(), bias - prior.log())
