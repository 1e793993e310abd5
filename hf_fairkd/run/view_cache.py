"""Augmented views cached once (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition",
ECCV 2022): each epoch's flip and crop of every training row is drawn once from a seeded generator, the teacher
runs once over all those views, and every student then trains on the stored views with the stored logits,
without a teacher forward.

`build_view_cache` writes a folder: the views (``flips.npy`` (E, N) bool, ``shifts.npy`` (E, N, 2), pixels at
the student's width, the parameters of `hf_fairkd.run.pixels.random_views`), the teacher's logits of each view
(dense ``teacher_logits.npy`` (E, N, m), or top-k values, ids and tail log-mass as in `cache_format`), a digest
of every row's stored pixels, and last ``view_cache.json``, the record. It is written into a temporary folder
renamed into place, so a crash never leaves a folder that looks complete.

`check_view_cache` refuses a cache of other rows, preprocessing, augmentation, teacher, seed or too few epochs;
training from it (`with_cached_views`, the epoch callback) is `hf_fairkd.teacher.cached_views`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..teacher.cache_format import (
    CACHE_DTYPES,
    DENSE_COLUMN,
    TAIL_LOGSUMEXP_COLUMN,
    TOPK_INDICES_COLUMN,
    TOPK_LOGITS_COLUMN,
    index_dtype,
)
from ..teacher.cache_record import teacher_fingerprint
from ..teacher.input_digest import row_digests, sample_rows
from ..teacher.model import TEACHER_INPUT_COLUMNS, load_teacher
from .pixels import as_tensor, augment_views, draw_views

logger = logging.getLogger(__name__)

VIEW_CACHE_FORMAT = 1
RECORD_NAME = "view_cache.json"
# what `random_views` + `augment_views` do; a cache of other views (another kind) is refused
AUGMENTATION = "flip+pad_crop/v1: horizontal flip p=0.5, zero pad width//8, crop shift in [-pad, pad]"
FLIPS, SHIFTS, DIGESTS = "flips.npy", "shifts.npy", "row_digests.npy"
LOGIT_FILES = {
    DENSE_COLUMN: "teacher_logits.npy",
    TOPK_LOGITS_COLUMN: "teacher_topk_logits.npy",
    TOPK_INDICES_COLUMN: "teacher_topk_indices.npy",
    TAIL_LOGSUMEXP_COLUMN: "teacher_tail_logsumexp.npy",
}
STUDENT_INPUT, TEACHER_INPUT = "pixel_values", next(iter(TEACHER_INPUT_COLUMNS))
BUILD = "hf_fairkd.run.view_cache.build_view_cache(train_split, teacher, out_dir, epochs=..., view_seed=...)"


def refusal(path, what: str, fix: str = "rebuild it") -> ValueError:
    return ValueError(f"The view cache at {path} {what}: {fix} ({BUILD}).")


def source_split(train_split):
    """(stored rows, `PixelInputs`) of a prepared train split; refuses one that already reads a view cache."""
    from .preprocessing import pixel_inputs_of, pixel_transform_of

    decoded, inputs = pixel_inputs_of(train_split)
    if getattr(pixel_transform_of(train_split), "views", None) is not None:
        raise ValueError(
            "This split already reads views of a view cache: pass the prepared train split itself "
            "(prepare_splits(...)['train'])."
        )
    return decoded, inputs


# ------------------------------------------------------------------------------------------ the record
def _preprocessing(inputs) -> dict:
    """Each model's column and tensor steps (its resize is in the pixels, which the row digests cover)."""
    roles = {"student": STUDENT_INPUT, "teacher": TEACHER_INPUT if TEACHER_INPUT in inputs.outputs else None}
    out = {}
    for role, name in roles.items():
        column = inputs.outputs[name or STUDENT_INPUT]
        out[role] = {"column": column, **dataclasses.asdict(inputs.steps[column])}
    return json.loads(json.dumps(out))  # tuples as lists, as read back from the record


def _digests(table, columns) -> np.ndarray:
    return np.array([int(h, 16) for h in row_digests(table, columns)], dtype=np.uint64)


def _class_names(teacher, permutation) -> tuple[list[str], list[str]]:
    names = [str(teacher.config.id2label[i]) for i in sorted(teacher.config.id2label, key=int)]
    return names, names if permutation is None else [names[i] for i in permutation.tolist()]


def view_cache_info(path) -> dict:
    """The record of the complete view cache at ``path``; refuses a missing or unfinished one and other formats."""
    path = Path(path)
    if not (path / RECORD_NAME).is_file():
        raise refusal(
            path,
            f"is missing or incomplete (no {RECORD_NAME}: never built, or its build did not finish)",
            "build it",
        )
    record = json.loads((path / RECORD_NAME).read_text())
    if record.get("format_version") != VIEW_CACHE_FORMAT:
        raise refusal(
            path,
            f"is of format {record.get('format_version')} and this version reads format {VIEW_CACHE_FORMAT}",
        )
    for name, spec in record["files"].items():
        array = np.load(path / name, mmap_mode="r")
        if list(array.shape) != spec["shape"] or str(array.dtype) != spec["dtype"]:
            raise refusal(path, f"has a damaged {name} ({array.dtype} {array.shape}, expected {spec})")
    return record


# ------------------------------------------------------------------------------------------ building
def build_view_cache(
    train_split,
    teacher,
    out_dir,
    *,
    epochs: int,
    view_seed: int = 0,
    top_k: int | None = None,
    dtype: str = "float16",
    batch_size: int = 256,
    label_permutation=None,
) -> Path:
    """Draw ``epochs`` views of every row of ``train_split`` (a split of `prepare_splits`' fast pixel path, the
    one the students will train on) from ``view_seed``, run ``teacher`` once over them (eval mode, no grad, on
    its own inputs ``teacher_pixel_values`` when it has its own preprocessing, logits reordered by
    ``label_permutation`` as in `build_teacher_cache`), and write the cache to ``out_dir`` (replaced
    atomically). Dense logits in ``dtype``, or top-k with ``top_k=k``. Returns the folder. One process only."""
    decoded, inputs = source_split(train_split)
    teacher = load_teacher(teacher) if isinstance(teacher, str) else teacher
    num_classes, num_rows = int(teacher.config.num_labels), len(decoded)
    if epochs < 1 or dtype not in CACHE_DTYPES or not (top_k is None or 1 <= top_k <= num_classes):
        raise ValueError(
            f"build_view_cache: need epochs >= 1 (got {epochs}), dtype in {CACHE_DTYPES} (got {dtype!r}) and "
            f"top_k None or in 1..{num_classes} (got {top_k})."
        )
    permutation = None if label_permutation is None else torch.as_tensor(label_permutation, dtype=torch.long)
    if permutation is not None and sorted(permutation.tolist()) != list(range(num_classes)):
        raise ValueError(
            "label_permutation must reorder the teacher's classes: use hf_fairkd.teacher.label_permutation."
        )
    teacher_names, class_names = _class_names(teacher, permutation)
    preprocessing = _preprocessing(inputs)
    columns = list(dict.fromkeys(p["column"] for p in preprocessing.values()))
    shape = (epochs, num_rows)
    files = {FLIPS: (shape, "bool"), SHIFTS: ((*shape, 2), "int16"), DIGESTS: ((num_rows,), "uint64")}
    if top_k is None:
        files[LOGIT_FILES[DENSE_COLUMN]] = ((*shape, num_classes), dtype)
    else:
        files[LOGIT_FILES[TOPK_LOGITS_COLUMN]] = ((*shape, top_k), dtype)
        files[LOGIT_FILES[TOPK_INDICES_COLUMN]] = ((*shape, top_k), index_dtype(num_classes))
        files[LOGIT_FILES[TAIL_LOGSUMEXP_COLUMN]] = (shape, "float32")
    record = {
        "format_version": VIEW_CACHE_FORMAT,
        "kind": "dense" if top_k is None else "topk",
        "dtype": dtype,
        "top_k": top_k,
        "num_classes": num_classes,
        "class_names": class_names,
        "teacher_id2label": {str(i): n for i, n in enumerate(teacher_names)},
        "label_permutation": None if permutation is None else permutation.tolist(),
        "teacher_fingerprint": teacher_fingerprint(teacher),
        "teacher_commit_hash": getattr(teacher.config, "_commit_hash", None),  # provenance only
        "num_rows": num_rows,
        "source_fingerprint": getattr(decoded, "_fingerprint", None),  # provenance; the digests are checked
        "input_columns": columns,
        "preprocessing": preprocessing,
        "augmentation": {"kind": AUGMENTATION, "base_width": inputs.base_width},
        "view_seed": int(view_seed),
        "epochs": int(epochs),
        "files": {name: {"shape": list(s), "dtype": d} for name, (s, d) in files.items()},
    }
    target = Path(out_dir).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    was_training = teacher.training
    try:
        arrays = {
            name: np.lib.format.open_memmap(tmp / name, mode="w+", dtype=d, shape=s)
            for name, (s, d) in files.items()
        }
        flips, shifts = draw_views(epochs, num_rows, inputs.base_width, view_seed)
        arrays[FLIPS][:], arrays[SHIFTS][:] = flips.numpy(), shifts.numpy()
        teacher.eval()
        run = _TeacherViews(teacher, permutation, top_k, dtype, inputs, preprocessing["teacher"]["column"])
        raw = decoded.with_format("arrow", columns=columns)
        for start in range(0, num_rows, batch_size):
            stop = min(start + batch_size, num_rows)
            table = raw[start:stop]
            arrays[DIGESTS][start:stop] = _digests(table, columns)
            pixels = as_tensor(table.column(run.column).to_pylist(), run.steps.shape)
            for epoch in range(epochs):  # each row's pixels read once, its E views made from them
                out = run(pixels, flips[epoch, start:stop], shifts[epoch, start:stop])
                for column, values in out.items():
                    arrays[LOGIT_FILES[column]][epoch, start:stop] = values
        for array in arrays.values():
            array.flush()
        del arrays
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=1))  # last: a folder with it is complete
        _replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        teacher.train(was_training)
    logger.info(
        "View cache: %d epochs x %d rows, %d teacher forwards, at %s.", epochs, num_rows, run.calls, target
    )
    return target


def _replace(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an old ``target`` is moved aside first (a folder cannot replace a full one)."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=".tmp", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


class _TeacherViews:
    """uint8 teacher pixels + views -> the teacher's logits in the cache's columns (numpy)."""

    def __init__(self, teacher, permutation, top_k, dtype, inputs, column):
        self.teacher, self.permutation, self.top_k, self.dtype = teacher, permutation, top_k, dtype
        self.column, self.steps, self.base_width = column, inputs.steps[column], inputs.base_width
        first = next(teacher.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.param_dtype = first.dtype if first is not None else torch.float32
        self.calls = 0

    @torch.no_grad()
    def __call__(self, pixels, flips, shifts) -> dict:
        x = self.steps(augment_views(pixels, flips, shifts, self.base_width))
        self.calls += 1
        logits = self.teacher(pixel_values=x.to(self.device, self.param_dtype)).logits.float()
        if self.permutation is not None:
            logits = logits[:, self.permutation.to(logits.device)]
        if not torch.isfinite(logits).all() or (self.dtype == "float16" and logits.abs().max() > 65504):
            raise ValueError(
                "The teacher's logits of some views are not finite or exceed the float16 range: check the teacher, "
                "or build the view cache with dtype='float32'."
            )
        if self.top_k is None:
            return {DENSE_COLUMN: logits.cpu().numpy()}
        values, indices = logits.topk(self.top_k, dim=-1)
        tail = torch.logsumexp(logits.scatter(1, indices, -torch.inf), dim=-1)  # as `build_teacher_cache`
        return {
            TOPK_LOGITS_COLUMN: values.cpu().numpy(),
            TOPK_INDICES_COLUMN: indices.cpu().numpy(),
            TAIL_LOGSUMEXP_COLUMN: tail.cpu().numpy(),
        }


# ------------------------------------------------------------------------------------------ checking
def check_view_cache(
    path, train_split, *, teacher=None, view_seed: int | None = None, epochs: int | None = None, id2label=None
) -> dict:
    """Refuse the view cache at ``path`` when it does not belong to ``train_split`` (its rows' pixels, a seeded
    sample re-hashed, and both models' preprocessing), this code's augmentation, ``teacher`` (its weights
    digest), ``view_seed``, a run of ``epochs`` epochs, or the student's label order ``id2label`` (each when
    given). Returns its record."""
    record = view_cache_info(path)
    decoded, inputs = source_split(train_split)
    if record["augmentation"]["kind"] != AUGMENTATION:
        raise refusal(
            path,
            f"holds views of another augmentation ({record['augmentation']['kind']!r}; this code makes "
            f"{AUGMENTATION!r})",
        )
    for role, built in record["preprocessing"].items():
        now = _preprocessing(inputs)[role]
        if built != now:
            differ = sorted(k for k in now if built.get(k) != now[k])
            raise refusal(
                path,
                f"was built with other preprocessing of the {role}'s inputs ({', '.join(differ)}: cache "
                f"{[built.get(k) for k in differ]}, this split {[now[k] for k in differ]})",
                "rebuild it on this split",
            )
    if record["augmentation"]["base_width"] != inputs.base_width:
        raise refusal(
            path, f"holds shifts at width {record['augmentation']['base_width']}, not {inputs.base_width}"
        )
    if record["num_rows"] != len(decoded):
        raise refusal(
            path,
            f"was built for {record['num_rows']} training rows and this split has {len(decoded)}",
            "rebuild it on this split",
        )
    rows = sample_rows(len(decoded))
    stored = np.load(Path(path) / DIGESTS, mmap_mode="r")[rows]
    now = _digests(
        decoded.with_format("arrow", columns=record["input_columns"])[rows], record["input_columns"]
    )
    changed = [row for row, old, new in zip(rows, stored, now, strict=True) if old != new]
    if changed:
        raise refusal(
            path,
            f"was built from other training rows: {len(changed)} of {len(rows)} rows checked (e.g. row "
            f"{changed[0]}) have other pixels (another dataset, subset, order or image preprocessing)",
            "rebuild it on this split",
        )
    if view_seed is not None and int(view_seed) != record["view_seed"]:
        raise refusal(
            path,
            f"holds the views of view_seed={record['view_seed']}, not {view_seed}",
            f"pass view_seed={record['view_seed']} to use it, or rebuild it with view_seed={view_seed}",
        )
    if epochs is not None and epochs > record["epochs"]:
        raise refusal(
            path,
            f"holds views for {record['epochs']} epochs and the run trains {epochs}",
            f"train at most {record['epochs']} epochs, or rebuild it with epochs={epochs}",
        )
    if (
        id2label is not None
        and [str(id2label[i]) for i in sorted(id2label, key=int)] != record["class_names"]
    ):
        raise refusal(
            path,
            f"stores classes in the order {record['class_names'][:10]}, not the student's",
            "rebuild it with label_permutation=hf_fairkd.teacher.label_permutation(student_id2label, "
            "teacher_id2label)",
        )
    if teacher is not None and teacher_fingerprint(teacher) != record["teacher_fingerprint"]:
        raise refusal(
            path,
            "holds the logits of another teacher (other weights, or this teacher in another dtype)",
            "rebuild it with this teacher, or pass teacher=None to train from the cache alone",
        )
    return record
