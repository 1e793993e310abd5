"""Checkpoints that survive a kill: completeness checks, resume resolution, and the objective's state.

A checkpoint holds, besides the Trainer's files, the objective state (class-DRO multipliers, teacher
reliability) as safetensors. It is written before the Trainer's own files, and trainer_state.json (the
Trainer's last write) marks a finished save.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

OBJECTIVE_STATE_NAME = "fairkd_objective_state.safetensors"


_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE_FILE = "trainer_state.json"  # the Trainer writes it last: its presence marks a finished save


def checkpoint_problem(folder: str | os.PathLike, required: tuple[str, ...] = ()) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None if it is.

    A kill mid-save leaves files missing or cut short: trainer_state.json is written last, a safetensors header
    must cover its whole file, and torch pickles are zip archives whose directory sits at their very end.
    """
    import zipfile

    from safetensors import safe_open

    path = Path(folder)
    names = sorted(p.name for p in path.iterdir() if p.is_file())
    for name in (TRAINER_STATE_FILE, *required):
        if name not in names:
            return f"it has no {name} (its save was interrupted)"
    for name in names:
        file = path / name
        try:
            if name.endswith(".json"):
                json.loads(file.read_text(encoding="utf-8"))
            elif name.endswith(".safetensors"):
                with safe_open(file, framework="pt"):
                    pass
            elif name.endswith((".pt", ".pth", ".bin")) and not zipfile.is_zipfile(file):
                return f"{name} is truncated (not a complete torch archive)"
        except Exception as err:  # noqa: BLE001 - any read failure means the file is broken
            return f"{name} is unreadable ({type(err).__name__}: {err})"
    return None


def _checkpoints(folder: Path) -> list[Path]:
    """checkpoint-<step> sub-folders of ``folder``, oldest step first."""
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(resume, output_dir: str, required: tuple[str, ...] = ()) -> str | None:
    """The checkpoint to resume from, given `Trainer.train`'s ``resume_from_checkpoint``.

    None / False / "false": none. True / "true": the latest complete checkpoint of ``output_dir``; a folder of
    checkpoints: its latest complete one. Incomplete checkpoints (a kill mid-save) are skipped with a warning;
    if none is complete, training starts from step 0 (what an uninterrupted run does). A checkpoint folder
    named explicitly must be complete, else a ValueError says why.
    """
    text = str(resume).strip().lower() if isinstance(resume, bool | str) else None
    if resume is None or text in ("false", "", "none"):
        return None
    if text == "true":
        search = Path(output_dir)
    else:
        search = Path(resume)
        if not search.is_dir():
            raise ValueError(
                f"--resume_from_checkpoint {resume} is not a folder: pass a checkpoint-<step> folder, the output "
                "directory holding them, or true (the latest complete checkpoint of --output_dir)."
            )
        if not _checkpoints(search):  # a single checkpoint, named explicitly
            problem = checkpoint_problem(search, required)
            if problem:
                raise ValueError(
                    f"Checkpoint {resume} is incomplete: {problem}. Resume from an earlier checkpoint, or pass "
                    f"--resume_from_checkpoint {search.parent} (or true) to use the latest complete one."
                )
            return str(search)
    for candidate in reversed(_checkpoints(search)):
        problem = checkpoint_problem(candidate, required)
        if problem is None:
            return str(candidate)
        logger.warning("Skipping incomplete checkpoint %s: %s. Trying the one before it.", candidate, problem)
    logger.warning("No complete checkpoint in %s: training starts from step 0.", search)
    return None


def write_objective_state(folder: str, objective) -> None:
    """The objective's tensors (`Objective.state_dict`) into ``folder``, atomically."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    stale = os.path.join(folder, TRAINER_STATE_FILE)  # left by an earlier, interrupted run
    if os.path.exists(stale):
        os.remove(stale)
    state = {k: v.detach().cpu().contiguous() for k, v in objective.state_dict().items()}
    tmp = os.path.join(folder, OBJECTIVE_STATE_NAME + ".tmp")
    save_file(state, tmp, metadata={"objective": objective.name})
    os.replace(tmp, os.path.join(folder, OBJECTIVE_STATE_NAME))


def read_objective_state(folder: str, objective) -> bool:
    """Restore ``objective`` from ``folder``; False if there is no state file (and the objective has no state)."""
    from safetensors import safe_open

    path = os.path.join(folder, OBJECTIVE_STATE_NAME)
    if not os.path.exists(path):
        if objective.state_dict():
            raise ValueError(
                f"{folder} has no {OBJECTIVE_STATE_NAME}: it was not written by DistillationTrainer with "
                f"objective={objective.name!r}, or its save was interrupted. Resume from an earlier checkpoint."
            )
        return False
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if metadata.get("objective") != objective.name:
        raise ValueError(
            f"{folder} was saved with objective={metadata.get('objective')!r}, not {objective.name!r}."
        )
    objective.load_state_dict(state)
    if "last_dro_step" in metadata:  # written before the class-DRO update moved after the step (on_step_end)
        raise ValueError(
            f"{folder} was written by an older hf_fairkd, whose class-DRO update of a step ran after that step's "
            "checkpoint: resuming it would skip an update. Restart the run, or resume with that version."
        )
    logger.info("Restored %s state from %s", objective.name, folder)
    return True
