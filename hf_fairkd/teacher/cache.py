"""Teacher logits computed once and stored as dataset columns, so training never has to run the teacher.

`build_teacher_cache` runs the teacher once over a dataset and adds the columns of `cache_format` (dense, or
top-k with ``top_k=k``), stored in the student's label order (pass ``label_permutation`` when the teacher orders
its classes differently), each row with the digest of its teacher inputs (`input_digest`); a record of where
the cache comes from goes into ``info.description`` (`cache_record`).

Cache or teacher? `check_cache`, which `DistillationTrainer` calls at start-up, decides:

* a dataset with cache columns but no record (hand-made or stripped), or of an older format, is refused;
* a record for another number of classes, label order, source dataset or preprocessing is refused;
* rows whose teacher inputs changed since the cache was built (a seeded sample re-hashed) are refused;
* cache and no teacher: the cache is used;
* cache and a teacher: the cache wins when its teacher fingerprint equals that teacher's (the teacher is
  then not run on cached batches); a different fingerprint is an error, because silently training on
  another teacher's logits is worse than failing. The fingerprint covers the weights' bytes, so the same
  teacher cast to another dtype (``teacher_dtype``) counts as another teacher.

The cache holds the logits of the dataset's format/transform at build time: build it with the deterministic
(evaluation) preprocessing; random training augmentation is not reflected in the cache.

Several processes each run the teacher on a contiguous share of the rows. A teacher sharded over them
(`hf_fairkd.teacher.placement.prepare_teacher`) gathers its weights in every forward: processes with fewer
batches make dummy forwards to keep in step, and its fingerprint (over the gathered weights) is the whole
teacher's. So a teacher too large for one device is cached sharded, and the student trains without it.
"""

from __future__ import annotations

import inspect
import logging
import math

import numpy as np
import torch

from .cache_format import (
    CACHE_COLUMNS,
    CACHE_DTYPES,
    DENSE_COLUMN,
    DENSE_ENCODING,
    FORMAT_VERSION,
    INPUT_DIGEST_COLUMN,
    REBUILD,
    TAIL_LOGSUMEXP_COLUMN,
    TOPK_COLUMNS,
    TOPK_INDICES_COLUMN,
    TOPK_LOGITS_COLUMN,
    cache_features,
    dense_rows_as_binary,
    index_dtype,
    warn_topk_fill,
)
from .cache_record import attach_record, cache_fingerprint, teacher_cache_info, teacher_fingerprint
from .input_digest import LABEL_COLUMNS, check_inputs, input_columns, row_digests
from .model import TEACHER_INPUT_COLUMNS, load_teacher
from .sharding import is_sharded

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ the teacher's forward
def _forward_names(teacher: torch.nn.Module) -> set[str] | None:
    """The batch keys the teacher takes; None (every key but labels) for a bare ``forward(*args, **kwargs)``."""
    params = inspect.signature(teacher.forward).parameters.values()
    named = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return named - set(LABEL_COLUMNS) if named else None


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (torch.Tensor, np.ndarray)):
        return torch.stack([torch.as_tensor(v) for v in value])  # rows from a transform
    return torch.as_tensor(value)  # tensors and numpy arrays are not copied


class _TeacherRunner:
    """The map function: formatted batch -> model inputs -> teacher -> cache columns (dense: binary rows), and
    the digests of the same rows' stored inputs (``raw``: the dataset in the arrow format)."""

    def __init__(self, teacher, collate_fn, dtype, top_k, permutation, num_classes, raw, inputs):
        self.teacher, self.collate_fn, self.top_k, self.permutation = teacher, collate_fn, top_k, permutation
        self.dtype = dtype
        self.np_dtype = np.float16 if dtype == "float16" else np.float32
        self.index_dtype = np.dtype(index_dtype(num_classes))
        self.names = _forward_names(teacher)
        self.raw, self.inputs = raw, inputs
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
        names = self.names if self.names is not None else set(batch) - set(LABEL_COLUMNS)
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

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        rows = self.raw[indices[0] : indices[-1] + 1]  # a map batch is a contiguous range of rows
        digests = {INPUT_DIGEST_COLUMN: row_digests(rows, self.inputs)}
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
                return {DENSE_COLUMN: dense_rows_as_binary(logits.cpu().numpy(), self.dtype), **digests}
            values, indices = logits.topk(self.top_k, dim=-1)
            # the tail's own log-mass, not a full normaliser: exact however small the tail is
            tail = torch.logsumexp(logits.scatter(1, indices, -torch.inf), dim=-1)
            return {
                TOPK_LOGITS_COLUMN: values.cpu().numpy().astype(self.np_dtype),
                TOPK_INDICES_COLUMN: indices.cpu().numpy().astype(self.index_dtype),
                TAIL_LOGSUMEXP_COLUMN: tail.cpu().numpy().astype(np.float32),
                **digests,
            }


# ------------------------------------------------------------------------------------------ building
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
    process runs a contiguous shard and every process returns the same full dataset. Build it after every
    change to the inputs: `check_cache` refuses rows whose inputs changed since.
    """
    from datasets import Dataset, Features, concatenate_datasets

    if isinstance(teacher, str):
        teacher = load_teacher(teacher)
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not a cache dtype: use one of {CACHE_DTYPES}.")
    present = sorted(set((*CACHE_COLUMNS, INPUT_DIGEST_COLUMN)) & set(dataset.column_names))
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
    reads_stored = collate_fn is None and dataset.format["type"] != "custom"
    inputs = input_columns(dataset, _forward_names(teacher), reads_stored)
    if not inputs:
        raise ValueError(
            f"The dataset's columns {dataset.column_names} hold only labels: none can be the teacher's inputs."
        )
    record = {
        "format_version": FORMAT_VERSION,
        "kind": "dense" if top_k is None else "topk",
        "teacher_fingerprint": teacher_fingerprint(teacher),
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
        "input_columns": inputs,
    }
    record["cache_fingerprint"] = cache_fingerprint(record)

    new_features = cache_features(num_classes, dtype, top_k)
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    part = dataset if world == 1 else dataset.select(_share(len(dataset), world, rank))
    raw = part.with_format("arrow", columns=inputs)
    runner = _TeacherRunner(teacher, collate_fn, dtype, top_k, permutation, num_classes, raw, inputs)
    # a sharded teacher's forward is a collective: no process may skip its batches by loading a cache file
    collective = world > 1 and runner.sharded
    was_training = teacher.training
    teacher.eval()
    try:
        mapped = part.map(
            runner,
            batched=True,
            with_indices=True,
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
    attach_record(out, record)
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

    See the module docstring for the rules. ``id2label`` (the student's) checks the label order of the stored
    logits; ``preprocessing_id`` (the teacher's preprocessing of this run, e.g. its image processor's
    ``to_json_string()``) refuses a cache whose teacher saw other inputs. With ``topk_fill`` and
    ``temperature`` (the run's), a top-k cache read with a fill measured to cost accuracy at that temperature
    logs a warning once (`hf_fairkd.teacher.cache_format.topk_fill_warning`).
    """
    columns = set(getattr(dataset, "column_names", None) or [])
    present = sorted(columns & set(CACHE_COLUMNS))
    if not present:
        return None
    record = teacher_cache_info(dataset)
    expected = [DENSE_COLUMN] if record["kind"] == "dense" else list(TOPK_COLUMNS)
    if sorted(expected) != present:
        raise ValueError(
            f"The dataset's cache columns {present} do not match its record (a {record['kind']} cache with "
            f"{expected}). {REBUILD}."
        )
    if record["num_classes"] != num_classes:
        raise ValueError(
            f"The teacher cache was built for {record['num_classes']} classes but the student has {num_classes}. "
            f"{REBUILD} using a teacher of the student's label space."
        )
    if id2label is not None:
        names = [str(id2label[i]) for i in sorted(id2label, key=int)]
        if names != record["class_names"]:
            raise ValueError(
                f"The teacher cache stores classes in the order {record['class_names'][:10]} but the student's "
                f"order is {names[:10]}. {REBUILD}, passing label_permutation="
                "hf_fairkd.teacher.label_permutation(student.config.id2label, teacher.config.id2label)."
            )
    if source_fingerprint is not None and record["source_fingerprint"] != source_fingerprint:
        raise ValueError(
            f"The teacher cache was built from dataset fingerprint {record['source_fingerprint']}, not the "
            f"expected {source_fingerprint}. {REBUILD} on this dataset."
        )
    if preprocessing_id is not None and record["preprocessing_id"] != preprocessing_id:
        raise ValueError(
            "The teacher cache was built from inputs preprocessed otherwise (its record's preprocessing_id "
            f"{record['preprocessing_id'][:80]!r}…) than this run's teacher preprocessing "
            f"({preprocessing_id[:80]!r}…): the cached logits are of other inputs. {REBUILD}, preprocessed "
            "with the teacher's own image processor."
        )
    check_inputs(dataset, record)
    if teacher is not None:
        if teacher_fingerprint(teacher) != record["teacher_fingerprint"]:
            raise ValueError(
                "The dataset carries cached logits of another teacher (or of this teacher in another dtype) "
                "than the one passed. Pass teacher=None to train from the cache alone, or "
                f"{REBUILD[0].lower()}{REBUILD[1:]} using this teacher."
            )
        logger.info("The cached logits match the teacher passed: the teacher is not run on cached batches.")
    if record["kind"] == "topk" and topk_fill is not None and temperature is not None:
        warn_topk_fill(topk_fill, temperature, record["top_k"], record["num_classes"])
    return record
