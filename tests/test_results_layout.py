"""The results layout: no import cycle in the package, no global matplotlib backend switch, one record builder."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hf_fairkd.results import schema

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hf_fairkd"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _resolve(name: str, modules) -> str | None:
    """The deepest module of the package that ``name`` (a dotted name, maybe module.attribute) names."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, modules) -> set[str]:
    """Modules of the package that ``module`` imports, at module level or inside functions; a package's
    lazy ``_LAZY`` table (name -> module) counts as imports too."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(_resolve(a.name, modules) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            targets.update(_resolve(f"{base}.{a.name}", modules) for a in node.names)
        elif (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            for value in node.value.values:
                name = value.value if value.value.startswith("hf_fairkd") else f"{module}.{value.value}"
                targets.add(_resolve(name, modules))
    return {t for t in targets if t and t != module}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_import_graph_has_no_cycle():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert "hf_fairkd.results.card_block" in graph["hf_fairkd.results.hub"]  # the walk sees function imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    results = {m: g for m, g in graph.items() if m.startswith("hf_fairkd.results.")}
    assert not any("plots" in t or t.endswith(".card") for t in results["hf_fairkd.results.hub"])
    assert not any(t.endswith((".card", ".hub", ".plots")) for t in results["hf_fairkd.results.schema"])


@pytest.mark.slow  # one interpreter per module (~25 s); the import graph has no cycle: test_the_package_import_graph_has_no_cycle
def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imported with no other hf_fairkd module loaded: an import-order cycle would fail here."""
    code = textwrap.dedent(
        """
        import importlib, sys, traceback
        failures = []
        for name in sys.argv[1:]:
            for loaded in [m for m in sys.modules if m == "hf_fairkd" or m.startswith("hf_fairkd.")]:
                del sys.modules[loaded]
            try:
                module = importlib.import_module(name)
                for attribute in getattr(module, "__all__", []):
                    getattr(module, attribute)
            except Exception:
                failures.append(name + ": " + traceback.format_exc(limit=3))
        print("\\n".join(failures))
        sys.exit(1 if failures else 0)
        """
    )
    names = [m for m in _modules() if ".metrics.per_class_accuracy" not in m]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code, *names], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _tiny_record() -> dict:
    labels = np.repeat(np.arange(3), 4)
    eye = np.eye(3)
    student = eye[labels].copy()
    student[0] = eye[1]
    logits = {"teacher": eye[labels] * 2.0, "baseline": eye[(labels + (labels == 2)) % 3], "student": student}
    return schema.build_run_record(
        logits,
        labels,
        class_names=["a", "b$c", "d"],
        train_counts=[300, 40, 5],
        settings={"objective": "kd", "seed": 0, "dataset_name": "user/data"},
        intervals=False,
    )


NO_BACKEND_SWITCH = """
import json, os, sys
from pathlib import Path

import matplotlib

before = matplotlib.get_backend()
import hf_fairkd
import hf_fairkd.results as results

out = Path(sys.argv[1])
record = json.loads(out.joinpath("record.json").read_text())
if sys.argv[2] == "write":
    results.save_card_and_metrics(out, record)
    assert out.joinpath("per_class_accuracy.png").read_bytes()[:4] == b"\\x89PNG"
    assert results.load_subgroup_metrics(out)["student"] == record["student"]
else:  # reading back only: from the metrics file, then from the card alone
    assert hf_fairkd.load_subgroup_metrics(out)["student"] == record["student"]
    out.joinpath("subgroup_metrics.json").unlink()
    assert results.load_subgroup_metrics(out)["recovered_from"] == "model_card"
    assert "matplotlib.figure" not in sys.modules, "reading back imported the plotting code"
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
after = matplotlib.get_backend()
assert after == before == os.environ["MPLBACKEND"], (before, after)
print("ok")
"""


@pytest.mark.parametrize("backend", ["svg", pytest.param("pdf", marks=pytest.mark.slow)])
def test_results_never_switch_the_matplotlib_backend(tmp_path, backend):
    tmp_path.joinpath("record.json").write_text(json.dumps(_tiny_record()))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": backend}
    for step in ("write", "read"):
        result = subprocess.run(
            [sys.executable, "-c", NO_BACKEND_SWITCH, str(tmp_path), step],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


@pytest.fixture
def built(monkeypatch):
    """Every record made through schema.build_run_record while the test runs."""
    records, real = [], schema.build_run_record

    def spy(*args, **kwargs):
        records.append(real(*args, **kwargs))
        return records[-1]

    monkeypatch.setattr(schema, "build_run_record", spy)
    return records


def _check_schema(record: dict) -> None:
    assert set(schema.RECORD_KEYS) <= set(record) and record["format_version"] == schema.FORMAT_VERSION
    assert set(record) - set(schema.RECORD_KEYS) <= {
        *schema.ROLES,
        "student_minus_baseline",
        "teacher_calibration",
    }


def test_the_trainer_card_path_builds_its_record_with_build_run_record(built):
    from hf_fairkd.config import DistillationArguments
    from hf_fairkd.results.publishing import PublishingMixin

    labels = np.repeat(np.arange(3), 4)
    trainer = SimpleNamespace(
        eval_dataset=[0] * len(labels),
        predict=lambda dataset: SimpleNamespace(predictions=(np.eye(3)[labels], None), label_ids=labels),
        model=SimpleNamespace(config=SimpleNamespace(id2label={0: "a", 1: "b", 2: "c"})),
        objective=SimpleNamespace(num_classes=3),
        class_counts=__import__("torch").tensor([30, 8, 2]),
        args=DistillationArguments(output_dir="unused", objective="kd", report_to="none"),
    )
    record = PublishingMixin._metrics_from_eval_dataset(trainer)
    assert built == [record] and set(record) == {*schema.RECORD_KEYS, "student"}
    _check_schema(record)
    assert record["settings"] == schema.run_settings(trainer.args)


def _calls(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def test_records_and_settings_are_built_in_one_place():
    """The recipes build their record and settings with the schema's functions; nothing else in the package,
    the recipes or the benchmarks builds reports or a settings dict by hand."""
    for runner in (PACKAGE / "run" / "distill.py", ROOT / "recipes" / "train_teacher.py"):
        calls = _calls(runner)
        assert "run_settings" in calls and "record_on_test_split" in calls, runner
    # the recipes' one record builder hands over to the schema's
    assert "record_from_info" in _calls(PACKAGE / "run" / "stages.py")
    builders = {"subgroup_report", "paired_delta", "calibration_report"}
    allowed = {PACKAGE / "results" / "schema.py", ROOT / "benchmarks" / "metrics_speed.py"}
    for folder in (PACKAGE, ROOT / "recipes", ROOT / "benchmarks"):
        for path in folder.rglob("*.py"):
            if path in allowed or "metrics" in path.relative_to(ROOT).parts[:2]:
                continue
            assert not builders & _calls(path), f"{path} builds reports itself; use build_run_record"
            for node in ast.walk(ast.parse(path.read_text("utf-8"))):
                if isinstance(node, ast.Dict):
                    keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                    assert "objective_params" not in keys, f"{path} builds a settings dict; use run_settings"


def test_hurt_and_helped_is_the_one_rule_over_a_record():
    from hf_fairkd.metrics import hurt_and_helped_classes

    record = _tiny_record()
    verdicts = schema.class_verdicts(record)
    hurt, helped = hurt_and_helped_classes(record["student_minus_baseline"])
    assert not hasattr(schema, "hurt_and_helped")  # one function names them, for rows and for a record
    assert sorted(hurt + helped) == sorted(
        row["name"]
        for row in record["student_minus_baseline"]
        if verdicts[row["class_id"]] in ("hurt", "helped")
    )
    assert "Classes it helped" in schema.format_summary(record)


def test_the_trainer_takes_its_card_inputs_as_arguments(tmp_path, monkeypatch):
    """The recipes hand the record and the card's arguments to push_to_hub; no trainer attribute (a class
    attribute shared by every trainer) carries them."""
    from hf_fairkd.results import hub
    from hf_fairkd.results.publishing import PublishingMixin

    class Trainer(PublishingMixin):  # what push_to_hub reads of a transformers.Trainer
        def __init__(self, folder):
            self.args = SimpleNamespace(output_dir=str(folder), hub_model_id="you/student", hub_token="t",
                                        hub_revision=None, hub_private_repo=None)  # fmt: skip
            self.eval_dataset = None

        def save_model(self, output_dir=None, _internal_call=False):
            pass

        def is_world_process_zero(self):
            return True

    pushed = []
    monkeypatch.setattr(
        hub, "push_output_dir", lambda folder, repo_id, **kw: pushed.append((folder, repo_id))
    )
    record = _tiny_record()
    first, second = Trainer(tmp_path / "first"), Trainer(tmp_path / "second")
    first.push_to_hub(metrics=record, card_kwargs={"datasets": ["user/data"], "license": "mit"})
    card = (tmp_path / "first" / "README.md").read_text()
    assert "- user/data" in card and "license: mit" in card and 'load_subgroup_metrics("you/student")' in card
    assert json.loads((tmp_path / "first" / schema.METRICS_FILE).read_text()) == record
    assert pushed == [(str(tmp_path / "first"), "you/student")]
    second.create_model_card(metrics=record)  # nothing of the first trainer's card arguments
    assert "license: apache-2.0" in (tmp_path / "second" / "README.md").read_text()
    assert not {"subgroup_metrics", "card_kwargs"} & set(vars(PublishingMixin))
