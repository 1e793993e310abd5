"""Pure tensor functions for the distillation objectives.

Nothing here holds state. Every loss returns one value per example (shape ``[batch]``) so that the trainer
can reduce with the number of items across gradient-accumulation steps and processes, and so the
objectives can weight examples before reduction. Notation follows ``methods.md``: student logits ``s``,
teacher logits ``t``, labels ``y``, class prior ``pi``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _float(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (half-precision logits lose too much in a log-softmax); float64 stays float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# ---------------------------------------------------------------------------------------------------------
# Cross-entropies
# ---------------------------------------------------------------------------------------------------------


def one_hot_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE(e_y, s) per example."""
    return F.cross_entropy(_float(logits), labels, reduction="none")


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """CE(q, s) = -sum_j q_j log softmax(s)_j per example."""
    return -(target_probs * F.log_softmax(_float(logits), dim=-1)).sum(dim=-1)


def kl_divergence(teacher_probs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_t || softmax(s)) per example; terms with p_t = 0 contribute 0."""
    log_student = F.log_softmax(_float(student_logits), dim=-1)
    log_teacher = torch.log(teacher_probs.clamp_min(1e-30))
    return (teacher_probs * (log_teacher - log_student)).where(teacher_probs > 0, 0.0).sum(dim=-1)


def hinton_kd_term(
    student_logits: torch.Tensor, teacher_probs_t: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 KL(softmax_T(t) || softmax_T(s)); the T^2 keeps gradient scale independent of T (Hinton et al.).

    A logit offset o on the temperature-1 scale enters as ``student_logits = s + T * o`` (softmax(s/T + o)).
    """
    return temperature**2 * kl_divergence(teacher_probs_t, student_logits / temperature)


# ---------------------------------------------------------------------------------------------------------
# Teacher targets
# ---------------------------------------------------------------------------------------------------------


def adjust_teacher_logits(
    teacher_logits: torch.Tensor,
    *,
    mode: str = "raw",
    log_prior: torch.Tensor | None = None,
    tau: float = 1.0,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Turn the teacher's scores into the logits targets are built from.

    ``raw``: t. ``prior_adjusted``: t - tau * log pi (a post-hoc balanced teacher). ``shift``: t + shift.
    """
    if mode == "raw":
        return teacher_logits
    if mode == "prior_adjusted":
        if log_prior is None:
            raise ValueError(
                "teacher_logit_mode='prior_adjusted' needs the class prior (training class counts)."
            )
        return teacher_logits - tau * log_prior.to(teacher_logits)
    if mode == "shift":
        if shift is None:
            raise ValueError("teacher_logit_mode='shift' needs `teacher_logit_shift` (one value per class).")
        return teacher_logits + shift.to(teacher_logits)
    raise ValueError(f"Unknown teacher logit mode {mode!r}; use 'raw', 'prior_adjusted' or 'shift'.")


def teacher_probabilities(teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """p_t = softmax(t / T), computed in float32 whatever the teacher's dtype."""
    return F.softmax(_float(teacher_logits) / temperature, dim=-1)


def mix_targets(
    labels: torch.Tensor, teacher_probs: torch.Tensor, alpha: torch.Tensor | float
) -> torch.Tensor:
    """q = (1 - a) e_y + a p_t, with a a scalar or one weight per example."""
    one_hot = F.one_hot(labels, teacher_probs.shape[-1]).to(teacher_probs)
    alpha = torch.as_tensor(alpha, dtype=teacher_probs.dtype, device=teacher_probs.device)
    if alpha.ndim == 1:
        alpha = alpha[:, None]
    return (1 - alpha) * one_hot + alpha * teacher_probs


def label_smoothing_targets(labels: torch.Tensor, num_classes: int, epsilon: float) -> torch.Tensor:
    """(1 - eps) e_y + eps / m: the teacher-free control of Tang et al."""
    uniform = torch.full((labels.shape[0], num_classes), 1.0 / num_classes, device=labels.device)
    return mix_targets(labels, uniform, epsilon)


def kd_pt_targets(teacher_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Keep the teacher's mass on the true class, spread the rest uniformly over the other classes (KD-pt)."""
    num_classes = teacher_probs.shape[-1]
    p_true = teacher_probs.gather(1, labels[:, None])
    rest = (1 - p_true) / (num_classes - 1)
    targets = rest.expand(-1, num_classes).clone()
    return targets.scatter(1, labels[:, None], p_true)


def class_similarity_targets(classifier_weight: torch.Tensor, rho: float = 1.0) -> torch.Tensor:
    """Row y: softmax over j of cos(w_y, w_j) / rho, from the teacher's last-layer weights (KD-sim)."""
    normed = F.normalize(_float(classifier_weight), dim=-1)
    return F.softmax(normed @ normed.T / rho, dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Teacher reliability, adaptive weights and margins (P1)
# ---------------------------------------------------------------------------------------------------------


def smoothed_class_recall(
    correct: torch.Tensor, counts: torch.Tensor, pseudo_count: float = 1.0
) -> torch.Tensor:
    """Per-class recall shrunk toward the overall recall by ``pseudo_count`` virtual examples.

    Classes with few holdout examples would otherwise get recalls of exactly 0 or 1.
    """
    correct, counts = correct.double(), counts.double()
    overall = correct.sum() / counts.sum().clamp_min(1)
    return ((correct + pseudo_count * overall) / (counts + pseudo_count).clamp_min(1e-12)).float()


def alpha_from_reliability(
    reliability: torch.Tensor,
    *,
    mapping: str = "linear",
    alpha_max: float = 1.0,
    threshold: float = 0.5,
    support: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-class (or per-cell) teacher weight a = f(r): ``linear``, ``normalized`` (min-max) or ``threshold``.

    ``support`` (bool, like ``reliability``): the entries whose min and max ``normalized`` reads (e.g. the class x
    group cells with training rows); the others are mapped with the same min and max, clipped to [0, alpha_max].
    """
    if mapping == "linear":
        return alpha_max * reliability
    if mapping == "normalized":
        measured = reliability if support is None or not support.any() else reliability[support.bool()]
        low, spread = measured.min(), measured.max() - measured.min()
        if spread <= 0:  # every class equally reliable: no reason to down-weight any of them
            return torch.full_like(reliability, alpha_max)
        return (alpha_max * (reliability - low) / spread).clamp(0.0, alpha_max)
    if mapping == "threshold":
        return alpha_max * (reliability >= threshold).to(reliability)
    raise ValueError(f"Unknown ada_alpha mapping {mapping!r}; use 'linear', 'normalized' or 'threshold'.")


def class_reliability_margins(reliability: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """D_yj = g * (u_y - u_j) with u = 1 - r: larger margins for classes the teacher gets wrong."""
    error = 1 - reliability
    return scale * (error[:, None] - error[None, :])


def instance_teacher_margins(
    teacher_logits: torch.Tensor, labels: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """D_yj(x) = g * (t_j(x) - t_y(x)), one row per example."""
    t = _float(teacher_logits)
    return scale * (t - t.gather(1, labels[:, None]))


# ---------------------------------------------------------------------------------------------------------
# Class-DRO (P2)
# ---------------------------------------------------------------------------------------------------------


def exponentiated_gradient_step(
    weights: torch.Tensor, class_errors: torch.Tensor, step_size: float, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """lambda_y <- lambda_y * exp(eta * err_y), renormalised to sum to one (computed in log space).

    With ``seen`` (one bool per class), only the seen classes step, and they are renormalised to the total
    mass they held: a class with no holdout examples keeps its weight exactly instead of shrinking as if its
    error were 0.
    """
    log_w = torch.log(weights.double().clamp_min(1e-300)) + step_size * class_errors.double()
    if seen is None:
        return torch.softmax(log_w, dim=0).to(weights.dtype)
    seen = seen.to(device=weights.device, dtype=torch.bool)
    stepped = weights.clone()
    if seen.any():
        mass = weights.double()[seen].sum()
        stepped[seen] = (mass * torch.softmax(log_w[seen], dim=0)).to(weights.dtype)
    return stepped


def dro_class_weights(
    multipliers: torch.Tensor, prior: torch.Tensor, *, tradeoff: float, base: str = "prior"
) -> torch.Tensor:
    """w = (1 - b) * base + b * lambda, base = pi or uniform."""
    if base == "prior":
        base_weights = prior
    elif base == "uniform":
        base_weights = torch.full_like(prior, 1.0 / prior.numel())
    else:
        raise ValueError(f"Unknown DRO base {base!r}; use 'prior' or 'uniform'.")
    return (1 - tradeoff) * base_weights + tradeoff * multipliers


def dro_logit_offsets(class_weights: torch.Tensor, log_prior: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """-log c with c_y = w_y / pi_y^tau; the robust loss is CE(q, s - log c) = CE(q, s + offsets)."""
    return -(torch.log(class_weights.clamp_min(1e-12)) - tau * log_prior)


def per_class_errors(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of (weighted) 0-1 errors and of weights per class, so processes can all-reduce before dividing.

    With ``weights`` None the weight of example i is 1 for its label (label-weighted errors). With
    ``weights`` [B, m] (teacher probabilities), example i counts for class j with weight p_t(j | x_i) and
    is wrong for j when the prediction is not j.
    """
    if weights is None:
        wrong = (predictions != labels).double()
        error_sums = torch.zeros(num_classes, dtype=torch.float64, device=labels.device).index_add_(
            0, labels, wrong
        )
        counts = torch.bincount(labels, minlength=num_classes).double()
        return error_sums, counts
    weights = weights.double()
    wrong = (predictions[:, None] != torch.arange(num_classes, device=predictions.device)[None, :]).double()
    return (weights * wrong).sum(0), weights.sum(0)


# ---------------------------------------------------------------------------------------------------------
# Groups of the data (attributes such as site or camera; see hf_fairkd.groups)
# ---------------------------------------------------------------------------------------------------------

PARTITIONS = ("class", "group", "class_x_group")


def partition_ids(
    partition: str, labels: torch.Tensor, group_ids: torch.Tensor | None, num_groups: int
) -> torch.Tensor:
    """The partition group of every row: 'class' y; 'group' g; 'class_x_group' y * G + g (G = ``num_groups``)."""
    if partition == "class":
        return labels
    if group_ids is None:
        raise ValueError(f"partition {partition!r} needs the group ids of the rows; got none.")
    group_ids = group_ids.to(labels.device)
    if partition == "group":
        return group_ids
    if partition == "class_x_group":
        return labels * num_groups + group_ids
    raise ValueError(f"Unknown partition {partition!r}; use one of {', '.join(PARTITIONS)}.")


def partition_counts(
    partition: str, class_counts: torch.Tensor, cell_counts: torch.Tensor | None
) -> torch.Tensor:
    """Training rows of every partition group, in the order of `partition_ids`: n_y; n_g = sum_y n_yg; n_yg
    (``cell_counts`` [classes, groups], flattened row-major)."""
    if partition == "class":
        return class_counts.double()
    if cell_counts is None:
        raise ValueError(f"partition {partition!r} needs the training counts of the class x group cells.")
    if partition == "group":
        return cell_counts.double().sum(0)
    if partition == "class_x_group":
        return cell_counts.double().flatten()
    raise ValueError(f"Unknown partition {partition!r}; use one of {', '.join(PARTITIONS)}.")


def group_dro_example_weights(weights: torch.Tensor, prior: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Per-group example weights v_k = (w_k / pi_k^tau) / sum_h pi_h (w_h / pi_h^tau).

    The training mean of v is 1; with tau = 1 and w = lambda, E[v L] = sum_k lambda_k L_k, Sagawa et al.'s group
    DRO loss. A group without training rows (pi_k = 0) gets weight 0: the training objective puts no mass on it.
    """
    prior = prior.double()
    present = prior > 0
    ratio = (weights.double() / prior.clamp_min(1e-300) ** tau).where(present, 0.0)
    total = (prior * ratio).sum()
    if not total > 0:
        raise ValueError(
            "group DRO weights are all zero on the groups with training rows; check the multipliers."
        )
    return (ratio / total).to(weights.dtype)


def per_group_errors(
    wrong: torch.Tensor, ids: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of 0-1 errors (``wrong``, one per row) and of rows per group, to all-reduce before dividing."""
    ids = ids.long()
    errors = torch.zeros(num_groups, dtype=torch.float64, device=ids.device).index_add_(
        0, ids, wrong.double()
    )
    return errors, torch.bincount(ids, minlength=num_groups).double()


def size_adjusted_errors(errors: torch.Tensor, train_counts: torch.Tensor, adjustment: float) -> torch.Tensor:
    """err_k + C / sqrt(n_k) (Sagawa et al.'s size adjustment; n_k the training count); n_k = 0: no adjustment."""
    if adjustment == 0:
        return errors
    counts = train_counts.to(errors.device, torch.float64)
    bonus = (adjustment / counts.clamp_min(1.0).sqrt()).where(counts > 0, 0.0)
    return (errors.double() + bonus).to(errors.dtype)


def smoothed_cell_recall(
    correct: torch.Tensor, counts: torch.Tensor, class_recall: torch.Tensor, pseudo_count: float = 1.0
) -> torch.Tensor:
    """Recall of every class x group cell [classes, groups], shrunk toward its class's (smoothed) recall:
    r_yg = (correct_yg + k r_y) / (n_yg + k). A cell without holdout rows gets r_y (also when k = 0)."""
    correct, counts = correct.double(), counts.double()
    prior = class_recall.double()[:, None].expand_as(counts)
    smoothed = (correct + pseudo_count * prior) / (counts + pseudo_count).clamp_min(1e-12)
    return smoothed.where(counts + pseudo_count > 0, prior).float()


def cell_reliability_margins(cell_reliability: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """[classes, groups, classes]: the margins D_yj = g * (u_yg - u_jg), u = 1 - r, of a row in cell (y, g)."""
    error = 1 - cell_reliability
    return scale * (error[:, :, None] - error.T[None, :, :])
