"""Model building: the one builder of fresh ViTs (recipes, benchmarks and tests use it), fresh classifiers of
any architecture from a config, pretrained classifiers re-headed to a dataset's classes, and a run's
student and teacher."""

from __future__ import annotations

import json
import logging
import os

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    PretrainedConfig,
    PreTrainedModel,
    ResNetConfig,
    ViTConfig,
)

from ..results.hub import model_location_problem
from ..results.schema import public_name
from .arguments import ModelArguments

logger = logging.getLogger(__name__)


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


def is_image_classifier_config(config: PretrainedConfig) -> bool:
    """Whether `AutoModelForImageClassification` builds a model of this config."""
    return type(config) in AutoModelForImageClassification._model_mapping


def classifier_config(name_or_path: str, trust_remote_code: bool, *, unreadable, not_a_classifier):
    """The config at ``name_or_path`` if `AutoModelForImageClassification` builds it; else a ValueError whose
    text ``unreadable(err)`` / ``not_a_classifier(model_type)`` gives (each caller names its own flag and fix)."""
    # a config JSON file is a valid location here (a fresh model's config), not only a saved model's folder
    problem = (
        None if os.path.isfile(os.path.expanduser(name_or_path)) else model_location_problem(name_or_path)
    )
    if problem:
        raise ValueError(unreadable(problem))
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ValueError(unreadable(err)) from None
    if not is_image_classifier_config(config):
        raise ValueError(not_a_classifier(config.model_type))
    return config


def image_classifier_types() -> list[str]:
    """The ``model_type`` of every config `AutoModelForImageClassification` can build."""
    return sorted({config.model_type for config in AutoModelForImageClassification._model_mapping})


def _config_overrides(overrides, flag: str) -> dict:
    if not overrides:
        return {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{flag} {overrides!r} is not JSON ({err.msg}); pass an object, e.g. '{{\"hidden_sizes\": [16, 32]}}'."
            ) from None
    if not isinstance(overrides, dict):
        raise ValueError(f"{flag} must be a JSON object of config fields, got {overrides!r}.")
    return overrides


def config_from_name(
    name: str,
    class_names: list[str],
    overrides=None,
    *,
    image_size: int | None = None,
    num_channels: int = 3,
    trust_remote_code: bool = False,
    flag: str = "--student_config_name",
) -> PretrainedConfig:
    """The config of a fresh image classifier from a config JSON file, a folder with config.json or a Hub id,
    with JSON ``overrides`` and the dataset's label space, as the transformers examples' ``--config_name`` /
    ``--config_overrides``. A config `AutoModelForImageClassification` cannot build is refused; its
    ``num_channels`` and ``image_size`` follow the run's image processor (``num_channels`` RGB images of
    ``image_size``), with a log line when they change."""
    overrides = _config_overrides(overrides, flag.replace("_name", "_overrides"))
    config = classifier_config(
        name,
        trust_remote_code,
        unreadable=lambda err: (
            f"{flag} {name!r} could not be read as a model config: {err}. Pass a config JSON file with a "
            "'model_type', a folder holding config.json, or a Hub model id."
        ),
        not_a_classifier=lambda model_type: (
            f"{flag} {name!r} is a {model_type!r} config, which AutoModelForImageClassification cannot build. "
            f"Use the config of an image classifier (model_type one of: {', '.join(image_classifier_types())})."
        ),
    )
    defaults = type(config)()
    unknown = [key for key in overrides if not hasattr(defaults, key)]
    if unknown:
        raise ValueError(
            f"{flag.replace('_name', '_overrides')}: {unknown} are not fields of a {config.model_type!r} config "
            f"(fields: {', '.join(sorted(defaults.to_dict()))})."
        )
    fields, _ = type(config).get_config_dict(name, trust_remote_code=trust_remote_code)
    fields = {
        k: v for k, v in fields.items() if k not in ("architectures", "transformers_version", "_name_or_path")
    }
    if overrides:  # derived fields follow the overridden ones (e.g. a backbone's stage names follow depths)
        fields = {k: v for k, v in fields.items() if k not in ("stage_names", "out_features", "out_indices")}
    fields.update(overrides)
    for key in ("num_labels", "id2label", "label2id"):
        fields.pop(key, None)
    for key, value in (("num_channels", num_channels), ("image_size", image_size)):
        if value is not None and hasattr(defaults, key) and fields.get(key, getattr(defaults, key)) != value:
            logger.info(
                f"{flag} {name!r}: {key} {fields.get(key, getattr(defaults, key))} -> {value}, as the images "
                f"the image processor makes ({'RGB' if key == 'num_channels' else '--image_size'})."
            )
            fields[key] = value
    return type(config)(**fields, **label_space(class_names))


def fresh_config(model_args: ModelArguments, class_names: list[str], role: str) -> PretrainedConfig:
    """The config of a fresh student or teacher (``role``) from the run's arguments: the config named by
    ``--<role>_config_name`` (with ``--<role>_config_overrides``), else a ViT of that role's sizes."""
    name = getattr(model_args, f"{role}_config_name", None)
    image_size = model_args.image_size
    if role == "teacher" and getattr(model_args, "teacher_image_size", None):
        image_size = model_args.teacher_image_size  # a teacher trained here at its own resolution
    if name:
        return config_from_name(
            name,
            class_names,
            getattr(model_args, f"{role}_config_overrides", None),
            image_size=image_size,
            trust_remote_code=model_args.trust_remote_code,
            flag=f"--{role}_config_name",
        )
    if role == "teacher" and getattr(model_args, "teacher_architecture", "vit") == "resnet":
        return small_resnet_config(class_names)
    return vit_config(
        class_names,
        hidden_size=getattr(model_args, f"{role}_hidden_size"),
        num_layers=getattr(model_args, f"{role}_num_layers"),
        num_heads=getattr(model_args, f"{role}_num_heads"),
        image_size=image_size,
        patch_size=model_args.patch_size,
    )


def small_resnet_config(class_names: list[str]) -> ResNetConfig:
    """The default teacher trained here: a four-stage ResNet of basic blocks (16-128 channels, 0.2M parameters;
    the same as recipes/configs/models/resnet_cifar_small.json). It takes any image size."""
    return ResNetConfig(
        num_channels=3,
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        hidden_act="relu",
        downsample_in_first_stage=False,
        **label_space(class_names),
    )


def student_model(model_args: ModelArguments, class_names: list[str], seed: int) -> PreTrainedModel:
    """The run's student: the pretrained one re-headed to the classes, else a fresh one (seeded)."""
    check_model_arguments(model_args)
    if model_args.student_model_name_or_path:
        torch.manual_seed(seed)  # the re-sized head's initialisation
        return load_classifier(
            model_args.student_model_name_or_path, class_names, model_args.trust_remote_code
        )
    return fresh_model(fresh_config(model_args, class_names, "student"), seed)


def teacher_model(model_args: ModelArguments, class_names: list[str], seed: int) -> PreTrainedModel:
    """A fresh teacher to train here (seeded apart from the student)."""
    return fresh_model(fresh_config(model_args, class_names, "teacher"), seed + 1)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_model_arguments(model_args: ModelArguments) -> None:
    """Flags that contradict each other, refused before any work."""
    if model_args.student_model_name_or_path and model_args.student_config_name:
        raise ValueError(
            "--student_model_name_or_path and --student_config_name both name the student: pass the first for a "
            "pretrained student, the second for a fresh one."
        )
    if model_args.teacher_model_name_or_path and model_args.teacher_config_name:
        raise ValueError(
            "--teacher_model_name_or_path and --teacher_config_name both name the teacher: pass the first for a "
            "trained teacher, the second for one trained here."
        )
    teacher_size = getattr(model_args, "teacher_image_size", None)
    if teacher_size is not None and model_args.teacher_model_name_or_path:
        raise ValueError(
            "--teacher_image_size sets the resolution of a teacher trained here, but --teacher_model_name_or_path "
            "gives one: it sees its own image processor's inputs. Drop --teacher_image_size (or pass "
            "--teacher_image_processor_name for another processor)."
        )
    if teacher_size is not None and teacher_size <= 0:
        raise ValueError(f"--teacher_image_size must be a positive number of pixels, got {teacher_size}.")
    for role in ("student", "teacher"):
        if getattr(model_args, f"{role}_config_name"):
            ignored = vit_sizes_given(model_args, role)
            if ignored:
                logger.warning(
                    f"{', '.join(ignored)} size a fresh ViT and are ignored with --{role}_config_name: set the "
                    f"config's own fields with --{role}_config_overrides."
                )
    architecture = getattr(model_args, "teacher_architecture", "vit")
    if architecture not in ("resnet", "vit"):
        raise ValueError(f"--teacher_architecture {architecture!r}: use resnet or vit.")
    trained_here = not (model_args.teacher_model_name_or_path or model_args.teacher_config_name)
    if trained_here and architecture == "resnet":
        sized = vit_sizes_given(model_args, "teacher")
        if sized:
            logger.warning(
                f"{', '.join(sized)} size a ViT teacher and are ignored with --teacher_architecture resnet (the "
                "default): pass --teacher_architecture vit to train a ViT teacher of these sizes."
            )


def vit_sizes_given(model_args: ModelArguments, role: str) -> list[str]:
    """The ViT size flags of ``role`` given other values than their defaults (they size a fresh ViT only)."""
    defaults = type(model_args)()
    return [
        f"--{role}_{size}"
        for size in ("hidden_size", "num_layers", "num_heads")
        if getattr(model_args, f"{role}_{size}") != getattr(defaults, f"{role}_{size}")
    ]


def load_baseline(
    name_or_path: str, class_names: list[str], trust_remote_code: bool = False, dataset=None, processor=None
) -> PreTrainedModel:
    """A finished one-hot baseline to reuse (``--baseline_model_name_or_path``): an image classifier whose
    classes are the dataset's, in the same order; anything else is refused. When it is the baseline/ folder
    of an earlier run (its subgroup_metrics.json next to it), that run's data (the record's ``dataset``: source,
    profile, per-class counts, ...) must equal ``dataset`` (this run's ``info.to_dict()``), and its saved image
    processor must preprocess as ``processor`` does."""
    flag = "--baseline_model_name_or_path"
    record = os.path.join(os.path.dirname(os.path.abspath(name_or_path)), "subgroup_metrics.json")
    if dataset is not None and os.path.isdir(name_or_path) and os.path.isfile(record):
        with open(record, encoding="utf-8") as f:
            theirs = json.load(f).get("dataset") or {}
        ours = json.loads(json.dumps(dataset, default=str))
        if "source" in ours:  # the record names a local folder by its own name (public_name), never its path
            ours["source"] = public_name(ours["source"])
        differ = [k for k in ours if k in theirs and k != "description" and theirs[k] != ours[k]]
        if differ:
            detail = "; ".join(f"{k} {_short(theirs[k])} there, {_short(ours[k])} here" for k in differ)
            raise ValueError(
                f"{flag} {name_or_path!r} was trained on other data than this run's ({detail}). Reuse a baseline "
                "trained on this data (same dataset and long-tail flags), or drop the flag to train one here."
            )
    config = classifier_config(
        name_or_path,
        trust_remote_code,
        unreadable=lambda err: (
            f"{flag} {name_or_path!r} could not be loaded: {err}. Pass the baseline/ folder of an earlier run (or "
            "a Hub id) saved with save_pretrained."
        ),
        not_a_classifier=lambda model_type: (
            f"{flag} {name_or_path!r} is a {model_type!r} model, not an image classifier: pass the baseline/ "
            "folder of an earlier run on this data."
        ),
    )
    theirs = [config.id2label[i] for i in sorted(config.id2label)]
    if theirs != list(class_names):
        missing = [c for c in class_names if c not in theirs]
        extra = [c for c in theirs if c not in class_names]
        detail = (
            f"classes only in the data: {missing}; only in the baseline: {extra}"
            if missing or extra
            else f"the same classes in another order (data: {list(class_names)}, baseline: {theirs})"
        )
        raise ValueError(
            f"{flag} {name_or_path!r} was trained on other classes than this data's ({detail}). Reuse a baseline "
            "trained on this dataset, or drop the flag to train one here."
        )
    saved_processor = os.path.join(name_or_path, "preprocessor_config.json")
    if processor is not None and os.path.isfile(saved_processor):
        with open(saved_processor, encoding="utf-8") as f:
            theirs = json.load(f)
        ours = json.loads(processor.to_json_string())
        differ = [k for k in ("size", "image_mean", "image_std") if k in theirs and theirs[k] != ours.get(k)]
        if differ:
            detail = ", ".join(f"{k} {theirs[k]} there, {ours.get(k)} here" for k in differ)
            raise ValueError(
                f"{flag} {name_or_path!r} was trained on images preprocessed otherwise ({detail}): pass the "
                "--image_size (or student) it was trained with, or drop the flag to train one here."
            )
    return AutoModelForImageClassification.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


def fresh_description(model_args, role: str, suffix: str = "") -> str | None:
    """How the record names a fresh model built from ``--<role>_config_name`` (None without one)."""
    name = getattr(model_args, f"{role}_config_name")
    if not name:
        return None
    overrides = getattr(model_args, f"{role}_config_overrides")  # a JSON string, or a dict from a YAML file
    overrides = overrides if isinstance(overrides, str) or not overrides else json.dumps(overrides)
    return f"fresh from config {public_name(name)}" + (f" with {overrides}" if overrides else "") + suffix


def model_description(model_args, role: str, suffix: str = "") -> str:
    """How the record names a fresh ``role`` model: from its config (`fresh_description`), else the ViT sizes."""
    sizes = f"hidden {getattr(model_args, f'{role}_hidden_size')}, {getattr(model_args, f'{role}_num_layers')} layers"
    if role == "teacher" and getattr(model_args, "teacher_architecture", "vit") == "resnet":
        return fresh_description(model_args, role, suffix) or f"fresh small ResNet (16-128 channels){suffix}"
    return fresh_description(model_args, role, suffix) or f"fresh ViT ({sizes}){suffix}"
