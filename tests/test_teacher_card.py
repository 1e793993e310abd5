"""The card of a teacher trained alone: per-class accuracy, intervals and calibration from its record."""

import numpy as np
import pytest
from huggingface_hub import ModelCard
from scipy.stats import binomtest
from test_cards import all_table_rows, table_after

from hf_fairkd.results import save_card_and_metrics
from hf_fairkd.results.schema import build_run_record
from hf_fairkd.results.teacher_card import build_teacher_card

NAMES = ["cat", "bad|name <script>", "ship"]
TRAIN_COUNTS = [500, 50, 5]


def teacher_record(names=NAMES, train_counts=TRAIN_COUNTS, support=20, seed=0, dataset_name="digits"):
    """A teacher's record as train_teacher.py writes it, from random logits (its numbers are recomputed here)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(names)), support)
    logits = rng.normal(size=(len(labels), len(names))) + 1.5 * np.eye(len(names))[labels]
    record = build_run_record(
        {"teacher": logits},
        labels,
        class_names=names,
        train_counts=train_counts,
        dataset={"source": dataset_name, "profile": "natural", "imbalance_factor": 100.0, "seed": 0},
        settings={"objective": "balanced", "seed": 0, "teacher_model": "fresh from config resnet.json",
                  "dataset_name": dataset_name},
    )  # fmt: skip
    return record, logits, labels


def test_teacher_card_reports_each_class_with_exact_intervals_and_calibration(tmp_path):
    record, logits, labels = teacher_record()
    readme = save_card_and_metrics(tmp_path, record)
    text = readme.read_text()
    card = ModelCard.load(readme)
    assert "knowledge-distillation-teacher" in card.data.tags and card.data.library_name == "transformers"
    accuracy = float(np.mean(logits.argmax(-1) == labels))
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["accuracy"] == float(f"{accuracy:.4g}")
    report, calibration = record["teacher"], record["teacher_calibration"]
    per_class_accuracy = [float(np.mean(logits.argmax(-1)[labels == c] == c)) for c in range(3)]
    worst = int(np.argmin(per_class_accuracy))
    shots = report["shot_groups"]
    assert table_after(text, "## Results on the balanced test split") == [
        ["Metric", "Teacher"],
        ["Accuracy", f"{accuracy:.3f}"],
        ["Balanced accuracy (mean per-class recall)", f"{np.mean(per_class_accuracy):.3f}"],
        [f"Worst-class accuracy ({table_cell(NAMES[worst])})", f"{per_class_accuracy[worst]:.3f}"],
        *[[f"Accuracy, {s}-shot classes", f"{shots[s]['accuracy']:.3f}"] for s in ("many", "medium", "few")],
    ]
    assert [shots[s]["classes"] for s in ("many", "medium", "few")] == [["cat"], [NAMES[1]], ["ship"]]
    header = [row for row in all_table_rows(text) if len(row) == 6][0]
    assert header == ["Class", "Train count", "Test support", "Accuracy", "95% interval", "Calibration error"]
    per_class = [row for row in all_table_rows(text) if len(row) == 6][2:]  # after header and separator
    assert [row[0] for row in per_class] == ["cat", "bad\\|name &lt;script&gt;", "ship"]  # escaped, no tag
    assert "<script>" not in text
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    for c, row in enumerate(per_class):
        correct = int(np.sum((logits.argmax(-1) == labels) & (labels == c)))
        interval = binomtest(correct, 20).proportion_ci(0.95, method="exact")  # Clopper-Pearson
        assert row[1:] == [str(TRAIN_COUNTS[c]), "20", f"{correct / 20:.3f}",
                           f"[{interval.low:.3f}, {interval.high:.3f}]",
                           f"{calibration['per_class_calibration_error'][c]:.3f}"]  # fmt: skip
    log_loss = -np.mean(np.log(probabilities[np.arange(len(labels)), labels]))
    assert (
        f"Expected calibration error {calibration['ece']:.3f} (15 bins), log-loss {log_loss:.3f}, Brier score "
        f"{calibration['brier']:.3f}; the least calibrated class is "
        f"{table_cell(calibration['worst_calibration_class'])} ({calibration['worst_class_calibration_error']:.3f})"
    ) in text
    assert "balanced" in text.split("**Training objective:**")[1].splitlines()[0]
    assert "Distilled student" not in text and "student network" not in text
    assert (tmp_path / "per_class_accuracy.png").stat().st_size > 0
    assert "](per_class_accuracy.png)" in text  # the plot's link is its plain file name
    assert (tmp_path / "subgroup_metrics.json").is_file()


def table_cell(name: str) -> str:
    return name.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


@pytest.mark.parametrize("num_classes, folded", [(30, False), (31, True)])
def test_the_per_class_table_folds_past_30_classes(tmp_path, num_classes, folded):
    names = [f"class_{i}" for i in range(num_classes)]
    record, *_ = teacher_record(names, list(range(num_classes * 10, 0, -10)), support=3)
    text = save_card_and_metrics(tmp_path, record).read_text()
    assert ("<details>" in text) is folded
    assert len([row for row in all_table_rows(text) if len(row) == 6]) == num_classes + 2


def test_a_teacher_card_folds_many_classes_and_names_its_eval_results_for_a_hub_dataset(tmp_path):
    names = [f"class_{i}" for i in range(40)]
    record, *_ = teacher_record(names, list(range(400, 0, -10)), support=5, dataset_name="someone/data")
    text = save_card_and_metrics(tmp_path, record, model_id="someone/teacher").read_text()
    assert "<details>" in text and "Per-class results (40 classes)" in text
    assert "--teacher_model_name_or_path someone/teacher" in text
    eval_results = (tmp_path / ".eval_results" / "hf_fairkd.yaml").read_text()
    assert "of the teacher on the test split" in eval_results and "student" not in eval_results


def test_a_record_without_a_teacher_report_is_refused():
    with pytest.raises(ValueError, match="a teacher card needs .* a 'teacher' report with 'per_class' rows"):
        build_teacher_card({"teacher": {"accuracy": 0.5}})
    record, *_ = teacher_record()
    with pytest.raises(ValueError, match="no 'student' report"):
        build_teacher_card({**record, "student": record["teacher"]})


def test_every_section_of_the_teacher_card_carries_the_record(tmp_path):
    """Model details, data, intervals and YAML metadata hold the record's values; defaults where it has none."""
    record, *_ = teacher_record(dataset_name="someone/data")
    text = save_card_and_metrics(
        tmp_path, record, model_id="someone/teacher", datasets="someone/data"
    ).read_text()
    card = ModelCard(text)
    assert text.split("\n# ")[1].splitlines()[0] == "someone/teacher"
    assert card.data.pipeline_tag == "image-classification" and card.data.license == "apache-2.0"
    assert card.data.metrics == ["accuracy"] and card.data.datasets == ["someone/data"]
    assert card.data.model_name == "someone/teacher"
    assert {r.dataset_name for r in card.data.eval_results} == {"someone/data"}
    assert "**someone/data** as it is (the natural profile" in text
    assert "- **Architecture:** fresh from config resnet.json\n" in text
    assert "- **Seed:** 0.\n" in text
    assert f"Classes: cat, {table_cell(NAMES[1])}, ship." in text
    assert "\nThe per-class accuracy intervals (in `subgroup_metrics.json`) are 95% Clopper-Pearson" in text
    assert "at level 1 − 0.05/3, Bonferroni over the 3 classes" in text

    # a record without calibration, settings or counts: said so, never a blank
    bare = {key: value for key, value in record.items() if key not in ("teacher_calibration", "settings")}
    bare["teacher"] = {**record["teacher"], "confidence_level": None}
    bare["teacher"]["per_class"] = [
        {k: v for k, v in row.items() if k not in ("train_count", "support", "ci_low")}
        for row in record["teacher"]["per_class"]
    ]
    text = build_teacher_card(bare).content
    assert text.split("\n# ")[1].splitlines()[0] == "Teacher (hf-fairkd)"
    assert "No calibration was recorded." in text and "- **Architecture:** not recorded\n" in text
    assert "- **Seed:** not recorded.\n" in text and "- **Training objective:** not recorded.\n" in text
    assert "--teacher_model_name_or_path your-name/your-teacher " in text
    assert "| Accuracy | 95% interval |" in text  # the default level
    rows = [row for row in all_table_rows(text) if len(row) == 6][2:]
    assert [row[1:3] + row[4:] for row in rows] == [["n/a", "n/a", "n/a", "n/a"]] * 3
    names = {r.dataset_name for r in ModelCard(text).data.eval_results}
    assert names == {"someone/data"}  # no settings: the dataset named by the record's dataset source


def _distillation_settings(tmp_path, **model):
    """The distillation recipe's record settings for these model arguments (the default data)."""
    from hf_fairkd.config import DistillationArguments
    from hf_fairkd.run.arguments import DataArguments, ModelArguments
    from hf_fairkd.run.distill import distillation_settings

    args = DistillationArguments(output_dir=str(tmp_path / "out"), objective="kd", report_to="none")
    return distillation_settings(ModelArguments(**model), DataArguments(), args, 1)


def test_a_given_teachers_objective_comes_from_its_own_record(tmp_path):
    """A teacher trained by train_teacher.py (objective erm) and given with --teacher_model_name_or_path: the
    student's record and card say erm, read from the teacher's subgroup_metrics.json; a teacher folder without a
    record is said to be of an unknown objective, never "given"."""
    from test_cards import make_metrics

    from hf_fairkd.results import build_model_card

    record, *_ = teacher_record()
    record["settings"]["objective"] = "erm"
    folder = tmp_path / "teacher_erm"
    save_card_and_metrics(folder, record)

    def card_of(settings):
        return " ".join(build_model_card({**make_metrics(), "settings": settings}).text.split())

    settings = _distillation_settings(tmp_path, teacher_model_name_or_path=str(folder))
    assert settings["teacher_objective"] == "erm" and settings["teacher_given"] is True
    assert "**Teacher:** teacher\\_erm (not on the Hub), trained with the erm objective." in card_of(settings)

    bare = tmp_path / "bare_teacher"
    bare.mkdir()
    settings = _distillation_settings(tmp_path, teacher_model_name_or_path=str(bare))
    assert settings["teacher_objective"] is None
    text = card_of(settings)
    assert (
        "bare\\_teacher (not on the Hub), training objective not known (a given teacher without a record)."
        in text
    )
    assert "given objective" not in text
    trained_here = _distillation_settings(tmp_path, teacher_objective="dro")
    assert (trained_here["teacher_objective"], trained_here["teacher_given"]) == ("dro", False)


def test_the_teacher_card_describes_any_registered_objective(tmp_path):
    """The teacher card's objective line comes from the objective's own description, a custom one's too."""
    from hf_fairkd.objectives import OBJECTIVES, TeacherERM, register_objective

    @register_objective("test_only_teacher")
    class TestOnlyTeacher(TeacherERM):
        """Cross-entropy on a made-up schedule, for this test only."""

    try:
        record, *_ = teacher_record()
        for name, description in (
            ("erm", "empirical risk minimisation: plain cross-entropy on the long-tailed data"),
            ("test_only_teacher", "Cross-entropy on a made-up schedule, for this test only."),
        ):
            record["settings"]["objective"] = name
            line = build_teacher_card(record).text.split("**Training objective:** ")[1].splitlines()[0]
            assert line == f"{name.replace('_', chr(92) + '_')} — {description}."
    finally:
        del OBJECTIVES["test_only_teacher"]
