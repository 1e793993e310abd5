"""Teacher signals computed once and stored as dataset columns, so training never has to run the teacher.

`build_teacher_cache` runs the teacher once over a dataset and adds either

* dense: ``teacher_logits``, the m logits of each row (float16 by default, or float32), or
* top-k: ``teacher_topk_logits`` (the k largest logits), ``teacher_topk_indices`` (their class ids) and
  ``teacher_logsumexp`` (log sum_j exp t_j over all m classes, so the mass outside the top k is known).

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

Top-k to dense (`cached_logits_from_batch`): the missing m-k logits are filled either with a large negative
finite value (``"renormalize"``: softmax gives exactly the top-k distribution renormalised; the trainer's
finiteness check still works) or with the value that spreads the remaining mass ``1 - sum_topk p`` evenly
over the other classes (``"spread"``; that mass is the one at T = 1, so at T > 1 it over-weights the missing
classes). Objectives that read raw logits rather than probabilities (the instance-level ``ada_margin``)
should use "spread" or a dense cache.

The cache holds the logits of the dataset's format/transform at build time: build it with the
deterministic (evaluation) preprocessing; random training augmentation is not reflected in the cache.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import tempfile

import numpy as np
import torch

logger = logging.getLogger(__name__)

DENSE_COLUMN = "teacher_logits"
TOPK_LOGITS_COLUMN = "teacher_topk_logits"
TOPK_INDICES_COLUMN = "teacher_topk_indices"
LOGSUMEXP_COLUMN = "teacher_logsumexp"
TOPK_COLUMNS = (TOPK_LOGITS_COLUMN, TOPK_INDICES_COLUMN, LOGSUMEXP_COLUMN)
CACHE_COLUMNS = (DENSE_COLUMN, *TOPK_COLUMNS)

TOPK_FILLS = ("renormalize", "spread")
TOPK_FILL = "renormalize"  # module default for `cached_logits_from_batch`
CACHE_DTYPES = ("float16", "float32")
# Gap below the largest top-k logit for "renormalize": exp(-1e4 / T) is exactly 0 in float32 for T < ~95.
RENORMALIZE_GAP = 1e4
# Below this remaining mass "spread" falls back to "renormalize" (float16 rounding makes it noise).
MIN_REST_MASS = 1e-6
FORMAT_VERSION = 1

_MARKER = "hf_fairkd.TeacherCache: "
_MARKER_RE = re.compile(r"^" + re.escape(_MARKER) + r"(.*)$", re.MULTILINE)
# Config keys that say where, how or whether a model was saved or loaded, not what it computes (the dtype is
# in the parameters' bytes).
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "_commit_hash", "transformers_version", "architectures", "dtype")
_LABEL_KEYS = ("labels", "label", "label_ids")


# ------------------------------------------------------------------------------------------ fingerprints
def teacher_fingerprint(teacher: torch.nn.Module) -> str:
    """sha256 over the teacher's config (sorted JSON, load-location keys dropped) and every parameter and
    buffer (name, dtype, shape, bytes). Equal for the same weights however they were loaded."""
    digest = hashlib.sha256()
    config = getattr(teacher, "config", None)
    if config is not None:
        config_dict = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        digest.update(json.dumps(config_dict, sort_keys=True, default=str).encode())
    tensors = [
        *teacher.named_parameters(remove_duplicate=False),
        *teacher.named_buffers(remove_duplicate=False),
    ]
    for name, tensor in tensors:
        data = tensor.detach().reshape(-1).cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(memoryview(data.view(torch.uint8).numpy()))
    return digest.hexdigest()


def _cache_fingerprint(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "cache_fingerprint"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _attach_record(dataset, record: dict) -> None:
    line = _MARKER + json.dumps(record, sort_keys=True)
    text = dataset.info.description or ""
    if _MARKER_RE.search(text):
        text = _MARKER_RE.sub(lambda _: line, text)
    else:
        text = f"{text}\n\n{line}" if text.strip() else line
    dataset.info.description = text


def teacher_cache_info(dataset) -> dict:
    """The record `build_teacher_cache` wrote into ``dataset.info.description``."""
    found = _MARKER_RE.search(getattr(dataset.info, "description", None) or "")
    if found is None:
        raise ValueError(
            f"This dataset carries no teacher-cache record (no {_MARKER.strip()!r} line in info.description): "
            "its cached columns were made by hand or the record was stripped. Rebuild the cache with "
            "hf_fairkd.teacher_cache.build_teacher_cache(dataset, teacher)."
        )
    return json.loads(found.group(1))


# ------------------------------------------------------------------------------------------ building
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
    """The map function: formatted batch -> model inputs -> teacher -> numpy cache columns."""

    def __init__(self, teacher, collate_fn, dtype, top_k, permutation):
        self.teacher, self.collate_fn, self.top_k, self.permutation = teacher, collate_fn, top_k, permutation
        self.np_dtype = np.float16 if dtype == "float16" else np.float32
        self.names = _forward_names(teacher)
        first = next(teacher.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.param_dtype = first.dtype if first is not None else torch.float32

    def model_inputs(self, batch: dict) -> dict:
        if self.collate_fn is not None:
            size = len(next(iter(batch.values())))
            batch = self.collate_fn([{k: v[i] for k, v in batch.items()} for i in range(size)])
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

    def __call__(self, batch: dict) -> dict:
        with torch.inference_mode():
            logits = self.teacher(**self.model_inputs(batch)).logits.float()
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
                return {DENSE_COLUMN: logits.cpu().numpy().astype(self.np_dtype)}
            values, indices = logits.topk(self.top_k, dim=-1)
            return {
                TOPK_LOGITS_COLUMN: values.cpu().numpy().astype(self.np_dtype),
                TOPK_INDICES_COLUMN: indices.to(torch.int32).cpu().numpy(),
                LOGSUMEXP_COLUMN: torch.logsumexp(logits, dim=-1).cpu().numpy().astype(np.float32),
            }


def _cache_features(num_classes: int, dtype: str, top_k: int | None) -> dict:
    from datasets import List, Value

    if top_k is None:
        return {DENSE_COLUMN: List(Value(dtype), length=num_classes)}
    return {
        TOPK_LOGITS_COLUMN: List(Value(dtype), length=top_k),
        TOPK_INDICES_COLUMN: List(Value("int32"), length=top_k),
        LOGSUMEXP_COLUMN: Value("float32"),
    }


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
    the formatted rows). ``preprocessing_id`` names preprocessing the dataset fingerprint cannot see (e.g.
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
        "teacher_fingerprint": teacher_fingerprint(teacher),
        "teacher_commit_hash": getattr(teacher.config, "_commit_hash", None),  # provenance only
        "source_fingerprint": dataset._fingerprint,
        "num_rows": len(dataset),
        "preprocessing_id": preprocessing_id,
        "collate_fn_hash": _hash_callable(collate_fn),
        "dtype": dtype,
        "top_k": top_k,
        "num_classes": num_classes,
        "teacher_id2label": {str(i): name for i, name in enumerate(teacher_names)},
        "class_names": class_names,
        "label_permutation": None if permutation is None else permutation.tolist(),
    }
    record["cache_fingerprint"] = _cache_fingerprint(record)

    new_features = _cache_features(num_classes, dtype, top_k)
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    part = dataset if world == 1 else dataset.shard(num_shards=world, index=rank, contiguous=True)
    runner = _TeacherRunner(teacher, collate_fn, dtype, top_k, permutation)
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
            desc="Caching teacher logits",
        )
    finally:
        teacher.train(was_training)
    if world == 1:
        out = mapped
    else:
        from accelerate.utils import gather_object

        mine = mapped.with_format("numpy", columns=list(new_features))[:]
        parts = gather_object([mine])  # rank order, so contiguous shards concatenate to the original order
        columns = {c: np.concatenate([p[c] for p in parts]) for c in new_features}
        added = Dataset.from_dict(columns, features=Features(new_features))
        out = _restore_format(concatenate_datasets([dataset, added], axis=1), dataset, list(new_features))
        out = out.select(range(len(out)))  # own DatasetInfo copy before writing the record
    _attach_record(out, record)
    return out


# ------------------------------------------------------------------------------------------ checking
def check_cache(
    dataset, *, teacher=None, num_classes: int, source_fingerprint: str | None = None, id2label=None
):
    """Refuse a cache that does not belong to this run; return its record (None when there is no cache).

    See the module docstring for the cache-versus-teacher rule. ``id2label`` (the student's) checks the
    label order of the stored logits.
    """
    columns = set(getattr(dataset, "column_names", None) or [])
    present = sorted(columns & set(CACHE_COLUMNS))
    if not present:
        return None
    rebuild = "Rebuild the cache with hf_fairkd.teacher_cache.build_teacher_cache(dataset, teacher)"
    record = teacher_cache_info(dataset)
    expected = [DENSE_COLUMN] if record["kind"] == "dense" else list(TOPK_COLUMNS)
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
    if teacher is not None:
        if teacher_fingerprint(teacher) != record["teacher_fingerprint"]:
            raise ValueError(
                "The dataset carries cached logits of another teacher (or of this teacher in another dtype) "
                "than the one passed. Pass teacher=None to train from the cache alone, or "
                f"{rebuild[0].lower() + rebuild[1:]} using this teacher."
            )
        logger.info("The cached logits match the teacher passed: the teacher is not run on cached batches.")
    return record


# ------------------------------------------------------------------------------------------ saving
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
    """``load_from_disk`` of a cache saved by `save_teacher_cache`; refuses a folder without a record."""
    from datasets import load_from_disk

    dataset = load_from_disk(os.fspath(path))
    teacher_cache_info(dataset)
    return dataset


# ------------------------------------------------------------------------------------------ reading
def topk_to_dense(
    values: torch.Tensor,
    indices: torch.Tensor,
    logsumexp: torch.Tensor,
    num_classes: int,
    fill: str = TOPK_FILL,
) -> torch.Tensor:
    """Dense float32 [B, m] logits from top-k logits, their class ids and the full log-normaliser."""
    if fill not in TOPK_FILLS:
        raise ValueError(f"Unknown top-k fill {fill!r}; use one of {TOPK_FILLS}.")
    values = values.float()
    k = values.shape[-1]
    if k > num_classes:
        raise ValueError(
            f"The cache stores top-{k} logits but the student has {num_classes} classes. Rebuild it."
        )
    if k == num_classes:  # nothing to fill
        return values.new_empty(values.shape[0], num_classes).scatter_(1, indices.long(), values)
    floor = values.amax(dim=-1, keepdim=True) - RENORMALIZE_GAP
    if fill == "spread":
        # float64: the remaining mass is a difference of numbers near 1
        lse = logsumexp.double().reshape(-1, 1)
        rest = 1.0 - torch.exp(values.double() - lse).sum(dim=-1, keepdim=True)
        spread = torch.log(rest.clamp_min(MIN_REST_MASS) / (num_classes - k)) + lse
        floor = torch.where(rest > MIN_REST_MASS, spread, floor.double()).float()
    dense = floor.expand(-1, num_classes).clone()
    return dense.scatter_(1, indices.long(), values)


def cached_logits_from_batch(
    batch: dict, num_classes: int, topk_fill: str | None = None
) -> torch.Tensor | None:
    """Dense float32 teacher logits [B, m] from the cached columns of a collated batch; None when there are none.

    ``topk_fill`` ("renormalize" or "spread") applies to top-k caches; None means the module's TOPK_FILL.
    """
    if DENSE_COLUMN in batch:
        return batch[DENSE_COLUMN].float()
    if TOPK_LOGITS_COLUMN in batch:
        missing = [c for c in TOPK_COLUMNS if c not in batch]
        if missing:
            raise ValueError(
                f"The batch has {TOPK_LOGITS_COLUMN!r} but not {missing}: keep all top-k cache columns in the "
                "dataset and let the data collator pass them through."
            )
        columns = [batch[c] for c in TOPK_COLUMNS]
        return topk_to_dense(*columns, num_classes, TOPK_FILL if topk_fill is None else topk_fill)
    return None
