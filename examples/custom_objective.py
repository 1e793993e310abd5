"""A new objective with its own holdout statistic and its own setting, in one module: register it, then
train with DistillationArguments(objective="kd_student_recall", objective_settings={"every": 5}, ...) and a
`holdout_dataset`; in a recipe: --objective kd_student_recall --objective_settings every=5.

The student leans on the teacher where it is still weak: alpha_y = alpha * (1 - r_y), with r_y the STUDENT's
recall of class y on the holdout, measured before training and every `every` steps through the hooks' context.
"""

from dataclasses import dataclass, field

import torch

from hf_fairkd.objectives import KD, register_objective


@dataclass
class StudentRecallSettings:
    every: int = field(default=3, metadata={"help": "optimisation steps between two measurements (>= 1)"})

    def __post_init__(self):  # runs when the arguments are built, before any training
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}.")


@register_objective("kd_student_recall")
class StudentRecallKD(KD):
    settings_class = StudentRecallSettings  # read as self.settings.every

    def __init__(self, args, class_counts):
        super().__init__(args, class_counts)
        self.recall = torch.zeros(self.num_classes)  # saved in checkpoints through state_dict
        self.measured_at: list[int] = []

    @property
    def needs_holdout(self) -> bool:
        return True  # the trainer refuses to start without a holdout split

    def measure(self, ctx) -> None:
        correct = torch.zeros(self.num_classes, dtype=torch.float64)
        counts = torch.zeros_like(correct)
        for batch in ctx.holdout_batches():  # this process's share; gather joins them
            labels = ctx.gather(ctx.labels(batch)).cpu()
            predicted = ctx.gather(ctx.student_logits(batch).argmax(-1)).cpu()
            correct.index_add_(0, labels, (predicted == labels).double())
            counts += torch.bincount(labels, minlength=self.num_classes).double()
        self.recall = (correct / counts.clamp_min(1)).float()
        self.measured_at.append(ctx.global_step)

    def on_train_begin(self, ctx) -> None:
        if ctx.global_step == 0:  # a resumed run keeps the recall of its checkpoint
            self.measure(ctx)

    def on_step_end(self, ctx) -> None:
        if ctx.global_step % self.settings.every == 0 and ctx.global_step < ctx.max_steps:
            self.measure(ctx)

    def alpha_for(self, labels, teacher_logits):
        return self.args.alpha * (1 - self.recall.to(labels.device)[labels])

    def log_values(self) -> dict[str, float]:
        return {"student_recall_min": float(self.recall.min())}

    def state_dict(self):
        return {**super().state_dict(), "student_recall": self.recall}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.recall = state.get("student_recall", self.recall).float()
