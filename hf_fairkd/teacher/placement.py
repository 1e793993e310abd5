"""Where the frozen teacher lives under the run's distribution (``teacher_sharding``): sharded with FSDP like
the student (`prepare_fsdp`), given its own DeepSpeed engine (`prepare_deepspeed`, after TRL's), or one full
copy per process; and what that costs in memory (`TeacherMemory`). Public so that a teacher can be sharded for
`build_teacher_cache` too.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

from torch import nn

from .sharding import is_sharded, parameter_bytes

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ placement
@dataclass(frozen=True)
class TeacherMemory:
    """What the prepared teacher holds on this process: ``placement`` (how it was prepared), the bytes of its
    parameters held here (``local_bytes``) and of all its parameters (``full_bytes``)."""

    placement: str
    local_bytes: int
    full_bytes: int
    num_processes: int = 1

    def describe(self) -> str:
        share = self.local_bytes / self.full_bytes if self.full_bytes else 1.0
        return (
            f"{self.placement}; this process holds {_size(self.local_bytes)} of its {_size(self.full_bytes)} of "
            f"parameters ({share:.0%})"
        )


def _size(num_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if num_bytes < 1024:
            return f"{num_bytes:.4g} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.4g} GiB"


def prepare_teacher(model: nn.Module, accelerator, sharding: str = "auto") -> tuple[nn.Module, TeacherMemory]:
    """``model`` (a frozen teacher) placed for inference under ``accelerator``'s distribution, in eval mode, and
    what it holds on this process.

    ``sharding`` (`DistillationArguments.teacher_sharding`): under FSDP, 'auto'/'shard' shard it like the
    student (`prepare_fsdp`), 'replicate' puts a full copy on each device; under DeepSpeed it gets an engine of
    its own (`prepare_deepspeed`): ZeRO-3 with a ZeRO-3 student ('auto'/'shard'), else stage 0 (a full copy);
    otherwise (one process, DDP) a full copy, with the Accelerator's mixed precision. 'shard' with several
    processes and neither FSDP nor ZeRO-3 is an error. FSDP2 shards ``model`` in place; an FSDP2-sharded
    teacher to be replicated is gathered into a whole copy. A sharded teacher's forward is a collective: every
    process must make the same teacher forwards.
    """
    from accelerate.utils import DistributedType

    full_bytes = parameter_bytes(model)[1]
    kind, processes = accelerator.distributed_type, accelerator.num_processes
    if kind == DistributedType.FSDP and sharding != "replicate":
        version = getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1)
        model, placement = (
            prepare_fsdp(model, accelerator),
            f"sharded with FSDP{version} over {processes} processes",
        )
    elif kind == DistributedType.DEEPSPEED:
        student_stage = accelerator.state.deepspeed_plugin.zero_stage
        if sharding == "shard" and student_stage != 3:
            raise ValueError(
                f"teacher_sharding='shard' under DeepSpeed needs ZeRO stage 3 (this run: stage {student_stage}): "
                "use a ZeRO-3 config, teacher_sharding='auto'/'replicate', or a cached teacher."
            )
        stage = 3 if student_stage == 3 and sharding != "replicate" else 0
        model, placement = (
            prepare_deepspeed(model, accelerator, stage=stage),
            f"DeepSpeed engine, ZeRO stage {stage}",
        )
    else:
        if sharding == "shard" and processes > 1:
            raise ValueError(
                f"teacher_sharding='shard' needs FSDP or DeepSpeed ZeRO-3, but this run is {kind.value} over "
                f"{processes} processes, where the teacher would be copied whole onto each. Launch with an FSDP "
                "config (e.g. recipes/accelerate/cpu_fsdp_two_processes.yaml), or cache the teacher's logits "
                "(hf_fairkd.teacher.build_teacher_cache) and train without it."
            )
        if is_sharded(model):  # e.g. trained under FSDP here, to be replicated
            model = _unsharded_copy(model)
        placed = None  # the Accelerator's own device placement
        if kind == DistributedType.FSDP:  # accelerate does not place a model under FSDP: done here
            model, placed = model.to(accelerator.device), False
        model = accelerator.prepare_model(model, device_placement=placed, evaluation_mode=True)
        placement = "replicated: one whole copy on each of the processes" if processes > 1 else "one process"
    model.eval()
    local_bytes = parameter_bytes(model)[0]
    return model, TeacherMemory(placement, local_bytes, full_bytes, processes)


def _unsharded_copy(model: nn.Module) -> nn.Module:
    """A whole, plain copy of an FSDP2-sharded `PreTrainedModel` (every process gathers all of it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule) or getattr(model, "config", None) is None:
        raise ValueError(
            "The teacher passed is sharded over processes (FSDP1 or DeepSpeed ZeRO-3) and teacher_sharding asks "
            "for a whole copy on each: pass it unsharded (e.g. loaded from its saved folder)."
        )
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    plain = next(c for c in type(model).__mro__[1:] if not issubclass(c, FSDPModule))  # the class it had
    whole = plain(model.config).to(next(iter(state.values())).dtype)
    whole.load_state_dict(state)
    return whole.eval().requires_grad_(False)


def prepare_fsdp(model: nn.Module, accelerator) -> nn.Module:
    """``model`` sharded for inference with the run's FSDP plugin (after TRL's ``trl.models.utils.prepare_fsdp``).

    ``accelerator.prepare_model(model, evaluation_mode=True)`` does not do it: under FSDP (accelerate 1.15) it
    neither wraps nor moves the model. FSDP2: `fully_shard` on each unit the student's plugin names
    (``transformer_cls_names_to_wrap``, else the teacher's ``_no_split_modules``) present in the teacher, then on
    the root (TRL shards the root only: then a forward gathers the whole teacher at once), with the plugin's
    reshard, offload and mixed-precision settings. FSDP1: the `FullyShardedDataParallel` wrapper with the
    plugin's settings, as TRL does, from a copy of the plugin (whose wrap policy is then set for the teacher's
    classes and not the student's)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if isinstance(model, (FSDP, FSDPModule)):  # already sharded (e.g. a teacher trained under FSDP here)
        return model
    plugin = accelerator.state.fsdp_plugin
    if getattr(plugin, "fsdp_version", 1) == 2:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = getattr(accelerator, "torch_device_mesh", None)
        kwargs = {
            "reshard_after_forward": plugin.reshard_after_forward,
            "offload_policy": plugin.cpu_offload,
            "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
            "mesh": mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)] if mesh is not None else None,
        }
        present = {type(m).__name__ for m in model.modules()}
        names = set(plugin.transformer_cls_names_to_wrap or []) & present
        names = names or set(getattr(model, "_no_split_modules", None) or []) & present
        for module in list(model.modules())[1:]:
            if type(module).__name__ in names:
                fully_shard(module, **kwargs)
        fully_shard(model, **kwargs)  # the root: the rest (embeddings, head), resharded after forward too
        return model
    plugin = copy.copy(plugin)
    plugin.set_auto_wrap_policy(model)
    return FSDP(
        model,
        sharding_strategy=plugin.sharding_strategy or plugin.reshard_after_forward,
        cpu_offload=plugin.cpu_offload,
        auto_wrap_policy=plugin.auto_wrap_policy,
        mixed_precision=plugin.mixed_precision_policy,
        sync_module_states=plugin.sync_module_states,
        backward_prefetch=plugin.backward_prefetch,
        forward_prefetch=plugin.forward_prefetch,
        use_orig_params=plugin.use_orig_params,
        param_init_fn=plugin.param_init_fn,
        ignored_modules=plugin.ignored_modules,
        limit_all_gathers=plugin.limit_all_gathers,
        device_id=accelerator.device,
    )


def prepare_deepspeed(model: nn.Module, accelerator, stage: int | None = None) -> nn.Module:
    """A DeepSpeed inference engine of its own for the teacher, modelled on TRL's
    ``trl.models.utils.prepare_deepspeed`` (huggingface/trl, Apache-2.0; itself adapted from accelerate's
    ``Accelerator._prepare_deepspeed``), as TRL's `GKDTrainer` / `DPOTrainer` prepare their teacher / reference
    model (`deepspeed.initialize` on `teacher_deepspeed_config`, then eval mode). Not run on this project's CPU
    machine (DeepSpeed is not installed): reviewed against TRL's code only."""
    if type(model).__name__ == "DeepSpeedEngine":  # already prepared
        return model
    import deepspeed  # local import, as in TRL: DeepSpeed's import has side effects on other backends

    config = teacher_deepspeed_config(
        accelerator.state.deepspeed_plugin.deepspeed_config, model.config, stage
    )
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def teacher_deepspeed_config(student_config: dict, model_config, stage: int | None = None) -> dict:
    """The teacher engine's DeepSpeed config: a copy of the run's (``student_config``).

    ``stage`` None keeps the student's ZeRO stage if it is 3 and sets 0 otherwise (TRL's rule: a stage-3
    teacher is partitioned like the student, else it is assumed to fit and is replicated). At stage 3 the
    bucket sizes follow the teacher's hidden size h (``hidden_size``, or the largest of ``hidden_sizes``), as in
    TRL: reduce_bucket_size h*h, stage3_param_persistence_threshold 10*h, stage3_prefetch_bucket_size 0.9*h*h.
    Deliberate differences from TRL: (1) these are written inside ``zero_optimization``, and only where it says
    "auto" or nothing: TRL adds them as top-level dotted keys (``"zero_optimization.reduce_bucket_size"``),
    which accelerate resolves itself before initialising but DeepSpeed's config reader (it reads the nested
    ``zero_optimization`` dict) does not look at, as TRL passes them on; (2) the prefetch size is an int
    (DeepSpeed's pydantic config refuses a float there); (3) the optimizer and scheduler sections are dropped
    (a frozen teacher trains nothing); (4) at stage 0 the ZeRO section is ``{"stage": 0}`` alone (TRL sets the
    stage and keeps the rest, whose "auto" entries are unresolved until the student's engine exists)."""
    config = copy.deepcopy(student_config)
    zero = config.setdefault("zero_optimization", {})
    if stage is None:
        stage = 3 if zero.get("stage", 0) == 3 else 0
    for section in ("optimizer", "scheduler"):
        config.pop(section, None)
    if stage != 3:  # nothing else of a ZeRO section applies at stage 0
        config["zero_optimization"] = {"stage": 0}
        return config
    zero["stage"] = 3
    sizes = getattr(model_config, "hidden_sizes", None)
    hidden = max(sizes) if sizes else getattr(model_config, "hidden_size", None)
    if hidden is not None:
        for key, value in (
            ("reduce_bucket_size", hidden * hidden),
            ("stage3_param_persistence_threshold", 10 * hidden),
            ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden)),
        ):
            if zero.get(key, "auto") == "auto":
                zero[key] = value
    return config
