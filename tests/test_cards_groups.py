"""Groups in the run record, the card, its YAML block, the model-index, the plot and the summary.

The data are built by hand so that every expected number is known without the package's maths: 3 classes x
2 sites x 2 cameras x 10 test rows; the baseline misses rows i % 5 == 0 everywhere; the student gets every
row of site A right (helped there) and misses rows i % 5 in {0, 1, 2} on site B (hurt there: 24 discordant
rows against it, none for it); the teacher misses rows i % 10 == 0. Site D has training rows only.
"""

from __future__ import annotations

import copy
import math
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from huggingface_hub import parse_eval_result_entries
from matplotlib.figure import Figure

from hf_fairkd.groups import count_groupings, report_groupings
from hf_fairkd.results import build_model_card, load_subgroup_metrics, save_card_and_metrics
from hf_fairkd.results.card import write_eval_results
from hf_fairkd.results.card_block import card_block, expand_card_block
from hf_fairkd.results.schema import (
    build_run_record,
    format_summary,
    group_verdicts_of,
    groups_hurt_and_helped,
    record_from_info,
)

NAMES = ["cat", "dog", "bird"]
TRAIN_COUNTS = [300, 60, 10]
SETTINGS = {"objective": "kd", "seed": 1, "student_model": "tiny", "dataset_name": "org/sites"}
COLUMNS = ["site", "camera"]
REPORT_KEYS = ["site", "camera", "class&site", "class&camera", "site&camera"]


def _test_rows():
    labels, site, camera = [], [], []
    for c in range(len(NAMES)):
        for s in ("A", "B"):
            for cam in ("x", "y"):
                labels += [c] * 10
                site += [s] * 10
                camera += [cam] * 10
    return np.array(labels), site, camera


def _predictions(labels, site):
    i = np.arange(len(labels))
    wrong = (labels + 1) % len(NAMES)
    on_b = np.array([s == "B" for s in site])
    baseline = np.where(i % 5 == 0, wrong, labels)
    student = np.where(on_b & (i % 5 <= 2), wrong, labels)
    teacher = np.where(i % 10 == 0, wrong, labels)
    return {"teacher": teacher, "baseline": baseline, "student": student}


def _train_counts_by_group():
    """Training rows: site A 100, B 20, D 5 (D never in the test split); camera x 70, y 55."""
    site = ["A"] * 100 + ["B"] * 20 + ["D"] * 5
    camera = ["x"] * 70 + ["y"] * 55
    classes = [NAMES[i % 3] for i in range(len(site))]
    return count_groupings(report_groupings({"site": site, "camera": camera}, classes))


@pytest.fixture(scope="module")
def record() -> dict:
    labels, site, camera = _test_rows()
    return build_run_record(
        _predictions(labels, site),
        labels,
        class_names=NAMES,
        train_counts=TRAIN_COUNTS,
        settings=dict(SETTINGS),
        groups={"site": site, "camera": camera},
        group_train_counts=_train_counts_by_group(),
    )


def _no_groups(record: dict) -> dict:
    plain = copy.deepcopy(record)
    for key in ("group_columns", "student_minus_baseline_groups"):
        plain.pop(key, None)
    for role in ("teacher", "baseline", "student"):
        plain[role]["groups"] = {}
    return plain


def _table_after(text: str, heading: str) -> list[list[str]]:
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return [rows[0], *rows[2:]]


def _interval(low, high) -> str:
    return f"[{low:.3f}, {high:.3f}]"


# --- the record ------------------------------------------------------------------------------------------


def test_record_holds_groups_counts_and_deltas(record):
    assert record["group_columns"] == COLUMNS
    assert list(record["student"]["groups"]) == REPORT_KEYS
    assert list(record["student_minus_baseline_groups"]) == REPORT_KEYS
    site = record["student"]["groups"]["site"]["by_group"]
    assert (site["A"]["accuracy"], site["A"]["support"], site["A"]["train_count"]) == (1.0, 60, 100)
    assert (site["B"]["accuracy"], site["B"]["support"], site["B"]["train_count"]) == (0.4, 60, 20)
    assert site["D"]["support"] == 0 and site["D"]["accuracy"] is None and site["D"]["train_count"] == 5
    assert record["baseline"]["groups"]["site"]["by_group"]["B"]["accuracy"] == 0.8
    assert record["teacher"]["groups"]["camera"]["by_group"]["y"]["accuracy"] == 0.9
    assert record["student"]["groups"]["camera"]["by_group"]["x"]["accuracy"] == pytest.approx(0.7)
    rows = {row["group"]: row for row in record["student_minus_baseline_groups"]["site"]}
    assert (rows["A"]["n10"], rows["A"]["n01"]) == (12, 0)
    assert (rows["B"]["n10"], rows["B"]["n01"]) == (0, 24)
    assert rows["B"]["p_value"] == pytest.approx(2 * 0.5**24)


def test_groups_hurt_and_helped_uses_the_class_rule(record):
    judged = groups_hurt_and_helped(record)
    assert set(judged) == set(REPORT_KEYS)
    assert judged["site"] == (["B"], ["A"])
    assert judged["camera"] == ([], [])  # 6 against 12 discordant rows: p ~ 0.24
    # each class x B cell: 8 discordant rows against the student (p = 2 / 2**8); the A cells 4 for (p = 0.125)
    assert judged["class&site"] == (["bird&B", "cat&B", "dog&B"], [])
    assert sorted(judged["site&camera"][0]) == ["B&x", "B&y"]
    assert group_verdicts_of(record)["site"] == {"A": "helped", "B": "hurt"}


def test_record_without_groups_has_no_group_keys(record):
    labels, site, _ = _test_rows()
    plain = build_run_record(
        _predictions(labels, site), labels, class_names=NAMES, train_counts=TRAIN_COUNTS, settings={}
    )
    assert "group_columns" not in plain and "student_minus_baseline_groups" not in plain
    assert plain["student"]["groups"] == {} and groups_hurt_and_helped(plain) == {}
    assert "group" not in format_summary(plain).lower()


def test_record_from_info_reads_group_train_counts_when_the_info_has_them(record):
    labels, site, camera = _test_rows()

    def info(**extra):
        fields = dict(class_names=NAMES, train_counts=TRAIN_COUNTS, long_tail_counts=TRAIN_COUNTS, **extra)
        return SimpleNamespace(**fields, to_dict=lambda: {"source": "hand-made"})

    groups = {"site": site, "camera": camera}
    preds = _predictions(labels, site)
    new = record_from_info(
        preds, labels, info(group_train_counts=_train_counts_by_group()), {}, groups=groups
    )
    assert new["student"]["groups"] == record["student"]["groups"]
    assert new["student_minus_baseline_groups"] == record["student_minus_baseline_groups"]
    old = record_from_info(preds, labels, info(), {}, groups=groups)  # an info from before
    assert old["student"]["groups"]["site"]["by_group"]["A"]["train_count"] is None
    assert "D" not in old["student"]["groups"]["site"]["by_group"]  # no training table: no missing group


def test_summary_names_worst_groups_and_groups_hurt_and_helped(record):
    text = format_summary(record)
    low, high = record["student"]["groups"]["site"]["worst_group_accuracy_ci"]
    student_worst = f"student B 40.0% [{100 * low:.1f}%, {100 * high:.1f}%]"
    line = next(line for line in text.splitlines() if line.startswith("Worst group of site"))
    assert student_worst in line and "baseline A 80.0%" in line and "teacher A 90.0%" in line
    assert "Groups of site distillation hurt: B; helped: A" in text
    assert "Groups of camera distillation hurt: none; helped: none" in text
    assert "Class x site cells distillation hurt: bird&B, cat&B, dog&B; helped: none" in text
    # A&x, A&y: 6 discordant rows for the student, none against (p = 2 / 2**6)
    assert "Groups of site & camera distillation hurt: B&x, B&y; helped: A&x, A&y" in text


# --- the card ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def card_text(record) -> str:
    return build_model_card(record, model_id="me/student").text


def test_card_group_table_formats_the_record(card_text, record):
    assert card_text.count("### Subgroups") == 1
    table = _table_after(card_text, "#### Groups of site")
    assert table[0] == [
        "Group",
        "Train count",
        "Test support",
        "Teacher",
        "One-hot baseline",
        "Distilled student",
        "Student − baseline",
        "McNemar p",
    ]
    rows = {row[0]: row for row in table[1:]}
    assert list(rows) == ["A", "B", "D"]
    by_role = {
        role: record[role]["groups"]["site"]["by_group"] for role in ("teacher", "baseline", "student")
    }
    for name, expected in (("A", (0.9, 0.8, 1.0)), ("B", (0.9, 0.8, 0.4))):
        cells = rows[name][3:6]
        for cell, acc, role in zip(cells, expected, by_role):
            group = by_role[role][name]
            assert cell == f"{acc:.3f} {_interval(group['ci_low'], group['ci_high'])}"
    assert rows["A"][1:3] == ["100", "60"] and rows["B"][1:3] == ["20", "60"]
    assert rows["A"][6:] == ["+0.200", "< 0.001 (helped)"]
    assert rows["B"][6:] == ["-0.400", "< 0.001 (hurt)"]


def test_missing_group_says_no_test_rows_never_an_accuracy(card_text):
    row = {r[0]: r for r in _table_after(card_text, "#### Groups of site")[1:]}["D"]
    assert row == ["D", "5", "0", "no test rows", "no test rows", "no test rows", "n/a", "n/a"]
    assert not any("%" in cell or re.fullmatch(r"[01]\.\d+", cell) for cell in row[3:])


def test_card_worst_groups_cells_and_intersections(card_text, record):
    site = card_text[card_text.index("#### Groups of site") : card_text.index("#### Groups of camera")]
    worst = {row[0]: row for row in _table_after(site, "Worst group of each model")[1:]}
    for role, label in (
        ("teacher", "Teacher"),
        ("baseline", "One-hot baseline"),
        ("student", "Distilled student"),
    ):
        summary = record[role]["groups"]["site"]
        assert worst[label] == [
            label,
            summary["worst_group"],
            f"{summary['worst_group_accuracy']:.3f}",
            _interval(*summary["worst_group_accuracy_ci"]),
        ]
    assert worst["Distilled student"][1:3] == ["B", "0.400"]
    cells = _table_after(site, "class × site cells")[1:]
    assert [row[0] for row in cells] == ["bird&amp;B", "cat&amp;B", "dog&amp;B", "bird&amp;A", "cat&amp;A"]
    assert cells[0][2:4] == ["20", "0.800"] and cells[0][4].startswith("0.400 [")
    assert cells[0][6] == "0.008 (hurt)"  # 2 / 2**8
    assert "cells distillation hurt: bird&amp;B, cat&amp;B, dog&amp;B" in site
    assert "more cells have training rows but no test rows" in site  # the D cells
    inter = _table_after(card_text, "#### Intersections of group columns")[1:]
    assert len(inter) == 1 and inter[0][0] == "site &amp; camera"
    # A&x, A&y, B&x, B&y tested; D&y (the training rows of D are on camera y) has none
    assert inter[0][1] == "4 of 5" and inter[0][6] == "B&amp;x, B&amp;y" and inter[0][7] == "A&amp;x, A&amp;y"


def test_factors_and_metrics_name_the_groups(card_text, record):
    factors = card_text[card_text.index("## Factors") : card_text.index("## Metrics")]
    assert "**Subgroups:**" in factors and "site, camera" in factors
    assert "**Group accuracy:**" in card_text
    plain = build_model_card(_no_groups(record)).text
    factors = plain[plain.index("## Factors") : plain.index("## Metrics")]
    assert "**Subgroups:** none evaluated" in factors
    assert "### Subgroups" not in plain and "Group accuracy" not in plain


def test_groups_only_add_their_section(card_text, record):
    """Without the Subgroups section and the lines naming groups, the card is the card of the same record
    without groups: groups change nothing else."""
    plain = build_model_card(_no_groups(record), model_id="me/student").text

    def body(text: str) -> str:
        if "### Subgroups" in text:
            text = text[: text.index("### Subgroups")] + text[text.index("### Worst classes") :]
        text = re.sub(r"- \*\*Subgroups:\*\*.*\n", "", text)
        text = re.sub(r"- \*\*Group accuracy:\*\*(.*\n)(  .*\n)*", "", text)
        return text.replace(", the same numbers per group", "")

    assert body(card_text) == body(plain)


def test_long_tables_are_capped_and_say_where_the_rest_is():
    """2 columns x 10 groups each fit; a column of 30 groups shows its 12 lowest and says where the rest is."""
    rng = np.random.default_rng(0)
    n = 1200
    labels = rng.integers(0, 3, n)
    groups = {"site": [f"s{i % 10}" for i in range(n)], "lab": [f"l{(i // 7) % 10}" for i in range(n)]}
    preds = {
        role: np.where(rng.random(n) < 0.8, labels, (labels + 1) % 3) for role in ("baseline", "student")
    }
    common = dict(class_names=NAMES, train_counts=TRAIN_COUNTS, settings={})
    text = build_model_card(build_run_record(preds, labels, groups=groups, **common)).text
    for column in ("site", "lab"):
        assert len(_table_after(text, f"#### Groups of {column}")) == 1 + 10
    assert "more are left out" not in text

    groups = {"site": [f"s{i % 30:02d}" for i in range(n)]}
    wide = build_run_record(preds, labels, groups=groups, **common)
    text = build_model_card(wide).text
    rows = _table_after(text, "#### Groups of site")[1:]
    by_group = wide["student"]["groups"]["site"]["by_group"]
    lowest = sorted(by_group, key=lambda g: (by_group[g]["accuracy"], -by_group[g]["support"], g))[:12]
    assert [row[0] for row in rows] == lowest
    assert "12 of 30 groups are shown" in text and "18 more are left out" in text
    assert "Every group is in `subgroup_metrics.json`" in text
    assert len(_table_after(text, "class × site cells")) == 1 + 5


# --- the YAML block and reading it back --------------------------------------------------------------------


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=5e-4, abs_tol=1e-12)


def test_yaml_block_round_trips_through_load_subgroup_metrics(record, tmp_path):
    save_card_and_metrics(tmp_path, record, model_id="me/student")
    os.remove(tmp_path / "subgroup_metrics.json")
    back = load_subgroup_metrics(tmp_path)
    assert back["recovered_from"] == "model_card" and back["group_columns"] == COLUMNS
    for role in ("teacher", "baseline", "student"):
        assert list(back[role]["groups"]) == REPORT_KEYS
        for key in REPORT_KEYS:
            full, small = record[role]["groups"][key], back[role]["groups"][key]
            assert list(small["by_group"]) == list(full["by_group"])
            for name, group in full["by_group"].items():
                got = small["by_group"][name]
                assert (got["support"], got["train_count"]) == (group["support"], group["train_count"])
                for field in ("accuracy", "ci_low", "ci_high"):
                    assert _close(got[field], group[field]), (role, key, name, field)
            assert small["worst_group"] == full["worst_group"]
            assert _close(small["worst_group_accuracy"], full["worst_group_accuracy"])
            assert all(map(_close, small["worst_group_accuracy_ci"], full["worst_group_accuracy_ci"]))
            assert small["missing_groups"] == full["missing_groups"]
            assert small["num_groups"] == full["num_groups"]
    for key, rows in record["student_minus_baseline_groups"].items():
        got = back["student_minus_baseline_groups"][key]
        assert [r["group"] for r in got] == [r["group"] for r in rows]
        for a, b in zip(got, rows):
            assert (a["n10"], a["n01"], a["support"]) == (b["n10"], b["n01"], b["support"])
            assert a["p_value"] == b["p_value"]  # recomputed exactly from n10 / n01
            assert _close(a["delta"], b["delta"]) and _close(a["ci_low"], b["ci_low"])
    assert group_verdicts_of(back) == group_verdicts_of(record)
    assert groups_hurt_and_helped(back) == groups_hurt_and_helped(record)


def test_block_layout_is_compact_lists_per_key(record):
    block = card_block(record)
    assert block["group_columns"] == COLUMNS
    assert block["groups"]["site"] == {
        "names": ["A", "B", "D"],
        "train_count": [100, 20, 5],
        "support": [60, 60, 0],
    }
    student = block["student"]["groups"]["site"]
    assert student["accuracy"] == [1.0, 0.4, None] and student["worst_group"] == "B"
    deltas = block["student_minus_baseline_groups"]["site"]
    assert deltas["n10"] == [12, 0, None] and deltas["n01"] == [0, 24, None]  # D: no test rows, no delta
    assert "groups" not in card_block(_no_groups(record)) and "group_columns" not in card_block(
        _no_groups(record)
    )


def test_keys_with_too_many_groups_stay_out_of_the_block(record, monkeypatch):
    import hf_fairkd.results.card_block as card_block_module

    monkeypatch.setattr(card_block_module, "BLOCK_MAX_GROUPS", 5)
    block = card_block(record)
    sizes = {key: len(record["student"]["groups"][key]["by_group"]) for key in REPORT_KEYS}
    assert block["groups_left_out"] == {k: v for k, v in sizes.items() if v > 5}
    assert set(block["groups"]) == {k for k, v in sizes.items() if v <= 5}
    back = expand_card_block(yaml.safe_load(yaml.safe_dump(block)))
    assert set(back["student"]["groups"]) == set(block["groups"])
    assert back["groups_left_out"] == block["groups_left_out"]


# --- model-index and .eval_results -------------------------------------------------------------------------


def test_model_index_has_a_worst_group_entry_per_column(record, tmp_path):
    card = build_model_card(record)
    entries = {r.metric_type: (r.metric_name, r.metric_value) for r in card.data.eval_results}
    assert entries["worst_group_accuracy_site"] == ("Worst-group accuracy (site)", 0.4)
    assert entries["worst_group_accuracy_camera"] == ("Worst-group accuracy (camera)", 0.7)
    plain = build_model_card(_no_groups(record))
    assert not [r for r in plain.data.eval_results if "group" in r.metric_type]

    path = write_eval_results(tmp_path, record)
    written = {e.task_id: e.value for e in parse_eval_result_entries(yaml.safe_load(path.read_text()))}
    assert written["worst_group_accuracy_site"] == 0.4 and written["worst_group_accuracy_camera"] == 0.7


# --- the plot -----------------------------------------------------------------------------------------------


def test_group_panel_draws_each_models_accuracy_and_marks_missing_groups(record):
    from hf_fairkd.results.plot_groups import draw_group_panel
    from hf_fairkd.results.plots import _MODELS, _plain_label

    ax = Figure().subplots()
    draw_group_panel(ax, record, "site", _MODELS, _plain_label)
    heights = [round(bar.get_height(), 6) for bar in ax.patches]
    # per model (teacher, baseline, student) the groups A, B, D; D has no bar height
    assert heights == [0.9, 0.9, 0.0, 0.8, 0.8, 0.0, 1.0, 0.4, 0.0]
    assert [t.get_text() for t in ax.texts] == ["no test rows"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B", "D"]


def test_plot_adds_group_panels_only_with_groups(record, tmp_path):
    from matplotlib.image import imread

    from hf_fairkd.results.plots import plot_per_class_accuracy

    with_groups = imread(plot_per_class_accuracy(record, tmp_path / "groups.png"))
    plain = imread(plot_per_class_accuracy(_no_groups(record), tmp_path / "plain.png"))
    assert plain.shape[:2] == (605, 990)  # the per-class plot alone, 9 x 5.5 inches at 110 dpi
    assert with_groups.shape[:2] == (990, 990)
