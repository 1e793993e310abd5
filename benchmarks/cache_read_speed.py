"""Reading a dense teacher cache of 1,000 classes through the training transform: format 3 (one binary value per
row) against format 2 (a list of 1,000 floats per row), in one run.

Run from the repo root:  python benchmarks/cache_read_speed.py
Writes benchmarks/results/cache_read_speed.json and prints a table.

The split is what `prepare_splits` makes (8x8 RGB images decoded once, `hf_fairkd.run.pixels.decoded_pixels`) with
the training transform `hf_fairkd.run.preprocessing.with_pixel_transform`; a linear "teacher" of 1,000 classes is
cached with `build_teacher_cache` (float16, format 3), and the same logits are stored as format 2 stored them
(a fixed-length list column with a format-2 record). A top-10 cache and the split without any cache are measured
alongside. Each measurement fetches a random batch of 128 rows the way the DataLoader does
(``split.__getitems__(indices)``: the transform runs on the batch), and, for the full path, collates it with the
trainer's collator (`CacheCollator` over `default_data_collator`) and reads the teacher logits
(`cached_logits_from_batch`). The variants run interleaved, the same batches for each, in rotating order;
medians are reported, and the format-2 / format-3 ratio is taken per repetition (paired) and from the medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image, List, Value, disable_progress_bars
from PIL import Image as PILImage
from transformers import PretrainedConfig, ViTImageProcessorPil, default_data_collator
from transformers.utils import logging as hf_logging

import hf_fairkd.teacher_cache as tc
from hf_fairkd.io_utils import atomic_write_json
from hf_fairkd.run.pixels import PIXELS, decoded_pixels
from hf_fairkd.run.preprocessing import with_pixel_transform
from hf_fairkd.teacher_record import _attach_record, _cache_fingerprint

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "cache_read_speed.json"
NUM_CLASSES, BATCH, TOP_K, IMAGE = 1000, 128, 10, 8


class LinearTeacher(torch.nn.Module):
    """1,000 logits from a fixed random linear map of the pixels (what it computes does not matter here)."""

    def __init__(self):
        super().__init__()
        self.config = PretrainedConfig(num_labels=NUM_CLASSES)
        self.head = torch.nn.Linear(3 * IMAGE * IMAGE, NUM_CLASSES)
        torch.nn.init.normal_(self.head.weight, std=0.5)

    def forward(self, pixel_values):
        return SimpleNamespace(logits=self.head(pixel_values.flatten(1)))


def split(rows: int):
    """A decoded-pixels split of ``rows`` random 8x8 images over 1,000 labels, and its tensor steps."""
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(a) for a in rng.integers(0, 256, (rows, IMAGE, IMAGE, 3), dtype=np.uint8)]
    features = Features({"image": Image(), "label": ClassLabel(num_classes=NUM_CLASSES)})
    labels = rng.integers(0, NUM_CLASSES, rows).tolist()
    data = Dataset.from_dict({"image": images, "label": labels}, features=features)
    processor = ViTImageProcessorPil(
        size={"height": IMAGE, "width": IMAGE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    decoded, steps = decoded_pixels(data, "image", {PIXELS: processor})
    return decoded, steps


def as_format_2(cached):
    """The dense cache ``cached`` as format 2 stored it: a list of floats per row, a format-2 record."""
    record = tc.teacher_cache_info(cached)
    logits = tc.cached_logits_from_batch(cached.with_format(None)[:], NUM_CLASSES).numpy()
    legacy = cached.remove_columns([tc.DENSE_COLUMN]).add_column(
        tc.DENSE_COLUMN,
        logits.astype(np.float16).tolist(),
        feature=List(Value("float16"), length=NUM_CLASSES),
    )
    old = {k: v for k, v in record.items() if k != "dense_encoding"} | {"format_version": 2}
    old["cache_fingerprint"] = _cache_fingerprint(old)
    _attach_record(legacy, old)
    return legacy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--repetitions", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    cli = parser.parse_args()
    hf_logging.set_verbosity_error()
    disable_progress_bars()
    torch.set_num_threads(cli.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()

    decoded, steps = split(cli.rows)
    outputs = {"pixel_values": PIXELS}
    train = with_pixel_transform(decoded, steps, "label", outputs)  # the training transform (no augmentation)
    teacher = LinearTeacher().eval()
    binary = tc.build_teacher_cache(train, teacher, batch_size=256)  # format 3, float16
    lists = as_format_2(binary)
    topk = tc.build_teacher_cache(train, teacher, batch_size=256, top_k=TOP_K)
    variants = {"no_cache": train, "dense_format_3": binary, "dense_format_2": lists, f"top{TOP_K}": topk}
    # the same logits both ways, through the transform and the trainer's collator
    assert tc.teacher_cache_info(binary)["format_version"] == 3
    assert tc.teacher_cache_info(lists)["format_version"] == 2
    collate = tc.CacheCollator(default_data_collator)
    probe = list(range(0, cli.rows, max(1, cli.rows // BATCH)))[:BATCH]
    same = [
        tc.cached_logits_from_batch(collate(variants[name].__getitems__(probe)), NUM_CLASSES)
        for name in ("dense_format_3", "dense_format_2")
    ]
    assert torch.equal(*same), "format 3 and format 2 read back different logits"

    rng = np.random.default_rng(1)
    batches = [rng.choice(cli.rows, BATCH, replace=False).tolist() for _ in range(cli.repetitions)]

    def fetch(dataset, indices):
        return dataset.__getitems__(indices)

    def full(dataset, indices):
        batch = collate(dataset.__getitems__(indices))
        return tc.cached_logits_from_batch(batch, NUM_CLASSES)

    names = list(variants)
    for name in names:  # warm-up
        fetch(variants[name], batches[0])
        full(variants[name], batches[0])
    seconds = {kind: {name: [] for name in names} for kind in ("fetch", "fetch_collate_logits")}
    for rep, indices in enumerate(batches):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            for kind, run in (("fetch", fetch), ("fetch_collate_logits", full)):
                start = time.perf_counter()
                run(variants[name], indices)
                seconds[kind][name].append(time.perf_counter() - start)
    ms = {kind: {n: 1000 * statistics.median(v) for n, v in runs.items()} for kind, runs in seconds.items()}

    def ratios(kind):
        old, new = seconds[kind]["dense_format_2"], seconds[kind]["dense_format_3"]
        return {
            "format_2_over_format_3": ms[kind]["dense_format_2"] / ms[kind]["dense_format_3"],
            "format_2_over_format_3_paired": statistics.median(o / n for o, n in zip(old, new)),
        }

    def row_bytes(dataset, columns):
        return dataset.data.table.select(columns).nbytes / len(dataset)

    results = {
        "fetch_format_2_over_format_3": round(ratios("fetch")["format_2_over_format_3"], 2),
        "ms_per_batch": {kind: {n: round(v, 2) for n, v in runs.items()} for kind, runs in ms.items()},
        "ratios": {kind: {k: round(v, 2) for k, v in ratios(kind).items()} for kind in seconds},
        # the cache's own share: the fetch minus the same fetch of the split without a cache
        "cache_ms_per_batch": {
            n: round(ms["fetch"][n] - ms["fetch"]["no_cache"], 2) for n in names if n != "no_cache"
        },
        "bytes_per_row": {
            "dense_format_3": row_bytes(binary, [tc.DENSE_COLUMN]),
            "dense_format_2": row_bytes(lists, [tc.DENSE_COLUMN]),
            f"top{TOP_K}": row_bytes(topk, list(tc.TOPK_COLUMNS)),
        },
        "raw_ms": {
            kind: {n: [round(1000 * x, 3) for x in v] for n, v in runs.items()}
            for kind, runs in seconds.items()
        },
        "setup": {
            "num_classes": NUM_CLASSES,
            "batch": BATCH,
            "rows": cli.rows,
            "repetitions": cli.repetitions,
            "images": f"{IMAGE}x{IMAGE} RGB, decoded once (decoded_pixels), with_pixel_transform, no augmentation",
            "cache_dtype": "float16",
            "fetch": "split.__getitems__(128 random indices), as the DataLoader fetches a batch",
            "fetch_collate_logits": "fetch + CacheCollator(default_data_collator) + cached_logits_from_batch",
        },
        "seconds_total": round(time.perf_counter() - started, 1),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
    print(f"{'ms per batch of 128':<28}" + "".join(f"{n:>16}" for n in names))
    for kind, runs in ms.items():
        print(f"{kind:<28}" + "".join(f"{runs[n]:>16.2f}" for n in names))
    for kind in seconds:
        r = results["ratios"][kind]
        print(
            f"{kind + ': format 2 / format 3':<44}{r['format_2_over_format_3']:>8.2f}"
            f"   (paired {r['format_2_over_format_3_paired']:.2f})"
        )
    print(f"{'bytes per row':<28}" + "".join(f"{k}={v:.0f}  " for k, v in results["bytes_per_row"].items()))
    atomic_write_json(RESULTS, results)  # a reader never sees half a results file
    print(f"wrote {RESULTS.relative_to(REPO)} in {results['seconds_total']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
