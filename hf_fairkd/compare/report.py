"""The comparison's reports, from the plan and the run files alone: ``comparison.json`` (every run and every
setting, machine-readable), ``comparison.md`` (one table, the "which objective" table, what is missing) and
``comparison_pareto.png``."""

from __future__ import annotations

from pathlib import Path

from ..io_utils import atomic_write_json, atomic_write_text, nan_to_none
from ..results.schema import public_name
from .choice import RULE_METRICS, Choice, baseline_of, choose, which_objective_lines
from .pareto import comparison_points, pareto_front, plot_pareto
from .plan import TEACHER, Run
from .stats import RULE, mean_std
from .store import code_text, code_version
from .summary import SettingSummary, class_rows, group_rows, has_groups, run_metrics, summarize

REPORT_FORMAT = 1
JSON_FILE, MD_FILE, PLOT_FILE = "comparison.json", "comparison.md", "comparison_pareto.png"
METRICS = (
    "accuracy",
    "balanced_accuracy",
    "worst_class_accuracy",
    "worst_group_accuracy",
    "wall_seconds",
    "cpu_seconds",
)


class Comparison:
    """The plan and its finished runs, read as settings, with the rule's choice."""

    def __init__(self, plan: list[Run], finished: dict[str, dict], document: dict, rule: str):
        self.plan, self.finished, self.document = plan, finished, document
        self.summaries: list[SettingSummary] = summarize(plan, finished)
        self.groups = has_groups(finished)
        self.rule = rule
        self.choice: Choice = choose(self.summaries, rule)
        self.missing = [run.key for run in plan if run.key not in finished]
        current = code_version()
        self.other_code = [
            (k, code_text(r.get("code"))) for k, r in finished.items() if r.get("code") != current
        ]
        self.other_plan = [
            k for k, r in finished.items() if r.get("plan_digest") not in (None, document["digest"])
        ]

    @property
    def baseline(self) -> SettingSummary | None:
        return baseline_of(self.summaries)

    @property
    def complete(self) -> bool:
        return not self.missing

    def chosen_run(self) -> dict | None:
        """The run file of the chosen setting's first planned seed (the one published), if it finished."""
        s = self.choice.summary
        if s is None:
            return None
        return next((r for r in s.runs if r.get("seed") == s.planned_seeds[0]), None)

    # -------------------------------------------------------------------------------------------- JSON
    def to_json(self) -> dict:
        base = self.baseline
        settings = []
        for s in self.summaries:
            entry = {
                **s.setting.to_dict(),
                "label": s.setting.label,
                "seeds": [r.get("seed") for r in s.runs],
            }
            entry["planned_seeds"] = list(s.planned_seeds)
            entry["metrics"] = {}
            for metric in METRICS:
                mean, sd = mean_std(s.values(metric))
                entry["metrics"][metric] = {"mean": mean, "sd": sd, "values": s.values(metric)}
            if base is not None and s is not base:
                entry["vs_baseline"] = {
                    m: {"diff": d.diff, "threshold": d.threshold, "outcome": d.outcome}
                    for m in ("accuracy", "worst_class_accuracy", "worst_group_accuracy")
                    for d in [s.diff(base, m)]
                }
            for verdict in ("hurt", "helped"):
                classes, groups = s.calls(verdict)
                entry[f"{verdict}_classes"], entry[f"{verdict}_groups"] = sorted(classes), sorted(groups)
            settings.append(entry)
        runs = []
        for run in self.plan:
            found = self.finished.get(run.key)
            if found is None:
                continue
            verdicts = {
                f"{v}_{what}": sorted({r["name"] for r in rows(found) if _verdict(r) == v})
                for v in ("hurt", "helped")
                for what, rows in (("classes", class_rows), ("groups", group_rows))
            }
            runs.append(
                {
                    **run.describe(),
                    "metrics": run_metrics(found),
                    **verdicts,
                    **{
                        k: found.get(k)
                        for k in ("wall_seconds", "cpu_seconds", "processes", "model_dir", "code")
                    },
                }
            )
        points = comparison_points(self.summaries)
        front = {}
        for metric in ("worst_class_accuracy", "worst_group_accuracy"):
            xy = [(p.values[metric][0], p.values["accuracy"][0]) for p in points]
            front[metric] = [points[i].label for i in pareto_front(xy)]
        chosen = self.choice.summary
        return nan_to_none(
            {
                "format": REPORT_FORMAT,
                "plan": {"digest": self.document["digest"], "runs": [r.key for r in self.plan]},
                "config": public_config(self.document.get("config") or {}),
                "code": code_version(),
                "choice": {
                    "rule": self.rule,
                    "metric": self.choice.metric,
                    "description": self.choice.description,
                    "setting": chosen.setting.to_dict() if chosen else None,
                    "label": chosen.setting.label if chosen else None,
                    "verdict": self.choice.verdict,
                    "published_seed": chosen.planned_seeds[0] if chosen else None,
                },
                "settings": settings,
                "teacher": self._teacher_json(),
                "runs": runs,
                "missing_runs": self.missing,
                "other_code_runs": [{"key": k, "code": c} for k, c in self.other_code],
                "other_plan_runs": self.other_plan,
                "pareto_front": front,
            }
        )

    def _teacher_json(self) -> dict | None:
        run = self.finished.get(TEACHER)
        if run is None:
            return None
        return {
            "metrics": run_metrics(run),
            "calibration": (run.get("record") or {}).get("teacher_calibration"),
        }

    # -------------------------------------------------------------------------------------------- Markdown
    def settings_table(self) -> list[str]:
        groups = self.groups
        head = "| setting | seeds | overall | Δ overall | worst class | Δ worst class |"
        rule = "|---|---:|---:|---:|---:|---:|"
        if groups:
            head += " worst group | Δ worst group |"
            rule += "---:|---:|"
        head += " classes hurt, helped | " + ("groups hurt, helped | " if groups else "") + "wall s | CPU s |"
        rule += "---|" + ("---|" if groups else "") + "---:|---:|"
        lines, columns = [head, rule], head.count("|") - 1
        for s in self.summaries:
            if not s.runs:
                lines.append(f"| {s.setting.label} | {s.seeds_text} | not run |" + " |" * (columns - 3))
                continue
            worst_class, worst_group = s.worst_names
            cells = [s.text("accuracy"), self._delta(s, "accuracy")]
            cells += [
                f"{s.text('worst_class_accuracy')} ({worst_class})",
                self._delta(s, "worst_class_accuracy"),
            ]
            if groups:
                cells += [
                    f"{s.text('worst_group_accuracy')} ({worst_group})",
                    self._delta(s, "worst_group_accuracy"),
                ]
            cells.append(self._calls(s, 0))
            if groups:
                cells.append(self._calls(s, 1))
            cells += [s.text("wall_seconds", 0), s.text("cpu_seconds", 0)]
            lines.append(f"| {s.setting.label} | {s.seeds_text} | " + " | ".join(cells) + " |")
        return lines

    def _delta(self, s: SettingSummary, metric: str) -> str:
        base = self.baseline
        return "—" if base is None or s is base else s.diff(base, metric).short()

    def _calls(self, s: SettingSummary, which: int) -> str:
        if s.setting.is_baseline:
            return "—"
        if not s.tested():
            return "not tested"
        hurt, helped = s.calls("hurt")[which], s.calls("helped")[which]
        parts = [
            f"{word}: {', '.join(sorted(names))}"
            for word, names in (("hurt", hurt), ("helped", helped))
            if names
        ]
        return "; ".join(parts) or "none"

    def markdown(self, plot_name: str | None = PLOT_FILE) -> str:
        config = self.document.get("config") or {}
        data = config.get("DataArguments") or {}
        model = config.get("ModelArguments") or {}
        teacher = self.finished.get(TEACHER)
        if model.get("teacher_model_name_or_path"):
            teacher_text = f"given ({public_name(model['teacher_model_name_or_path'])})"
        elif teacher is not None:
            m = run_metrics(teacher)
            teacher_text = (
                f"`{model.get('teacher_objective')}`, trained here once: overall {100 * m['accuracy']:.1f}, worst "
                f"class {100 * m['worst_class_accuracy']:.1f} ({m['worst_class']})"
            )
        else:
            teacher_text = f"`{model.get('teacher_objective')}`, not trained yet"
        seeds = sorted({run.seed for run in self.plan if run.kind == "baseline"})
        lines = [
            "# Which objective for this data?",
            "",
            f"Dataset `{public_name(data.get('dataset_name'))}`; teacher {teacher_text}; seeds {', '.join(map(str, seeds))} "
            f"(one one-hot baseline per seed; every student is compared with its own seed's). Code "
            f"{code_text(code_version())}; plan {self.document['digest']}. Test accuracy in %, mean ± sd over seeds; "
            "Δ: difference of means to the baseline with the rule below; hurt / helped: classes (groups) the paired "
            "exact test calls so in most seeds.",
            "",
            *self.settings_table(),
            "",
            f"**The rule.** {RULE}",
            "",
            *self.missing_lines(),
            "",
            "## Which objective should I use",
            "",
            *which_objective_lines(self.summaries, self.rule, self.groups),
            "",
            self.choice_line(),
        ]
        if plot_name:
            lines += ["", f"![Overall against worst-class (and worst-group) accuracy]({plot_name})"]
        return "\n".join(lines) + "\n"

    def missing_lines(self) -> list[str]:
        if not self.missing:
            out = [f"Missing runs: none ({len(self.plan)} of {len(self.plan)} planned runs finished)."]
        else:
            out = [
                f"Missing runs ({len(self.missing)} of {len(self.plan)}): "
                + ", ".join(f"`{k}`" for k in self.missing)
                + ". Run the same command again to finish them."
            ]
        if self.other_code:
            out.append(
                "Runs from another code version (kept; `--rerun_other_code` retrains them): "
                + ", ".join(f"`{k}` ({c})" for k, c in self.other_code)
                + "."
            )
        if self.other_plan:
            out.append(
                "Run files of another plan (retrained): " + ", ".join(f"`{k}`" for k in self.other_plan) + "."
            )
        return out

    def choice_line(self) -> str:
        s = self.choice.summary
        if s is None:
            return f"**Chosen** (`--choose {self.rule}`): nothing yet ({self.choice.verdict})."
        return (
            f"**Chosen** (`--choose {self.rule}`: {self.choice.description}): **{s.setting.label}**, "
            f"{s.text(self.choice.metric)} over {s.seeds_text} seed(s); against the baseline: {self.choice.verdict}. "
            f"The published model is its seed {s.planned_seeds[0]}."
        )

    # -------------------------------------------------------------------------------------------- files
    def write(self, output_dir) -> dict[str, Path]:
        """comparison.json, comparison.md and the Pareto plot into ``output_dir``; returns their paths."""
        out = Path(output_dir)
        title = (
            "Overall vs worst-class" + (" and worst-group" if self.groups else "") + " accuracy (mean ± 1 sd)"
        )
        panels = [("worst_class_accuracy", "worst-class test accuracy (%)")]
        if self.groups:
            panels.append(("worst_group_accuracy", "worst-group test accuracy (%)"))
        plot = plot_pareto(comparison_points(self.summaries), out / PLOT_FILE, panels, title)
        paths = {"json": atomic_write_json(out / JSON_FILE, self.to_json())}
        paths["md"] = atomic_write_text(out / MD_FILE, self.markdown(PLOT_FILE if plot else None))
        if plot:
            paths["plot"] = plot
        return paths


def public_config(config: dict) -> dict:
    """The plan's configuration as it may be published: a local dataset, model or config by its own name only
    (`hf_fairkd.results.public_name`), as records and cards name them."""
    return {
        group: {
            k: public_name(v) if isinstance(v, str) and ("name" in k or "path" in k) else v
            for k, v in values.items()
        }
        for group, values in config.items()
    }


def _verdict(row) -> str | None:
    from ..metrics.paired import delta_verdict

    return delta_verdict(row)


def card_section(comparison: Comparison) -> str:
    """The short section of the published student's card: how it was chosen, and where the whole comparison is."""
    s = comparison.choice.summary
    base = comparison.baseline
    parts = [
        f"Chosen by the hf-fairkd objective comparison (recipes/compare_objectives.py, --choose {comparison.rule}: "
        f"{comparison.choice.description}) among {len(comparison.summaries)} settings "
        f"({', '.join(x.setting.label for x in comparison.summaries)}), each trained with seeds "
        f"{', '.join(map(str, s.planned_seeds))} against a one-hot baseline of the same seed.",
        f"This model is {s.setting.label}, seed {s.planned_seeds[0]}. Over its seeds: overall "
        f"{s.text('accuracy')}%, worst class {s.text('worst_class_accuracy')}%"
        + (f", worst group {s.text('worst_group_accuracy')}%" if comparison.groups else "")
        + (f" (baseline: {base.text('accuracy')}% / {base.text('worst_class_accuracy')}%)" if base else "")
        + f"; {RULE_METRICS[comparison.rule][0].replace('_', ' ')} against the baseline: {comparison.choice.verdict}.",
        "The whole comparison (every setting, mean ± sd over seeds, the significance rule, per-class and per-group "
        "verdicts) is in comparison.md and comparison.json in this repository.",
    ]
    return "\n\n".join(parts)
