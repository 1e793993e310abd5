"""The results of a run: one record (``subgroup_metrics.json``), its card and plot, and the Hub push.

Dependencies run one way: ``schema`` <- ``card_block`` <- ``card_text`` <- ``card_groups`` <- ``card`` ->
``plots`` -> ``plot_groups``; ``hub``
reads records back through ``card_block`` and pushes any folder; ``publishing`` (the trainer's mixin) uses
``schema``, ``card`` and ``hub``. Imports are lazy, so reading a record back loads neither matplotlib nor
the card renderer, and nothing here chooses a matplotlib backend.
"""

import importlib

_LAZY = {
    "FORMAT_VERSION": "schema",
    "METRICS_FILE": "schema",
    "build_run_record": "schema",
    "format_summary": "schema",
    "groups_hurt_and_helped": "schema",
    "public_name": "schema",
    "run_settings": "schema",
    "build_model_card": "card",
    "save_card_and_metrics": "card",
    "plot_per_class_accuracy": "plots",
    "HubPushError": "hub",
    "finished_run_push": "hub",
    "load_subgroup_metrics": "hub",
    "preflight": "hub",
    "push_output_dir": "hub",
    "recorded_objective": "hub",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
