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
    "--teacher_hidden_size", "16", "--teacher_num_layers", "1", "--teacher_num_heads", "2",
    "--image_size", "8", "--patch_size", "4", "--disable_tqdm", "true", "--logging_steps", "2",
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
    assert metrics["settings"]["teacher_objective"] == "given"
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
