"""Datasets as they are (natural profile) or long-tailed (CIFAR-LT style), with metadata that travels with the
data: `info` (LongTailInfo), `longtail` (profiles and holdout plans), `natural`, `loaders` (reading sources),
`sources` (load_long_tailed), `image_folders` (folder checks)."""

from .info import LongTailInfo, long_tail_info, save_long_tailed
from .loaders import load_digits_dataset
from .longtail import long_tail_counts, make_long_tailed, split_holdout
from .sources import load_long_tailed, load_source

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
