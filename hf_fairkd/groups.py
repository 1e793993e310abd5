"""Subgroups that are attributes of the data (site, camera, skin tone): reading them, naming them, coding them.

A group is a value of one attribute column, or of several columns together (their intersection, keys joined
with ``&`` as in ``"A&night"``); a cell is a class x group pair (``"cat&A"``), the convention of the
group-robustness literature (Waterbirds: bird type x background). Values of any type (str, int, bool) become
their text; a missing value (None, NaN, empty text) is a group of its own, :data:`MISSING`, never dropped.

Plain Python and numpy: the data layer, the trainer, the objectives and the metrics all read groups through
this module, so every place names and counts them the same way.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "GROUP_ID_COLUMN",
    "MAX_GROUP_VALUES",
    "MISSING",
    "GroupIndex",
    "CLASS_KEY",
    "cell_counts",
    "count_groupings",
    "cell_name",
    "check_group_columns",
    "group_text",
    "intersect",
    "read_group_values",
    "report_groupings",
]

# The column of integer group codes (the intersection of the group columns) that the trainer adds to the
# train and holdout rows of objectives that weight groups; not a model input.
GROUP_ID_COLUMN = "group_ids"
# How a missing value is named (it is its own group).
MISSING = "(missing)"
# More distinct values than this and a column is taken for an id, not a group (override: max_group_values).
MAX_GROUP_VALUES = 100
# Separator of intersections ("A&night") and of cells ("cat&A").
JOIN = "&"
# The name of the class in a report key: "class&site" is the class x site grouping.
CLASS_KEY = "class"


def group_text(value) -> str:
    """The group name of one value: its text; None, NaN and empty text are :data:`MISSING`."""
    if value is None:
        return MISSING
    if isinstance(value, float) and math.isnan(value):
        return MISSING
    if isinstance(value, np.generic):
        return group_text(value.item())
    text = str(value)
    return text if text.strip() else MISSING


def check_group_columns(available: Sequence[str], group_columns: Sequence[str] | None, where: str) -> None:
    """Refuse group columns that ``where`` (e.g. "the train split of 'my_folder'") does not have, naming the
    columns it does have. Cheap: only column names are read."""
    missing = [c for c in group_columns or () if c not in available]
    if missing:
        raise ValueError(
            f"group column(s) {missing} not found in {where}; available columns: {list(available)}. Pass "
            "--group_columns with names from that list (for an image folder: columns of its metadata.csv / "
            "metadata.jsonl)."
        )
    if group_columns and len(set(group_columns)) != len(group_columns):
        raise ValueError(f"group columns repeat a name: {list(group_columns)}; name each column once.")


def read_group_values(
    dataset, group_columns: Sequence[str], max_group_values: int = MAX_GROUP_VALUES, where: str = "the dataset"
) -> dict[str, list[str]]:
    """{column: one group name per row} of ``dataset`` (a `datasets.Dataset` or a dict of lists).

    Refuses a column with more than ``max_group_values`` distinct values (an id, not a group)."""
    names = dataset.column_names if hasattr(dataset, "column_names") else list(dataset)
    check_group_columns(names, group_columns, where)
    plain = dataset.with_format(None) if hasattr(dataset, "with_format") else dataset  # no image transform
    out = {}
    for column in group_columns:
        values = [group_text(v) for v in plain[column]]
        distinct = len(set(values))
        if distinct > max_group_values:
            raise ValueError(
                f"group column {column!r} of {where} has {distinct} distinct values, more than "
                f"max_group_values={max_group_values}: it looks like an id, not a group. Pass another column, "
                f"or raise the limit with --max_group_values {distinct} if every value is a group."
            )
        out[column] = values
    return out


def intersect(values: Mapping[str, Sequence[str]]) -> list[str]:
    """One key per row for several group columns: their values joined with ``&`` (one column: its values)."""
    columns = list(values.values())
    if not columns:
        return []
    return [JOIN.join(parts) for parts in zip(*columns)]


def cell_name(class_name: str, group: str) -> str:
    """The name of a class x group cell, e.g. ``"cat&A"``."""
    return f"{class_name}{JOIN}{group}"


class GroupIndex:
    """Integer codes for group keys (the intersection of the group columns), in sorted key order.

    Build it from every split's keys (`from_keys`), so that train, holdout and test share the codes.
    """

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self._codes = {name: code for code, name in enumerate(self.names)}

    @classmethod
    def from_keys(cls, *key_lists: Sequence[str]) -> GroupIndex:
        return cls(sorted({key for keys in key_lists for key in keys}))

    def __len__(self) -> int:
        return len(self.names)

    def codes(self, keys: Sequence[str]) -> np.ndarray:
        """The code of every key; a key the index does not know is refused, naming it."""
        try:
            return np.fromiter((self._codes[k] for k in keys), dtype=np.int64, count=len(keys))
        except KeyError as err:
            raise ValueError(
                f"group {err.args[0]!r} is not among the groups {self.names[:20]}; build the index from every "
                "split's groups (GroupIndex.from_keys(train, holdout, test))."
            ) from None


def cell_counts(labels, group_codes, num_classes: int, num_groups: int) -> np.ndarray:
    """[num_classes, num_groups] row counts of every class x group cell."""
    labels = np.asarray(labels, dtype=np.int64)
    group_codes = np.asarray(group_codes, dtype=np.int64)
    flat = np.bincount(labels * num_groups + group_codes, minlength=num_classes * num_groups)
    return flat[: num_classes * num_groups].reshape(num_classes, num_groups)


def report_groupings(
    values: Mapping[str, Sequence[str]], class_names: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """{report key: one group name per row}: the groupings every report, card and count table shows.

    ``values``: {column: group name per row} (from `read_group_values`); ``class_names``: the class name of each
    row (None: no class x group cells). Keys, in this order: each column ("site"); the class with each column
    ("class&site", cells "cat&A"); each pair of columns ("site&camera"); all columns when more than two.
    """
    columns = list(values)
    out: dict[str, list[str]] = {column: list(values[column]) for column in columns}
    if class_names is not None:
        for column in columns:
            out[JOIN.join((CLASS_KEY, column))] = [cell_name(c, g) for c, g in zip(class_names, values[column])]
    combos = list(itertools.combinations(columns, 2))
    if len(columns) > 2:
        combos.append(tuple(columns))
    for combo in combos:
        out[JOIN.join(combo)] = intersect({c: values[c] for c in combo})
    return out


def count_groupings(groupings: Mapping[str, Sequence[str]]) -> dict[str, dict[str, int]]:
    """{report key: {group: rows}} of `report_groupings` (e.g. the training count of every group and cell)."""
    return {key: dict(sorted(Counter(keys).items())) for key, keys in groupings.items()}
