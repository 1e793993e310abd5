"""hf_fairkd: knowledge distillation that protects rare classes, on the Hugging Face stack.

Imports are lazy so that `hf_fairkd.data` or `hf_fairkd.metrics` do not pull in transformers and torch.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "DistillationArguments": "hf_fairkd.config",
    "DistillationTrainer": "hf_fairkd.trainer",
    "OBJECTIVES": "hf_fairkd.objectives",
    "Objective": "hf_fairkd.objectives",
    "get_objective": "hf_fairkd.objectives",
    "register_objective": "hf_fairkd.objectives",
    "student_objectives": "hf_fairkd.objectives",
    "teacher_objectives": "hf_fairkd.objectives",
    "load_subgroup_metrics": "hf_fairkd.results.hub",
    "subgroup_report": "hf_fairkd.metrics",
    "load_long_tailed": "hf_fairkd.data",
}

__all__ = [*sorted(_LAZY), "available_objectives"]


def available_objectives() -> list[str]:
    """The registered objective names (students and teachers); also `hf_fairkd.objectives.names()`."""
    return importlib.import_module("hf_fairkd.objectives").names()


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_fairkd' has no attribute {name!r}")
