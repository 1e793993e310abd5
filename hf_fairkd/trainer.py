"""`DistillationTrainer`: a `transformers.Trainer` that distils a frozen teacher into the student.

It changes what one step computes (``compute_loss``) and what a checkpoint holds (objective state); the
training loop, evaluation loop, saving and pushing stay the Trainer's own.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict

import numpy as np
import torch
from torch import nn
from transformers import Trainer

from . import teacher as teacher_lib
from .checkpoints import (
    OBJECTIVE_STATE_NAME,
    read_objective_state,
    resolve_checkpoint,
    write_objective_state,
)
from .config import DistillationArguments
from .objectives import get_objective
from .publishing import PublishingMixin
from .teacher_cache import CACHE_COLUMNS, DENSE_COLUMN, cached_logits_from_batch, check_cache

logger = logging.getLogger(__name__)

TEACHER_LOGITS_COLUMN = DENSE_COLUMN
# Batch keys that are not student inputs.
NON_MODEL_KEYS = ("labels", "label", *CACHE_COLUMNS)


def class_counts_from_dataset(dataset, num_classes: int) -> torch.Tensor:
    """Training count of each class: the long-tail metadata when present, else a count of the label column."""
    try:
        from .data import long_tail_info

        counts = long_tail_info(dataset).train_counts
        if len(counts) == num_classes:
            return torch.tensor(counts, dtype=torch.float64)
    except (ImportError, ValueError, KeyError, AttributeError):
        pass
    column = next((c for c in ("label", "labels") if c in dataset.column_names), None)
    if column is None:
        raise ValueError(
            "Could not find the class counts: the training dataset has no 'label'/'labels' column and no long-tail "
            "metadata. Pass `class_counts=` (the training count of each class) to DistillationTrainer."
        )
    labels = np.asarray(dataset.with_format(None)[column], dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Training labels span [{labels.min()}, {labels.max()}] but the student has {num_classes} classes; "
            "set the student's num_labels / id2label to the dataset's classes."
        )
    return torch.tensor(np.bincount(labels, minlength=num_classes), dtype=torch.float64)


class DistillationTrainer(PublishingMixin, Trainer):
    """Distil ``teacher`` into ``model`` with the objective named in ``args.objective``.

    Args:
        model: the student, any `AutoModelFor...Classification` model.
        args: `DistillationArguments`.
        teacher: a model instance, a local path or a Hub id; None for teacher-free objectives (ce, erm,
            balanced, dro, label_smoothing) or when every batch carries a cached ``teacher_logits`` column.
        holdout_dataset: examples held out from training, for the teacher's per-class reliability
            (ada_alpha / ada_margin at class level) and the class-DRO updates (robust_kd, dro).
        class_counts: training count of each class; read from the dataset when omitted.
        teacher_trust_remote_code: allow remote code when loading the teacher by name (off by default).
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by the items of the whole accumulated batch itself

    def __init__(
        self,
        model: nn.Module,
        args: DistillationArguments,
        teacher: nn.Module | str | None = None,
        train_dataset=None,
        eval_dataset=None,
        holdout_dataset=None,
        class_counts=None,
        compute_metrics=None,
        teacher_trust_remote_code: bool = False,
        **kwargs,
    ):
        if not isinstance(args, DistillationArguments):
            raise TypeError(
                "DistillationTrainer needs `args` to be DistillationArguments (not TrainingArguments)."
            )
        num_classes = model.config.num_labels
        if class_counts is None:
            if train_dataset is None:
                raise ValueError("Pass `class_counts=` or a `train_dataset` to read the class counts from.")
            class_counts = class_counts_from_dataset(train_dataset, num_classes)
        class_counts = torch.as_tensor(class_counts, dtype=torch.float64)
        if class_counts.numel() != num_classes:
            raise ValueError(
                f"class_counts has {class_counts.numel()} entries but the student has {num_classes} classes."
            )
        self.class_counts = class_counts
        self.objective = get_objective(args.objective)(args, class_counts)
        self.objective.check_prior([str(model.config.id2label[i]) for i in range(num_classes)])
        self._check_teacher_needs(teacher, train_dataset)
        if self.objective.needs_holdout and holdout_dataset is None:
            raise ValueError(
                f"objective={args.objective!r} with these settings needs a holdout split (teacher reliability or class-DRO "
                "updates): pass `holdout_dataset=`, e.g. the 'holdout' split of hf_fairkd.data.load_long_tailed."
            )
        self._teacher_permutation = None
        if teacher is not None and self.objective.uses_teacher:
            teacher = teacher_lib.load_teacher(
                teacher, dtype=args.teacher_dtype, trust_remote_code=teacher_trust_remote_code
            )
            self._teacher_permutation = teacher_lib.label_permutation(
                model.config.id2label, teacher.config.id2label
            )
        elif not self.objective.uses_teacher:
            teacher = None
        if self.objective.uses_teacher:
            for dataset in (
                train_dataset,
                holdout_dataset,
            ):  # refuse a cache of another teacher / label space
                if dataset is not None:
                    check_cache(
                        dataset,
                        teacher=teacher,
                        num_classes=num_classes,
                        id2label=model.config.id2label,
                        topk_fill=args.teacher_topk_fill,
                        temperature=args.temperature,
                    )
        if compute_metrics is None:
            from .metrics.trainer_metrics import SubgroupMetrics

            compute_metrics = SubgroupMetrics(model.config, train_counts=class_counts.long().tolist())
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            compute_metrics=compute_metrics,
            **kwargs,
        )
        # Make the Trainer count the items of each accumulated batch (it only does so for models that take loss
        # keywords); compute_loss normalises by that count, whatever the model's own loss does.
        self.model_accepts_loss_kwargs = True
        self.teacher = None
        if teacher is not None:
            self.teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
            self.teacher.eval()
        self.holdout_dataset = holdout_dataset
        self._objective_ready = False
        self._last_dro_step = -1
        self._warned_cache_wins = False
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    # ------------------------------------------------------------------------------------------ set-up
    def _check_teacher_needs(self, teacher, train_dataset) -> None:
        has_cache = train_dataset is not None and bool(
            set(CACHE_COLUMNS) & set(train_dataset.column_names or [])
        )
        if self.objective.uses_teacher and teacher is None and not has_cache:
            raise ValueError(
                f"objective={self.objective.name!r} distils from a teacher: pass `teacher=` (a model, a local path or a "
                f"Hub id) or a train_dataset with a cached '{TEACHER_LOGITS_COLUMN}' column. Teacher-free objectives: "
                "ce, erm, balanced, dro, label_smoothing."
            )
        if not self.objective.uses_teacher and teacher is not None:
            logger.warning(
                "objective=%r does not use a teacher; the teacher passed is ignored.", self.objective.name
            )

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns += [c for c in CACHE_COLUMNS if c not in self._signature_columns]

    def _prepare_objective(self) -> None:
        """Once per run: teacher reliability on the holdout and class similarities, as the objective needs."""
        if self._objective_ready:
            return
        if self.objective.needs_teacher_reliability and self.objective.teacher_reliability is None:
            logits, labels = self._holdout_teacher_logits()
            correct = torch.zeros(self.objective.num_classes, dtype=torch.float64)
            counts = torch.zeros_like(correct)
            if labels.numel():  # measured on the teacher as the student sees it (after teacher_logit_mode)
                right, _ = self.objective.teacher_reliability_signals(logits, labels)
                correct.index_add_(0, labels.cpu(), right.cpu().double())
                counts += torch.bincount(labels.cpu(), minlength=self.objective.num_classes).double()
            correct, counts = self._sum_over_processes(correct), self._sum_over_processes(counts)
            from .losses import smoothed_class_recall

            self.objective.teacher_reliability = smoothed_class_recall(
                correct, counts, self.args.reliability_pseudo_count
            )
            logger.info("Teacher per-class holdout recall: %s", self.objective.teacher_reliability.tolist())
        if self.objective.needs_class_similarity and self.objective.class_similarity is None:
            if self.teacher is None:
                raise ValueError(
                    "kd_sim needs the teacher model itself (its classifier weights), not only cached logits."
                )
            similarity = teacher_lib.class_similarity(
                self.accelerator.unwrap_model(self.teacher), self.args.kd_sim_rho
            )
            if self._teacher_permutation is not None:
                similarity = similarity[self._teacher_permutation][:, self._teacher_permutation]
            self.objective.class_similarity = similarity
        self._objective_ready = True

    # ------------------------------------------------------------------------------------------ teacher
    def _teacher_logits(self, model_inputs: dict, cached: torch.Tensor | None) -> torch.Tensor:
        if cached is not None:
            if self.teacher is not None and not self._warned_cache_wins:
                logger.warning(
                    "Batches carry cached teacher logits: they are used and the online teacher is not run."
                )
                self._warned_cache_wins = True
            logits = cached.float()
        else:
            if self.teacher is None:
                raise ValueError(
                    f"This batch has no '{TEACHER_LOGITS_COLUMN}' column and no teacher was given: pass `teacher=`."
                )
            dtype = next(self.teacher.parameters()).dtype
            inputs = {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in model_inputs.items()}
            with torch.no_grad():
                logits = self.teacher(**inputs).logits.float()
            if self._teacher_permutation is not None:
                logits = logits[:, self._teacher_permutation.to(logits.device)]
        if logits.shape[-1] != self.objective.num_classes:
            raise ValueError(
                f"Teacher logits have {logits.shape[-1]} classes but the student has {self.objective.num_classes}; "
                "rebuild the teacher cache with the teacher of this label space."
            )
        if not torch.isfinite(logits).all():
            raise ValueError(
                f"Non-finite teacher logits in the batch at step {self.state.global_step}: check the teacher "
                "(or its lower-precision dtype) and the inputs of this batch."
            )
        return logits

    def _holdout_batches(self, indices: np.ndarray):
        """Collated holdout batches over ``indices``, this process's share only."""
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = indices[rank::world]
        size = self.args.per_device_eval_batch_size
        for start in range(0, len(mine), size):
            rows = [self.holdout_dataset[int(i)] for i in mine[start : start + size]]
            yield self._prepare_inputs(self.data_collator(rows))

    def _split_batch(self, batch: dict) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
        labels = batch["labels"] if "labels" in batch else batch["label"]
        model_inputs = {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}
        return (
            model_inputs,
            labels,
            cached_logits_from_batch(
                batch, self.objective.num_classes, topk_fill=self.args.teacher_topk_fill
            ),
        )

    def _holdout_teacher_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        all_logits, all_labels = [], []
        for batch in self._holdout_batches(np.arange(len(self.holdout_dataset))):
            model_inputs, labels, cached = self._split_batch(batch)
            all_logits.append(self._teacher_logits(model_inputs, cached))
            all_labels.append(labels)
        if not all_logits:
            return torch.zeros(0, self.objective.num_classes), torch.zeros(0, dtype=torch.long)
        return torch.cat(all_logits), torch.cat(all_labels)

    def _sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return tensor
        reduced = self.accelerator.reduce(tensor.to(self.args.device, torch.float64), reduction="sum")
        return reduced.cpu()

    # ------------------------------------------------------------------------------------------ class-DRO
    def _maybe_update_class_weights(self, model: nn.Module) -> None:
        step = self.state.global_step
        every = self.args.dro_update_every
        if step == 0 or step % every or step == self._last_dro_step:
            return
        self._last_dro_step = step
        update_index = step // every
        n = len(self.holdout_dataset)
        # Drawn from (seed, update index) alone, so a resumed run draws the same holdout batches.
        rng = np.random.default_rng([self.args.seed, update_index])
        indices = np.sort(rng.choice(n, size=min(self.args.dro_holdout_batch_size, n), replace=False))
        student = self.accelerator.unwrap_model(model)
        was_training = student.training
        student.eval()
        error_sums = torch.zeros(self.objective.num_classes, dtype=torch.float64)
        weight_sums = torch.zeros_like(error_sums)
        with torch.no_grad():
            for batch in self._holdout_batches(indices):
                model_inputs, labels, cached = self._split_batch(batch)
                predictions = student(**model_inputs).logits.argmax(-1)
                weights = None
                if self.args.dro_error_weighting == "teacher":
                    weights = self.objective.teacher_probs(
                        self._teacher_logits(model_inputs, cached), temperature=1.0
                    )
                from .losses import per_class_errors

                errors, totals = per_class_errors(predictions, labels, self.objective.num_classes, weights)
                error_sums += errors.cpu()
                weight_sums += totals.cpu()
        student.train(was_training)
        self.objective.update(self._sum_over_processes(error_sums), self._sum_over_processes(weight_sums))

    # ------------------------------------------------------------------------------------------ the loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._prepare_objective()
        if model.training and self.objective.needs_holdout_updates:
            self._maybe_update_class_weights(model)
        model_inputs, labels, cached = self._split_batch(inputs)
        outputs = model(**model_inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        teacher_logits = self._teacher_logits(model_inputs, cached) if self.objective.uses_teacher else None
        result = self.objective.compute(logits, labels, teacher_logits)
        if num_items_in_batch is not None:
            loss = result.per_example.sum() / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                # the count is global; DDP averages gradients over processes, so undo that average
                loss = loss * self.accelerator.num_processes
        else:
            steps = getattr(self, "current_gradient_accumulation_steps", 1) if model.training else 1
            loss = result.per_example.mean() / steps
        self._record(result, "train" if model.training else "eval")
        return (loss, outputs) if return_outputs else loss

    def _record(self, result, mode: str) -> None:
        store = self._metrics[mode]
        for name, values in result.components.items():
            store[f"loss_{name}"].append(float(values.detach().mean()))
        for name, value in result.scalars.items():
            store[name].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if "loss" in logs else "eval"
        averaged = {k: sum(v) / len(v) for k, v in sorted(self._metrics[mode].items()) if v}
        if averaged and self.accelerator.num_processes > 1:
            # every process logs (the Trainer calls log on all of them) and holds the same keys: average the
            # components over processes, as the Trainer does for 'loss'
            values = torch.tensor(list(averaged.values()), dtype=torch.float64, device=self.args.device)
            averaged = dict(zip(averaged, self.accelerator.reduce(values, reduction="mean").tolist()))
        if mode == "eval":
            averaged = {f"eval_{k}": v for k, v in averaged.items()}
        if hasattr(self.objective, "weight_stats"):  # class weights are state: log their current value
            prefix = "eval_" if mode == "eval" else ""
            for name, value in self.objective.weight_stats().items():
                if prefix + name in averaged:
                    averaged[prefix + name] = value
        logs.update(averaged)
        self._metrics[mode].clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial):
        # The objective state goes in FIRST: the Trainer writes trainer_state.json last and only then rotates
        # old checkpoints, so a folder with trainer_state.json is complete (see `checkpoint_problem`).
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            write_objective_state(folder, self.objective, self._last_dro_step)
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._reload_weights_with_key_conversion(
            resume_from_checkpoint, model if model is not None else self.model
        )
        last_dro_step = read_objective_state(resume_from_checkpoint, self.objective)
        if last_dro_step is not None:
            self._last_dro_step = last_dro_step

    def _reload_weights_with_key_conversion(self, checkpoint: str, model: nn.Module) -> None:
        """Reload the checkpoint's weights through `from_pretrained`.

        transformers 5.x saves some models (ViT among them) under their legacy parameter names, and the stock
        resume path loads that state dict without converting the names back: the encoder silently keeps its
        fresh weights (measured on 5.23: 'missing keys ... unexpected keys' and a resumed run that differs).
        `from_pretrained` applies the conversion, so its state dict is the one that was saved.
        """
        from transformers import PreTrainedModel

        unwrapped = self.accelerator.unwrap_model(model)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or not isinstance(unwrapped, PreTrainedModel):
            return
        if not any(name.endswith(".safetensors") for name in os.listdir(checkpoint)):
            return
        reloaded = type(unwrapped).from_pretrained(checkpoint, config=unwrapped.config)
        unwrapped.load_state_dict(reloaded.state_dict())

    # ------------------------------------------------------------------------------------------ after training
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """`Trainer.train`, resuming only from a complete checkpoint (`resolve_checkpoint`)."""
        required = (OBJECTIVE_STATE_NAME,) if self.objective.state_dict() else ()
        resume = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir, required)
        output = super().train(resume, *args, **kwargs)
        self.apply_posthoc_adjustment()
        return output

    def apply_posthoc_adjustment(self) -> None:
        """For the 'balanced' teacher with balanced_form='posthoc': shift the classifier bias by -tau log pi."""
        if self.args.objective == "balanced" and self.args.balanced_form == "posthoc":
            shift = -self.args.logit_adjustment_tau * self.objective.log_prior
            teacher_lib.shift_classifier_bias(self.accelerator.unwrap_model(self.model), shift)
