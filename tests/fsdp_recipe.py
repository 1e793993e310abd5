"""recipes/distill_vit.py under an FSDP launch on a machine without a GPU, for tests/test_fsdp.py: the tests'
patch (`fsdp_on_cpu.allow_fsdp_on_cpu`) keeps FSDP, so the recipe's FSDP paths run; the package's notice
that Accelerate would run DDP is then not true, and is silenced."""

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run by accelerate launch: beside fsdp_on_cpu

from fsdp_on_cpu import allow_fsdp_on_cpu  # noqa: E402

from hf_fairkd.run import checks  # noqa: E402

if __name__ == "__main__":
    allow_fsdp_on_cpu()
    checks.fsdp_on_cpu_notice = lambda num_processes: None
    sys.argv[0] = str(Path(__file__).resolve().parent.parent / "recipes" / "distill_vit.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
