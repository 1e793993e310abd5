"""Test-only: FSDP in CPU processes, so the FSDP code paths (sharded student and teacher, gathered saves) run
on machines without a GPU. The package itself never patches Accelerate: launched with an FSDP config on CPU,
a recipe says that Accelerate runs DDP there (`hf_fairkd.run.checks.fsdp_on_cpu_notice`).

Accelerate 1.15 builds the FSDP plugin from the launcher's environment (``ACCELERATE_USE_FSDP=true``,
``FSDP_VERSION``, ...), but `AcceleratorState` switches the distributed type to FSDP only in its GPU-family
branch (MULTI_GPU, MULTI_XPU, ...): a CPU process stays ``DistributedType.MULTI_CPU``, drops the plugin, and the
Trainer wraps the model in DDP, silently. FSDP2 itself (`fully_shard` over gloo) runs on CPU, so
`allow_fsdp_on_cpu` does what that branch does, for MULTI_CPU, and says so once. tests/fsdp_worker.py and
tests/fsdp_recipe.py (the recipe under FSDP) call it. FSDP1 on CPU is refused: it is not run here.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

KEPT_MESSAGE = (
    "Test patch: FSDP kept on a machine without a GPU (Accelerate {version} keeps FSDP for GPU-type devices "
    "only); FSDP2, fully_shard over gloo, {processes} processes."
)


def fsdp_launch() -> bool:
    """Whether this process was launched with an FSDP config over several processes."""
    return (
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        and int(os.environ.get("WORLD_SIZE", "1")) > 1
    )


def allow_fsdp_on_cpu() -> bool:
    """Make `AcceleratorState` keep FSDP in CPU processes launched with an FSDP config. A no-op unless launched
    so (returns whether the patch is in place); inert where Accelerate selects FSDP itself (GPUs), since it acts
    only on a MULTI_CPU state given an FSDP plugin. There, an FSDP1 plugin is refused (ValueError)."""
    from accelerate.state import AcceleratorState, DistributedType, PartialState

    if not fsdp_launch():
        return False
    if getattr(AcceleratorState.__init__, "_hf_fairkd_fsdp_on_cpu", False):
        return True
    original_init = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
            if getattr(fsdp_plugin, "fsdp_version", 1) != 2:
                raise ValueError(
                    "An FSDP config of fsdp_version 1 on a machine without a GPU: FSDP1 is not run on CPU here. "
                    "Use fsdp_version: 2 (recipes/accelerate/cpu_fsdp_two_processes.yaml), or DDP "
                    "(recipes/accelerate/cpu_two_processes.yaml)."
                )
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            if not __init__.said and self.is_main_process:
                import accelerate

                logger.warning(
                    KEPT_MESSAGE.format(version=accelerate.__version__, processes=self.num_processes)
                )
            __init__.said = True

    __init__.said = False
    __init__._hf_fairkd_fsdp_on_cpu = True
    AcceleratorState.__init__ = __init__
    return True
