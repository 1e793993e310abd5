"""Helpers of benchmarks/scale.py: the generated ImageNet-LT-shaped dataset (written once with save_to_disk),
stale map caches, resident memory, the machine, and what backs a dataset on disk."""

from __future__ import annotations

import glob
import io
import json
import os
import platform
import re
import resource
import shutil
import time
from pathlib import Path

import numpy as np


# ------------------------------------------------------------------------------------------------ data
def class_colour(class_id: int) -> np.ndarray:
    """A distinct mean colour per class (a 10 x 10 x 10 grid, then repeating)."""
    return np.array([class_id % 10, (class_id // 10) % 10, (class_id // 100) % 10]) * 20 + 30


def _rows(classes: int, per_class: int, size: int, seed: int):
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    for label in range(classes):
        noise = rng.integers(0, 60, size=(per_class, size, size, 3))
        pixels = (noise + class_colour(label) - 30).clip(0, 255).astype(np.uint8)
        for image in pixels:
            buffer = io.BytesIO()
            PILImage.fromarray(image).save(buffer, format="PNG", compress_level=1)
            yield {"image": {"bytes": buffer.getvalue(), "path": None}, "label": label}


def generate(folder: Path, spec: dict) -> float | None:
    """Write the dataset (train: balanced source, test: balanced) with save_to_disk unless ``folder`` already
    holds one of ``spec``; the seconds it took (None when reused)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    marker = folder / "scale_spec.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return None
    start = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    scratch = folder.parent / (folder.name + "_generating")
    shutil.rmtree(scratch, ignore_errors=True)
    names = [f"class_{i:04d}" for i in range(spec["classes"])]
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    splits = {}
    for split, per_class, seed in (
        ("train", spec["source_per_class"], spec["seed"]),
        ("test", spec["test_per_class"], spec["seed"] + 1),
    ):
        kwargs = dict(classes=spec["classes"], per_class=per_class, size=spec["image_size"], seed=seed)
        splits[split] = Dataset.from_generator(
            _rows, features=features, gen_kwargs=kwargs, cache_dir=str(scratch / split)
        )
    DatasetDict(splits).save_to_disk(str(folder))
    del splits
    shutil.rmtree(scratch, ignore_errors=True)
    marker.write_text(json.dumps(spec))
    return time.perf_counter() - start


def remove_stale_caches(folder: Path) -> int:
    """Delete the cache files earlier runs' selects and maps left next to the saved splits (so nothing below
    is read back from an earlier run's cache)."""
    stale = glob.glob(str(folder / "*" / "cache-*.arrow")) + glob.glob(str(folder / "*" / "tmp*"))
    for path in stale:
        os.remove(path)
    return len(stale)


# ------------------------------------------------------------------------------------------------ machine
def _gb(kilobytes: float) -> float:
    return round(kilobytes / 1024**2, 3)


def peak_rss() -> dict:
    """Peak resident set sizes so far (ru_maxrss, kB on Linux): this process, and its largest waited-for
    child (the decoding pool's workers)."""
    return {
        "self_gb": _gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        "children_gb": _gb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss),
    }


def current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return _gb(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024)


def machine(threads: int) -> dict:
    import datasets
    import PIL
    import pyarrow
    import torch
    import transformers

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        # os.uname, not platform.platform(): that forks `uname -p`, whose fork would count in RUSAGE_CHILDREN
        "platform": "-".join(
            (*(getattr(os.uname(), f) for f in ("sysname", "release", "machine")), *platform.libc_ver())
        ),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "pyarrow": pyarrow.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
        },
    }


def file_backing(dataset) -> dict:
    """Whether ``dataset`` is read from Arrow files on disk (memory-mapped), and how large they are."""
    files = [f["filename"] for f in dataset.cache_files]
    return {
        "file_backed": bool(files) and all(os.path.exists(f) for f in files),
        "cache_files": len(files),
        "bytes_on_disk": int(sum(os.path.getsize(f) for f in files if os.path.exists(f))),
    }


def map_processes(dataset) -> int:
    """The processes a `Dataset.map` ran in, read from its cache files' names (``_00000_of_00002``)."""
    shards = {
        int(m.group(1))
        for f in dataset.cache_files
        if (m := re.search(r"_\d{5}_of_(\d{5})\.arrow$", f["filename"]))
    }
    return max(shards) if shards else 1
