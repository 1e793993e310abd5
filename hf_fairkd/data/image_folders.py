"""Folders of images with one sub-folder per class: what the `datasets` imagefolder builder would misread."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}


def _is_image_folder(path: str) -> bool:
    """True if ``path`` holds image files and no other data files (e.g. class_a/x.png, class_b/y.png)."""
    found_image = False
    for _root, _dirs, files in os.walk(path):
        for name in files:
            ext = os.path.splitext(name)[1].lower()
            if ext in _FILE_BUILDERS:
                return False
            found_image = found_image or ext in _IMAGE_EXTS
    return found_image


def _split_word(name: str) -> str | None:
    """The split `datasets` reads from a folder or file name ('test' for test/, dog-test/, img_test.png, ...)."""
    from datasets.data_files import NON_WORDS_CHARS, SPLIT_KEYWORDS

    sep = re.escape(NON_WORDS_CHARS).replace("0\\-9", "0-9")
    for split, words in SPLIT_KEYWORDS.items():
        if any(re.search(f"(^|[{sep}]){word}($|[{sep}])", name) for word in words):
            return str(split)
    return None


def check_image_folder(path: str) -> None:
    """Refuse, before loading, a folder of class sub-folders that the `imagefolder` builder misreads.

    `datasets` takes the label from the folder holding each image, only if every image is at the same depth
    (a backslash in a name counts as a separator) and there are 2+ such folders; it reads a split from any
    folder or file name holding a split word (train, val, dev, test, eval, ... as a separate word: dog-test/,
    img_val.png); and it skips folders named .* or __*. Each would drop the label column or silently move
    images to another split. Layouts train/<class>/, test/<class>/ are understood.
    """
    images, skipped = [], set()
    for root, dirs, files in os.walk(path):
        rel_root = os.path.relpath(root, path)
        for d in [d for d in dirs if d.startswith((".", "__"))]:
            dirs.remove(d)
            if _is_image_folder(os.path.join(root, d)):
                skipped.add(os.path.normpath(os.path.join(rel_root, d)))
        images += [
            os.path.normpath(os.path.join(rel_root, f))
            for f in files
            if os.path.splitext(f)[1].lower() in _IMAGE_EXTS and not f.startswith(".")
        ]
    split_level = all(len(Path(f).parts) > 2 and _split_word(Path(f).parts[0]) for f in images)
    problems = []
    if skipped:
        logger.warning(
            "%s: datasets skips the folder(s) %s (names starting with '.' or '__')", path, sorted(skipped)
        )
    backslash = sorted({d for f in images for d in Path(f).parts[:-1] if "\\" in d})
    if backslash:
        problems.append(
            f"the folder name(s) {backslash} hold a backslash, which datasets reads as a path separator"
        )
    misread = sorted(
        {
            f"{name!r} (read as a {_split_word(name)!r} split)"
            for f in images
            for name in Path(f).parts[1 if split_level else 0 :]
            if _split_word(name)
        }
    )
    if misread:
        problems.append(
            f"the name(s) {', '.join(misread[:8])}{' ...' if len(misread) > 8 else ''} hold a split word (datasets then moves "
            "those images to that split)"
        )
    depths = sorted({len(Path(f).parts) for f in images})
    if not problems and len(depths) > 1:
        where = [next(f for f in images if len(Path(f).parts) == depth) for depth in depths]
        problems.append(
            f"the images are not all at the same depth (e.g. {', '.join(where)}); each must sit directly in its "
            "class folder"
        )
    classes = sorted({Path(f).parts[-2] for f in images if len(Path(f).parts) > 1})
    if not problems and len(classes) < 2:
        ignored = (
            f", besides {sorted(skipped)}, which datasets skips (a name starting with '.' or '__')"
            if skipped
            else ""
        )
        problems.append(
            f"it holds {len(classes)} class folder(s) {classes}{ignored}; a classifier needs 2 or more"
        )
    if problems:
        raise ValueError(
            f"{path!r} cannot be read as a folder of one sub-folder of images per class: {'; '.join(problems)}. "
            "Rename the folders or files named (no backslash, no split word train/val/dev/test/eval/...: e.g. "
            "'a\\b' -> 'a_b', 'dog-test' -> 'dog'), or move the images, then re-run; as it is, datasets would "
            "load it without its label column or with images moved to another split."
        )
