"""Teacher signals computed once and stored as dataset columns, so training never has to run the teacher.

`build_teacher_cache` runs the teacher once over a dataset and adds either

* dense: ``teacher_logits``, the m logits of each row (float16 by default, or float32) as one binary value
  (little-endian; format 3, `hf_fairkd.teacher_runner`; formats 2 and 1 stored a list of floats, still
  read), or
* top-k: ``teacher_topk_logits`` (the k largest logits), ``teacher_topk_indices`` (their class ids) and
  ``teacher_tail_logsumexp`` (log sum_j exp t_j over the m - k other classes: the mass outside the top k).
  Format-1 caches stored ``teacher_logsumexp`` (over all m classes) instead; they are still read.

Logits are stored in the student's label order (pass ``label_permutation`` when the teacher orders its
classes differently). A record of where the cache comes from is one JSON line in ``info.description``
after the marker ``hf_fairkd.TeacherCache:`` (the style of `hf_fairkd.data.LongTailInfo`); it survives
``save_to_disk``/``load_from_disk``, ``select``, ``shuffle`` and ``with_format``.

Cache or teacher? `check_cache`, which `DistillationTrainer` calls at start-up, decides:

* a dataset with cache columns but no record (hand-made or stripped) is refused: its provenance is unknown;
* a record for another number of classes, label order or source dataset is refused;
* cache and no teacher: the cache is used;
* cache and a teacher: the cache wins when its teacher fingerprint equals that teacher's (the teacher is
  then not run on cached batches); a different fingerprint is an error, because silently training on
  another teacher's logits is worse than failing. The fingerprint covers the weights' bytes, so the same
  teacher cast to another dtype (``teacher_dtype``) counts as another teacher.

Top-k to dense (`cached_logits_from_batch`, in `hf_fairkd.teacher_signal`, re-exported here): the m - k
missing logits are filled with ``teacher_topk_fill`` = ``"spread"`` (one logit for every missing class, so
that the tail holds exactly the teacher's mass outside the top k at T = 1; the default) or ``"renormalize"``
(the top-k distribution renormalised; `check_cache` warns at the temperatures where that was measured to
cost accuracy). Class ids are stored as uint8 up to 256 classes, uint16 up to 65,536, int32 beyond.

The cache holds the logits of the dataset's format/transform at build time: build it with the
deterministic (evaluation) preprocessing; random training augmentation is not reflected in the cache.

Several processes each run the teacher on a contiguous share of the rows. A teacher sharded over them
(`hf_fairkd.teacher_placement.prepare_teacher`) gathers its weights in every forward: processes with fewer
batches make dummy forwards to keep in step, and its fingerprint (over the gathered weights) is the whole
teacher's. So a teacher too large for one device is cached sharded, and the student trains without it.
"""

from __future__ import annotations

import logging
import math

import torch

from .teacher import gathered_view, is_sharded
from .teacher_record import (  # noqa: F401  (re-exported: the public names of the cache live here)
    _attach_record,
    _cache_fingerprint,
    load_teacher_cache,
    save_teacher_cache,
    teacher_cache_info,
    teacher_fingerprint,
)
from .teacher_runner import (  # noqa: F401
    CACHE_DTYPES,
    DENSE_ENCODING,
    FORMAT_VERSION,
    _TeacherRunner,
    cache_features,
)
from .teacher_signal import (  # noqa: F401
    CACHE_COLUMNS,
    DEFAULT_TOPK_FILL,
    DENSE_COLUMN,
    LEGACY_TOPK_COLUMNS,
    LOGSUMEXP_COLUMN,
    RENORMALIZE_GAP,
    TAIL_LOGSUMEXP_COLUMN,
    TEACHER_INPUT_COLUMNS,
    TOPK_COLUMNS,
    TOPK_FILLS,
    TOPK_INDICES_COLUMN,
    TOPK_LOGITS_COLUMN,
    CacheCollator,
    cache_columns_as_tensors,
    cached_logits_from_batch,
    index_dtype,
    topk_to_dense,
    warn_topk_fill,
)

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ building
def _teacher_fingerprint(teacher) -> str:
    """`teacher_fingerprint`, equal for a teacher sharded over processes and the same teacher whole (every
    process must call it for a sharded teacher)."""
    if not is_sharded(teacher):
        return teacher_fingerprint(teacher)
    if type(teacher).__name__ == "FullyShardedDataParallel":  # FSDP1: the whole teacher, briefly, on each
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(teacher, writeback=False):
            return teacher_fingerprint(teacher)
    return teacher_fingerprint(gathered_view(teacher))


def _share(num_rows: int, world: int, rank: int) -> range:
    """Rank ``rank``'s contiguous rows, as `Dataset.shard(contiguous=True)` splits them (the first
    ``num_rows % world`` ranks one row more), possibly none when there are fewer rows than processes."""
    size, extra = divmod(num_rows, world)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (rank < extra))


def _hash_callable(fn) -> str | None:
    """datasets' hash of a collate_fn (what it does, as far as pickling sees); None when absent or unhashable."""
    if fn is None:
        return None
    from datasets.fingerprint import Hasher

    try:
        return Hasher.hash(fn)
    except Exception:  # an unpicklable closure: preprocessing_id has to say what it does
        return None


def _restore_format(out, dataset, new_columns):
    fmt = dataset.format
    columns = fmt["columns"]
    if columns is not None:
        columns = None if list(columns) == list(dataset.column_names) else [*columns, *new_columns]
    return out.with_format(
        fmt["type"], columns=columns, output_all_columns=fmt["output_all_columns"], **fmt["format_kwargs"]
    )


def build_teacher_cache(
    dataset,
    teacher,
    *,
    collate_fn=None,
    batch_size: int = 64,
    dtype: str = "float16",
    top_k: int | None = None,
    preprocessing_id: str = "",
    accelerator=None,
    label_permutation=None,
):
    """``dataset`` with the teacher's logits added as cache columns (dense, or top-k with ``top_k=k``).

    The teacher runs once, in eval mode under ``torch.inference_mode``, on its own device, through
    ``Dataset.map(batched=True)`` over the dataset's own format/transform (``collate_fn``, if given, receives
    the formatted rows; rows carrying the teacher's own inputs, ``teacher_pixel_values``, feed the teacher those
    instead of ``pixel_values``). ``preprocessing_id`` names preprocessing the dataset fingerprint cannot see (e.g.
    the image processor inside a collate_fn). ``label_permutation[j]`` is the teacher's index of the
    student's class j (`hf_fairkd.teacher.label_permutation`). Under several Accelerate processes each
    process runs a contiguous shard and every process returns the same full dataset.
    """
    from datasets import Dataset, Features, concatenate_datasets

    if isinstance(teacher, str):
        from .teacher import load_teacher

        teacher = load_teacher(teacher)
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not a cache dtype: use one of {CACHE_DTYPES}.")
    present = sorted(set(CACHE_COLUMNS) & set(dataset.column_names))
    if present:
        raise ValueError(
            f"The dataset already has teacher-cache columns {present}: remove them first "
            "(dataset.remove_columns(...)) or use the existing cache."
        )
    num_classes = int(teacher.config.num_labels)
    if top_k is not None and not 1 <= top_k <= num_classes:
        raise ValueError(
            f"top_k={top_k} but the teacher has {num_classes} classes: use 1 <= top_k <= {num_classes} "
            "(top_k=None stores all logits)."
        )
    teacher_names = [str(teacher.config.id2label[i]) for i in sorted(teacher.config.id2label, key=int)]
    permutation = None
    if label_permutation is not None:
        permutation = torch.as_tensor(label_permutation, dtype=torch.long).cpu()
        if sorted(permutation.tolist()) != list(range(num_classes)):
            raise ValueError(
                f"label_permutation must reorder the teacher's {num_classes} classes (a permutation of "
                "0..m-1); build it with hf_fairkd.teacher.label_permutation(student_id2label, teacher_id2label)."
            )
    class_names = teacher_names if permutation is None else [teacher_names[i] for i in permutation.tolist()]
    record = {
        "format_version": FORMAT_VERSION,
        "kind": "dense" if top_k is None else "topk",
        "teacher_fingerprint": _teacher_fingerprint(teacher),
        "teacher_commit_hash": getattr(teacher.config, "_commit_hash", None),  # provenance only
        "source_fingerprint": dataset._fingerprint,
        "num_rows": len(dataset),
        "preprocessing_id": preprocessing_id,
        "collate_fn_hash": _hash_callable(collate_fn),
        "dtype": dtype,
        "dense_encoding": DENSE_ENCODING if top_k is None else None,
        "top_k": top_k,
        "num_classes": num_classes,
        "teacher_id2label": {str(i): name for i, name in enumerate(teacher_names)},
        "class_names": class_names,
        "label_permutation": None if permutation is None else permutation.tolist(),
    }
    record["cache_fingerprint"] = _cache_fingerprint(record)

    new_features = cache_features(num_classes, dtype, top_k)
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    part = dataset if world == 1 else dataset.select(_share(len(dataset), world, rank))
    runner = _TeacherRunner(teacher, collate_fn, dtype, top_k, permutation, num_classes)
    # a sharded teacher's forward is a collective: no process may skip its batches by loading a cache file
    collective = world > 1 and runner.sharded
    was_training = teacher.training
    teacher.eval()
    try:
        mapped = part.map(
            runner,
            batched=True,
            batch_size=batch_size,
            features=Features({**part.features, **new_features}),
            # our own fingerprint: hashing the function would pickle the whole teacher
            new_fingerprint=record["cache_fingerprint"][:32] + (f"r{rank}of{world}" if world > 1 else ""),
            load_from_cache_file=False if collective else None,
            desc="Caching teacher logits",
        )
        if collective and len(dataset):  # as many forwards as the process with the most batches makes
            most = math.ceil(len(_share(len(dataset), world, 0)) / batch_size)
            while runner.calls < most:
                runner.forward(dataset[:1])  # discarded: keeps this process in step with the others
    finally:
        teacher.train(was_training)
    if world == 1:
        out = mapped
    else:
        import pyarrow as pa
        from accelerate.utils import gather_object
        from datasets import DatasetInfo
        from datasets.table import InMemoryTable

        # Arrow tables, not numpy: numpy's fixed-width bytes would drop a binary row's trailing NUL bytes
        mine = mapped.with_format("arrow", columns=list(new_features))[:] if len(part) else None
        parts = gather_object([mine])  # rank order, so contiguous shards concatenate to the original order
        table = InMemoryTable(pa.concat_tables([p for p in parts if p is not None]))
        added = Dataset(table, info=DatasetInfo(features=Features(new_features)))
        out = _restore_format(concatenate_datasets([dataset, added], axis=1), dataset, list(new_features))
        out = out.select(range(len(out)))  # own DatasetInfo copy before writing the record
    _attach_record(out, record)
    return out


# ------------------------------------------------------------------------------------------ checking
def check_cache(
    dataset,
    *,
    teacher=None,
    num_classes: int,
    source_fingerprint: str | None = None,
    id2label=None,
    topk_fill: str | None = None,
    temperature: float | None = None,
    preprocessing_id: str | None = None,
):
    """Refuse a cache that does not belong to this run; return its record (None when there is no cache).

    ``preprocessing_id`` (the teacher's preprocessing of this run, e.g. its image processor's
    ``to_json_string()``) refuses a cache whose teacher saw other inputs.

    See the module docstring for the cache-versus-teacher rule. ``id2label`` (the student's) checks the
    label order of the stored logits. With ``topk_fill`` and ``temperature`` (the run's), a top-k cache read
    with a fill measured to cost accuracy at that temperature logs a warning once
    (`hf_fairkd.teacher_signal.topk_fill_warning`).
    """
    columns = set(getattr(dataset, "column_names", None) or [])
    present = sorted(columns & set(CACHE_COLUMNS))
    if not present:
        return None
    rebuild = "Rebuild the cache with hf_fairkd.teacher_cache.build_teacher_cache(dataset, teacher)"
    record = teacher_cache_info(dataset)
    topk = TOPK_COLUMNS if record.get("format_version", 1) >= 2 else LEGACY_TOPK_COLUMNS
    expected = [DENSE_COLUMN] if record["kind"] == "dense" else list(topk)
    if sorted(expected) != present:
        raise ValueError(
            f"The dataset's cache columns {present} do not match its record (a {record['kind']} cache with "
            f"{expected}). {rebuild}."
        )
    if record["num_classes"] != num_classes:
        raise ValueError(
            f"The teacher cache was built for {record['num_classes']} classes but the student has {num_classes}. "
            f"{rebuild} using a teacher of the student's label space."
        )
    if id2label is not None:
        names = [str(id2label[i]) for i in sorted(id2label, key=int)]
        if names != record["class_names"]:
            raise ValueError(
                f"The teacher cache stores classes in the order {record['class_names'][:10]} but the student's "
                f"order is {names[:10]}. {rebuild}, passing label_permutation="
                "hf_fairkd.teacher.label_permutation(student.config.id2label, teacher.config.id2label)."
            )
    if source_fingerprint is not None and record["source_fingerprint"] != source_fingerprint:
        raise ValueError(
            f"The teacher cache was built from dataset fingerprint {record['source_fingerprint']}, not the "
            f"expected {source_fingerprint}. {rebuild} on this dataset."
        )
    if preprocessing_id is not None and record.get("preprocessing_id", "") != preprocessing_id:
        raise ValueError(
            "The teacher cache was built from inputs preprocessed otherwise (its record's preprocessing_id "
            f"{record.get('preprocessing_id', '')[:80]!r}…) than this run's teacher preprocessing "
            f"({preprocessing_id[:80]!r}…): the cached logits are of other inputs. {rebuild}, preprocessed "
            "with the teacher's own image processor."
        )
    if teacher is not None:
        if _teacher_fingerprint(teacher) != record["teacher_fingerprint"]:
            raise ValueError(
                "The dataset carries cached logits of another teacher (or of this teacher in another dtype) "
                "than the one passed. Pass teacher=None to train from the cache alone, or "
                f"{rebuild[0].lower() + rebuild[1:]} using this teacher."
            )
        logger.info("The cached logits match the teacher passed: the teacher is not run on cached batches.")
    if record["kind"] == "topk" and topk_fill is not None and temperature is not None:
        warn_topk_fill(topk_fill, temperature, record["top_k"], record["num_classes"])
    return record
