"""The frozen teacher: loading, label alignment with the student, and per-class reliability."""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from . import losses

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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

    from .results.hub import model_location_problem

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
        where = "" if os.path.isdir(os.path.expanduser(name_or_path)) else " (no local folder; read as a Hub id)"
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
    """Similarity targets from the teacher's classifier weights (Tang et al.'s KD-sim); the weights of a sharded
    teacher are gathered first (`full_tensor`: every process must call this)."""
    return losses.class_similarity_targets(full_tensor(find_classifier(model).weight).detach(), rho)


# ------------------------------------------------------------------------------------------ sharded teachers
def _is_dtensor(tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch build without distributed
        return False
    return isinstance(tensor, DTensor)


def _is_zero3(tensor) -> bool:
    return hasattr(tensor, "ds_id")  # DeepSpeed ZeRO-3 partitioned parameter (ds_tensor is this rank's part)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` holds parameters sharded over processes (FSDP2 DTensors, DeepSpeed ZeRO-3 partitions,
    or an FSDP1 wrapper): its forward is then a collective every process must make."""
    if type(model).__name__ == "FullyShardedDataParallel":
        return True
    return any(_is_dtensor(p) or _is_zero3(p) for p in model.parameters())


def parameter_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of the teacher's parameters held by this process, bytes of all its parameters).

    An FSDP2 parameter holds its local shard (``to_local()``) of the full tensor; a DeepSpeed ZeRO-3 one its
    partition (``ds_tensor``) of ``ds_numel`` elements; any other parameter is held whole. (An FSDP1 wrapper's
    parameters are its local flat shards: their full size is not known here, so measure it before wrapping.)"""
    local = full = 0
    for param in model.parameters():
        size = param.element_size()
        if _is_dtensor(param):
            local += param.to_local().numel() * size
            full += param.numel() * size
        elif _is_zero3(param):
            local += param.ds_tensor.numel() * size
            full += param.ds_numel * size
        else:
            local += param.numel() * size
            full += param.numel() * size
    return local, full


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of a parameter or buffer, gathered when it is sharded (a collective: every process must call
    it, in the same order); a plain tensor is returned as it is."""
    if _is_dtensor(tensor):
        return tensor.full_tensor()
    if _is_zero3(tensor):
        import deepspeed

        with deepspeed.zero.GatheredParameters([tensor]):
            return tensor.data.clone()
    return tensor


class _Gathered:
    """What `teacher_fingerprint` reads of a sharded teacher (FSDP2 or ZeRO-3): its config, and its parameters
    and buffers under their own names, each gathered whole in turn (a collective per tensor)."""

    def __init__(self, teacher):
        self.teacher = (
            getattr(teacher, "module", teacher) if type(teacher).__name__ == "DeepSpeedEngine" else teacher
        )
        self.config = getattr(self.teacher, "config", None)

    def named_parameters(self, remove_duplicate: bool = True):
        for name, tensor in self.teacher.named_parameters(remove_duplicate=remove_duplicate):
            yield name, full_tensor(tensor)

    def named_buffers(self, remove_duplicate: bool = True):
        for name, tensor in self.teacher.named_buffers(remove_duplicate=remove_duplicate):
            yield name, full_tensor(tensor)


def gathered_view(model: nn.Module) -> _Gathered:
    """A stand-in for ``model`` (sharded with FSDP2 or ZeRO-3, or a DeepSpeed engine) that reads like the whole
    model: ``config``, ``named_parameters`` / ``named_buffers`` under the model's own names, each tensor
    gathered whole in turn, so that at most one whole tensor is held at a time (what
    `hf_fairkd.teacher_record.teacher_fingerprint` reads)."""
    return _Gathered(model)
