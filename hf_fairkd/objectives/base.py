"""The objective registry and the `Objective` base class.

An objective turns (student logits, labels, teacher logits) into one loss per example plus named
components for the logs. It holds the little state its paper needs (teacher reliability, class-DRO
multipliers) as tensors exposed through ``state_dict`` so checkpoints carry it, and measures that state itself
in its hooks (``on_train_begin``, ``on_step_end``, ``on_train_end``), which the trainer runs with an
`hooks.ObjectiveContext` (the holdout batches, the wrapped student, the teacher, the process group). The maths
is in ``hf_fairkd.losses``; the trainer owns models, data and processes.

Two conventions hold for every objective:

* The teacher's targets are built from the teacher's logits *as the student sees them*: after
  ``teacher_logit_mode`` (`Objective.teacher_view`). Teacher reliability (instance-level ``ada_alpha``
  'prob' and 'correct', instance-level margins, and the class-level holdout recall) is measured on that
  same view: its argmax, and its probabilities at T = 1 (`Objective.teacher_reliability_signals`).
* The class prior pi = n_y / n is only defined when every class has training rows. An objective that
  reads it (`Objective.prior_uses`) refuses a class with none (`Objective.check_prior`), because the
  clamped log prior log(1e-12) = -27.6 would shift that class's logits by ~28.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from .. import losses
from .settings import check_settings_class, make_settings, settings_help

if TYPE_CHECKING:
    from .hooks import ObjectiveContext

OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str):
    """Class decorator adding an objective to the registry under ``name``."""

    def wrap(cls):
        if name in OBJECTIVES:
            raise ValueError(f"An objective named {name!r} is already registered.")
        check_settings_class(cls)  # a malformed settings_class fails at import, not in a user's run
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return wrap


def names() -> list[str]:
    """The registered objective names, sorted."""
    return sorted(OBJECTIVES)


def student_objectives() -> list[str]:
    """Names of the registered objectives that train a student (``role == "student"``), sorted."""
    return sorted(name for name, cls in OBJECTIVES.items() if cls.role == "student")


def teacher_objectives() -> list[str]:
    """Names of the registered objectives that train a teacher (``role == "teacher"``), sorted."""
    return sorted(name for name, cls in OBJECTIVES.items() if cls.role == "teacher")


def teacher_free_objectives() -> list[str]:
    """Names of the registered objectives that need no teacher (``uses_teacher`` False), sorted."""
    return sorted(name for name, cls in OBJECTIVES.items() if not cls.uses_teacher)


def get_objective(name: str) -> type[Objective]:
    """The registered objective class for ``name``; unknown names list the known ones."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"Unknown objective {name!r}. Registered objectives: {', '.join(sorted(OBJECTIVES))}."
        ) from None


def objective_settings_help(name: str) -> str:
    """What ``--objective_settings`` takes for the registered objective ``name``: each setting its objective
    declares (``settings_class``) with its type, default and help, one a line; or that it declares none."""
    return settings_help(get_objective(name))


@dataclass
class LossOutput:
    """One loss per example, its named parts (each ``[batch]``) and scalar diagnostics for the logs."""

    per_example: torch.Tensor
    components: dict[str, torch.Tensor] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)


class Objective:
    """Base class. ``args`` is a `DistillationArguments`; ``class_counts`` the training count of each class.

    ``role`` is "student" or "teacher" (the lists `student_objectives()` / `teacher_objectives()`);
    ``uses_teacher`` says whether `compute` reads teacher logits; ``needs_holdout`` whether the hooks read the
    holdout split (the trainer refuses to start without one). ``description`` is one line for cards and listings;
    a subclass without one gets the first line of its docstring.

    ``settings_class`` (None: none) is a dataclass of the objective's own settings, typed and with defaults
    (`hf_fairkd.objectives.settings`); they are given as ``args.objective_settings`` (for ``args.objective``)
    and read as ``self.settings``, an instance of it. The built-in objectives declare none: their options are
    fields of the arguments (``param_names``).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    role: ClassVar[str] = "student"
    uses_teacher: ClassVar[bool] = True
    param_names: ClassVar[tuple[str, ...]] = ()
    settings_class: ClassVar[type | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "description" not in vars(cls):
            cls.description = (cls.__doc__ or "").strip().split("\n")[0]

    def __init__(self, args, class_counts: torch.Tensor):
        self.args = args
        # args.objective_settings are args.objective's (checked again here); another objective built from the
        # same args (e.g. the teacher's, checked before a run) gets its declared defaults
        ours = getattr(args, "objective", None) == self.name
        self.settings = make_settings(type(self), getattr(args, "objective_settings", None) if ours else None)
        self.num_classes = int(class_counts.numel())
        self.class_counts = torch.as_tensor(class_counts).double()
        # an empty class gets a tiny prior, not log(0); objectives that read the prior refuse it (check_prior)
        counts = self.class_counts.clamp_min(1e-12)
        self.prior = (counts / counts.sum()).float()
        self.log_prior = torch.log(self.prior)
        self.teacher_reliability: torch.Tensor | None = None
        self.class_similarity: torch.Tensor | None = None
        # groups of the data (`attach_groups`): their names and the [classes, groups] training counts
        self.group_names: list[str] | None = None
        self.cell_counts: torch.Tensor | None = None

    # what the hooks read (the trainer only checks `needs_holdout`)
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

    # groups of the data (hf_fairkd.groups): attributes such as site or camera, not output classes
    @property
    def uses_groups(self) -> bool:
        """Whether `compute` and the hooks read the rows' group ids (the trainer then passes ``group_ids=``)."""
        return False

    def group_setting(self) -> str:
        """The setting that makes this objective use groups, for messages."""
        return ""

    def attach_groups(self, group_names: list[str], cell_counts: torch.Tensor) -> None:
        """The attribute groups (codes 0..G-1 of the ``group_ids`` column) and the training count of every class x
        group cell, ``cell_counts`` [num_classes, G]. The trainer calls this before training."""
        cell_counts = torch.as_tensor(cell_counts, dtype=torch.float64)
        if tuple(cell_counts.shape) != (self.num_classes, len(group_names)):
            raise ValueError(
                f"cell_counts has shape {tuple(cell_counts.shape)}, expected (num_classes, number of groups) = "
                f"({self.num_classes}, {len(group_names)}): one training count per class x group cell."
            )
        self.group_names = list(group_names)
        self.cell_counts = cell_counts

    def check_groups(self) -> None:
        """Refuse to train an objective that uses groups before any were attached."""
        if self.uses_groups and self.group_names is None:
            raise ValueError(
                f"objective={self.name!r} with {self.group_setting()} weights or measures groups of the data, but "
                "no groups were attached: pass group_columns=[...] to DistillationTrainer (or --group_columns), "
                "or call objective.attach_groups(group_names, cell_counts) before training."
            )

    # the class prior
    def prior_uses(self) -> list[str]:
        """The settings through which this objective reads the class prior (empty: it does not)."""
        if self.uses_teacher and self.args.teacher_logit_mode == "prior_adjusted":
            return ["teacher_logit_mode='prior_adjusted'"]
        return []

    def check_prior(self, class_names: list[str] | None = None) -> None:
        """Refuse classes without training rows when the prior is read (their log prior would be -27.6)."""
        uses = self.prior_uses()
        empty = torch.nonzero(self.class_counts <= 0).flatten().tolist()
        if not uses or not empty:
            return
        shown = [class_names[i] for i in empty] if class_names else empty
        raise ValueError(
            f"Classes with no training rows: {shown[:20]} (ids {empty[:20]}). objective={self.name!r} reads the "
            f"class prior pi = n_y / n through {' and '.join(uses)}, and an empty class would get log pi = "
            "log(1e-12) = -27.6, a shift of ~28 in its logits. Fix: add training rows for these classes, drop them "
            "from the label space (num_labels / id2label), or use an objective that does not read the prior "
            "(e.g. ce, kd, ada_alpha, ada_margin with teacher_logit_mode='raw')."
        )

    # hooks: the trainer runs them through `hooks.ObjectiveCallback`; every one is a no-op here
    def on_train_begin(self, ctx: ObjectiveContext) -> None:
        """Before the first loss (at the start of training, or of an evaluation that comes first): measure
        what the loss needs. Runs again at each `train()`, after a resumed state is loaded: keep what is set."""

    def on_step_end(self, ctx: ObjectiveContext) -> None:
        """After each optimisation step (``ctx.global_step`` is the number of steps done), on every process."""

    def on_train_end(self, ctx: ObjectiveContext) -> None:
        """After training (and after the best model is loaded, if asked), before the final save."""

    def log_values(self) -> dict[str, float]:
        """Current values of the state to log (they replace any average of the same key over the steps)."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {}
        if self.teacher_reliability is not None:
            state["teacher_reliability"] = self.teacher_reliability
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "teacher_reliability" in state:
            self.teacher_reliability = state["teacher_reliability"].float()

    def compute(
        self,
        student_logits: torch.Tensor,
        labels: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        group_ids: torch.Tensor | None = None,
    ) -> LossOutput:
        """The loss of a batch. ``group_ids`` (the rows' group codes) is passed only when `uses_groups`, so an
        objective that uses no groups may define compute(student_logits, labels, teacher_logits)."""
        raise NotImplementedError

    # the teacher as the student sees it
    def teacher_view(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The teacher's logits after ``teacher_logit_mode`` (raw, prior-adjusted or shifted), before T."""
        shift = self.args.teacher_logit_shift
        return losses.adjust_teacher_logits(
            teacher_logits,
            mode=self.args.teacher_logit_mode,
            log_prior=self.log_prior,
            tau=self.args.teacher_logit_tau,
            shift=torch.tensor(shift) if shift else None,
        )

    def teacher_probs(self, teacher_logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """softmax(teacher_view(t) / T), T = ``args.temperature`` unless given."""
        return losses.teacher_probabilities(
            self.teacher_view(teacher_logits), self.args.temperature if temperature is None else temperature
        )

    def teacher_reliability_signals(
        self, teacher_logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example: 1[argmax = y] and p(y) at T = 1, both on `teacher_view` (the targets the student sees).

        The one measure of teacher reliability: instance-level ``ada_alpha`` ('correct' / 'prob') and the
        trainer's class-level holdout recall (``ada_alpha`` / ``ada_margin`` at class level) all use it.
        """
        view = losses._float(self.teacher_view(teacher_logits))
        labels = labels.to(view.device)
        correct = (view.argmax(-1) == labels).float()
        p_true = F.softmax(view, dim=-1).gather(1, labels[:, None])[:, 0]
        return correct, p_true

    def _on(self, tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return tensor.to(like.device)


@register_objective("ce")
class OneHot(Objective):
    """CE(e_y, s): the one-hot baseline every distilled student is compared with."""

    description = "one-hot cross-entropy, no teacher: the baseline every distilled student is compared with"
    uses_teacher = False

    def compute(self, student_logits, labels, teacher_logits=None):
        ce = losses.one_hot_cross_entropy(student_logits, labels)
        return LossOutput(ce, {"one_hot": ce})


@register_objective("erm")
class TeacherERM(OneHot):
    """Teacher objective: plain empirical risk minimisation, CE(e_y, t)."""

    description = "empirical risk minimisation: plain cross-entropy on the long-tailed data"
    role = "teacher"


@register_objective("label_smoothing")
class LabelSmoothing(Objective):
    """CE((1-eps) e_y + eps/m, s): Tang et al.'s teacher-free control."""

    description = "cross-entropy with label smoothing and no teacher (Tang et al.'s teacher-free control)"
    uses_teacher = False
    param_names = ("label_smoothing_epsilon",)

    def compute(self, student_logits, labels, teacher_logits=None):
        targets = losses.label_smoothing_targets(labels, self.num_classes, self.args.label_smoothing_epsilon)
        loss = losses.soft_cross_entropy(student_logits, targets)
        return LossOutput(loss, {"one_hot": loss})
