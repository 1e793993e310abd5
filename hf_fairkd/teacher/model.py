"""The frozen teacher: loading, label alignment with the student, its classifier (class similarity, bias shift),
and the batch columns that carry its own inputs."""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from .. import losses
from .sharding import full_tensor, is_sharded, whole_model

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The teacher's own inputs, when its preprocessing differs from the student's (another image processor): batch
# column -> the teacher's forward argument. The student never sees them; the teacher reads them instead of the
# student's (`TeacherSource.teacher_inputs`, the cache builder).
TEACHER_INPUT_COLUMNS = {"teacher_pixel_values": "pixel_values"}


def load_teacher(
    teacher: nn.Module | str,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> nn.Module:
    """A model instance, or a local path / Hub id loaded with `AutoModelForImageClassification` (or, for other
    modalities, `AutoModelForSequenceClassification` / `AutoModel...` chosen from the config). Remote code is
    never executed unless ``trust_remote_code`` is True. Returned frozen, in eval mode, in ``dtype``. A
    teacher already sharded (e.g. trained here under FSDP) is kept as it is: it must already be in ``dtype``."""
    if isinstance(teacher, str):
        teacher = _from_pretrained(teacher, trust_remote_code=trust_remote_code, revision=revision)
    if not is_sharded(teacher):
        teacher = teacher.to(DTYPES[dtype])
    elif any(p.dtype != DTYPES[dtype] for p in teacher.parameters()):
        raise ValueError(
            f"The teacher passed is sharded over processes and not in teacher_dtype={dtype!r}: pass it unsharded "
            "(e.g. loaded from its saved folder), or cast it before sharding."
        )
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def _from_pretrained(name_or_path: str, *, trust_remote_code: bool, revision: str | None) -> nn.Module:
    from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSequenceClassification

    from ..results.hub import model_location_problem

    fix = (
        "Pass the folder a teacher was saved in with save_pretrained (e.g. outputs/distill_vit/teacher) or a Hub "
        "model id you can access."
    )
    problem = model_location_problem(name_or_path)
    if problem:
        raise ValueError(f"Could not load the teacher: {problem}. {fix}")
    try:
        config = AutoConfig.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, revision=revision
        )
    except (OSError, ValueError) as err:
        where = (
            "" if os.path.isdir(os.path.expanduser(name_or_path)) else " (no local folder; read as a Hub id)"
        )
        raise ValueError(f"Could not load the teacher {name_or_path!r}{where}: {err}. {fix}") from None
    for auto in (AutoModelForImageClassification, AutoModelForSequenceClassification):
        if type(config) in auto._model_mapping:
            return auto.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    raise ValueError(
        f"The teacher {name_or_path!r} ({config.model_type}) is not an image or sequence classification model; "
        "load it yourself and pass the instance as `teacher`."
    )


def label_permutation(student_id2label: dict, teacher_id2label: dict) -> torch.Tensor | None:
    """Index that reorders the teacher's logits into the student's label order.

    None when both already agree. Raises when the label sets differ, naming the classes on each side.
    """
    student = [str(student_id2label[i]) for i in sorted(student_id2label, key=int)]
    teacher = [str(teacher_id2label[i]) for i in sorted(teacher_id2label, key=int)]
    if student == teacher:
        return None
    if sorted(student) != sorted(teacher) or len(set(student)) != len(student):
        only_student = sorted(set(student) - set(teacher))
        only_teacher = sorted(set(teacher) - set(student))
        raise ValueError(
            "The teacher and the student do not share a label space: classes only in the student: "
            f"{only_student[:20]}, only in the teacher: {only_teacher[:20]} ({len(student)} vs {len(teacher)} "
            "classes). Use a teacher trained on the same classes, or set matching `id2label` in the configs."
        )
    position = {name: i for i, name in enumerate(teacher)}
    return torch.tensor([position[name] for name in student])


def find_classifier(model: nn.Module) -> nn.Linear:
    """The last linear layer producing the class logits (``classifier`` in most HF classification heads)."""
    num_labels = model.config.num_labels
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear) and head.out_features == num_labels:
        return head
    candidates = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    if not candidates:
        raise ValueError(f"Could not find the classification layer of {type(model).__name__}.")
    return candidates[-1]


@torch.no_grad()
def shift_classifier_bias(model: nn.Module, shift: torch.Tensor) -> None:
    """Add ``shift`` to the classifier bias, e.g. -tau log pi for post-hoc logit adjustment, so the saved model
    predicts with the adjustment built in and loads with a plain `from_pretrained`."""
    head = find_classifier(model)
    if head.bias is None:
        raise ValueError(f"{type(model).__name__}'s classifier has no bias; post-hoc adjustment needs one.")
    head.bias.add_(shift.to(head.bias))


def class_similarity(model: nn.Module, rho: float) -> torch.Tensor:
    """Similarity targets from the teacher's classifier weights (Tang et al.'s KD-sim), in the teacher's label
    order. The weights of a sharded teacher are gathered first (every process must call this)."""
    with whole_model(model) as whole:
        weight = full_tensor(find_classifier(whole).weight).detach()
        return losses.class_similarity_targets(weight, rho)
