"""Every loss against a hand computation on tiny tensors (numpy / math, not the code under test)."""

import math

import numpy as np
import pytest
import torch

from hf_fairkd import losses

S = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
T = torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 0.5]], dtype=torch.float64)
Y = torch.tensor([0, 2])


def np_softmax(z, temperature=1.0):
    z = np.asarray(z, dtype=np.float64) / temperature
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_one_hot_cross_entropy_matches_hand_value():
    expected = [-math.log(np_softmax(S[i].numpy())[Y[i]]) for i in range(2)]
    np.testing.assert_allclose(losses.one_hot_cross_entropy(S, Y).numpy(), expected, rtol=1e-6)


def test_hinton_term_has_t_squared_scaling():
    temperature = 3.0
    p = np_softmax(T.numpy(), temperature)
    q = np_softmax(S.numpy(), temperature)
    kl = (p * (np.log(p) - np.log(q))).sum(-1)
    got = losses.hinton_kd_term(S, torch.tensor(p), temperature)
    np.testing.assert_allclose(got.numpy(), temperature**2 * kl, rtol=1e-5)


def test_soft_cross_entropy_is_linear_in_targets():
    p = losses.teacher_probabilities(T)
    mixed = losses.soft_cross_entropy(S, losses.mix_targets(Y, p, 0.3))
    parts = 0.7 * losses.one_hot_cross_entropy(S, Y) + 0.3 * losses.soft_cross_entropy(S, p)
    torch.testing.assert_close(mixed, parts.to(mixed.dtype))


def test_two_kd_conventions_agree_at_temperature_one_up_to_teacher_entropy():
    # At T=1, KL(p||s) = CE(p, s) - H(p): Hinton and mixing differ only by a constant in the student.
    p = losses.teacher_probabilities(T)
    alpha = 0.4
    hinton = (1 - alpha) * losses.one_hot_cross_entropy(S, Y) + alpha * losses.hinton_kd_term(S, p, 1.0)
    mix = losses.soft_cross_entropy(S, losses.mix_targets(Y, p, alpha))
    entropy = -(p * p.log()).sum(-1)
    torch.testing.assert_close(mix - alpha * entropy.to(mix.dtype), hinton.to(mix.dtype))


def test_prior_adjusted_teacher_logits():
    log_prior = torch.log(torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64))
    got = losses.adjust_teacher_logits(T, mode="prior_adjusted", log_prior=log_prior, tau=2.0)
    torch.testing.assert_close(got, T - 2.0 * log_prior)
    shift = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(losses.adjust_teacher_logits(T, mode="shift", shift=shift), T + shift)
    with pytest.raises(ValueError, match="Unknown teacher logit mode"):
        losses.adjust_teacher_logits(T, mode="bogus")


def test_label_smoothing_and_kd_pt_targets():
    ls = losses.label_smoothing_targets(Y, 3, 0.3)
    torch.testing.assert_close(ls[0], torch.tensor([0.8, 0.1, 0.1]))
    p = torch.tensor([[0.5, 0.3, 0.2]])
    pt = losses.kd_pt_targets(p, torch.tensor([1]))
    torch.testing.assert_close(pt, torch.tensor([[0.35, 0.3, 0.35]]))
    assert torch.allclose(pt.sum(-1), torch.ones(1))


def test_class_similarity_targets_rows_are_softmaxed_cosines():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    sim = losses.class_similarity_targets(w, rho=0.5)
    cos = np.array(
        [[1, 0, 1 / math.sqrt(2)], [0, 1, 1 / math.sqrt(2)], [1 / math.sqrt(2), 1 / math.sqrt(2), 1]]
    )
    np.testing.assert_allclose(sim.numpy(), np_softmax(cos, 0.5), rtol=1e-5)


def test_alpha_mappings():
    r = torch.tensor([0.2, 0.6, 1.0])
    torch.testing.assert_close(losses.alpha_from_reliability(r, mapping="linear", alpha_max=0.5), r * 0.5)
    torch.testing.assert_close(
        losses.alpha_from_reliability(r, mapping="normalized", alpha_max=1.0), torch.tensor([0.0, 0.5, 1.0])
    )
    torch.testing.assert_close(
        losses.alpha_from_reliability(r, mapping="threshold", alpha_max=0.8, threshold=0.6),
        torch.tensor([0.0, 0.8, 0.8]),
    )
    # all classes equally reliable: normalisation has nothing to spread, keep the full weight
    torch.testing.assert_close(
        losses.alpha_from_reliability(torch.ones(3), mapping="normalized"), torch.ones(3)
    )


def test_smoothed_recall_shrinks_small_classes_toward_overall():
    correct, counts = torch.tensor([9.0, 0.0]), torch.tensor([10.0, 1.0])
    r = losses.smoothed_class_recall(correct, counts, pseudo_count=1.0)
    overall = 9 / 11
    np.testing.assert_allclose(r.numpy(), [(9 + overall) / 11, overall / 2], rtol=1e-6)
    np.testing.assert_allclose(losses.smoothed_class_recall(correct, counts, 0.0).numpy(), [0.9, 0.0])


def test_reliability_and_instance_margins():
    r = torch.tensor([0.9, 0.5])
    d = losses.class_reliability_margins(r, scale=2.0)
    torch.testing.assert_close(d, torch.tensor([[0.0, -0.8], [0.8, 0.0]]))
    inst = losses.instance_teacher_margins(T, Y, scale=0.5)
    torch.testing.assert_close(inst[0], 0.5 * (T[0] - T[0, 0]))


def test_exponentiated_gradient_step_on_known_errors():
    lam = torch.full((3,), 1 / 3, dtype=torch.float64)
    err = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    got = losses.exponentiated_gradient_step(lam, err, step_size=0.1)
    raw = np.exp(0.1 * err.numpy()) / 3
    np.testing.assert_allclose(got.numpy(), raw / raw.sum(), rtol=1e-12)
    assert got.argmax() == 2 and abs(float(got.sum()) - 1) < 1e-12


def test_exponentiated_gradient_step_leaves_unseen_classes_alone():
    lam = torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=torch.float64)
    err = torch.tensor([0.5, 0.0, 1.0, 0.0], dtype=torch.float64)
    seen = torch.tensor([True, False, True, True])
    got = losses.exponentiated_gradient_step(lam, err, step_size=2.0, seen=seen)
    raw = np.array([0.4 * math.exp(1.0), 0.3 * math.exp(2.0), 0.2])
    np.testing.assert_allclose(got.numpy()[[0, 2, 3]], 0.9 * raw / raw.sum(), rtol=1e-12)
    assert got[1].item() == 0.1 and abs(float(got.sum()) - 1) < 1e-12
    # all seen: the plain step
    torch.testing.assert_close(
        losses.exponentiated_gradient_step(lam, err, 2.0, seen=torch.ones(4, dtype=torch.bool)),
        losses.exponentiated_gradient_step(lam, err, 2.0),
    )


def test_dro_weights_and_offsets():
    prior = torch.tensor([0.7, 0.2, 0.1])
    lam = torch.tensor([0.1, 0.1, 0.8])
    w = losses.dro_class_weights(lam, prior, tradeoff=0.25, base="prior")
    torch.testing.assert_close(w, 0.75 * prior + 0.25 * lam)
    w_uniform = losses.dro_class_weights(lam, prior, tradeoff=0.0, base="uniform")
    torch.testing.assert_close(w_uniform, torch.full((3,), 1 / 3))
    # b = 0 with the prior base and tau = 1: c = pi / pi = 1, no offset, plain KD
    offsets = losses.dro_logit_offsets(
        losses.dro_class_weights(lam, prior, tradeoff=0.0), prior.log(), tau=1.0
    )
    torch.testing.assert_close(offsets, torch.zeros(3), atol=1e-6, rtol=0)
    # uniform weights and tau = 1: offsets = log pi + log m, i.e. logit adjustment up to a constant
    off_u = losses.dro_logit_offsets(torch.full((3,), 1 / 3), prior.log(), tau=1.0)
    torch.testing.assert_close(off_u - off_u[0], prior.log() - prior.log()[0])


def test_per_class_errors_label_and_teacher_weighted():
    preds = torch.tensor([0, 1, 1, 2])
    labels = torch.tensor([0, 0, 1, 1])
    e, n = losses.per_class_errors(preds, labels, 3)
    np.testing.assert_allclose(e.numpy(), [1, 1, 0])
    np.testing.assert_allclose(n.numpy(), [2, 2, 0])
    weights = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5]])
    e, n = losses.per_class_errors(preds, labels, 3, weights)
    # class 0: rows 0 (pred 0, right), 1 (pred 1, wrong, w .5) -> 0.5 / 1.5
    np.testing.assert_allclose(e.numpy(), [0.5, 0.5, 0.0])
    np.testing.assert_allclose(n.numpy(), [1.5, 2.0, 0.5])


def test_gradcheck_of_the_losses():
    s = S.clone().requires_grad_(True)
    p = losses.teacher_probabilities(T, 2.0).double()
    assert torch.autograd.gradcheck(lambda z: losses.hinton_kd_term(z, p, 2.0), (s,))
    assert torch.autograd.gradcheck(lambda z: losses.soft_cross_entropy(z, p), (s,))


# --- pinned by mutation testing (docs/MUTATION.md) ---------------------------------------------------


def test_per_class_errors_match_a_python_loop():
    # labels and predictions whose right and wrong counts differ in every class, so that counting the
    # right rows instead of the wrong ones (or the wrong class) cannot give the same sums
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 40)
    preds = np.where(rng.random(40) < 0.3, labels, rng.integers(0, 4, 40))
    errors, counts = losses.per_class_errors(torch.tensor(preds), torch.tensor(labels), 5)
    expected = [sum(p != c for p, y in zip(preds, labels) if y == c) for c in range(5)]
    np.testing.assert_array_equal(errors.numpy(), expected)
    np.testing.assert_array_equal(counts.numpy(), [int((labels == c).sum()) for c in range(5)])
    weights = rng.dirichlet(np.ones(5), 40)
    errors, totals = losses.per_class_errors(
        torch.tensor(preds), torch.tensor(labels), 5, torch.tensor(weights)
    )
    expected = [sum(w[c] for p, w in zip(preds, weights) if p != c) for c in range(5)]
    np.testing.assert_allclose(errors.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(totals.numpy(), weights.sum(0), rtol=1e-12)


@pytest.mark.parametrize("pseudo_count", [0.5, 3.0])
def test_smoothed_recall_of_a_class_without_holdout_rows_is_the_overall_recall(pseudo_count):
    correct, counts = torch.tensor([9.0, 0.0, 2.0]), torch.tensor([10.0, 0.0, 4.0])
    r = losses.smoothed_class_recall(correct, counts, pseudo_count)
    overall = 11 / 14
    shrunk = [
        (9 + pseudo_count * overall) / (10 + pseudo_count),
        (2 + pseudo_count * overall) / (4 + pseudo_count),
    ]
    expected = [shrunk[0], overall, shrunk[1]]
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-6)


def test_kl_divergence_skips_classes_the_teacher_gives_no_mass():
    p = torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    # -inf: a masked logit, where the teacher has no mass either
    s = torch.tensor([[1.0, 2.0, -float("inf")], [0.0, 1.0, 3.0]], dtype=torch.float64)
    got = losses.kl_divergence(p, s)
    q0 = np_softmax([1.0, 2.0])
    expected = [0.25 * math.log(0.25 / q0[0]) + 0.75 * math.log(0.75 / q0[1]), -math.log(np_softmax(s[1])[2])]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_mix_targets_with_one_alpha_per_example_and_a_class_absent_from_the_batch():
    p = torch.tensor([[0.2, 0.3, 0.1, 0.4], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    labels = torch.tensor([1, 0])  # no label 3 in the batch: the targets still have 4 columns
    got = losses.mix_targets(labels, p, torch.tensor([0.5, 0.2], dtype=torch.float64))
    expected = np.array([[0.1, 0.65, 0.05, 0.2], [0.85, 0.05, 0.05, 0.05]])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert got.dtype == torch.float64


def test_exponentiated_gradient_step_keeps_the_dtype_and_takes_0_1_masks():
    lam = torch.tensor([0.4, 0.1, 0.3, 0.2])  # float32, like RobustKD.multipliers
    err = torch.tensor([0.5, 0.0, 1.0, 0.0])
    assert losses.exponentiated_gradient_step(lam, err, 2.0).dtype == torch.float32
    by_mask = losses.exponentiated_gradient_step(lam, err, 2.0, seen=torch.tensor([True, False, True, True]))
    assert by_mask.dtype == torch.float32
    torch.testing.assert_close(
        losses.exponentiated_gradient_step(lam, err, 2.0, seen=torch.tensor([1, 0, 1, 1])), by_mask
    )


def test_half_precision_logits_are_computed_in_float32():
    s16 = S.to(torch.float16)
    for loss in (
        losses.one_hot_cross_entropy(s16, Y),
        losses.soft_cross_entropy(s16, torch.full((2, 3), 1 / 3)),
    ):
        assert loss.dtype == torch.float32
    assert losses.teacher_probabilities(T.to(torch.bfloat16)).dtype == torch.float32
