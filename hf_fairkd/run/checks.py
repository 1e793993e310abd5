"""The checks a recipe run makes before any work (processes, output folder, free space), and how a recipe's
command line reports a failure: one line, no traceback, for bad input, a Hub problem or a full disk."""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import PartialState, utils

from ..results import HubPushError, preflight


def has_accelerator() -> bool:
    """Whether a device accelerate can run several processes on (CUDA, XPU, NPU, ...) is present."""
    if torch.cuda.is_available():
        return True
    checks = (
        "is_xpu_available",
        "is_npu_available",
        "is_mlu_available",
        "is_musa_available",
        "is_sdaa_available",
    )
    return any(getattr(utils, name, lambda: False)() for name in checks) or utils.is_torch_xla_available()


def has_bf16_device() -> bool:
    """Whether a device that TrainingArguments accepts for bf16 without use_cpu is present (any accelerator:
    one without bf16, e.g. a pre-Ampere CUDA GPU, gets transformers' own error, which names what it needs)."""
    from transformers.utils import is_torch_bf16_gpu_available

    return has_accelerator() or is_torch_bf16_gpu_available()


def has_fp16_device() -> bool:
    """Whether a device on which accelerate runs fp16 autocast with loss scaling is present (on a CPU it runs
    neither, and the run trains in float32)."""
    return has_accelerator() or torch.backends.mps.is_available()


FSDP_ON_CPU_NOTICE = (
    "Launched with an FSDP config on a machine without a GPU: Accelerate uses FSDP on GPU-type devices only, "
    "so these {processes} CPU processes run DDP: the same training, but each process holds the whole student "
    "and teacher. Sharding (FSDP) needs GPUs; see docs/DISTRIBUTED.md."
)


def fsdp_on_cpu_notice(num_processes: int) -> str | None:
    """What a run launched with an FSDP config over several CPU processes is told: Accelerate runs it as DDP
    (its policy; hf_fairkd does not change the distributed type Accelerate picks). None otherwise."""
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp and num_processes > 1 and not has_accelerator():
        return FSDP_ON_CPU_NOTICE.format(processes=num_processes)
    return None


def start_run():
    """The process state of a recipe run: checked launch, and INFO logs from the main process only."""
    state = PartialState()
    check_processes(state)
    level = logging.INFO if state.is_main_process else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s")
    notice = fsdp_on_cpu_notice(state.num_processes)
    if notice and state.is_main_process:
        logging.getLogger(__name__).warning(notice)
    return state


def check_processes(state) -> None:
    """Refuse a multi-process launch in which every process would train alone (CPU without --use_cpu)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > state.num_processes:
        raise ValueError(
            f"Launched as {launched} processes but each would train alone (no GPU and --use_cpu false): pass "
            "--use_cpu true, or launch one process."
        )


def check_before_work(args, run_args) -> None:
    """What a run checks before loading any data: its output folder (see `check_output_dir`) and, when it will
    push, the Hub (an unreachable Hub or a refused token fails now, not after the training)."""
    output_dir = args.output_dir
    check_output_dir(
        output_dir, overwrite=run_args.overwrite_output_dir, resuming=bool(args.resume_from_checkpoint)
    )
    if args.push_to_hub:
        repo_id = args.hub_model_id or os.path.basename(os.path.abspath(output_dir))
        preflight(repo_id, args.hub_token, args.hub_private_repo, folder=output_dir)


def check_output_dir(output_dir: str, *, overwrite: bool, resuming: bool) -> None:
    """Refuse to mix two runs in one folder; nothing is ever deleted here."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file; pass a folder path.")
    check_writable(path, what="--output_dir")
    if not path.exists():
        return
    entries = sorted(p.name for p in path.iterdir())
    if entries and not overwrite and not resuming:
        raise ValueError(
            f"--output_dir {output_dir} already holds a run ({', '.join(entries[:6])}{', ...' if len(entries) > 6 else ''}). "
            "Pass --overwrite_output_dir to write over it, --resume_from_checkpoint to continue it, or choose another "
            "--output_dir. Nothing was deleted."
        )


def remove_stale_stages(output_dir: str, stages: list[str]) -> list[str]:
    """With --overwrite_output_dir: remove the stage folders (e.g. teacher/ when a teacher is given, baseline/ when
    one is reused) that this run will not write, so that an earlier run's model is not left looking like this
    run's. Returns the folders removed; only folders named by ``stages``, never anything else."""
    import shutil

    removed = []
    for stage in stages:
        folder = Path(output_dir) / stage
        if folder.is_dir():
            shutil.rmtree(folder)
            removed.append(str(folder))
    return removed


def check_writable(path: Path, what: str) -> None:
    """Create (and remove) a probe file in ``path``, or in its nearest existing parent, before any training.

    `os.access` is not enough: it says yes to root on a read-only mount, and the first real write would come
    only after the teacher has trained.
    """
    probe_dir = path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    try:
        with tempfile.TemporaryFile(dir=probe_dir):
            pass
    except OSError as err:
        raise ValueError(
            f"{what} {path} is not writable ({probe_dir}: {err.strerror or err}); choose another folder, or fix "
            "its permissions or free space."
        ) from None


DISK_FULL_MESSAGE = (
    "error: writing the outputs failed ({reason}). Free disk space, raise the quota / file-size limit or fix the "
    "permissions (or pass another --output_dir), then re-run with --resume_from_checkpoint true to continue from the "
    "last complete checkpoint. The card, metrics file and plot are written atomically: none is left half-written."
)


def disk_write_failure(err: BaseException) -> str | None:
    """The reason when ``err`` is a failed write (full disk, file-size limit, quota, read-only), else None."""
    codes = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES}
    if isinstance(err, OSError) and err.errno in codes:
        return err.strerror + (f": {err.filename}" if err.filename else "")
    match = re.search(r"I/O error: (.+?) \(os error (\d+)\)", str(err))  # how safetensors (Rust) reports them
    if match and int(match.group(2)) in codes:
        return match.group(1)
    return None


def run_command_line(main: Callable[[], object]) -> None:
    """Call a recipe's ``main``; bad input or a Hub problem exits 2 and a failed write (full disk) exits 1, each
    with a one-line message saying what to do, instead of a traceback."""
    try:
        main()
    except (ValueError, HubPushError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # a full disk mid-run: say so, and how to continue
        reason = disk_write_failure(err)
        if reason is None:
            raise
        print(DISK_FULL_MESSAGE.format(reason=reason), file=sys.stderr)
        sys.exit(1)
