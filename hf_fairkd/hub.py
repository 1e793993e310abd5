"""Hub I/O: push an output folder in one atomic commit, and read subgroup metrics back.

A push never modifies the local folder and never reveals the token: every error message is scrubbed of
it, and errors are re-raised without the original exception attached (that may carry request headers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_IGNORE_PATTERNS", "HubPushError", "load_subgroup_metrics", "push_output_dir"]

logger = logging.getLogger(__name__)

# Training leftovers that do not belong in the model repo (Trainer checkpoints, TensorBoard runs, temporary
# files of io_utils, and the teacher / baseline models that recipes save next to the student).
DEFAULT_IGNORE_PATTERNS = ["checkpoint-*", "runs/*", "*.tmp", "teacher/*", "baseline/*", ".git/*", ".cache/*"]
_LOGIN_HINT = "run `hf auth login`, or pass --hub_token / set the HF_TOKEN environment variable"
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{6,}")


class HubPushError(RuntimeError):
    """A push to the Hub failed; the message names the repo and the fix, and never contains the token.

    Attributes: ``repo_id``, ``status_code`` (HTTP status or None), ``transient`` (a retry may succeed).
    """

    def __init__(
        self, message: str, *, repo_id: str, status_code: int | None = None, transient: bool = False
    ):
        super().__init__(message)
        self.repo_id, self.status_code, self.transient = repo_id, status_code, transient


def _scrub(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "<token>")
    return _TOKEN_LIKE.sub("hf_<redacted>", text)


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _is_transient(err: BaseException) -> bool:
    """Server errors, rate limits and dropped/refused connections: retrying a whole commit is safe."""
    import httpx2

    status = _status(err)
    if status is not None:
        return status >= 500 or status == 429
    return isinstance(err, httpx2.TransportError | ConnectionError | TimeoutError)


def _server_message(err: BaseException) -> str:
    message = getattr(err, "server_message", None)
    if not message:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        message = lines[-1] if lines else type(err).__name__
    return message


def _explain(err: BaseException, repo_id: str, folder: Path, token: str, attempts: int) -> HubPushError:
    """Turn any failure into a HubPushError whose message says what happened and how to fix it."""
    from huggingface_hub.errors import HFValidationError, LocalTokenNotFoundError, RepositoryNotFoundError

    status = _status(err)
    detail = _scrub(_server_message(err), token)
    if isinstance(err, LocalTokenNotFoundError):
        message = f"No Hugging Face token found to push to {repo_id!r}: {_LOGIN_HINT}."
    elif isinstance(err, HFValidationError) or status in (400, 422):
        message = (
            f"The Hub refused the repository name {repo_id!r}: {detail} Use 'namespace/name' with letters, "
            "digits, '-', '_' or '.' (at most 96 characters, no '--' or '..'), e.g. 'your-name/vit-kd-cifar10-lt'."
        )
    elif status in (401, 403):
        message = (
            f"The Hub rejected the token (HTTP {status}) when pushing to {repo_id!r}: the token is invalid, expired "
            f"or lacks write access to the namespace. Use a token with 'write' permission: {_LOGIN_HINT}."
        )
    elif isinstance(err, RepositoryNotFoundError) or status == 404:
        message = (
            f"Repository {repo_id!r} was not found or is not writable with this token (HTTP {status}); check "
            f"the namespace (your user name or an organisation you can write to). {_LOGIN_HINT[0].upper()}{_LOGIN_HINT[1:]}."
        )
    elif _is_transient(err):
        what = f"HTTP {status}" if status else f"connection error ({type(err).__name__})"
        message = (
            f"Pushing to {repo_id!r} failed after {attempts} attempt(s): {what}: {detail} The commit is atomic, so "
            f"the repo holds either all of this push or none of it, and the local output at {folder} is intact: "
            "re-run the push (hf_fairkd.hub.push_output_dir) when the Hub is reachable."
        )
    else:
        message = (
            f"Pushing {folder} to {repo_id!r} failed ({type(err).__name__}: {detail}). The local output is "
            "intact; fix the cause above and re-run the push."
        )
    return HubPushError(
        _scrub(message, token), repo_id=repo_id, status_code=status, transient=_is_transient(err)
    )


def _with_retries(call, *, retries: int, backoff: float, repo_id: str, token: str):
    """Run ``call()``; on a transient error retry up to ``retries`` times with exponential backoff."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - classified right below
            if attempt == retries or not _is_transient(err):
                with contextlib.suppress(AttributeError):
                    err.hf_fairkd_attempts = attempt + 1
                raise
            delay = backoff * 2**attempt
            logger.warning(
                "Push to %s hit a transient error (%s); retrying in %.1fs (%d/%d).",
                repo_id,
                _scrub(_server_message(err), token),
                delay,
                attempt + 1,
                retries,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _files_to_push(folder: Path, allow_patterns, ignore_patterns) -> list[str]:
    from huggingface_hub.utils import filter_repo_objects

    relative = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return list(filter_repo_objects(relative, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))


def push_output_dir(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload hf-fairkd distilled student (weights, card, plot, subgroup metrics)",
    allow_patterns: list[str] | str | None = None,
    ignore_patterns: list[str] | str | None = None,
    retries: int = 2,
    backoff: float = 1.0,
):
    """Create ``repo_id`` if needed and upload ``folder`` in ONE commit; returns huggingface_hub's CommitInfo.

    ``ignore_patterns`` defaults to :data:`DEFAULT_IGNORE_PATTERNS` (checkpoints, runs, temp files, teacher
    and baseline sub-folders). Transient failures (5xx, 429, dropped connections) are retried ``retries``
    times. Every failure raises :class:`HubPushError` with a scrubbed, actionable message.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; pass the output_dir the recipe saved the model to.")
    if ignore_patterns is None:
        ignore_patterns = list(DEFAULT_IGNORE_PATTERNS)
    files = _files_to_push(root, allow_patterns, ignore_patterns)
    if not files:
        raise ValueError(
            f"Nothing to push from {root} with allow={allow_patterns} ignore={ignore_patterns}; check the patterns."
        )
    token = token or get_token()
    if not token:
        raise HubPushError(
            f"No Hugging Face token found to push to {repo_id!r}: {_LOGIN_HINT}.", repo_id=repo_id
        )

    api = HfApi(token=token, library_name="hf_fairkd")
    retry = {"retries": max(int(retries), 0), "backoff": backoff, "repo_id": repo_id, "token": token}
    failure = None
    try:
        _with_retries(lambda: api.create_repo(repo_id, private=private, exist_ok=True), **retry)
        if revision not in (None, "main"):
            _with_retries(lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), **retry)

        def commit():
            # Fresh operations per attempt: the client stores upload state on them. If a dropped response
            # hid a commit that did land, the retry finds every file unchanged and makes no empty commit.
            operations = [
                CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(root / rel)) for rel in files
            ]
            return api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision)

        return _with_retries(commit, **retry)
    except Exception as err:  # noqa: BLE001 - every failure becomes one clear HubPushError
        failure = _explain(err, repo_id, root, token, getattr(err, "hf_fairkd_attempts", 1))
    # Raised outside the except block so the original exception (which may hold headers) is not chained.
    raise failure


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text("utf-8"))


def _from_card(path: Path, where: str) -> dict:
    from huggingface_hub import ModelCard

    from hf_fairkd.cards import CARD_BLOCK_KEY, METRICS_FILENAME, expand_card_block

    block = ModelCard.load(path).data.get(CARD_BLOCK_KEY)
    if not isinstance(block, dict) or "class_names" not in block:
        raise ValueError(
            f"{where} has neither {METRICS_FILENAME} nor a README.md card with an '{CARD_BLOCK_KEY}' block; "
            "write them with hf_fairkd.cards.save_card_and_metrics and push with hf_fairkd.hub.push_output_dir."
        )
    return expand_card_block(block)


def load_subgroup_metrics(
    repo_id_or_path: str | os.PathLike, revision: str | None = None, token: str | None = None
) -> dict[str, Any]:
    """Subgroup metrics of a local output folder (or file) or of a Hub model repo.

    Reads subgroup_metrics.json (NaN stored as None). If it is absent, rebuilds from the README card's
    ``hf_fairkd`` block what the card holds (per-class accuracies, scalars, train counts, settings),
    marked ``"recovered_from": "model_card"``.
    """
    from hf_fairkd.cards import CARD_FILENAME, METRICS_FILENAME

    path = Path(repo_id_or_path)
    if path.exists():
        if path.is_file():
            return _read_json(path) if path.suffix == ".json" else _from_card(path, str(path))
        if (path / METRICS_FILENAME).is_file():
            return _read_json(path / METRICS_FILENAME)
        if (path / CARD_FILENAME).is_file():
            return _from_card(path / CARD_FILENAME, str(path))
        raise FileNotFoundError(
            f"{path} has neither {METRICS_FILENAME} nor {CARD_FILENAME}; point to the recipe's output folder "
            "or write them with hf_fairkd.cards.save_card_and_metrics."
        )

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError, RemoteEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    name = str(repo_id_or_path)
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise FileNotFoundError(
            f"{name!r} is neither an existing local path nor a Hub repo id like 'user/model'."
        ) from None
    where = f"Hub repo {name!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        return _read_json(Path(hf_hub_download(name, METRICS_FILENAME, revision=revision, token=token)))
    except RemoteEntryNotFoundError:
        pass  # older pushes or hand-made repos: fall back to the card
    try:
        card_path = hf_hub_download(name, CARD_FILENAME, revision=revision, token=token)
    except RemoteEntryNotFoundError:
        raise FileNotFoundError(
            f"{where} has neither {METRICS_FILENAME} nor {CARD_FILENAME}; push the recipe's output folder "
            "with hf_fairkd.hub.push_output_dir."
        ) from None
    return _from_card(Path(card_path), where)
