"""Cached teacher columns back to dense teacher logits (the reading side of `hf_fairkd.teacher_cache`).

A top-k cache row holds the k largest logits t_1..t_k (in the cache dtype), their class ids and the log of
the mass outside them, ``log R = log sum_{j not in top k} exp t_j`` (float32, computed from the float32
logits at build time: a float32 log keeps R to ~1e-7 relative however small R is, where a full log-normaliser
minus the top-k mass loses small tails to float16/float32 rounding). The m - k missing logits are filled by
`topk_to_dense` in one of two ways (``teacher_topk_fill``):

* ``"spread"`` (the default): every missing class gets the same logit ``v = log R - log(m - k)``, i.e.
  ``(m - k) exp(v) = R`` (clamped to at most the k-th logit). The filled logits give the teacher's softmax
  exactly at T = 1 for the top-k classes and the tail mass (spread evenly); targets at any other
  temperature, and any ``teacher_logit_mode`` adjustment, are then built from these logits like from dense
  ones. At T > 1 the even tail gets more mass than the teacher's uneven one (Jensen); in the measured
  benchmark that cost nothing (`MEASURED_TOPK_GAPS`).
* ``"renormalize"``: the missing logits are a large negative finite value, so softmax gives exactly the top-k
  distribution renormalised and the tail gets nothing; the trainer's finiteness check still works. It drops
  the tail mass, which grows with T: `check_cache` warns at the temperatures where that was measured to cost
  the student more than a point.

Caches of format 1 stored the full ``lse = log sum_j exp t_j`` instead (column ``teacher_logsumexp``); they
are still read, with ``R = exp(lse) - sum_i exp(t_i)`` (an empty tail when R is below what the stored values
resolve). Class ids are stored in the smallest integer type that holds them (`index_dtype`) and are upcast
to int64 here before any gather/scatter.

A dense row of format 3 is one binary value: its m logits, little-endian, then one byte giving the bytes per
logit (2: float16, 4: float32; `hf_fairkd.teacher_runner`); formats 2 and 1 stored a list of m floats.
`cache_columns_as_tensors` is the one place that turns the cache columns of a batch (formatted, transformed or
collated) into tensors, and `CacheCollator` the data collator step that stacks rows of bytes (the default
collator cannot).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping

import numpy as np
import torch

logger = logging.getLogger(__name__)

DENSE_COLUMN = "teacher_logits"
TOPK_LOGITS_COLUMN = "teacher_topk_logits"
TOPK_INDICES_COLUMN = "teacher_topk_indices"
TAIL_LOGSUMEXP_COLUMN = "teacher_tail_logsumexp"
LOGSUMEXP_COLUMN = "teacher_logsumexp"  # format 1: the full log-normaliser
TOPK_COLUMNS = (TOPK_LOGITS_COLUMN, TOPK_INDICES_COLUMN, TAIL_LOGSUMEXP_COLUMN)
LEGACY_TOPK_COLUMNS = (TOPK_LOGITS_COLUMN, TOPK_INDICES_COLUMN, LOGSUMEXP_COLUMN)
CACHE_COLUMNS = (DENSE_COLUMN, *TOPK_COLUMNS, LOGSUMEXP_COLUMN)
# The teacher's own inputs, when its preprocessing differs from the student's (another image processor): batch
# column -> the teacher's forward argument. The student never sees them; the teacher reads them instead of the
# student's (`TeacherSource.teacher_inputs`, the cache builder).
TEACHER_INPUT_COLUMNS = {"teacher_pixel_values": "pixel_values"}

TOPK_FILLS = ("spread", "renormalize")
DEFAULT_TOPK_FILL = "spread"
# Gap below the largest top-k logit for "renormalize": exp(-1e4 / T) is exactly 0 in float32 for T < ~95.
RENORMALIZE_GAP = 1e4

# Student test accuracy lost against a dense cache, in points (dense minus top-k, mean over seeds), measured by
# benchmarks/teacher_cache.py (top-10 of 100 classes, kd in the Hinton form, 3 student seeds;
# results/teacher_cache.json; a test keeps the two equal).
# {fill: {temperature: gap}}; `topk_fill_warning` warns above the largest temperature measured within a point.
MEASURED_TOPK_GAPS: dict[str, dict[float, float]] = {
    "spread": {1.0: 0.0, 2.0: -0.6, 4.0: -0.8},
    "renormalize": {1.0: -0.0, 2.0: 0.6, 4.0: 8.7},
}
MEASURED_SETUP = "top-10 of 100 classes"
MAX_GAP_POINTS = 1.0
_warned: set[tuple[str, float]] = set()


def index_dtype(num_classes: int) -> str:
    """The smallest unsigned integer type holding class ids 0..num_classes-1 (int32 above 65,536 classes)."""
    if num_classes <= 2**8:
        return "uint8"
    if num_classes <= 2**16:
        return "uint16"
    if num_classes <= 2**31:
        return "int32"
    raise ValueError(f"{num_classes} classes do not fit the int32 class ids of a top-k cache.")


def tail_logsumexp_from_full(values: torch.Tensor, logsumexp: torch.Tensor) -> torch.Tensor:
    """log R from a format-1 full log-normaliser: -inf where R is below what float32 ``lse`` resolves."""
    lse = torch.as_tensor(logsumexp).double().reshape(-1, 1)
    rest = 1.0 - torch.exp(torch.as_tensor(values).double() - lse).sum(dim=-1, keepdim=True)
    resolution = 4 * torch.finfo(torch.float32).eps * lse.abs().clamp_min(1.0)
    tail = torch.log(rest.clamp_min(1e-300)) + lse
    return torch.where(rest > resolution, tail, torch.full_like(tail, -math.inf))[:, 0]


def topk_to_dense(
    values: torch.Tensor,
    indices: torch.Tensor,
    logsumexp: torch.Tensor | None,
    num_classes: int,
    fill: str = DEFAULT_TOPK_FILL,
    *,
    tail_logsumexp: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense float32 [B, m] logits from top-k logits, their class ids and either the full log-normaliser
    ``logsumexp`` (format 1) or ``tail_logsumexp``, the log of the mass outside the top k."""
    if fill not in TOPK_FILLS:
        raise ValueError(f"Unknown top-k fill {fill!r}; use one of {TOPK_FILLS}.")
    if (logsumexp is None) == (tail_logsumexp is None):
        raise ValueError("Pass exactly one of logsumexp (the full log-normaliser) and tail_logsumexp.")
    values = torch.as_tensor(values).float()
    indices = torch.as_tensor(indices).long()  # uint8/uint16/int32 on disk: scatter needs int64
    k = values.shape[-1]
    if k > num_classes:
        raise ValueError(
            f"The cache stores top-{k} logits but the student has {num_classes} classes. Rebuild it."
        )
    if k == num_classes:  # nothing to fill
        return values.new_empty(values.shape[0], num_classes).scatter_(1, indices, values)
    floor = values.amax(dim=-1, keepdim=True) - RENORMALIZE_GAP
    if fill == "spread":
        if tail_logsumexp is None:
            tail_logsumexp = tail_logsumexp_from_full(values, logsumexp)
        tail = torch.as_tensor(tail_logsumexp).double().reshape(-1, 1)
        spread = tail - math.log(num_classes - k)
        spread = torch.minimum(spread, values.double().amin(dim=-1, keepdim=True))  # not above the k-th logit
        floor = torch.where(torch.isfinite(spread), spread, floor.double()).float()
    dense = floor.expand(-1, num_classes).clone()
    return dense.scatter_(1, indices, values)


def cached_logits_from_batch(
    batch: dict, num_classes: int, topk_fill: str = DEFAULT_TOPK_FILL
) -> torch.Tensor | None:
    """Dense float32 teacher logits [B, m] from the cached columns of a batch (collated, or a dataset slice in any
    format; `cache_columns_as_tensors`); None when there are none.

    ``topk_fill`` ("spread" or "renormalize", see the module docstring) applies to top-k caches.
    """
    batch = cache_columns_as_tensors(batch)
    if DENSE_COLUMN in batch:
        return batch[DENSE_COLUMN].float()
    if TOPK_LOGITS_COLUMN in batch:
        columns = TOPK_COLUMNS if LOGSUMEXP_COLUMN not in batch else LEGACY_TOPK_COLUMNS
        missing = [c for c in columns if c not in batch]
        if missing:
            raise ValueError(
                f"The batch has {TOPK_LOGITS_COLUMN!r} but not {missing}: keep all top-k cache columns in the "
                "dataset and let the data collator pass them through."
            )
        values, indices = batch[TOPK_LOGITS_COLUMN], batch[TOPK_INDICES_COLUMN]
        if columns == LEGACY_TOPK_COLUMNS:
            return topk_to_dense(values, indices, batch[LOGSUMEXP_COLUMN], num_classes, topk_fill)
        tail = batch[TAIL_LOGSUMEXP_COLUMN]
        return topk_to_dense(values, indices, None, num_classes, topk_fill, tail_logsumexp=tail)
    return None


# ------------------------------------------------------------------------------------------ reading a batch
DENSE_BYTES = {
    2: torch.float16,
    4: torch.float32,
}  # a binary dense row's last byte (bytes per logit) -> dtype
_REBUILD = "Rebuild the cache with hf_fairkd.teacher_cache.build_teacher_cache(dataset, teacher)."


def _is_bytes(value) -> bool:
    """Whether a dense column's batch value is binary rows: bytes (any format) or fixed-width numpy bytes."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind == "S"
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], (bytes, bytearray))


def _damaged(what: str) -> ValueError:
    return ValueError(
        f"The teacher cache column {DENSE_COLUMN!r} has {what}: a dense row of format 3 is its m logits "
        "(little-endian) and one byte giving the bytes per logit (2: float16, 4: float32). The cache is damaged "
        f"(a short or corrupted row) or was not written by build_teacher_cache. {_REBUILD}"
    )


def dense_from_binary(rows) -> torch.Tensor:
    """[B, m] logits in the cache dtype from B binary dense rows (bytes, or the numpy format's fixed-width
    bytes): one join and a buffer view, the dtype read from each row's last byte."""
    if isinstance(rows, np.ndarray):  # a short row is NUL-padded here: its last byte then reads 0
        width, buffer = rows.dtype.itemsize, bytearray(rows.tobytes())
    else:
        widths = {len(row) for row in rows}
        if len(widths) > 1:
            raise _damaged(f"rows of unequal lengths ({sorted(widths)[:4]} bytes)")
        width, buffer = (widths.pop() if widths else 0), bytearray(b"".join(rows))
    if not len(rows):
        return torch.empty((0, 0))
    raw = torch.frombuffer(buffer, dtype=torch.uint8).view(len(rows), width) if width else None
    markers = sorted(set(raw[:, -1].tolist())) if width else []
    size = markers[0] if len(markers) == 1 else None
    if size not in DENSE_BYTES or (width - 1) % size:
        raise _damaged(f"rows of {width} bytes whose last bytes are {markers[:4]}")
    logits = raw[:, :-1].contiguous()
    if sys.byteorder == "big":  # the rows are little-endian
        logits = logits.view(len(rows), -1, size).flip(-1).reshape(len(rows), -1)
    return logits.view(DENSE_BYTES[size])


def _column_as_tensor(column: str, value) -> torch.Tensor:
    if column == DENSE_COLUMN and _is_bytes(value):  # format 3
        return dense_from_binary(value)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return torch.stack(list(value))  # rows of a transform
    return torch.as_tensor(np.asarray(value))  # list rows (formats 1 and 2, top-k), numpy arrays


def cache_columns_as_tensors(batch: Mapping) -> dict[str, torch.Tensor]:
    """The teacher-cache columns of ``batch`` (a formatted, transformed or collated batch, or a list of rows'
    values) as tensors: binary dense rows (format 3) as [B, m] logits in the cache dtype, list rows as before.
    A damaged binary row is a ValueError that says to rebuild the cache."""
    return {c: _column_as_tensor(c, batch[c]) for c in CACHE_COLUMNS if c in batch}


class CacheCollator:
    """A data collator: ``collator`` over the rows' other columns, the cache columns stacked by
    `cache_columns_as_tensors`; rows without binary cache values (e.g. a transform's tensors) go to
    ``collator`` unchanged. `DistillationTrainer` wraps its collator in one."""

    def __init__(self, collator):
        self.collator = collator

    def __getattr__(self, name):  # the wrapped collator's attributes (e.g. a tokenizer the Trainer saves)
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)

    def __call__(self, features):
        first = features[0] if len(features) else None
        if not (isinstance(first, Mapping) and isinstance(first.get(DENSE_COLUMN), (bytes, bytearray))):
            return self.collator(features)
        columns = [c for c in CACHE_COLUMNS if c in first]
        batch = self.collator([{k: v for k, v in row.items() if k not in columns} for row in features])
        rows = {c: [row[c] for row in features] for c in columns}
        batch.update(cache_columns_as_tensors(rows))
        return batch


# ------------------------------------------------------------------------------------------ warnings
def topk_fill_warning(fill: str, temperature: float, top_k: int, num_classes: int) -> str | None:
    """Why this fill at this temperature was measured to cost the student more than a point; None if not."""
    if top_k >= num_classes:
        return None
    gaps = MEASURED_TOPK_GAPS.get(fill, {})
    bad = sorted(t for t, gap in gaps.items() if gap > MAX_GAP_POINTS)
    if not bad:
        return None
    fine = [t for t, gap in gaps.items() if gap <= MAX_GAP_POINTS and t < bad[0]]
    limit = max(fine) if fine else 0.0
    if temperature <= limit:
        return None
    measured = max((t for t in bad if t <= temperature), default=bad[0])
    better = [
        f for f in TOPK_FILLS if f != fill and MEASURED_TOPK_GAPS[f].get(measured, 99) <= MAX_GAP_POINTS
    ]
    fixes = [f"teacher_topk_fill={f!r}" for f in better] + [
        "a larger top_k",
        "a dense cache (build_teacher_cache(..., top_k=None))",
    ]
    return (
        f"teacher_topk_fill={fill!r} with a top-{top_k} teacher cache of {num_classes} classes at temperature "
        f"{temperature:g}: in benchmarks/teacher_cache.py ({MEASURED_SETUP}) this fill cost the student "
        f"{gaps[measured]:.1f} points of test accuracy against a dense cache at T = {measured:g} (within "
        f"{MAX_GAP_POINTS:g} point up to T = {limit:g}). Use {', '.join(fixes[:-1])} or {fixes[-1]}."
    )


def warn_topk_fill(fill: str, temperature: float, top_k: int, num_classes: int) -> str | None:
    """Log `topk_fill_warning` once per (fill, temperature) and process; return the message (None if none)."""
    message = topk_fill_warning(fill, temperature, top_k, num_classes)
    if message is not None and (fill, float(temperature)) not in _warned:
        _warned.add((fill, float(temperature)))
        logger.warning(message)
    return message
