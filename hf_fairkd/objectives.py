"""The named student and teacher objectives, one small class each, in one registry.

An objective turns (student logits, labels, teacher logits) into one loss per example plus named
components for the logs. It holds the little state its paper needs (teacher reliability, class-DRO
multipliers) as tensors exposed through ``state_dict`` so checkpoints carry it. The maths is in
``losses.py``; the trainer owns models, data and processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from . import losses

OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str):
    """Class decorator adding an objective to the registry under ``name``."""

    def wrap(cls):
        if name in OBJECTIVES:
            raise ValueError(f"An objective named {name!r} is already registered.")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return wrap


def names() -> list[str]:
    """The registered objective names, sorted."""
    return sorted(OBJECTIVES)


def get_objective(name: str) -> type[Objective]:
    """The registered objective class for ``name``; unknown names list the known ones."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"Unknown objective {name!r}. Registered objectives: {', '.join(sorted(OBJECTIVES))}."
        ) from None


@dataclass
class LossOutput:
    """One loss per example, its named parts (each ``[batch]``) and scalar diagnostics for the logs."""

    per_example: torch.Tensor
    components: dict[str, torch.Tensor] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)


class Objective:
    """Base class. ``args`` is a `DistillationArguments`; ``class_counts`` the training count of each class."""

    name: ClassVar[str] = ""
    uses_teacher: ClassVar[bool] = True
    param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, args, class_counts: torch.Tensor):
        self.args = args
        self.num_classes = int(class_counts.numel())
        counts = class_counts.double().clamp_min(1e-12)  # an empty class gets a tiny prior, not log(0)
        self.prior = (counts / counts.sum()).float()
        self.log_prior = torch.log(self.prior)
        self.teacher_reliability: torch.Tensor | None = None
        self.class_similarity: torch.Tensor | None = None

    # what the trainer must supply
    @property
    def needs_teacher_reliability(self) -> bool:
        return False

    @property
    def needs_holdout_updates(self) -> bool:
        return False

    @property
    def needs_class_similarity(self) -> bool:
        return False

    @property
    def needs_holdout(self) -> bool:
        return self.needs_teacher_reliability or self.needs_holdout_updates

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {}
        if self.teacher_reliability is not None:
            state["teacher_reliability"] = self.teacher_reliability
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "teacher_reliability" in state:
            self.teacher_reliability = state["teacher_reliability"].float()

    def compute(
        self, student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None
    ) -> LossOutput:
        raise NotImplementedError

    # shared helpers
    def teacher_probs(self, teacher_logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        adjusted = losses.adjust_teacher_logits(
            teacher_logits,
            mode=self.args.teacher_logit_mode,
            log_prior=self.log_prior,
            tau=self.args.teacher_logit_tau,
            shift=torch.tensor(self.args.teacher_logit_shift) if self.args.teacher_logit_shift else None,
        )
        return losses.teacher_probabilities(
            adjusted, self.args.temperature if temperature is None else temperature
        )

    def _on(self, tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return tensor.to(like.device)


@register_objective("ce")
class OneHot(Objective):
    """CE(e_y, s): the one-hot baseline every distilled student is compared with."""

    uses_teacher = False

    def compute(self, student_logits, labels, teacher_logits=None):
        ce = losses.one_hot_cross_entropy(student_logits, labels)
        return LossOutput(ce, {"one_hot": ce})


@register_objective("erm")
class TeacherERM(OneHot):
    """Teacher objective: plain empirical risk minimisation, CE(e_y, t)."""


@register_objective("label_smoothing")
class LabelSmoothing(Objective):
    """CE((1-eps) e_y + eps/m, s): Tang et al.'s teacher-free control."""

    uses_teacher = False
    param_names = ("label_smoothing_epsilon",)

    def compute(self, student_logits, labels, teacher_logits=None):
        targets = losses.label_smoothing_targets(labels, self.num_classes, self.args.label_smoothing_epsilon)
        loss = losses.soft_cross_entropy(student_logits, targets)
        return LossOutput(loss, {"one_hot": loss})


class _Distillation(Objective):
    """(1-a) * one-hot term + a * teacher term, in either convention, with optional margins and offsets.

    Hinton: the teacher term is T^2 KL(p_t^T || softmax_T(s)). Mix: CE(p_t^T, s), so the sum equals
    CE((1-a) e_y + a p_t^T, s) exactly (CE is linear in its targets) and both parts can be logged.
    """

    param_names = ("alpha", "temperature", "kd_convention", "teacher_logit_mode")

    def alpha_for(self, labels, teacher_logits) -> torch.Tensor | float:
        return self.args.alpha

    def targets_for(self, labels, teacher_logits) -> torch.Tensor:
        return self.teacher_probs(teacher_logits)

    def logit_offsets(self, labels, teacher_logits) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-example additive logits for the (one-hot term, teacher term); None for no change."""
        return None, None

    def example_weights(self, labels) -> torch.Tensor | None:
        return None

    def compute(self, student_logits, labels, teacher_logits=None):
        s = student_logits.float()
        alpha = self.alpha_for(labels, teacher_logits) if self.uses_teacher else 0.0
        alpha_t = torch.as_tensor(alpha, dtype=torch.float32, device=s.device)
        onehot_offset, teacher_offset = self.logit_offsets(labels, teacher_logits)
        s_onehot = s if onehot_offset is None else s + onehot_offset
        one_hot = (1 - alpha_t) * losses.one_hot_cross_entropy(s_onehot, labels)
        components = {"one_hot": one_hot}
        total = one_hot
        if self.uses_teacher:
            targets = self.targets_for(labels, teacher_logits)
            s_teacher = s if teacher_offset is None else s + teacher_offset
            if self.args.kd_convention == "hinton":
                teacher_term = losses.hinton_kd_term(s_teacher, targets, self.args.temperature)
            else:
                teacher_term = losses.soft_cross_entropy(s_teacher, targets)
            distill = alpha_t * teacher_term
            components["distill"] = distill
            total = total + distill
        weights = self.example_weights(labels)
        if weights is not None:
            total = total * weights
            components = {k: v * weights for k, v in components.items()}
        scalars = {"alpha_mean": float(alpha_t.mean())} if self.uses_teacher else {}
        return LossOutput(total, components, scalars)


@register_objective("kd")
class KD(_Distillation):
    """Plain knowledge distillation (Hinton or target-mixing convention)."""


@register_objective("kd_pt")
class KDTrueClassProbability(_Distillation):
    """KD-pt (Tang et al.): keep the teacher's mass on the true class, spread the rest uniformly."""

    def targets_for(self, labels, teacher_logits):
        return losses.kd_pt_targets(self.teacher_probs(teacher_logits), labels)


@register_objective("kd_sim")
class KDClassSimilarity(_Distillation):
    """KD-sim (Tang et al.): targets from cosine similarities of the teacher's last-layer class weights."""

    param_names = _Distillation.param_names + ("kd_sim_rho",)

    @property
    def needs_class_similarity(self) -> bool:
        return True

    def targets_for(self, labels, teacher_logits):
        if self.class_similarity is None:
            raise RuntimeError(
                "kd_sim needs the teacher's class similarities; the trainer sets them at start."
            )
        return self._on(self.class_similarity, labels)[labels]


@register_objective("ada_alpha")
class AdaptiveAlpha(_Distillation):
    """Lukasik et al.: a teacher weight that follows the teacher's reliability, per class or per example."""

    param_names = _Distillation.param_names + (
        "ada_alpha_level",
        "ada_alpha_mapping",
        "ada_alpha_threshold",
        "ada_alpha_instance_mode",
        "reliability_pseudo_count",
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

    def alpha_for(self, labels, teacher_logits):
        if self.args.ada_alpha_level == "class":
            return self._on(self.class_alphas(), labels)[labels]
        if self.args.ada_alpha_instance_mode == "prob":
            p_true = self.teacher_probs(teacher_logits, temperature=1.0).gather(1, labels[:, None])[:, 0]
            return self.args.alpha * p_true
        return self.args.alpha * (teacher_logits.argmax(-1) == labels).float()


@register_objective("ada_margin")
class AdaptiveMargin(_Distillation):
    """Lukasik et al.: margin softmax loss with margins from the teacher's reliability."""

    param_names = _Distillation.param_names + (
        "margin_level",
        "margin_scale",
        "margin_on",
        "reliability_pseudo_count",
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
            rows = losses.instance_teacher_margins(teacher_logits, labels, self.args.margin_scale)
        return rows - rows.gather(1, labels[:, None])

    def logit_offsets(self, labels, teacher_logits):
        rows = self.margin_rows(labels, teacher_logits)
        return rows, (rows if self.args.margin_on == "both" else None)


@register_objective("balanced_kd")
class BalancedKD(_Distillation):
    """Wang et al.: CE(q, s + tau log pi) (logit adjusted), or CE(q, s) re-weighted by 1/(m pi_y)."""

    param_names = _Distillation.param_names + ("balanced_form", "logit_adjustment_tau")

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
    """Teacher objective: logit adjustment CE(e_y, t + tau log pi); 'posthoc' trains plain CE and the trainer
    then shifts the classifier bias by -tau log pi."""

    uses_teacher = False
    param_names = ("balanced_form", "logit_adjustment_tau")

    def logit_offsets(self, labels, teacher_logits):
        if self.args.balanced_form == "posthoc":
            return None, None
        return super().logit_offsets(labels, teacher_logits)


@register_objective("robust_kd")
class RobustKD(_Distillation):
    """Wang et al.'s class-DRO student: CE(q, s - log c), c_y = w_y / pi_y^tau, w = (1-b) base + b lambda.

    lambda starts uniform and takes an exponentiated-gradient step every K optimisation steps from the
    student's per-class holdout error (the trainer measures and all-reduces it, then calls `update`).
    """

    param_names = _Distillation.param_names + (
        "dro_tradeoff",
        "dro_base",
        "dro_tau",
        "dro_step_size",
        "dro_update_every",
        "dro_error_weighting",
        "dro_holdout_batch_size",
    )

    def __init__(self, args, class_counts):
        super().__init__(args, class_counts)
        self.multipliers = torch.full((self.num_classes,), 1.0 / self.num_classes)
        self.num_updates = 0

    @property
    def needs_holdout_updates(self) -> bool:
        return True

    def class_weights(self) -> torch.Tensor:
        return losses.dro_class_weights(
            self.multipliers, self.prior, tradeoff=self.args.dro_tradeoff, base=self.args.dro_base
        )

    def logit_offsets(self, labels, teacher_logits):
        offsets = losses.dro_logit_offsets(self.class_weights(), self.log_prior, self.args.dro_tau)
        offsets = self._on(offsets, labels)[None, :]
        return offsets, offsets

    def update(self, error_sums: torch.Tensor, weight_sums: torch.Tensor) -> None:
        """One exponentiated-gradient step from per-class error sums (classes never seen keep their weight)."""
        errors = (error_sums / weight_sums.clamp_min(1e-12)).where(weight_sums > 0, 0.0).cpu()
        self.multipliers = losses.exponentiated_gradient_step(
            self.multipliers, errors.float(), self.args.dro_step_size
        )
        self.num_updates += 1

    def weight_stats(self) -> dict[str, float]:
        w = self.class_weights()
        entropy = -(w * torch.log(w.clamp_min(1e-12))).sum()
        return {
            "class_weight_min": float(w.min()),
            "class_weight_max": float(w.max()),
            "class_weight_entropy": float(entropy),
            "class_weight_argmax": float(w.argmax()),
        }

    def compute(self, student_logits, labels, teacher_logits=None):
        out = super().compute(student_logits, labels, teacher_logits)
        out.scalars.update(self.weight_stats())
        return out

    def state_dict(self):
        state = super().state_dict()
        state["dro_multipliers"] = self.multipliers
        state["dro_num_updates"] = torch.tensor(self.num_updates)
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "dro_multipliers" in state:
            self.multipliers = state["dro_multipliers"].float()
            self.num_updates = int(state["dro_num_updates"])


@register_objective("dro")
class TeacherDRO(RobustKD):
    """Teacher objective: class-DRO with one-hot targets (the same machinery as `robust_kd`)."""

    uses_teacher = False
    param_names = tuple(n for n in RobustKD.param_names if n.startswith("dro_"))


TEACHER_OBJECTIVES = ("erm", "balanced", "dro")
STUDENT_OBJECTIVES = tuple(name for name in OBJECTIVES if name not in TEACHER_OBJECTIVES)
