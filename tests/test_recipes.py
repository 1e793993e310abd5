"""The recipes end to end on the embedded digits, on a tiny budget, and their bad-input errors."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--num_train_epochs", "1", "--max_steps", "6", "--per_device_train_batch_size", "16",
    "--student_hidden_size", "16", "--student_num_layers", "1", "--student_num_heads", "2",
    "--teacher_architecture", "vit", "--teacher_hidden_size", "16", "--teacher_num_layers", "1",
    "--teacher_num_heads", "2", "--image_size", "8", "--patch_size", "4", "--disable_tqdm", "true", "--logging_steps", "2",
]  # fmt: skip


def load_recipe(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree_hashes(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    argv = [*TINY, "--output_dir", str(out), "--objective", "robust_kd", "--dro_update_every", "2", "--hub_token",
            "hf_secretTOKEN123456"]  # fmt: skip
    metrics = load_recipe("distill_vit").main(argv)
    return out, metrics


def test_default_recipe_writes_every_output(distilled):
    out, metrics = distilled
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "subgroup_metrics.json",
                 "per_class_accuracy.png", "README.md", "run_config.json", "training_args.json"):  # fmt: skip
        assert (out / name).exists(), name
    assert not list(out.rglob("*.bin")), "only safetensors / JSON are written"
    saved = json.loads((out / "subgroup_metrics.json").read_text())
    assert {"student", "teacher", "baseline", "train_counts", "settings", "dataset"} <= set(saved)
    assert saved["settings"]["objective"] == "robust_kd"
    assert saved["train_counts"] == [139, 106, 81, 61, 46, 35, 26, 19, 13, 9]
    assert sum(row["support"] for row in saved["student"]["per_class"]) == 300
    for sub in ("teacher", "baseline"):
        assert AutoModelForImageClassification.from_pretrained(out / sub).config.num_labels == 10


def test_saved_student_reproduces_the_reported_accuracy(distilled):
    from hf_fairkd.data import load_long_tailed
    from hf_fairkd.run.preprocessing import with_image_transform

    out, metrics = distilled
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    test = load_long_tailed("digits")["test"]
    batch = with_image_transform(test, processor, "image", "label")[: len(test)]
    with torch.no_grad():
        predictions = model(pixel_values=batch["pixel_values"]).logits.argmax(-1).numpy()
    accuracy = float(np.mean(predictions == batch["labels"].numpy()))
    assert accuracy == pytest.approx(metrics["student"]["accuracy"], abs=1e-9)


def test_no_token_in_any_output(distilled):
    out, _ = distilled
    for path in out.rglob("*"):
        if path.is_file():
            assert b"hf_secretTOKEN123456" not in path.read_bytes(), path


def test_existing_output_dir_is_refused_and_left_intact(distilled):
    out, _ = distilled
    before = tree_hashes(out)
    with pytest.raises(ValueError, match="already holds a run.*--overwrite_output_dir.*Nothing was deleted"):
        load_recipe("distill_vit").main([*TINY, "--output_dir", str(out)])
    assert tree_hashes(out) == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset_name", "/no/such/dataset"], "does not exist|could not load"),
        (["--label_column_name", "nope"], "nope"),
        (["--objective", "magic"], "Unknown objective 'magic'"),
        (["--imbalance_factor", "0.5"], "imbalance_factor|rho"),
        (["--teacher_image_size", "0"], "--teacher_image_size must be a positive number of pixels, got 0"),
        (
            ["--teacher_image_size", "16", "--teacher_model_name_or_path", "some/teacher"],
            "--teacher_image_size sets the resolution of a teacher trained here.*Drop --teacher_image_size",
        ),
    ],
)
def test_bad_input_fails_before_training(tmp_path, extra, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        load_recipe("distill_vit").main([*TINY, "--output_dir", str(out), *extra])
    assert not (out / "baseline").exists()


def test_teacher_with_other_classes_is_refused_before_training(tmp_path):
    from hf_fairkd.run.models import build_vit

    teacher = build_vit(
        list("abcdefghij"), hidden_size=16, num_layers=1, num_heads=2, image_size=8, patch_size=4, seed=0
    )
    teacher.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="do not share a label space"):
        load_recipe("distill_vit").main(
            [*TINY, "--output_dir", str(out), "--teacher_model_name_or_path", str(tmp_path / "teacher")]
        )
    assert not (out / "baseline").exists()


def test_yaml_config_with_cli_override_and_given_teacher(tmp_path, distilled):
    run, _ = distilled
    config = tmp_path / "config.yaml"
    config.write_text(
        "objective: ada_alpha\nalpha: 0.7\nnum_train_epochs: 1\nmax_steps: 4\nimage_size: 8\npatch_size: 4\n"
        "student_hidden_size: 16\nstudent_num_layers: 1\nstudent_num_heads: 2\ndisable_tqdm: true\n"
        f"teacher_model_name_or_path: {run / 'teacher'}\n"
    )
    out = tmp_path / "out"
    metrics = load_recipe("distill_vit").main([str(config), "--output_dir", str(out), "--alpha", "0.3"])
    assert metrics["settings"]["objective"] == "ada_alpha"
    assert metrics["settings"]["objective_params"]["alpha"] == 0.3
    # the teacher/ folder of a run: its objective comes from its stage marker, and it is named by its folder's name
    settings = metrics["settings"]
    assert (settings["teacher_objective"], settings["teacher_model"]) == ("erm", "teacher")
    card = (out / "README.md").read_text()
    assert "not known" not in card
    assert str(run) not in card and str(run) not in (out / "subgroup_metrics.json").read_text()
    resolved = json.loads((out / "run_config.json").read_text())
    assert resolved["DistillationArguments"]["alpha"] == 0.3
    assert not (out / "teacher").exists()


@pytest.mark.parametrize("objective", ["balanced", "dro"])
def test_train_teacher_recipe(tmp_path, objective):
    out = tmp_path / objective
    metrics = load_recipe("train_teacher").main([*TINY, "--output_dir", str(out), "--objective", objective])
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert model.config.num_labels == 10
    assert json.loads((out / "subgroup_metrics.json").read_text())["teacher"] == metrics["teacher"]
    # the report is that of the saved model: its test predictions, recomputed here in plain torch / numpy
    logits, labels = saved_model_logits(out)
    predictions = logits.argmax(-1)
    assert metrics["teacher"]["accuracy"] == pytest.approx(float(np.mean(predictions == labels)), abs=1e-12)
    correct = [int(np.sum((predictions == labels) & (labels == c))) for c in range(10)]
    assert [row["correct"] for row in metrics["teacher"]["per_class"]] == correct
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), -1).numpy()
    log_loss = -np.mean(np.log(probs[np.arange(len(labels)), labels]))
    assert metrics["teacher_calibration"]["log_loss"] == pytest.approx(log_loss, rel=1e-5)


def saved_model_logits(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A saved model's logits and the labels on the digits test split (its own processor, one forward)."""
    from hf_fairkd.data import load_long_tailed
    from hf_fairkd.run.preprocessing import with_image_transform

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    test = load_long_tailed("digits")["test"]
    batch = with_image_transform(test, AutoImageProcessor.from_pretrained(folder), "image", "label")
    batch = batch[: len(test)]
    with torch.no_grad():
        return model(pixel_values=batch["pixel_values"]).logits.numpy(), batch["labels"].numpy()


def test_cli_reports_bad_input_as_a_one_line_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "distill_vit.py"), "--output_dir", str(tmp_path / "o"), "--alpha", "3"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "error: alpha must be in [0, 1]" in result.stderr
    assert "Traceback" not in result.stderr


def test_save_steps_alone_writes_checkpoints(tmp_path):
    out = tmp_path / "teacher"
    argv = [*TINY, "--output_dir", str(out), "--save_steps", "3", "--eval_steps", "3"]
    load_recipe("train_teacher").main(argv)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "eval_loss" in h] == [3, 6]  # evaluated on the holdout
    assert AutoModelForImageClassification.from_pretrained(out / "checkpoint-3").config.num_labels == 10


# ------------------------------------------------------------------- two processes on a machine without GPU
@pytest.mark.distributed
@pytest.mark.slow  # the recipe end to end on two processes; the trainer on two processes: tests/test_distributed.py
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback is for machines without a GPU")
def test_multi_gpu_launch_without_gpu_trains_on_two_cpu_processes(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(port), str(ROOT / "recipes" / "distill_vit.py"), *TINY,
           "--output_dir", str(out)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stderr.count("Launched as 2 processes on a machine without a GPU: use_cpu set to true") == 1
    saved = json.loads((out / "subgroup_metrics.json").read_text())
    assert saved["settings"]["world_size"] == 2  # not two processes each training alone
    assert sum(row["support"] for row in saved["student"]["per_class"]) == 300  # gathered once, no padding
    assert json.loads((out / "run_config.json").read_text())["DistillationArguments"]["use_cpu"] is True


@pytest.mark.parametrize(
    ("flags", "refused"),
    [
        ({"--objective": "balanced_kd"}, True),
        ({"--objective": "kd", "--teacher_objective": "dro"}, True),
        ({"--objective": "kd", "--teacher_objective": "erm"}, False),
    ],
)
def test_recipe_checks_refuse_empty_classes_before_any_training(tmp_path, flags, refused):
    """A class with no training rows is refused by the recipe's up-front checks when an objective the recipe
    will train reads the class prior (the trainer would refuse it only at its own stage, after others trained)."""
    from types import SimpleNamespace

    from hf_fairkd import DistillationArguments
    from hf_fairkd.run.preparation import check_objectives

    info = SimpleNamespace(
        train_counts=[30, 0, 5], holdout_counts=[2, 2, 2], class_names=["cat", "okapi", "dog"]
    )
    args = DistillationArguments(output_dir=str(tmp_path), objective=flags["--objective"], report_to=[])
    if refused:
        with pytest.raises(ValueError, match=r"no training rows: \['okapi'\]"):
            check_objectives(flags, args, info)
    else:
        check_objectives(flags, args, info)
    empty_holdout = SimpleNamespace(**{**vars(info), "holdout_counts": [0, 0, 0]})
    with pytest.raises(ValueError, match="--objective robust_kd needs a holdout"):
        check_objectives({"--objective": "robust_kd"}, args, empty_holdout)


# ------------------------------------------------------------------ any architecture; a finished baseline reused
def test_reused_baseline_is_not_trained_again_and_reports_the_same(tmp_path, distilled, caplog):
    run, _ = distilled
    out = tmp_path / "out"
    argv = [*TINY, "--output_dir", str(out), "--teacher_model_name_or_path", str(run / "teacher"),
            "--baseline_model_name_or_path", str(run / "baseline")]  # fmt: skip
    with caplog.at_level("INFO"):
        metrics = load_recipe("distill_vit").main(argv)
    assert not (out / "baseline").exists()  # no baseline trained here
    assert (
        "Training the one-hot baseline" not in caplog.text and "Reusing the one-hot baseline" in caplog.text
    )
    first = json.loads((run / "subgroup_metrics.json").read_text())
    again = json.loads((out / "subgroup_metrics.json").read_text())
    assert again["baseline"] == first["baseline"]
    assert metrics["settings"]["baseline_model"] == "reused: baseline"  # its folder's name, not its path
    assert first["settings"]["baseline_model"] == "trained here (objective ce)"
    assert "**One-hot baseline:** reused: baseline." in (out / "README.md").read_text()


def stage_marker(argv: list[str], stage: str) -> dict:
    """The stage_complete.json fingerprint a run with ``argv`` writes into its ``stage`` folder."""
    from hf_fairkd.run import arguments, distill, preparation, resume

    defaults = load_recipe("distill_vit").DEFAULT_OBJECTIVE
    model_args, data_args, args, _ = arguments.parse_recipe_args(argv=argv, **defaults)
    info = preparation.load_data(data_args, args.group_columns, args.max_group_values)[1]
    if stage == "teacher":
        stage_args = distill.teacher_stage_args(model_args, args)
    else:
        stage_args = distill.baseline_stage_args(args)
    return resume.stage_fingerprint(stage, stage_args, model_args, info.to_dict())


def test_resume_into_a_finished_stage_of_other_settings_is_refused_before_training(tmp_path, monkeypatch):
    from hf_fairkd.run import distill

    recipe = load_recipe("distill_vit")
    trained = []
    monkeypatch.setattr(distill.stages, "train_stage", lambda *a, **k: trained.append(a) or 1 / 0)
    out = tmp_path / "out"
    argv = [*TINY, "--output_dir", str(out), "--teacher_signal", "online"]  # (no teacher cache to build)
    (out / "teacher").mkdir(parents=True)
    marker = stage_marker([*argv, "--learning_rate", "0.01", "--teacher_objective", "dro"], "teacher")
    (out / "teacher" / "stage_complete.json").write_text(json.dumps(marker))
    with pytest.raises(ValueError) as err:
        recipe.main([*argv, "--resume_from_checkpoint", "true"])
    message = str(err.value)
    assert f"the finished teacher stage in {out / 'teacher'} was trained with other settings" in message
    assert 'objective "dro" there, "erm" here' in message
    assert "training.learning_rate 0.01 there, 0.002 here" in message
    assert "Resume with the original flags, or pass --overwrite_output_dir" in message
    assert not trained  # refused before any stage trained
    # the same settings pass the check (the teacher is reused; here the baseline then "trains" and fails)
    (out / "teacher" / "stage_complete.json").write_text(json.dumps(stage_marker(argv, "teacher")))
    monkeypatch.setattr(distill, "load_teacher", lambda path: path)
    with pytest.raises(ZeroDivisionError):
        recipe.main([*argv, "--resume_from_checkpoint", "true"])
    assert [a[1].output_dir for a in trained] == [str(out / "baseline")]
    # without --resume_from_checkpoint the marker is not read: the run refuses the non-empty folder as before
    with pytest.raises(ValueError, match="already holds a run"):
        recipe.main(argv)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--imbalance_factor", "5"],
            r"other data than this run's \(imbalance_factor 10.0 there, 5.0 here; long_tail_counts \[144",
        ),
        (["--image_size", "12"], "preprocessed otherwise"),
    ],
    ids=["other_data", "other_image_size"],
)
def test_reused_baseline_of_other_data_is_refused_before_training(tmp_path, distilled, extra, message):
    run, _ = distilled
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        load_recipe("distill_vit").main(
            [*TINY, "--output_dir", str(out), "--baseline_model_name_or_path", str(run / "baseline"), *extra]
        )
    assert not (out / "teacher").exists()


TINY_RESNET = {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1],
               "layer_type": "basic"}  # fmt: skip


def test_fresh_cnn_student_from_a_config_end_to_end(tmp_path):
    config = tmp_path / "resnet.json"
    config.write_text(json.dumps(TINY_RESNET))
    out = tmp_path / "out"
    metrics = load_recipe("distill_vit").main(
        [
            *TINY,
            "--output_dir",
            str(out),
            "--student_config_name",
            str(config),
            "--student_config_overrides",
            '{"hidden_sizes": [8, 12]}',
        ]  # fmt: skip
    )
    student = AutoModelForImageClassification.from_pretrained(out)
    assert type(student).__name__ == "ResNetForImageClassification" and student.config.hidden_sizes == [8, 12]
    assert list(student.config.id2label.values()) == metrics["class_names"]
    baseline = AutoModelForImageClassification.from_pretrained(out / "baseline")
    assert type(baseline).__name__ == "ResNetForImageClassification"  # the baseline is the same architecture
    assert (
        type(AutoModelForImageClassification.from_pretrained(out / "teacher")).__name__
        == "ViTForImageClassification"
    )
    # the config file by its own name, not its path
    expected = 'fresh from config resnet.json with {"hidden_sizes": [8, 12]}'
    assert metrics["settings"]["student_model"] == expected


@pytest.mark.parametrize(
    "flag, fields, message",
    [
        (
            "--student_config_name",
            {"model_type": "bert"},
            "'bert' config, which AutoModelForImageClassification",
        ),
        (
            "--teacher_config_name",
            {"model_type": "gpt2"},
            "'gpt2' config, which AutoModelForImageClassification",
        ),
    ],
    ids=["student", "teacher"],
)
def test_config_that_is_not_an_image_classifier_fails_before_training(tmp_path, flag, fields, message):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(fields))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        load_recipe("distill_vit").main([*TINY, "--output_dir", str(out), flag, str(config)])
    assert not (out / "teacher").exists() and not (out / "baseline").exists()


# ------------------------------------------------------------------- a teacher with its own image processor
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def save_teacher_with_own_processor(folder: Path, seed: int = 3) -> Path:
    """A ViT teacher at 16x16 with ImageNet mean/std (the student of TINY: 8x8, mean/std 0.5), saved with its
    processor. Untrained, with a scaled-up head so that its predictions vary: its accuracy is what it is."""
    try:  # the PIL backend (transformers >= 5.x); the lowest admitted 5.0 has only ViTImageProcessor
        from transformers import ViTImageProcessorPil
    except ImportError:
        from transformers import ViTImageProcessor as ViTImageProcessorPil

    from hf_fairkd.data import load_long_tailed
    from hf_fairkd.run.models import build_vit

    names = load_long_tailed("digits")["train"].features["label"].names
    teacher = build_vit(
        names, hidden_size=16, num_layers=1, num_heads=2, image_size=16, patch_size=4, seed=seed
    )
    with torch.no_grad():
        teacher.classifier.weight.mul_(20)
    teacher.save_pretrained(folder)
    size = {"height": 16, "width": 16}
    ViTImageProcessorPil(size=size, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD).save_pretrained(folder)
    return folder


def test_teacher_with_its_own_processor_and_resolution_is_evaluated_cached_and_distilled_from_its_inputs(
    tmp_path, monkeypatch
):
    from hf_fairkd.data import load_long_tailed
    from hf_fairkd.run import stages
    from hf_fairkd.teacher import teacher_cache_info

    folder = save_teacher_with_own_processor(tmp_path / "teacher")
    records, cache_signal = [], stages.cache_teacher_signal

    def recording(splits, teacher, processor, batch_size):
        cache_signal(splits, teacher, processor, batch_size)
        records.append(teacher_cache_info(splits["train"]))

    monkeypatch.setattr(stages, "cache_teacher_signal", recording)
    out = tmp_path / "out"
    argv = [*TINY, "--output_dir", str(out), "--objective", "kd", "--teacher_model_name_or_path", str(folder)]
    metrics = load_recipe("distill_vit").main(argv)

    # the teacher evaluated alone, with its own processor (AutoImageProcessor) and one forward
    own = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    test = load_long_tailed("digits")["test"]
    pixel_values = own([image.convert("RGB") for image in test["image"]], return_tensors="pt")["pixel_values"]
    assert pixel_values.shape[-2:] == (16, 16)
    with torch.no_grad():
        predictions = model(pixel_values=pixel_values).logits.argmax(-1).numpy()
    labels = np.asarray(test["label"])
    assert metrics["teacher"]["accuracy"] == pytest.approx(float(np.mean(predictions == labels)), abs=1e-12)
    correct = [int(np.sum((predictions == labels) & (labels == c))) for c in range(10)]
    assert [row["correct"] for row in metrics["teacher"]["per_class"]] == correct
    # the cache was built from the teacher's inputs and its record names the teacher's preprocessing
    assert len(records) == 1 and records[0]["preprocessing_id"] == own.to_json_string()
    assert json.loads(records[0]["preprocessing_id"])["image_mean"] == IMAGENET_MEAN
    # the student keeps its own preprocessing
    saved = AutoImageProcessor.from_pretrained(out)
    assert saved.size == {"height": 8, "width": 8} and list(saved.image_mean) == [0.5] * 3
    assert metrics["settings"]["teacher_objective"] is None  # a folder without an hf-fairkd record


def test_online_teacher_receives_its_own_pixel_values_and_the_student_its_own(tmp_path):
    """With augmentation (online teacher), the teacher's forward gets 16x16 teacher_pixel_values, the student's
    8x8 pixel_values, both from the same augmented view of each image."""
    import random

    from hf_fairkd import DistillationArguments, DistillationTrainer
    from hf_fairkd.data import load_long_tailed
    from hf_fairkd.run.arguments import ModelArguments
    from hf_fairkd.run.models import build_vit
    from hf_fairkd.run.preprocessing import (
        make_image_processor,
        teacher_image_processor,
        with_image_transform,
    )

    folder = save_teacher_with_own_processor(tmp_path / "teacher")
    model_args = ModelArguments(image_size=8, teacher_model_name_or_path=str(folder))
    processor = make_image_processor(model_args)
    teacher_processor = teacher_image_processor(model_args, processor)
    assert teacher_processor.size == {"height": 16, "width": 16}
    raw = load_long_tailed("digits")["train"]
    # one augmentation per image, then each processor: a processor equal to the student's gives equal tensors
    same = type(processor).from_dict(processor.to_dict())
    random.seed(0)
    rows = with_image_transform(raw, processor, "image", "label", augment=True, teacher_processor=same)[:32]
    assert torch.equal(rows["pixel_values"], rows["teacher_pixel_values"])

    train = with_image_transform(
        raw, processor, "image", "label", augment=True, teacher_processor=teacher_processor
    )
    names = raw.features["label"].names
    student = build_vit(names, hidden_size=16, num_layers=1, num_heads=2, image_size=8, patch_size=4, seed=0)
    teacher = AutoModelForImageClassification.from_pretrained(folder)
    seen = {"student": [], "teacher": []}
    for role, model in (("student", student), ("teacher", teacher)):
        model.register_forward_pre_hook(
            lambda _m, _a, kwargs, role=role: seen[role].append(
                sorted(kwargs) + [tuple(kwargs["pixel_values"].shape)]
            ),
            with_kwargs=True,
        )
    args = DistillationArguments(
        output_dir=str(tmp_path / "out"), objective="kd", max_steps=2, per_device_train_batch_size=8,
        report_to=[], remove_unused_columns=False, save_strategy="no", disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student, args=args, teacher=teacher, train_dataset=train, class_counts=[1] * len(names)
    )
    trainer.train()
    assert seen["student"] == [["pixel_values", (8, 3, 8, 8)]] * 2
    assert seen["teacher"] == [["pixel_values", (8, 3, 16, 16)]] * 2


def test_teacher_without_its_image_processor_is_refused_before_training(tmp_path):
    from hf_fairkd.run.arguments import ModelArguments
    from hf_fairkd.run.preprocessing import make_image_processor, teacher_image_processor

    folder = save_teacher_with_own_processor(tmp_path / "teacher")
    (folder / "preprocessor_config.json").rename(tmp_path / "preprocessor_config.json")
    out = tmp_path / "out"
    with pytest.raises(
        ValueError,
        match=r"teacher's image processor could not be loaded from .*teacher.*--teacher_image_processor_name",
    ):
        load_recipe("distill_vit").main(
            [*TINY, "--output_dir", str(out), "--teacher_model_name_or_path", str(folder)]
        )
    assert not (out / "baseline").exists()
    # the fix: name the processor's folder (or Hub id)
    model_args = ModelArguments(
        teacher_model_name_or_path=str(folder), teacher_image_processor_name=str(tmp_path)
    )
    assert teacher_image_processor(model_args, make_image_processor(model_args)).size == {
        "height": 16,
        "width": 16,
    }


# ---------------------------------------------------------------------------- your data, as it is (natural)
NATURAL_COUNTS = [136, 127, 93, 68, 58, 37, 34, 23, 14, 11]


def naturally_imbalanced_folder(root: Path, counts=NATURAL_COUNTS) -> Path:
    """One sub-folder of tiny 8x8 PNGs per class; class i has ``counts[i]`` images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, count in enumerate(counts):
        (root / f"class_{i}").mkdir(parents=True)
        for j in range(count):
            pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) // 4 + 20 * i
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"class_{i}" / f"{j}.png")
    return root


def test_naturally_imbalanced_image_folder_trains_as_it_is(tmp_path, caplog):
    folder = naturally_imbalanced_folder(tmp_path / "flowers")
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="hf_fairkd.run.distill"):
        load_recipe("distill_vit").main([*TINY, "--output_dir", str(out), "--dataset_name", str(folder)])
    saved = json.loads((out / "subgroup_metrics.json").read_text())
    test = [max(1, int(0.2 * c + 0.5)) for c in NATURAL_COUNTS]  # stratified 20% test split, >= 1 per class
    holdout = [1] * 10  # min(10, rarest training class // 5), at least 1
    assert saved["train_counts"] == [c - t - h for c, t, h in zip(NATURAL_COUNTS, test, holdout)]
    assert saved["dataset"]["profile"] == "natural"
    assert saved["dataset"]["test_counts"] == test and saved["dataset"]["holdout_counts"] == holdout
    assert saved["dataset"]["test_carved"] == {"kind": "stratified", "fraction": 0.2, "min_per_class": 1}
    assert saved["dataset"]["imbalance_factor"] == pytest.approx(109 / 9)  # measured, before the holdout
    assert [row["support"] for row in saved["student"]["per_class"]] == test
    card = (out / "README.md").read_text()
    assert "used as it is (the natural profile)" in card and "every training image was kept" in card
    assert "A stratified test split carved from the training images" in card and "20% of each class" in card
    assert "made long-tailed" not in card
    assert "natural profile: your data as it is, 470 training rows" in caplog.text


def test_natural_profile_with_an_imbalance_factor_is_refused_before_loading(tmp_path):
    out = tmp_path / "out"
    argv = [*TINY, "--output_dir", str(out), "--long_tail_profile", "natural", "--imbalance_factor", "3"]
    with pytest.raises(ValueError, match="natural profile keeps every training row.*no imbalance factor"):
        load_recipe("distill_vit").main(argv)
    assert not (out / "baseline").exists()


def test_class_too_small_for_the_natural_holdout_and_test_is_named(tmp_path):
    folder = naturally_imbalanced_folder(tmp_path / "imgs", [30, 20, 2])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"too small for the natural profile: 'class_2' \(2 rows, needs 3\)"):
        load_recipe("distill_vit").main([*TINY, "--output_dir", str(out), "--dataset_name", str(folder)])
    assert not (out / "baseline").exists()


def test_train_teacher_from_a_cnn_config(tmp_path, caplog):
    config = tmp_path / "resnet.json"
    config.write_text(json.dumps(TINY_RESNET))
    out = tmp_path / "teacher"
    with caplog.at_level("INFO"):
        load_recipe("train_teacher").main(
            [*TINY, "--output_dir", str(out), "--teacher_config_name", str(config)]
        )
    teacher = AutoModelForImageClassification.from_pretrained(out)
    assert type(teacher).__name__ == "ResNetForImageClassification" and teacher.config.num_labels == 10
    assert "Training a teacher, fresh from config resnet.json, with objective erm" in caplog.text


def height_width(processor) -> tuple:
    return processor.size["height"], processor.size["width"]


def test_teacher_trained_here_at_its_own_resolution(tmp_path, monkeypatch):
    """--teacher_image_size 16 with an 8x8 student: the teacher is a 16x16 ViT trained on 16x16 views (a ViT
    refuses other sizes), saved with a 16x16 processor, evaluated through it, and run online on 16x16 views of
    the student's augmented images; the student keeps 8x8."""
    from hf_fairkd import trainer as trainer_module
    from hf_fairkd.data import load_long_tailed

    out = tmp_path / "out"
    argv = [*TINY, "--output_dir", str(out), "--objective", "kd", "--teacher_image_size", "16",
            "--augment", "true"]  # fmt: skip
    seen = []
    recipe = load_recipe("distill_vit")

    train = trainer_module.DistillationTrainer.train

    def recording_train(self, *args, **kwargs):  # every model trained in the run: its input shape
        self.model.register_forward_pre_hook(
            lambda _m, _a, kw: seen.append((self.args.output_dir, tuple(kw["pixel_values"].shape[-2:]))),
            with_kwargs=True,
        )
        return train(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.DistillationTrainer, "train", recording_train)
    metrics = recipe.main(argv)

    teacher_dir = out / "teacher"
    own = AutoImageProcessor.from_pretrained(teacher_dir)
    assert height_width(own) == (16, 16)
    assert height_width(AutoImageProcessor.from_pretrained(out)) == (8, 8)
    teacher = AutoModelForImageClassification.from_pretrained(teacher_dir).eval()
    assert teacher.config.image_size == 16
    sizes = {os.path.basename(folder): {s for f, s in seen if f == folder} for folder, _ in seen}
    assert sizes["teacher"] == {(16, 16)} and sizes["baseline"] == {(8, 8)}
    assert {s for f, s in seen if f == str(out)} == {(8, 8)}  # the distilled student
    # augmented online: every training batch of the student ran the teacher (6 steps), none came from a cache
    assert metrics["settings"]["teacher_batches"] == {"train_online": 6}
    # the reported teacher accuracy is the saved teacher's through its own processor
    test = load_long_tailed("digits")["test"]
    pixels = own([image.convert("RGB") for image in test["image"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        predictions = teacher(pixel_values=pixels).logits.argmax(-1).numpy()
    accuracy = float(np.mean(predictions == np.asarray(test["label"])))
    assert metrics["teacher"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)


def test_teacher_image_size_needs_a_fixed_size_processor():
    from transformers import ConvNextImageProcessor

    from hf_fairkd.run.arguments import ModelArguments
    from hf_fairkd.run.preprocessing import make_image_processor, resized_processor, teacher_image_processor

    processor = make_image_processor(ModelArguments(image_size=8))
    assert teacher_image_processor(ModelArguments(image_size=8), processor) is processor
    assert teacher_image_processor(ModelArguments(image_size=8, teacher_image_size=8), processor) is processor
    resized = teacher_image_processor(ModelArguments(image_size=8, teacher_image_size=12), processor)
    assert height_width(resized) == (12, 12) and height_width(processor) == (8, 8)
    assert {k: v for k, v in resized.to_dict().items() if k != "size"} == {
        k: v for k, v in processor.to_dict().items() if k != "size"
    }
    with pytest.raises(
        ValueError, match=r"--teacher_image_size 12: .*shortest_edge.*--teacher_model_name_or_path"
    ):
        resized_processor(ConvNextImageProcessor(size={"shortest_edge": 32}), 12)
    with pytest.raises(ValueError, match="positive"):
        resized_processor(processor, 0)


def test_teacher_image_size_is_part_of_the_teacher_stage_fingerprint():
    from hf_fairkd import DistillationArguments
    from hf_fairkd.run.arguments import ModelArguments
    from hf_fairkd.run.resume import stage_fingerprint

    args = DistillationArguments(output_dir="unused", report_to=[])
    plain = stage_fingerprint("teacher", args, ModelArguments(), {})
    assert "teacher_image_size" not in plain["model"]  # stages written before the flag still match
    sized = stage_fingerprint("teacher", args, ModelArguments(teacher_image_size=24), {})
    assert sized["model"]["teacher_image_size"] == 24 and sized != plain
    assert stage_fingerprint(
        "baseline", args, ModelArguments(teacher_image_size=24), {}
    ) == stage_fingerprint("baseline", args, ModelArguments(), {})


def test_train_teacher_refuses_teacher_image_size(tmp_path):
    with pytest.raises(ValueError, match="trains the teacher at --image_size; pass --image_size 16 instead"):
        load_recipe("train_teacher").main(
            [*TINY, "--output_dir", str(tmp_path / "t"), "--teacher_image_size", "16"]
        )
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    "flag, folder, message",
    [
        ("--teacher_model_name_or_path", "empty",
         r"Could not load the teacher: the folder '.*empty' holds no saved model \(no config.json; it holds "
         r"nothing\)\. Pass the folder a teacher was saved in"),
        ("--teacher_model_name_or_path", "outputs/run/teachr",
         r"Could not load the teacher: there is no folder '.*outputs/run/teachr'.*Pass the folder"),
        ("--baseline_model_name_or_path", "empty", r"holds no saved model \(no config.json"),
    ],
)  # fmt: skip
def test_a_model_folder_that_is_missing_or_empty_is_named_as_such(tmp_path, flag, folder, message):
    path = tmp_path / folder
    if folder == "empty":
        path.mkdir()
    argv = [*TINY, flag, str(path), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(ValueError, match=message):
        load_recipe("distill_vit").main(argv)
    assert not (tmp_path / "o" / "teacher").exists()


def test_overwrite_with_a_given_teacher_removes_the_earlier_runs_teacher_folder(tmp_path, distilled):
    run, _ = distilled
    out = tmp_path / "out"
    (out / "teacher").mkdir(parents=True)
    (out / "teacher" / "config.json").write_text("{}")  # an earlier run's teacher, not this run's
    (out / "notes.txt").write_text("mine")
    argv = [*TINY, "--output_dir", str(out), "--overwrite_output_dir", "true",
            "--teacher_model_name_or_path", str(run / "teacher")]  # fmt: skip
    load_recipe("distill_vit").main(argv)
    assert not (out / "teacher").exists()  # the card names the given teacher: no other teacher/ beside it
    assert (out / "notes.txt").read_text() == "mine"  # nothing but the stage folder is removed
    assert (out / "baseline" / "stage_complete.json").exists()
