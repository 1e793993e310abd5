"""The build half of benchmarks/view_cache.py: what `build_view_cache` costs against the teacher's bare forward over
the same views (made outside the timer, the same batch size, no grad), alternating which goes first, repeated;
and the hook that counts and times the teacher's forwards, which the epoch half and the equivalence part use too."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from hf_fairkd.run import preprocessing
from hf_fairkd.run.pixels import as_tensor, augment_views, draw_views
from hf_fairkd.run.view_cache import build_view_cache

REPO = Path(__file__).resolve().parent.parent
PRESET = REPO / "recipes" / "configs" / "cifar10_lt_budget.yaml"  # the budget CIFAR-10-LT preset's models


def median(values) -> float:
    return float(statistics.median(values))


class Forwards:
    """Teacher forwards, counted under the name of what is running, and the wall / CPU seconds spent in them."""

    def __init__(self, teacher):
        self.now, self.counts, self.wall, self.cpu = "setup", {}, 0.0, 0.0
        teacher.register_forward_pre_hook(self._enter)
        teacher.register_forward_hook(self._leave)

    def _enter(self, *_):
        self.started = time.perf_counter(), time.thread_time()

    def _leave(self, *_):
        self.counts[self.now] = self.counts.get(self.now, 0) + 1
        self.wall += time.perf_counter() - self.started[0]
        self.cpu += time.thread_time() - self.started[1]

    def take(self, name: str) -> int:
        return self.counts.pop(name, 0)


def plain_forward(train, teacher, epochs: int, batch: int) -> tuple[float, float, int]:
    """Wall and CPU seconds of the teacher's forwards alone over the views a build makes (views made outside
    the timer), and the number of forwards."""
    decoded, inputs = preprocessing.pixel_inputs_of(train)
    column = inputs.outputs.get("teacher_pixel_values", inputs.outputs["pixel_values"])
    steps, base = inputs.steps[column], inputs.base_width
    flips, shifts = draw_views(epochs, len(decoded), base, seed=0)
    raw = decoded.with_format("arrow", columns=[column])
    wall = cpu = 0.0
    calls = 0
    for start in range(0, len(decoded), batch):
        pixels = as_tensor(raw[start : start + batch].column(column).to_pylist(), steps.shape)
        for epoch in range(epochs):
            x = steps(
                augment_views(
                    pixels, flips[epoch, start : start + batch], shifts[epoch, start : start + batch], base
                )
            )
            t, c = time.perf_counter(), time.thread_time()
            with torch.no_grad():
                teacher(pixel_values=x)
            wall, cpu, calls = wall + time.perf_counter() - t, cpu + time.thread_time() - c, calls + 1
    return wall, cpu, calls


def measure_build(
    train, teacher, forwards: Forwards, epochs: int, rounds: int, batch: int, work: Path
) -> dict:
    per_round = []
    for r in range(rounds):
        result = {}
        for name in ("build", "plain_forward") if r % 2 == 0 else ("plain_forward", "build"):
            forwards.now = name
            if name == "build":
                forwards.wall = forwards.cpu = 0.0
                t, c = time.perf_counter(), time.thread_time()
                path = build_view_cache(
                    train, teacher, work / "views", epochs=epochs, view_seed=0, batch_size=batch
                )
                result["build"] = (time.perf_counter() - t, time.thread_time() - c)
                result["in_build_forward"] = (forwards.wall, forwards.cpu)
            else:
                wall, cpu, _ = plain_forward(train, teacher, epochs, batch)
                result["plain_forward"] = (wall, cpu)
            result[f"{name}_teacher_forwards"] = forwards.take(name)
        per_round.append(result)
    build = [r["build"] for r in per_round]
    plain = [r["plain_forward"] for r in per_round]
    inside = [r["in_build_forward"] for r in per_round]
    ratios = [b[0] / p[0] for b, p in zip(build, plain, strict=True)]
    cpu_ratios = [b[1] / p[1] for b, p in zip(build, plain, strict=True)]
    own = [b[0] / f[0] for b, f in zip(build, inside, strict=True)]
    own_cpu = [b[1] / f[1] for b, f in zip(build, inside, strict=True)]
    return {
        "path": path,
        "build_wall_seconds": [round(b[0], 3) for b in build],
        "build_cpu_seconds": [round(b[1], 3) for b in build],
        "plain_forward_wall_seconds": [round(p[0], 3) for p in plain],
        "plain_forward_cpu_seconds": [round(p[1], 3) for p in plain],
        "build_over_plain_forward_per_round": [round(x, 4) for x in ratios],
        "build_over_plain_forward": round(median(ratios), 4),
        "build_over_plain_forward_cpu": round(median(cpu_ratios), 4),
        # the build against its own teacher forwards (timed by hooks at the forward's boundary): the same views,
        # the same moment, so the machine's load cancels out; the rest is drawing, reading, augmenting,
        # normalising, digesting and writing
        "in_build_forward_wall_seconds": [round(f[0], 3) for f in inside],
        "build_over_its_forwards_per_round": [round(x, 4) for x in own],
        "build_over_its_forwards": round(median(own), 4),
        "build_over_its_forwards_cpu": round(median(own_cpu), 4),
        "teacher_forwards": {
            "build": per_round[0]["build_teacher_forwards"],
            "plain_forward": per_round[0]["plain_forward_teacher_forwards"],
        },
        "views": epochs * len(train),
        "batch_size": batch,
        "cache_megabytes": round(sum(f.stat().st_size for f in path.iterdir()) / 2**20, 2),
    }
