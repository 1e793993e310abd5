"""The README's Python quick start (examples/quickstart_groups.py) runs, and what it reads back is the groups'
report: every class x colour cell of the spurious digits with its test support, and a worst cell that is the
lowest of them with its simultaneous interval around it."""

import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLE))
import quickstart_groups  # noqa: E402


def test_quickstart_trains_and_reads_back_the_groups(tmp_path):
    report = quickstart_groups.main(steps=8, output_dir=str(tmp_path / "out"))
    cells = report["groups"]["class&colour"]
    assert len(cells["by_group"]) == 20  # 10 digits x 2 colours, each with test rows
    assert all(cell["support"] == 15 for cell in cells["by_group"].values())
    # training counts: 95% of each class in its majority colour
    assert cells["by_group"]["0&red"]["train_count"] > 10 * cells["by_group"]["0&green"]["train_count"]
    worst = min(cells["by_group"].values(), key=lambda cell: cell["accuracy"])
    assert cells["worst_group_accuracy"] == pytest.approx(worst["accuracy"])
    low, high = cells["worst_group_accuracy_ci"]
    assert low <= cells["worst_group_accuracy"] <= high
    assert (tmp_path / "out" / "teacher").is_dir()
