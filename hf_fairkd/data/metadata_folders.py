"""Folders of class sub-folders of images plus a metadata file (the attributes of each image: site, camera...).

Layouts: ``<class>/*.png`` with ``metadata.csv`` at the root, or ``train/<class>/``, ``test/<class>/`` with a
metadata file in each split folder or one at the root. The datasets convention: a ``metadata.csv``,
``metadata.jsonl`` or ``metadata.parquet`` whose ``file_name`` column holds each image's path relative to the
metadata file's folder; every other column is kept as it is. The class is the sub-folder name (a ClassLabel of
the sorted names, as imagefolder makes), or a metadata column named with ``label_column``.

Built here, not by `datasets`: datasets 5.x drops the class-folder labels as soon as a metadata file is present.
The images are referenced by path, so nothing is decoded; every check runs on names and the metadata alone.
"""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from pathlib import Path

import pyarrow as pa
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

from ..groups import check_group_columns
from .image_folders import _FILE_BUILDERS, _IMAGE_EXTS

METADATA_NAMES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"  # the folder labels' column, as imagefolder names it
# How many unmatched names an error shows on each side.
_SHOWN = 5


def _split_of(folder: str) -> str | None:
    """The split a top-level folder stands for ('train', 'test', 'validation'), by the datasets keywords."""
    from datasets.data_files import SPLIT_KEYWORDS

    return next((str(split) for split, words in SPLIT_KEYWORDS.items() if folder.lower() in words), None)


def _walk(path: str) -> tuple[list[str], list[str], list[str]]:
    """(images, metadata files, other data files), as sorted paths relative to ``path`` ('/'-separated).
    Folders and files named .* or __* are skipped, as datasets skips them."""
    images, metadata, other = [], [], []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        rel_root = Path(os.path.relpath(root, path)).as_posix()
        for name in files:
            if name.startswith((".", "__")):
                continue
            rel = posixpath.normpath(posixpath.join(rel_root, name))
            ext = os.path.splitext(name)[1].lower()
            if name in METADATA_NAMES:
                metadata.append(rel)
            elif ext in _IMAGE_EXTS:
                images.append(rel)
            elif ext in _FILE_BUILDERS:
                other.append(rel)
    return sorted(images), sorted(metadata), sorted(other)


def is_metadata_image_folder(path: str) -> bool:
    """True if ``path`` holds images and at least one metadata file, and no other data file."""
    images, metadata, other = _walk(path)
    return bool(images and metadata and not other)


def _read_table(path: str, file: str) -> pa.Table:
    """The metadata file ``file`` (relative to ``path``) as an Arrow table; CSV through pyarrow, so an int
    column with a missing value stays int (pandas would make it float, and 3 the group "3.0")."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    readers = {".csv": pacsv.read_csv, ".jsonl": pajson.read_json, ".parquet": pq.read_table}
    try:
        return readers[os.path.splitext(file)[1]](os.path.join(path, file))
    except (pa.ArrowException, OSError) as err:
        raise ValueError(
            f"could not read the metadata file {file!r} of {path!r}: {err}. It must be a CSV with a header row "
            "(metadata.csv), one JSON object per line (metadata.jsonl) or Parquet, with a file_name column."
        ) from err


def _layout(path: str, images: list[str], metadata: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """({split: its folder ('' for the root)}, {metadata file: the split folder it covers ('' = all)})."""
    tops = {image.split("/")[0] for image in images if "/" in image}
    split_folders = {top: _split_of(top) for top in tops if _split_of(top)}
    outside = [image for image in images if image.split("/")[0] not in split_folders or "/" not in image]
    if split_folders and outside:
        raise ValueError(
            f"{path!r} mixes split folders {sorted(split_folders)} with images outside them (e.g. {outside[:_SHOWN]}); "
            "put every image in a split folder (train/<class>/, test/<class>/) or none."
        )
    splits = {split: folder for folder, split in split_folders.items()} if split_folders else {"train": ""}
    if len(splits) != len(split_folders or [""]):
        raise ValueError(
            f"{path!r} has several folders for one split: {sorted(split_folders)}; keep one each."
        )
    scopes: dict[str, str] = {}
    for file in metadata:
        folder = posixpath.dirname(file)
        if folder and folder not in split_folders:
            raise ValueError(
                f"metadata file {file!r} in {path!r} is in a folder that is neither the root nor a split folder; "
                f"put one metadata file at the root (or one in each split folder {sorted(split_folders)}) with a "
                "file_name column of paths relative to it."
            )
        if folder in scopes.values():
            raise ValueError(
                f"{path!r} has two metadata files in {folder or 'its root'!r}: "
                f"{[f for f in metadata if posixpath.dirname(f) == folder]}; keep one."
            )
        scopes[file] = folder
    if len(scopes) > 1 and "" in scopes.values():
        raise ValueError(
            f"{path!r} has a metadata file at the root and others in split folders ({sorted(scopes)}); keep either "
            "one at the root or one per split folder."
        )
    if "" not in scopes.values():
        uncovered = sorted(set(split_folders) - set(scopes.values()))
        if uncovered:
            raise ValueError(
                f"split folder(s) {uncovered} of {path!r} have no metadata file while {sorted(scopes)} do; add a "
                "metadata.csv to each split folder (or use one at the root)."
            )
    return splits, scopes


def _match(path: str, file: str, table: pa.Table, scope: str, images: list[str]) -> dict[str, int]:
    """{image path relative to ``path``: its metadata row}, refusing unmatched rows or images."""
    if "file_name" not in table.column_names:
        raise ValueError(
            f"metadata file {file!r} in {path!r} has no 'file_name' column (columns: {table.column_names}); add "
            "one holding each image's path relative to the metadata file's folder (e.g. cat/0.png)."
        )
    names = table.column("file_name").to_pylist()
    prefix = f"{scope}/" if scope else ""
    rows = [prefix + posixpath.normpath(str(n).replace("\\", "/")) if n is not None else None for n in names]
    repeated = sorted(name for name, n in Counter(rows).items() if n > 1 and name is not None)
    if repeated:
        raise ValueError(
            f"metadata file {file!r} in {path!r} lists the same file_name more than once: {repeated[:_SHOWN]}; "
            "keep one row per image."
        )
    covered = [image for image in images if image.startswith(prefix)]
    known = set(covered)
    without_image = [names[i] for i, row in enumerate(rows) if row not in known]
    without_row = sorted(set(covered) - set(rows))
    if without_image or without_row:
        raise ValueError(
            f"the file_name rows of metadata file {file!r} do not match the images in {path!r}: "
            f"{len(without_image)} metadata row(s) without an image (first: {without_image[:_SHOWN]}), "
            f"{len(without_row)} image(s) without a metadata row (first: "
            f"{[image[len(prefix) :] for image in without_row[:_SHOWN]]}). file_name is a path relative to the "
            "metadata file's folder (e.g. cat/0.png); fix those rows, or add / remove the images."
        )
    return {row: i for i, row in enumerate(rows)}


def _class_names(values: list) -> list[str]:
    """Sorted class names of a metadata label column (numbers in numeric order)."""
    distinct = set(values)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in distinct):
        return [str(v) for v in sorted(distinct)]
    return sorted(str(v) for v in distinct)


def _check_columns(path: str, tables: dict[str, pa.Table], label_column, group_columns) -> None:
    """Group columns must be metadata columns; no metadata column may take the image's or the folder label's
    name; a label column must be in every metadata file or none."""
    for file, table in tables.items():
        columns = [c for c in table.column_names if c != "file_name"]
        check_group_columns(columns, group_columns, f"the metadata file {file!r} of {path!r}")
        if IMAGE_COLUMN in columns:
            raise ValueError(
                f"metadata file {file!r} of {path!r} has a column named {IMAGE_COLUMN!r}, the name of the image "
                "column; rename it."
            )
        if LABEL_COLUMN in columns and label_column is None:
            raise ValueError(
                f"metadata file {file!r} of {path!r} has a column named {LABEL_COLUMN!r}, the name of the "
                "class-folder label column; rename it, or pass label_column='label' to take the classes from it."
            )
    having = [file for file, table in tables.items() if label_column in table.column_names]
    if having and len(having) != len(tables):
        raise ValueError(
            f"label column {label_column!r} is in the metadata file(s) {having} of {path!r} but not in "
            f"{sorted(set(tables) - set(having))}; add it to every metadata file."
        )


def _classes_from_metadata(path: str, label_column: str, values: dict[str, object]):
    """(class names, {image: class id}) from a metadata column."""
    unlabelled = [image for image, value in values.items() if value is None or str(value).strip() == ""]
    if unlabelled:
        raise ValueError(
            f"label column {label_column!r} of the metadata of {path!r} is empty for {len(unlabelled)} "
            f"image(s) (first: {unlabelled[:_SHOWN]}); give every image a class or remove those images."
        )
    names = _class_names(list(values.values()))
    return names, {image: names.index(str(value)) for image, value in values.items()}


def _classes_from_folders(path: str, splits: dict[str, str], images: list[str]):
    """(class names, {image: class id}) from the folder holding each image."""
    misplaced = [
        image
        for folder in splits.values()
        for image in _in_folder(images, folder)
        if image[len(folder) + 1 if folder else 0 :].count("/") != 1
    ]
    if misplaced:
        raise ValueError(
            f"{path!r}: the class is the folder holding each image, but {misplaced[:_SHOWN]} do not sit "
            "directly in a class folder (<class>/<image> or <split>/<class>/<image>); move them, or name the "
            "metadata column holding the class with label_column."
        )
    names = sorted({posixpath.basename(posixpath.dirname(image)) for image in images})
    if len(names) < 2:
        raise ValueError(
            f"{path!r} holds {len(names)} class folder(s) {names}; a classifier needs 2 or more (or name the "
            "metadata column holding the class with label_column)."
        )
    return names, {image: names.index(posixpath.basename(posixpath.dirname(image))) for image in images}


def _in_folder(images: list[str], folder: str) -> list[str]:
    return [image for image in images if not folder or image.startswith(f"{folder}/")]


def load_metadata_folder(
    path: str, *, label_column: str | None = None, group_columns: list[str] | None = None
) -> DatasetDict:
    """The folder as a DatasetDict ('train', and 'test' / 'validation' for split folders): an ``image`` column
    (by path, not decoded), the class, and every metadata column but file_name, as it is."""
    images, metadata, _ = _walk(path)
    splits, scopes = _layout(path, images, metadata)
    tables = {file: _read_table(path, file) for file in scopes}
    _check_columns(path, tables, label_column, group_columns)
    rows = {}  # image -> (metadata file, row)
    for file, table in tables.items():
        matched = _match(path, file, table, scopes[file], images)
        rows.update({image: (file, row) for image, row in matched.items()})
    from_metadata = any(label_column in table.column_names for table in tables.values())
    if from_metadata:
        values = {
            image: tables[file].column(label_column)[row].as_py() for image, (file, row) in rows.items()
        }
        names, class_of = _classes_from_metadata(path, label_column, values)
    else:
        names, class_of = _classes_from_folders(path, splits, images)
    out = {}
    for split, folder in splits.items():
        chosen = _in_folder(images, folder)
        table = tables[rows[chosen[0]][0]]  # one metadata file covers a whole split
        kept = table.drop_columns(["file_name"]).take([rows[image][1] for image in chosen])
        columns = Features.from_arrow_schema(kept.schema)
        data = {IMAGE_COLUMN: [os.path.join(os.path.abspath(path), image) for image in chosen]}
        features = {IMAGE_COLUMN: Image()}
        if from_metadata:
            columns[label_column] = ClassLabel(names=names)
            ids = pa.array([class_of[image] for image in chosen], type=pa.int64())
            kept = kept.set_column(kept.column_names.index(label_column), label_column, ids)
        else:
            data[LABEL_COLUMN] = [class_of[image] for image in chosen]
            features[LABEL_COLUMN] = ClassLabel(names=names)
        data.update(kept.to_pydict())
        features.update(columns)
        out[split] = Dataset.from_dict(data, features=Features(features))
    return DatasetDict(out)
