"""Objectives over groups of the data (group DRO, per-cell teacher reliability) and the trainer's group plumbing,
each against a closed form computed here with numpy."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_models import image_dataset, make_vit, tiny_args

from hf_fairkd import DistillationTrainer
from hf_fairkd import losses as L
from hf_fairkd.checkpoints import read_objective_state
from hf_fairkd.groups import GROUP_ID_COLUMN
from hf_fairkd.objectives import OBJECTIVES, LossOutput, Objective, get_objective
from hf_fairkd.teacher.source import NON_MODEL_KEYS
from hf_fairkd.trainer import OBJECTIVE_STATE_NAME
from hf_fairkd.trainer_groups import group_arguments

# 3 classes x 3 groups: training rows per cell (row y, column g); group totals 6, 3, 1; class totals 5, 3, 2
CELLS = torch.tensor([[3.0, 1.0, 1.0], [2.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
CLASS_COUNTS = CELLS.sum(1)
GROUPS = ["A", "B", "C"]


def args(**kw):
    base = dict(
        alpha=0.4,
        temperature=2.0,
        kd_convention="mix",
        teacher_logit_mode="raw",
        teacher_logit_tau=1.0,
        teacher_logit_shift=None,
        ada_alpha_level="class",
        ada_alpha_mapping="linear",
        ada_alpha_threshold=0.5,
        ada_alpha_instance_mode="prob",
        reliability_pseudo_count=1.0,
        reliability_groups="class",
        margin_level="class",
        margin_scale=1.0,
        margin_on="one_hot",
        dro_tradeoff=1.0,
        dro_base="uniform",
        dro_tau=1.0,
        dro_step_size=1.0,
        dro_update_every=1,
        dro_error_weighting="label",
        dro_holdout_batch_size=100,
        dro_groups="class",
        dro_group_adjustment=0.0,
        seed=0,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def objective(name, cells=CELLS, names=GROUPS, **kw):
    obj = get_objective(name)(args(**kw), cells.sum(1))
    obj.attach_groups(names, cells)
    return obj


def softmax(z, temperature=1.0):
    z = np.asarray(z, dtype=np.float64) / temperature
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ce_soft(q, z):
    return -(q * np.log(softmax(z))).sum(-1)


def onehot(y, m=3):
    return np.eye(m)[np.asarray(y)]


class FakeContext:
    """`hooks.ObjectiveContext` over dict batches, one process (`gather` is the identity)."""

    def __init__(self, batches, global_step=1, max_steps=10):
        self.batches = batches
        self.global_step, self.max_steps = global_step, max_steps
        self.holdout = list(range(sum(len(b["labels"]) for b in batches)))

    def holdout_batches(self, indices=None):
        yield from self.batches

    def labels(self, batch):
        return batch["labels"]

    def group_ids(self, batch):
        return batch["group_ids"]

    def student_logits(self, batch):
        return batch["student"]

    def teacher_logits(self, batch):
        return batch["teacher"]

    def gather(self, tensor):
        return tensor


def scores(argmax, m=3):
    """Logits whose argmax is ``argmax``."""
    return torch.tensor(3.0 * np.eye(m)[argmax], dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------- partitions


def test_partition_ids_and_counts():
    y, g = torch.tensor([0, 2, 1, 2]), torch.tensor([2, 0, 1, 1])
    assert L.partition_ids("class", y, None, 3).tolist() == [0, 2, 1, 2]
    assert L.partition_ids("group", y, g, 3).tolist() == [2, 0, 1, 1]
    assert L.partition_ids("class_x_group", y, g, 3).tolist() == [2, 6, 4, 7]  # y * 3 + g
    assert L.partition_counts("group", CLASS_COUNTS, CELLS).tolist() == [6, 3, 1]
    assert L.partition_counts("class_x_group", CLASS_COUNTS, CELLS).tolist() == [3, 1, 1, 2, 1, 0, 1, 1, 0]
    assert L.partition_counts("class", CLASS_COUNTS, None).tolist() == [5, 3, 2]
    with pytest.raises(ValueError, match="needs the group ids"):
        L.partition_ids("group", y, None, 3)


def test_which_objectives_use_groups():
    assert not get_objective("robust_kd")(args(), CLASS_COUNTS).uses_groups
    assert get_objective("robust_kd")(args(dro_groups="group"), CLASS_COUNTS).uses_groups
    assert get_objective("dro")(args(dro_groups="class_x_group"), CLASS_COUNTS).uses_groups
    assert get_objective("ada_alpha")(args(reliability_groups="class_x_group"), CLASS_COUNTS).uses_groups
    assert get_objective("ada_margin")(args(reliability_groups="class_x_group"), CLASS_COUNTS).uses_groups
    # instance level measures no holdout reliability: nothing per cell
    a = args(reliability_groups="class_x_group", ada_alpha_level="instance", margin_level="instance")
    assert not get_objective("ada_alpha")(a, CLASS_COUNTS).uses_groups
    assert not get_objective("ada_margin")(a, CLASS_COUNTS).uses_groups
    for name in ("kd", "ce", "balanced_kd", "ada_alpha"):
        assert not get_objective(name)(args(), CLASS_COUNTS).uses_groups


def test_an_objective_that_uses_groups_refuses_to_start_without_them():
    obj = get_objective("robust_kd")(args(dro_groups="group"), CLASS_COUNTS)
    with pytest.raises(ValueError, match="dro_groups='group' weights or measures groups.*group_columns"):
        obj.check_groups()
    with pytest.raises(ValueError, match="no groups were attached"):
        obj.on_train_begin(FakeContext([]))
    with pytest.raises(ValueError, match="expected \\(num_classes, number of groups\\) = \\(3, 2\\)"):
        obj.attach_groups(["A", "B"], CELLS)
    get_objective("robust_kd")(args(), CLASS_COUNTS).check_groups()  # class-DRO needs none


def test_teacher_weighted_errors_are_refused_for_group_partitions():
    with pytest.raises(ValueError, match="dro_error_weighting='teacher'.*dro_groups='group'.*'label'"):
        get_objective("robust_kd")(args(dro_groups="group", dro_error_weighting="teacher"), CLASS_COUNTS)
    get_objective("robust_kd")(args(dro_error_weighting="teacher"), CLASS_COUNTS)  # classes: allowed


# ---------------------------------------------------------------------------------------------------- group DRO


def batch_in_training_proportions(seed=0):
    """10 rows whose groups have the training shares 6:3:1, random labels and logits."""
    rng = np.random.default_rng(seed)
    groups = np.array([0] * 6 + [1] * 3 + [2])
    labels = np.array([0, 0, 1, 2, 0, 1, 0, 1, 2, 0])
    logits = rng.normal(size=(10, 3))
    return torch.tensor(logits), torch.tensor(labels), torch.tensor(groups)


def test_group_dro_loss_is_sagawas_weighted_sum_of_group_losses():
    # tau = 1, uniform base, b = 1: the mean loss over rows in training proportions is sum_k lambda_k L_k
    s, y, g = batch_in_training_proportions()
    obj = objective("dro", dro_groups="group", dro_tau=1.0, dro_base="uniform", dro_tradeoff=1.0)
    lam = np.array([0.5, 0.2, 0.3])
    obj.multipliers = torch.tensor(lam, dtype=torch.float32)
    out = obj.compute(s, y, None, group_ids=g)
    ce = ce_soft(onehot(y), s.numpy())
    group_losses = np.array([ce[g.numpy() == k].mean() for k in range(3)])
    assert out.per_example.mean().item() == pytest.approx((lam * group_losses).sum(), rel=1e-6)
    # row by row: lambda_k / pi_k times its cross-entropy
    pi = np.array([6, 3, 1]) / 10
    np.testing.assert_allclose(out.per_example.numpy(), (lam / pi)[g.numpy()] * ce, rtol=1e-6)
    assert out.scalars["group_weight_max"] == pytest.approx(0.5)
    assert out.scalars["group_weight_min"] == pytest.approx(0.2)
    assert out.scalars["group_weight_argmax"] == 0.0
    assert "class_weight_min" not in out.scalars


def test_group_dro_weights_in_general_and_for_cells():
    s, y, g = batch_in_training_proportions(seed=1)
    lam = np.array([0.1, 0.6, 0.3])
    obj = objective("dro", dro_groups="group", dro_tau=0.5, dro_base="prior", dro_tradeoff=0.3)
    obj.multipliers = torch.tensor(lam, dtype=torch.float32)
    pi = np.array([6, 3, 1]) / 10
    w = 0.7 * pi + 0.3 * lam
    v = (w / pi**0.5) / (pi * w / pi**0.5).sum()
    out = obj.compute(s, y, None, group_ids=g)
    ce = ce_soft(onehot(y), s.numpy())
    np.testing.assert_allclose(out.per_example.numpy(), v[g.numpy()] * ce, rtol=1e-5)
    assert (pi * v).sum() == pytest.approx(1.0)  # mean weight 1 under the training distribution
    # class x group: 9 cells, two of them without training rows (weight 0); rows of cell y * 3 + g
    obj = objective("dro", dro_groups="class_x_group", dro_tau=1.0, dro_base="uniform", dro_tradeoff=1.0)
    assert obj.multipliers.tolist() == pytest.approx([1 / 9] * 9)
    lam = np.arange(1, 10) / 45.0
    obj.multipliers = torch.tensor(lam, dtype=torch.float32)
    pi = CELLS.flatten().numpy() / 10
    v = np.where(pi > 0, lam / np.where(pi > 0, pi, 1), 0.0)
    v = v / (pi * v).sum()
    out = obj.compute(s, y, None, group_ids=g)
    np.testing.assert_allclose(out.per_example.numpy(), v[y.numpy() * 3 + g.numpy()] * ce, rtol=1e-5)
    # an evaluation batch without group ids: the loss without group weights
    np.testing.assert_allclose(obj.compute(s, y, None).per_example.numpy(), ce, rtol=1e-6)


def holdout_batches():
    # groups [A A A B B D | C-less]; labels and student argmax give wrong = [0, 1, 0, 0, 1, 1]
    labels = torch.tensor([0, 1, 2, 0, 1, 0])
    groups = torch.tensor([0, 0, 0, 1, 1, 3])
    predicted = [0, 0, 2, 0, 0, 1]
    return [
        {"labels": labels[:4], "group_ids": groups[:4], "student": scores(predicted[:4])},
        {"labels": labels[4:], "group_ids": groups[4:], "student": scores(predicted[4:])},
    ]


def test_group_dro_update_by_hand():
    # 4 groups: A (6 training rows), B (3), C (1, absent from the holdout batch), D (0, only in the holdout)
    cells = torch.cat([CELLS, torch.zeros(3, 1)], dim=1)
    obj = objective(
        "dro", cells=cells, names=["A", "B", "C", "D"], dro_groups="group", dro_group_adjustment=0.5
    )
    obj.on_step_end(FakeContext(holdout_batches()))
    errors = np.array([1 / 3, 1 / 2, 0.0, 1.0])  # per group, label-weighted 0-1 errors
    adjusted = errors + 0.5 / np.sqrt([6.0, 3.0, 1.0, 1.0]) * np.array([1, 1, 1, 0])  # D: n = 0, no C/sqrt(n)
    seen = np.array([True, True, False, True])
    raw = 0.25 * np.exp(1.0 * adjusted[seen])  # eta = 1, from uniform
    expected = np.full(4, 0.25)
    expected[seen] = 0.75 * raw / raw.sum()  # renormalised within the mass the seen groups held
    np.testing.assert_allclose(obj.multipliers.numpy(), expected, rtol=1e-6)
    assert obj.multipliers[2].item() == torch.tensor(0.25).item()  # C kept its weight exactly
    assert obj.num_updates == 1
    assert obj.multipliers.argmax().item() == 3  # toward the group with the most holdout errors


def test_class_x_group_update_by_hand():
    obj = objective("robust_kd", dro_groups="class_x_group", dro_step_size=0.5)
    batches = holdout_batches()
    for b in batches:  # only groups A and B here (3 groups attached)
        b["group_ids"] = b["group_ids"].clamp(max=1)
    obj.on_step_end(FakeContext(batches))
    cells = np.array([0, 1, 2, 0, 1, 0]) * 3 + np.array([0, 0, 0, 1, 1, 1])  # y * G + g
    wrong = np.array([0, 1, 0, 0, 1, 1], dtype=float)
    seen = np.bincount(cells, minlength=9) > 0
    errors = np.bincount(cells, weights=wrong, minlength=9)[seen] / np.bincount(cells, minlength=9)[seen]
    expected = np.full(9, 1 / 9)
    raw = np.exp(0.5 * errors) / 9
    expected[seen] = seen.sum() / 9 * raw / raw.sum()
    np.testing.assert_allclose(obj.multipliers.numpy(), expected, rtol=1e-6)


def class_dro_batches():
    # student argmax [0, 1, 1 | 2]; labels [0, 0, 1 | 1]: class errors 1/2, 1/2, unseen
    return [
        {"labels": torch.tensor([0, 0, 1]), "student": scores([0, 1, 1])},
        {"labels": torch.tensor([1]), "student": scores([2])},
    ]


def test_class_dro_is_unchanged_and_takes_the_size_adjustment():
    legacy = SimpleNamespace(
        **{k: v for k, v in vars(args()).items() if not k.startswith(("dro_group", "rel"))}
    )
    assert not hasattr(legacy, "dro_groups")  # the arguments of before these settings existed
    s, y, _ = batch_in_training_proportions()
    t = torch.tensor(np.random.default_rng(2).normal(size=(10, 3)))
    a = dict(dro_tradeoff=0.5, dro_base="prior", dro_tau=1.0)
    before = get_objective("robust_kd")(SimpleNamespace(**{**vars(legacy), **a}), CLASS_COUNTS)
    now = objective("robust_kd", dro_groups="class", **a)  # groups attached, not used
    assert torch.equal(now.compute(s, y, t).per_example, before.compute(s, y, t).per_example)
    # the closed form of class-DRO: CE(q, s - log c), c = w / pi, w = (1 - b) pi + b lambda
    pi = CLASS_COUNTS.numpy() / 10
    w = 0.5 * pi + 0.5 / 3
    q = 0.6 * onehot(y) + 0.4 * softmax(t.numpy(), 2.0)
    expected = ce_soft(q, s.numpy() - np.log(w / pi))
    np.testing.assert_allclose(now.compute(s, y, t).per_example.numpy(), expected, rtol=1e-6)
    # C = 0: the same update, bit for bit
    before.on_step_end(FakeContext(class_dro_batches()))
    now.on_step_end(FakeContext(class_dro_batches()))
    assert torch.equal(now.multipliers, before.multipliers)
    # C > 0: C / sqrt(n_y), n_y the class's training count
    adjusted = objective("robust_kd", dro_group_adjustment=2.0)
    adjusted.on_step_end(FakeContext(class_dro_batches()))
    errors = np.array([0.5, 0.5]) + 2.0 / np.sqrt([5.0, 3.0])
    raw = np.exp(errors) / 3
    np.testing.assert_allclose(adjusted.multipliers.numpy()[:2], (2 / 3) * raw / raw.sum(), rtol=1e-6)
    assert adjusted.multipliers[2].item() == torch.tensor(1 / 3).item()


def test_group_multipliers_round_trip_and_refuse_another_partition():
    obj = objective("robust_kd", dro_groups="group")
    obj.on_step_end(FakeContext([dict(b, group_ids=b["group_ids"].clamp(max=2)) for b in holdout_batches()]))
    other = objective("robust_kd", dro_groups="group")
    other.load_state_dict(obj.state_dict())
    assert torch.equal(other.multipliers, obj.multipliers) and other.num_updates == 1
    cells = objective("robust_kd", dro_groups="class_x_group")
    with pytest.raises(ValueError, match="have 3 entries but this objective has 9.*with the dro_groups"):
        cells.load_state_dict(obj.state_dict())


# ---------------------------------------------------------------------------------------------------- cell reliability

# holdout rows: (class, group, teacher argmax)
REL_LABELS = [0, 0, 0, 1, 1, 2, 2, 0]
REL_GROUPS = [0, 0, 1, 0, 1, 0, 0, 1]
REL_ARGMAX = [0, 1, 0, 1, 0, 2, 2, 0]
# training rows per cell: (1, B) has none, and its teacher recall is the lowest (its one holdout row is wrong)
REL_CELLS = torch.tensor([[3.0, 1.0], [2.0, 0.0], [1.0, 1.0]])


def reliability_context():
    rows = dict(
        labels=torch.tensor(REL_LABELS), group_ids=torch.tensor(REL_GROUPS), teacher=scores(REL_ARGMAX)
    )
    first = {k: v[:5] for k, v in rows.items()}
    second = {k: v[5:] for k, v in rows.items()}
    return FakeContext([first, second], global_step=0)


def cell_reliability_by_hand(k):
    y, g = np.array(REL_LABELS), np.array(REL_GROUPS)
    correct = (np.array(REL_ARGMAX) == y).astype(float)
    n_y = np.bincount(y, minlength=3)
    c_y = np.bincount(y, weights=correct, minlength=3)
    overall = correct.sum() / len(y)
    r_y = (c_y + k * overall) / (n_y + k)
    r = np.zeros((3, 2))
    for cls in range(3):
        for grp in range(2):
            rows = (y == cls) & (g == grp)
            r[cls, grp] = (
                (correct[rows].sum() + k * r_y[cls]) / (rows.sum() + k) if rows.sum() + k else r_y[cls]
            )
    return r_y, r


@pytest.mark.parametrize("k", [1.0, 0.0])
def test_cell_reliability_is_smoothed_toward_its_class(k):
    obj = objective(
        "ada_alpha", REL_CELLS, ["A", "B"], reliability_groups="class_x_group", reliability_pseudo_count=k
    )
    obj.on_train_begin(reliability_context())
    r_y, r = cell_reliability_by_hand(k)
    np.testing.assert_allclose(obj.teacher_reliability.numpy(), r_y, rtol=1e-6)
    np.testing.assert_allclose(obj.cell_reliability.numpy(), r, rtol=1e-6)
    assert obj.cell_reliability[2, 1].item() == pytest.approx(r_y[2])  # no holdout rows: its class's recall
    # restored state is kept: nothing is measured again
    restored = objective("ada_alpha", REL_CELLS, ["A", "B"], reliability_groups="class_x_group")
    restored.load_state_dict(obj.state_dict())
    restored.on_train_begin(FakeContext([]))
    assert torch.equal(restored.cell_reliability, obj.cell_reliability)


def kd_mix(s, t, y, alpha, temperature=2.0, s_onehot=None):
    s_onehot = s if s_onehot is None else s_onehot
    return (1 - alpha) * ce_soft(onehot(y), s_onehot) + alpha * ce_soft(softmax(t, temperature), s)


def test_cell_alphas_follow_the_cell_reliability():
    s, y, _ = batch_in_training_proportions(seed=3)
    g = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 0, 1])
    t = torch.tensor(np.random.default_rng(4).normal(size=(10, 3)))
    _, r = cell_reliability_by_hand(1.0)
    for mapping in ("linear", "normalized"):
        obj = objective(
            "ada_alpha", REL_CELLS, ["A", "B"], reliability_groups="class_x_group", ada_alpha_mapping=mapping
        )
        obj.on_train_begin(reliability_context())
        if mapping == "linear":
            a = 0.4 * r
        else:  # min and max over the cells with training rows (all but (1, B)), clipped to [0, alpha]
            measured = r[REL_CELLS.numpy() > 0]
            a = np.clip(0.4 * (r - measured.min()) / (measured.max() - measured.min()), 0.0, 0.4)
            assert r[1, 1] < measured.min() and a[1, 1] == 0.0  # below the measured range: clipped
        np.testing.assert_allclose(obj.cell_alphas().numpy(), a, rtol=1e-5, atol=1e-7)
        out = obj.compute(s, y, t, group_ids=g)
        alpha = a[y.numpy(), g.numpy()]
        np.testing.assert_allclose(out.per_example.numpy(), kd_mix(s.numpy(), t.numpy(), y, alpha), rtol=1e-5)
        # without group ids (an evaluation batch that carries none): the class-level alphas
        class_alpha = L.alpha_from_reliability(obj.teacher_reliability, mapping=mapping, alpha_max=0.4)
        expected = kd_mix(s.numpy(), t.numpy(), y, class_alpha.numpy()[y.numpy()])
        np.testing.assert_allclose(obj.compute(s, y, t).per_example.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("margin_on", ["one_hot", "both"])
def test_cell_margins_are_class_margins_within_the_row_group(margin_on):
    s, y, _ = batch_in_training_proportions(seed=5)
    g = torch.tensor([1, 0, 1, 0, 1, 1, 0, 1, 0, 0])
    t = torch.tensor(np.random.default_rng(6).normal(size=(10, 3)))
    obj = objective(
        "ada_margin",
        REL_CELLS,
        ["A", "B"],
        reliability_groups="class_x_group",
        margin_scale=2.0,
        margin_on=margin_on,
    )
    obj.on_train_begin(reliability_context())
    _, r = cell_reliability_by_hand(1.0)
    u = 1 - r
    rows = np.stack([2.0 * (u[yi, gi] - u[:, gi]) for yi, gi in zip(y.numpy(), g.numpy())])  # D_yj, D_yy = 0
    onehot_offsets, teacher_offsets = obj.cell_logit_offsets(y, g, t)
    np.testing.assert_allclose(onehot_offsets.numpy(), rows, rtol=1e-5, atol=1e-7)
    assert (teacher_offsets is None) == (margin_on == "one_hot")
    out = obj.compute(s, y, t, group_ids=g)
    sn, tn = s.numpy(), t.numpy()
    teacher_term = ce_soft(softmax(tn, 2.0), sn + rows if margin_on == "both" else sn)
    expected = 0.6 * ce_soft(onehot(y), sn + rows) + 0.4 * teacher_term
    np.testing.assert_allclose(out.per_example.numpy(), expected, rtol=1e-5)


def test_group_arguments_of_a_batch():
    robust = objective("robust_kd", dro_groups="group")
    batch = {"labels": torch.tensor([0]), GROUP_ID_COLUMN: torch.tensor([1])}
    assert group_arguments(robust, batch, training=True)["group_ids"].tolist() == [1]
    assert group_arguments(objective("kd"), batch, training=True) == {}  # compute keeps its 3 arguments
    with pytest.raises(ValueError, match="training batch has no 'group_ids' column.*set_transform"):
        group_arguments(robust, {"labels": torch.tensor([0])}, training=True)
    with pytest.warns(UserWarning, match="without its group terms"):
        assert group_arguments(robust, {"labels": torch.tensor([0])}, training=False) == {"group_ids": None}
    assert GROUP_ID_COLUMN in NON_MODEL_KEYS  # never a model input


# ---------------------------------------------------------------------------------------------------- the trainer


def with_sites(dataset, sites):
    return dataset.add_column("site", list(sites))


def holdout_sites(labels):
    """Class 0 and the first half of class 1 at site A, the rest at B, and the last row of class 1 at C (a
    site without training rows)."""
    sites, seen_1 = [], 0
    last_1 = max(i for i, y in enumerate(labels) if y == 1)
    for i, y in enumerate(labels):
        seen_1 += y == 1
        sites.append("C" if i == last_1 else "A" if y == 0 or (y == 1 and seen_1 <= 3) else "B")
    return sites


@pytest.fixture(scope="module")
def site_data():
    train = image_dataset((24, 12, 6), seed=0)
    holdout = image_dataset((6, 6, 6), seed=1)
    test = image_dataset((10, 10, 10), seed=2)
    train = with_sites(train, ["B" if i % 3 == 0 else "A" for i in range(len(train))])
    holdout = with_sites(holdout, holdout_sites(holdout.with_format(None)["labels"]))
    test = with_sites(test, ["A" if i % 2 else "B" for i in range(len(test))])
    return train, holdout, test


def constant_student(bias=(1.0, 0.0, 0.0)):
    """Predicts class 0 on every row, and keeps doing so at learning rate 0."""
    model = make_vit(seed=0)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(bias))
    return model


class RecordingTrainer(DistillationTrainer):
    """Records the group ids of every training batch, with each row's pixel sum to identify it."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.batches = []
        compute = self.objective.compute

        def recording_compute(*args, **kwargs):
            self.batches[-1]["compute_group_ids"] = kwargs.get("group_ids")
            return compute(*args, **kwargs)

        self.objective.compute = recording_compute

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            sums = inputs["pixel_values"].double().flatten(1).sum(1)
            self.batches.append({"sums": sums.tolist(), "group_ids": inputs[GROUP_ID_COLUMN].tolist()})
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def group_dro_trainer(out, data, **overrides):
    train, holdout, test = data
    settings = dict(
        objective="robust_kd",
        dro_groups="group",
        group_columns=["site"],
        dro_group_adjustment=0.5,
        dro_update_every=2,
        dro_step_size=0.5,
        dro_holdout_batch_size=100,  # every holdout row at every update
        learning_rate=0.0,
        max_steps=8,
        save_strategy="steps",
        save_steps=4,
        remove_unused_columns=True,  # the Trainer drops the columns the model does not take, but not group_ids
    )
    settings.update(overrides)
    return RecordingTrainer(
        model=constant_student(),
        args=tiny_args(out, **settings),
        teacher=make_vit(seed=4),
        train_dataset=train,
        holdout_dataset=holdout,
        eval_dataset=test,
    )


def expected_multipliers(data, updates, adjustment=0.5, eta=0.5):
    """lambda over the sites [A, B, C] after ``updates`` updates of a student that always predicts class 0."""
    train, holdout, _ = data
    labels = np.array(holdout.with_format(None)["labels"])
    sites = np.array(holdout["site"])
    names = ["A", "B", "C"]
    errors = np.array([(labels[sites == name] != 0).mean() for name in names])
    n = np.array([np.sum(np.array(train["site"]) == name) for name in names])
    errors = errors + np.where(n > 0, adjustment / np.sqrt(np.maximum(n, 1)), 0.0)  # C: no training rows
    raw = np.exp(updates * eta * errors)
    return raw / raw.sum()


@pytest.fixture(scope="module")
def group_dro_run(site_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("group_dro")
    trainer = group_dro_trainer(out, site_data)
    trainer.train()
    return trainer, out


def test_group_ids_reach_the_objective(group_dro_run, site_data):
    trainer, _ = group_dro_run
    train = site_data[0]
    assert trainer.objective.group_names == ["A", "B", "C"]  # train + holdout + eval keys, sorted
    site_of = {
        round(float(np.asarray(p, dtype=np.float64).sum()), 4): s
        for p, s in zip(train.with_format(None)["pixel_values"], train["site"])
    }
    assert len(site_of) == len(train)
    assert len(trainer.batches) == 8
    for batch in trainer.batches:
        assert batch["compute_group_ids"].tolist() == batch["group_ids"]  # passed on as group_ids=
        names = [site_of[round(v, 4)] for v in batch["sums"]]
        assert [trainer.objective.group_names[g] for g in batch["group_ids"]] == names
    # training cell counts: class x site of the train split
    labels, sites = np.array(train.with_format(None)["labels"]), np.array(train["site"])
    expected = [[np.sum((labels == y) & (sites == s)) for s in "ABC"] for y in range(3)]
    assert trainer.objective.cell_counts.tolist() == expected


def test_multipliers_move_toward_the_group_with_more_holdout_errors(group_dro_run, site_data):
    trainer, _ = group_dro_run
    assert trainer.objective.num_updates == 3  # steps 2, 4, 6 of 8
    np.testing.assert_allclose(
        trainer.objective.multipliers.numpy(), expected_multipliers(site_data, 3), rtol=1e-5
    )
    # B (every holdout row wrong) outweighs A (a third wrong); C has no C/sqrt(n) bonus
    lam = trainer.objective.multipliers
    assert lam[1] > lam[0] and lam[1] > lam[2]
    # the log of step 5 shows w = lambda (dro_tradeoff 1) after the updates of steps 2 and 4
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == [5]
    at_step_5 = expected_multipliers(site_data, 2)
    assert logged[0]["group_weight_argmax"] == 1.0
    assert logged[0]["group_weight_max"] == pytest.approx(at_step_5.max(), rel=1e-5)
    assert logged[0]["group_weight_min"] == pytest.approx(at_step_5.min(), rel=1e-5)


def test_a_checkpoint_restores_the_group_multipliers(group_dro_run, site_data, tmp_path):
    _, out = group_dro_run
    checkpoint = out / "out" / "checkpoint-4"
    assert (checkpoint / OBJECTIVE_STATE_NAME).exists()
    fresh = group_dro_trainer(tmp_path, site_data)
    assert fresh.objective.multipliers.tolist() == pytest.approx([1 / 3] * 3)
    read_objective_state(str(checkpoint), fresh.objective)
    np.testing.assert_allclose(
        fresh.objective.multipliers.numpy(), expected_multipliers(site_data, 2), rtol=1e-5
    )
    assert fresh.objective.num_updates == 2
    fresh.train(resume_from_checkpoint=str(checkpoint))  # resumes from the state of step 4
    np.testing.assert_allclose(
        fresh.objective.multipliers.numpy(), expected_multipliers(site_data, 3), rtol=1e-5
    )


def test_evaluation_reports_the_groups_of_the_dataset_evaluated(group_dro_run, site_data):
    trainer, _ = group_dro_run
    train, _, test = site_data
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its sites are known: coded, so the eval loss keeps its group terms
        predicted = trainer.predict(train).metrics  # another dataset, of another length, without group ids
    unseen = train.map(lambda row: {"site": "Z"})  # a site the run never saw: no code, the plain loss, a warning
    with pytest.warns(UserWarning, match="no 'group_ids' column.*without its group terms"):
        assert "test_worst_group_accuracy/site" in trainer.predict(unseen).metrics
    for name, dataset, metrics in (("eval", test, trainer.evaluate()), ("test", train, predicted)):
        labels, sites = np.array(dataset.with_format(None)["labels"]), np.array(dataset["site"])
        accuracy = {s: (labels[sites == s] == 0).mean() for s in set(sites)}  # the student predicts class 0
        assert metrics[f"{name}_worst_group_accuracy/site"] == pytest.approx(min(accuracy.values()))
        assert metrics[f"{name}_accuracy"] == pytest.approx((labels == 0).mean())


def test_a_missing_group_column_is_refused_before_anything_is_loaded(site_data, tmp_path):
    train, holdout, _ = site_data
    args = tiny_args(tmp_path, objective="robust_kd", dro_groups="group", group_columns=["camera"])
    with pytest.raises(
        ValueError,
        match=r"\['camera'\] not found in the train dataset; available columns: "
        r"\['pixel_values', 'labels', 'site'\]",
    ):
        DistillationTrainer(
            model=make_vit(),
            args=args,
            teacher="/no/such/teacher",
            train_dataset=train,
            holdout_dataset=holdout,
        )
    # an objective that uses groups, given none (the keyword overrides args.group_columns)
    with pytest.raises(ValueError, match="no groups were attached"):
        DistillationTrainer(
            model=make_vit(),
            args=args,
            teacher=make_vit(),
            train_dataset=train,
            holdout_dataset=holdout,
            group_columns=[],
        )


def test_a_custom_objective_with_three_arguments_still_trains_with_groups(site_data, tmp_path, monkeypatch):
    calls = []

    class ThreeArguments(Objective):
        uses_teacher = False

        def compute(self, student_logits, labels, teacher_logits):
            calls.append(len(labels))
            loss = L.one_hot_cross_entropy(student_logits, labels)
            return LossOutput(loss, {"one_hot": loss})

    ThreeArguments.name = "three_arguments"
    monkeypatch.setitem(OBJECTIVES, "three_arguments", ThreeArguments)
    train, _, test = site_data
    args = tiny_args(tmp_path, objective="three_arguments", group_columns=["site"], max_steps=2)
    trainer = DistillationTrainer(model=make_vit(), args=args, train_dataset=train, eval_dataset=test)
    trainer.train()
    assert calls == [8, 8]
    assert GROUP_ID_COLUMN not in trainer.train_dataset.column_names  # it reads no groups: none added
    assert "eval_worst_group_accuracy/site" in trainer.evaluate()  # the metrics report them all the same


def test_cell_reliability_through_the_trainer(site_data, tmp_path):
    train, holdout, _ = site_data
    teacher = make_vit(seed=4)
    args = tiny_args(
        tmp_path,
        objective="ada_alpha",
        reliability_groups="class_x_group",
        group_columns=["site"],
        max_steps=1,
    )
    trainer = DistillationTrainer(
        model=make_vit(), args=args, teacher=teacher, train_dataset=train, holdout_dataset=holdout
    )
    trainer.train()
    with torch.no_grad():
        predicted = teacher(pixel_values=holdout[:]["pixel_values"]).logits.argmax(-1).numpy()
    labels, sites = np.array(holdout.with_format(None)["labels"]), np.array(holdout["site"])
    correct = predicted == labels
    n_y, c_y = np.bincount(labels, minlength=3), np.bincount(labels, weights=correct, minlength=3)
    r_y = (c_y + correct.mean()) / (n_y + 1)
    expected = np.array(
        [
            [
                (correct[(labels == y) & (sites == s)].sum() + r_y[y])
                / (np.sum((labels == y) & (sites == s)) + 1)
                for s in "ABC"
            ]
            for y in range(3)
        ]
    )
    np.testing.assert_allclose(trainer.objective.cell_reliability.numpy(), expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------- two processes


@pytest.mark.distributed
def test_two_processes_take_the_single_process_group_steps(tmp_path):
    """Each rank reads its own share of the holdout rows; the group errors and the cell counts are summed over
    both, so both ranks end with the multipliers (and cell reliabilities) of one process over all rows."""
    import group_worker as worker
    from two_processes import REPO, launch_two_processes

    out = tmp_path / "out"
    seconds = launch_two_processes(
        REPO / "recipes" / "accelerate" / "cpu_two_processes.yaml",
        REPO / "tests" / "group_worker.py",
        str(out),
        timeout_s=300,
    )
    print(f"two-process group worker: {seconds:.1f} s")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for r, record in enumerate(ranks):
        assert (record["rank"], record["world_size_accelerate"], record["world_size_torch"]) == (r, 2, 2)
    train, holdout = worker.datasets()
    rows = holdout[:]
    all_rows = {round(v, 4) for v in rows["pixel_values"].double().flatten(1).sum(1).tolist()}
    assert len(all_rows) == len(holdout) == 19
    for key in ("dro_holdout_rows", "reliability_holdout_rows"):
        seen = [{round(v, 4) for v in record[key]} for record in ranks]
        assert seen[0] | seen[1] == all_rows  # together: every holdout row
        # each its own share (the last batch padded with repeated rows, which the gathering drops)
        assert len(seen[0]) < 19 and len(seen[1]) < 19 and seen[0] - seen[1] and seen[1] - seen[0]

    # group DRO, redone here in one process: the student's fixed predictions (learning rate 0) on all rows
    labels, sites = rows["labels"].numpy(), np.array(holdout["site"])
    with torch.no_grad():
        predicted = (
            make_vit(seed=worker.STUDENT_SEED)(pixel_values=rows["pixel_values"]).logits.argmax(-1).numpy()
        )
    names = ranks[0]["group_names"]
    assert names == ["A", "B", "C"]
    train_sites = np.array(train["site"])
    errors = np.array([(predicted != labels)[sites == s].mean() for s in names])
    n = np.array([np.sum(train_sites == s) for s in names])
    errors = errors + np.where(n > 0, worker.ADJUSTMENT / np.sqrt(np.maximum(n, 1)), 0.0)
    updates = (worker.MAX_STEPS - 1) // worker.UPDATE_EVERY
    raw = np.exp(updates * worker.STEP_SIZE * errors)
    assert ranks[0]["num_updates"] == ranks[1]["num_updates"] == updates == 2
    assert ranks[0]["multipliers"] == ranks[1]["multipliers"]  # exactly: the same summed step
    np.testing.assert_allclose(ranks[0]["multipliers"], raw / raw.sum(), rtol=1e-5)
    assert np.ptp(ranks[0]["multipliers"]) > 1e-3  # the errors differ between sites: lambda moved

    # cell reliability of the teacher, summed over both ranks
    with torch.no_grad():
        teacher = (
            make_vit(seed=worker.TEACHER_SEED)(pixel_values=rows["pixel_values"]).logits.argmax(-1).numpy()
        )
    correct = teacher == labels
    r_y = (np.bincount(labels, weights=correct, minlength=3) + correct.mean()) / (
        np.bincount(labels, minlength=3) + 1
    )
    expected = [
        [
            (correct[(labels == y) & (sites == s)].sum() + r_y[y])
            / (np.sum((labels == y) & (sites == s)) + 1)
            for s in names
        ]
        for y in range(3)
    ]
    assert ranks[0]["cell_reliability"] == ranks[1]["cell_reliability"]
    np.testing.assert_allclose(ranks[0]["cell_reliability"], expected, rtol=1e-6)


def test_the_trainers_own_card_reports_the_groups_of_its_eval_dataset(group_dro_run, site_data, tmp_path):
    """push_to_hub / create_model_card without the recipe: the record is built from eval_dataset, with its groups
    and the training count of each group."""
    from hf_fairkd import load_subgroup_metrics

    trainer, _ = group_dro_run
    train, _, test = site_data
    trainer.args.output_dir = str(tmp_path)
    trainer.create_model_card()
    record = json.loads((tmp_path / "subgroup_metrics.json").read_text())
    by_group = record["student"]["groups"]["site"]["by_group"]
    labels, sites = np.array(test.with_format(None)["labels"]), np.array(test["site"])
    train_sites = np.array(train["site"])
    for site in ("A", "B"):
        assert by_group[site]["support"] == int(np.sum(sites == site))
        assert by_group[site]["accuracy"] == pytest.approx((labels[sites == site] == 0).mean())
        assert by_group[site]["train_count"] == int(np.sum(train_sites == site))
    assert "Subgroups" in (tmp_path / "README.md").read_text()
    assert load_subgroup_metrics(str(tmp_path))["student"]["groups"]["site"]["worst_group"] == record["student"][
        "groups"
    ]["site"]["worst_group"]
