"""hf_fairkd: knowledge distillation that protects rare classes, on the Hugging Face stack."""

__version__ = "0.1.0"

from .config import DistillationArguments
from .objectives import OBJECTIVES, STUDENT_OBJECTIVES, TEACHER_OBJECTIVES, get_objective, register_objective
from .trainer import DistillationTrainer

objectives = sorted(OBJECTIVES)


def load_subgroup_metrics(
    repo_id_or_path: str, revision: str | None = None, token: str | None = None
) -> dict:
    """The subgroup metrics of a distilled model, from a local folder or a Hub repo (file, else the card)."""
    from .cards import load_subgroup_metrics as _load

    return _load(repo_id_or_path, revision=revision, token=token)


__all__ = [
    "DistillationArguments",
    "DistillationTrainer",
    "OBJECTIVES",
    "STUDENT_OBJECTIVES",
    "TEACHER_OBJECTIVES",
    "get_objective",
    "load_subgroup_metrics",
    "objectives",
    "register_objective",
]
