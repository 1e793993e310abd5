"""The columns of a teacher cache (format 4) and how a batch's cache columns become dense teacher logits.

Dense: ``teacher_logits``, ONE binary value per row: the row's m logits in the cache dtype (float16 or
float32), little-endian, C order, then one byte giving the bytes per logit (2 or 4). Reading a batch is then one
``b"".join`` and a buffer view instead of m Python floats per row. The last byte is never NUL: the ``torch`` and
``numpy`` formats of `datasets` pass binary values through fixed-width numpy bytes, which drop trailing NUL
bytes (a float16 last logit of 0 ends in two), so raw logits alone could come back shorter than stored; with the
marker every row keeps its length in every format, a row of another length is damage, and the dtype is in the
row (a transform, which does not know m, decodes it).

Top-k: ``teacher_topk_logits`` (the k largest logits t_1..t_k, in the cache dtype), ``teacher_topk_indices``
(their class ids, in the smallest integer type that holds them, `index_dtype`) and ``teacher_tail_logsumexp``
(float32 ``log R = log sum_{j not in top k} exp t_j``, computed from the float32 logits at build time: exact
however small the tail is). `topk_to_dense` fills the m - k missing logits (``teacher_topk_fill``):

* ``"spread"`` (the default): every missing class gets the same logit ``v = log R - log(m - k)``, i.e.
  ``(m - k) exp(v) = R`` (clamped to at most the k-th logit): the teacher's softmax exactly at T = 1 for the
  top-k classes and the tail mass (spread evenly); at T > 1 the even tail gets more mass than the teacher's
  uneven one (Jensen).
* ``"renormalize"``: the missing logits are a large negative finite value, so softmax gives exactly the top-k
  distribution renormalised and the tail gets nothing; the trainer's finiteness check still works.

Every row also carries ``teacher_input_digest``, the digest of its teacher inputs at build time
(`hf_fairkd.teacher.input_digest`), which `check_cache` compares with the rows' current inputs.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping

import numpy as np
import torch

logger = logging.getLogger(__name__)

# 4: a per-row digest of the teacher's inputs; 3: dense rows as binary values. Older caches are refused.
FORMAT_VERSION = 4
CACHE_DTYPES = ("float16", "float32")
DENSE_ENCODING = (
    "one binary value per row: little-endian logits in the cache dtype, then 1 byte = bytes per logit"
)

DENSE_COLUMN = "teacher_logits"
TOPK_LOGITS_COLUMN = "teacher_topk_logits"
TOPK_INDICES_COLUMN = "teacher_topk_indices"
TAIL_LOGSUMEXP_COLUMN = "teacher_tail_logsumexp"
TOPK_COLUMNS = (TOPK_LOGITS_COLUMN, TOPK_INDICES_COLUMN, TAIL_LOGSUMEXP_COLUMN)
# the columns of teacher logits a batch carries to the trainer
CACHE_COLUMNS = (DENSE_COLUMN, *TOPK_COLUMNS)
# the digest of each row's teacher inputs: read by the cache check only, never part of a batch
INPUT_DIGEST_COLUMN = "teacher_input_digest"

TOPK_FILLS = ("spread", "renormalize")
DEFAULT_TOPK_FILL = "spread"
# Gap below the largest top-k logit for "renormalize": exp(-1e4 / T) is exactly 0 in float32 for T < ~95.
RENORMALIZE_GAP = 1e4

_warned: set[tuple[str, float]] = set()

REBUILD = "Rebuild the cache with hf_fairkd.teacher.build_teacher_cache(dataset, teacher)"


# ------------------------------------------------------------------------------------------ layout
def index_dtype(num_classes: int) -> str:
    """The smallest unsigned integer type holding class ids 0..num_classes-1 (int32 above 65,536 classes)."""
    if num_classes <= 2**8:
        return "uint8"
    if num_classes <= 2**16:
        return "uint16"
    if num_classes <= 2**31:
        return "int32"
    raise ValueError(f"{num_classes} classes do not fit the int32 class ids of a top-k cache.")


def cache_features(num_classes: int, dtype: str, top_k: int | None) -> dict:
    """The `datasets` features of the columns `build_teacher_cache` adds."""
    from datasets import List, Value

    digest = {INPUT_DIGEST_COLUMN: Value("string")}
    if top_k is None:
        return {DENSE_COLUMN: Value("binary"), **digest}
    return {
        TOPK_LOGITS_COLUMN: List(Value(dtype), length=top_k),
        TOPK_INDICES_COLUMN: List(Value(index_dtype(num_classes)), length=top_k),
        TAIL_LOGSUMEXP_COLUMN: Value("float32"),
        **digest,
    }


def dense_rows_as_binary(logits: np.ndarray, dtype: str) -> list[bytes]:
    """One binary value per row of ``logits`` [B, m]: its logits in ``dtype``, little-endian, C order, then the
    byte ``itemsize`` (2 or 4)."""
    rows = np.ascontiguousarray(logits, dtype=np.dtype(dtype).newbyteorder("<"))
    marker = bytes([rows.dtype.itemsize])
    return [row.tobytes() + marker for row in rows]


# ------------------------------------------------------------------------------------------ reading a batch
# a binary dense row's last byte (bytes per logit) -> dtype
DENSE_BYTES = {2: torch.float16, 4: torch.float32}


def _is_bytes(value) -> bool:
    """Whether a dense column's batch value is binary rows: bytes (any format) or fixed-width numpy bytes."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind == "S"
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], (bytes, bytearray))


def _damaged(what: str) -> ValueError:
    return ValueError(
        f"The teacher cache column {DENSE_COLUMN!r} has {what}: a dense row is its m logits (little-endian) and "
        "one byte giving the bytes per logit (2: float16, 4: float32). The cache is damaged (a short or "
        f"corrupted row) or was not written by build_teacher_cache. {REBUILD}."
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
    # flat, so that a single row is not left with its row stride (a view to wider values needs stride 1)
    logits = raw[:, :-1].reshape(-1)
    if sys.byteorder == "big":  # the rows are little-endian
        logits = logits.view(-1, size).flip(-1).reshape(-1)
    return logits.view(DENSE_BYTES[size]).view(len(rows), -1)


def _column_as_tensor(column: str, value) -> torch.Tensor:
    if column == DENSE_COLUMN and _is_bytes(value):
        return dense_from_binary(value)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return torch.stack(list(value))  # rows of a transform
    return torch.as_tensor(np.asarray(value))  # top-k list rows, numpy arrays


def cache_columns_as_tensors(batch: Mapping) -> dict[str, torch.Tensor]:
    """The teacher-logit columns of ``batch`` (a formatted, transformed or collated batch, or a list of rows'
    values) as tensors: binary dense rows as [B, m] logits in the cache dtype, top-k rows as [B, k]. A damaged
    binary row is a ValueError that says to rebuild the cache."""
    return {c: _column_as_tensor(c, batch[c]) for c in CACHE_COLUMNS if c in batch}


class CacheCollator:
    """A data collator: ``collator`` over the rows' other columns, the cache columns stacked by
    `cache_columns_as_tensors`; the input digests are dropped (the cache check has read them). Rows without
    binary cache values (e.g. a transform's tensors) go to ``collator`` as they are. `DistillationTrainer`
    wraps its collator in one."""

    def __init__(self, collator):
        self.collator = collator

    def __getattr__(self, name):  # the wrapped collator's attributes (e.g. a tokenizer the Trainer saves)
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)

    def __call__(self, features):
        first = features[0] if len(features) else None
        if isinstance(first, Mapping) and INPUT_DIGEST_COLUMN in first:
            features = [{k: v for k, v in row.items() if k != INPUT_DIGEST_COLUMN} for row in features]
            first = features[0]
        if not (isinstance(first, Mapping) and isinstance(first.get(DENSE_COLUMN), (bytes, bytearray))):
            return self.collator(features)
        columns = [c for c in CACHE_COLUMNS if c in first]
        batch = self.collator([{k: v for k, v in row.items() if k not in columns} for row in features])
        rows = {c: [row[c] for row in features] for c in columns}
        batch.update(cache_columns_as_tensors(rows))
        return batch


# ------------------------------------------------------------------------------------------ to logits
def topk_to_dense(
    values: torch.Tensor,
    indices: torch.Tensor,
    tail_logsumexp: torch.Tensor,
    num_classes: int,
    fill: str = DEFAULT_TOPK_FILL,
) -> torch.Tensor:
    """Dense float32 [B, m] logits from top-k logits, their class ids and ``tail_logsumexp``, the log of the mass
    outside the top k (see the module docstring for the fills)."""
    if fill not in TOPK_FILLS:
        raise ValueError(f"Unknown top-k fill {fill!r}; use one of {TOPK_FILLS}.")
    values = torch.as_tensor(values).float()
    indices = torch.as_tensor(indices).long()  # uint8/uint16/int32 on disk: scatter needs int64
    k = values.shape[-1]
    if k > num_classes:
        raise ValueError(
            f"The cache stores top-{k} logits but the student has {num_classes} classes. {REBUILD}."
        )
    if k == num_classes:  # nothing to fill
        return values.new_empty(values.shape[0], num_classes).scatter_(1, indices, values)
    floor = values.amax(dim=-1, keepdim=True) - RENORMALIZE_GAP
    if fill == "spread":
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
    format; `cache_columns_as_tensors`); None when there are none. ``topk_fill`` applies to top-k caches."""
    batch = cache_columns_as_tensors(batch)
    if DENSE_COLUMN in batch:
        return batch[DENSE_COLUMN].float()
    if TOPK_LOGITS_COLUMN in batch:
        missing = [c for c in TOPK_COLUMNS if c not in batch]
        if missing:
            raise ValueError(
                f"The batch has {TOPK_LOGITS_COLUMN!r} but not {missing}: keep all top-k cache columns in the "
                "dataset and let the data collator pass them through."
            )
        values, indices, tail = (batch[c] for c in TOPK_COLUMNS)
        return topk_to_dense(values, indices, tail, num_classes, topk_fill)
    return None


# ------------------------------------------------------------------------------------------ warnings
def topk_fill_warning(fill: str, temperature: float, top_k: int, num_classes: int) -> str | None:
    """Why this fill loses part of the teacher's signal at this temperature; None if it does not.

    The policy: "renormalize" gives the classes beyond the top-k zero probability at every temperature, while
    the teacher softened at T > 1 puts mass on them (more as T grows), so the student never sees that part of
    the signal; "spread" keeps the tail's mass, spread evenly. (On one benchmark, top-10 of 100 classes, this
    cost 8.7 points at T = 4: benchmarks/README.md, teacher_cache.)"""
    if fill != "renormalize" or top_k >= num_classes or temperature <= 1.0:
        return None
    return (
        f"teacher_topk_fill='renormalize' with a top-{top_k} teacher cache of {num_classes} classes at temperature "
        f"{temperature:g}: the {num_classes - top_k} classes beyond the top-{top_k} get zero probability, but "
        f"the teacher softened at T = {temperature:g} puts mass on them, which the student will not see. Use "
        "teacher_topk_fill='spread' (the default: keeps the tail's mass), a larger top_k or a dense cache "
        "(build_teacher_cache(..., top_k=None))."
    )


def warn_topk_fill(fill: str, temperature: float, top_k: int, num_classes: int) -> str | None:
    """Log `topk_fill_warning` once per (fill, temperature) and process; return the message (None if none)."""
    message = topk_fill_warning(fill, temperature, top_k, num_classes)
    if message is not None and (fill, float(temperature)) not in _warned:
        _warned.add((fill, float(temperature)))
        logger.warning(message)
    return message


def stored_views_of(dataset):
    """The view cache a prepared split reads (`hf_fairkd.run.cached_views.with_cached_views`: its transform
    carries it as ``views``), or None. Read by attribute so that the teacher and the trainer, below ``run``,
    need not import it: an object with ``logits`` (whether its rows carry the teacher's logits) that is the
    `TrainerCallback` setting the epoch."""
    fmt = getattr(dataset, "format", None) or {}
    return getattr((fmt.get("format_kwargs") or {}).get("transform"), "views", None)
