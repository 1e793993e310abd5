"""The cache columns a teacher forward becomes: their layout (`cache_features`, ``FORMAT_VERSION``) and the
map function `build_teacher_cache` runs (`_TeacherRunner`: formatted batch -> teacher -> cache columns).

Format 3 (this one) stores a dense row as ONE binary value: the row's m logits in the cache dtype, little-endian,
C order, then one byte giving the bytes per logit (2: float16, 4: float32), so 2 m + 1 or 4 m + 1 bytes. Reading
a batch is then one ``b"".join`` and a buffer view (`hf_fairkd.teacher_signal.cache_columns_as_tensors`) instead
of m Python floats per row. The last byte is never NUL: the ``torch`` and ``numpy`` formats of `datasets` pass
binary values through fixed-width numpy bytes, which drop trailing NUL bytes (a float16 last logit of 0 ends
in two), so raw logits alone could come back shorter than stored; with the marker every row keeps its length in
every format, a row of another length is damage, and the dtype is in the row (a transform, which does not know
m, decodes it). Formats 2 and 1 stored a fixed-length list of floats; they are still read. Top-k columns are
unchanged since format 2: lists of k values and k class ids (small), and one float32 tail log-mass.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from .teacher import is_sharded
from .teacher_signal import (
    DENSE_COLUMN,
    TAIL_LOGSUMEXP_COLUMN,
    TEACHER_INPUT_COLUMNS,
    TOPK_INDICES_COLUMN,
    TOPK_LOGITS_COLUMN,
    index_dtype,
)

CACHE_DTYPES = ("float16", "float32")
# 3: dense rows as binary values (little-endian logits); 2: teacher_tail_logsumexp and narrow class ids; 2 and 1
# are still read
FORMAT_VERSION = 3
DENSE_ENCODING = (
    "one binary value per row: little-endian logits in the cache dtype, then 1 byte = bytes per logit"
)

_LABEL_KEYS = ("labels", "label", "label_ids")


def cache_features(num_classes: int, dtype: str, top_k: int | None) -> dict:
    """The `datasets` features of the cache columns of this format."""
    from datasets import List, Value

    if top_k is None:
        return {DENSE_COLUMN: Value("binary")}
    return {
        TOPK_LOGITS_COLUMN: List(Value(dtype), length=top_k),
        TOPK_INDICES_COLUMN: List(Value(index_dtype(num_classes)), length=top_k),
        TAIL_LOGSUMEXP_COLUMN: Value("float32"),
    }


def dense_rows_as_binary(logits: np.ndarray, dtype: str) -> list[bytes]:
    """One binary value per row of ``logits`` [B, m]: its logits in ``dtype``, little-endian, C order, then the
    byte ``itemsize`` (2 or 4)."""
    rows = np.ascontiguousarray(logits, dtype=np.dtype(dtype).newbyteorder("<"))
    marker = bytes([rows.dtype.itemsize])
    return [row.tobytes() + marker for row in rows]


def _forward_names(teacher: torch.nn.Module) -> set[str] | None:
    """The batch keys the teacher takes; None (every key but labels) for a bare ``forward(*args, **kwargs)``."""
    params = inspect.signature(teacher.forward).parameters.values()
    named = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return named - set(_LABEL_KEYS) if named else None


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (torch.Tensor, np.ndarray)):
        return torch.stack([torch.as_tensor(v) for v in value])  # rows from a transform
    return torch.as_tensor(value)  # tensors and numpy arrays are not copied


class _TeacherRunner:
    """The map function: formatted batch -> model inputs -> teacher -> cache columns (dense: binary rows)."""

    def __init__(self, teacher, collate_fn, dtype, top_k, permutation, num_classes):
        self.teacher, self.collate_fn, self.top_k, self.permutation = teacher, collate_fn, top_k, permutation
        self.dtype = dtype
        self.np_dtype = np.float16 if dtype == "float16" else np.float32
        self.index_dtype = np.dtype(index_dtype(num_classes))
        self.names = _forward_names(teacher)
        first = next(teacher.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.param_dtype = first.dtype if first is not None else torch.float32
        self.sharded = is_sharded(teacher)
        self.calls = 0  # teacher forwards made

    def model_inputs(self, batch: dict) -> dict:
        if self.collate_fn is not None:
            size = len(next(iter(batch.values())))
            batch = self.collate_fn([{k: v[i] for k, v in batch.items()} for i in range(size)])
        own = {name: batch[column] for column, name in TEACHER_INPUT_COLUMNS.items() if column in batch}
        batch = {k: v for k, v in batch.items() if k not in TEACHER_INPUT_COLUMNS} | own  # its own inputs win
        names = self.names if self.names is not None else set(batch) - set(_LABEL_KEYS)
        inputs = {k: _as_tensor(v) for k, v in batch.items() if k in names}
        if not inputs:
            raise ValueError(
                f"None of the batch keys {sorted(batch)} is an input of the teacher's forward "
                f"({sorted(names)[:8]}): give the dataset a format/transform that yields model inputs "
                "(e.g. set_transform with the image processor) or pass collate_fn=."
            )
        return {
            k: v.to(self.device, self.param_dtype if torch.is_floating_point(v) else None)
            for k, v in inputs.items()
        }

    def no_grad(self):
        # a sharded teacher keeps the weights it gathers in tensors of its own: no inference tensors there
        return torch.no_grad() if self.sharded else torch.inference_mode()

    def forward(self, batch: dict) -> torch.Tensor:
        self.calls += 1
        with self.no_grad():
            return self.teacher(**self.model_inputs(batch)).logits.float()

    def __call__(self, batch: dict) -> dict:
        with self.no_grad():
            logits = self.forward(batch)
            if self.permutation is not None:
                logits = logits[:, self.permutation.to(logits.device)]
            if not torch.isfinite(logits).all():
                raise ValueError(
                    "The teacher produced non-finite logits while building the cache: check the teacher, its "
                    "dtype and the inputs."
                )
            if self.np_dtype == np.float16 and logits.abs().max() > 65504:
                raise ValueError(
                    "Teacher logits exceed the float16 range (65504): build the cache with dtype='float32'."
                )
            if self.top_k is None:
                return {DENSE_COLUMN: dense_rows_as_binary(logits.cpu().numpy(), self.dtype)}
            values, indices = logits.topk(self.top_k, dim=-1)
            # the tail's own log-mass, not a full normaliser: exact however small the tail is
            tail = torch.logsumexp(logits.scatter(1, indices, -torch.inf), dim=-1)
            return {
                TOPK_LOGITS_COLUMN: values.cpu().numpy().astype(self.np_dtype),
                TOPK_INDICES_COLUMN: indices.cpu().numpy().astype(self.index_dtype),
                TAIL_LOGSUMEXP_COLUMN: tail.cpu().numpy().astype(np.float32),
            }
