"""The one significance rule of a comparison over seeds (from the CIFAR-10-LT study, unchanged).

Means: a difference of means over seeds between two settings counts only when both ran with at least 2 seeds
and it exceeds twice the pooled sample standard deviation of the metric over seeds (`Diff`). Per class and per
group: the exact McNemar test of each run's paired rows against its own seed's baseline
(`hf_fairkd.metrics.delta_verdict`) must say so in more than half of the seeds tested (`majority`).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

from ..metrics.paired import delta_verdict

RULE = (
    "A difference of means over seeds counts only when both settings ran with at least 2 seeds and |difference| "
    "> 2·s_p, s_p the pooled sample standard deviation over seeds of that metric, s_p² = ((n₁−1)s₁² + (n₂−1)s₂²) "
    "/ (n₁+n₂−2); with one seed no mean difference counts. A class (group) counts as hurt (helped) when the "
    "exact McNemar test of the student against the same seed's one-hot baseline (`hf_fairkd.metrics."
    "delta_verdict`: p < 0.05, the student wrong on more (fewer) of the discordant images; not corrected for "
    "the number of classes or groups) says so in more than half of the seeds tested."
)


def mean_std(values) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation) of the values that are not None; sd None with fewer than 2."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def pct(values) -> str:
    """'a ± s' in percent (fractions in), 'a' for one value, 'n/a' for none."""
    mean, std = mean_std(values)
    if mean is None:
        return "n/a"
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


@dataclass
class Diff:
    """Mean of ``a`` minus mean of ``b`` (per-seed values) under the rule."""

    a: list[float]
    b: list[float]

    @property
    def missing(self) -> bool:
        return not self.a or not self.b

    @property
    def diff(self) -> float | None:
        return None if self.missing else statistics.fmean(self.a) - statistics.fmean(self.b)

    @property
    def threshold(self) -> float | None:
        """2·s_p, or None when a setting has fewer than 2 seeds."""
        na, nb = len(self.a), len(self.b)
        if na < 2 or nb < 2:
            return None
        pooled = ((na - 1) * statistics.variance(self.a) + (nb - 1) * statistics.variance(self.b)) / (
            na + nb - 2
        )
        return 2 * math.sqrt(pooled)

    @property
    def outcome(self) -> str:
        """'higher' / 'lower' (a than b, by the rule), 'within', 'one seed' or 'missing'."""
        if self.missing:
            return "missing"
        if self.threshold is None:
            return "one seed"
        if abs(self.diff) <= self.threshold:
            return "within"
        return "higher" if self.diff > 0 else "lower"

    def text(self) -> str:
        if self.missing:
            return "n/a (runs missing)"
        ma, mb = statistics.fmean(self.a), statistics.fmean(self.b)
        t = self.threshold
        rule = f"one seed, {len(self.a)} vs {len(self.b)}" if t is None else f"2·s_p = {t:.1f}"
        return f"{ma:.1f} vs {mb:.1f}, {self.diff:+.1f} ({rule})"

    def short(self) -> str:
        """'+1.6 (> 2·s_p 1.1)', '+0.3 (within 2·s_p 1.4)', '+0.4 (one seed)' or 'n/a'."""
        if self.missing:
            return "n/a"
        t = self.threshold
        if t is None:
            return f"{self.diff:+.1f} (one seed)"
        return f"{self.diff:+.1f} ({'>' if self.outcome != 'within' else 'within'} 2·s_p {t:.1f})"


def row_calls(rows_per_run, verdict: str = "hurt", name_key: str = "name") -> tuple[int, dict[str, int]]:
    """(runs whose paired rows carry the exact test, name -> in how many of them `delta_verdict` says ``verdict``).
    ``rows_per_run``: one list of paired rows (`paired_delta` / `paired_group_delta`) per seed."""
    tested, calls = 0, defaultdict(int)
    for rows in rows_per_run:
        verdicts = [(row[name_key], delta_verdict(row)) for row in rows or []]
        if any(v is not None for _, v in verdicts):
            tested += 1
        for name, v in verdicts:
            if v == verdict:
                calls[name] += 1
    return tested, dict(calls)


def majority(rows_per_run, verdict: str = "hurt", name_key: str = "name") -> tuple[int, set[str]]:
    """(tested runs, names called ``verdict`` in more than half of them): the per-class / per-group rule."""
    tested, calls = row_calls(rows_per_run, verdict, name_key)
    return tested, {name for name, count in calls.items() if count > tested / 2}


def mean_delta(rows_per_run, name_key: str = "name") -> dict[str, float]:
    """Name -> mean over seeds of the paired delta (student minus the same seed's baseline)."""
    rows = defaultdict(list)
    for run_rows in rows_per_run:
        for row in run_rows or []:
            if row.get("delta") is not None:
                rows[row[name_key]].append(row["delta"])
    return {name: statistics.fmean(v) for name, v in rows.items()}


def verdict_vs_baseline(values, baseline_values, higher_is_better: bool = True, baseline: str = "ce") -> str:
    """How a pick stands against the baseline by the rule, in words (values in points)."""
    d = Diff(list(values), list(baseline_values))
    if d.outcome == "missing":
        return f"no {baseline} runs"
    if d.outcome == "one seed":
        return f"not established: {len(d.a)} seed(s) against {baseline}'s {len(d.b)}"
    threshold = d.threshold or 0
    if d.outcome == "within":
        return f"within the seed noise of {baseline} ({d.diff:+.1f}, 2·s_p = {threshold:.1f})"
    if d.outcome == ("higher" if higher_is_better else "lower"):
        word = "above" if higher_is_better else "below"
        return f"{word} {baseline} ({d.diff:+.1f}, beyond 2·s_p = {threshold:.1f})"
    return f"on the wrong side of {baseline} ({d.diff:+.1f}, beyond 2·s_p = {threshold:.1f})"
