"""The teacher: loading it, placing it under the run's distribution, and caching its logits.

The one way in: the names below. Modules: `model` (loading, label permutation, classifier), `sharding` (a
teacher sharded over processes, read whole), `placement` (FSDP / DeepSpeed / replicated, and its memory),
`source` (`TeacherSource`, the trainer's teacher side), `cache` (build and check a cache), `cache_format`
(its columns, and a batch's columns back to logits), `cache_record` (its record, fingerprints, save/load),
`input_digest` (the per-row digests of the teacher's inputs that tie a cache to its rows). (Augmented views cached
once with the teacher's logits of each: `hf_fairkd.run.view_cache` / `hf_fairkd.run.cached_views`.)
"""

from .cache import build_teacher_cache, check_cache
from .cache_format import (
    CACHE_COLUMNS,
    CACHE_DTYPES,
    DENSE_COLUMN,
    FORMAT_VERSION,
    INPUT_DIGEST_COLUMN,
    TOPK_COLUMNS,
    TOPK_FILLS,
    CacheCollator,
    cache_columns_as_tensors,
    cached_logits_from_batch,
    topk_to_dense,
)
from .cache_record import load_teacher_cache, save_teacher_cache, teacher_cache_info, teacher_fingerprint
from .model import TEACHER_INPUT_COLUMNS, label_permutation, load_teacher
from .placement import TeacherMemory, prepare_teacher
from .source import TeacherSource

__all__ = [
    "CACHE_COLUMNS",
    "CACHE_DTYPES",
    "DENSE_COLUMN",
    "FORMAT_VERSION",
    "INPUT_DIGEST_COLUMN",
    "TEACHER_INPUT_COLUMNS",
    "TOPK_COLUMNS",
    "TOPK_FILLS",
    "CacheCollator",
    "TeacherMemory",
    "TeacherSource",
    "build_teacher_cache",
    "cache_columns_as_tensors",
    "cached_logits_from_batch",
    "check_cache",
    "label_permutation",
    "load_teacher",
    "load_teacher_cache",
    "prepare_teacher",
    "save_teacher_cache",
    "teacher_cache_info",
    "teacher_fingerprint",
    "topk_to_dense",
]
