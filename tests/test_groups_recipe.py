"""Groups that are attributes of the data, through the recipe: a user's image folder with class sub-folders and a
metadata.csv carrying two attribute columns trains, and the card, subgroup_metrics.json and load_subgroup_metrics
give per-group accuracy with intervals and verdicts equal to a recomputation from the saved student."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from test_recipes import TINY, load_recipe
from transformers import AutoImageProcessor, AutoModelForImageClassification


def write_folder(root: Path, per_class: int = 24, seed: int = 0) -> dict:
    """Three classes of 8x8 images; a 'site' (A/B, one row with a missing site) and a 'scanner' (1/2) column."""
    rng = np.random.default_rng(seed)
    rows = []
    for class_id, name in enumerate(["cat", "dog", "owl"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (8, 8), dtype=np.uint8)
            pixels[class_id * 2 : class_id * 2 + 3, :] = 220  # a learnable stripe per class
            file_name = f"{name}/{name}_{i:03d}.png"
            Image.fromarray(pixels).save(root / file_name)
            site = "" if (class_id, i) == (2, 0) else ("A" if i % 3 else "B")
            rows.append({"file_name": file_name, "site": site, "scanner": 1 + i % 2})
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file_name", "site", "scanner"])
        writer.writeheader()
        writer.writerows(rows)
    return {row["file_name"]: row for row in rows}


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder") / "images"
    metadata = write_folder(root)
    out = root.parent / "out"
    argv = [*TINY, "--dataset_name", str(root), "--group_columns", "site", "scanner", "--objective", "kd",
            "--output_dir", str(out)]  # fmt: skip
    metrics = load_recipe("distill_vit").main(argv)
    return root, out, metrics, metadata


def test_folder_with_metadata_trains_and_reports_every_group(grouped_run):
    _, out, metrics, _ = grouped_run
    saved = json.loads((out / "subgroup_metrics.json").read_text())
    assert saved["group_columns"] == ["site", "scanner"]
    student = saved["student"]["groups"]
    assert {"site", "scanner", "class&site", "class&scanner", "site&scanner"} <= set(student)
    assert set(student["site"]["by_group"]) <= {"A", "B", "(missing)"}
    for key, summary in student.items():
        supports = [g["support"] for g in summary["by_group"].values()]
        assert sum(supports) == saved["student"]["num_examples"], key  # every test row in exactly one group
    # training counts of the groups come from the data: they add up to the training rows
    assert sum(g["train_count"] for g in student["scanner"]["by_group"].values()) == sum(
        saved["train_counts"]
    )
    assert "student_minus_baseline_groups" in saved


def test_group_numbers_equal_a_recomputation_from_the_saved_student(grouped_run):
    from hf_fairkd import load_subgroup_metrics
    from hf_fairkd.data import load_long_tailed
    from hf_fairkd.run.preprocessing import with_image_transform

    root, out, metrics, metadata = grouped_run
    test = load_long_tailed(str(root), group_columns=["site", "scanner"])["test"]
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    batch = with_image_transform(test, processor, "image", "label")[: len(test)]
    with torch.no_grad():
        predicted = model(pixel_values=batch["pixel_values"]).logits.argmax(-1).numpy()
    right = predicted == batch["labels"].numpy()
    sites = ["(missing)" if not s else s for s in test["site"]]
    reported = metrics["student"]["groups"]["site"]
    for site in set(sites):
        rows = np.array([s == site for s in sites])
        k, n = int(right[rows].sum()), int(rows.sum())
        group = reported["by_group"][site]
        assert (group["support"], group["correct"]) == (n, k)
        # Clopper-Pearson from the beta quantiles, an independent formula
        low = 0.0 if k == 0 else stats.beta.ppf(0.025, k, n - k + 1)
        high = 1.0 if k == n else stats.beta.ppf(0.975, k + 1, n - k)
        assert group["ci_low"] == pytest.approx(low, abs=1e-9)
        assert group["ci_high"] == pytest.approx(high, abs=1e-9)
    worst = min(reported["by_group"], key=lambda g: (reported["by_group"][g]["accuracy"], g))
    assert reported["worst_group"] == worst
    # the card's data block gives back the same groups and verdicts (4 significant digits)
    back = load_subgroup_metrics(str(out))
    for site, group in reported["by_group"].items():
        assert back["student"]["groups"]["site"]["by_group"][site]["accuracy"] == pytest.approx(
            group["accuracy"], rel=1e-3
        )
    from hf_fairkd.metrics import group_verdicts

    assert group_verdicts(back["student_minus_baseline_groups"]) == group_verdicts(
        metrics["student_minus_baseline_groups"]
    )


def test_card_has_a_subgroups_section_per_column(grouped_run):
    _, out, _, _ = grouped_run
    card = (out / "README.md").read_text()
    assert "Subgroups" in card
    for column in ("site", "scanner"):
        assert column in card
    assert "Worst-group accuracy (site)" in card  # model-index entry


def test_missing_group_column_is_named_before_any_training(tmp_path):
    root = tmp_path / "images"
    write_folder(root, per_class=6)
    argv = [
        *TINY,
        "--dataset_name",
        str(root),
        "--group_columns",
        "hospital",
        "--output_dir",
        str(tmp_path / "o"),
    ]
    with pytest.raises(ValueError, match=r"hospital.*available columns.*site"):
        load_recipe("distill_vit").main(argv)
    assert not (tmp_path / "o" / "teacher").exists()


def test_dro_groups_without_group_columns_is_refused(tmp_path):
    """(The embedded digits default to their `stroke` groups: `--group_columns none` turns them off.)"""
    argv = [*TINY, "--objective", "robust_kd", "--dro_groups", "group", "--output_dir", str(tmp_path / "o"),
            "--group_columns", "none"]  # fmt: skip
    with pytest.raises(ValueError, match="--group_columns"):
        load_recipe("distill_vit").main(argv)


def test_the_embedded_digits_default_to_their_stroke_groups(tmp_path):
    """The default run has a group: the digits' `stroke` (an attribute of each image), unless told otherwise."""
    from hf_fairkd.data import load_digits_dataset
    from hf_fairkd.run.arguments import parse_recipe_args

    assert parse_recipe_args(argv=[])[2].group_columns == ["stroke"]
    assert parse_recipe_args(argv=["--group_columns", "none"])[2].group_columns is None
    assert parse_recipe_args(argv=["--dataset_name", str(tmp_path)])[2].group_columns is None  # yours: none
    digits = load_digits_dataset()["train"]
    bold = sum(s == "bold" for s in digits["stroke"]) / len(digits)
    assert set(digits["stroke"]) == {"bold", "regular"} and 0.2 < bold < 0.3  # the top quarter by ink


def test_robust_kd_over_class_x_group_cells_runs_on_the_spurious_digits(tmp_path):
    out = tmp_path / "o"
    argv = [*TINY, "--dataset_name", "digits_spurious", "--group_columns", "colour", "--objective", "robust_kd",
            "--dro_groups", "class_x_group", "--dro_update_every", "2", "--dro_group_adjustment", "1.0",
            "--output_dir", str(out)]  # fmt: skip
    metrics = load_recipe("distill_vit").main(argv)
    assert metrics["settings"]["objective_params"]["dro_groups"] == "class_x_group"
    cells = metrics["student"]["groups"]["class&colour"]["by_group"]
    assert len(cells) == 20 and all(cell["support"] > 0 for cell in cells.values())
