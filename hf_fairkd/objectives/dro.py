"""Wang et al.'s class-DRO (the robust_kd student and the dro teacher), and the same machinery over groups of the
data (``dro_groups``: Sagawa et al.'s group DRO)."""

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
    drawn from (seed, update index) and gathered from every process, then passed to `update`. A class absent from
    the holdout batch keeps its multiplier exactly; the step and the renormalisation act on the classes seen,
    within the mass they held. ``dro_group_adjustment`` C > 0 adds C / sqrt(n_y) to each error (n_y the class's
    training count); 0 leaves it as is.

    ``dro_groups`` 'group' (the attribute groups g of the group columns) or 'class_x_group' (the cells y * G + g):
    lambda is over those groups, and, groups not being output classes, they weight examples instead of shifting
    logits: a row of group k weighs v_k = (w_k / pi_k^tau) / sum_h pi_h (w_h / pi_h^tau), pi the groups'
    training prior (`losses.group_dro_example_weights`). With tau = 1, a uniform base and b = 1 the expected loss
    is sum_k lambda_k L_k, Sagawa et al.'s group DRO. The updates use each group's label-weighted 0-1 holdout
    error plus C / sqrt(n_k) (n_k its training count; none for n_k = 0).
    """

    description = "distillation with class-DRO weights on the classes of highest holdout error (Wang et al.)"
    param_names = _Distillation.param_names + (
        "dro_tradeoff",
        "dro_base",
        "dro_tau",
        "dro_step_size",
        "dro_update_every",
        "dro_error_weighting",
        "dro_holdout_batch_size",
        "dro_groups",
        "dro_group_adjustment",
    )

    def __init__(self, args, class_counts):
        super().__init__(args, class_counts)
        self.partition = getattr(args, "dro_groups", "class")
        self.adjustment = float(getattr(args, "dro_group_adjustment", 0.0))
        if self.partition != "class" and args.dro_error_weighting == "teacher":
            raise ValueError(
                f"dro_error_weighting='teacher' weights each holdout row's error for every CLASS by the teacher's "
                f"probability of that class; with dro_groups={self.partition!r} lambda is over groups of the data, "
                "which the teacher does not predict. Use dro_error_weighting='label' (each group's 0-1 holdout "
                "error), or dro_groups='class'."
            )
        # one multiplier per partition group, uniform at the start; for groups they are set by attach_groups
        self.multipliers: torch.Tensor | None = None
        if self.partition == "class":
            self.multipliers = torch.full((self.num_classes,), 1.0 / self.num_classes)
        self.num_updates = 0

    @property
    def needs_holdout_updates(self) -> bool:
        return True

    @property
    def uses_groups(self) -> bool:
        return self.partition != "class"

    def group_setting(self) -> str:
        return f"dro_groups={self.partition!r}"

    def attach_groups(self, group_names, cell_counts):
        super().attach_groups(group_names, cell_counts)
        if self.uses_groups:
            size = self.partition_counts().numel()
            self.multipliers = torch.full((size,), 1.0 / size)

    def prior_uses(self) -> list[str]:
        if self.uses_groups:  # dro_tau and dro_base read the groups' prior, not the classes'
            return super().prior_uses()
        uses = []
        if self.args.dro_tau != 0:
            uses.append(f"dro_tau={self.args.dro_tau} (c_y = w_y / pi_y^tau)")
        if self.args.dro_base == "prior":
            uses.append("dro_base='prior'")
        return uses + super().prior_uses()

    # the partition: classes, groups or cells
    def partition_counts(self) -> torch.Tensor:
        """Training rows of every partition group (float64)."""
        return losses.partition_counts(self.partition, self.class_counts, self.cell_counts)

    def partition_prior(self) -> torch.Tensor:
        """pi over the partition groups: the class prior, or the groups' training shares (0 for empty ones)."""
        if not self.uses_groups:
            return self.prior
        counts = self.partition_counts()
        return (counts / counts.sum().clamp_min(1.0)).float()

    def group_weights(self) -> torch.Tensor:
        """w = (1-b) base + b lambda over the partition groups (the classes with dro_groups='class')."""
        return losses.dro_class_weights(
            self.multipliers, self.partition_prior(), tradeoff=self.args.dro_tradeoff, base=self.args.dro_base
        )

    def class_weights(self) -> torch.Tensor:
        return self.group_weights()

    def logit_offsets(self, labels, teacher_logits):
        if self.uses_groups:
            return None, None
        offsets = losses.dro_logit_offsets(self.class_weights(), self.log_prior, self.args.dro_tau)
        offsets = self._on(offsets, labels)[None, :]
        return offsets, offsets

    def compute(self, student_logits, labels, teacher_logits=None, group_ids=None):
        if not self.uses_groups:
            out = super().compute(student_logits, labels, teacher_logits)
        else:
            self.check_groups()
            weights = None  # a batch without group ids (an evaluation set that carries none): unweighted
            if group_ids is not None:
                ids = losses.partition_ids(self.partition, labels, group_ids, len(self.group_names))
                prior = self.partition_prior()
                per_group = losses.group_dro_example_weights(self.group_weights(), prior, self.args.dro_tau)
                weights = self._on(per_group, labels)[ids]
            alpha = self.alpha_for(labels, teacher_logits) if self.uses_teacher else 0.0
            out = self.distill(student_logits, labels, teacher_logits, alpha, (None, None), weights)
        out.scalars.update(self.weight_stats())
        return out

    # the multipliers
    def on_train_begin(self, ctx):
        self.check_groups()

    def on_step_end(self, ctx):
        step, every = ctx.global_step, self.args.dro_update_every
        # Steps K, 2K, ... before the last: no update at step 0, and none after the last step (no loss follows).
        if step == 0 or step % every or step >= ctx.max_steps:
            return
        self.check_groups()
        n = len(ctx.holdout)
        # Drawn from (seed, update index) alone, so a resumed run draws the same holdout batches.
        rng = np.random.default_rng([self.args.seed, step // every])
        indices = np.sort(rng.choice(n, size=min(self.args.dro_holdout_batch_size, n), replace=False))
        error_sums = torch.zeros(self.multipliers.numel(), dtype=torch.float64)
        weight_sums = torch.zeros_like(error_sums)
        for batch in ctx.holdout_batches(indices):
            predictions = ctx.gather(ctx.student_logits(batch).argmax(-1))
            labels = ctx.gather(ctx.labels(batch))
            if self.uses_groups:
                group_ids = ctx.gather(ctx.group_ids(batch))
                ids = losses.partition_ids(self.partition, labels, group_ids, len(self.group_names))
                errors, totals = losses.per_group_errors(predictions != labels, ids, error_sums.numel())
            else:
                weights = None
                if self.args.dro_error_weighting == "teacher":
                    weights = ctx.gather(self.teacher_probs(ctx.teacher_logits(batch), temperature=1.0))
                errors, totals = losses.per_class_errors(predictions, labels, self.num_classes, weights)
            error_sums += errors.cpu()
            weight_sums += totals.cpu()
        self.update(error_sums, weight_sums)

    def update(self, error_sums: torch.Tensor, weight_sums: torch.Tensor) -> None:
        """One exponentiated-gradient step from per-group (per-class) error and weight sums.

        Groups with a weight sum of 0 (absent from the holdout batch) keep their multiplier exactly; the others
        step on their error plus C / sqrt(n_k) and are renormalised to the total mass they held before.
        """
        seen = (weight_sums > 0).cpu()
        errors = (error_sums / weight_sums.clamp_min(1e-12)).where(weight_sums > 0, 0.0).cpu()
        errors = losses.size_adjusted_errors(errors, self.partition_counts(), self.adjustment)
        self.multipliers = losses.exponentiated_gradient_step(
            self.multipliers, errors.float(), self.args.dro_step_size, seen=seen
        )
        self.num_updates += 1

    def log_values(self) -> dict[str, float]:
        return self.weight_stats()  # state: its value at the log, not its average since the last one

    def weight_stats(self) -> dict[str, float]:
        if self.multipliers is None:
            return {}
        w = self.group_weights()
        if self.uses_groups:
            return {
                "group_weight_min": float(w.min()),
                "group_weight_max": float(w.max()),
                "group_weight_argmax": float(w.argmax()),
            }
        entropy = -(w * torch.log(w.clamp_min(1e-12))).sum()
        return {
            "class_weight_min": float(w.min()),
            "class_weight_max": float(w.max()),
            "class_weight_entropy": float(entropy),
            "class_weight_argmax": float(w.argmax()),
        }

    def state_dict(self):
        state = super().state_dict()
        if self.multipliers is not None:
            state["dro_multipliers"] = self.multipliers
            state["dro_num_updates"] = torch.tensor(self.num_updates)
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "dro_multipliers" in state:
            loaded = state["dro_multipliers"].float()
            if self.multipliers is not None and loaded.shape != self.multipliers.shape:
                raise ValueError(
                    f"The saved DRO multipliers have {loaded.numel()} entries but this objective has "
                    f"{self.multipliers.numel()} (dro_groups={self.partition!r}): resume with the dro_groups and "
                    "group_columns (and data) of the run that saved them."
                )
            self.multipliers = loaded
            self.num_updates = int(state["dro_num_updates"])


@register_objective("dro")
class TeacherDRO(RobustKD):
    """Teacher objective: class-DRO (or group DRO) with one-hot targets (the same machinery as `robust_kd`). Its
    holdout errors are label-weighted: a teacher has no teacher, so ``dro_error_weighting='teacher'`` is refused."""

    description = "class-DRO: cross-entropy reweighted towards the classes with the highest loss"
    role = "teacher"
    uses_teacher = False
    param_names = tuple(n for n in RobustKD.param_names if n.startswith("dro_"))
