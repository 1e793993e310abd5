"""Datasets as they are (natural profile) or long-tailed (CIFAR-LT style), with metadata that travels with the
data: `info` (LongTailInfo), `longtail` (profiles and holdout plans), `natural`, `loaders` (reading sources),
`sources` (load_long_tailed), `image_folders` (folder checks), `metadata_folders` (image folders with a
metadata file of attributes), `group_splits` (splits stratified by class x group cell), `spurious` (a colour
correlated with the class in train only: digits_spurious, spurious CIFAR-10)."""

from .info import LongTailInfo, long_tail_info, save_long_tailed
from .loaders import load_digits_dataset
from .longtail import long_tail_counts, make_long_tailed, split_holdout
from .sources import load_long_tailed, load_source
from .spurious import make_spurious, save_spurious_cifar10

__all__ = [
    "LongTailInfo",
    "load_digits_dataset",
    "load_long_tailed",
    "load_source",
    "long_tail_counts",
    "long_tail_info",
    "make_long_tailed",
    "make_spurious",
    "save_long_tailed",
    "save_spurious_cifar10",
    "split_holdout",
]
