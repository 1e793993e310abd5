"""Long-tailed datasets (CIFAR-LT style) with metadata that travels with the data."""

from .longtail import (
    LongTailInfo,
    long_tail_counts,
    long_tail_info,
    make_long_tailed,
    save_long_tailed,
    split_holdout,
)
from .sources import load_digits_dataset, load_long_tailed, load_source

__all__ = [
    "LongTailInfo",
    "load_digits_dataset",
    "load_long_tailed",
    "load_source",
    "long_tail_counts",
    "long_tail_info",
    "make_long_tailed",
    "save_long_tailed",
    "split_holdout",
]
