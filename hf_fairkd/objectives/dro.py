"""Wang et al.'s class-DRO: the robust_kd student and the dro teacher."""

from __future__ import annotations

import numpy as np
import torch

from .. import losses
from .base import register_objective
from .distillation import _Distillation


@register_objective("robust_kd")
class RobustKD(_Distillation):
    """Wang et al.'s class-DRO student: CE(q, s - log c), c_y = w_y / pi_y^tau, w = (1-b) base + b lambda.

    lambda starts uniform and takes an exponentiated-gradient step every K optimisation steps (`on_step_end`)
    from the student's per-class holdout error, measured with the student's UNADJUSTED argmax on holdout rows
    drawn from (seed, update index) and gathered from every process, then passed to `update`. A class absent from the holdout batch keeps its multiplier exactly;
    the step and the renormalisation act on the classes seen, within the mass they held.
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

    def prior_uses(self) -> list[str]:
        uses = []
        if self.args.dro_tau != 0:
            uses.append(f"dro_tau={self.args.dro_tau} (c_y = w_y / pi_y^tau)")
        if self.args.dro_base == "prior":
            uses.append("dro_base='prior'")
        return uses + super().prior_uses()

    def class_weights(self) -> torch.Tensor:
        return losses.dro_class_weights(
            self.multipliers, self.prior, tradeoff=self.args.dro_tradeoff, base=self.args.dro_base
        )

    def logit_offsets(self, labels, teacher_logits):
        offsets = losses.dro_logit_offsets(self.class_weights(), self.log_prior, self.args.dro_tau)
        offsets = self._on(offsets, labels)[None, :]
        return offsets, offsets

    def on_step_end(self, ctx):
        step, every = ctx.global_step, self.args.dro_update_every
        # Steps K, 2K, ... before the last: no update at step 0, and none after the last step (no loss follows).
        if step == 0 or step % every or step >= ctx.max_steps:
            return
        n = len(ctx.holdout)
        # Drawn from (seed, update index) alone, so a resumed run draws the same holdout batches.
        rng = np.random.default_rng([self.args.seed, step // every])
        indices = np.sort(rng.choice(n, size=min(self.args.dro_holdout_batch_size, n), replace=False))
        error_sums = torch.zeros(self.num_classes, dtype=torch.float64)
        weight_sums = torch.zeros_like(error_sums)
        for batch in ctx.holdout_batches(indices):
            predictions = ctx.gather(ctx.student_logits(batch).argmax(-1))
            labels = ctx.gather(ctx.labels(batch))
            weights = None
            if self.args.dro_error_weighting == "teacher":
                weights = ctx.gather(self.teacher_probs(ctx.teacher_logits(batch), temperature=1.0))
            errors, totals = losses.per_class_errors(predictions, labels, self.num_classes, weights)
            error_sums += errors.cpu()
            weight_sums += totals.cpu()
        self.update(error_sums, weight_sums)

    def update(self, error_sums: torch.Tensor, weight_sums: torch.Tensor) -> None:
        """One exponentiated-gradient step from per-class error and weight sums.

        Classes with a weight sum of 0 (absent from the holdout batch) keep their multiplier exactly; the
        others step and are renormalised to the total mass they held before.
        """
        seen = (weight_sums > 0).cpu()
        errors = (error_sums / weight_sums.clamp_min(1e-12)).where(weight_sums > 0, 0.0).cpu()
        self.multipliers = losses.exponentiated_gradient_step(
            self.multipliers, errors.float(), self.args.dro_step_size, seen=seen
        )
        self.num_updates += 1

    def log_values(self) -> dict[str, float]:
        return self.weight_stats()  # state: its value at the log, not its average since the last one

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
    """Teacher objective: class-DRO with one-hot targets (the same machinery as `robust_kd`). Its holdout errors
    are label-weighted: a teacher has no teacher, so ``dro_error_weighting='teacher'`` is refused."""

    role = "teacher"
    uses_teacher = False
    param_names = tuple(n for n in RobustKD.param_names if n.startswith("dro_"))
