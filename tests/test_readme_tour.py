"""The public names the README's tour shows still import and are what the tour says they are."""

import re
from pathlib import Path

import hf_fairkd

README = Path(__file__).resolve().parent.parent / "README.md"


def _tour_block() -> str:
    text = README.read_text("utf-8")
    section = text[text.index("## Quick start in Python") : text.index("## Objectives")]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_tour_imports_run():
    imports = [line for line in _tour_block().splitlines() if line.startswith(("from ", "import "))]
    assert len(imports) >= 4
    namespace: dict = {}
    exec("\n".join(imports), namespace)  # noqa: S102 - the README's own import lines
    for name in ("DistillationArguments", "DistillationTrainer", "load_long_tailed", "subgroup_report",
                 "load_subgroup_metrics", "read_group_values", "prepare_splits"):  # fmt: skip
        assert callable(namespace[name]), name


def test_the_names_the_tour_mentions_exist():
    from hf_fairkd.metrics import load_metric
    from hf_fairkd.run.preprocessing import prepare_splits
    from hf_fairkd.teacher import build_teacher_cache

    assert callable(load_metric) and callable(prepare_splits) and callable(build_teacher_cache)
    assert "robust_kd" in hf_fairkd.available_objectives()
    assert set(hf_fairkd.teacher_objectives()) == {"erm", "balanced", "dro"}
    assert "kd" in hf_fairkd.student_objectives() and "erm" not in hf_fairkd.student_objectives()
    assert callable(hf_fairkd.register_objective) and callable(hf_fairkd.load_subgroup_metrics)
    for name in re.findall(r"`hf_fairkd\.([a-z_]+)\(", README.read_text("utf-8")):
        assert callable(getattr(hf_fairkd, name)), name


def test_the_quick_start_is_the_example_that_runs_in_ci():
    """Every call of the README's quick start appears in examples/quickstart_groups.py (tested end to end)."""
    example = (README.parent / "examples" / "quickstart_groups.py").read_text("utf-8")
    for call in ("load_long_tailed(\"digits_spurious\", group_columns=[\"colour\"])", "prepare_splits(",
                 "dro_groups=\"class_x_group\"", "group_columns=[\"colour\"]", "subgroup_report(",
                 "read_group_values(splits[\"test\"], [\"colour\"])", "group_train_counts=info.group_train_counts"):  # fmt: skip
        assert call in _tour_block() and call in example, call


def test_the_readme_is_short_and_links_what_moved_out():
    text = README.read_text("utf-8")
    assert len(text.splitlines()) <= 220
    for page in re.findall(r"\]\(((?:docs|benchmarks|examples)/[^)]+)\)", text):
        assert (README.parent / page).is_file(), page
