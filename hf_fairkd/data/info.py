"""`LongTailInfo`: the metadata of a built dataset, carried in each split's ``info.description``."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

from datasets import (
    Dataset,
    DatasetDict,
)

from ..groups import CLASS_KEY, JOIN
from ..io_utils import description_with_record, record_in_description

PROFILES = ("exp", "step")


# "natural": the data as it is; every training row is kept (only the holdout, and a test split when the
# source has none, are carved). Not a long-tail profile: long_tail_counts() does not know it.
NATURAL = "natural"


ALL_PROFILES = (*PROFILES, NATURAL)


# Canonical names (stored in LongTailInfo) and readable aliases accepted as input.
RARE_CLASSES = ("label_id", "reversed", "permutation")


RARE_CLASS_ALIASES = {"last_ids": "label_id", "first_ids": "reversed"}


INFO_FILENAME = "long_tail_info.json"


# The metadata is one JSON line in DatasetInfo.description, after this marker; json.dumps never emits a
# newline, so the line is easy to find and replace.
_MARKER = "hf_fairkd.LongTailInfo: "


@dataclasses.dataclass
class LongTailInfo:
    """How a long-tailed dataset was built; per-class lists are indexed by class id."""

    source: str
    label_column: str
    image_column: str | None
    class_names: list[str]
    profile: str
    imbalance_factor: float
    seed: int
    rare_classes: str
    class_order: list[int]  # class ids from most to least frequent
    long_tail_counts: list[int]  # per class id, as built by the profile (before the holdout)
    train_counts: list[int]  # per class id, rows left in train after carving the holdout
    holdout_counts: list[int]
    test_counts: list[int]
    holdout_per_class: int | float
    # How the test split was made: None = the source's own test split; else a dict such as
    # {"kind": "stratified", "fraction": 0.2, "min_per_class": 1} or {"kind": "balanced", "per_class": 6}.
    # (Optional, so records written before it existed still load.)
    test_carved: dict | None = None
    # The group columns kept in every split (attributes such as site; None: no groups), and the rows of every
    # group and class x group cell in train / test: count_groupings(report_groupings(values, class names)),
    # e.g. {"site": {"A": 40, "B": 7}, "class&site": {"cat&A": 25, ...}}. Optional, like test_carved.
    group_columns: list[str] | None = None
    group_train_counts: dict[str, dict[str, int]] | None = None
    group_test_counts: dict[str, dict[str, int]] | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LongTailInfo:
        fields = dataclasses.fields(cls)
        names = {f.name for f in fields}
        required = {f.name for f in fields if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(
                f"LongTailInfo dict is missing {missing}; it must hold all of {sorted(required)}"
            )
        # Unknown keys are ignored so files written by a newer version still load.
        return cls(**{k: data[k] for k in names if k in data})


def describe_profile(info: LongTailInfo) -> str:
    """One phrase saying how the training split was made, e.g. for a recipe's first log line."""
    train = sum(info.train_counts)
    if info.profile == NATURAL:
        text = (
            f"natural profile: your data as it is, {train} training rows "
            f"(measured imbalance max/min {info.imbalance_factor:.3g})"
        )
    else:
        text = (
            f"{info.profile} long tail with imbalance factor {info.imbalance_factor:g}, {train} training rows"
        )
    return text + describe_groups(info)


def describe_groups(info: LongTailInfo) -> str:
    """'' without groups, else e.g. "; groups: site (3 values), smallest class x group cell 'cat&B' with 4
    training row(s)"."""
    if not info.group_columns:
        return ""
    counts = info.group_train_counts or {}
    columns = ", ".join(f"{c} ({len(counts.get(c, {}))} values)" for c in info.group_columns)
    cells = {
        name: n for c in info.group_columns for name, n in counts.get(f"{CLASS_KEY}{JOIN}{c}", {}).items()
    }
    if not cells:
        return f"; groups: {columns}"
    smallest = min(cells, key=lambda name: (cells[name], name))
    smallest_text = f"smallest class x group cell {smallest!r} with {cells[smallest]} training row(s)"
    return f"; groups: {columns}, {smallest_text}"


# ------------------------------------------------------------------------------------------ metadata
def attach_long_tail_info(dataset: Dataset, info: LongTailInfo) -> Dataset:
    """A view of ``dataset`` whose ``info.description`` carries ``info`` (the input is not modified)."""
    # A contiguous select is a zero-copy slice with its own DatasetInfo copy (but returns self when empty).
    if len(dataset):
        out = dataset.select(range(len(dataset)))
    else:
        empty = {name: [] for name in dataset.column_names}
        out = Dataset.from_dict(empty, features=dataset.features, info=dataset.info.copy())
    out.info.description = description_with_record(out.info.description, _MARKER, info.to_dict())
    return out


def long_tail_info(dataset: Dataset | DatasetDict) -> LongTailInfo:
    """Read back the LongTailInfo embedded by make_long_tailed / load_long_tailed."""
    if isinstance(dataset, DatasetDict):
        for split in ["train", *dataset]:
            if split in dataset and record_in_description(dataset[split].info.description, _MARKER):
                return long_tail_info(dataset[split])
        raise ValueError(
            f"no LongTailInfo in any split of this DatasetDict ({list(dataset)}); build it with "
            "hf_fairkd.data.load_long_tailed or make_long_tailed"
        )
    record = record_in_description(dataset.info.description, _MARKER)
    if record is None:
        raise ValueError(
            "this dataset carries no LongTailInfo (its info.description has no "
            f"{_MARKER.strip()!r} line); build it with hf_fairkd.data.make_long_tailed or load_long_tailed"
        )
    return LongTailInfo.from_dict(record)


def save_long_tailed(dataset: DatasetDict | Dataset, path: str | os.PathLike) -> None:
    """``save_to_disk`` plus a readable ``long_tail_info.json`` beside it (written atomically)."""
    info = long_tail_info(dataset)
    dataset.save_to_disk(str(path))
    fd, tmp = tempfile.mkstemp(prefix=".long_tail_info.", suffix=".tmp", dir=str(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(info.to_dict(), f, indent=2)
        os.replace(tmp, os.path.join(str(path), INFO_FILENAME))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
