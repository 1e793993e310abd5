"""Time and size of the run record, model card and plot for 1,000 classes (the "Scale out" issue).

Builds a run record (teacher, one-hot baseline, student) from synthetic predictions over a long-tailed
count profile with hf_fairkd.results.schema.build_run_record, writes card + plot + metrics with
save_card_and_metrics, reads the card back with load_subgroup_metrics, and writes
benchmarks/results/card_1000_classes.json. Run:
    python benchmarks/card_scale.py [--num-classes 1000]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from hf_fairkd.data import long_tail_counts
from hf_fairkd.results import load_subgroup_metrics, save_card_and_metrics
from hf_fairkd.results.schema import CARD_FILE, METRICS_FILE, PLOT_FILE, build_run_record

RESULTS = Path(__file__).resolve().parent / "results" / "card_1000_classes.json"


def synthetic_run(num_classes: int = 1000, per_class_test: int = 20, seed: int = 0):
    """Logits of three models whose accuracy rises with the (long-tailed) training count."""
    rng = np.random.default_rng(seed)
    counts = long_tail_counts(500, num_classes, 100.0)
    labels = np.repeat(np.arange(num_classes), per_class_test)
    skill = np.log(np.asarray(counts, dtype=float)) / np.log(max(counts))  # 0 (rarest) .. 1 (commonest)
    logits = {}
    worse = rng.random(num_classes) < 0.05  # a few classes distillation hurts
    for role, base in (("teacher", 0.5), ("baseline", 0.2), ("student", 0.35)):
        p_right = np.clip(
            base + 0.5 * skill[labels] - (0.4 * worse[labels] if role == "student" else 0), 0, 1
        )
        right = rng.random(len(labels)) < p_right
        preds = np.where(right, labels, rng.integers(0, num_classes, len(labels)))
        logits[role] = preds  # class ids: build_run_record accepts (n,) predictions
    return logits, labels, [f"class_{i:04d}" for i in range(num_classes)], counts


def time_record_and_card(
    logits: dict,
    labels,
    out: str | Path,
    *,
    class_names,
    train_counts,
    settings: dict,
    dataset: dict | None = None,
    shot_counts=None,
) -> dict:
    """Build the run record (subgroup reports with intervals, paired deltas, calibration) with
    build_run_record, write card + plot + metrics into ``out`` with save_card_and_metrics, read the card back
    with load_subgroup_metrics; the seconds and sizes of each step (shared with benchmarks/scale.py)."""
    out = Path(out)
    start = time.perf_counter()
    record = build_run_record(
        logits,
        labels,
        class_names=class_names,
        train_counts=train_counts,
        shot_counts=shot_counts,
        dataset=dataset,
        settings=settings,
    )
    t_record = time.perf_counter() - start
    save_card_and_metrics(out, record)
    t_total = time.perf_counter() - start
    text = (out / CARD_FILE).read_text()
    header = text.split("---\n")[1]
    start = time.perf_counter()
    back = load_subgroup_metrics(out / CARD_FILE)
    t_read = time.perf_counter() - start
    block = yaml.safe_load(header)["hf_fairkd"]
    return {
        "num_classes": len(record["class_names"]),
        "num_test_images": int(len(labels)),
        "seconds_record": round(t_record, 3),
        "seconds_record_card_plot": round(t_total, 3),
        "seconds_read_card_back": round(t_read, 3),
        "card_bytes": len(text.encode()),
        "yaml_header_bytes": len(header.encode()),
        "hf_fairkd_block_bytes": len(yaml.safe_dump(block).encode()),
        "metrics_json_bytes": (out / METRICS_FILE).stat().st_size,
        "plot_bytes": (out / PLOT_FILE).stat().st_size,
        "per_class_read_back": len(back["student"]["per_class"]),
    }


def run(num_classes: int = 1000, out_dir: str | Path | None = None) -> dict:
    logits, labels, names, counts = synthetic_run(num_classes)
    settings = {"objective": "kd", "seed": 0, "dataset_name": "synthetic-lt", "student_model": "tiny"}
    dataset = {"source": "synthetic-lt", "profile": "exp", "imbalance_factor": 100.0, "seed": 0}
    with tempfile.TemporaryDirectory() as tmp:
        result = time_record_and_card(
            logits,
            labels,
            out_dir or tmp,
            class_names=names,
            train_counts=counts,
            dataset=dataset,
            settings=settings,
        )
    return {**result, "platform": platform.platform(), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--keep", help="write the card into this folder instead of a temporary one")
    args = parser.parse_args()
    result = run(args.num_classes, args.keep)
    print(json.dumps(result, indent=2))
    if args.num_classes == 1000 and not args.keep:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
