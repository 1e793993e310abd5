"""The named student and teacher objectives, one small class each, in one registry.

``base``: the registry, `LossOutput` and `Objective` (with ce, erm, label_smoothing); ``distillation``: kd,
kd_pt, kd_sim, ada_alpha, ada_margin, balanced_kd and the balanced teacher; ``dro``: robust_kd and the dro
teacher. Register a new objective with `register_objective`.
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
    register_objective,
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

TEACHER_OBJECTIVES = ("erm", "balanced", "dro")
STUDENT_OBJECTIVES = tuple(name for name in OBJECTIVES if name not in TEACHER_OBJECTIVES)

__all__ = [
    "OBJECTIVES",
    "STUDENT_OBJECTIVES",
    "TEACHER_OBJECTIVES",
    "LossOutput",
    "Objective",
    "get_objective",
    "names",
    "register_objective",
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
