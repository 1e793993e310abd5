"""The named student and teacher objectives, one small class each, in one registry.

``base``: the registry, `LossOutput` and `Objective` (with ce, erm, label_smoothing); ``distillation``: kd,
kd_pt, kd_sim, ada_alpha, ada_margin, balanced_kd and the balanced teacher; ``dro``: robust_kd and the dro
teacher (class-DRO, or group DRO over groups of the data with ``dro_groups``); ``hooks``: `ObjectiveContext`
and `ObjectiveCallback`, through which the trainer runs each objective's hooks (before training, after each
optimisation step, after training). Register a new objective with `register_objective`;
`student_objectives()` / `teacher_objectives()` read the registry at call time.
"""

from .base import (
    OBJECTIVES,
    LabelSmoothing,
    LossOutput,
    Objective,
    OneHot,
    TeacherERM,
    get_objective,
    names,
    objective_settings_help,
    register_objective,
    student_objectives,
    teacher_free_objectives,
    teacher_objectives,
)
from .distillation import (
    KD,
    AdaptiveAlpha,
    AdaptiveMargin,
    BalancedKD,
    KDClassSimilarity,
    KDTrueClassProbability,
    TeacherBalanced,
)
from .dro import RobustKD, TeacherDRO
from .hooks import ObjectiveCallback, ObjectiveContext

__all__ = [
    "OBJECTIVES",
    "LossOutput",
    "Objective",
    "objective_settings_help",
    "ObjectiveCallback",
    "ObjectiveContext",
    "get_objective",
    "names",
    "register_objective",
    "student_objectives",
    "teacher_free_objectives",
    "teacher_objectives",
    "OneHot",
    "TeacherERM",
    "LabelSmoothing",
    "KD",
    "AdaptiveAlpha",
    "AdaptiveMargin",
    "BalancedKD",
    "KDClassSimilarity",
    "KDTrueClassProbability",
    "TeacherBalanced",
    "RobustKD",
    "TeacherDRO",
]
