"""Model building: the one builder of fresh ViTs (recipes, benchmarks and tests use it), fresh classifiers of
any architecture from a config, pretrained classifiers re-headed to a dataset's classes, and a run's
student and teacher."""

from __future__ import annotations

import torch
from transformers import AutoModelForImageClassification, PretrainedConfig, PreTrainedModel, ViTConfig

from .arguments import ModelArguments


def label_space(class_names: list[str]) -> dict:
    """The config fields that name a classifier's classes (``num_labels``, ``id2label``, ``label2id``)."""
    return {
        "num_labels": len(class_names),
        "id2label": dict(enumerate(class_names)),
        "label2id": {name: i for i, name in enumerate(class_names)},
    }


def vit_config(
    class_names: list[str],
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    image_size: int,
    patch_size: int,
    num_channels: int = 3,
    intermediate_size: int | None = None,
    **config_fields,
) -> ViTConfig:
    """A ViT classifier's config with the dataset's label names (MLP width 4 x hidden unless given); any
    other `ViTConfig` field can be passed through ``config_fields``."""
    fields = {"num_channels": num_channels, "intermediate_size": intermediate_size or 4 * hidden_size}
    fields.update(num_hidden_layers=num_layers, num_attention_heads=num_heads, **config_fields)
    return ViTConfig(
        hidden_size=hidden_size,
        image_size=image_size,
        patch_size=patch_size,
        **label_space(class_names),
        **fields,
    )


def fresh_model(config: PretrainedConfig, seed: int) -> PreTrainedModel:
    """A randomly initialised image classifier of the config's architecture; ``seed`` fixes its weights."""
    torch.manual_seed(seed)
    return AutoModelForImageClassification.from_config(config)


def build_vit(class_names: list[str], *, seed: int, **sizes) -> PreTrainedModel:
    """A fresh ViT classifier with the dataset's label names (``sizes``: the arguments of `vit_config`)."""
    return fresh_model(vit_config(class_names, **sizes), seed)


def load_classifier(name_or_path: str, class_names: list[str] | None = None, trust_remote_code: bool = False):
    """A pretrained image classifier; with ``class_names`` its head is re-sized to the dataset's classes."""
    kwargs = {} if class_names is None else {**label_space(class_names), "ignore_mismatched_sizes": True}
    return AutoModelForImageClassification.from_pretrained(
        name_or_path, trust_remote_code=trust_remote_code, **kwargs
    )


def fresh_config(model_args: ModelArguments, class_names: list[str], role: str) -> PretrainedConfig:
    """The config of a fresh student or teacher (``role``) from the run's arguments: a ViT of that role's
    sizes."""
    return vit_config(
        class_names,
        hidden_size=getattr(model_args, f"{role}_hidden_size"),
        num_layers=getattr(model_args, f"{role}_num_layers"),
        num_heads=getattr(model_args, f"{role}_num_heads"),
        image_size=model_args.image_size,
        patch_size=model_args.patch_size,
    )


def student_model(model_args: ModelArguments, class_names: list[str], seed: int) -> PreTrainedModel:
    """The run's student: the pretrained one re-headed to the classes, else a fresh one (seeded)."""
    if model_args.student_model_name_or_path:
        torch.manual_seed(seed)  # the re-sized head's initialisation
        return load_classifier(
            model_args.student_model_name_or_path, class_names, model_args.trust_remote_code
        )
    return fresh_model(fresh_config(model_args, class_names, "student"), seed)


def teacher_model(model_args: ModelArguments, class_names: list[str], seed: int) -> PreTrainedModel:
    """A fresh teacher to train here (seeded apart from the student)."""
    return fresh_model(fresh_config(model_args, class_names, "teacher"), seed + 1)
