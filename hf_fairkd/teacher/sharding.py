"""A teacher sharded over processes: whether it is (`is_sharded`), what each process holds (`parameter_bytes`),
and reading it whole (`full_tensor`, `whole_model`), for its fingerprint and its classifier weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def _is_dtensor(tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch build without distributed
        return False
    return isinstance(tensor, DTensor)


def _is_zero3(tensor) -> bool:
    return hasattr(tensor, "ds_id")  # DeepSpeed ZeRO-3 partitioned parameter (ds_tensor is this rank's part)


def _is_fsdp1(model: nn.Module) -> bool:
    # by name: importing torch.distributed.fsdp is not free, and a plain model never needs it
    return type(model).__name__ == "FullyShardedDataParallel"


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` holds parameters sharded over processes (FSDP2 DTensors, DeepSpeed ZeRO-3 partitions,
    or an FSDP1 wrapper): its forward is then a collective every process must make."""
    return _is_fsdp1(model) or any(_is_dtensor(p) or _is_zero3(p) for p in model.parameters())


def parameter_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of the teacher's parameters held by this process, bytes of all its parameters).

    An FSDP2 parameter holds its local shard (``to_local()``) of the full tensor; a DeepSpeed ZeRO-3 one its
    partition (``ds_tensor``) of ``ds_numel`` elements; any other parameter is held whole. (An FSDP1 wrapper's
    parameters are its local flat shards: their full size is not known here, so measure it before wrapping.)"""
    local = full = 0
    for param in model.parameters():
        size = param.element_size()
        if _is_dtensor(param):
            local += param.to_local().numel() * size
            full += param.numel() * size
        elif _is_zero3(param):
            local += param.ds_tensor.numel() * size
            full += param.ds_numel * size
        else:
            local += param.numel() * size
            full += param.numel() * size
    return local, full


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of a parameter or buffer, gathered when it is an FSDP2 or ZeRO-3 shard (a collective: every
    process must call it, in the same order); any other tensor is returned as it is."""
    if _is_dtensor(tensor):
        return tensor.full_tensor()
    if _is_zero3(tensor):
        import deepspeed

        with deepspeed.zero.GatheredParameters([tensor]):
            return tensor.data.clone()
    return tensor


@contextmanager
def whole_model(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` to be read whole inside the block: its ``config``, its parameters and buffers under the names
    of the unwrapped model, each read through `full_tensor`.

    An FSDP1 wrapper is unsharded for the block (`summon_full_params`: the whole teacher, briefly, on every
    process); a DeepSpeed engine or DDP wrapper gives its module; FSDP2 and ZeRO-3 modules are themselves,
    their tensors gathered one at a time by `full_tensor`. Every process must enter it for a sharded model."""
    if _is_fsdp1(model):
        from torch.distributed.fsdp import FullyShardedDataParallel

        # the wrapper, not its module: inside this block its parameter names drop FSDP's prefixes
        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            yield model
        return
    if type(model).__name__ in ("DeepSpeedEngine", "DistributedDataParallel"):
        model = model.module
    yield model
