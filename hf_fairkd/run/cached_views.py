"""Training from a view cache (`hf_fairkd.teacher.view_cache`): the stored views and teacher logits of each
row at the trainer's epoch.

`with_cached_views` gives a prepared train split (`hf_fairkd.run.preprocessing.prepare_splits`, fast pixel path)
a transform that reads, for row n at epoch e, the stored view (e, n) and its logits in the columns of a teacher
cache, so `DistillationTrainer` takes them as cached logits and runs no teacher. The epoch comes from the
`CachedViews` callback (`view_cache_callback`), which the trainer must be given; the row from the ``view_row``
column added here, so it survives the trainer's own maps and any sampler.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from ..teacher.cache_format import (
    DENSE_COLUMN,
    TAIL_LOGSUMEXP_COLUMN,
    TOPK_INDICES_COLUMN,
    TOPK_LOGITS_COLUMN,
    stored_views_of,
)
from ..teacher.model import TEACHER_INPUT_COLUMNS
from .view_cache import FLIPS, LOGIT_FILES, SHIFTS, check_view_cache, refusal, source_split, view_cache_info

VIEW_ROW_COLUMN = "view_row"


class CachedViews(TrainerCallback):
    """A view cache opened for training: the stored views (and teacher logits, with ``logits``) of row n at
    epoch ``epoch``, which the callback hooks set from the trainer's state. Rows are refused while no epoch is
    set, so a trainer not given this callback fails at its first batch instead of reusing epoch 0's views."""

    def __init__(self, path, record: dict, logits: bool = True):
        self.path, self.record, self.logits = Path(path), record, logits
        self.epoch: int | None = None
        self._open()

    def _open(self) -> None:
        self.flips = torch.from_numpy(np.load(self.path / FLIPS))  # small: read whole
        self.shifts = torch.from_numpy(np.load(self.path / SHIFTS).astype(np.int64))
        kind = (
            [DENSE_COLUMN]
            if self.record["kind"] == "dense"
            else [TOPK_LOGITS_COLUMN, TOPK_INDICES_COLUMN, TAIL_LOGSUMEXP_COLUMN]
        )
        # memory-mapped: pages are read as batches ask for them, and worker processes share them
        self.arrays = (
            {c: np.load(self.path / LOGIT_FILES[c], mmap_mode="r") for c in kind} if self.logits else {}
        )

    def __getstate__(self):  # to a dataloader worker: the path, not the arrays' bytes
        return {k: v for k, v in self.__dict__.items() if k not in ("flips", "shifts", "arrays")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __deepcopy__(self, memo):  # dataset copies (map, select, ...) share one epoch
        return self

    @property
    def epochs(self) -> int:
        return int(self.record["epochs"])

    def set_epoch(self, epoch: int | None) -> None:
        """Read epoch ``epoch``'s views from now on (None: refuse rows until an epoch is set)."""
        if epoch is not None and not 0 <= epoch < self.epochs:
            raise refusal(
                self.path,
                f"holds views for {self.epochs} epochs and epoch {epoch + 1} was asked for",
                f"train at most {self.epochs} epochs, or rebuild it with more epochs",
            )
        self.epoch = epoch

    def _rows(self, batch) -> tuple[int, np.ndarray]:
        if self.epoch is None:
            raise ValueError(
                "No epoch is set for the cached views: give the trainer their callback "
                "(callbacks=[hf_fairkd.teacher.view_cache_callback(train_dataset)]), or call set_epoch(e) to read "
                "epoch e's views."
            )
        return self.epoch, np.asarray(batch[VIEW_ROW_COLUMN], dtype=np.int64)

    def params(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored (flips, shifts) of a batch's rows at the current epoch."""
        epoch, rows = self._rows(batch)
        index = torch.from_numpy(rows)
        return self.flips[epoch, index], self.shifts[epoch, index]

    def columns(self, batch) -> dict:
        """The stored teacher logits of a batch's rows at the current epoch, as a teacher cache's columns."""
        if not self.logits:
            return {}
        epoch, rows = self._rows(batch)
        out = {c: torch.from_numpy(np.ascontiguousarray(a[epoch][rows])) for c, a in self.arrays.items()}
        if TOPK_INDICES_COLUMN in out and out[TOPK_INDICES_COLUMN].dtype != torch.uint8:
            out[TOPK_INDICES_COLUMN] = out[TOPK_INDICES_COLUMN].long()  # uint16 stacks poorly in torch
        return out

    # the trainer's hooks
    def on_train_begin(self, args, state, control, **kwargs):
        if args.dataloader_persistent_workers:
            raise ValueError(
                "dataloader_persistent_workers=True with cached views: persistent workers keep the epoch they "
                "started with and would serve epoch 0's views every epoch. Set dataloader_persistent_workers=False."
            )
        if state.num_train_epochs > self.epochs:
            raise refusal(
                self.path,
                f"holds views for {self.epochs} epochs and the run trains {state.num_train_epochs}",
                f"train at most {self.epochs} epochs, or rebuild it with epochs={state.num_train_epochs}",
            )
        self.set_epoch(_epoch(state))

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.set_epoch(_epoch(state))  # before the epoch's dataloader iterator (and its workers) is made

    def on_train_end(self, args, state, control, **kwargs):
        self.set_epoch(None)


def _epoch(state) -> int:
    """The epoch being trained: the whole part of the trainer's fractional epoch (resumed runs included)."""
    return int(math.floor((state.epoch or 0.0) + 1e-6))


def with_cached_views(
    train_split,
    cache_dir,
    *,
    teacher=None,
    logits: bool = True,
    teacher_inputs: bool = False,
    view_seed: int | None = None,
    epochs: int | None = None,
    id2label=None,
    check: bool = True,
):
    """``train_split`` (a `prepare_splits` train split, fast pixel path) reading the view cache at
    ``cache_dir``: row n at the trainer's epoch e gets the stored view (e, n) and, with ``logits``, its teacher
    logits as cached-teacher columns (the trainer runs no teacher); ``logits=False`` for students without a
    teacher (``ce``) on the same views; ``teacher_inputs`` keeps ``teacher_pixel_values`` (an online teacher on
    the same views). ``check``: `check_view_cache` first (``teacher``, ``view_seed``, ``epochs``, ``id2label``).
    `DistillationTrainer` sets the epoch itself (`view_cache_callback`)."""
    from .preprocessing import with_pixel_transform

    record = (
        check_view_cache(
            cache_dir, train_split, teacher=teacher, view_seed=view_seed, epochs=epochs, id2label=id2label
        )
        if check
        else view_cache_info(cache_dir)
    )
    decoded, inputs = source_split(train_split)
    # the cache's row of each stored row, a column so that it follows the rows through any map or sampler
    decoded = decoded.add_column(VIEW_ROW_COLUMN, np.arange(len(decoded), dtype=np.int64))
    outputs = {k: v for k, v in inputs.outputs.items() if teacher_inputs or k not in TEACHER_INPUT_COLUMNS}
    views = CachedViews(cache_dir, record, logits=logits)
    return with_pixel_transform(
        decoded, inputs.steps, inputs.label_column, outputs, augment=True, views=views
    )


def view_cache_callback(dataset) -> CachedViews:
    """The callback of a `with_cached_views` split (`DistillationTrainer` adds it itself; give it to another
    `Trainer` with ``callbacks=[...]``)."""
    views = _views_of(dataset)
    if views is None:
        raise ValueError(
            "This dataset does not read a view cache: make it with hf_fairkd.run.cached_views.with_cached_views."
        )
    return views


def _views_of(dataset) -> CachedViews | None:
    views = stored_views_of(dataset)
    return views if isinstance(views, CachedViews) else None
