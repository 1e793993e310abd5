"""The per-class accuracy plot: a valid, readable PNG written atomically."""

from __future__ import annotations

import os

import matplotlib.figure
import numpy as np
import pytest
from PIL import Image

from hf_fairkd.results import plot_per_class_accuracy

try:  # same import dance as conftest.py: `tests` is a namespace package from the repo root
    from tests.test_cards import CORRECT, holdout_record, make_metrics
except ImportError:
    from test_cards import CORRECT, holdout_record, make_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STUDENT_RGB, BASELINE_RGB, TEACHER_RGB = (0xD6, 0x27, 0x28), (0x1F, 0x77, 0xB4), (0x7F, 0x7F, 0x7F)


def _pixels_near(image: Image.Image, rgb: tuple[int, int, int], tol: int = 12) -> int:
    arr = np.asarray(image.convert("RGB")).astype(int)
    return int((np.abs(arr - np.array(rgb)).max(axis=2) <= tol).sum())


def test_plot_is_a_valid_png_of_sane_size(tmp_path):
    path = plot_per_class_accuracy(make_metrics(), tmp_path / "per_class_accuracy.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert 600 <= width <= 2000 and 400 <= height <= 1500 and width > height
        for rgb in (STUDENT_RGB, BASELINE_RGB, TEACHER_RGB):
            assert _pixels_near(image, rgb) > 200  # each model's markers and line are drawn
    assert os.listdir(tmp_path) == ["per_class_accuracy.png"]  # no temporary file left behind


def test_only_models_present_are_drawn(tmp_path):
    metrics = {k: v for k, v in make_metrics().items() if k not in ("teacher", "baseline")}
    path = plot_per_class_accuracy(metrics, tmp_path / "p.png")
    with Image.open(path) as image:
        assert _pixels_near(image, STUDENT_RGB) > 200
        assert (
            _pixels_near(image, BASELINE_RGB, tol=6) < 20
        )  # no baseline line (a few anti-aliased pixels at most)


def test_awkward_inputs_still_plot(tmp_path):
    # A class without test images (NaN accuracy), one with zero training images, mathtext-like names,
    # a very long name with a newline, and many classes (only a few get labels).
    names = [f"${i}$ class\nwith a very long name {'z' * 50}" for i in range(30)]
    counts = [int(1000 * 0.8**i) for i in range(30)]
    counts[-1] = 0
    correct = {k: [min(19, 5 + (i * 7) % 15) for i in range(30)] for k in CORRECT}
    support = [20] * 29 + [0]
    for key in correct:
        correct[key][-1] = 0
    metrics = make_metrics(names=names, correct=correct, support=support, train_counts=counts)
    path = plot_per_class_accuracy(metrics, tmp_path / "nested" / "p.png", title="A $title$ with\nnewline")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 600


def test_existing_plot_survives_a_failed_save(tmp_path, monkeypatch):
    target = tmp_path / "p.png"
    target.write_bytes(b"previous plot")

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as handle:
            handle.write(PNG_SIGNATURE + b"trunc")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_per_class_accuracy(make_metrics(), target)
    assert target.read_bytes() == b"previous plot" and os.listdir(tmp_path) == ["p.png"]


def test_missing_inputs_give_clear_errors(tmp_path):
    for record in ({}, {"teacher": {}}, {"student": {"accuracy": 0.5}}):
        with pytest.raises(ValueError, match="no 'student' \\(or 'teacher'\\) report with 'per_class' rows"):
            plot_per_class_accuracy(record, tmp_path / "p.png")
    metrics = make_metrics()
    metrics["train_counts"] = None
    for row in metrics["student"]["per_class"]:
        row["train_count"] = None
    with pytest.raises(ValueError, match="train_counts"):
        plot_per_class_accuracy(metrics, tmp_path / "nested" / "p.png")
    assert os.listdir(tmp_path) == []  # neither failing call wrote a file, a temporary or a folder


def test_plot_of_1000_classes_is_binned_by_training_count(tmp_path):
    """Past BIN_CLASSES_ABOVE classes the plot draws a mean per bin of training count, not one point per class."""
    from hf_fairkd.results.plots import BIN_CLASSES_ABOVE, NUM_BINS, count_bins

    try:
        from tests.test_cards import _long_tail_record
    except ImportError:
        from test_cards import _long_tail_record

    record = _long_tail_record()
    assert len(record["class_names"]) > BIN_CLASSES_ABOVE
    bins = count_bins(record["train_counts"])
    assert 1 < len(bins) <= NUM_BINS
    assert sorted(i for b in bins for i in b) == list(range(1000))  # every class in exactly one bin
    upper = [max(record["train_counts"][i] for i in b) for b in bins]
    lower = [min(record["train_counts"][i] for i in b) for b in bins]
    assert all(u < lo for u, lo in zip(upper, lower[1:]))  # rarest bin first, bins do not overlap
    path = plot_per_class_accuracy(record, tmp_path / "p.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]
        for rgb in (STUDENT_RGB, BASELINE_RGB, TEACHER_RGB):
            assert _pixels_near(image, rgb) > 200


def test_count_bins_of_equal_counts_is_one_bin():
    from hf_fairkd.results.plots import count_bins

    assert count_bins([7] * 100) == [list(range(100))]


# ---------------------------------------------------------------- shot groups, class names and intervals


def _drawn(metrics: dict, tmp_path, monkeypatch) -> matplotlib.figure.Figure:
    """The figure plot_per_class_accuracy saves (its file is written as usual)."""
    figures, save = [], matplotlib.figure.Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    plot_per_class_accuracy(metrics, tmp_path / "p.png")
    return figures[-1]


SHADES = {"few": "#f2dede", "medium": "#fcf8e3", "many": "#eef5ea"}  # the bands of the shot groups


def test_each_class_is_drawn_in_the_band_of_its_shot_group(tmp_path, monkeypatch):
    """24 training images before a 5-image holdout: the class is "medium" (20..100), so it is drawn at 24, in the
    medium band, not at its 19 training images inside the shaded "few" band."""
    from matplotlib.colors import to_hex

    long_tail = [500, 150, 60, 24, 12]
    record = holdout_record(long_tail, holdout=5, correct=[18, 17, 15, 12, 8])
    groups = {name: shot for shot, g in record["student"]["shot_groups"].items() for name in g["classes"]}
    assert groups["class_3"] == "medium" and record["train_counts"][3] == 19
    ax = _drawn(record, tmp_path, monkeypatch).axes[0]
    student = next(line for line in ax.get_lines() if line.get_color() == "#d62728")
    bands = {to_hex(p.get_facecolor()): p.get_path().get_extents(p.get_transform()) for p in ax.patches}
    for x in student.get_xdata():
        i = long_tail.index(round(x)) if round(x) in long_tail else record["train_counts"].index(round(x))
        shade = [c for c, box in bands.items() if box.x0 <= ax.transData.transform((x, 0))[0] <= box.x1]
        assert shade == [SHADES[groups[f"class_{i}"]]], (i, x)
    assert "before the holdout" in ax.get_xlabel()


@pytest.mark.parametrize("num_classes", [10, 12])
def test_every_class_is_named_and_no_two_names_overlap(tmp_path, monkeypatch, num_classes):
    """Ten classes with nearly the same count and accuracy: every point gets its name, none on top of another."""
    names = [f"class_{i}" for i in range(num_classes)]
    counts = [100 + i for i in range(num_classes)]
    metrics = make_metrics(names=names, correct={k: [10] * num_classes for k in CORRECT}, train_counts=counts)
    fig = _drawn(metrics, tmp_path, monkeypatch)
    ax, renderer = fig.axes[0], fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text().startswith("class_")]
    assert sorted(t.get_text() for t in labels) == sorted(names)
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if a.overlaps(b)]
    inside = ax.get_window_extent(renderer)
    assert all(
        inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1 for b in boxes
    )


def test_with_many_classes_the_worst_and_rarest_are_always_named(tmp_path, monkeypatch):
    """30 classes: only a few are named, but the two worst, the two rarest and the commonest always are, even when
    their points are next to each other."""
    names = [f"class_{i}" for i in range(30)]
    counts = [int(1000 * 0.85**i) for i in range(30)]
    correct = {k: [15] * 28 + [3, 2] for k in CORRECT}  # the two rarest are also the two worst
    fig = _drawn(make_metrics(names=names, correct=correct, train_counts=counts), tmp_path, monkeypatch)
    named = {t.get_text() for t in fig.axes[0].texts}
    assert {"class_28", "class_29", "class_0"} <= named


def test_per_class_intervals_are_drawn_as_error_bars(tmp_path, monkeypatch):
    """The student's exact (Clopper-Pearson) interval of each class, from its test support, as a vertical bar."""
    from scipy.stats import binomtest

    ax = _drawn(make_metrics(), tmp_path, monkeypatch).axes[0]
    bars = [c for c in ax.collections if len(c.get_segments()) == len(CORRECT["student"])]
    assert bars, "no error bars"
    counts = [500, 120, 60, 15, 5]
    segments = sorted((float(s[0][0]), float(s[0][1]), float(s[1][1])) for s in bars[0].get_segments())
    assert [x for x, _, _ in segments] == sorted(counts)
    for x, low, high in segments:
        interval = binomtest(CORRECT["student"][counts.index(int(x))], 20).proportion_ci(0.95, method="exact")
        assert (low, high) == pytest.approx((interval.low, interval.high), abs=1e-9)
    assert "95% interval" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
