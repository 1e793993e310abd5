"""The comparison's files: one result file per finished run, claims that let several workers share one plan, the
plan file written once, and the code version every run records.

A run file ``<runs_dir>/<file_name>.json`` is written atomically as soon as its run finishes; a rerun skips it.
A worker claims a run with an exclusive file ``<file_name>.claim`` holding its pid and host; a claim whose
process is gone (same host) or that is older than the stale limit (another host) is taken over, under a lock
that lets only one worker replace it."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..io_utils import atomic_write_json
from .plan import Run, dependencies, file_name, plan_differences

PLAN_FILE = "plan.json"


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """The package version and, in a git checkout, its commit and whether the package or recipes differ from it."""
    from .. import __version__

    package = Path(__file__).resolve().parents[1]
    code = {"hf_fairkd": __version__, "git_commit": None, "git_dirty": None}

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=30)
        if done.returncode:
            raise OSError(done.stderr)
        return done.stdout.strip()

    try:
        root = Path(git("rev-parse", "--show-toplevel"))
        code["git_commit"] = git("rev-parse", "--short=12", "HEAD")
        changed = git(
            "status", "--porcelain", "--untracked-files=no", "--", str(package), str(root / "recipes")
        )
        code["git_dirty"] = bool(changed)
    except (OSError, subprocess.SubprocessError):
        pass  # an installed package, or no git: the version alone
    return code


def code_text(code: dict | None) -> str:
    """'0.1.0+git1a2b3c4d5e6f.dirty', or 'not recorded'."""
    if not code:
        return "not recorded"
    text = str(code.get("hf_fairkd"))
    if code.get("git_commit"):
        text += f"+git{code['git_commit']}" + (".dirty" if code.get("git_dirty") else "")
    return text


def _create_with(path: Path, content: str) -> bool:
    """Create ``path`` holding ``content`` only if it does not exist (never a half-written file): False if it
    does. A hard link of a complete temporary file is the atomic exclusive create."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create (content follows at once)
            try:
                out = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            with os.fdopen(out, "w", encoding="utf-8") as f:
                f.write(content)
        return True
    finally:
        os.unlink(tmp)


def write_plan_once(output_dir: str | os.PathLike, document: dict) -> dict:
    """Write the plan file, or check that the folder's plan is this one: two workers started with different plans
    in one folder would mix their runs, so the second is refused, saying what differs."""
    path = Path(output_dir) / PLAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if _create_with(path, json.dumps(document, indent=2)):
        return document
    theirs = json.loads(path.read_text(encoding="utf-8"))
    if theirs.get("digest") != document["digest"]:
        raise ValueError(
            f"{path} holds another plan than this command's ({'; '.join(plan_differences(theirs, document))}). "
            "Workers that share a folder must be started with the same objectives, settings, seeds, data, models "
            "and training flags. Use another --output_dir for this plan (or delete that plan.json to replace the "
            "plan: its finished run files are then retrained, not mixed)."
        )
    return theirs


class RunStore:
    """The run files and claims of a comparison in ``folder``. ``digest``: the plan's (a run file of another plan
    is not done); ``rerun_other_code``: a run file of another code version is not done either."""

    def __init__(
        self,
        folder,
        digest: str | None = None,
        rerun_other_code: bool = False,
        stale_claim_hours: float = 48.0,
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.digest, self.rerun_other_code = digest, rerun_other_code
        self.stale_seconds = 3600.0 * stale_claim_hours
        self._seen: dict[str, tuple] = {}

    def path(self, key: str) -> Path:
        return self.folder / f"{file_name(key)}.json"

    def claim_path(self, key: str) -> Path:
        return self.folder / f"{file_name(key)}.claim"

    def read(self, key: str) -> dict | None:
        try:
            return json.loads(self.path(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def done(self, key: str) -> bool:
        """Whether the run has a file this plan accepts (of this plan; of this code with ``rerun_other_code``)."""
        try:
            stat = self.path(key).stat()
        except FileNotFoundError:
            return False
        if self.digest is None and not self.rerun_other_code:
            return True
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._seen.get(key, (None,))[0] != stamp:  # read each version of a file once: workers poll often
            run = self.read(key) or {}
            self._seen[key] = (stamp, run.get("plan_digest"), run.get("code"))
        _, digest, code = self._seen[key]
        if self.digest is not None and digest not in (None, self.digest):
            return False
        return not (self.rerun_other_code and code != code_version())

    def write(self, key: str, record: dict) -> Path:
        return atomic_write_json(self.path(key), record)

    def finished(self, plan: list[Run]) -> dict[str, dict]:
        """Key -> run file of every run of the plan that has one (whatever its plan or code)."""
        return {run.key: record for run in plan if (record := self.read(run.key)) is not None}

    # -------------------------------------------------------------------------------------------- claims
    def claim(self, key: str) -> bool:
        """Take the run for this process; False if a live worker holds it."""
        lock = self.claim_path(key)
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        if _create_with(lock, holder):
            return True
        with self._takeover_lock():  # one worker at a time replaces a claim, so no two take the same one
            current = _read_claim(lock)
            if current is not None and self._alive(current):
                return False
            lock.unlink(missing_ok=True)
            return _create_with(lock, holder)

    def release(self, key: str) -> None:
        lock = self.claim_path(key)
        current = _read_claim(lock)
        if (
            current is not None
            and current.get("pid") == os.getpid()
            and current.get("host") == socket.gethostname()
        ):
            lock.unlink(missing_ok=True)

    def claimed(self, key: str) -> dict | None:
        return _read_claim(self.claim_path(key))

    def _alive(self, holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():  # its process cannot be asked: trust it until stale
            return time.time() - float(holder.get("since") or 0) < self.stale_seconds
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, ValueError, TypeError):
            return True
        return True

    @contextlib.contextmanager
    def _takeover_lock(self):
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): take-overs are not serialised
            yield
            return
        with open(self.folder / ".claims.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _read_claim(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        try:  # unreadable: judged by its age
            return {"pid": -1, "host": None, "since": lock.stat().st_mtime}
        except FileNotFoundError:
            return None


def next_run(plan: list[Run], store: RunStore) -> tuple[Run | None, bool]:
    """(the first run of the plan not done, not claimed by a live worker and whose dependencies are done, now
    claimed by this process; whether any run is still not done)."""
    left = False
    for run in plan:
        if store.done(run.key):
            continue
        left = True
        if all(store.done(need) for need in dependencies(run, plan)) and store.claim(run.key):
            if store.done(run.key):  # finished by another worker between the check and the claim
                store.release(run.key)
                continue
            return run, True
    return None, left
