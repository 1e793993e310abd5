"""Teacher signals read from a cached column instead of running the teacher every step."""

from __future__ import annotations

import torch

DENSE_COLUMN = "teacher_logits"
CACHE_COLUMNS = (DENSE_COLUMN,)


def cached_logits_from_batch(batch: dict, num_classes: int) -> torch.Tensor | None:
    """Dense teacher logits [B, m] from the cached columns of a collated batch; None when there are none."""
    if DENSE_COLUMN in batch:
        return batch[DENSE_COLUMN].float()
    return None
