"""Digests of the rows' teacher inputs: what `build_teacher_cache` stores with every row
(``teacher_input_digest``) and `check_cache` compares with the rows' current inputs.

A cache's logits belong to the inputs the teacher saw. The record survives ``Dataset.map``, so a map that
changes those inputs (other pixel values, another tokenisation) would leave the cache looking valid. The
digest of each row's inputs travels with its row, through ``select``, ``shuffle``, ``filter``, ``add_column``
and any format or transform; `check_inputs` re-hashes a seeded sample of rows and refuses the cache when one
differs. A sample: a change to the data as a whole is caught, a change to a few rows may not be.

The inputs are the stored columns (Arrow values, not the format's or transform's output): those named like the
teacher's forward arguments when the teacher reads the stored columns directly, else (a transform or a
``collate_fn`` makes its inputs) every stored column but the labels and the group codes. Floating values are
hashed as float32 and integers as int64, so writing the same values back in another width keeps the digest.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pyarrow as pa

from ..groups import GROUP_ID_COLUMN
from .cache_format import CACHE_COLUMNS, INPUT_DIGEST_COLUMN, REBUILD
from .model import TEACHER_INPUT_COLUMNS

LABEL_COLUMNS = ("labels", "label", "label_ids")
SAMPLE_ROWS = 16  # rows re-hashed by `check_inputs`: about 2 ms for 3x32x32 images
_SEED = 0


def input_columns(dataset, forward_names: set[str] | None, reads_stored: bool) -> list[str]:
    """The stored columns the teacher's inputs come from (see the module docstring). ``forward_names``: the
    teacher's forward arguments (None: any); ``reads_stored``: no transform or collate_fn in between."""
    from datasets import ClassLabel

    stored = [
        c
        for c in dataset.column_names
        if c not in (*CACHE_COLUMNS, INPUT_DIGEST_COLUMN, GROUP_ID_COLUMN)
        and c not in LABEL_COLUMNS
        and not isinstance(dataset.features.get(c), ClassLabel)
    ]
    if reads_stored and forward_names is not None:
        named = [c for c in stored if c in forward_names or c in TEACHER_INPUT_COLUMNS]
        if named:
            return named
    return stored


def row_digests(table: pa.Table, columns: list[str]) -> list[str]:
    """One hex digest (blake2b, 8 bytes) per row of ``table`` over its values in ``columns``."""
    hashers = [hashlib.blake2b(digest_size=8) for _ in range(table.num_rows)]
    for name in columns:
        column = table.column(name)
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        for hasher in hashers:
            hasher.update(name.encode() + b"\0")
        starts = np.arange(len(array), dtype=np.int64)
        _update(hashers, array, starts, starts + 1)
        valid = array.is_valid().to_numpy(zero_copy_only=False)
        for hasher, ok in zip(hashers, valid):
            hasher.update(b"\1" if ok else b"\0")
    return [h.hexdigest() for h in hashers]


def _update(hashers, array: pa.Array, starts: np.ndarray, ends: np.ndarray) -> None:
    """Feed elements ``starts[k]:ends[k]`` of ``array`` to ``hashers[k]``: nested lengths, then leaf values."""
    if isinstance(array.type, pa.ExtensionType):  # e.g. datasets' Array2D/3D
        array = array.storage
    if not len(starts):
        return
    low, high = int(starts.min()), int(ends.max())
    # only the rows' own elements: a slice's child arrays are the whole backing arrays
    array, starts, ends = array.slice(low, high - low), starts - low, ends - low
    kind = array.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        if pa.types.is_fixed_size_list(kind):  # `values` ignores the array's offset: so do these offsets
            offsets = (array.offset + np.arange(len(array) + 1, dtype=np.int64)) * kind.list_size
        else:
            offsets = array.offsets.to_numpy().astype(np.int64)
        lengths = np.diff(offsets)  # hashed: the same values in another shape are other inputs
        for hasher, start, end in zip(hashers, starts, ends):
            hasher.update(lengths[start:end])
        _update(hashers, array.values, offsets[starts], offsets[ends])
        return
    if pa.types.is_struct(kind):
        for field in array.flatten():  # flatten, unlike field(), honours the array's offset
            _update(hashers, field, starts, ends)
        return
    if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        values = array.to_numpy(zero_copy_only=False)
        values = values.astype(np.float32 if np.issubdtype(values.dtype, np.floating) else np.int64)
        for hasher, start, end in zip(hashers, starts, ends):
            hasher.update(values[start:end])
        return
    items = array.to_pylist()  # strings, bytes (e.g. an image's file) and anything else, element by element
    for hasher, start, end in zip(hashers, starts, ends):
        for item in items[start:end]:
            raw = item if isinstance(item, bytes) else repr(item).encode()
            hasher.update(len(raw).to_bytes(8, "little") + raw)


def sample_rows(num_rows: int) -> list[int]:
    """The rows `check_inputs` re-hashes: `SAMPLE_ROWS` of them, the same for the same number of rows."""
    return sorted(random.Random(_SEED).sample(range(num_rows), min(SAMPLE_ROWS, num_rows)))


def check_inputs(dataset, record: dict) -> None:
    """Refuse a cache whose rows' teacher inputs are no longer those it was built from (a seeded sample)."""
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        raise ValueError(
            "A teacher cache is checked against its rows by reading some of them: pass a map-style "
            f"datasets.Dataset, not a {type(dataset).__name__}."
        )
    columns = record["input_columns"]
    missing = [c for c in (*columns, INPUT_DIGEST_COLUMN) if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The teacher cache's input columns {missing} are not in the dataset, so its logits cannot be "
            "checked against the rows' inputs. Keep them (the trainer passes the model only what it takes), or "
            f"{REBUILD[0].lower()}{REBUILD[1:]} on this dataset."
        )
    rows = sample_rows(len(dataset))
    table = dataset.with_format("arrow", columns=[*columns, INPUT_DIGEST_COLUMN])[rows]
    stored = table.column(INPUT_DIGEST_COLUMN).to_pylist()
    changed = [row for row, old, new in zip(rows, stored, row_digests(table, columns)) if old != new]
    if changed:
        raise ValueError(
            f"The teacher cache does not belong to these inputs: {len(changed)} of {len(rows)} rows checked "
            f"(e.g. row {changed[0]}) have other values in {columns} than when the cache was built, so its "
            "logits are not the teacher's logits of these rows (a map or cast changed the inputs after "
            "build_teacher_cache). Build the cache last, after every change to the inputs: remove its columns "
            "(dataset.remove_columns(...)) and run hf_fairkd.teacher.build_teacher_cache(dataset, teacher) again."
        )
