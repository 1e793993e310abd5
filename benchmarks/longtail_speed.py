"""Time long-tail construction: CIFAR-100-LT-sized synthetic data, and real CIFAR-10 when a local copy exists.

Run from the repo root:  python benchmarks/longtail_speed.py
Writes benchmarks/results/longtail_speed.json and prints one line per measurement.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from hf_fairkd.data import load_source, long_tail_counts, long_tail_info, make_long_tailed, split_holdout

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "longtail_speed.json"
CIFAR10_CANDIDATES = [Path("/work/shared/datasets/cifar10"), REPO.parent / "shared" / "datasets" / "cifar10"]


def synthetic_cifar100(rows: int = 50_000, num_classes: int = 100) -> Dataset:
    """Balanced rows with real 32x32 PNG bytes, so any accidental decode would cost seconds."""
    rng = np.random.default_rng(0)
    pngs = []
    for _ in range(16):  # a few distinct images, reused: building 50,000 PNGs would dominate the benchmark
        buf = io.BytesIO()
        PILImage.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
        pngs.append({"bytes": buf.getvalue(), "path": None})
    labels = np.tile(np.arange(num_classes), rows // num_classes)
    features = Features({"img": Image(), "fine_label": ClassLabel(num_classes=num_classes)})
    return Dataset.from_dict(
        {"img": [pngs[i % 16] for i in range(rows)], "fine_label": labels}, features=features
    )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    results: dict = {}
    ds = synthetic_cifar100()
    lt, seconds = timed(lambda: make_long_tailed(ds, 100, label_column="fine_label"))
    assert long_tail_info(lt).long_tail_counts == long_tail_counts(500, 100, 100)
    (_, _), holdout_seconds = timed(lambda: split_holdout(lt, 1, label_column="fine_label"))
    results.update(
        rows=len(ds), seconds=round(seconds, 4), lt_rows=len(lt), holdout_seconds=round(holdout_seconds, 4)
    )
    print(
        f"synthetic CIFAR-100-LT: {len(ds)} rows -> {len(lt)} rows in {seconds:.3f}s (holdout {holdout_seconds:.3f}s)"
    )

    local = next((p for p in CIFAR10_CANDIDATES if p.is_dir()), None)
    if local is not None:
        (source, label, _), load_seconds = timed(lambda: load_source(str(local)))
        lt10, lt_seconds = timed(lambda: make_long_tailed(source["train"], 100, label_column=label))
        assert sum(long_tail_info(lt10).long_tail_counts) == 12406
        results["cifar10"] = {
            "path": os.path.relpath(local, REPO),
            "rows": len(source["train"]),
            "lt_rows": len(lt10),
            "load_seconds": round(load_seconds, 4),
            "seconds": round(lt_seconds, 4),
        }
        print(
            f"CIFAR-10 ({local}): load {load_seconds:.2f}s, long tail {len(lt10)} rows in {lt_seconds:.3f}s"
        )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, RESULTS)


if __name__ == "__main__":
    main()
