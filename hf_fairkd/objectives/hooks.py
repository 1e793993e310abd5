"""How the trainer runs an objective's hooks: `ObjectiveCallback`, a `TrainerCallback`, and the `ObjectiveContext`
it hands to `Objective.on_train_begin` / `on_step_end` / `on_train_end`.

The context gives an objective what it may measure with and nothing else of the trainer: the arguments, the step,
the holdout split as batches of the Trainer's own evaluation data loader, the student as the Trainer wrapped it
(DDP, FSDP, DeepSpeed), the teacher's logits, and the collectives of the process group.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import TrainerCallback

from ..groups import GROUP_ID_COLUMN


class ObjectiveContext:
    """What an objective's hooks can use. Hooks run on every process, and every process must make the same calls:
    the holdout loader gives each process the same number of batches (the last one padded with repeated rows,
    which `gather` drops), and `gather`, `sum_over_processes` and a sharded student's forward are collectives."""

    def __init__(self, trainer):
        self._trainer = trainer

    @property
    def args(self):
        """The `DistillationArguments` of the run."""
        return self._trainer.args

    @property
    def global_step(self) -> int:
        """Optimisation steps done so far."""
        return self._trainer.state.global_step

    @property
    def max_steps(self) -> int:
        """Optimisation steps of the whole run (0 before training)."""
        return self._trainer.state.max_steps

    @property
    def holdout(self):
        """The holdout dataset given to the trainer (None if none)."""
        return self._trainer.holdout_dataset

    @property
    def teacher(self):
        """The run's `hf_fairkd.teacher.TeacherSource` (its model is None with a cached teacher)."""
        return self._trainer.teacher_source

    def holdout_batches(self, indices=None) -> Iterator[dict]:
        """Batches of the holdout rows ``indices`` (all rows if None), this process's share, on its device.

        Built with the Trainer's `get_test_dataloader`, i.e. `get_eval_dataloader` without its cache (which
        with persistent workers would hand back the eval set's loader): the Trainer's collator, column
        filtering, batch size and accelerate sharding apply. Creating the loader draws a seed from the global
        RNG: the draw is undone, so that measuring on the holdout does not change the training run's randomness.
        """
        holdout = self.holdout
        if holdout is None:
            raise ValueError(
                f"objective={self.args.objective!r} reads the holdout split: pass `holdout_dataset=`."
            )
        if indices is not None:
            indices = [int(i) for i in indices]
            select = getattr(holdout, "select", None)
            holdout = select(indices) if select else torch.utils.data.Subset(holdout, indices)
        with torch.random.fork_rng(devices=[]):
            yield from self._trainer.get_test_dataloader(holdout)

    def labels(self, batch: dict) -> torch.Tensor:
        """The labels of a batch."""
        return self.teacher.split_batch(batch)[1]

    def group_ids(self, batch: dict) -> torch.Tensor:
        """The group codes of a holdout batch (the ``group_ids`` column the trainer adds for an objective that
        uses groups)."""
        if GROUP_ID_COLUMN not in batch:
            raise ValueError(
                f"This holdout batch has no {GROUP_ID_COLUMN!r} column (it has {sorted(batch)}). The trainer adds "
                "it to the holdout split when the objective uses groups and group_columns are given; a custom "
                f"set_transform or collator must pass the {GROUP_ID_COLUMN!r} column through."
            )
        return batch[GROUP_ID_COLUMN]

    def student_logits(self, batch: dict) -> torch.Tensor:
        """The student's logits for ``batch``, through the wrapped model, in eval mode and without gradients
        (train mode is restored after). The raw logits: no offset of the objective is added."""
        model = self._trainer.model_wrapped
        inputs = self.teacher.split_batch(batch)[0]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                outputs = model(**inputs)
        finally:
            model.train(was_training)
        return (outputs["logits"] if isinstance(outputs, dict) else outputs[0]).float()

    def teacher_logits(self, batch: dict) -> torch.Tensor:
        """The teacher's logits for ``batch``: its cached column, else the online teacher (student label order)."""
        cached = self.teacher.split_batch(batch)[2]
        return self.teacher.logits(self.teacher.teacher_inputs(batch), cached, step=self.global_step)

    def student_model(self) -> torch.nn.Module:
        """The student itself, unwrapped (e.g. to edit its weights after training)."""
        return self._trainer.accelerator.unwrap_model(self._trainer.model)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` [batch, ...] of a holdout batch from every process, concatenated, without the rows that
        pad the last batch (`Accelerator.gather_for_metrics`); call it inside the `holdout_batches` loop."""
        return self._trainer.accelerator.gather_for_metrics(tensor)

    def sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over processes, in float64 on the CPU."""
        accelerator = self._trainer.accelerator
        if accelerator.num_processes == 1:
            return tensor.double().cpu()
        return accelerator.reduce(tensor.to(self.args.device, torch.float64), reduction="sum").cpu()


class ObjectiveCallback(TrainerCallback):
    """Runs the trainer's objective hooks at the Trainer's events, with one `ObjectiveContext`."""

    def __init__(self, trainer):
        self.context = ObjectiveContext(trainer)
        self._trainer = trainer
        self._begun = False

    def begin(self) -> None:
        """`Objective.on_train_begin`, if it has not run yet (the trainer calls this before the first loss)."""
        if not self._begun:
            self._trainer.objective.on_train_begin(self.context)
            self._begun = True

    def on_train_begin(self, args, state, control, **kwargs):
        self._trainer.objective.on_train_begin(self.context)
        self._begun = True

    def on_step_end(self, args, state, control, **kwargs):
        self._trainer.objective.on_step_end(self.context)

    def on_train_end(self, args, state, control, **kwargs):
        self._trainer.objective.on_train_end(self.context)
