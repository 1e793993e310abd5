"""Each registered objective against the formula in methods.md, computed by hand with numpy."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import hf_fairkd
from hf_fairkd import DistillationArguments
from hf_fairkd.objectives import (
    OBJECTIVES,
    get_objective,
    student_objectives,
    teacher_objectives,
)

COUNTS = torch.tensor([60.0, 30.0, 10.0])
PRIOR = np.array([0.6, 0.3, 0.1])
S = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0]], dtype=torch.float64)
T = torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 0.5], [0.0, 0.2, 2.5]], dtype=torch.float64)
Y = torch.tensor([0, 2, 1])


def args(**kw):
    base = dict(
        alpha=0.4,
        temperature=2.0,
        kd_convention="hinton",
        teacher_logit_mode="raw",
        teacher_logit_tau=1.0,
        teacher_logit_shift=None,
        ada_alpha_level="class",
        ada_alpha_mapping="linear",
        ada_alpha_threshold=0.5,
        ada_alpha_instance_mode="prob",
        reliability_pseudo_count=1.0,
        margin_level="class",
        margin_scale=1.0,
        margin_on="one_hot",
        balanced_form="logit_adjusted",
        logit_adjustment_tau=1.0,
        dro_tradeoff=1.0,
        dro_base="prior",
        dro_tau=1.0,
        dro_step_size=0.1,
        dro_update_every=2,
        dro_error_weighting="label",
        dro_holdout_batch_size=8,
        label_smoothing_epsilon=0.1,
        kd_sim_rho=1.0,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def softmax(z, temperature=1.0):
    z = np.asarray(z, dtype=np.float64) / temperature
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ce_soft(q, z):
    return -(q * np.log(softmax(z))).sum(-1)


def onehot(y, m=3):
    return np.eye(m)[np.asarray(y)]


def kd_hand(s, t, y, alpha, temperature, convention, s_onehot=None, s_teacher=None, targets=None):
    s_onehot = s if s_onehot is None else s_onehot
    s_teacher = s if s_teacher is None else s_teacher
    p = softmax(t, temperature) if targets is None else targets
    alpha = np.broadcast_to(alpha, (len(y),))
    one = (1 - alpha) * ce_soft(onehot(y), s_onehot)
    if convention == "hinton":
        q = softmax(s_teacher, temperature)
        return one + alpha * temperature**2 * (p * (np.log(p) - np.log(q))).sum(-1)
    return one + alpha * ce_soft(p, s_teacher)


def run(name, a, teacher_logits=T, reliability=None, similarity=None):
    obj = get_objective(name)(a, COUNTS)
    if reliability is not None:
        obj.teacher_reliability = torch.tensor(reliability)
    if similarity is not None:
        obj.class_similarity = similarity
    return obj, obj.compute(S, Y, teacher_logits if obj.uses_teacher else None)


def test_registry_names_and_split():
    assert {
        "ce",
        "kd",
        "ada_alpha",
        "ada_margin",
        "balanced_kd",
        "robust_kd",
        "label_smoothing",
        "kd_pt",
        "kd_sim",
    } <= set(student_objectives())
    assert set(teacher_objectives()) == {"erm", "balanced", "dro"}
    assert sorted(student_objectives() + teacher_objectives()) == sorted(OBJECTIVES)
    assert hf_fairkd.available_objectives() == hf_fairkd.objectives.names() == sorted(OBJECTIVES)
    with pytest.raises(ValueError, match="Registered objectives: .*robust_kd"):
        get_objective("fairness_magic")


def test_ce_and_erm_are_one_hot_cross_entropy():
    for name in ("ce", "erm"):
        _, out = run(name, args())
        np.testing.assert_allclose(out.per_example.numpy(), ce_soft(onehot(Y), S.numpy()), rtol=1e-6)


@pytest.mark.parametrize("convention", ["hinton", "mix"])
def test_kd_both_conventions(convention):
    _, out = run("kd", args(kd_convention=convention))
    expected = kd_hand(S.numpy(), T.numpy(), Y, 0.4, 2.0, convention)
    np.testing.assert_allclose(out.per_example.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(
        (out.components["one_hot"] + out.components["distill"]).numpy(), expected, rtol=1e-6
    )


def test_kd_with_prior_adjusted_teacher():
    _, out = run("kd", args(teacher_logit_mode="prior_adjusted", teacher_logit_tau=0.5, kd_convention="mix"))
    t = T.numpy() - 0.5 * np.log(PRIOR)
    np.testing.assert_allclose(out.per_example.numpy(), kd_hand(S.numpy(), t, Y, 0.4, 2.0, "mix"), rtol=1e-6)


@pytest.mark.parametrize("mapping", ["linear", "normalized", "threshold"])
def test_ada_alpha_class_level(mapping):
    r = [0.9, 0.3, 0.6]
    _, out = run("ada_alpha", args(ada_alpha_mapping=mapping, alpha=0.8), reliability=r)
    r = np.array(r)
    a = {
        "linear": 0.8 * r,
        "normalized": 0.8 * (r - r.min()) / (r.max() - r.min()),
        "threshold": 0.8 * (r >= 0.5),
    }[mapping][Y.numpy()]
    np.testing.assert_allclose(
        out.per_example.numpy(), kd_hand(S.numpy(), T.numpy(), Y, a, 2.0, "hinton"), rtol=1e-6
    )


def test_ada_alpha_instance_level():
    _, out = run("ada_alpha", args(ada_alpha_level="instance", ada_alpha_instance_mode="prob", alpha=0.9))
    a = 0.9 * softmax(T.numpy())[np.arange(3), Y.numpy()]
    np.testing.assert_allclose(
        out.per_example.numpy(), kd_hand(S.numpy(), T.numpy(), Y, a, 2.0, "hinton"), rtol=1e-6
    )
    _, out = run("ada_alpha", args(ada_alpha_level="instance", ada_alpha_instance_mode="correct", alpha=0.9))
    a = 0.9 * (T.numpy().argmax(-1) == Y.numpy())  # teacher right on rows 1? [1, 0, 2] vs [0, 2, 1] -> none
    np.testing.assert_allclose(
        out.per_example.numpy(), kd_hand(S.numpy(), T.numpy(), Y, a, 2.0, "hinton"), rtol=1e-6
    )


@pytest.mark.parametrize("margin_on", ["one_hot", "both"])
def test_ada_margin_class_level(margin_on):
    r = np.array([0.9, 0.3, 0.6])
    _, out = run(
        "ada_margin", args(margin_on=margin_on, margin_scale=2.0, kd_convention="mix"), reliability=r.tolist()
    )
    u = 1 - r
    d = 2.0 * (u[:, None] - u[None, :])
    adjusted = S.numpy() + d[Y.numpy()]
    expected = kd_hand(
        S.numpy(),
        T.numpy(),
        Y,
        0.4,
        2.0,
        "mix",
        s_onehot=adjusted,
        s_teacher=adjusted if margin_on == "both" else None,
    )
    np.testing.assert_allclose(out.per_example.numpy(), expected, rtol=1e-6)
    # the one-hot part is the margin softmax loss log(1 + sum_{j!=y} exp(D_yj + s_j - s_y))
    s, y = S.numpy()[0], 0
    margin_loss = math.log(1 + sum(math.exp(d[y, j] + s[j] - s[y]) for j in (1, 2)))
    assert out.components["one_hot"][0].item() == pytest.approx(0.6 * margin_loss, rel=1e-6)


def test_ada_margin_instance_level():
    _, out = run("ada_margin", args(margin_level="instance", margin_scale=0.5))
    t = T.numpy()
    rows = 0.5 * (t - t[np.arange(3), Y.numpy()][:, None])
    expected = kd_hand(S.numpy(), t, Y, 0.4, 2.0, "hinton", s_onehot=S.numpy() + rows)
    np.testing.assert_allclose(out.per_example.numpy(), expected, rtol=1e-6)


def test_balanced_kd_forms():
    _, out = run("balanced_kd", args(kd_convention="mix", logit_adjustment_tau=1.0))
    adjusted = S.numpy() + np.log(PRIOR)
    q = 0.6 * onehot(Y) + 0.4 * softmax(T.numpy(), 2.0)
    np.testing.assert_allclose(out.per_example.numpy(), ce_soft(q, adjusted), rtol=1e-6)
    _, out = run("balanced_kd", args(kd_convention="mix", balanced_form="reweighted"))
    w = 1 / (3 * PRIOR[Y.numpy()])
    np.testing.assert_allclose(out.per_example.numpy(), w * ce_soft(q, S.numpy()), rtol=1e-6)


def test_balanced_teacher_is_logit_adjusted_ce():
    _, out = run("balanced", args(logit_adjustment_tau=1.0))
    np.testing.assert_allclose(
        out.per_example.numpy(), ce_soft(onehot(Y), S.numpy() + np.log(PRIOR)), rtol=1e-6
    )
    _, out = run("balanced", args(balanced_form="posthoc"))
    np.testing.assert_allclose(out.per_example.numpy(), ce_soft(onehot(Y), S.numpy()), rtol=1e-6)


def test_robust_kd_loss_and_update():
    a = args(kd_convention="mix", dro_tradeoff=0.5, dro_base="uniform", dro_tau=1.0, dro_step_size=0.2)
    obj, out = run("robust_kd", a)
    lam = np.full(3, 1 / 3)
    w = 0.5 * np.full(3, 1 / 3) + 0.5 * lam
    adjusted = S.numpy() - (np.log(w) - np.log(PRIOR))
    q = 0.6 * onehot(Y) + 0.4 * softmax(T.numpy(), 2.0)
    np.testing.assert_allclose(out.per_example.numpy(), ce_soft(q, adjusted), rtol=1e-6)
    # one exponentiated-gradient step on a known error vector
    obj.update(
        torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64), torch.tensor([4.0, 4.0, 4.0], dtype=torch.float64)
    )
    raw = lam * np.exp(0.2 * np.array([0.0, 0.25, 0.75]))
    np.testing.assert_allclose(obj.multipliers.numpy(), raw / raw.sum(), rtol=1e-6)
    assert out.scalars["class_weight_min"] == pytest.approx(1 / 3)
    # the loss now follows the new weights
    w = 0.5 / 3 + 0.5 * raw / raw.sum()
    out = obj.compute(S, Y, T)
    np.testing.assert_allclose(
        out.per_example.numpy(), ce_soft(q, S.numpy() - np.log(w) + np.log(PRIOR)), rtol=1e-5
    )
    # state round trip
    other = get_objective("robust_kd")(a, COUNTS)
    other.load_state_dict(obj.state_dict())
    torch.testing.assert_close(other.multipliers, obj.multipliers)
    assert other.num_updates == 1


def test_robust_kd_at_zero_tradeoff_is_plain_kd():
    _, robust = run("robust_kd", args(dro_tradeoff=0.0, dro_base="prior"))
    _, kd = run("kd", args())
    torch.testing.assert_close(robust.per_example, kd.per_example, rtol=1e-5, atol=1e-6)


def test_dro_teacher_uses_one_hot_targets():
    obj, out = run("dro", args(dro_tradeoff=1.0))
    assert not obj.uses_teacher
    w = np.full(3, 1 / 3)
    np.testing.assert_allclose(
        out.per_example.numpy(), ce_soft(onehot(Y), S.numpy() - np.log(w) + np.log(PRIOR)), rtol=1e-6
    )


def test_tang_diagnostics():
    _, out = run("label_smoothing", args(label_smoothing_epsilon=0.3))
    np.testing.assert_allclose(out.per_example.numpy(), ce_soft(0.7 * onehot(Y) + 0.1, S.numpy()), rtol=1e-6)
    _, out = run("kd_pt", args(kd_convention="mix"))
    p = softmax(T.numpy(), 2.0)
    pt = np.repeat(((1 - p[np.arange(3), Y.numpy()]) / 2)[:, None], 3, axis=1)
    pt[np.arange(3), Y.numpy()] = p[np.arange(3), Y.numpy()]
    np.testing.assert_allclose(
        out.per_example.numpy(), kd_hand(S.numpy(), None, Y, 0.4, 2.0, "mix", targets=pt), rtol=1e-6
    )
    sim = torch.softmax(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)), -1).double()
    _, out = run("kd_sim", args(kd_convention="mix"), similarity=sim)
    targets = sim.numpy()[Y.numpy()]
    np.testing.assert_allclose(
        out.per_example.numpy(), kd_hand(S.numpy(), None, Y, 0.4, 2.0, "mix", targets=targets), rtol=1e-6
    )


def test_holdout_needs():
    assert get_objective("ada_alpha")(args(), COUNTS).needs_holdout
    assert not get_objective("ada_alpha")(args(ada_alpha_level="instance"), COUNTS).needs_holdout
    assert get_objective("robust_kd")(args(), COUNTS).needs_holdout
    assert get_objective("dro")(args(), COUNTS).needs_holdout
    assert not get_objective("kd")(args(), COUNTS).needs_holdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"objective": "nope"}, "Unknown objective 'nope'. Registered objectives:"),
        ({"alpha": 1.5}, "alpha must be in \\[0, 1\\]"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"kd_convention": "other"}, "kd_convention='other' is not one of"),
        ({"dro_tradeoff": -0.1}, "dro_tradeoff must be in"),
        ({"teacher_logit_mode": "shift"}, "needs teacher_logit_shift"),
        ({"label_smoothing_factor": 0.1}, "objective='label_smoothing'"),
    ],
)
def test_arguments_are_validated(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        DistillationArguments(output_dir=str(tmp_path), report_to="none", **overrides)


def test_objective_params_are_recorded(tmp_path):
    a = DistillationArguments(
        output_dir=str(tmp_path), report_to="none", objective="robust_kd", dro_tradeoff=0.3
    )
    params = a.objective_params()
    assert params["dro_tradeoff"] == 0.3 and params["alpha"] == 0.5 and "hub_token" not in params


# ------------------------------------------------------------------------------------------------------
# Decisions on offsets, temperatures and teacher reliability (see the docstrings of hf_fairkd.objectives)
# ------------------------------------------------------------------------------------------------------


def kl(p, z, temperature=1.0):
    """KL(p || softmax(z / T)) per row, by hand."""
    return (p * (np.log(p) - np.log(softmax(z, temperature)))).sum(-1)


def test_hinton_offsets_are_added_after_the_temperature():
    # balanced_kd at T = 4: (1-a) CE(e_y, s + tau log pi) + a T^2 KL(p_t^T || softmax(s/T + tau log pi))
    a = args(kd_convention="hinton", temperature=4.0, logit_adjustment_tau=1.5, alpha=0.3)
    _, out = run("balanced_kd", a)
    s, t, offset = S.numpy(), T.numpy(), 1.5 * np.log(PRIOR)
    p = softmax(t, 4.0)
    q = softmax(s / 4.0 + offset)
    expected = 0.7 * ce_soft(onehot(Y), s + offset) + 0.3 * 16.0 * (p * (np.log(p) - np.log(q))).sum(-1)
    np.testing.assert_allclose(out.per_example.numpy(), expected, rtol=1e-6)
    # row 0 by hand, term by term
    s0, p0, off = s[0], p[0], offset
    z = s0 / 4.0 + off
    log_q0 = z - math.log(sum(math.exp(v) for v in z))
    distill0 = 16.0 * sum(p0[j] * (math.log(p0[j]) - log_q0[j]) for j in range(3))
    assert out.components["distill"][0].item() == pytest.approx(0.3 * distill0, rel=1e-6)


@pytest.mark.parametrize("name", ["balanced_kd", "robust_kd"])
def test_hinton_offsets_mean_the_same_at_every_temperature(name):
    # student logits T*z and teacher logits T*u give the same tempered distributions at every T; the offset must
    # then shift them by the same amount, so the teacher term divided by a T^2 does not depend on T.
    z, u = S / 2, T / 2
    values = []
    for temperature in (1.0, 2.0, 4.0):
        obj = get_objective(name)(args(temperature=temperature, alpha=0.5, dro_base="uniform"), COUNTS)
        out = obj.compute(temperature * z, Y, temperature * u)
        values.append(out.components["distill"].numpy() / (0.5 * temperature**2))
    offset = np.log(PRIOR) if name == "balanced_kd" else np.log(PRIOR) + np.log(3)  # -log c, uniform lambda
    expected = kl(softmax(u.numpy()), z.numpy() + offset)
    for got in values:
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_ada_margin_on_both_terms_in_the_hinton_convention():
    r = np.array([0.9, 0.3, 0.6])
    a = args(margin_on="both", margin_scale=2.0, kd_convention="hinton", temperature=3.0)
    _, out = run("ada_margin", a, reliability=r.tolist())
    d = 2.0 * ((1 - r)[:, None] - (1 - r)[None, :])[Y.numpy()]
    s, p = S.numpy(), softmax(T.numpy(), 3.0)
    expected = 0.6 * ce_soft(onehot(Y), s + d) + 0.4 * 9.0 * kl(p, s / 3.0 + d)
    np.testing.assert_allclose(out.per_example.numpy(), expected, rtol=1e-6)


def test_logit_adjustment_is_the_special_case_margin():
    # ada_margin with D_yj = tau (log pi_j - log pi_y) is logit adjustment: u_y = -log pi_y, g = tau
    tau = 1.5
    r = (1 + np.log(PRIOR)).tolist()
    for convention in ("hinton", "mix"):
        a = args(margin_on="both", margin_scale=tau, logit_adjustment_tau=tau, kd_convention=convention)
        _, margin = run("ada_margin", a, reliability=r)
        _, adjusted = run("balanced_kd", a)
        torch.testing.assert_close(margin.per_example, adjusted.per_example, rtol=1e-5, atol=1e-7)
    s, y = S.numpy(), Y.numpy()
    by_hand = [
        math.log(
            1
            + sum(
                math.exp(tau * (math.log(PRIOR[j]) - math.log(PRIOR[y[i]])) + s[i, j] - s[i, y[i]])
                for j in range(3)
                if j != y[i]
            )
        )
        for i in range(3)
    ]
    np.testing.assert_allclose(margin.components["one_hot"].numpy(), 0.6 * np.array(by_hand), rtol=1e-6)


def test_kd_sim_targets_are_not_tempered_again():
    sim = torch.softmax(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)), -1).double()
    targets = sim.numpy()[Y.numpy()]
    for temperature in (1.0, 4.0):
        _, out = run("kd_sim", args(kd_convention="hinton", temperature=temperature), similarity=sim)
        expected = 0.6 * ce_soft(onehot(Y), S.numpy()) + 0.4 * kl(targets, S.numpy())  # T = 1, no T^2
        np.testing.assert_allclose(out.per_example.numpy(), expected, rtol=1e-6)
    assert "temperature" not in get_objective("kd_sim").param_names


# Teacher rows: row 0 right raw and adjusted; row 1 right only after prior adjustment; row 2 right only raw.
T_RELIABILITY = torch.tensor([[3.0, 1.0, 0.0], [0.5, 0.2, 0.0], [0.0, 2.0, 1.0]], dtype=torch.float64)
Y_RELIABILITY = torch.tensor([0, 2, 1])


@pytest.mark.parametrize("mode", ["raw", "prior_adjusted"])
def test_ada_alpha_instance_reliability_uses_the_targets_the_student_sees(mode):
    t = T_RELIABILITY.numpy() - (np.log(PRIOR) if mode == "prior_adjusted" else 0.0)
    right = t.argmax(-1) == Y_RELIABILITY.numpy()
    assert right.tolist() == ([True, True, False] if mode == "prior_adjusted" else [True, False, True])
    for instance_mode in ("prob", "correct"):
        a = args(
            ada_alpha_level="instance",
            ada_alpha_instance_mode=instance_mode,
            alpha=0.9,
            teacher_logit_mode=mode,
        )
        obj = get_objective("ada_alpha")(a, COUNTS)
        out = obj.compute(S, Y_RELIABILITY, T_RELIABILITY)
        alpha = 0.9 * (softmax(t)[np.arange(3), Y_RELIABILITY.numpy()] if instance_mode == "prob" else right)
        expected = kd_hand(S.numpy(), t, Y_RELIABILITY, alpha, 2.0, "hinton")
        np.testing.assert_allclose(out.per_example.numpy(), expected, rtol=1e-5)
        assert out.scalars["alpha_mean"] == pytest.approx(alpha.mean(), rel=1e-6)


def test_ada_margin_instance_level_uses_the_adjusted_teacher():
    a = args(
        margin_level="instance", margin_scale=0.5, teacher_logit_mode="prior_adjusted", kd_convention="mix"
    )
    _, out = run("ada_margin", a)
    t = T.numpy() - np.log(PRIOR)
    rows = 0.5 * (t - t[np.arange(3), Y.numpy()][:, None])
    expected = kd_hand(S.numpy(), t, Y, 0.4, 2.0, "mix", s_onehot=S.numpy() + rows)
    np.testing.assert_allclose(out.per_example.numpy(), expected, rtol=1e-6)


def test_robust_kd_with_dro_tau():
    a = args(kd_convention="mix", dro_tradeoff=0.6, dro_base="prior", dro_tau=0.5)
    obj, out = run("robust_kd", a)
    obj.multipliers = torch.tensor([0.2, 0.3, 0.5])
    out = obj.compute(S, Y, T)
    w = 0.4 * PRIOR + 0.6 * np.array([0.2, 0.3, 0.5])
    c = w / PRIOR**0.5
    q = 0.6 * onehot(Y) + 0.4 * softmax(T.numpy(), 2.0)
    np.testing.assert_allclose(out.per_example.numpy(), ce_soft(q, S.numpy() - np.log(c)), rtol=1e-6)


@pytest.mark.parametrize("name", ["robust_kd", "dro"])
def test_dro_update_keeps_the_weight_of_classes_absent_from_the_holdout_batch(name):
    obj = get_objective(name)(args(dro_step_size=0.5), COUNTS)
    obj.multipliers = torch.tensor([0.5, 0.3, 0.2])
    # class 1 absent from the batch (weight sum 0): errors 2/4 for class 0, 3/3 for class 2
    obj.update(
        torch.tensor([2.0, 0.0, 3.0], dtype=torch.float64), torch.tensor([4.0, 0.0, 3.0], dtype=torch.float64)
    )
    raw = np.array([0.5 * math.exp(0.5 * 0.5), 0.2 * math.exp(0.5 * 1.0)])
    seen = 0.7 * raw / raw.sum()  # the seen classes share the mass they held (0.5 + 0.2)
    assert obj.multipliers[1].item() == torch.tensor(0.3).item()  # exactly
    np.testing.assert_allclose(obj.multipliers.numpy()[[0, 2]], seen, rtol=1e-6)
    assert obj.multipliers.sum().item() == pytest.approx(1.0, abs=1e-6)
    # every class absent: nothing moves
    before = obj.multipliers.clone()
    obj.update(torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(obj.multipliers, before)


def test_dro_teacher_with_teacher_weighted_errors_is_refused(tmp_path):
    with pytest.raises(ValueError, match="objective='dro' trains a teacher and has no teacher"):
        DistillationArguments(
            output_dir=str(tmp_path), report_to="none", objective="dro", dro_error_weighting="teacher"
        )
    # the student objective reads a teacher: allowed
    DistillationArguments(
        output_dir=str(tmp_path), report_to="none", objective="robust_kd", dro_error_weighting="teacher"
    )


def test_teacher_stage_does_not_inherit_teacher_weighted_dro_errors(tmp_path):
    from hf_fairkd.run.stages import stage_args

    student = DistillationArguments(
        output_dir=str(tmp_path), report_to="none", objective="robust_kd", dro_error_weighting="teacher"
    )
    for teacher_objective in ("dro", "erm", "balanced"):
        stage = stage_args(student, output_dir=str(tmp_path / "t"), objective=teacher_objective)
        assert stage.objective == teacher_objective and stage.dro_error_weighting == "label"
    assert student.dro_error_weighting == "teacher"  # the student's own arguments are untouched
    baseline = stage_args(student, output_dir=str(tmp_path / "s"))
    assert baseline.dro_error_weighting == "teacher"


# --- pinned by mutation testing (docs/MUTATION.md) ---------------------------------------------------


@pytest.mark.parametrize(
    "name, overrides, uses",
    [
        ("kd", {}, []),
        ("kd", {"teacher_logit_mode": "prior_adjusted"}, ["teacher_logit_mode='prior_adjusted'"]),
        ("kd", {"teacher_logit_mode": "shift"}, []),
        ("ce", {"teacher_logit_mode": "prior_adjusted"}, []),  # no teacher: its logit mode is not read
        ("kd_sim", {"teacher_logit_mode": "prior_adjusted"}, []),  # targets from weights, not logits
        ("balanced_kd", {}, ["balanced_form='logit_adjusted'"]),
        (
            "balanced_kd",
            {"balanced_form": "reweighted", "teacher_logit_mode": "prior_adjusted"},
            ["balanced_form='reweighted'", "teacher_logit_mode='prior_adjusted'"],
        ),
        ("robust_kd", {"dro_tau": 0.0, "dro_base": "uniform"}, []),
        ("robust_kd", {"dro_tau": 0.5, "dro_base": "uniform"}, ["dro_tau=0.5 (c_y = w_y / pi_y^tau)"]),
        ("robust_kd", {"dro_tau": 0.0, "dro_base": "prior"}, ["dro_base='prior'"]),
        (
            "robust_kd",
            {"dro_tau": 1.0, "dro_base": "prior", "teacher_logit_mode": "prior_adjusted"},
            ["dro_tau=1.0 (c_y = w_y / pi_y^tau)", "dro_base='prior'", "teacher_logit_mode='prior_adjusted'"],
        ),
        ("dro", {"dro_tau": 0.0, "dro_base": "uniform", "teacher_logit_mode": "prior_adjusted"}, []),
    ],
)
def test_prior_uses_name_every_setting_that_reads_the_prior(name, overrides, uses):
    assert get_objective(name)(args(**overrides), COUNTS).prior_uses() == uses


def test_check_prior_refuses_an_empty_class_only_when_the_prior_is_read():
    counts = torch.tensor([5.0, 0.0, 1.0])  # class 1 has no training rows; class 2 has one (fine)
    for name, overrides in (("kd", {}), ("robust_kd", {"dro_tau": 0.0, "dro_base": "uniform"})):
        get_objective(name)(args(**overrides), counts).check_prior(["a", "b", "c"])  # prior not read
    get_objective("balanced_kd")(args(), COUNTS).check_prior()  # prior read, no empty class
    obj = get_objective("robust_kd")(args(dro_tau=0.5, dro_base="prior"), counts)
    with pytest.raises(ValueError) as info:
        obj.check_prior(["a", "b", "c"])
    message = str(info.value)
    assert message.startswith("Classes with no training rows: ['b'] (ids [1]). objective='robust_kd' reads")
    assert "through dro_tau=0.5 (c_y = w_y / pi_y^tau) and dro_base='prior', and" in message
    with pytest.raises(ValueError, match=r"rows: \[1\] \(ids \[1\]\)"):  # no names: the ids stand in
        obj.check_prior()
    many = get_objective("balanced_kd")(args(), torch.tensor([1.0] + [0.0] * 25))
    with pytest.raises(ValueError) as info:
        many.check_prior([f"k{i}" for i in range(26)])
    shown, ids = [f"k{i}" for i in range(1, 21)], list(range(1, 21))
    assert str(info.value).startswith(f"Classes with no training rows: {shown} (ids {ids}).")


def test_register_objective_names_and_refuses_duplicates(monkeypatch):
    from hf_fairkd.objectives import base

    monkeypatch.setattr(base, "OBJECTIVES", dict(base.OBJECTIVES))

    @base.register_objective("test_only")
    class TestOnly(base.OneHot):
        pass

    assert TestOnly.name == "test_only" and base.get_objective("test_only") is TestOnly
    with pytest.raises(ValueError, match="'test_only' is already registered"):
        base.register_objective("test_only")(base.OneHot)
    assert base.get_objective("test_only") is TestOnly
    # the lists are read from the registry when asked, not frozen at import
    assert "test_only" in base.student_objectives() and "test_only" in base.teacher_free_objectives()
    assert "test_only" not in base.teacher_objectives()


def test_fresh_objective_state_prior_and_state_dict_round_trip():
    obj = get_objective("ada_alpha")(args(), torch.tensor([5.0, 0.0, 1.0]))
    assert obj.teacher_reliability is None and obj.class_similarity is None and obj.state_dict() == {}
    # the empty class gets a tiny prior; the others keep n_y / n
    np.testing.assert_allclose(obj.prior.numpy()[[0, 2]], [5 / 6, 1 / 6], rtol=1e-6)
    assert obj.log_prior[1].item() == pytest.approx(math.log(1e-12 / 6), rel=1e-6)
    obj.teacher_reliability = torch.tensor([0.9, 0.3, 0.6], dtype=torch.float64)
    state = obj.state_dict()
    assert set(state) == {"teacher_reliability"}
    other = get_objective("ada_alpha")(args(), COUNTS)
    other.load_state_dict(state)
    assert other.teacher_reliability.dtype == torch.float32
    torch.testing.assert_close(other.teacher_reliability, torch.tensor([0.9, 0.3, 0.6]))
    with pytest.raises(RuntimeError, match="kd_sim needs the teacher's class similarities"):
        run("kd_sim", args())


def test_shifted_teacher_and_teacher_probs_at_a_given_temperature():
    shift = [1.0, 0.0, -2.0]
    obj, out = run("kd", args(teacher_logit_mode="shift", teacher_logit_shift=shift, kd_convention="mix"))
    t = T.numpy() + np.array(shift)
    np.testing.assert_allclose(out.per_example.numpy(), kd_hand(S.numpy(), t, Y, 0.4, 2.0, "mix"), rtol=1e-6)
    # the trainer's teacher-weighted DRO errors ask for T = 1 whatever args.temperature is
    np.testing.assert_allclose(obj.teacher_probs(T, temperature=1.0).numpy(), softmax(t), rtol=1e-6)
    np.testing.assert_allclose(obj.teacher_probs(T).numpy(), softmax(t, 2.0), rtol=1e-6)


def test_ada_alpha_class_level_threshold_is_passed_on():
    r = [0.9, 0.3, 0.6]
    _, out = run("ada_alpha", args(ada_alpha_mapping="threshold", ada_alpha_threshold=0.7), reliability=r)
    a = 0.4 * (np.array(r) >= 0.7)[Y.numpy()]
    np.testing.assert_allclose(
        out.per_example.numpy(), kd_hand(S.numpy(), T.numpy(), Y, a, 2.0, "hinton"), rtol=1e-6
    )


def test_components_and_scalars_follow_the_loss():
    _, out = run("ce", args())
    assert set(out.components) == {"one_hot"} and out.scalars == {}
    torch.testing.assert_close(out.components["one_hot"], out.per_example)
    _, out = run("balanced", args(balanced_form="posthoc"))
    assert out.scalars == {}  # a teacher objective has no alpha to report
    _, out = run("label_smoothing", args())
    assert set(out.components) == {"one_hot"} and out.scalars == {}
    torch.testing.assert_close(out.components["one_hot"], out.per_example)
    # re-weighted: every logged part carries the same weight as the loss
    _, out = run("balanced_kd", args(kd_convention="mix", balanced_form="reweighted"))
    w = 1 / (3 * PRIOR[Y.numpy()])
    q_t = softmax(T.numpy(), 2.0)
    np.testing.assert_allclose(
        out.components["one_hot"].numpy(), w * 0.6 * ce_soft(onehot(Y), S.numpy()), rtol=1e-6
    )
    np.testing.assert_allclose(
        out.components["distill"].numpy(), w * 0.4 * ce_soft(q_t, S.numpy()), rtol=1e-6
    )


def test_dro_update_with_fractional_weight_sums_and_the_logged_weights():
    # teacher-weighted holdout errors give fractional weight sums (here 0.5 for class 2)
    a = args(dro_step_size=1.0, dro_tradeoff=1.0, dro_base="uniform")
    obj = get_objective("robust_kd")(a, COUNTS)
    obj.update(
        torch.tensor([1.0, 0.0, 0.25], dtype=torch.float64),
        torch.tensor([4.0, 2.0, 0.5], dtype=torch.float64),
    )
    raw = np.exp(np.array([0.25, 0.0, 0.5]))
    np.testing.assert_allclose(obj.multipliers.numpy(), raw / raw.sum(), rtol=1e-6)
    obj.update(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    assert obj.num_updates == 2
    w = obj.class_weights().numpy()
    stats = obj.weight_stats()
    assert stats["class_weight_min"] == pytest.approx(w.min()) and stats["class_weight_max"] == pytest.approx(
        w.max()
    )
    assert stats["class_weight_entropy"] == pytest.approx(-(w * np.log(w)).sum(), rel=1e-6)
    assert stats["class_weight_argmax"] == 2.0
    assert set(obj.compute(S, Y, T).scalars) == {"alpha_mean", *stats}
    assert obj.log_values() == stats  # the trainer logs their current value, not an average over steps


def test_every_choice_field_is_validated_against_its_own_choices(tmp_path):
    """One table: each field declared with choices refuses a value outside them, naming field and choices."""
    import dataclasses

    from transformers import TrainingArguments

    fields = [
        f
        for f in dataclasses.fields(DistillationArguments)
        if f.metadata.get("choices") and f.name not in TrainingArguments.__dataclass_fields__
    ]
    assert len(fields) >= 12
    for spec in fields:
        with pytest.raises(ValueError, match=rf"{spec.name}='not-a-choice' is not one of"):
            DistillationArguments(output_dir=str(tmp_path), report_to=[], **{spec.name: "not-a-choice"})


# ---- the objectives' hooks, with a fake context (no trainer) ----


class FakeContext:
    """Stands in for `hooks.ObjectiveContext`: batches are dicts of tensors; `gather` is the identity (one process)."""

    def __init__(self, batches, global_step=0, max_steps=10, holdout=None, student=None, similarity=None):
        self.batches = batches
        self.global_step, self.max_steps = global_step, max_steps
        self.holdout = holdout
        self.asked = []  # the holdout indices of each holdout_batches call
        self.gathered = 0
        self.teacher = SimpleNamespace(class_similarity=lambda rho: ("similarity", rho))
        self.student = student

    def holdout_batches(self, indices=None):
        self.asked.append(None if indices is None else list(indices))
        yield from self.batches

    def labels(self, batch):
        return batch["labels"]

    def teacher_logits(self, batch):
        return batch["teacher"]

    def student_logits(self, batch):
        return batch["student"]

    def gather(self, tensor):
        self.gathered += 1
        return tensor

    def student_model(self):
        return self.student


def reliability_batches():
    # 2 batches; teacher argmax per row: [0, 1, 0 | 2, 1]; labels [0, 0, 0 | 2, 1]; class 1: 1 row, class 2: 1
    # a third class with no holdout rows is added by num_classes=4 in the test
    teacher = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [2.0, 1.0, 0.0, 0.0]])
    teacher2 = torch.tensor([[0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    return [
        {"teacher": teacher, "labels": torch.tensor([0, 0, 0])},
        {"teacher": teacher2, "labels": torch.tensor([2, 1])},
    ]


@pytest.mark.parametrize("name,level", [("ada_alpha", "ada_alpha_level"), ("ada_margin", "margin_level")])
def test_class_reliability_hook_measures_the_teacher_holdout_recall(name, level, caplog):
    caplog.set_level("INFO", logger="hf_fairkd.objectives.distillation")
    counts = torch.tensor([60.0, 30.0, 10.0, 5.0])
    obj = get_objective(name)(args(reliability_pseudo_count=2.0, **{level: "class"}), counts)
    ctx = FakeContext(reliability_batches())
    obj.on_train_begin(ctx)
    assert ctx.asked == [None]  # all holdout rows
    correct = np.array(
        [2.0, 0.0, 1.0, 0.0]
    )  # class 0: rows 0, 2 right, row 1 wrong; class 1 wrong; class 2 right
    n = np.array([3.0, 1.0, 1.0, 0.0])
    overall = correct.sum() / n.sum()
    expected = (correct + 2.0 * overall) / (n + 2.0)
    assert obj.teacher_reliability.dtype == torch.float32
    np.testing.assert_allclose(obj.teacher_reliability.numpy(), expected, rtol=1e-6)
    logged = [r.getMessage() for r in caplog.records if r.name == "hf_fairkd.objectives.distillation"]
    assert logged == [f"Teacher per-class holdout recall: {obj.teacher_reliability.tolist()}"]
    # already measured (or restored): the hook keeps it and reads nothing
    obj.teacher_reliability = torch.tensor([0.1, 0.2, 0.3, 0.4])
    ctx = FakeContext(reliability_batches())
    obj.on_train_begin(ctx)
    assert ctx.asked == [] and obj.teacher_reliability.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    # instance level: nothing to measure
    obj = get_objective(name)(args(**{level: "instance"}), counts)
    ctx = FakeContext(reliability_batches())
    obj.on_train_begin(ctx)
    assert ctx.asked == [] and obj.teacher_reliability is None


def test_class_reliability_hook_reads_the_teacher_the_student_sees():
    # with a prior-adjusted teacher, the argmax (and so the recall) is that of t - tau log pi
    counts = torch.tensor([90.0, 10.0])
    obj = get_objective("ada_alpha")(
        args(teacher_logit_mode="prior_adjusted", reliability_pseudo_count=0.0), counts
    )
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # raw argmax 0; adjusted: 1 - log .9 < 0 - log .1 -> class 1
    ctx = FakeContext([{"teacher": t, "labels": torch.tensor([1, 1])}])
    obj.on_train_begin(ctx)
    np.testing.assert_allclose(obj.teacher_reliability.numpy(), [0.0, 1.0], atol=1e-6)


def test_kd_sim_hook_reads_the_teacher_class_similarity_once():
    obj = get_objective("kd_sim")(args(kd_sim_rho=0.25), COUNTS)
    obj.on_train_begin(FakeContext([]))
    assert obj.class_similarity == ("similarity", 0.25)
    obj.class_similarity = "kept"
    obj.on_train_begin(FakeContext([]))
    assert obj.class_similarity == "kept"


class TinyClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(num_labels=3)
        self.classifier = torch.nn.Linear(2, 3)
        with torch.no_grad():
            self.classifier.bias.copy_(torch.tensor([0.5, -0.5, 1.0]))


@pytest.mark.parametrize("form", ["posthoc", "logit_adjusted", "reweighted"])
def test_posthoc_balanced_teacher_shifts_the_classifier_bias_after_training(form):
    model = TinyClassifier()
    obj = get_objective("balanced")(args(balanced_form=form, logit_adjustment_tau=0.5), COUNTS)
    obj.on_train_end(FakeContext([], student=model))
    expected = np.array([0.5, -0.5, 1.0])
    if form == "posthoc":
        expected = expected - 0.5 * np.log(PRIOR)
    np.testing.assert_allclose(model.classifier.bias.detach().numpy(), expected, rtol=1e-6)


def dro_batches():
    # student predictions [0, 1, 1 | 2]; labels [0, 0, 1 | 1]
    s1 = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 3.0, 0.0]])
    s2 = torch.tensor([[0.0, 0.0, 3.0]])
    t1 = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    t2 = torch.tensor([[0.0, 1.0, 0.0]])
    return [
        {"student": s1, "teacher": t1, "labels": torch.tensor([0, 0, 1])},
        {"student": s2, "teacher": t2, "labels": torch.tensor([1])},
    ]


@pytest.mark.parametrize("name", ["robust_kd", "dro"])
def test_dro_hook_updates_at_steps_k_2k_before_the_last(name):
    a = args(dro_update_every=3, dro_step_size=1.0, dro_base="uniform", seed=7, dro_holdout_batch_size=4)
    for step, updates in [(0, 0), (1, 0), (2, 0), (3, 1), (4, 0), (6, 1), (9, 0), (12, 0)]:
        obj = get_objective(name)(a, COUNTS)
        ctx = FakeContext(dro_batches(), global_step=step, max_steps=9, holdout=list(range(10)))
        obj.on_step_end(ctx)
        assert obj.num_updates == updates, step
        assert len(ctx.asked) == updates


def test_dro_hook_errors_from_the_holdout_batches():
    a = args(dro_update_every=2, dro_step_size=1.0, dro_base="uniform", seed=3, dro_holdout_batch_size=4)
    obj = get_objective("robust_kd")(a, COUNTS)
    ctx = FakeContext(dro_batches(), global_step=4, max_steps=10, holdout=list(range(10)))
    obj.on_step_end(ctx)
    # the holdout rows: min(batch size, n) drawn without replacement from (seed, update index), sorted
    rng = np.random.default_rng([3, 2])
    assert ctx.asked == [sorted(rng.choice(10, size=4, replace=False).tolist())]
    # class errors: 0: 1/2, 1: 1/2, 2: none seen (keeps its multiplier)
    assert obj.num_updates == 1
    np.testing.assert_allclose(obj.multipliers.numpy(), [1 / 3, 1 / 3, 1 / 3], rtol=1e-6)  # equal errors
    assert ctx.gathered == 4  # predictions and labels of both batches
    # unequal: a larger holdout batch size than the holdout takes every row once
    a = args(dro_update_every=1, dro_step_size=1.0, dro_base="uniform", seed=0, dro_holdout_batch_size=50)
    obj = get_objective("robust_kd")(a, COUNTS)
    batches = dro_batches()
    batches[1]["student"] = torch.tensor([[0.0, 3.0, 0.0]])  # class 1 now 0/2 wrong
    ctx = FakeContext(batches, global_step=1, max_steps=10, holdout=list(range(5)))
    obj.on_step_end(ctx)
    assert ctx.asked == [[0, 1, 2, 3, 4]]
    raw = np.array([math.exp(0.5), 1.0])
    seen = (2 / 3) * raw / raw.sum()
    np.testing.assert_allclose(obj.multipliers.numpy(), [seen[0], seen[1], 1 / 3], rtol=1e-6)


def test_dro_hook_teacher_weighted_errors_use_the_teacher_at_temperature_one():
    a = args(
        dro_update_every=1,
        dro_step_size=1.0,
        dro_base="uniform",
        seed=0,
        dro_holdout_batch_size=50,
        dro_error_weighting="teacher",
        temperature=4.0,
    )
    obj = get_objective("robust_kd")(a, COUNTS)
    batches = dro_batches()
    ctx = FakeContext(batches, global_step=1, max_steps=10, holdout=list(range(4)))
    obj.on_step_end(ctx)
    pred = np.array([0, 1, 1, 2])  # labels [0, 0, 1, 1] do not enter teacher-weighted errors
    w = softmax(torch.cat([b["teacher"] for b in batches]).numpy())  # T = 1, not args.temperature
    # example i counts for class j with weight p_t(j | x_i), and is wrong for j when it does not predict j
    wrong = (pred[:, None] != np.arange(3)[None, :]) * w
    errors = wrong.sum(0) / w.sum(0)
    assert ctx.gathered == 6  # predictions, labels and teacher probabilities of both batches
    raw = np.exp(errors) / 3
    np.testing.assert_allclose(obj.multipliers.numpy(), raw / raw.sum(), rtol=1e-5)


# ---- hooks.ObjectiveContext / ObjectiveCallback, with a fake trainer ----


class RecordingModel(torch.nn.Module):
    def __init__(self, outputs="dict"):
        super().__init__()
        self.outputs = outputs
        self.seen = []  # (training, grad enabled, inputs) of each forward

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled(), x))
        logits = (x * 2).double()
        return {"logits": logits} if self.outputs == "dict" else (logits, "other")


class FakeDataset(list):
    def __init__(self, rows, with_select=True):
        super().__init__(rows)
        self.selected = []
        if with_select:
            self.select = self._select

    def _select(self, indices):
        self.selected.append(indices)
        return [self[i] for i in indices]


class FakeAccelerator:
    def __init__(self, num_processes=1):
        self.num_processes = num_processes
        self.reduced = []

    def unwrap_model(self, model):
        return ("unwrapped", model)

    def gather_for_metrics(self, tensor):
        return torch.cat([tensor, tensor])

    def reduce(self, tensor, reduction):
        self.reduced.append((tensor.dtype, tensor.device.type, reduction))
        return tensor * self.num_processes


def fake_trainer(holdout=None, model=None, num_processes=1):
    calls = []

    class Teacher:
        def split_batch(self, batch):
            return {"x": batch["x"]}, batch["labels"], batch.get("cached")

        def teacher_inputs(self, batch):
            return ("teacher inputs", batch["x"])

        def logits(self, inputs, cached, step):
            return ("teacher logits", inputs, cached, step)

    class Objective:
        def __getattr__(self, name):
            return lambda ctx: calls.append((name, ctx))

    def get_test_dataloader(dataset):
        calls.append(("loader", dataset))
        torch.rand(1)  # the Trainer's loader draws a seed from the global RNG
        return [{"x": torch.tensor([float(r)]), "labels": torch.tensor([r])} for r in dataset]

    trainer = SimpleNamespace(
        args=SimpleNamespace(objective="robust_kd", device=torch.device("cpu")),
        state=SimpleNamespace(global_step=5, max_steps=20),
        holdout_dataset=holdout,
        teacher_source=Teacher(),
        get_test_dataloader=get_test_dataloader,
        model_wrapped=model,
        model="inner model",
        accelerator=FakeAccelerator(num_processes),
        objective=Objective(),
    )
    return trainer, calls


def test_context_exposes_the_trainer_state():
    from hf_fairkd.objectives import ObjectiveContext

    holdout = FakeDataset([1, 2])
    trainer, _ = fake_trainer(holdout)
    ctx = ObjectiveContext(trainer)
    assert ctx.args is trainer.args and ctx.holdout is holdout and ctx.teacher is trainer.teacher_source
    assert (ctx.global_step, ctx.max_steps) == (5, 20)
    trainer.state.global_step = 6
    assert ctx.global_step == 6  # read at each call, not copied
    assert ctx.student_model() == ("unwrapped", "inner model")  # the student itself, not the wrapped one
    batch = {"x": torch.tensor([1.0]), "labels": torch.tensor([3]), "cached": "c"}
    assert ctx.labels(batch).tolist() == [3]
    assert ctx.teacher_logits(batch) == ("teacher logits", ("teacher inputs", batch["x"]), "c", 6)
    assert ctx.gather(torch.tensor([1, 2])).tolist() == [1, 2, 1, 2]


def test_context_holdout_batches_select_rows_and_leave_the_rng_alone():
    from hf_fairkd.objectives import ObjectiveContext

    holdout = FakeDataset([10, 11, 12, 13])
    trainer, calls = fake_trainer(holdout)
    ctx = ObjectiveContext(trainer)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    batches = list(ctx.holdout_batches())
    assert torch.equal(torch.rand(3), expected)  # the loader's seed draw is undone
    assert [b["labels"].item() for b in batches] == [10, 11, 12, 13] and calls == [("loader", holdout)]
    batches = list(ctx.holdout_batches(np.array([3, 1])))
    assert holdout.selected == [[3, 1]] and all(type(i) is int for i in holdout.selected[0])
    assert [b["labels"].item() for b in batches] == [13, 11]
    # a dataset without `select` (e.g. a torch Dataset) is wrapped in a Subset
    plain = FakeDataset([10, 11, 12], with_select=False)
    trainer, calls = fake_trainer(plain)
    batches = list(ObjectiveContext(trainer).holdout_batches([2, 0]))
    subset = calls[0][1]
    assert (
        isinstance(subset, torch.utils.data.Subset) and subset.dataset is plain and subset.indices == [2, 0]
    )
    # no holdout: refused, naming the objective
    trainer, _ = fake_trainer(None)
    with pytest.raises(
        ValueError, match=r"objective='robust_kd' reads the holdout split: pass `holdout_dataset=`"
    ):
        list(ObjectiveContext(trainer).holdout_batches())


@pytest.mark.parametrize("outputs", ["dict", "tuple"])
@pytest.mark.parametrize("training", [True, False])
def test_context_student_logits_in_eval_mode_without_gradients(outputs, training):
    from hf_fairkd.objectives import ObjectiveContext

    model = RecordingModel(outputs)
    model.train(training)
    trainer, _ = fake_trainer(model=model)
    x = torch.tensor([[1.0, -2.0]])
    logits = ObjectiveContext(trainer).student_logits({"x": x, "labels": torch.tensor([0])})
    assert logits.dtype == torch.float32 and logits.tolist() == [[2.0, -4.0]]
    assert model.seen == [(False, False, x)]
    assert model.training is training  # the mode it had before


def test_context_sum_over_processes_in_float64_on_the_cpu():
    from hf_fairkd.objectives import ObjectiveContext

    trainer, _ = fake_trainer()
    out = ObjectiveContext(trainer).sum_over_processes(torch.tensor([1.5, 2.0]))
    assert out.dtype == torch.float64 and out.device.type == "cpu" and out.tolist() == [1.5, 2.0]
    assert trainer.accelerator.reduced == []
    trainer, _ = fake_trainer(num_processes=2)
    out = ObjectiveContext(trainer).sum_over_processes(torch.tensor([1.5, 2.0]))
    assert out.dtype == torch.float64 and out.device.type == "cpu" and out.tolist() == [3.0, 4.0]
    assert trainer.accelerator.reduced == [(torch.float64, "cpu", "sum")]


def test_callback_runs_each_hook_and_begins_once():
    from hf_fairkd.objectives import ObjectiveCallback

    trainer, calls = fake_trainer()
    callback = ObjectiveCallback(trainer)
    ctx = callback.context
    assert ctx._trainer is trainer
    callback.begin()
    callback.begin()  # before the first loss, and again: runs once
    assert calls == [("on_train_begin", ctx)]
    callback.on_train_begin(None, None, None)  # the Trainer's event always runs it (after a resume, say)
    callback.on_step_end(None, None, None)
    callback.on_train_end(None, None, None)
    assert calls[1:] == [("on_train_begin", ctx), ("on_step_end", ctx), ("on_train_end", ctx)]
    callback.begin()
    assert len(calls) == 4
    # the Trainer's event first: begin() then adds nothing
    trainer, calls = fake_trainer()
    callback = ObjectiveCallback(trainer)
    callback.on_train_begin(None, None, None)
    callback.begin()
    assert calls == [("on_train_begin", callback.context)]


def test_base_hooks_do_nothing_and_log_nothing():
    obj = get_objective("kd")(args(), COUNTS)
    ctx = FakeContext([])
    obj.on_train_begin(ctx)
    obj.on_step_end(ctx)
    obj.on_train_end(ctx)
    assert ctx.asked == [] and obj.log_values() == {} and obj.state_dict() == {}
