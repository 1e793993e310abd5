"""benchmarks/gpu_check.py in its dry mode (the GPU check's code paths on the CPU, tiny sizes), so that the script
cannot rot between GPU loans. Its default_recipe part is recipes/distill_vit.py --bf16 end to end on a CPU."""

import importlib.util
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10"
PARTS = ["default_recipe", "step_overhead", "data_path", "teacher_cache", "cifar10_lt_budget"]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def multi_process_configs() -> list[str]:
    """The launch configs under recipes/accelerate/ that start several processes (read here, independently)."""
    configs = []
    for path in sorted((ROOT / "recipes" / "accelerate").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        if config.get("num_processes", 1) > 1:
            configs.append(f"recipes/accelerate/{path.name}")
    return configs


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run without the CIFAR part (decoding CIFAR-10 alone takes ~10 s here: the slow test runs it),
    with the log records of the run."""
    out = tmp_path_factory.mktemp("gpu_check") / "check.json"
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("hf_fairkd.run.arguments")
    logger.addHandler(handler)
    try:
        returned = load_gpu_check().main(["--dry-run", "--skip", "cifar10_lt_budget", "--output", str(out)])
    finally:
        logger.removeHandler(handler)
    return json.loads(out.read_text()), returned, [record.getMessage() for record in records]


def test_dry_run_writes_every_part(dry_run):
    report, returned, _ = dry_run
    assert report == json.loads(json.dumps(returned))  # the file is the final report
    assert report["mode"] == "dry-run" and report["dry_run_reason"] == "--dry-run"
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    assert report["device"]["torch"] == torch.__version__
    assert list(report["parts"]) == PARTS
    for name in PARTS[:-1]:
        part = report["parts"][name]
        assert (part["status"], part["ran"], part["error"]) == ("ok", True, None), (
            name,
            part.get("traceback"),
        )
        assert part["seconds"] > 0 and part["peak_gpu_memory_mib"] is None  # no GPU: no GPU memory
    cifar = report["parts"]["cifar10_lt_budget"]
    assert (cifar["status"], cifar["ran"], cifar["skipped_reason"]) == ("skipped", False, "--skip")
    # the whole run covers its parts (total rounded to 0.1 s, parts to 0.01 s)
    assert report["total_seconds"] + 0.05 >= sum(report["parts"][name]["seconds"] for name in PARTS[:-1])


def test_default_recipe_part_is_distill_vit_in_bf16_on_the_cpu(dry_run):
    report, _, messages = dry_run
    result = report["parts"]["default_recipe"]["result"]
    assert result["card_written"] and result["metrics_written"]
    assert result["precision"] == {"bf16": True, "fp16": False, "use_cpu": True}
    assert (
        messages.count("--bf16 on a machine without a GPU: use_cpu set to true (bf16 autocast on the CPU).")
        == 1
    )
    assert [stage["stage"] for stage in result["stages"]] == ["teacher", "baseline", "student"]
    assert all(stage["steps"] == 4 and stage["images_per_second"] > 0 for stage in result["stages"])
    assert all(0 <= value <= 1 for value in result["accuracy"].values())


def test_measurement_parts_report_their_ratios(dry_run):
    parts = {name: part["result"] for name, part in dry_run[0]["parts"].items()}
    overhead = parts["step_overhead"]
    for ratio in ("cached_over_plain", "online_over_plain_plus_teacher"):
        assert math.isfinite(overhead[ratio]) and overhead[ratio] > 0
    assert overhead["timed_steps"] == 2
    assert parts["data_path"]["dataset"] == "digits" and parts["data_path"]["train_over_model_throughput"] > 0
    cache = parts["teacher_cache"]
    assert cache["device_forwards"] > 0 and cache["equal_within_float16_rounding"] and cache["same_record"]
    assert cache["float16_max_diff_steps"] == 0.0  # CPU against CPU: the same bytes


def test_not_checked_names_every_multi_process_launch_config(dry_run):
    listed = [item["what"] for item in dry_run[0]["not_checked"]]
    assert [what for what in listed if what.startswith("recipes/accelerate/")] == multi_process_configs()
    assert "everything on a GPU" in listed
    assert all(item["why"] for item in dry_run[0]["not_checked"])


def test_a_failing_part_keeps_the_others_and_the_file_is_written_after_each(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()
    out = tmp_path / "check.json"
    seen_before = {}

    def part(name):
        def run(cli, work):
            seen_before[name] = {k: v["status"] for k, v in json.loads(out.read_text())["parts"].items()}
            if name == "step_overhead":
                raise RuntimeError("CUDA out of memory")
            return {"name": name}

        return run

    monkeypatch.setattr(gpu_check, "PART_FUNCTIONS", {name: part(name) for name in PARTS})
    report = gpu_check.main(["--dry-run", "--output", str(out), "--dataset_name", "unused"])
    failed = report["parts"]["step_overhead"]
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: CUDA out of memory"
    assert "Traceback" in failed["traceback"]
    assert [report["parts"][name]["status"] for name in PARTS] == ["ok", "failed", "ok", "ok", "ok"]
    # each part found the ones before it already in the file
    assert seen_before["data_path"] == {**dict.fromkeys(PARTS, "pending"), "default_recipe": "ok",
                                        "step_overhead": "failed"}  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))


def test_output_paths_and_sizes_of_the_two_modes(monkeypatch):
    gpu_check = load_gpu_check()
    if not torch.cuda.is_available():  # no CUDA device: a dry run without being asked
        assert gpu_check.parse_args([]).dry_run_reason == "no CUDA device"
    dry = gpu_check.parse_args(["--dry-run"])
    assert dry.output == ROOT / "benchmarks" / "results" / "gpu_check_dry.json"  # never the GPU result
    assert dry.sizes["cifar_steps"] == 2 and dry.precision == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("transformers.utils.is_torch_bf16_gpu_available", lambda: False)
    gpu = gpu_check.parse_args([])
    assert (gpu.dry_run, gpu.device, gpu.output.name) == (False, "cuda", "gpu_check.json")
    assert gpu.precision == "fp16" and gpu.sizes["cifar_steps"] == 300  # a GPU without bf16 trains in fp16
    assert gpu.dataset_name  # a local CIFAR-10 copy, or the Hub preset


@pytest.mark.slow
@pytest.mark.skipif(not LOCAL_CIFAR.is_dir(), reason=f"no local CIFAR-10 at {LOCAL_CIFAR}")
def test_full_dry_run_with_the_cifar_part(tmp_path):
    out = tmp_path / "check.json"
    report = load_gpu_check().main(["--dry-run", "--output", str(out)])
    cifar = report["parts"]["cifar10_lt_budget"]
    assert cifar["status"] == "ok", cifar.get("traceback")
    assert set(cifar["result"]["images_per_second"]) == {"teacher", "baseline", "student"}
    assert all(part["status"] == "ok" for part in report["parts"].values())
