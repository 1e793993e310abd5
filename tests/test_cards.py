"""Model card rendering, escaping, metadata round trip, reading metrics back, and atomic writes."""

from __future__ import annotations

import json
import math
import os
import re
import threading
import warnings

import numpy as np
import pytest
import yaml
from huggingface_hub import ModelCard, parse_eval_result_entries

from hf_fairkd.io_utils import atomic_path, atomic_write_json, atomic_write_text
from hf_fairkd.metrics import delta_verdict, paired_delta, report_to_jsonable, subgroup_report
from hf_fairkd.results import build_model_card, load_subgroup_metrics, save_card_and_metrics
from hf_fairkd.results.card import escape_markdown_cell, write_eval_results

# Hand-made long tail: 5 classes, 20 test images each; the first k images of class c are predicted right.
NAMES = ["cat", "dog", "bird", "fish", "frog"]
TRAIN_COUNTS = [500, 120, 60, 15, 5]  # many: cat, dog (> 100); medium: bird; few: fish, frog (< 20)
SUPPORT = 20
CORRECT = {"student": [19, 17, 14, 12, 9], "baseline": [20, 16, 10, 6, 2], "teacher": [20, 18, 15, 13, 11]}
SETTINGS = {
    "objective": "kd",
    "objective_params": {"alpha": 0.7},
    "teacher_objective": "balanced_softmax",
    "teacher_target_mode": "logit_adjusted",
    "temperature": 4.0,
    "seed": 7,
    "student_model": "vit-tiny",
    "teacher_model": "vit-small",
    "teacher_hub_id": "org/teacher-vit",
    "dataset_name": "uoft-cs/cifar10",
}
SECTIONS = [
    "## Model details",
    "## Intended use",
    "## Factors",
    "## Metrics",
    "## Training data",
    "## Evaluation data",
    "## Quantitative analyses",
    "### Per class",
    "### Many / medium / few-shot classes",
    "### Worst classes",
    "### Where distillation helped or hurt",
    "## Ethical considerations",
    "## Caveats and recommendations",
]


def _predictions(correct: list[int], support: list[int]) -> tuple[np.ndarray, np.ndarray]:
    refs = np.concatenate([np.full(n, c) for c, n in enumerate(support)])
    preds = np.concatenate(
        [
            np.where(np.arange(n) < k, c, (c + 1) % len(support))
            for c, (k, n) in enumerate(zip(correct, support))
        ]
    )
    return preds, refs


def make_metrics(names=NAMES, correct=CORRECT, support=None, train_counts=TRAIN_COUNTS, groups=None) -> dict:
    """A subgroup_metrics.json dict (spec format) built with hf_fairkd.metrics from known predictions."""
    support = support or [SUPPORT] * len(names)
    kw = dict(class_names=list(names), train_counts=list(train_counts))
    preds, metrics = {}, {"format_version": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes without test images are warned about; expected here
        for key, k in correct.items():
            preds[key], refs = _predictions(k, support)
            metrics[key] = subgroup_report(preds[key], refs, groups=groups, **kw)
        deltas = paired_delta(preds["student"], preds["baseline"], refs, class_names=list(names))
    metrics.update(
        class_names=list(names),
        train_counts=list(train_counts),
        student_minus_baseline=deltas,
        dataset={
            "source": "uoft-cs/cifar10",
            "profile": "exp",
            "imbalance_factor": 100.0,
            "seed": 3,
            "rare_classes": "reversed",
            "holdout_counts": [2] * len(names),
            "holdout_per_class": 2,
        },
        settings=dict(SETTINGS),
    )
    return metrics


def split_row(line: str) -> list[str]:
    """Cells of a Markdown table row; a backslash escapes the next character (so \\| is not a border)."""
    assert line.startswith("|") and line.endswith("|"), line
    cells, current, i, inner = [], "", 0, line[1:-1]
    while i < len(inner):
        if inner[i] == "\\" and i + 1 < len(inner):
            current, i = current + inner[i : i + 2], i + 2
        elif inner[i] == "|":
            cells.append(current.strip())
            current, i = "", i + 1
        else:
            current, i = current + inner[i], i + 1
    return [*cells, current.strip()]


def table_after(text: str, heading: str) -> list[list[str]]:
    """Header and body rows (separator dropped) of the first table after ``heading``."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    block = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        block.append(split_row(line))
    return [block[0], *block[2:]]


def all_table_rows(text: str) -> list[list[str]]:
    return [split_row(line) for line in text.splitlines() if line.startswith("|")]


@pytest.fixture(scope="module")
def metrics() -> dict:
    return make_metrics()


def test_card_has_every_model_card_section(metrics):
    text = build_model_card(metrics, model_id="me/kd-student").text
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)  # present, in Mitchell et al.'s order
    assert "![Per-class accuracy against training count](per_class_accuracy.png)" in text
    for setup in (
        "kd",
        "alpha=0.7",
        "balanced\\_softmax",
        "logit\\_adjusted",
        "4.0",
        "imbalance factor",
        "100.0",
    ):
        assert setup in text


def test_per_class_table_matches_hand_counts(metrics):
    table = table_after(build_model_card(metrics).text, "### Per class")
    header, rows = table[0], table[1:]
    assert header == [
        "Class",
        "Train count",
        "Test support",
        "Teacher",
        "Baseline",
        "Student",
        "Student − baseline",
        "McNemar p",
    ]
    assert len(rows) == len(NAMES)
    for c, row in enumerate(rows):
        assert len(row) == len(header)
        assert row[:3] == [NAMES[c], str(TRAIN_COUNTS[c]), str(SUPPORT)]
        expected = [f"{CORRECT[m][c] / SUPPORT:.3f}" for m in ("teacher", "baseline", "student")]
        assert row[3:6] == expected
        s, b = CORRECT["student"][c], CORRECT["baseline"][c]
        assert row[6] == f"{(s - b) / SUPPORT:+.3f}"
        # The first k images are right, so only one model is right on |s - b| images, all for the same
        # model: the two-sided exact McNemar p-value is 2 * (1/2) ** |s - b|, capped at 1.
        p = min(1.0, 2 * 0.5 ** abs(s - b))
        verdict = "" if p >= 0.05 else " (helped)" if s > b else " (hurt)"
        assert row[7] == f"{p:.3f}{verdict}"


def test_shot_table_and_overall_numbers(metrics):
    text = build_model_card(metrics).text
    shots = {row[0]: row for row in table_after(text, "### Many / medium / few-shot classes")[1:]}
    groups = {"many": [0, 1], "medium": [2], "few": [3, 4]}
    for shot, ids in groups.items():
        assert shots[shot][2] == str(len(ids)) and shots[shot][3] == str(SUPPORT * len(ids))
        student = np.mean([CORRECT["student"][c] / SUPPORT for c in ids])
        assert shots[shot][-1] == f"{student:.3f}"
    overall = {row[0]: row for row in table_after(text, "### Overall")[1:]}
    student_acc = [k / SUPPORT for k in CORRECT["student"]]
    assert overall["Worst-class accuracy"][-1] == f"{min(student_acc):.3f}"
    assert overall["Balanced accuracy (mean per-class recall)"][-1] == f"{np.mean(student_acc):.3f}"


def test_model_index_and_metadata_round_trip(metrics, tmp_path):
    readme = save_card_and_metrics(tmp_path, metrics, model_id="me/kd-student", datasets=["uoft-cs/cifar10"])
    card = ModelCard.load(readme)
    data = card.data
    assert data.library_name == "transformers" and data.license == "apache-2.0"
    assert data.base_model == "org/teacher-vit" and data.datasets == ["uoft-cs/cifar10"]
    assert data.tags == ["knowledge-distillation", "hf-fairkd", "long-tail", "image-classification"]
    acc = [k / SUPPORT for k in CORRECT["student"]]
    expected = {
        "accuracy": sum(CORRECT["student"]) / (SUPPORT * len(NAMES)),
        "balanced_accuracy": float(np.mean(acc)),
        "worst_class_accuracy": min(acc),
        "accuracy_many": (acc[0] + acc[1]) / 2,
        "accuracy_medium": acc[2],
        "accuracy_few": (acc[3] + acc[4]) / 2,
    }
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == set(expected)
    for name, value in expected.items():
        assert results[name].metric_value == float(f"{value:.4g}")  # 4 significant digits
        assert results[name].task_type == "image-classification" and results[name].dataset_split == "test"
        assert results[name].dataset_name == results[name].dataset_type == "uoft-cs/cifar10"
    block = data["hf_fairkd"]
    assert block["format_version"] == 2 and block["train_counts"] == TRAIN_COUNTS
    assert block["student"]["per_class_accuracy"] == pytest.approx(acc)
    assert block["teacher"]["per_class_accuracy"] == pytest.approx([k / SUPPORT for k in CORRECT["teacher"]])
    assert block["settings"] == SETTINGS


def test_summary_names_helped_hurt_and_unclear_classes(metrics):
    custom = dict(metrics)
    # Hand-set rows (n10 = student right / baseline wrong, n01 the reverse): significant and ahead,
    # significant and behind, and three that are not significant. The intervals are set to contradict
    # the test on purpose: the card must follow the p-value rule, not the interval.
    cells = [(8, 0, 0.0078125), (0, 9, 0.00390625), (5, 1, 0.21875), (3, 3, 1.0), (0, 5, 0.0625)]
    custom["student_minus_baseline"] = [
        {"class_id": c, "name": NAMES[c], "delta": (n10 - n01) / 20, "n10": n10, "n01": n01, "p_value": p}
        | {"ci_low": -0.5, "ci_high": -0.1}
        for c, (n10, n01, p) in enumerate(cells)
    ]
    text = build_model_card(custom).text
    summary = text[text.index("### Where distillation helped or hurt") :]
    summary = " ".join(summary[: summary.index("![")].split())
    assert "**helped** 1 class (cat)" in summary
    assert "**hurt** 1 class (dog)" in summary
    assert "**no clear change** on 3 classes (bird, fish, frog)" in summary
    assert "exact McNemar test, p < 0.05" in summary
    assert "interval" not in summary  # the rule is the test, so the card must not describe an interval rule
    p_cells = [row[7] for row in table_after(text, "### Per class")[1:]]
    assert p_cells == ["0.008 (helped)", "0.004 (hurt)", "0.219", "1.000", "0.062"]


def test_card_without_baseline_says_so(metrics):
    partial = {k: v for k, v in metrics.items() if k not in ("baseline", "teacher", "student_minus_baseline")}
    text = build_model_card(partial).text
    assert "No one-hot baseline was evaluated" in text
    rows = table_after(text, "### Per class")[1:]
    assert all(row[3] == row[4] == row[6] == "n/a" for row in rows)


def test_worst_class_has_one_interval_the_simultaneous_one(metrics):
    text = build_model_card(metrics).text
    section = text[text.index("### Worst classes") : text.index("### Where distillation helped or hurt")]
    table = table_after(section, "### Worst classes")
    assert table[0] == ["Class", "Train count", "Test support", "Student accuracy"]  # no per-class interval
    intervals = re.findall(r"\[(\d\.\d{3}), (\d\.\d{3})\]", section)
    # The Bonferroni interval over the 5 classes, computed here from the exact binomial tails: frog has
    # 9 of 20 right and is the minimum; its bounds at level 1 - 0.05/5 solve P(X >= 9 | low) = 0.005 and
    # P(X <= 9 | high) = 0.005, and no other class has a lower upper bound.
    low, high = metrics["student"]["worst_class_accuracy_ci"]
    assert intervals == [(f"{low:.3f}", f"{high:.3f}")]

    def tail_ge(p):
        return sum(math.comb(20, i) * p**i * (1 - p) ** (20 - i) for i in range(9, 21))

    assert tail_ge(low) == pytest.approx(0.005, abs=1e-9)
    assert 1 - tail_ge(high) + math.comb(20, 9) * high**9 * (1 - high) ** 11 == pytest.approx(0.005, abs=1e-9)
    assert "Clopper-Pearson" in text and "Bonferroni over the 5 classes" in text


def test_how_to_use_snippet_and_plain_phrases(metrics):
    text = build_model_card(metrics, model_id="me/kd-student").text
    how = text[text.index("## How to use") : text.index("## Intended use")]
    assert "from transformers import pipeline" in how
    assert 'classifier = pipeline("image-classification", model="me/kd-student")' in how
    assert "(on the Hub as org/teacher-vit)" in text
    no_hub = dict(metrics, settings={k: v for k, v in SETTINGS.items() if k != "teacher_hub_id"})
    no_hub["settings"]["objective_params"] = {}
    text = build_model_card(no_hub).text
    assert "vit-small (not on the Hub), trained with the balanced\\_softmax objective." in text
    assert "kd with its default parameters" in text
    assert 'model="your-name/your-model"' in text
    for awkward in ("Hub id: none", "class(es)", "not recorded", "with parameters defaults", "(none)"):
        assert awkward not in text, awkward
    assert "Holdout:** 10 images (2 per class)" in text and "every class has 20 test images" in text


def test_card_yaml_rounds_to_4_significant_digits_and_reads_back(tmp_path):
    support = [7, 9, 11, 13, 17]  # supports that give long decimal accuracies (e.g. 5/7 = 0.714285...)
    m = report_to_jsonable(make_metrics(correct={k: [4, 5, 6, 7, 8] for k in CORRECT}, support=support))
    m["student_minus_baseline"] = report_to_jsonable(
        paired_delta(*_predictions([4, 5, 6, 7, 8], support)[:1], *_predictions([1, 2, 3, 6, 8], support))
    )
    save_card_and_metrics(tmp_path, m)
    header = (tmp_path / "README.md").read_text().split("\n---\n")[0]
    block = yaml.safe_load(header.removeprefix("---\n"))["hf_fairkd"]
    floats = []

    def collect(obj):
        if isinstance(obj, dict):
            [collect(v) for k, v in obj.items() if k != "settings"]
        elif isinstance(obj, list):
            [collect(v) for v in obj]
        elif isinstance(obj, float):
            floats.append(obj)

    collect(block)
    assert floats and all(x == float(f"{x:.4g}") for x in floats)
    assert block["student"]["per_class_accuracy"][0] == 0.5714  # 4/7
    assert not re.search(r"\d\.\d{6,}", header)  # no long decimals anywhere in the YAML header
    assert json.loads((tmp_path / "subgroup_metrics.json").read_text())["student"]["per_class"][0][
        "accuracy"
    ] == pytest.approx(4 / 7, abs=1e-15)  # the JSON keeps full precision
    (tmp_path / "subgroup_metrics.json").unlink()
    recovered = load_subgroup_metrics(tmp_path)
    assert [r["accuracy"] for r in recovered["student"]["per_class"]] == pytest.approx(
        [k / n for k, n in zip([4, 5, 6, 7, 8], support)], abs=5e-5
    )
    # p-values are recomputed from the stored counts, so the hurt / helped verdicts survive the rounding
    full, back = m["student_minus_baseline"], recovered["student_minus_baseline"]
    assert [r["p_value"] for r in back] == pytest.approx([r["p_value"] for r in full], rel=1e-12)
    assert [delta_verdict(r) for r in back] == [delta_verdict(r) for r in full]


def test_run_metrics_use_long_tail_counts_for_shot_groups(tmp_path):
    """CIFAR-100-LT with a 5-per-class holdout: the standard 35 / 35 / 30 groups, and the card says why."""
    from hf_fairkd.data import LongTailInfo, long_tail_counts
    from hf_fairkd.results.schema import record_from_info

    before = long_tail_counts(500, 100, 100.0, "exp")
    info = LongTailInfo(
        source="cifar100",
        label_column="label",
        image_column="img",
        class_names=[f"c{i}" for i in range(100)],
        profile="exp",
        imbalance_factor=100.0,
        seed=0,
        rare_classes="reversed",
        class_order=list(range(100)),
        long_tail_counts=before,
        train_counts=[n - 5 for n in before],
        holdout_counts=[5] * 100,
        test_counts=[2] * 100,
        holdout_per_class=5,
    )
    labels = np.repeat(np.arange(100), 2)
    logits = {role: np.eye(100)[labels] for role in ("baseline", "student")}
    metrics = record_from_info(logits, labels, info, dict(SETTINGS))
    groups = metrics["student"]["shot_groups"]
    assert [groups[g]["num_classes"] for g in ("many", "medium", "few")] == [35, 35, 30]
    assert [row["train_count"] for row in metrics["student"]["per_class"]] == [n - 5 for n in before]
    text = " ".join(build_model_card(metrics).text.split())
    assert (
        "Shot groups from the 100 per-class training counts of the long-tail profile, before the holdout was carved"
        in text
    )
    shots = table_after(build_model_card(metrics).text, "### Many / medium / few-shot classes")
    assert shots[0][1] == "Train count (before holdout)"
    assert [row[2] for row in shots[1:]] == ["35", "35", "30"]


def holdout_record(long_tail: list[int], holdout: int, correct: list[int], support: int = 20) -> dict:
    """A run record whose shot groups come from the long-tail counts, before a holdout of ``holdout`` per class."""
    from hf_fairkd.data import LongTailInfo
    from hf_fairkd.results.schema import record_from_info

    n = len(long_tail)
    info = LongTailInfo(
        source="digits", label_column="label", image_column="image", class_names=[f"class_{i}" for i in range(n)],
        profile="exp", imbalance_factor=long_tail[0] / long_tail[-1], seed=0, rare_classes="reversed",
        class_order=list(range(n)), long_tail_counts=long_tail, train_counts=[c - holdout for c in long_tail],
        holdout_counts=[holdout] * n, test_counts=[support] * n, holdout_per_class=holdout,
    )  # fmt: skip
    labels = np.repeat(np.arange(n), support)
    right = np.concatenate([np.arange(support) < k for k in correct])
    student = np.where(right, labels, (labels + 1) % n)
    return record_from_info({"student": student}, labels, info, {"dataset_name": "digits"})


def test_class_tables_show_both_counts_when_shot_groups_use_the_counts_before_the_holdout():
    """A class with 19 training images after a 5-image holdout is "medium" by its 24 before it: the class tables
    show both counts, so the table and the group agree."""
    record = holdout_record([500, 150, 60, 24, 12], holdout=5, correct=[18, 17, 15, 12, 8])
    text = build_model_card(record).text
    per_class = table_after(text, "### Per class")
    assert per_class[0][:4] == ["Class", "Train count", "Count before holdout", "Test support"]
    assert [row[:4] for row in per_class[1:]] == [
        [f"class\\_{i}", str(n - 5), str(n), "20"] for i, n in enumerate([500, 150, 60, 24, 12])
    ]
    worst = table_after(text, "### Worst classes")
    assert worst[0] == ["Class", "Train count", "Count before holdout", "Test support", "Student accuracy"]
    assert ["class\\_4", "7", "12", "20", "0.400"] in worst[1:]
    shots = {row[0]: row for row in table_after(text, "### Many / medium / few-shot classes")[1:]}
    assert shots["medium"][2] == "2" and shots["few"][2] == "1"  # 60 and 24 are medium; 12 is few


def test_group_tables_render_each_group():
    site = ["a|b", "<b>x</b>"] * (len(NAMES) * SUPPORT // 2)
    text = build_model_card(make_metrics(groups={"site": site})).text
    table = table_after(text, "#### Groups of site")
    # group, train count, test support, teacher, baseline, student, student - baseline, McNemar p
    assert {len(row) for row in table} == {8}
    rows = {row[0]: row for row in table[1:]}
    assert set(rows) == {"a\\|b", "&lt;b&gt;x&lt;/b&gt;"}
    preds, refs = _predictions(CORRECT["student"], [SUPPORT] * len(NAMES))
    right = preds == refs
    assert rows["a\\|b"][2] == str(len(right[0::2]))
    assert rows["a\\|b"][5].split(" [")[0] == f"{right[0::2].mean():.3f}"  # accuracy [interval]
    assert rows["&lt;b&gt;x&lt;/b&gt;"][5].split(" [")[0] == f"{right[1::2].mean():.3f}"


def test_missing_class_is_listed_and_shown_as_na():
    names, counts = [*NAMES, "ghost"], [*TRAIN_COUNTS, 3]
    correct = {k: [*v, 0] for k, v in CORRECT.items()}
    m = make_metrics(names=names, correct=correct, support=[SUPPORT] * 5 + [0], train_counts=counts)
    card = build_model_card(m)
    row = table_after(card.text, "### Per class")[-1]
    assert row[0] == "ghost" and row[2] == "0" and row[3:] == ["n/a"] * 5  # 3 models, delta, p
    assert "(accuracy undefined, left out of balanced and worst-class accuracy): ghost." in card.text
    worst = {r.metric_type: r.metric_value for r in card.data.eval_results}["worst_class_accuracy"]
    assert worst == pytest.approx(min(CORRECT["student"]) / SUPPORT)  # the empty class is not the worst


HOSTILE = [
    "a|b",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "---",
    "x" * 100_000,
    "two\nlines\r\nand\rmore",
    "tick`*_[x](y)#\\",
]


def test_hostile_class_names_are_escaped_and_stored_verbatim(tmp_path):
    m = make_metrics(
        names=HOSTILE, correct={k: [*v, 5, 5] for k, v in CORRECT.items()}, train_counts=[*TRAIN_COUNTS, 3, 2]
    )
    readme = save_card_and_metrics(
        tmp_path, m, model_id="me/hostile", extra_text="Note <script>x</script>\n---\n| not a table |"
    )
    card = ModelCard.load(readme)
    body = card.text
    for raw in ("<script", "<img", "onerror=alert(1)>"):
        assert raw not in body
    for rows in (table_after(body, "### Per class"), table_after(body, "### Worst classes")):
        assert len({len(row) for row in rows}) == 1  # every row keeps the header's column count
    per_class = table_after(body, "### Per class")[1:]
    assert len(per_class) == len(HOSTILE)
    assert per_class[0][0] == "a\\|b" and per_class[3][0] == "---"
    assert per_class[5][0] == "two lines and more"
    assert per_class[4][0] == "x" * 199 + "…"
    assert per_class[6][0] == "tick\\`\\*\\_\\[x\\](y)\\#\\\\"
    # The YAML header parses back and keeps every original name, newlines and length included.
    assert card.data["hf_fairkd"]["class_names"] == HOSTILE
    assert (
        yaml.safe_load(readme.read_text().split("\n---\n")[0].removeprefix("---\n"))["license"]
        == "apache-2.0"
    )
    assert load_subgroup_metrics(tmp_path)["class_names"] == HOSTILE


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a|b", "a\\|b"),
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ("say \"hi\" & 'bye'", "say &quot;hi&quot; &amp; &#x27;bye&#x27;"),
        ("one\n\ntwo\r\nthree\u2028four", "one two three four"),
        ("*_`[]#~\\", "\\*\\_\\`\\[\\]\\#\\~\\\\"),
        (None, ""),
        (3.5, "3.5"),
    ],
)
def test_escape_markdown_cell(raw, escaped):
    assert escape_markdown_cell(raw) == escaped


def test_escape_markdown_cell_truncates_before_escaping():
    assert escape_markdown_cell("abcdef", max_len=4) == "abc…"
    assert escape_markdown_cell("|" * 10, max_len=4) == "\\|\\|\\|…"  # never cuts an escape in half
    assert len(escape_markdown_cell("y" * 100_000)) == 200


def test_plot_filename_cannot_inject_markdown(metrics):
    with pytest.raises(ValueError, match="plain relative file name"):
        build_model_card(metrics, plot_filename="x.png)<script>alert(1)</script>")


def test_build_model_card_rejects_non_metrics():
    with pytest.raises(ValueError, match="subgroup_report"):
        build_model_card({"accuracy": 0.5})


def test_load_subgroup_metrics_from_folder_then_from_card_alone(metrics, tmp_path):
    save_card_and_metrics(tmp_path, metrics)
    assert load_subgroup_metrics(tmp_path) == report_to_jsonable(metrics)
    assert load_subgroup_metrics(str(tmp_path / "subgroup_metrics.json")) == report_to_jsonable(metrics)
    (tmp_path / "subgroup_metrics.json").unlink()
    recovered = load_subgroup_metrics(tmp_path)
    assert recovered["recovered_from"] == "model_card"
    assert recovered["class_names"] == NAMES and recovered["train_counts"] == TRAIN_COUNTS
    assert recovered["settings"] == SETTINGS
    for key in ("student", "teacher", "baseline"):
        got = [row["accuracy"] for row in recovered[key]["per_class"]]
        assert got == pytest.approx([k / SUPPORT for k in CORRECT[key]])
        assert recovered[key]["balanced_accuracy"] == pytest.approx(metrics[key]["balanced_accuracy"])
        assert recovered[key]["worst_class"] == metrics[key]["worst_class"]
    assert [d["delta"] for d in recovered["student_minus_baseline"]] == pytest.approx(
        [(s - b) / SUPPORT for s, b in zip(CORRECT["student"], CORRECT["baseline"])]
    )


def test_load_subgroup_metrics_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither subgroup_metrics.json nor README.md"):
        load_subgroup_metrics(tmp_path)
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# A card without results\n")
    with pytest.raises(ValueError, match="hf_fairkd"):
        load_subgroup_metrics(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither an existing local path nor a Hub repo id"):
        load_subgroup_metrics(str(tmp_path / "no" / "such" / "folder"))


def test_eval_results_file_parses_with_huggingface_hub(metrics, tmp_path):
    path = write_eval_results(tmp_path, metrics)
    assert path == tmp_path / ".eval_results" / "hf_fairkd.yaml"
    entries = {e.task_id: e for e in parse_eval_result_entries(yaml.safe_load(path.read_text()))}
    assert entries["balanced_accuracy"].value == pytest.approx(
        np.mean([k / SUPPORT for k in CORRECT["student"]])
    )
    assert {e.dataset_id for e in entries.values()} == {"uoft-cs/cifar10"}
    local = dict(metrics, settings={**SETTINGS, "dataset_name": "../data/my folder"})
    assert write_eval_results(tmp_path / "other", local) is None  # not a Hub dataset id: nothing written
    assert not (tmp_path / "other").exists()


# ---------------------------------------------------------------- atomic writes (hf_fairkd.io_utils)


def test_atomic_write_json_writes_strict_json_without_leftovers(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"a": math.nan, "b": [1.5, math.inf], "c": np.float32(0.25), "d": (1, 2)})
    assert json.loads(target.read_text()) == {"a": None, "b": [1.5, None], "c": 0.25, "d": [1, 2]}
    assert os.listdir(tmp_path) == ["m.json"]


def test_failed_serialisation_leaves_existing_file_untouched(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_text(target, '{"old": true}\n')
    with pytest.raises(TypeError):
        atomic_write_json(target, {"new": object()})
    assert target.read_text() == '{"old": true}\n' and os.listdir(tmp_path) == ["m.json"]


def test_failure_inside_atomic_path_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a fi")
        raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["plot.png"]


def test_reader_never_sees_half_a_file(tmp_path):
    target = tmp_path / "big.json"
    payloads = [{"v": i, "data": [i] * 20_000} for i in range(2)]
    atomic_write_json(target, payloads[0])
    stop, seen, errors = threading.Event(), set(), []

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add(json.loads(target.read_text())["v"])
            except Exception as err:  # noqa: BLE001 - any parse error is a torn read
                errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(40):
        atomic_write_json(target, payloads[i % 2])
    stop.set()
    reader.join()
    assert not errors and seen <= {0, 1}
    assert os.listdir(tmp_path) == ["big.json"]


def _long_tail_record(num_classes: int = 1000, per_class_test: int = 20, seed: int = 0) -> dict:
    """A run record (teacher, baseline, student) over a long-tailed count profile, from synthetic predictions:
    accuracy rises with the training count, and the student is clearly worse on a few classes."""
    from hf_fairkd.data import long_tail_counts
    from hf_fairkd.results.schema import build_run_record

    rng = np.random.default_rng(seed)
    counts = long_tail_counts(500, num_classes, 100.0)
    labels = np.repeat(np.arange(num_classes), per_class_test)
    skill = np.log(np.asarray(counts, dtype=float)) / np.log(max(counts))
    hurt = np.zeros(num_classes, dtype=bool)
    hurt[rng.choice(num_classes, 40, replace=False)] = True
    preds = {}
    for role, base in (("teacher", 0.5), ("baseline", 0.3), ("student", 0.4)):
        p_right = np.clip(base + 0.5 * skill[labels] - (0.6 * hurt[labels] if role == "student" else 0), 0, 1)
        right = rng.random(len(labels)) < p_right
        preds[role] = np.where(
            right, labels, (labels + 1 + rng.integers(0, num_classes - 1, len(labels))) % num_classes
        )
    names = [f"class_{i:04d}" for i in range(num_classes)]
    settings = {**SETTINGS, "dataset_name": "synthetic-lt"}
    return build_run_record(preds, labels, class_names=names, train_counts=counts, settings=settings)


YAML_BLOCK_LIMIT = 200_000  # bytes of the YAML header of a 1,000-class card (measured: ~150 kB)


def test_card_for_1000_classes_is_fast_folded_compact_and_reads_back(tmp_path):
    """The "Scale out" card: summary, worst and most-hurt classes first, every class folded away, a compact
    YAML block that reads back to the card's rounded per-class values. Speed is measured by
    benchmarks/card_scale.py (under 10 s there); the bound here is generous for busy CI machines."""
    import time

    from hf_fairkd.results.card_block import round_sig
    from hf_fairkd.results.card_text import LISTED_CLASSES

    start = time.perf_counter()
    record = _long_tail_record()
    readme = save_card_and_metrics(tmp_path, record)
    assert time.perf_counter() - start < 30
    text = readme.read_text()
    header, body = text.split("---\n")[1], text.split("---\n", 2)[2]
    assert len(header.encode()) < YAML_BLOCK_LIMIT

    # order: summary tables, worst classes, most hurt, then the fold with every class
    fold = body.index("<details><summary>Every class (1000)</summary>")
    positions = [
        body.index(h)
        for h in (
            "### Overall",
            "### Many / medium / few-shot classes",
            "### Worst classes",
            "#### Classes distillation hurt most",
        )
    ]
    assert positions == sorted(positions) and positions[-1] < fold < body.index("</details>")
    assert body.count("### Per class") == 1 and body.index("### Per class") < fold
    per_class = table_after(body[fold:], "<details>")
    assert len(per_class) == 1 + 1000  # header + every class, inside the fold
    assert body[:fold].count("| class\\_") <= 2 * LISTED_CLASSES  # only the listed classes before the fold

    worst = table_after(body, "### Worst classes")[1:]
    accs = sorted((row["accuracy"], row["class_id"]) for row in record["student"]["per_class"])
    assert [r[0] for r in worst] == [
        escape_markdown_cell(record["class_names"][i]) for _, i in accs[:LISTED_CLASSES]
    ]
    hurt_rows = table_after(body, "#### Classes distillation hurt most")[1:]
    assert 0 < len(hurt_rows) <= LISTED_CLASSES and "(hurt)" in hurt_rows[0][-1]
    deltas = [float(r[5]) for r in hurt_rows]
    assert all(d < 0 for d in deltas)
    hurt_p = [float(r[6].replace("<", "").split()[0]) if "(hurt)" in r[6] else None for r in hurt_rows]
    significant = [p for p in hurt_p if p is not None]
    assert significant == sorted(significant)  # most significant first
    assert hurt_p[: len(significant)] == significant  # hurt classes before the merely lower ones

    # the card alone reads back to the same per-class values, rounded as the card rounds
    os.remove(tmp_path / "subgroup_metrics.json")
    back = load_subgroup_metrics(tmp_path)
    assert back["recovered_from"] == "model_card"
    for role in ("teacher", "baseline", "student"):
        assert [r["accuracy"] for r in back[role]["per_class"]] == round_sig(
            [r["accuracy"] for r in record[role]["per_class"]]
        )
        assert [r["support"] for r in back[role]["per_class"]] == [
            r["support"] for r in record[role]["per_class"]
        ]
    assert [r["delta"] for r in back["student_minus_baseline"]] == round_sig(
        [r["delta"] for r in record["student_minus_baseline"]]
    )
    assert back["train_counts"] == record["train_counts"]


def test_card_with_few_classes_keeps_the_unfolded_layout(metrics):
    body = build_model_card(metrics).text
    assert "<details>" not in body and "Classes distillation hurt most" not in body
    assert body.index("### Per class") < body.index("### Worst classes")


def test_no_local_path_reaches_the_card_its_plot_or_its_metrics(tmp_path, monkeypatch):
    """A local dataset folder, a given teacher, a reused baseline, a student checkpoint and a teacher config file
    are named by their own names in README.md (YAML and body), subgroup_metrics.json and the plot's title; Hub
    ids and presets stay as they are."""
    import matplotlib.figure

    from hf_fairkd.config import DistillationArguments
    from hf_fairkd.data import LongTailInfo
    from hf_fairkd.results.schema import record_from_info
    from hf_fairkd.run.arguments import DataArguments, ModelArguments

    home = tmp_path / "home" / "you"
    for name in ("mydata", "teacher_erm", "baseline_run", "student_init"):
        (home / name).mkdir(parents=True)
    from hf_fairkd.run import distill

    args = DistillationArguments(output_dir=str(tmp_path / "out"), objective="kd", report_to="none")
    model_args = ModelArguments(
        teacher_model_name_or_path=str(home / "teacher_erm"),
        baseline_model_name_or_path=f"{home / 'baseline_run'}/",
        student_model_name_or_path=str(home / "student_init"),
    )
    settings = distill.distillation_settings(
        model_args, DataArguments(dataset_name=str(home / "mydata")), args, 1
    )
    info = LongTailInfo(
        source=str(home / "mydata"), label_column="label", image_column="image", class_names=NAMES,
        profile="exp", imbalance_factor=100.0, seed=0, rare_classes="reversed", class_order=list(range(5)),
        long_tail_counts=TRAIN_COUNTS, train_counts=TRAIN_COUNTS, holdout_counts=[0] * 5, test_counts=[4] * 5,
        holdout_per_class=0,
    )  # fmt: skip
    labels = np.repeat(np.arange(5), 4)
    record = record_from_info({m: np.eye(5)[labels] for m in CORRECT}, labels, info, settings)
    figures, save = [], matplotlib.figure.Figure.savefig
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig) or save(fig, *a, **k)
    )
    out = tmp_path / "out"
    save_card_and_metrics(out, record, model_id="you/student")

    for name in ("README.md", "subgroup_metrics.json"):
        assert str(home) not in (out / name).read_text(), name
    written = json.loads((out / "subgroup_metrics.json").read_text())
    assert (written["settings"]["dataset_name"], written["dataset"]["source"]) == ("mydata", "mydata")
    assert written["settings"]["teacher_model"] == "teacher_erm"
    assert written["settings"]["baseline_model"] == "reused: baseline_run"
    assert written["settings"]["student_model"] == "student_init"
    card = ModelCard.load(out / "README.md")
    assert {(r.dataset_name, r.dataset_type) for r in card.data.eval_results} == {("mydata", "mydata")}
    assert "**Teacher:** teacher\\_erm (not on the Hub)" in card.text
    assert figures[-1].axes[0].get_title() == "Per-class accuracy vs. training count — mydata"

    config = home / "configs" / "resnet.json"
    fresh = distill.distillation_settings(
        ModelArguments(teacher_config_name=str(config)), DataArguments(), args, 1
    )
    assert fresh["teacher_model"] == "fresh from config resnet.json (trained here)"
    from hf_fairkd.results.schema import public_name

    assert [public_name(n) for n in ("uoft-cs/cifar10", "digits", "~/data/x", "./x/y/")] == [
        "uoft-cs/cifar10", "digits", "x", "y",
    ]  # fmt: skip
    # a record built by hand with a local path: the card's body and model-index show the folder's name only
    by_hand = build_model_card(
        {**make_metrics(), "settings": {**SETTINGS, "dataset_name": str(home / "mydata")}}
    )
    assert str(home) not in by_hand.text and "**mydata**" in by_hand.text
    assert {r.dataset_name for r in by_hand.data.eval_results} == {"mydata"}


def test_a_card_of_format_1_reads_back(metrics, tmp_path):
    """Format 2 only removed n_bootstrap from the metrics file's reports: a card block of format 1 has the same
    layout and reads back as it is."""
    save_card_and_metrics(tmp_path, metrics)
    readme = tmp_path / "README.md"
    assert readme.read_text().count("  format_version: 2\n") == 1
    readme.write_text(readme.read_text().replace("  format_version: 2\n", "  format_version: 1\n"))
    (tmp_path / "subgroup_metrics.json").unlink()
    back = load_subgroup_metrics(tmp_path)
    assert back["format_version"] == 1 and back["recovered_from"] == "model_card"
    assert [r["accuracy"] for r in back["student"]["per_class"]] == pytest.approx(
        [k / SUPPORT for k in CORRECT["student"]]
    )
