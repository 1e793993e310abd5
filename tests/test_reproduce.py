"""The CIFAR-10-LT reproduction script and its table, end to end on a tiny synthetic CIFAR-like dataset.

The dataset is built here with the Hub CIFAR layout (plain_text/{train,test}-*.parquet, an ``img`` Image
column and a ``label`` ClassLabel column of the 10 CIFAR names), so the script's data path is exercised
without reading anything outside the test's tmp_path.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

REPO = Path(__file__).resolve().parent.parent
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
N_MAX, RHO, TEST_PER_CLASS = 30, 10.0, 5
TINY_RESNET = {
    "model_type": "resnet",
    "depths": [1, 1],
    "layer_type": "basic",
    "downsample_in_first_stage": False,
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _split(per_class: int, seed: int) -> Dataset:
    """Random 32x32 PNGs whose mean colour depends on the class (so a model can learn something)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(10):
        for _ in range(per_class):
            pixels = rng.integers(0, 100, size=(32, 32, 3)) + np.array([label * 15, 0, 150 - label * 15])
            buffer = io.BytesIO()
            PILImage.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
            labels.append(label)
    features = Features({"img": Image(), "label": ClassLabel(names=CIFAR_NAMES)})
    return Dataset.from_dict({"img": images, "label": labels}, features=features)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    data = root / "cifar_like" / "plain_text"
    data.mkdir(parents=True)
    _split(N_MAX, seed=0).to_parquet(str(data / "train-00000-of-00001.parquet"))
    _split(TEST_PER_CLASS, seed=1).to_parquet(str(data / "test-00000-of-00001.parquet"))
    output = root / "out" / "cifar10_lt.json"
    configs = {}
    for role, width in (("student", 4), ("teacher", 8)):
        configs[role] = root / f"{role}.json"
        configs[role].write_text(
            json.dumps({**TINY_RESNET, "embedding_size": width, "hidden_sizes": [width] * 2})
        )
    # fmt: off
    argv = [
        "--dataset_name", str(root / "cifar_like"), "--output", str(output), "--work_dir", str(root / "work"),
        "--imbalance_factor", str(RHO), "--holdout_per_class", "1", "--seeds", "0", "--tradeoffs", "0", "1",
        "--robust_tradeoff", "1", "--student_epochs", "1", "--teacher_epochs", "1",
        "--student_config", str(configs["student"]), "--teacher_config", str(configs["teacher"]),
        "--image_size", "16", "--teacher_image_size", "24", "--batch_size", "32",
    ]
    # fmt: on
    _load("reproduce_cifar10_lt").main(argv)
    with open(output, encoding="utf-8") as f:
        return json.load(f), output, argv


def test_json_structure_and_plan(results):
    data, *_ = results
    assert set(data) == {"runs", "config", "machine"}
    runs, config = data["runs"], data["config"]
    assert [r["name"] for r in runs] == config["planned_runs"] and config["missing_runs"] == []
    teachers = [r for r in runs if r["objective"] == "teacher"]
    assert sorted(r["params"]["teacher_objective"] for r in teachers) == ["balanced", "dro", "erm"]
    students = {
        (r["teacher"], r["objective"], r["params"].get("dro_tradeoff")) for r in runs if r not in teachers
    }
    expected = {
        (None, "ce", None),
        ("erm", "kd", None),
        ("erm", "ada_alpha", None),
        ("erm", "ada_margin", None),
        ("erm", "label_smoothing", None),
        ("erm", "kd_pt", None),
        ("erm", "kd_sim", None),
    }
    expected |= {("erm", "balanced_kd", None), ("erm", "robust_kd", 0.0), ("erm", "robust_kd", 1.0)}
    expected |= {(t, o, b) for t in ("balanced", "dro") for o, b in (("kd", None), ("robust_kd", 1.0))}
    assert students == expected
    conventions = sorted(r["params"]["kd_convention"] for r in runs if r["name"].startswith("erm/kd/"))
    assert conventions == ["hinton", "mix"]  # kd in both conventions
    for run in runs:
        assert run["seed"] == 0 and run["wall_seconds"] >= 0
        assert (run["teacher"] is None) == (run["objective"] == "ce")
    # the exp profile, minus one holdout row per class; the test split untouched
    profile = [math.floor(N_MAX * RHO ** (-i / 9)) for i in range(10)]
    assert config["dataset"]["train_counts"] == [n - 1 for n in profile]
    assert config["dataset"]["holdout_counts"] == [1] * 10
    assert config["test_examples"] == 10 * TEST_PER_CLASS and config["test_subset"] is False


def test_every_run_has_a_per_class_report_and_paired_delta(results):
    data, *_ = results
    ce = next(r for r in data["runs"] if r["objective"] == "ce")
    ce_acc = [row["accuracy"] for row in ce["report"]["per_class"]]
    for run in data["runs"]:
        per_class = run["report"]["per_class"]
        assert [row["name"] for row in per_class] == CIFAR_NAMES
        assert all(row["support"] == TEST_PER_CLASS for row in per_class)
        predictions = np.array([int(c) for c in run["predictions"]])
        assert run["report"]["accuracy"] == pytest.approx(np.mean(predictions == np.repeat(np.arange(10), 5)))
        if run["objective"] == "ce":
            assert run["delta_vs_ce"] is None
            continue
        # paired delta = per-class accuracy difference against the same seed's one-hot student
        deltas = [row["delta"] for row in run["delta_vs_ce"]]
        assert deltas == pytest.approx([row["accuracy"] - a for row, a in zip(per_class, ce_acc)])


def test_teachers_have_calibration(results):
    """Each teacher's log-loss and ECE equal those recomputed here from its saved weights on the test split,
    preprocessed by a processor of the teachers' own resolution (24, the student's is 16)."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hf_fairkd.run.arguments import ModelArguments
    from hf_fairkd.run.preprocessing import make_image_processor

    data, output, _ = results
    test = Dataset.from_parquet(
        str(output.parents[1] / "cifar_like" / "plain_text" / "test-00000-of-00001.parquet")
    )
    processor = make_image_processor(ModelArguments(image_size=24))
    pixels = processor([im.convert("RGB") for im in test["img"]], return_tensors="pt")["pixel_values"]
    labels = np.array(test["label"])
    teachers = [r for r in data["runs"] if r["objective"] == "teacher"]
    assert len(teachers) == 3
    for run in teachers:
        folder = output.parents[1] / "work" / f"teacher_{run['teacher']}"
        model = AutoModelForImageClassification.from_pretrained(folder)
        assert AutoImageProcessor.from_pretrained(folder).to_dict() == processor.to_dict()  # saved with it
        with torch.no_grad():
            logits = model.eval()(pixel_values=pixels).logits.double()
        probs = torch.softmax(logits, -1).numpy()
        assert "".join(str(p) for p in probs.argmax(-1)) == run["predictions"]  # the same model and inputs
        cal = run["calibration"]
        assert cal["log_loss"] == pytest.approx(
            -np.mean(np.log(probs[np.arange(len(labels)), labels])), rel=1e-5
        )
        assert cal["ece"] == pytest.approx(top_label_ece(probs, labels, bins=cal["n_bins"]), abs=1e-6)
        assert len(cal["per_class_calibration_error"]) == 10
        assert cal["worst_class_calibration_error"] == max(cal["per_class_calibration_error"])


def test_robust_kd_at_b0_is_kd(results):
    """b = 0 with the prior as base gives class weights pi, so c = pi / pi = 1: exactly the kd student."""
    data, *_ = results
    kd = next(r for r in data["runs"] if r["name"] == "erm/kd/seed0")
    robust0 = next(r for r in data["runs"] if r["name"] == "erm/robust_kd/b=0/seed0")
    assert robust0["predictions"] == kd["predictions"]
    assert robust0["dro_class_weights"] == pytest.approx(np.array(ce_prior(data)), abs=1e-5)


def top_label_ece(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """ECE written out bin by bin: bins (k/B, (k+1)/B] of the top probability, a confidence of 0 in the first."""
    confidence, hit = probs.max(-1), probs.argmax(-1) == labels
    total = 0.0
    for k in range(bins):
        inside = (confidence > k / bins) & (confidence <= (k + 1) / bins) | ((k == 0) & (confidence == 0))
        if inside.any():
            total += inside.mean() * abs(hit[inside].mean() - confidence[inside].mean())
    return total


def ce_prior(data) -> list[float]:
    counts = np.array(data["config"]["dataset"]["train_counts"], dtype=float)
    return list(counts / counts.sum())


def test_table_and_plot_from_json_alone(results, tmp_path):
    data, output, _ = results
    md, png = tmp_path / "table.md", tmp_path / "pareto.png"
    _load("make_cifar10_lt_table").main(
        ["--input", str(output), "--output_md", str(md), "--output_png", str(png)]
    )
    text = md.read_text(encoding="utf-8")
    assert "| teacher → student |" in text and "## Teachers" in text and "## Reading" in text
    for label in (
        "| ce |",
        "| erm → kd (hinton) |",
        "| erm → kd (mix) |",
        "| erm → robust_kd (b=0) |",
        "| dro → robust_kd (b=1) |",
    ):
        assert label in text
    for teacher in ("erm", "balanced", "dro"):
        assert f"| {teacher} |" in text
    assert "teachers see 24x24 images, students 16x16" in text  # the provenance names both resolutions
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_skips_finished_runs_and_a_partial_study_lists_what_is_missing(results):
    """Each run has its own result file: a rerun trains nothing; a deleted one is the one run missing."""
    data, output, argv = results
    repro = _load("reproduce_cifar10_lt")
    runs_dir = Path(str(output.with_suffix("")) + "_runs")
    stamps = {p.name: p.stat().st_mtime_ns for p in runs_dir.glob("*.json")}
    assert len(stamps) == len(data["runs"])
    again = repro.main([*argv, "--max_runs", "0"])
    assert {p.name: p.stat().st_mtime_ns for p in runs_dir.glob("*.json")} == stamps  # nothing retrained
    assert [r["name"] for r in again["runs"]] == [r["name"] for r in data["runs"]]
    gone = runs_dir / "erm_kd_pt_seed0.json"
    kept = gone.read_bytes()
    gone.unlink()
    try:
        partial = repro.main([*argv, "--max_runs", "0"])
        assert partial["config"]["missing_runs"] == ["erm/kd_pt/seed0"]
        assert "erm/kd_pt/seed0" not in {r["name"] for r in partial["runs"]}
    finally:
        gone.write_bytes(kept)


def test_workers_take_ready_runs_once_and_dead_claims_are_taken_over(tmp_path):
    import os
    import subprocess
    import sys

    plan_module = _load("cifar10_lt_plan")
    plan = plan_module.plan_runs(["erm", "dro"], [0, 1], [0.0, 1.0], 1.0, "hinton", "mix")
    keys = [plan_module.run_key(r) for r in plan]
    assert len(keys) == len(set(keys))
    assert keys[-1] == "dro/kd/seed1"  # the other teachers' kd with every seed, last
    assert [k for k in keys if k.startswith("dro/") and k != "dro/teacher/seed0"] == [
        "dro/kd/seed0",
        "dro/robust_kd/b=1/seed0",
        "dro/kd/seed1",
    ]
    assert keys[:3] == ["None/ce/seed0", "erm/teacher/seed0", "None/ce/seed1"]
    files = plan_module.RunFiles(tmp_path)
    first, _ = plan_module.next_run(plan, files)
    assert plan_module.run_key(first) == "None/ce/seed0"
    # a second worker: ce seed 1 (the teacher waits for ce seed 0, every student for the teacher)
    second, _ = plan_module.next_run(plan, files)
    assert plan_module.run_key(second) == "None/ce/seed1"
    assert plan_module.next_run(plan, files) == (None, True)
    (tmp_path / "None_ce_seed0.json").write_text(json.dumps({"name": "None/ce/seed0"}))
    files.release("None/ce/seed0")
    teachers = [plan_module.run_key(plan_module.next_run(plan, files)[0]) for _ in range(2)]
    assert teachers == ["erm/teacher/seed0", "dro/teacher/seed0"]
    # a claim whose process is gone is taken over
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / "None_ce_seed1.claim").write_text(dead.stdout.strip())
    assert files.claim("None/ce/seed1")
    assert (tmp_path / "None_ce_seed1.claim").read_text() == str(os.getpid())
    (tmp_path / "None_ce_seed0.claim").write_text(str(os.getppid()))  # a live process holds this one
    assert not files.claim("None/ce/seed0")
