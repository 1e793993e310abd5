"""benchmarks/scale.py (issue #14, many classes and images) end to end at a tiny size in tmp_path: every stage
runs through the library's path, is timed and leaves what a reader needs to check that it really ran."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CLASSES, MAX_ROWS, MIN_ROWS, TEST_PER_CLASS, HOLDOUT = 30, 40, 4, 5, 1
STAGES = (
    "long_tail_build",
    "image_check",
    "teacher_cache_dense",
    "teacher_cache_topk",
    "train_epoch",
    "predict_test",
    "report_and_card",
)


def _load_scale():
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "benchmarks" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _planned_rows() -> int:
    """The exp profile written out here: n_i = floor(n_max * rho ** (-i / (m - 1))), rho = max / min."""
    rho = MAX_ROWS / MIN_ROWS
    return sum(math.floor(MAX_ROWS * rho ** (-i / (CLASSES - 1)) + 1e-6) for i in range(CLASSES))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    output = root / "scale.json"
    # fmt: off
    argv = [
        "--classes", str(CLASSES), "--max_rows_per_class", str(MAX_ROWS), "--min_rows_per_class", str(MIN_ROWS),
        "--test_per_class", str(TEST_PER_CLASS), "--holdout_per_class", str(HOLDOUT), "--image_size", "8",
        "--batch_size", "64", "--work_dir", str(root / "work"), "--output", str(output),
    ]
    # fmt: on
    returned = _load_scale().main(argv)
    written = json.loads(output.read_text())
    return returned, written, root


def test_json_has_every_key_and_stage(results):
    returned, written, _ = results
    assert written["status"] == "done" and written["stages_done"] == list(STAGES)
    for key in (
        "rows",
        "num_classes",
        "peak_rss_gb",
        "peak_rss",
        "goals",
        "goals_met",
        "machine",
        "generation",
    ):
        assert key in written, key
    for stage in STAGES:
        assert written[f"{stage}_seconds"] > 0, stage
        assert stage in written["stages"], stage
    assert written["goals"] == {"peak_rss_gb": "< 4", "report_and_card_seconds": "< 10"}
    assert set(written["goals_met"]) == set(written["goals"])
    assert 0 < written["peak_rss_gb"] == written["peak_rss"]["self_gb"]
    assert written["peak_rss"]["children_gb"] >= 0
    machine = written["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch_threads"] >= 1
    assert len(machine["load_average_before"]) == len(machine["load_average_after"]) == 3
    assert {"torch", "transformers", "datasets"} <= set(machine["versions"])
    assert written["generation"]["reused"] is False and written["generation"]["seconds"] >= 0
    assert returned["rows"] == written["rows"]


def test_rows_are_the_planned_long_tail(results):
    _, written, _ = results
    planned = _planned_rows()
    stage = written["stages"]["long_tail_build"]
    assert written["num_classes"] == CLASSES
    assert written["rows"] + CLASSES * HOLDOUT == planned  # the holdout is carved from the long tail
    assert stage["rows"] == {
        "train": written["rows"],
        "holdout": CLASSES * HOLDOUT,
        "test": CLASSES * TEST_PER_CLASS,
    }
    assert stage["long_tail_rows"] == planned and stage["long_tail_max_min"] == [MAX_ROWS, MIN_ROWS]
    assert stage["profile"] == "exp" and stage["imbalance_factor"] == MAX_ROWS / MIN_ROWS


def test_every_variant_really_ran(results):
    _, written, root = results
    stages = written["stages"]
    check = stages["image_check"]
    assert check["num_proc"]["train"] == check["num_proc_by_rule"]["train"] >= 1
    assert check["rows_decoded"] == written["rows"] + CLASSES * (HOLDOUT + TEST_PER_CLASS)
    assert check["pixel_values_shape"] == [3, 8, 8] and "pixels" in check["columns"]
    dense, topk = stages["teacher_cache_dense"], stages["teacher_cache_topk"]
    assert written["cache_file_backed"] is True and dense["file_backed"] and topk["file_backed"]
    assert dense["cache_columns"] == ["teacher_logits", "teacher_input_digest"] and dense["record_kind"] == "dense"
    assert set(topk["cache_columns"]) == {
        "teacher_topk_logits",
        "teacher_topk_indices",
        "teacher_tail_logsumexp",
        "teacher_input_digest",
    }
    assert topk["top_k"] == 10 and dense["num_classes"] == topk["num_classes"] == CLASSES
    assert dense["rows"] == topk["rows"] == written["rows"] and dense["bytes_on_disk"] > 0
    train = stages["train_epoch"]
    assert train["objective"] == "kd" and train["epochs"] == 1
    assert train["steps"] == math.ceil(written["rows"] / 64) and train["train_loss"] > 0
    assert stages["predict_test"]["logits_shape"] == [CLASSES * TEST_PER_CLASS, CLASSES]
    assert written["card_num_classes"] == CLASSES == stages["report_and_card"]["num_classes"]
    card = Path(stages["report_and_card"]["folder"])
    assert card.is_relative_to(root) and (card / "README.md").exists()
    assert (card / "per_class_accuracy.png").stat().st_size == stages["report_and_card"]["plot_bytes"] > 0
