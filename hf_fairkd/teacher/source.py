"""Where the teacher's logits come from: a cached column of the batch, or the online teacher.

`TeacherSource` is the teacher side of `DistillationTrainer`: it loads the teacher, maps its labels onto the
student's, refuses a cache of another teacher, label space or inputs, and turns a batch into (student inputs,
labels, cached logits) and teacher logits. The trainer's loss and the objectives' hooks (`ObjectiveContext`)
share it. Placing the teacher under the run's distribution is `hf_fairkd.teacher.placement`'s job.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..groups import GROUP_ID_COLUMN
from ..objectives import teacher_free_objectives
from .cache import check_cache
from .cache_format import (
    CACHE_COLUMNS,
    DENSE_COLUMN,
    INPUT_DIGEST_COLUMN,
    cached_logits_from_batch,
    stored_views_of,
)
from .model import TEACHER_INPUT_COLUMNS, class_similarity, label_permutation, load_teacher
from .placement import TeacherMemory, prepare_teacher

logger = logging.getLogger(__name__)

# Batch keys that are not student inputs (the group codes are read by objectives that weight groups).
NON_MODEL_KEYS = (
    "labels",
    "label",
    *CACHE_COLUMNS,
    INPUT_DIGEST_COLUMN,
    *TEACHER_INPUT_COLUMNS,
    GROUP_ID_COLUMN,
)


class TeacherSource:
    """The teacher of a run. ``model`` is the frozen teacher (None when the batches carry cached logits or the
    objective uses no teacher); ``permutation`` reorders its logits into the student's label order (None: same).

    Args:
        teacher: a model, a local path, a Hub id, or None.
        student_config: the student's config (``num_labels``, ``id2label``).
        args: `DistillationArguments` (``teacher_dtype``, ``teacher_topk_fill``, ``temperature``).
        uses_teacher: whether the objective reads teacher logits; if not, ``teacher`` is ignored.
        train_dataset, holdout_dataset: checked against a teacher cache they carry.
        trust_remote_code: allow remote code when loading the teacher by name.
    """

    def __init__(
        self,
        teacher: nn.Module | str | None,
        *,
        student_config,
        args,
        uses_teacher: bool,
        train_dataset=None,
        holdout_dataset=None,
        trust_remote_code: bool = False,
    ):
        self.num_classes = student_config.num_labels
        self.topk_fill = args.teacher_topk_fill
        self.model: nn.Module | None = None
        self.permutation: torch.Tensor | None = None
        self.sharding = getattr(args, "teacher_sharding", "auto")
        self.memory: TeacherMemory | None = None  # set by `prepare` (None: no online teacher)
        self._warned_cache_wins = False
        has_cache = train_dataset is not None and (
            bool(set(CACHE_COLUMNS) & set(train_dataset.column_names or []))
            or bool(
                getattr(stored_views_of(train_dataset), "logits", False)
            )  # added by a view-cache transform
        )
        if not uses_teacher:
            if teacher is not None:
                logger.warning(
                    "objective=%r does not use a teacher; the teacher passed is ignored.", args.objective
                )
            return
        if teacher is None and not has_cache:
            raise ValueError(
                f"objective={args.objective!r} distils from a teacher: pass `teacher=` (a model, a local path or a "
                f"Hub id) or a train_dataset with a cached '{DENSE_COLUMN}' column. Teacher-free objectives: "
                f"{', '.join(teacher_free_objectives())}."
            )
        if teacher is not None:
            self.model = load_teacher(teacher, dtype=args.teacher_dtype, trust_remote_code=trust_remote_code)
            self.permutation = label_permutation(student_config.id2label, self.model.config.id2label)
        # refuse a cache of another teacher, label space or inputs
        for dataset in (train_dataset, holdout_dataset):
            if dataset is not None:
                check_cache(
                    dataset,
                    teacher=self.model,
                    num_classes=self.num_classes,
                    id2label=student_config.id2label,
                    topk_fill=args.teacher_topk_fill,
                    temperature=args.temperature,
                )

    def prepare(self, accelerator) -> None:
        """Place the teacher with ``accelerator`` for inference (`prepare_teacher`, ``args.teacher_sharding``),
        in eval mode, and log once what it holds on each process (``memory``)."""
        if self.model is not None:
            self.model, self.memory = prepare_teacher(self.model, accelerator, self.sharding)
            if accelerator.is_main_process:
                logger.info("Teacher: %s.", self.memory.describe())

    def split_batch(self, batch: dict) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
        """(student inputs, labels, cached teacher logits or None) of a collated batch."""
        labels = batch["labels"] if "labels" in batch else batch["label"]
        model_inputs = {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}
        return (
            model_inputs,
            labels,
            cached_logits_from_batch(batch, self.num_classes, topk_fill=self.topk_fill),
        )

    def teacher_inputs(self, batch: dict) -> dict:
        """The online teacher's inputs of a collated batch: the student's, except that the teacher's own
        preprocessed inputs (``teacher_pixel_values``, made by the teacher's image processor) replace theirs."""
        inputs = {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}
        inputs.update(
            {name: batch[column] for column, name in TEACHER_INPUT_COLUMNS.items() if column in batch}
        )
        return inputs

    def logits(
        self, model_inputs: dict, cached: torch.Tensor | None, step: int | None = None
    ) -> torch.Tensor:
        """Float32 teacher logits in the student's label order: ``cached`` if given, else the online teacher
        run on ``model_inputs`` (pass `teacher_inputs(batch)`, so that it reads its own preprocessing).
        Refuses logits of another width and non-finite ones (``step`` names the step in the message)."""
        if cached is not None:
            if self.model is not None and not self._warned_cache_wins:
                logger.warning(
                    "Batches carry cached teacher logits: they are used and the online teacher is not run."
                )
                self._warned_cache_wins = True
            logits = cached.float()
        else:
            if self.model is None:
                raise ValueError(
                    f"This batch has no '{DENSE_COLUMN}' column and no teacher was given: pass `teacher=`."
                )
            dtype = next(self.model.parameters()).dtype
            inputs = {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in model_inputs.items()}
            with torch.no_grad():
                logits = self.model(**inputs).logits.float()
            if self.permutation is not None:
                logits = logits[:, self.permutation.to(logits.device)]
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"Teacher logits have {logits.shape[-1]} classes but the student has {self.num_classes}; "
                "rebuild the teacher cache with the teacher of this label space."
            )
        if not torch.isfinite(logits).all():
            raise ValueError(
                f"Non-finite teacher logits in the batch at step {step}: check the teacher "
                "(or its lower-precision dtype) and the inputs of this batch."
            )
        return logits

    def class_similarity(self, rho: float) -> torch.Tensor:
        """Tang et al.'s similarity targets from the teacher's classifier weights, in the student's label order."""
        if self.model is None:
            raise ValueError(
                "kd_sim needs the teacher model itself (its classifier weights), not only cached logits."
            )
        similarity = class_similarity(self.model, rho)  # gathered whole if the teacher is sharded
        if self.permutation is not None:
            similarity = similarity[self.permutation][:, self.permutation]
        return similarity
