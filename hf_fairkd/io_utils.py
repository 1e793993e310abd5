"""Atomic file writes: a reader sees either the old file or the complete new one, never half a file.

Every writer serialises first (so a serialisation error leaves the target untouched), writes to a
temporary file in the target's directory (same filesystem, so ``os.replace`` is an atomic rename),
fsyncs it, then renames it over the target.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "nan_to_none",
]

# Temporary files end in ".tmp" so that hub.push_output_dir's default ignore patterns skip any leftover.
_TMP_SUFFIX = ".tmp"


def _fsync_dir(directory: Path) -> None:
    # Make the rename itself durable; not every platform can open a directory, which is fine.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed onto ``path``.

    Use it for writers that want a file name (e.g. ``fig.savefig(tmp, format="png")``). If the block
    raises, the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_TMP_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp creates files with mode 0600; give the result the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"atomic_write_bytes expects bytes, got {type(data).__name__}; encode text first.")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation) and return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def _is_numpy(obj: Any) -> bool:
    return type(obj).__module__ == "numpy" and hasattr(obj, "tolist")


def nan_to_none(obj: Any) -> Any:
    """Return a copy of ``obj`` with NaN/inf floats replaced by None (JSON has no NaN).

    The package's one JSON cleaner (``hf_fairkd.metrics.report_to_jsonable`` is this function): mappings
    become dicts (numpy keys become Python values), tuples become lists and numpy scalars/arrays become
    Python values; anything else is returned unchanged so that ``json.dumps`` can reject it with its usual
    TypeError. numpy is recognised by module name, so this module does not import it.
    """
    if isinstance(obj, Mapping):
        return {(key.tolist() if _is_numpy(key) else key): nan_to_none(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [nan_to_none(value) for value in obj]
    if _is_numpy(obj):
        return nan_to_none(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Serialise ``obj`` as strict JSON (NaN/inf -> null) and write it atomically.

    Serialisation happens before any file is created, so an object that cannot be serialised raises
    ``TypeError`` and leaves an existing file untouched.
    """
    text = json.dumps(nan_to_none(obj), allow_nan=False, indent=indent, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


def description_with_record(description: str | None, marker: str, record: dict) -> str:
    """``description`` with one ``<marker><json>`` line carrying ``record`` (replacing an earlier one).

    `datasets` keeps ``info.description`` through select/map/save_to_disk, so metadata written there travels
    with the split (the long-tail profile, the teacher cache's fingerprint).
    """
    line = marker + json.dumps(record, sort_keys=True)
    text = description or ""
    pattern = _record_pattern(marker)
    if pattern.search(text):
        return pattern.sub(lambda _: line, text)
    return f"{text}\n\n{line}" if text.strip() else line


def record_in_description(description: str | None, marker: str) -> dict | None:
    """The record a `description_with_record` line carries, or None when there is none."""
    found = _record_pattern(marker).search(description or "")
    return None if found is None else json.loads(found.group(1))


def _record_pattern(marker: str) -> re.Pattern:
    return re.compile(r"^" + re.escape(marker) + r"(.*)$", re.MULTILINE)

