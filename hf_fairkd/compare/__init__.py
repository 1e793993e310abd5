"""Which objective for my data: a comparison of student objectives over seeds, as a product feature
(`recipes/compare_objectives.py`). One concept a module:

- `spec`: `CompareArguments`, the settings of each objective (sweeps and their product), checked before training;
- `plan`: the runs (teacher, baseline per seed, student per setting and seed), their order and dependencies,
  the plan document;
- `store`: run files written as runs finish, claims shared by workers, the plan file written once, code version;
- `runner`: one run with the distillation run's steps, the worker loop (and the view-cache hook);
- `stats`: the one significance rule (pooled-sd over seeds; majority of seeds for the per-class/group test);
- `summary`: run files read as settings (headline metrics, values over seeds, hurt and helped);
- `choice`: the rule the user names (best_worst_group, best_worst_class, best_overall) and the "which objective"
  table;
- `pareto`: the Pareto front and plot;
- `report`: comparison.json, comparison.md, the plot; `publish`: the chosen student in one Hub commit;
- `run`: `compare`, all of it.
"""

from .spec import CompareArguments

__all__ = ["CompareArguments", "compare"]


def compare(*args, **kwargs):
    """`hf_fairkd.compare.run.compare` (imported on use: it needs torch and transformers)."""
    from .run import compare as _compare

    return _compare(*args, **kwargs)
