"""Speed of hf_fairkd.metrics on 1,000,000 predictions over 1,000 classes.

Times subgroup_report with and without intervals (and with two group columns, and paired_delta),
writes benchmarks/results/metrics_speed.json and prints a table. Run:
    python benchmarks/metrics_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from hf_fairkd.metrics import paired_delta, subgroup_report

RESULTS = Path(__file__).resolve().parent / "results" / "metrics_speed.json"


def _data(n: int, num_classes: int, seed: int = 0):
    """Long-tailed labels (exponential profile, factor 100) and a 70%-accurate model."""
    rng = np.random.default_rng(seed)
    weights = 100.0 ** (-np.arange(num_classes) / (num_classes - 1))
    refs = rng.choice(num_classes, size=n, p=weights / weights.sum())
    refs[:num_classes] = np.arange(num_classes)  # every class present: no missing-class warning
    preds = np.where(rng.random(n) < 0.7, refs, rng.integers(0, num_classes, n))
    other = np.where(rng.random(n) < 0.9, preds, rng.integers(0, num_classes, n))
    train_counts = np.round(500 * weights).astype(int)
    groups = {"site": rng.integers(0, 8, n), "device": rng.choice(["phone", "tablet", "laptop"], n)}
    return preds, other, refs, train_counts, groups


def _best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    preds, other, refs, train_counts, groups = _data(args.n, args.num_classes)
    cases = {
        "subgroup_report": lambda: subgroup_report(preds, refs, train_counts=train_counts),
        "subgroup_report intervals=False": lambda: subgroup_report(
            preds, refs, train_counts=train_counts, intervals=False
        ),
        "subgroup_report + 2 group columns": lambda: subgroup_report(
            preds, refs, train_counts=train_counts, groups=groups
        ),
        "paired_delta": lambda: paired_delta(preds, other, refs, num_classes=args.num_classes),
    }
    rows = [{"case": name, "seconds": _best_of(args.repeats, fn)} for name, fn in cases.items()]

    result = {
        "n_predictions": args.n,
        "num_classes": args.num_classes,
        "repeats": args.repeats,
        "timing": "best of repeats, wall clock (time.perf_counter)",
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    width = max(len(r["case"]) for r in rows)
    print(f"{args.n:,} predictions, {args.num_classes:,} classes (best of {args.repeats})")
    print(f"{'case':<{width}}  seconds")
    for r in rows:
        print(f"{r['case']:<{width}}  {r['seconds']:.3f}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
