"""Splits that keep every class x group cell measurable, and the group counts of a built dataset.

With group columns, the holdout and a carved test split keep the per-class sizes of the plain plans exactly,
but spread each class's rows across its cells (the intersection of the group columns) in proportion to the
cells' sizes (largest remainder), at least one row per cell when the class's quota allows. Cells that still
end up unmeasurable are named: a warning, or an error when ``min_cell_rows`` is given. Only the label and
group columns are read: no image is decoded.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..groups import MAX_GROUP_VALUES, count_groupings, intersect, read_group_values, report_groupings

logger = logging.getLogger(__name__)

# How many cells a warning or error names before "... and N more".
_SHOWN_CELLS = 12


def check_group_args(
    group_columns: Sequence[str] | str | None, max_group_values: int, min_cell_rows: int | None
) -> list[str] | None:
    """The group columns as a list (None: no groups), after cheap checks done before anything is loaded."""
    if isinstance(group_columns, str):
        group_columns = [group_columns]
    group_columns = list(group_columns) if group_columns else None
    if group_columns and not all(isinstance(c, str) and c for c in group_columns):
        raise ValueError(f"group_columns must be column names (non-empty strings), got {group_columns!r}")
    if isinstance(max_group_values, bool) or not isinstance(max_group_values, (int, np.integer)):
        raise ValueError(f"max_group_values must be an integer >= 1, got {max_group_values!r}")
    if max_group_values < 1:
        raise ValueError(f"max_group_values must be an integer >= 1, got {max_group_values!r}")
    if min_cell_rows is not None:
        if (
            isinstance(min_cell_rows, bool)
            or not isinstance(min_cell_rows, (int, np.integer))
            or min_cell_rows < 1
        ):
            raise ValueError(
                f"min_cell_rows must be an integer >= 1 (rows every class x group cell needs in the test split "
                f"and the holdout), got {min_cell_rows!r}"
            )
        if not group_columns:
            raise ValueError(
                f"min_cell_rows={min_cell_rows} counts rows per class x group cell, but no group_columns were "
                "given; pass --group_columns <column> [...] or drop --min_cell_rows"
            )
    return group_columns


def group_keys(
    dataset, group_columns: Sequence[str] | None, max_group_values: int = MAX_GROUP_VALUES, where: str = ""
) -> list[str] | None:
    """One group key per row (the intersection of the group columns, e.g. "A&night"); None without groups.
    Refuses a missing column or one with too many distinct values (see `read_group_values`)."""
    if not group_columns:
        return None
    return intersect(read_group_values(dataset, group_columns, max_group_values, where or "the dataset"))


def allocate_cells(quota: int, cell_sizes: Sequence[int]) -> list[int]:
    """Split ``quota`` rows across cells in proportion to ``cell_sizes`` (largest remainder, ties to the larger
    cell, then the earlier one), at least 1 per non-empty cell when ``quota`` covers them all. Never more
    rows than a cell has (``quota`` <= their sum)."""
    sizes = [int(n) for n in cell_sizes]
    total = sum(sizes)
    if quota <= 0 or total == 0:
        return [0] * len(sizes)
    if quota > total:
        raise ValueError(f"cannot take {quota} rows from cells holding {total}")
    # Integer arithmetic: share_i = quota * n_i / total exactly, as floor + remainder / total.
    alloc = [quota * n // total for n in sizes]
    remainders = [quota * n % total for n in sizes]
    order = sorted(range(len(sizes)), key=lambda i: (-remainders[i], -sizes[i], i))
    for i in order[: quota - sum(alloc)]:
        alloc[i] += 1
    nonempty = [i for i, n in enumerate(sizes) if n > 0]
    if quota >= len(nonempty):
        for i in nonempty:
            if alloc[i] == 0:
                # Take the row from the cell most above its share (there is one with 2+ rows: sum >= count).
                donor = max(
                    (j for j in nonempty if alloc[j] > 1),
                    key=lambda j: (alloc[j] * total - quota * sizes[j], alloc[j], -j),
                )
                alloc[donor] -= 1
                alloc[i] += 1
    return alloc


def take_by_cell(rows: np.ndarray, row_keys: Sequence[str], quota: int) -> tuple[np.ndarray, np.ndarray]:
    """(taken, left) of one class's ``rows`` (already in seeded order): ``quota`` rows spread over the cells
    by `allocate_cells`, the first rows of each cell in that order."""
    cells = sorted(set(row_keys))
    members = {cell: [] for cell in cells}
    for row, key in zip(rows, row_keys):
        members[key].append(row)
    alloc = allocate_cells(quota, [len(members[cell]) for cell in cells])
    taken = [r for cell, n in zip(cells, alloc) for r in members[cell][:n]]
    taken_set = set(taken)
    left = [r for r in rows if r not in taken_set]
    return np.asarray(taken, dtype=np.int64), np.asarray(left, dtype=np.int64)


def _describe_cells(cells: list[tuple], split: str, pool: str) -> str:
    shown = [
        f"(class {name!r}, group {key!r}, {rows} row(s) in {pool}, {got} in the {split})"
        for name, key, rows, got in cells[:_SHOWN_CELLS]
    ]
    more = f" ... and {len(cells) - _SHOWN_CELLS} more" if len(cells) > _SHOWN_CELLS else ""
    return ", ".join(shown) + more


def check_cells(
    split: str,
    pool: tuple[np.ndarray, Sequence[str]],
    chosen: tuple[np.ndarray, Sequence[str]],
    class_names: Sequence[str],
    min_cell_rows: int | None,
    pool_name: str,
) -> None:
    """Name every class x group cell of ``pool`` (labels, keys) with too few rows in ``chosen`` (the test split
    or the holdout): fewer than ``min_cell_rows`` is an error; without it, none at all is a warning."""
    pool_cells = Counter(zip(np.asarray(pool[0]).tolist(), pool[1]))
    chosen_cells = Counter(zip(np.asarray(chosen[0]).tolist(), chosen[1]))
    need = 1 if min_cell_rows is None else int(min_cell_rows)
    short = [
        (class_names[c], key, rows, chosen_cells[(c, key)])
        for (c, key), rows in sorted(pool_cells.items())
        if chosen_cells[(c, key)] < need
    ]
    if not short:
        return
    described = _describe_cells(short, split, pool_name)
    if min_cell_rows is None:
        logger.warning(
            "%d class x group cell(s) have too few rows to appear in the %s, so they cannot be measured there: "
            "%s. Add rows to them or group more coarsely; pass --min_cell_rows 1 to make this an error.",
            len(short),
            split,
            described,
        )
        return
    flag = "--holdout_per_class" if split == "holdout" else "--test_fraction (or supply a larger test split)"
    raise ValueError(
        f"{len(short)} class x group cell(s) would have fewer than min_cell_rows={min_cell_rows} row(s) in the "
        f"{split}: {described}. Add rows to these cells, carve a larger {split} ({flag}), group more coarsely "
        "(fewer --group_columns), or lower --min_cell_rows."
    )


def warn_untrained_cells(
    pool: tuple[np.ndarray, Sequence[str]], train_pos: np.ndarray, class_names: Sequence[str]
) -> None:
    """Warn about cells whose every row went to the holdout / test split (no training row left)."""
    labels, keys = np.asarray(pool[0]), list(pool[1])
    trained = {(int(labels[p]), keys[p]) for p in train_pos}
    empty = sorted({(int(c), k) for c, k in zip(labels, keys)} - trained)
    if empty:
        logger.warning(
            "class x group cell(s) with no training row left after carving the holdout / test split (all their "
            "rows are measured instead): %s. Add rows to them if the student should learn them.",
            ", ".join(f"(class {class_names[c]!r}, group {k!r})" for c, k in empty[:_SHOWN_CELLS]),
        )


def group_counts(
    dataset,
    labels: np.ndarray,
    class_names: Sequence[str],
    group_columns: Sequence[str],
    max_group_values: int,
) -> dict[str, dict[str, int]]:
    """The rows of every group and class x group cell of ``dataset`` (the table the metrics read):
    ``count_groupings(report_groupings(group values, class names))``."""
    values = read_group_values(dataset, group_columns, max_group_values)
    return count_groupings(report_groupings(values, [class_names[int(c)] for c in labels]))


def group_info(
    group_columns: Sequence[str] | None,
    max_group_values: int,
    class_names: Sequence[str],
    train: tuple,
    test: tuple,
) -> dict:
    """The LongTailInfo group fields ({} without groups); ``train`` / ``test``: (dataset, labels) of the built
    splits."""
    if not group_columns:
        return {}
    return {
        "group_columns": list(group_columns),
        "group_train_counts": group_counts(*train, class_names, group_columns, max_group_values),
        "group_test_counts": group_counts(*test, class_names, group_columns, max_group_values),
    }
