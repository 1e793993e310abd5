"""Which objective to use: the setting a named rule picks from the measured means over seeds, and how that pick
stands against the one-hot baseline by the significance rule.

As in the CIFAR-10-LT study's table, a pick is the best mean over seeds (ties: the first in table order, so the
baseline wins a tie), and the last column says whether its lead over the baseline is established by the rule or
only measured. ``best_overall`` is restricted to the settings that hurt no class and no group (the per-class and
per-group part of the rule): a gain in average accuracy bought with a rare class is not offered as the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .stats import verdict_vs_baseline
from .summary import SettingSummary

RULE_METRICS = {
    "best_worst_group": ("worst_group_accuracy", "the highest mean worst-group accuracy over seeds"),
    "best_worst_class": ("worst_class_accuracy", "the highest mean worst-class accuracy over seeds"),
    "best_overall": (
        "accuracy",
        "the highest mean overall accuracy over seeds among the settings that hurt no class and no group",
    ),
}
NEEDS = (
    ("I care about the worst group", "best_worst_group"),
    ("I care about the worst class", "best_worst_class"),
    ("I care about overall accuracy, with no class or group hurt", "best_overall"),
)


def pick_best(candidates: Sequence, value: Callable, higher: bool = True):
    """The candidate with the best value (None values skipped; ties: the first in order), or None."""
    best, best_value = None, None
    for candidate in candidates:
        v = value(candidate)
        if v is None:
            continue
        if best is None or (v > best_value if higher else v < best_value):
            best, best_value = candidate, v
    return best


@dataclass
class Choice:
    rule: str
    metric: str
    summary: SettingSummary | None
    verdict: str

    @property
    def description(self) -> str:
        return RULE_METRICS[self.rule][1]


def baseline_of(summaries: Sequence[SettingSummary]) -> SettingSummary | None:
    return next((s for s in summaries if s.setting.is_baseline), None)


def candidates_for(summaries: Sequence[SettingSummary], rule: str) -> list[SettingSummary]:
    """The settings a rule may pick: those with finished runs (for best_overall: and that hurt nothing)."""
    out = [s for s in summaries if s.runs]
    if rule == "best_overall":
        out = [s for s in out if s.setting.is_baseline or s.hurts_nothing()]
    return out


def choose(summaries: Sequence[SettingSummary], rule: str) -> Choice:
    """The setting ``rule`` picks (None: no finished run has the metric, e.g. no groups) and its verdict."""
    if rule not in RULE_METRICS:
        raise ValueError(f"Unknown rule {rule!r}: use one of {', '.join(RULE_METRICS)}.")
    metric = RULE_METRICS[rule][0]
    best = pick_best(candidates_for(summaries, rule), lambda s: s.mean(metric))
    baseline = baseline_of(summaries)
    if best is None:
        verdict = "no finished run reports this metric"
    elif best is baseline:
        verdict = "is the baseline"
    else:
        verdict = verdict_vs_baseline(
            best.values(metric), baseline.values(metric) if baseline else [], baseline="the baseline"
        )
    return Choice(rule, metric, best, verdict)


def which_objective_lines(summaries: Sequence[SettingSummary], chosen_rule: str, groups: bool) -> list[str]:
    """The "which objective should I use" table: one row per need (the worst-group row only with groups)."""
    baseline = baseline_of(summaries)
    lines = [
        "| need | rule | use | seeds | overall | worst class | worst group | pick vs baseline, by the rule |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for need, rule in NEEDS:
        if rule == "best_worst_group" and not groups:
            continue
        choice = choose(summaries, rule)
        marker = " (**--choose**)" if rule == chosen_rule else ""
        s = choice.summary
        if s is None:
            lines.append(f"| {need} | `{rule}`{marker} | no runs | | | | | {choice.verdict} |")
            continue
        cells = []
        for metric in ("accuracy", "worst_class_accuracy", "worst_group_accuracy"):
            mean, base = s.mean(metric), baseline.mean(metric) if baseline else None
            cells.append(
                "n/a" if mean is None else f"{mean:.1f}" + ("" if base is None else f" ({mean - base:+.1f})")
            )
        lines.append(
            f"| {need} | `{rule}`{marker} | {s.setting.label} | {s.seeds_text} | "
            + " | ".join(cells)
            + f" | {choice.verdict} |"
        )
    lines += [
        "",
        "Picked by the mean over seeds among the settings run here (ties: the first in table order, the baseline "
        "first); in brackets the difference to the baseline in points. `best_overall` considers only settings that "
        "hurt no class and no group. A pick the last column does not call above the baseline is a measurement of "
        "this comparison, not an established advantage.",
    ]
    return lines
