"""Reusing the one-hot baselines of another comparison (``--baselines_from DIR``).

A baseline depends on the data, the student, its training flags and, with the view cache, the views' seed and
epochs: not on the teacher or on the students compared. Two comparisons of several teachers on one dataset can
therefore share one baseline per seed. What a baseline depends on is read from both plan files
(`baseline_config`) and compared before anything trains; a finished baseline of the other folder then becomes
this plan's run file (marked ``shared_from``) with its model linked, not copied."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from .plan import BASELINE_KIND, VIEWS, Run
from .store import PLAN_FILE, RunStore

logger = logging.getLogger("hf_fairkd.compare")
# Argument groups whose "teacher_*" flags never reach a one-hot baseline.
TEACHER_PREFIX = "teacher_"


def _objective_only_params() -> set[str]:
    """Flags that only some objective reads, none of them the baseline's (ce)."""
    from ..objectives import get_objective, names
    from .spec import BASELINE

    used = set(get_objective(BASELINE.objective).param_names)
    return {p for name in names() for p in get_objective(name).param_names} - used


def baseline_config(document: dict) -> dict:
    """What a baseline of the plan ``document`` depends on: its configuration without the teacher's flags, the
    other objectives' flags and the reused-baseline path, plus the views (their seed is the plan's first seed;
    their epochs are the training's, already in the configuration)."""
    skip = _objective_only_params() | {"baseline_model_name_or_path", "objective_settings"}
    config = {
        group: {k: v for k, v in values.items() if not k.startswith(TEACHER_PREFIX) and k not in skip}
        for group, values in document.get("config", {}).items()
    }
    runs = document.get("runs", [])
    views = next((r for r in runs if r["kind"] == VIEWS), None)
    config["views"] = {"view_seed": views["seed"]} if views else None
    return config


def baseline_differences(theirs: dict, ours: dict, limit: int = 8) -> list[str]:
    """The baseline-relevant values that differ between two plan documents, in words."""
    a, b = baseline_config(theirs), baseline_config(ours)
    out = []
    for group in sorted(set(a) | set(b)):
        x, y = a.get(group), b.get(group)
        if not isinstance(x, dict) or not isinstance(y, dict):
            if x != y:
                out.append(f"{group}: {x!r} there, {y!r} here")
            continue
        for name in sorted(set(x) | set(y)):
            if x.get(name, "<absent>") != y.get(name, "<absent>"):
                out.append(f"{name}: {x.get(name, '<absent>')!r} there, {y.get(name, '<absent>')!r} here")
    return out[:limit]


def read_source(source_dir, document: dict) -> dict:
    """The plan document of ``source_dir``, checked against this plan's baselines before anything trains."""
    import json

    path = Path(source_dir) / PLAN_FILE
    if not path.is_file():
        raise ValueError(
            f"--baselines_from {source_dir}: no {PLAN_FILE} there. Pass the --output_dir of a comparison "
            "(the folder holding plan.json, runs/ and models/)."
        )
    theirs = json.loads(path.read_text(encoding="utf-8"))
    differences = baseline_differences(theirs, document)
    if differences:
        raise ValueError(
            f"--baselines_from {source_dir}: its baselines were trained with other settings than this comparison's "
            f"({'; '.join(differences)}). A baseline is shared only when the data, the student, its training "
            "flags and the views are the same; drop --baselines_from to train this comparison's own."
        )
    return theirs


def share_baselines(plan: list[Run], store, source_dir, source_document: dict, models_dir: Path) -> list[int]:
    """Make every finished baseline of ``source_dir`` that this plan lacks one of its runs: the run file (this
    plan's digest, ``shared_from``) and the model folder as a relative link (a copy where links are refused).
    Claimed like a run, so two workers do not share the same seed at once. Returns the seeds shared."""
    source_dir = Path(source_dir)
    source = RunStore(source_dir / "runs", digest=source_document["digest"])
    shared = []
    for run in plan:
        if run.kind != BASELINE_KIND or store.done(run.key) or not source.done(run.key):
            continue
        if not store.claim(run.key):
            continue  # another worker is training or sharing it
        try:
            record = {**source.read(run.key), "plan_digest": store.digest, "shared_from": str(source_dir)}
            _link_model(source_dir / "models" / run.file_name, models_dir / run.file_name)
            store.write(run.key, record)
            shared.append(run.seed)
        finally:
            store.release(run.key)
    if shared:
        logger.info(f"[compare] baselines of seeds {shared} shared from {source_dir}: not retrained.")
    return shared


def _link_model(source: Path, target: Path) -> None:
    """``target`` -> ``source``; a folder left there by an unfinished attempt of this plan is replaced."""
    if not source.is_dir():
        raise ValueError(
            f"--baselines_from: {source} is missing, though its run file is there; retrain it there."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)  # not a finished run of this plan (it has no run file): an interrupted attempt
    try:
        target.symlink_to(
            os.path.relpath(source.resolve(), target.parent.resolve()), target_is_directory=True
        )
    except OSError:  # no symlinks here (e.g. Windows without the privilege): a copy
        shutil.copytree(source, target)
