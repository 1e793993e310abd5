"""Distillation students: kd and Tang et al.'s diagnostics, Lukasik et al.'s ada_alpha / ada_margin, and
Wang et al.'s balanced_kd (with the 'balanced' teacher, which shares its logit adjustment)."""

from __future__ import annotations

import logging

import torch

from .. import losses
from ..teacher.model import shift_classifier_bias
from .base import LossOutput, Objective, register_objective

logger = logging.getLogger(__name__)


class _Distillation(Objective):
    """(1-a) * one-hot term + a * teacher term, in either convention, with optional margins and offsets.

    Hinton: the teacher term is T^2 KL(p_t^T || softmax_T(s)). Mix: CE(p_t^T, s), so the sum equals
    CE((1-a) e_y + a p_t^T, s) exactly (CE is linear in its targets) and both parts can be logged.

    Logit offsets (margins, logit adjustment, class-DRO's -log c) are defined on the temperature-1 scale of
    the student's logits. The one-hot term and the 'mix' teacher term see s + offset; the Hinton teacher term
    sees softmax(s / T + offset), i.e. s + T * offset goes into the T-scaled KL, so a prior shift means the
    same at every temperature and T = 1 is unchanged.
    """

    param_names = ("alpha", "temperature", "kd_convention", "teacher_logit_mode")

    def alpha_for(self, labels, teacher_logits) -> torch.Tensor | float:
        return self.args.alpha

    def targets_for(self, labels, teacher_logits) -> torch.Tensor:
        return self.teacher_probs(teacher_logits)

    def hinton_temperature(self) -> float:
        """T of the Hinton teacher term: the student is divided by it and the term is scaled by T^2."""
        return self.args.temperature

    def logit_offsets(self, labels, teacher_logits) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-example additive logits (temperature-1 scale) for the (one-hot term, teacher term); None: none."""
        return None, None

    def example_weights(self, labels) -> torch.Tensor | None:
        return None

    def compute(self, student_logits, labels, teacher_logits=None):
        alpha = self.alpha_for(labels, teacher_logits) if self.uses_teacher else 0.0
        offsets = self.logit_offsets(labels, teacher_logits)
        return self.distill(
            student_logits, labels, teacher_logits, alpha, offsets, self.example_weights(labels)
        )

    def distill(
        self,
        student_logits: torch.Tensor,
        labels: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        alpha: torch.Tensor | float,
        offsets: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
        weights: torch.Tensor | None = None,
    ) -> LossOutput:
        """The loss from its resolved parts: the teacher weight (scalar or per example), the (one-hot term,
        teacher term) logit offsets and per-example weights (None: none). `compute` gets them from the hooks;
        objectives that read group ids pass their own."""
        s = student_logits.float()
        alpha_t = torch.as_tensor(alpha, dtype=torch.float32, device=s.device)
        onehot_offset, teacher_offset = offsets
        s_onehot = s if onehot_offset is None else s + onehot_offset
        one_hot = (1 - alpha_t) * losses.one_hot_cross_entropy(s_onehot, labels)
        components = {"one_hot": one_hot}
        total = one_hot
        if self.uses_teacher:
            targets = self.targets_for(labels, teacher_logits)
            if self.args.kd_convention == "hinton":
                temperature = self.hinton_temperature()
                s_teacher = s if teacher_offset is None else s + temperature * teacher_offset
                teacher_term = losses.hinton_kd_term(s_teacher, targets, temperature)
            else:
                s_teacher = s if teacher_offset is None else s + teacher_offset
                teacher_term = losses.soft_cross_entropy(s_teacher, targets)
            distill = alpha_t * teacher_term
            components["distill"] = distill
            total = total + distill
        if weights is not None:
            total = total * weights
            components = {k: v * weights for k, v in components.items()}
        scalars = {"alpha_mean": float(alpha_t.mean())} if self.uses_teacher else {}
        return LossOutput(total, components, scalars)


class _ClassReliability(_Distillation):
    """ada_alpha and ada_margin at class level: the teacher's per-class holdout recall, measured before training
    on the teacher as the student sees it (`Objective.teacher_reliability_signals`), summed over processes.

    With ``reliability_groups='class_x_group'`` also per class x group cell (y, g), smoothed toward the class's
    smoothed recall r_y: r_yg = (correct_yg + k r_y) / (n_yg + k), k = ``reliability_pseudo_count`` (a cell
    without holdout rows gets r_y), and a row's weight or margins follow its cell. A batch without group ids (an
    evaluation set that carries none) gets the class-level loss.
    """

    def __init__(self, args, class_counts):
        super().__init__(args, class_counts)
        self.cell_reliability: torch.Tensor | None = None  # [classes, groups], with reliability_groups

    @property
    def uses_groups(self) -> bool:
        return self.needs_teacher_reliability and getattr(self.args, "reliability_groups", "class") != "class"

    def group_setting(self) -> str:
        return f"reliability_groups={getattr(self.args, 'reliability_groups', 'class')!r}"

    def on_train_begin(self, ctx):
        self.check_groups()
        if not self.needs_teacher_reliability:
            return  # instance level
        if self.teacher_reliability is not None and (
            self.cell_reliability is not None or not self.uses_groups
        ):
            return  # already measured (or restored from a checkpoint)
        num_groups = len(self.group_names) if self.uses_groups else 1
        correct = torch.zeros(self.num_classes * num_groups, dtype=torch.float64)
        counts = torch.zeros_like(correct)
        for batch in ctx.holdout_batches():
            right, _ = self.teacher_reliability_signals(ctx.teacher_logits(batch), ctx.labels(batch))
            labels = ctx.gather(ctx.labels(batch)).cpu()
            cells = labels * num_groups + (ctx.gather(ctx.group_ids(batch)).cpu() if self.uses_groups else 0)
            correct.index_add_(0, cells, ctx.gather(right).cpu().double())
            counts += torch.bincount(cells, minlength=correct.numel()).double()
        correct, counts = (sums.view(self.num_classes, num_groups) for sums in (correct, counts))
        k = self.args.reliability_pseudo_count
        self.teacher_reliability = losses.smoothed_class_recall(correct.sum(1), counts.sum(1), k)
        logger.info("Teacher per-class holdout recall: %s", self.teacher_reliability.tolist())
        if self.uses_groups:
            self.cell_reliability = losses.smoothed_cell_recall(correct, counts, self.teacher_reliability, k)
            logger.info("Teacher per-cell holdout recall [class][group]: %s", self.cell_reliability.tolist())

    def compute(self, student_logits, labels, teacher_logits=None, group_ids=None):
        if not self.uses_groups or group_ids is None:
            return super().compute(student_logits, labels, teacher_logits)
        self.check_groups()
        if self.cell_reliability is None:
            raise RuntimeError(
                f"{self.name} with {self.group_setting()} needs the teacher's per-cell holdout reliability; its "
                "on_train_begin hook measures it."
            )
        group_ids = group_ids.to(labels.device)
        alpha = self.cell_alpha_for(labels, group_ids, teacher_logits)
        offsets = self.cell_logit_offsets(labels, group_ids, teacher_logits)
        return self.distill(
            student_logits, labels, teacher_logits, alpha, offsets, self.example_weights(labels)
        )

    def cell_alpha_for(self, labels, group_ids, teacher_logits):
        """The teacher weight of rows in cells (labels, group_ids); default: the class-level one."""
        return self.alpha_for(labels, teacher_logits)

    def cell_logit_offsets(self, labels, group_ids, teacher_logits):
        """The logit offsets of rows in cells (labels, group_ids); default: the class-level ones."""
        return self.logit_offsets(labels, teacher_logits)

    def state_dict(self):
        state = super().state_dict()
        if self.cell_reliability is not None:
            state["teacher_cell_reliability"] = self.cell_reliability
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "teacher_cell_reliability" in state:
            self.cell_reliability = state["teacher_cell_reliability"].float()


@register_objective("kd")
class KD(_Distillation):
    """Plain knowledge distillation (Hinton or target-mixing convention)."""

    description = "distillation: one-hot cross-entropy mixed with the teacher's tempered probabilities"


@register_objective("kd_pt")
class KDTrueClassProbability(_Distillation):
    """KD-pt (Tang et al.): keep the teacher's mass on the true class, spread the rest uniformly."""

    description = "the teacher's probability of the true class kept, the rest spread uniformly (Tang et al.)"

    def targets_for(self, labels, teacher_logits):
        return losses.kd_pt_targets(self.teacher_probs(teacher_logits), labels)


@register_objective("kd_sim")
class KDClassSimilarity(_Distillation):
    """KD-sim (Tang et al.): targets from cosine similarities of the teacher's last-layer class weights.

    The targets already carry their own temperature ``kd_sim_rho`` and are not the teacher's tempered
    probabilities, so ``temperature`` does not apply: the Hinton term is KL(sim_y || softmax(s)) (T = 1, no
    T^2), and differs from the 'mix' form CE(sim_y, s) only by the targets' entropy, a constant.
    """

    description = "targets from the similarities of the teacher's last-layer class weights (Tang et al.)"

    param_names = ("alpha", "kd_convention", "kd_sim_rho")

    @property
    def needs_class_similarity(self) -> bool:
        return True

    def hinton_temperature(self) -> float:
        return 1.0

    def on_train_begin(self, ctx):
        if self.class_similarity is None:
            self.class_similarity = ctx.teacher.class_similarity(self.args.kd_sim_rho)

    def prior_uses(self) -> list[str]:
        return []  # the targets come from the teacher's weights, not its (possibly prior-adjusted) logits

    def targets_for(self, labels, teacher_logits):
        if self.class_similarity is None:
            raise RuntimeError(
                "kd_sim needs the teacher's class similarities; its on_train_begin hook sets them."
            )
        return self._on(self.class_similarity, labels)[labels]


@register_objective("ada_alpha")
class AdaptiveAlpha(_ClassReliability):
    """Lukasik et al.: a teacher weight that follows the teacher's reliability, per class or per example.

    Reliability is measured on the teacher as the student sees it (after ``teacher_logit_mode``): instance
    level 'prob' a(x) = alpha * p(y|x) at T = 1, 'correct' a(x) = alpha * 1[argmax = y]; class level from
    the holdout recall of that same argmax (see `Objective.teacher_reliability_signals`).
    """

    description = "a teacher weight that follows its reliability per class or per example (Lukasik et al.)"

    param_names = _Distillation.param_names + (
        "ada_alpha_level",
        "ada_alpha_mapping",
        "ada_alpha_threshold",
        "ada_alpha_instance_mode",
        "reliability_pseudo_count",
        "reliability_groups",
    )

    @property
    def needs_teacher_reliability(self) -> bool:
        return self.args.ada_alpha_level == "class"

    def class_alphas(self) -> torch.Tensor:
        if self.teacher_reliability is None:
            raise RuntimeError(
                "ada_alpha (class level) needs the teacher's holdout reliability; none was computed."
            )
        return losses.alpha_from_reliability(
            self.teacher_reliability,
            mapping=self.args.ada_alpha_mapping,
            alpha_max=self.args.alpha,
            threshold=self.args.ada_alpha_threshold,
        )

    def cell_alphas(self) -> torch.Tensor:
        """[classes, groups]: a_yg = f(r_yg); 'normalized' takes its min and max over the cells with training rows."""
        return losses.alpha_from_reliability(
            self.cell_reliability,
            mapping=self.args.ada_alpha_mapping,
            alpha_max=self.args.alpha,
            threshold=self.args.ada_alpha_threshold,
            support=self.cell_counts > 0,
        )

    def cell_alpha_for(self, labels, group_ids, teacher_logits):
        return self._on(self.cell_alphas(), labels)[labels, group_ids]

    def alpha_for(self, labels, teacher_logits):
        if self.args.ada_alpha_level == "class":
            return self._on(self.class_alphas(), labels)[labels]
        correct, p_true = self.teacher_reliability_signals(teacher_logits, labels)
        return self.args.alpha * (p_true if self.args.ada_alpha_instance_mode == "prob" else correct)


@register_objective("ada_margin")
class AdaptiveMargin(_ClassReliability):
    """Lukasik et al.: margin softmax loss log(1 + sum_{j != y} exp(D_yj + s_j - s_y)), i.e. CE(e_y, s + D_y.)
    with D_yy = 0, and margins from the teacher's reliability (class level: holdout recall; instance level:
    D_yj(x) = g (t_j - t_y) on the teacher as the student sees it, after ``teacher_logit_mode``)."""

    description = "a margin softmax loss with margins from the teacher's reliability (Lukasik et al.)"

    param_names = _Distillation.param_names + (
        "margin_level",
        "margin_scale",
        "margin_on",
        "reliability_pseudo_count",
        "reliability_groups",
    )

    @property
    def needs_teacher_reliability(self) -> bool:
        return self.args.margin_level == "class"

    def margin_rows(self, labels, teacher_logits) -> torch.Tensor:
        if self.args.margin_level == "class":
            if self.teacher_reliability is None:
                raise RuntimeError("ada_margin (class level) needs the teacher's holdout reliability.")
            margins = losses.class_reliability_margins(self.teacher_reliability, self.args.margin_scale)
            rows = self._on(margins, labels)[labels]
        else:
            rows = losses.instance_teacher_margins(
                self.teacher_view(teacher_logits), labels, self.args.margin_scale
            )
        return rows - rows.gather(1, labels[:, None])

    def logit_offsets(self, labels, teacher_logits):
        rows = self.margin_rows(labels, teacher_logits)
        return rows, (rows if self.args.margin_on == "both" else None)

    def cell_logit_offsets(self, labels, group_ids, teacher_logits):
        # a row of cell (y, g): D_yj = g * (u_yg - u_jg), the class margins within its group (D_yy = 0)
        margins = losses.cell_reliability_margins(self.cell_reliability, self.args.margin_scale)
        rows = self._on(margins, labels)[labels, group_ids]
        rows = rows - rows.gather(1, labels[:, None])
        return rows, (rows if self.args.margin_on == "both" else None)


@register_objective("balanced_kd")
class BalancedKD(_Distillation):
    """Wang et al.: CE(q, s + tau log pi) (logit adjusted), or CE(q, s) re-weighted by 1/(m pi_y)."""

    description = "distillation with the class prior's logit adjustment or reweighting (Wang et al.)"

    param_names = _Distillation.param_names + ("balanced_form", "logit_adjustment_tau")

    def prior_uses(self) -> list[str]:
        return [f"balanced_form={self.args.balanced_form!r}"] + super().prior_uses()

    def logit_offsets(self, labels, teacher_logits):
        if self.args.balanced_form != "logit_adjusted":
            return None, None
        offset = self._on(self.args.logit_adjustment_tau * self.log_prior, labels)[None, :]
        return offset, offset

    def example_weights(self, labels):
        if self.args.balanced_form != "reweighted":
            return None
        return self._on(1.0 / (self.num_classes * self.prior), labels)[labels]


@register_objective("balanced")
class TeacherBalanced(BalancedKD):
    """Teacher objective: logit adjustment CE(e_y, t + tau log pi); 'posthoc' trains plain CE and then, after
    training, shifts the classifier bias by -tau log pi (so the saved model predicts with the adjustment)."""

    description = (
        "logit adjustment: cross-entropy with the log class priors added to the logits in training, so that "
        "the rare classes are not crowded out"
    )
    role = "teacher"
    uses_teacher = False
    param_names = ("balanced_form", "logit_adjustment_tau")

    def on_train_end(self, ctx):
        if self.args.balanced_form == "posthoc":
            shift_classifier_bias(ctx.student_model(), -self.args.logit_adjustment_tau * self.log_prior)

    def logit_offsets(self, labels, teacher_logits):
        if self.args.balanced_form == "posthoc":
            return None, None
        return super().logit_offsets(labels, teacher_logits)
