"""Provenance and storage of a teacher cache: the teacher's fingerprint, the record `build_teacher_cache` writes
as one JSON line after the marker ``hf_fairkd.TeacherCache:`` in ``info.description`` (the style of
`hf_fairkd.data.LongTailInfo`; it survives ``save_to_disk``/``load_from_disk``, ``select``, ``shuffle``,
``map`` and ``with_format``), and an atomic save / a checked load of a cached dataset."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import torch

from ..io_utils import description_with_record, record_in_description
from .cache_format import FORMAT_VERSION, REBUILD
from .sharding import full_tensor, whole_model

_MARKER = "hf_fairkd.TeacherCache: "
# Config keys that say where, how or whether a model was saved or loaded, not what it computes (the dtype is
# in the parameters' bytes).
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "_commit_hash", "transformers_version", "architectures", "dtype")


def teacher_fingerprint(teacher: torch.nn.Module) -> str:
    """sha256 over the teacher's config (sorted JSON, load-location keys dropped) and every parameter and
    buffer (name, dtype, shape, bytes). Equal for the same weights however they were loaded, and for a teacher
    sharded over processes and the same teacher whole (every process must call it for a sharded teacher)."""
    digest = hashlib.sha256()
    with whole_model(teacher) as model:
        config = getattr(model, "config", None)
        if config is not None:
            config_dict = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
            digest.update(json.dumps(config_dict, sort_keys=True, default=str).encode())
        tensors = [
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        ]
        for name, tensor in tensors:  # gathered one at a time: at most one whole tensor is held
            whole = full_tensor(tensor).detach()
            data = whole.reshape(-1).cpu().contiguous()
            digest.update(f"{name}|{data.dtype}|{tuple(whole.shape)}|".encode())
            digest.update(memoryview(data.view(torch.uint8).numpy()))
    return digest.hexdigest()


def cache_fingerprint(record: dict) -> str:
    """sha256 of a record without its own ``cache_fingerprint``."""
    body = {k: v for k, v in record.items() if k != "cache_fingerprint"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def attach_record(dataset, record: dict) -> None:
    """Write ``record`` into ``dataset.info.description`` (replacing an earlier one)."""
    dataset.info.description = description_with_record(dataset.info.description, _MARKER, record)


def teacher_cache_info(dataset) -> dict:
    """The record `build_teacher_cache` wrote into ``dataset.info.description``; refuses a dataset without one
    and a cache of another format."""
    record = record_in_description(getattr(dataset.info, "description", None), _MARKER)
    if record is None:
        raise ValueError(
            f"This dataset carries no teacher-cache record (no {_MARKER.strip()!r} line in info.description): "
            f"its cached columns were made by hand or the record was stripped. {REBUILD}."
        )
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"This teacher cache is of format {version}, and this version of hf_fairkd reads format "
            f"{FORMAT_VERSION} only: rebuild it. Remove its columns (dataset.remove_columns(...)) and run "
            "hf_fairkd.teacher.build_teacher_cache(dataset, teacher) again."
        )
    return record


def save_teacher_cache(dataset, path: str | os.PathLike) -> None:
    """``save_to_disk`` into a temporary folder next to ``path``, then rename it into place, so an interrupted
    save never leaves half a cache at ``path`` (call it on the main process only)."""
    teacher_cache_info(dataset)  # refuse to save a cache without its record
    target = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
    try:
        dataset.save_to_disk(tmp)
        if os.path.exists(target):
            # a directory cannot be renamed over a non-empty one: move the old cache aside first
            old = tempfile.mkdtemp(prefix=f".{name}.old.", suffix=".tmp", dir=parent)
            os.replace(target, os.path.join(old, name))
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_teacher_cache(path: str | os.PathLike):
    """``load_from_disk`` of a cache saved by `save_teacher_cache`; refuses a folder without a record or of
    another format."""
    from datasets import load_from_disk

    dataset = load_from_disk(os.fspath(path))
    teacher_cache_info(dataset)
    return dataset
