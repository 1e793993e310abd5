"""Check a lent GPU in one command: what matters, in a few minutes, written to one JSON file.

    python benchmarks/gpu_check.py              # on a CUDA machine: benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --dry-run    # the same code paths on the CPU, tiny sizes (the tests run it)

Without a CUDA device the dry mode is automatic; it writes benchmarks/results/gpu_check_dry.json (or
``--output``), so that a dry run never overwrites a GPU result. The parts, in order:

* ``default_recipe``: recipes/distill_vit.py on its embedded default data under bf16 (fp16 on a GPU without
  bf16), in this process; its card (README.md), metrics file and each stage's images/s;
* ``step_overhead``: benchmarks/step_overhead.py's ratios cached / plain and online / (plain + teacher);
* ``data_path``: benchmarks/data_path.py's train / model throughput on the budget CIFAR-10-LT preset;
* ``teacher_cache``: a float16 teacher cache built on the device against the one built on the CPU (within
  one float16 step of each other);
* ``cifar10_lt_budget``: a short run (``--cifar_steps`` steps per stage) of
  recipes/configs/cifar10_lt_budget.yaml, each stage's images/s.

Each part records ``status`` (ok / failed / skipped), ``seconds``, ``error`` (and the traceback's end),
``skipped_reason`` and its peak GPU memory (``torch.cuda.max_memory_allocated``, reset before each part).
The file is rewritten after every part: a failing or interrupted part loses none of the others.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one GPU: a single process on several would wrap the model in DataParallel
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")

import argparse
import contextlib
import gc
import importlib.util
import json
import platform
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run from a checkout without `pip install -e .`

import data_path  # noqa: E402
import step_overhead  # noqa: E402

from hf_fairkd.io_utils import atomic_write_json  # noqa: E402
from hf_fairkd.run import stages  # noqa: E402
from hf_fairkd.run.checks import has_accelerator  # noqa: E402
from hf_fairkd.teacher import build_teacher_cache, cached_logits_from_batch  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
PRESET = REPO / "recipes" / "configs" / "cifar10_lt_budget.yaml"
LOCAL_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10"  # the local copy beside the checkout
PARTS = ("default_recipe", "step_overhead", "data_path", "teacher_cache", "cifar10_lt_budget")
# tiny models and a few steps: the dry mode runs every code path in seconds
DRY_RECIPE = [
    "--num_train_epochs", "1", "--max_steps", "4", "--per_device_train_batch_size", "16",
    "--student_hidden_size", "16", "--student_num_layers", "1", "--student_num_heads", "2",
    "--teacher_architecture", "vit", "--teacher_hidden_size", "16", "--teacher_num_layers", "1",
    "--teacher_num_heads", "2", "--image_size", "8", "--patch_size", "4", "--logging_steps", "2",
]  # fmt: skip
# the GPU run keeps the benchmarks' own step counts
GPU_SIZES = {"step_overhead": {}, "data_path": {}, "teacher_cache_rows": 2048, "cifar_steps": 300}
DRY_SIZES = {
    "step_overhead": {"warmup": 1, "timed": 2},
    "data_path": {"steps": 2, "rounds": 1, "warmup": 1},
    "teacher_cache_rows": 64,
    "cifar_steps": 2,
}
ROLES = ("teacher", "baseline", "student")
PENDING = {"status": "pending", "ran": False, "seconds": None, "error": None, "skipped_reason": None,
           "peak_gpu_memory_mib": None, "result": None}  # fmt: skip


# ------------------------------------------------------------------------------------------------ the parts
def load_recipe(name: str):
    """recipes/<name>.py as a module (the recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"gpu_check_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def recording_stages(out: Path, records: list):
    """Record each stage a recipe trains (teacher/, baseline/, the student in ``out``): its steps and the
    Trainer's own train_samples_per_second (images/s over the stage's training)."""
    original = stages.train_stage

    def train_stage(model, args, *rest, **kwargs):
        trainer = original(model, args, *rest, **kwargs)
        summary = next(h for h in reversed(trainer.state.log_history) if "train_runtime" in h)
        folder = Path(args.output_dir)
        records.append(
            {
                "stage": "student" if folder == out else folder.relative_to(out).as_posix(),
                "objective": args.objective,
                "steps": trainer.state.global_step,
                "train_seconds": round(summary["train_runtime"], 2),
                "images_per_second": round(summary["train_samples_per_second"], 1),
            }
        )
        return trainer

    stages.train_stage = train_stage
    try:
        yield
    finally:
        stages.train_stage = original


def recipe_run(argv: list[str], out: Path) -> dict:
    """recipes/distill_vit.py with ``argv`` into ``out``: what it wrote, its accuracies and its stages."""
    records: list = []
    with recording_stages(out, records):
        metrics = load_recipe("distill_vit").main([*argv, "--output_dir", str(out), "--disable_tqdm", "true"])
    written = json.loads((out / "subgroup_metrics.json").read_text())
    training = json.loads((out / "run_config.json").read_text())["DistillationArguments"]
    return {
        "argv": argv,
        "card_written": (out / "README.md").is_file() and (out / "README.md").stat().st_size > 0,
        "metrics_written": written["student"]["accuracy"] == metrics["student"]["accuracy"],
        "precision": {key: training[key] for key in ("bf16", "fp16", "use_cpu")},
        "accuracy": {role: round(metrics[role]["accuracy"], 4) for role in ROLES},
        "worst_class_accuracy": {role: round(metrics[role]["worst_class_accuracy"], 4) for role in ROLES},
        "stages": records,
    }


def default_recipe(cli, work: Path) -> dict:
    argv = [f"--{cli.precision}", "true", *(DRY_RECIPE if cli.dry_run else []), *cli.cpu_argv]
    return recipe_run(argv, work / "default_recipe")


def step_overhead_part(cli, work: Path) -> dict:
    times = step_overhead.measure(
        work / "step_overhead", use_cpu=cli.device == "cpu", **cli.sizes["step_overhead"]
    )
    return {
        **{name: round(value, 4) for name, value in step_overhead.ratios(times).items()},
        "median_ms": {name: round(1000 * float(np.median(t)), 3) for name, t in times.items()},
        "timed_steps": len(times["plain"]),
        "precision": "float32 (the benchmark's own setting)",
    }


def data_path_part(cli, work: Path) -> dict:
    if cli.dry_run:  # the embedded digits: no CIFAR-10 to decode
        dataset, extra = "digits", ("--imbalance_factor", "10", "--per_device_train_batch_size", "16")
    else:
        dataset, extra = cli.dataset_name, ()
    results = data_path.measure(
        dataset,
        str(PRESET),
        str(work / "data_path"),
        extra_argv=(*extra, *cli.cpu_argv),
        **cli.sizes["data_path"],
    )
    keys = ("train_over_model_throughput", "train_images_per_second", "model_images_per_second")
    return {**{key: results[key] for key in (*keys, "median_step_ms", "batch_size")}, "dataset": dataset}


def teacher_cache_part(cli, work: Path) -> dict:
    """A float16 cache built with the teacher on the device against the CPU-built one, and the teacher's
    float32 logits on both. TF32 is off meanwhile: it rounds a GPU's matmul inputs to 10 bits, as coarse as
    float16's own rounding, and this compares the cache path, not the GPU's matmul precision."""
    teacher = step_overhead.vit(128, 4, seed=1).eval().requires_grad_(False)
    data = step_overhead.synthetic_images(cli.sizes["teacher_cache_rows"])
    m = step_overhead.NUM_CLASSES
    with torch.no_grad():
        cpu_float32 = teacher(pixel_values=data[:256]["pixel_values"]).logits
    on_cpu = build_teacher_cache(data, teacher, batch_size=64)
    devices = []
    hook = teacher.register_forward_hook(
        lambda module, inputs, output: devices.append(output.logits.device.type)
    )
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        teacher.to(cli.device)
        with torch.no_grad():
            device_float32 = teacher(pixel_values=data[:256]["pixel_values"].to(cli.device)).logits.cpu()
        on_device = build_teacher_cache(data, teacher, batch_size=64)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        hook.remove()
    reference = cached_logits_from_batch(on_cpu.with_format(None)[:], m).float()
    built = cached_logits_from_batch(on_device.with_format(None)[:], m).float()
    # one float16 step at each stored value: how far two roundings of nearly equal float32 logits can fall
    step = torch.from_numpy(np.spacing(np.abs(reference.numpy()).astype(np.float16)).astype(np.float32))
    ulps = float(((built - reference).abs() / step).max())
    return {
        "rows": len(data),
        "device_forwards": sum(kind == torch.device(cli.device).type for kind in devices),
        "float32_max_abs_diff": float((device_float32 - cpu_float32).abs().max()),
        "float16_max_abs_diff": float((built - reference).abs().max()),
        "float16_max_diff_steps": ulps,
        "equal_within_float16_rounding": ulps <= 1.0,
        "same_record": on_cpu.info.description == on_device.info.description,
        "tf32": "off for this comparison",
    }


def cifar_part(cli, work: Path) -> dict:
    """A short run of the budget preset. A dry run trains it in float32: bf16 convolutions on a CPU without
    native bf16 run ~20x slower (measured here: 2.0 s against 0.10 s for a batch of 128 through the preset's
    teacher), and default_recipe already checks the bf16 path."""
    argv = [str(PRESET), "--dataset_name", cli.dataset_name, "--max_steps", str(cli.sizes["cifar_steps"])]
    argv += ["--logging_steps", "50", *cli.cpu_argv]
    argv += ["--per_device_train_batch_size", "16"] if cli.dry_run else [f"--{cli.precision}", "true"]
    result = recipe_run(argv, work / "cifar10_lt_budget")
    result["images_per_second"] = {
        record["stage"]: record["images_per_second"] for record in result["stages"]
    }
    return result


PART_FUNCTIONS = {
    "default_recipe": default_recipe,
    "step_overhead": step_overhead_part,
    "data_path": data_path_part,
    "teacher_cache": teacher_cache_part,
    "cifar10_lt_budget": cifar_part,
}


# ------------------------------------------------------------------------------------------------ the report
def device_info(device: str) -> dict:
    import accelerate
    import transformers

    info = {
        "type": torch.device(device).type,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if info["type"] == "cuda":
        props = torch.cuda.get_device_properties(0)
        return {
            **info,
            "name": props.name,
            "count_visible": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 2),
            "cuda": torch.version.cuda,
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
    return {**info, "name": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}


def not_checked(precision: str, dry_run: bool) -> list[dict]:
    """What this script does not check, each with why: the multi-process launch configs first."""
    items = []
    for path in sorted((REPO / "recipes" / "accelerate").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        kind, processes = config.get("distributed_type"), config.get("num_processes", 1)
        if kind == "NO" and processes == 1:
            continue
        why = f"launches {processes} processes ({kind}); this script runs one process on one device"
        if path.name.startswith("cpu_"):
            why += " (a CPU config: the test suite runs it, tests/test_distributed.py and tests/test_fsdp.py)"
        if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
            why += "; DeepSpeed is not installed here"
        items.append({"what": path.relative_to(REPO).as_posix(), "why": why})
    if precision == "bf16":
        items.append({"what": "fp16 training (GradScaler)", "why": "this device runs bf16, so the recipes ran in "
                      "bf16; on a GPU, `recipes/distill_vit.py --fp16 true` checks loss scaling"})  # fmt: skip
    else:
        items.append({"what": "bf16 training", "why": "this GPU has no bf16: the recipes ran in fp16"})
    if dry_run:
        items.append({"what": "everything on a GPU", "why": "a dry run: the code paths ran on the CPU"})
    return items


def run_part(report: dict, name: str, function, cli, work: Path) -> None:
    """Run one part into ``report['parts'][name]``; an error is recorded, never raised."""
    entry = report["parts"][name]
    cuda = torch.device(cli.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    print(f"[gpu_check] {name} ...", flush=True)
    start = time.perf_counter()
    try:
        entry["result"] = function(cli, work)
        entry["status"] = "ok"
    except Exception as err:  # one failing part must not lose the others
        entry["status"], entry["error"] = "failed", f"{type(err).__name__}: {err}"
        entry["traceback"] = traceback.format_exc()[-3000:]
    entry["ran"] = True
    entry["seconds"] = round(time.perf_counter() - start, 2)
    if cuda:
        entry["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        gc.collect()
        torch.cuda.empty_cache()
    print(f"[gpu_check] {name}: {entry['status']} in {entry['seconds']} s {entry['error'] or ''}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="Tiny sizes on the CPU (automatic without CUDA)."
    )
    parser.add_argument(
        "--output", help="The JSON to write (default: results/gpu_check.json, dry: _dry.json)."
    )
    parser.add_argument(
        "--dataset_name",
        help=f"CIFAR-10 for data_path and cifar10_lt_budget (default: {LOCAL_CIFAR} if present, else the Hub "
        "preset 'cifar10' on a GPU; a dry run without the local copy skips cifar10_lt_budget).",
    )
    parser.add_argument("--cifar_steps", type=int, help="Steps per stage of the CIFAR run (GPU 300, dry 2).")
    parser.add_argument("--skip", nargs="+", default=[], choices=PARTS, help="Parts not to run.")
    parser.add_argument(
        "--work_dir", help="Keep the runs' outputs here (default: a temporary folder, removed)."
    )
    cli = parser.parse_args(argv)
    cli.dry_run_reason = (
        "--dry-run" if cli.dry_run else None if torch.cuda.is_available() else "no CUDA device"
    )
    cli.dry_run = cli.dry_run_reason is not None
    cli.device = "cpu" if cli.dry_run else "cuda"
    name = "gpu_check_dry.json" if cli.dry_run else "gpu_check.json"
    cli.output = Path(cli.output) if cli.output else RESULTS / name
    cli.sizes = dict(DRY_SIZES if cli.dry_run else GPU_SIZES)
    cli.sizes["cifar_steps"] = cli.cifar_steps or cli.sizes["cifar_steps"]
    if cli.dry_run:
        cli.precision = "bf16"
    else:
        from transformers.utils import is_torch_bf16_gpu_available

        cli.precision = "bf16" if is_torch_bf16_gpu_available() else "fp16"
    # a dry run beside a GPU keeps to the CPU; without one the recipes turn use_cpu on themselves (logged)
    cli.cpu_argv = ["--use_cpu", "true"] if cli.dry_run and has_accelerator() else []
    if cli.dataset_name is None and (LOCAL_CIFAR.is_dir() or not cli.dry_run):
        cli.dataset_name = str(LOCAL_CIFAR) if LOCAL_CIFAR.is_dir() else "cifar10"
    return cli


def skipped_reason(name: str, cli) -> str | None:
    if name in cli.skip:
        return "--skip"
    if name == "cifar10_lt_budget" and cli.dataset_name is None:
        return f"dry run and no local CIFAR-10 at {LOCAL_CIFAR} (pass --dataset_name to run it)"
    return None


def main(argv: list[str] | None = None) -> dict:
    cli = parse_args(argv)
    started = time.perf_counter()
    report = {
        "mode": "dry-run" if cli.dry_run else "gpu",
        "dry_run_reason": cli.dry_run_reason,
        "device": device_info(cli.device),
        "precision": cli.precision,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "total_seconds": None,
        "parts": {name: dict(PENDING) for name in PARTS},
        "not_checked": not_checked(cli.precision, cli.dry_run),
    }
    atomic_write_json(cli.output, report)
    with contextlib.ExitStack() as stack:
        # one thread: a shared CPU slows a 2-thread pool down many-fold, and a dry run checks paths, not speed
        if cli.dry_run:
            stack.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(1)
        work = Path(cli.work_dir or stack.enter_context(tempfile.TemporaryDirectory()))
        for name in PARTS:
            reason = skipped_reason(name, cli)
            if reason:
                report["parts"][name].update(status="skipped", skipped_reason=reason)
            else:
                run_part(report, name, PART_FUNCTIONS[name], cli, work)
            report["total_seconds"] = round(time.perf_counter() - started, 1)
            atomic_write_json(cli.output, report)  # after every part: an interrupted run keeps what it did
    print(f"[gpu_check] wrote {cli.output} ({report['total_seconds']} s)")
    return report


if __name__ == "__main__":
    main()
