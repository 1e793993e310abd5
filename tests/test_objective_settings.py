"""An objective's own settings (`hf_fairkd.objectives.settings`): declared as a dataclass, given through
``DistillationArguments.objective_settings`` in Python, YAML or on the command line, checked before any training,
read by the loss, and recorded in the record, the card, run_config.json and the resume fingerprints."""

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from tiny_models import image_dataset, make_vit, tiny_args

from hf_fairkd import DistillationTrainer
from hf_fairkd.config import DistillationArguments
from hf_fairkd.objectives import LossOutput, Objective, get_objective, register_objective
from hf_fairkd.objectives.base import objective_settings_help
from hf_fairkd.objectives.settings import resolved_settings
from hf_fairkd.run import arguments, resume

TOY = "toy_scaled_ce_with_settings"


@dataclass
class ToySettings:
    scale: float = field(default=2.0, metadata={"help": "factor on the cross-entropy"})
    every: int = field(default=3, metadata={"help": "steps between two updates"})
    mode: Literal["sum", "mean"] = "mean"
    warmup: int | None = None
    flag: bool = False
    weights: list[float] = field(default_factory=lambda: [1.0])

    def __post_init__(self):
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}.")


@register_objective(TOY)
class ScaledCE(Objective):
    """Toy: scale * CE(e_y, s), so the loss shows the setting in closed form."""

    uses_teacher = False
    settings_class = ToySettings

    def compute(self, student_logits, labels, teacher_logits=None):
        ce = F.cross_entropy(student_logits.float(), labels, reduction="none")
        return LossOutput(self.settings.scale * ce, {"one_hot": ce})


DEFAULTS = {"scale": 2.0, "every": 3, "mode": "mean", "warmup": None, "flag": False, "weights": [1.0]}


def args_of(tmp_path, **overrides) -> DistillationArguments:
    return tiny_args(tmp_path, objective=TOY, **overrides)


def parse(tmp_path, *argv):
    """The recipes' parser: (model, data, distillation, run) arguments."""
    return arguments.parse_recipe_args(
        argv=[*argv, "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]
    )


def test_declared_defaults_fill_what_is_not_given(tmp_path):
    args = args_of(tmp_path)
    assert args.objective_settings is None  # nothing given
    objective = get_objective(TOY)(args, torch.tensor([4, 2, 1]))
    assert objective.settings == ToySettings()
    assert resolved_settings(ScaledCE, None) == DEFAULTS
    # one given: only it is stored, the others keep their defaults
    args = args_of(tmp_path, objective_settings={"every": 7})
    assert args.objective_settings == {"every": 7}
    assert dataclasses.asdict(get_objective(TOY)(args, torch.tensor([4, 2, 1])).settings) == {
        **DEFAULTS,
        "every": 7,
    }


def test_given_in_python_as_a_mapping_or_an_instance_converted_to_the_declared_types(tmp_path):
    args = args_of(tmp_path, objective_settings={"scale": "3", "every": 4.0, "warmup": "none", "flag": "yes"})
    assert args.objective_settings == {"scale": 3.0, "every": 4, "warmup": None, "flag": True}
    assert type(args.objective_settings["scale"]) is float and type(args.objective_settings["every"]) is int
    args = args_of(tmp_path, objective_settings=ToySettings(scale=0.5, weights=[1, 2]))
    assert args.objective_settings == {**DEFAULTS, "scale": 0.5, "weights": [1.0, 2.0]}
    # a copy of the arguments checks the stored values again, unchanged
    assert dataclasses.replace(args, seed=3).objective_settings == args.objective_settings


def test_given_in_yaml_and_on_the_command_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"objective: {TOY}\nobjective_settings:\n  scale: 4\n  mode: sum\n  weights: [1, 0.5]\n"
    )
    _, _, args, _ = parse(tmp_path, str(config))
    assert args.objective_settings == {"scale": 4.0, "mode": "sum", "weights": [1.0, 0.5]}
    _, _, args, _ = parse(tmp_path, "--objective", TOY, "--objective_settings", "scale=5,every=2, flag=true")
    assert args.objective_settings == {"scale": 5.0, "every": 2, "flag": True}
    _, _, args, _ = parse(
        tmp_path, "--objective", TOY, "--objective_settings", '{"every": 6, "weights": [2]}'
    )
    assert args.objective_settings == {"every": 6, "weights": [2.0]}
    # the command line's value replaces the file's, as for any argument
    _, _, args, _ = parse(tmp_path, str(config), "--objective_settings", "every=9")
    assert args.objective_settings == {"every": 9}


def test_help_names_the_field_and_how_to_list_an_objectives_settings(tmp_path, capsys):
    with pytest.raises(SystemExit):
        arguments.parse_recipe_args(argv=["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--objective_settings" in shown and "objective_settings_help" in shown
    text = objective_settings_help(TOY)
    assert "every (int, default 3): steps between two updates" in text
    assert (
        "mode (one of 'sum', 'mean', default 'mean')" in text and "warmup (int or None, default None)" in text
    )
    kd_help = objective_settings_help("kd")
    assert "declares no settings" in kd_help and "--alpha, --temperature" in kd_help


def test_an_unknown_key_names_the_nearest_one_and_lists_them_all(tmp_path):
    with pytest.raises(ValueError, match=r"no setting 'evry' \(did you mean 'every'\?\)") as err:
        args_of(tmp_path, objective_settings="evry=5")
    assert "scale (float, default 2.0)" in str(err.value) and "weights (list of float" in str(err.value)
    with pytest.raises(ValueError, match=r"did you mean 'scale'"):
        parse(tmp_path, "--objective", TOY, "--objective_settings", "scael=2")
    with pytest.raises(ValueError, match=r"no setting 'zzz'\. Its settings: scale"):
        args_of(tmp_path, objective_settings={"zzz": 1})


@pytest.mark.parametrize(
    "given, message",
    [
        ("every=abc", "every='abc' is not a valid int"),
        ({"every": 2.5}, "every=2.5 is not a valid int"),
        ({"every": True}, "every=True is not a valid int"),
        ("scale=big", "scale='big' is not a valid float"),
        ("flag=maybe", "flag='maybe' is not a valid bool"),
        ("mode=median", "mode='median' is not one of 'sum', 'mean'"),
        ("weights=1", "weights='1' is not a valid list of float"),
        ("scale=-1", "scale must be > 0, got -1.0"),  # the settings class's own check
        ("every", "'every' is not key=value"),
        ("every=1,every=2", "'every' is given twice"),
        ('{"every": 1', "is not a valid JSON object"),
    ],
)
def test_a_wrong_value_says_which_key_and_the_expected_type(tmp_path, given, message):
    with pytest.raises(ValueError, match="objective_settings") as err:
        args_of(tmp_path, objective_settings=given)
    assert message in str(err.value)


def test_settings_for_an_objective_that_declares_none_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"objective 'kd' declares no settings.*--alpha, --temperature"):
        tiny_args(tmp_path, objective="kd", objective_settings="every=3")
    with pytest.raises(ValueError, match="declares no settings"):
        parse(tmp_path, "--objective", "ce", "--objective_settings", '{"every": 3}')
    assert (
        tiny_args(tmp_path, objective="kd", objective_settings="").objective_settings is None
    )  # nothing given
    assert tiny_args(tmp_path, objective="kd", objective_settings={}).objective_settings is None


def test_a_malformed_settings_class_is_refused_when_registered():
    @dataclass
    class NoDefault:
        every: int

    @dataclass
    class Untyped:
        table: dict = field(default_factory=dict)

    for bad, message in (
        (NoDefault, "has no default"),
        (Untyped, "is typed"),
        (dict, "must be a @dataclass"),
    ):
        cls = type("Bad", (Objective,), {"settings_class": bad, "__doc__": "bad"})
        with pytest.raises(TypeError, match=message):
            register_objective("toy_bad_settings")(cls)
    assert "toy_bad_settings" not in __import__("hf_fairkd").objectives.OBJECTIVES


def test_a_setting_named_like_an_argument_is_refused(tmp_path):
    @dataclass
    class Clash:
        alpha: float = 0.1

    register_objective("toy_clashing_settings")(type("ClashCE", (ScaledCE,), {"settings_class": Clash}))
    for given in ("alpha=0.2", None):  # refused even unused: the record lists settings beside the flags
        with pytest.raises(ValueError, match=r"setting\(s\) \['alpha'\] named like argument"):
            tiny_args(tmp_path, objective="toy_clashing_settings", objective_settings=given)


def test_settings_belong_to_args_objective_another_objective_built_from_the_args_gets_its_defaults(tmp_path):
    from types import SimpleNamespace

    from hf_fairkd.run.preparation import check_objectives

    args = args_of(tmp_path, objective_settings="scale=3")
    counts = torch.tensor([4, 2, 1])
    assert (
        get_objective("erm")(args, counts).settings is None
    )  # the teacher's objective, checked before a run
    register_objective("toy_scaled_ce_sibling")(type("Sibling", (ScaledCE,), {}))
    assert get_objective("toy_scaled_ce_sibling")(args, counts).settings == ToySettings()
    assert get_objective(TOY)(args, counts).settings.scale == 3.0
    info = SimpleNamespace(train_counts=[4, 2, 1], holdout_counts=[1, 1, 1], class_names=["a", "b", "c"])
    check_objectives({"--objective": TOY, "--teacher_objective": "erm"}, args, info)  # no error


def test_the_setting_reaches_the_loss(tmp_path):
    train = image_dataset((8, 4, 4), seed=0)
    losses = {}
    for scale in (1.0, 2.5):
        args = args_of(tmp_path, objective_settings=f"scale={scale}")
        trainer = DistillationTrainer(model=make_vit(), args=args, train_dataset=train)
        assert trainer.objective.settings.scale == scale
        trainer.model.eval()
        batch = {"pixel_values": train[:8]["pixel_values"], "labels": train[:8]["labels"]}
        losses[scale] = trainer.compute_loss(trainer.model, batch)
        ce = F.cross_entropy(trainer.model(pixel_values=batch["pixel_values"]).logits, batch["labels"])
        torch.testing.assert_close(losses[scale], scale * ce)
    torch.testing.assert_close(losses[2.5], 2.5 * losses[1.0])


def test_recorded_in_the_record_the_card_and_run_config(tmp_path):
    import numpy as np

    from hf_fairkd.results import build_model_card, build_run_record, run_settings

    args = args_of(tmp_path, objective_settings="every=5")
    settings = run_settings(args)
    assert settings["objective_settings"] == {**DEFAULTS, "every": 5}
    assert settings["objective_params"]["every"] == 5  # beside the objective's flags, which the card prints
    assert "objective_settings" not in run_settings(tiny_args(tmp_path, objective="kd"))  # records as before

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    logits = {role: rng.normal(size=(30, 3)) + 2 * np.eye(3)[labels] for role in ("baseline", "student")}
    record = build_run_record(
        logits, labels, class_names=["a", "b", "c"], train_counts=[9, 5, 2], settings=settings
    )
    assert json.loads(json.dumps(record))["settings"]["objective_settings"]["every"] == 5
    card = str(build_model_card(record))
    assert f"**Distillation objective:** {TOY}".replace("_", "\\_") in card
    assert "every=5" in card and "scale=2.0" in card

    arguments.write_run_config(str(tmp_path), args)
    written = json.loads((tmp_path / arguments.RUN_CONFIG_NAME).read_text())
    assert written["DistillationArguments"]["objective_settings"] == {"every": 5}


def test_they_survive_the_checkpointed_arguments(tmp_path):
    args = args_of(tmp_path, objective_settings="every=5")
    torch.save(args, tmp_path / "training_args.bin")  # what the Trainer saves in every checkpoint
    loaded = torch.load(tmp_path / "training_args.bin", weights_only=False)
    assert loaded.objective_settings == {"every": 5}
    assert get_objective(TOY)(loaded, torch.tensor([1, 1, 1])).settings.every == 5
    saved = json.loads(args.to_json_string())  # training_args.json
    assert saved["objective_settings"] == {"every": 5}
    kept = ("output_dir", "objective", "objective_settings", "use_cpu", "report_to")
    assert DistillationArguments(**{k: saved[k] for k in kept}).objective_settings == {"every": 5}


def test_a_resume_with_other_settings_is_refused_like_any_changed_setting(tmp_path):
    model_args, dataset = arguments.ModelArguments(), {"train_counts": [4, 2, 1]}
    ours = resume.stage_fingerprint(
        "teacher", args_of(tmp_path, objective_settings="every=5"), model_args, dataset
    )
    assert ours["objective_args"]["objective_settings"] == {**DEFAULTS, "every": 5}
    folder = tmp_path / "teacher"
    folder.mkdir()
    resume.mark_stage_complete(str(folder), ours)
    assert resume.finished_stage(str(folder), ours)
    # a default given explicitly is the same run
    same = resume.stage_fingerprint("teacher", args_of(tmp_path, objective_settings={"every": 5, "scale": 2.0}),
                                    model_args, dataset)  # fmt: skip
    assert resume.finished_stage(str(folder), same)
    other = resume.stage_fingerprint(
        "teacher", args_of(tmp_path, objective_settings="every=6"), model_args, dataset
    )
    with pytest.raises(ValueError, match=r"objective_args\.objective_settings\.every 5 there, 6 here"):
        resume.finished_stage(str(folder), other)
    # an objective without settings: a marker written before the field existed still matches
    plain = resume.stage_fingerprint("baseline", tiny_args(tmp_path, objective="ce"), model_args, dataset)
    assert plain["objective_args"]["objective_settings"] is None
    old = json.loads(json.dumps(plain))
    del old["objective_args"]["objective_settings"]
    resume.mark_stage_complete(str(folder), old)
    assert resume.finished_stage(str(folder), plain)


def test_the_other_stages_of_a_run_do_not_inherit_the_students_settings(tmp_path):
    """The teacher and baseline stages copy the student's arguments with their own objective: the settings of
    the student's objective are dropped there (else the stage's objective would refuse them)."""
    from hf_fairkd.run.stages import stage_args

    args = args_of(tmp_path, objective_settings="every=5")
    for objective in ("erm", "ce"):
        stage = stage_args(args, output_dir=str(tmp_path / objective), objective=objective)
        assert stage.objective == objective and stage.objective_settings is None
    same = stage_args(args, output_dir=str(tmp_path / "student"))
    assert same.resolved_objective_settings()["every"] == 5
