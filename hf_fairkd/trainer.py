"""`DistillationTrainer`: a `transformers.Trainer` that distils a frozen teacher into the student.

It changes what one step computes (``compute_loss``) and what a checkpoint holds (objective state). The teacher
side is `TeacherSource`; what an objective measures (teacher reliability, class similarity, class-DRO updates, a
post-hoc bias shift) it does in its own hooks, run by `ObjectiveCallback`. The training loop, evaluation loop,
saving and pushing stay the Trainer's own.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict

import torch
from torch import nn
from transformers import Trainer

from .checkpoints import OBJECTIVE_STATE_NAME, read_objective_state, resolve_checkpoint, write_objective_state
from .config import DistillationArguments
from .groups import GROUP_ID_COLUMN
from .objectives import ObjectiveCallback, get_objective
from .results.publishing import PublishingMixin
from .teacher import CACHE_COLUMNS, TEACHER_INPUT_COLUMNS, CacheCollator, TeacherSource
from .teacher.cache_format import stored_views_of
from .trainer_data import class_counts_from_dataset
from .trainer_groups import default_metrics, group_arguments, group_train_counts, metrics_for, prepare_groups

logger = logging.getLogger(__name__)

__all__ = ["OBJECTIVE_STATE_NAME", "DistillationTrainer", "class_counts_from_dataset", "resolve_checkpoint"]


class DistillationTrainer(PublishingMixin, Trainer):
    """Distil ``teacher`` into ``model`` with the objective named in ``args.objective``.

    Args:
        model: the student, any `AutoModelFor...Classification` model.
        args: `DistillationArguments`.
        teacher: a model instance, a local path or a Hub id; None for teacher-free objectives
            (`hf_fairkd.objectives.teacher_free_objectives()`) or when every batch carries a cached
            ``teacher_logits`` column.
        holdout_dataset: examples held out from training, read by the objective's hooks (e.g. the teacher's
            per-class reliability of ada_alpha / ada_margin at class level, the class-DRO updates of robust_kd, dro).
        class_counts: training count of each class; read from the dataset when omitted.
        teacher_trust_remote_code: allow remote code when loading the teacher by name (off by default).
        group_columns: columns whose values are groups of the data (default ``args.group_columns``): read from
            the train, holdout and eval datasets, reported by the default metrics, and, for an objective that
            uses groups (`Objective.uses_groups`), coded into a ``group_ids`` column (`hf_fairkd.trainer_groups`).
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
        callbacks=None,
        group_columns: list[str] | None = None,
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
        if self.objective.needs_holdout and holdout_dataset is None:
            raise ValueError(
                f"objective={args.objective!r} with these settings needs a holdout split (its hooks read it, e.g. "
                "for teacher reliability or class-DRO updates): pass `holdout_dataset=`, e.g. the 'holdout' split "
                "of hf_fairkd.data.load_long_tailed."
            )
        # groups of the data: read (a missing column refused) before any model is loaded
        self.groups, train_dataset, holdout_dataset, eval_dataset = prepare_groups(
            self.objective,
            args.group_columns if group_columns is None else group_columns,
            args.max_group_values,
            train_dataset,
            holdout_dataset,
            eval_dataset,
        )
        self.teacher_source = TeacherSource(
            teacher,
            student_config=model.config,
            args=args,
            uses_teacher=self.objective.uses_teacher,
            train_dataset=train_dataset,
            holdout_dataset=holdout_dataset,
            trust_remote_code=teacher_trust_remote_code,
        )
        self.group_train_counts = group_train_counts(model.config, self.groups, train_dataset)
        self.make_metrics = None  # the default metrics, built for the groups of each evaluated dataset
        if compute_metrics is None:
            self.make_metrics = default_metrics(
                model.config, args, class_counts, self.groups, self.group_train_counts
            )
            compute_metrics = self.make_metrics(self.groups.values_of(eval_dataset) if self.groups else None)
        self.holdout_dataset = holdout_dataset
        # first among the callbacks, so the others see the objective's state of this step
        self.objective_hooks = ObjectiveCallback(self)
        # a split reading a view cache (hf_fairkd.run.cached_views) needs the epoch: its callback sets it
        views = stored_views_of(train_dataset)
        views = [] if views is None or views in (callbacks or []) else [views]
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            compute_metrics=compute_metrics,
            callbacks=[self.objective_hooks, *views, *(callbacks or [])],
            **kwargs,
        )
        # Make the Trainer count the items of each accumulated batch (it only does so for models that take loss
        # keywords); compute_loss normalises by that count, whatever the model's own loss does.
        self.model_accepts_loss_kwargs = True
        # rows of a binary dense cache carry bytes, which the default collator cannot stack
        self.data_collator = CacheCollator(self.data_collator)
        self.teacher_source.prepare(self.accelerator)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        # where the teacher signal of each batch came from ("train_cached", "train_online", "eval_..."), counted
        # on this process: a record can show that a student of a cache never ran the teacher while training
        self.teacher_batches = Counter()

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher model (None with a cached teacher or a teacher-free objective)."""
        return self.teacher_source.model

    def _set_signature_columns_if_needed(self):
        # Why: the Trainer drops every column the model's forward does not take, the teacher cache among them,
        # and the teacher's own inputs among them, and has no public hook to keep extra columns.
        super()._set_signature_columns_if_needed()
        extra = (*CACHE_COLUMNS, *TEACHER_INPUT_COLUMNS, GROUP_ID_COLUMN)
        self._signature_columns += [c for c in extra if c not in self._signature_columns]

    # ------------------------------------------------------------------------------------------ the loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The objective's loss (public Trainer hook), normalised by the items of the accumulated batch."""
        self.objective_hooks.begin()  # the objective's statistics, if an evaluation comes before training
        model_inputs, labels, cached = self.teacher_source.split_batch(inputs)
        outputs = model(**model_inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        teacher_logits = None
        if self.objective.uses_teacher:
            teacher_inputs = self.teacher_source.teacher_inputs(inputs)
            teacher_logits = self.teacher_source.logits(teacher_inputs, cached, step=self.state.global_step)
            phase = "train" if model.training else "eval"
            self.teacher_batches[f"{phase}_{'online' if cached is None else 'cached'}"] += 1
        # group_ids= only for an objective that reads them: compute(logits, labels, teacher_logits) stays valid
        groups = group_arguments(self.objective, inputs, model.training)
        result = self.objective.compute(logits, labels, teacher_logits, **groups)
        if num_items_in_batch is not None:
            loss = result.per_example.sum() / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                # the count is global; DDP averages gradients over processes, so undo that average
                loss = loss * self.accelerator.num_processes
        else:
            steps = getattr(self, "current_gradient_accumulation_steps", 1) if model.training else 1
            loss = result.per_example.mean() / steps
        store = self._metrics["train" if model.training else "eval"]
        for name, values in result.components.items():
            store[f"loss_{name}"].append(float(values.detach().mean()))
        for name, value in result.scalars.items():
            store[name].append(value)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add (public Trainer hook) the loss components averaged since the last log and the objective's
        current state values (`Objective.log_values`)."""
        mode = "train" if "loss" in logs else "eval"
        averaged = {k: sum(v) / len(v) for k, v in sorted(self._metrics[mode].items()) if v}
        if averaged and self.accelerator.num_processes > 1:
            # every process logs (the Trainer calls log on all of them) and holds the same keys: average the
            # components over processes, as the Trainer does for 'loss'
            values = torch.tensor(list(averaged.values()), dtype=torch.float64, device=self.args.device)
            averaged = dict(zip(averaged, self.accelerator.reduce(values, reduction="mean").tolist()))
        if averaged:  # a loss was computed since the last log: the state values belong with it
            averaged.update(self.objective.log_values())
        prefix = "eval_" if mode == "eval" else ""
        logs.update({prefix + k: v for k, v in averaged.items()})
        self._metrics[mode].clear()
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, *args, **kwargs):
        """`Trainer.evaluate`; the default metrics report the groups of the dataset evaluated (and an objective that
        weights groups gets their codes, so the eval loss is its own)."""
        if self.groups is not None and self.objective.uses_groups and eval_dataset is not None:
            eval_dataset = self.groups.coded(eval_dataset)
        with metrics_for(self, eval_dataset):
            return super().evaluate(eval_dataset, *args, **kwargs)

    def predict(self, test_dataset, *args, **kwargs):
        """`Trainer.predict`; the default metrics report the groups of the dataset predicted (see `evaluate`)."""
        if self.groups is not None and self.objective.uses_groups:
            test_dataset = self.groups.coded(test_dataset)
        with metrics_for(self, test_dataset):
            return super().predict(test_dataset, *args, **kwargs)

    # ------------------------------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial):
        # Why (no public hook writes into the checkpoint folder before the Trainer's own files; `on_save` runs
        # after trainer_state.json): the objective state goes in FIRST, because the Trainer writes
        # trainer_state.json last and only then rotates old checkpoints, so a folder with trainer_state.json is
        # complete (see `checkpoints.checkpoint_problem`).
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            write_objective_state(folder, self.objective)
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Why (still needed on transformers 5.24, measured: removing it fails tests/test_trainer.py
        # ::test_resume_continues_exactly with 'missing keys vit.layers.0... unexpected keys vit.encoder.layer.0...'):
        # 5.x saves ViT under its legacy parameter names and the stock resume path loads that state dict without
        # converting them, so the encoder silently keeps its fresh weights. `from_pretrained` converts the names;
        # this is the one place the Trainer loads resumed weights (a reload in `train()` would be undone by
        # `model_init`).
        from transformers import PreTrainedModel

        super()._load_from_checkpoint(resume_from_checkpoint, model)
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or not isinstance(unwrapped, PreTrainedModel):
            return
        if any(name.endswith(".safetensors") for name in os.listdir(resume_from_checkpoint)):
            reloaded = type(unwrapped).from_pretrained(resume_from_checkpoint, config=unwrapped.config)
            unwrapped.load_state_dict(reloaded.state_dict())

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """`Trainer.train`, resuming only from a complete checkpoint (`resolve_checkpoint`), objective state
        included (restored before the objective's `on_train_begin`, which then keeps it)."""
        required = (OBJECTIVE_STATE_NAME,) if self.objective.state_dict() else ()
        resume = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir, required)
        if resume is not None:
            read_objective_state(resume, self.objective)
        return super().train(resume, *args, **kwargs)
