"""The recipes' shared machinery (`hf_fairkd.run`): argument files and overrides, the one ViT builder, and
prediction for a model trained elsewhere."""

import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def parse(argv, **defaults):
    from hf_fairkd.run.arguments import parse_recipe_args

    return parse_recipe_args(argv=[str(a) for a in argv], **defaults)


# ------------------------------------------------------------------------------------------ argument files
@pytest.mark.parametrize(
    "config",
    sorted(p for p in (ROOT / "recipes" / "configs").glob("*.yaml") if not p.name.startswith("compare_")),
    ids=lambda p: p.name,
)
def test_every_preset_parses_on_this_machine(config):
    """(The comparison's presets, compare_*.yaml, are parsed by tests/test_compare.py.)"""
    model_args, data_args, args, _ = parse([str(config)])
    assert args.output_dir.startswith("outputs/") and data_args.dataset_name
    if "cifar" in config.name:
        assert (
            data_args.imbalance_factor == 100
            and model_args.teacher_hidden_size > model_args.student_hidden_size
        )


# ------------------------------------------------------------------------ intervals imply their strategy
@pytest.mark.parametrize("spelling", ["cli", "cli_equals", "yaml"])
def test_explicit_steps_turn_their_strategy_on(tmp_path, caplog, spelling):
    given = {"save_steps": 10, "eval_steps": 5}
    if spelling == "yaml":
        (tmp_path / "c.yaml").write_text("".join(f"{k}: {v}\n" for k, v in given.items()))
        argv = [str(tmp_path / "c.yaml")]
    elif spelling == "cli_equals":
        argv = [f"--{k}={v}" for k, v in given.items()]
    else:
        argv = [a for k, v in given.items() for a in (f"--{k}", str(v))]
    with caplog.at_level("INFO", logger="hf_fairkd"):
        _, _, args, _ = parse(argv)
    assert (args.save_strategy, args.save_steps) == ("steps", 10)
    assert (args.eval_strategy, args.eval_steps) == ("steps", 5)
    assert caplog.text.count("--save_steps given: save_strategy set to 'steps' (it was 'no')") == 1
    assert caplog.text.count("--eval_steps given: eval_strategy set to 'steps'") == 1


def test_explicit_strategy_wins_and_defaults_stay_off(caplog):
    with caplog.at_level("INFO", logger="hf_fairkd"):
        _, _, args, _ = parse(["--save_steps", "10", "--save_strategy", "epoch"])
        _, _, default, _ = parse(["--logging_steps", "3"])
    assert args.save_strategy == "epoch" and args.eval_strategy == "no"
    assert (default.save_strategy, default.eval_strategy, default.logging_strategy) == ("no", "no", "steps")
    assert "set to 'steps'" not in caplog.text


def test_argument_file_values_keep_their_types_lists_dicts_and_nulls(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "teacher_logit_mode: shift\n"
        "teacher_logit_shift: [0.1, -0.2, 0, 1, 2e-3]\n"  # ints and a YAML 1.1 string float, as floats
        "lr_scheduler_type: cosine_with_min_lr\n"
        "lr_scheduler_kwargs: {min_lr: 0.0001}\n"  # a dict reaches TrainingArguments as a dict
        "teacher_num_train_epochs: null\n"
        "learning_rate: 2e-3\n"
        "holdout_per_class: 3\n"
        "eval_strategy: no\n"  # a string, not YAML 1.1's False
        "disable_tqdm: yes\n"
        "student_num_layers: 3\n"
    )
    model_args, data_args, args, _ = parse([config])
    assert args.teacher_logit_shift == [0.1, -0.2, 0.0, 1.0, 0.002]
    assert all(type(v) is float for v in args.teacher_logit_shift)
    assert args.lr_scheduler_kwargs == {"min_lr": 0.0001}
    assert model_args.teacher_num_train_epochs is None
    assert args.learning_rate == 0.002 and type(data_args.holdout_per_class) is float
    assert (
        str(args.eval_strategy.value if hasattr(args.eval_strategy, "value") else args.eval_strategy) == "no"
    )
    assert args.disable_tqdm is True and model_args.student_num_layers == 3


def test_json_argument_file_is_read_the_same_way(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(
        json.dumps({"teacher_logit_shift": [1, 2], "alpha": 1, "augment": True, "image_size": 8})
    )
    model_args, data_args, args, _ = parse([config])
    assert args.teacher_logit_shift == [1.0, 2.0] and args.alpha == 1.0 and data_args.augment is True
    assert model_args.image_size == 8


@dataclass
class _Fields:
    scale: float | None = 1.0
    shift: list[float] | None = field(default_factory=lambda: [1.0])
    options: dict | str | None = None
    name: str = "x"


def test_null_overrides_a_default_and_a_dict_survives(tmp_path):
    from hf_fairkd.run.arguments import parse_recipe_args

    config = tmp_path / "c.yaml"
    config.write_text("scale: null\nshift: null\noptions: {a: 1, b: [2, 3], c: null}\n")
    (values,) = parse_recipe_args((_Fields,), argv=[str(config)])
    assert values.scale is None and values.shift is None
    assert values.options == {"a": 1, "b": [2, 3], "c": None}
    (defaults,) = parse_recipe_args((_Fields,), argv=[])
    assert defaults.scale == 1.0 and defaults.shift == [1.0]


def test_command_line_overrides_the_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "alpha: 0.7\nteacher_logit_shift: [1, 2, 3]\ntemperature: 3\noutput_dir: outputs/from_file\n"
    )
    _, _, args, _ = parse([config, "--alpha", "0.3", "--teacher_logit_shift", "4", "5"])
    assert args.alpha == 0.3 and args.teacher_logit_shift == [4.0, 5.0]
    assert args.temperature == 3.0 and args.output_dir == "outputs/from_file"  # the file under the CLI
    _, _, teacher, _ = parse([config], output_dir="outputs/teacher", objective="erm")
    assert (
        teacher.output_dir == "outputs/from_file" and teacher.objective == "erm"
    )  # the file over the recipe


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "alpah: 0.3\nbogus_key: 1\n",
            r"unknown argument\(s\) 'alpah' \(did you mean 'alpha'\?\), 'bogus_key'",
        ),
        ("student_hidden_size: 2.5\n", r"student_hidden_size: 2.5 is not a valid int"),
        ("alpha: high\n", r"alpha: 'high' is not a valid float"),
        ("save_strategy: sometimes\n", r"save_strategy: 'sometimes' is not one of"),
        ("temperature: [1, 2]\n", r"temperature takes one value"),
        ("- alpha\n", "must hold a mapping"),
    ],
)
def test_bad_argument_file_is_a_clear_error_naming_the_key(tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ValueError, match=message):
        parse([config])


def test_missing_argument_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        parse([tmp_path / "nope.yaml"])


# ------------------------------------------------------------------------------------------ models
def test_one_vit_builder_everywhere():
    """Only `hf_fairkd.run.models` builds a ViTConfig; benchmarks and the test models use its builder."""
    from hf_fairkd.run import models

    builders = [
        p.relative_to(ROOT).as_posix()
        for folder in ("hf_fairkd", "recipes", "benchmarks")
        for p in (ROOT / folder).rglob("*.py")
        if "ViTConfig(" in p.read_text(encoding="utf-8")
    ]
    assert builders == ["hf_fairkd/run/models.py"]
    for name in ("teacher_cache", "step_overhead"):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.build_vit is models.build_vit, name
    import tiny_models

    assert tiny_models.build_vit is models.build_vit


def test_build_vit_is_a_seeded_vit_with_the_dataset_labels():
    from transformers import ViTForImageClassification

    from hf_fairkd.run.models import build_vit, vit_config

    sizes = dict(hidden_size=16, num_layers=1, num_heads=2, image_size=8, patch_size=4)
    model = build_vit(["cat", "dog"], seed=3, **sizes)
    torch.manual_seed(3)
    plain = ViTForImageClassification(vit_config(["cat", "dog"], **sizes))
    assert type(model) is ViTForImageClassification
    assert model.config.id2label == {0: "cat", 1: "dog"} and model.config.label2id == {"cat": 0, "dog": 1}
    assert model.config.intermediate_size == 64 and model.config.hidden_dropout_prob == 0.0
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name


def test_fresh_model_takes_any_image_classifier_config():
    from transformers import ResNetConfig

    from hf_fairkd.run.models import fresh_model, label_space

    sizes = dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    config = ResNetConfig(**sizes, **label_space(["a", "b", "c"]))
    first, again = fresh_model(config, seed=1), fresh_model(config, seed=1)
    assert type(first).__name__ == "ResNetForImageClassification" and first.config.num_labels == 3
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


# ------------------------------------------------------------------------------------------ stages
def test_prediction_trainer_writes_nothing_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    import atexit

    from tiny_models import image_dataset, make_vit, tiny_args

    from hf_fairkd.run.preprocessing import PreparedSplits
    from hf_fairkd.run.stages import predict_logits, prediction_trainer

    registered = []
    monkeypatch.setattr(atexit, "register", lambda *a, **k: registered.append(a))
    out = tmp_path / "out"
    out.mkdir()
    data = image_dataset(counts=(6, 4, 2))
    model = make_vit().eval()
    args = tiny_args(tmp_path, objective="kd")
    trainer = prediction_trainer(model, args, PreparedSplits({"test": data}, class_counts=[6, 4, 2]))
    logits, labels = predict_logits(trainer, data)
    with torch.no_grad():
        expected = model(pixel_values=data[:]["pixel_values"]).logits.numpy()
    assert logits == pytest.approx(expected, abs=1e-5) and list(labels) == data[:]["labels"].tolist()
    assert trainer.args.output_dir == args.output_dir and trainer.args.objective == "erm"
    assert list(out.iterdir()) == []  # prediction wrote nothing in the run's folder
    assert not [
        call for call in registered if getattr(call[0], "__name__", "") == "rmtree"
    ]  # no temporary folder
    assert not re.search(r"hf_fairkd_eval_", " ".join(str(p) for p in Path(tmp_path).iterdir()))


# ------------------------------------------------------------------------------ any architecture, from a config
def write_config(path, **fields):
    path.write_text(json.dumps(fields))
    return str(path)


def test_shipped_resnet_config_builds_a_cpu_cnn_for_32x32_images():
    """recipes/configs/models/resnet_cifar.json: a ResNet of 1,232,810 parameters with 10 classes (README there)."""
    from hf_fairkd.run.models import config_from_name, fresh_model

    names = [f"c{i}" for i in range(10)]
    config = config_from_name(
        str(ROOT / "recipes" / "configs" / "models" / "resnet_cifar.json"), names, image_size=32
    )
    model = fresh_model(config, seed=0)
    assert type(model).__name__ == "ResNetForImageClassification"
    assert sum(p.numel() for p in model.parameters()) == 1_232_810
    assert model.config.id2label == dict(enumerate(names)) and model.config.downsample_in_first_stage is False
    with torch.no_grad():
        assert model(pixel_values=torch.randn(2, 3, 32, 32)).logits.shape == (2, 10)


def test_config_name_and_overrides_build_a_seeded_model_with_the_dataset_labels(tmp_path):
    from hf_fairkd.run.arguments import ModelArguments
    from hf_fairkd.run.models import student_model, teacher_model

    name = write_config(tmp_path / "resnet.json", model_type="resnet", embedding_size=8, hidden_sizes=[8, 16, 32],
                        depths=[1, 1, 1], layer_type="basic")  # fmt: skip
    folder = tmp_path / "folder"
    folder.mkdir()
    write_config(folder / "config.json", model_type="resnet", layer_type="basic")
    args = ModelArguments(
        student_config_name=name,
        student_config_overrides='{"hidden_sizes": [8, 16], "depths": [1, 1]}',
        teacher_config_name=str(folder),
        teacher_config_overrides='{"embedding_size": 8, "hidden_sizes": [8], "depths": [1]}',
    )
    first, again = student_model(args, ["a", "b"], seed=4), student_model(args, ["a", "b"], seed=4)
    assert first.config.hidden_sizes == [8, 16] and first.config.stage_names == ["stem", "stage1", "stage2"]
    assert first.config.id2label == {0: "a", 1: "b"} and first.config.label2id == {"a": 0, "b": 1}
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    teacher = teacher_model(args, ["a", "b"], seed=4)
    assert type(teacher).__name__ == "ResNetForImageClassification" and teacher.config.hidden_sizes == [8]
    with torch.no_grad():
        assert first.eval()(pixel_values=torch.randn(1, 3, 8, 8)).logits.shape == (1, 2)
    default = student_model(ModelArguments(), ["a", "b"], seed=0)  # no config: the ViT sizes stay the default
    assert type(default).__name__ == "ViTForImageClassification" and default.config.hidden_size == 64


def test_config_channels_and_image_size_follow_the_image_processor(tmp_path, caplog):
    from hf_fairkd.run.models import config_from_name

    name = write_config(tmp_path / "vit.json", model_type="vit", hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, num_channels=1, image_size=224, patch_size=4)  # fmt: skip
    with caplog.at_level("INFO", logger="hf_fairkd.run.models"):
        config = config_from_name(name, ["a", "b"], image_size=8)
    assert (config.num_channels, config.image_size, config.patch_size) == (3, 8, 4)
    assert "num_channels 1 -> 3" in caplog.text and "image_size 224 -> 8" in caplog.text


@pytest.mark.parametrize(
    "fields, overrides, message",
    [
        (
            {"model_type": "bert"},
            None,
            r"is a 'bert' config, which AutoModelForImageClassification cannot build.*resnet",
        ),
        ({"hidden_size": 8}, None, "could not be read as a model config"),
        (
            {"model_type": "resnet"},
            '{"hidden_sizez": [8]}',
            r"\['hidden_sizez'\] are not fields of a 'resnet' config",
        ),
        ({"model_type": "resnet"}, "{hidden_sizes: [8]}", "is not JSON"),
    ],
    ids=["not_an_image_classifier", "no_model_type", "unknown_override", "overrides_not_json"],
)
def test_config_that_does_not_build_an_image_classifier_is_refused(tmp_path, fields, overrides, message):
    from hf_fairkd.run.arguments import ModelArguments
    from hf_fairkd.run.models import student_model

    name = write_config(tmp_path / "config.json", **fields)
    args = ModelArguments(student_config_name=name, student_config_overrides=overrides)
    with pytest.raises(ValueError, match=message):
        student_model(args, ["a", "b"], seed=0)


def test_pretrained_student_of_another_label_space_is_reheaded(tmp_path):
    from hf_fairkd.run.arguments import ModelArguments
    from hf_fairkd.run.models import build_vit, student_model

    sizes = dict(hidden_size=16, num_layers=1, num_heads=2, image_size=8, patch_size=4)
    pretrained = build_vit(list("abcde"), seed=0, **sizes)
    pretrained.save_pretrained(tmp_path / "pretrained")
    student = student_model(
        ModelArguments(student_model_name_or_path=str(tmp_path / "pretrained")), ["x", "y"], 0
    )
    assert student.config.id2label == {0: "x", 1: "y"} and student.config.label2id == {"x": 0, "y": 1}
    assert student.classifier.out_features == 2
    body = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("classifier")}
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in body.items())  # only the head is new
    with pytest.raises(ValueError, match="both name the student"):
        student_model(
            ModelArguments(
                student_model_name_or_path=str(tmp_path / "pretrained"), student_config_name="x.json"
            ),
            ["x", "y"],
            0,
        )


def test_reused_baseline_of_other_classes_or_not_a_classifier_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    from hf_fairkd.run.models import build_vit, load_baseline

    sizes = dict(hidden_size=16, num_layers=1, num_heads=2, image_size=8, patch_size=4)
    build_vit(["a", "b", "c"], seed=0, **sizes).save_pretrained(tmp_path / "abc")
    assert load_baseline(str(tmp_path / "abc"), ["a", "b", "c"]).config.id2label == {0: "a", 1: "b", 2: "c"}
    with pytest.raises(
        ValueError, match=r"other classes.*only in the data: \['d'\]; only in the baseline: \['c'\]"
    ):
        load_baseline(str(tmp_path / "abc"), ["a", "b", "d"])
    with pytest.raises(ValueError, match="the same classes in another order"):
        load_baseline(str(tmp_path / "abc"), ["c", "b", "a"])
    BertModel(
        BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="is a 'bert' model, not an image classifier"):
        load_baseline(str(tmp_path / "bert"), ["a", "b", "c"])


def test_config_overrides_from_an_argument_file_may_be_a_mapping(tmp_path):
    from hf_fairkd.run.models import student_model

    config = tmp_path / "run.yaml"
    config.write_text(
        f"student_config_name: {ROOT / 'recipes' / 'configs' / 'models' / 'resnet_cifar.json'}\n"
        "student_config_overrides:\n  hidden_sizes: [8, 16]\n  depths: [1, 1]\n"
    )
    model_args, _, _, _ = parse([config])
    assert model_args.student_config_overrides == {"hidden_sizes": [8, 16], "depths": [1, 1]}
    student = student_model(model_args, ["a", "b"], seed=0)
    assert student.config.hidden_sizes == [8, 16] and student.config.embedding_size == 32


# ------------------------------------------------------------------ resume: a finished stage's fingerprint
def test_stage_fingerprint_mismatch_names_the_settings_and_the_fix(tmp_path, caplog):
    import dataclasses

    from tiny_models import tiny_args

    from hf_fairkd.run.arguments import ModelArguments
    from hf_fairkd.run.resume import (
        STAGE_COMPLETE_NAME,
        finished_stage,
        mark_stage_complete,
        stage_fingerprint,
    )

    dataset = {"dataset_name": "digits", "train_counts": [5, 3]}
    args, model_args = tiny_args(tmp_path, objective="ce"), ModelArguments()
    ours = stage_fingerprint("baseline", args, model_args, dataset)
    # what does not shape the weights does not change it; what does, does
    cosmetic = dataclasses.replace(
        args, logging_steps=1, output_dir=str(tmp_path / "x"), save_strategy="steps"
    )
    assert stage_fingerprint("baseline", cosmetic, model_args, dataset) == ours
    for changed in (dict(seed=1), dict(max_steps=3), dict(learning_rate=1.0), dict(objective="balanced")):
        assert (
            stage_fingerprint("baseline", dataclasses.replace(args, **changed), model_args, dataset) != ours
        )
    bigger = ModelArguments(student_hidden_size=32)
    assert stage_fingerprint("baseline", args, bigger, dataset) != ours
    assert stage_fingerprint("baseline", args, model_args, {**dataset, "train_counts": [5, 2]}) != ours

    folder = tmp_path / "baseline"
    folder.mkdir()
    assert not finished_stage(str(folder), ours)  # no marker: killed half-way, trained again
    (folder / STAGE_COMPLETE_NAME).write_text("{")  # a marker cut short
    with caplog.at_level("WARNING"):
        assert not finished_stage(str(folder), ours)
    assert "is unreadable: the baseline stage is trained again" in caplog.text
    mark_stage_complete(str(folder), ours)
    assert finished_stage(str(folder), ours)
    theirs = stage_fingerprint("baseline", dataclasses.replace(args, max_steps=7), bigger, dataset)
    mark_stage_complete(str(folder), theirs)
    with pytest.raises(ValueError) as err:
        finished_stage(str(folder), ours)
    message = str(err.value)
    assert (
        f"the finished baseline stage in {folder} was trained with other settings than this run's" in message
    )
    assert "training.max_steps 7 there, 20 here" in message
    assert "model.student_hidden_size 32 there, 64 here" in message
    assert "Resume with the original flags, or pass --overwrite_output_dir" in message


def test_a_misspelt_flag_on_the_command_line_gets_the_nearest_name():
    from hf_fairkd.run.arguments import parse_recipe_args

    with pytest.raises(ValueError) as err:
        parse_recipe_args(argv=["--num_train_epocs", "3", "--temprature=2", "stray"])
    message = str(err.value)
    assert "'--num_train_epocs' (did you mean '--num_train_epochs'?)" in message
    assert "'--temprature=2' (did you mean '--temperature'?)" in message
    assert "'stray'" in message and "HfArgumentParser" not in message


def test_a_reused_baseline_of_a_local_folder_matches_by_the_folders_own_name(tmp_path):
    """A record names a local dataset folder by its own name (never its path): reusing that run's baseline with
    the same folder passed by another path (absolute, relative, a different parent) is the same data; another
    folder's name is not."""
    import json

    from hf_fairkd.run.models import build_vit, load_baseline

    names = ["a", "b"]
    folder = tmp_path / "run" / "baseline"
    build_vit(
        names, seed=0, hidden_size=16, num_layers=1, num_heads=2, image_size=8, patch_size=4
    ).save_pretrained(folder)
    (tmp_path / "run" / "subgroup_metrics.json").write_text(
        json.dumps({"dataset": {"source": "mydata", "rho": 10}})
    )
    for given in ("/home/you/mydata", "mydata", "../data/mydata/"):
        model = load_baseline(str(folder), names, dataset={"source": given, "rho": 10})
        assert model.config.num_labels == 2
    with pytest.raises(ValueError, match="other data than this run's"):
        load_baseline(str(folder), names, dataset={"source": "/home/you/otherdata", "rho": 10})


def test_vit_sizes_given_with_the_resnet_teacher_are_named_as_ignored(caplog):
    """The default teacher trained here is a small ResNet: ViT size flags for it are ignored, and said so; with
    --teacher_architecture vit they size it; an unknown architecture is refused."""
    from hf_fairkd.run.arguments import ModelArguments
    from hf_fairkd.run.models import check_model_arguments, fresh_config

    with caplog.at_level("WARNING", logger="hf_fairkd.run.models"):
        check_model_arguments(ModelArguments(teacher_hidden_size=16))
    assert (
        "--teacher_hidden_size size a ViT teacher and are ignored with --teacher_architecture resnet"
        in caplog.text
    )
    assert fresh_config(ModelArguments(teacher_hidden_size=16), ["a", "b"], "teacher").model_type == "resnet"
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_fairkd.run.models"):
        check_model_arguments(ModelArguments(teacher_architecture="vit", teacher_hidden_size=16))
    assert not caplog.text
    vit = fresh_config(
        ModelArguments(teacher_architecture="vit", teacher_hidden_size=16), ["a", "b"], "teacher"
    )
    assert (vit.model_type, vit.hidden_size) == ("vit", 16)
    with pytest.raises(ValueError, match="--teacher_architecture 'cnn': use resnet or vit"):
        check_model_arguments(ModelArguments(teacher_architecture="cnn"))


def test_a_model_given_on_the_command_line_replaces_the_files_way_of_building_it(tmp_path, caplog):
    """A config that trains its teacher here (config, resolution) plus --teacher_model_name_or_path on the command
    line: the file's teacher-building values yield (with a note), so the pair is not refused; given together on
    the command line they still are."""
    from hf_fairkd.run import models

    config = tmp_path / "c.yaml"
    config.write_text("teacher_config_name: resnet.json\nteacher_image_size: 48\nstudent_config_name: s.json\n")
    with caplog.at_level("WARNING"):
        model_args, *_ = parse([str(config), "--teacher_model_name_or_path", "my/teacher"])
    assert model_args.teacher_model_name_or_path == "my/teacher"
    assert model_args.teacher_config_name is None and model_args.teacher_image_size is None
    assert model_args.student_config_name == "s.json"  # the student was not named on the command line
    assert "teacher_config_name, teacher_image_size ignored" in caplog.text
    models.check_model_arguments(model_args)  # no contradiction left
    both, *_ = parse(["--teacher_model_name_or_path", "my/teacher", "--teacher_config_name", "resnet.json"])
    with pytest.raises(ValueError, match="both name the teacher"):
        models.check_model_arguments(both)
