"""Hub I/O: check the Hub before training, push an output folder in one atomic commit, read metrics back.

A push never modifies the local folder and never reveals the token: every error message is scrubbed of
it, and errors are re-raised without the original exception attached (that may carry request headers).
Nothing here imports the HTTP library by name (httpx2 under huggingface_hub 2.x, httpx under 1.x).

Push a finished output folder later (the token comes from HF_TOKEN or `hf auth login`):

    python -m hf_fairkd.hub push OUTPUT_DIR user/repo [--revision BRANCH] [--private]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_IGNORE_PATTERNS",
    "HubPushError",
    "finished_run_push",
    "load_subgroup_metrics",
    "preflight",
    "push_command",
    "push_output_dir",
]

logger = logging.getLogger(__name__)

# Training leftovers that do not belong in the model repo (Trainer checkpoints, TensorBoard runs, temporary
# files of io_utils, and the teacher / baseline models that recipes save next to the student).
DEFAULT_IGNORE_PATTERNS = ["checkpoint-*", "runs/*", "*.tmp", "teacher/*", "baseline/*", ".git/*", ".cache/*"]
_LOGIN_HINT = "run `hf auth login`, or pass --hub_token / set the HF_TOKEN environment variable"
_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{16,}")  # real tokens: hf_ + 34 characters; not "hf_fairkd"
# httpx / httpx2 classes meaning "no usable answer came back" (refused, dropped, timed out, bad framing).
_TRANSPORT_CLASSES = {"TransportError", "NetworkError", "TimeoutException", "ProtocolError", "ProxyError"}


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


def _is_transport_error(err: BaseException) -> bool:
    """A connection-level failure, recognised by the httpx / httpx2 class names in the exception's MRO."""
    if isinstance(err, ConnectionError | TimeoutError):
        return True
    return any(
        cls.__name__ in _TRANSPORT_CLASSES and cls.__module__.split(".")[0].startswith("httpx")
        for cls in type(err).__mro__
    )


def _is_transient(err: BaseException) -> bool:
    """Server errors, rate limits and dropped/refused connections: retrying a whole commit is safe."""
    status = _status(err)
    if status is not None:
        return status >= 500 or status == 429
    return _is_transport_error(err)


def _server_message(err: BaseException) -> str:
    message = getattr(err, "server_message", None)
    if not message:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        message = lines[-1] if lines else type(err).__name__
    return message


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def push_command(folder: str | os.PathLike, repo_id: str, revision: str | None = None) -> str:
    """The shell command that pushes ``folder`` to ``repo_id`` later (the token comes from the environment)."""
    command = f"python -m hf_fairkd.hub push {shlex.quote(str(folder))} {shlex.quote(repo_id)}"
    return command + (f" --revision {shlex.quote(revision)}" if revision not in (None, "main") else "")


def _cause(err: BaseException, repo_id: str, token: str, attempts: int) -> str:
    """What went wrong and how to fix it, for any failure of a Hub call about ``repo_id``."""
    from huggingface_hub.errors import HFValidationError, LocalTokenNotFoundError, RepositoryNotFoundError

    status = _status(err)
    detail = _scrub(_server_message(err), token)
    if isinstance(err, LocalTokenNotFoundError):
        return f"No Hugging Face token found to push to {repo_id!r}: {_LOGIN_HINT}."
    if isinstance(err, HFValidationError) or status in (400, 422):
        return (
            f"The Hub refused the repository name {repo_id!r}: {detail} Use 'namespace/name' with letters, "
            "digits, '-', '_' or '.' (at most 96 characters, no '--' or '..'), e.g. 'your-name/vit-kd-cifar10-lt'."
        )
    if status in (401, 403):
        return (
            f"The Hub at {_endpoint()} rejected the token (HTTP {status}) when pushing to {repo_id!r}: the token "
            f"is invalid, expired or lacks write access to the namespace. Use a token with 'write' permission: "
            f"{_LOGIN_HINT}."
        )
    if isinstance(err, RepositoryNotFoundError) or status == 404:
        return (
            f"Repository {repo_id!r} was not found or is not writable with this token (HTTP {status}); check "
            f"the namespace (your user name or an organisation you can write to). {_LOGIN_HINT[0].upper()}{_LOGIN_HINT[1:]}."
        )
    if _is_transport_error(err):
        names = {cls.__name__ for cls in type(err).__mro__}
        refused = bool(names & {"ConnectError", "ConnectTimeout", "ProxyError", "ConnectionRefusedError"})
        what = "could not be reached" if refused else "dropped the connection or did not answer"
        return (
            f"The Hub at {_endpoint()} {what} for {repo_id!r} (connection error ({type(err).__name__}) after "
            f"{attempts} attempt(s): {detail}). Check the network or proxy, and HF_ENDPOINT if you use a mirror "
            "or a local Hub."
        )
    if _is_transient(err):
        return f"Pushing to {repo_id!r} failed after {attempts} attempt(s): HTTP {status}: {detail}"
    return f"Pushing to {repo_id!r} failed ({type(err).__name__}: {detail})."


def _explain(
    err: BaseException, repo_id: str, folder: Path, token: str, attempts: int, revision: str | None = None
) -> HubPushError:
    """Turn any failure of a push into a HubPushError: the cause, the fix, and the command to push later."""
    later = f"`{push_command(folder, repo_id, revision)}`"
    if _is_transient(err):
        tail = (
            f"The commit is atomic, so the repo holds either all of this push or none of it, and the local output "
            f"at {folder} is intact: re-run the push when the Hub is reachable: {later}."
        )
    else:
        tail = f"The local output at {folder} is intact; fix the cause above and re-run the push: {later}."
    message = f"{_cause(err, repo_id, token, attempts)} {tail}"
    return HubPushError(
        _scrub(message, token), repo_id=repo_id, status_code=_status(err), transient=_is_transient(err)
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
        failure = _explain(err, repo_id, root, token, getattr(err, "hf_fairkd_attempts", 1), revision)
    # Raised outside the except block so the original exception (which may hold headers) is not chained.
    raise failure


def preflight(
    repo_id: str, token: str | None = None, private: bool | None = None, *, folder: str | None = None
) -> str:
    """Before any training: check that the Hub answers, accepts the token, and has (or now creates) ``repo_id``.

    Returns the full repo id ('namespace/name'). Raises :class:`HubPushError` naming the endpoint, the repo
    and the fix; nothing is published (a new repo holds only the Hub's initial commit).
    """
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    endpoint = _endpoint()
    tail = (
        "This was checked before any training, so nothing was trained or published. Fix it and re-run, or run "
        "without --push_to_hub (push_to_hub=False) and publish the finished output later with "
        f"`{push_command(folder or 'OUTPUT_DIR', repo_id)}`."
    )
    if not token:
        raise HubPushError(
            f"No Hugging Face token found to push to {repo_id!r} on {endpoint}: {_LOGIN_HINT}. {tail}",
            repo_id=repo_id,
        )
    api = HfApi(endpoint=endpoint, token=token, library_name="hf_fairkd")
    try:
        api.whoami()
        return api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    except Exception as err:  # noqa: BLE001 - every failure becomes one clear HubPushError
        message = _scrub(f"{_cause(err, repo_id, token, 1)} {tail}", token)
        failure = HubPushError(
            message, repo_id=repo_id, status_code=_status(err), transient=_is_transient(err)
        )
    raise failure  # outside the except block: the client error (which may hold headers) is not chained


@contextlib.contextmanager
def finished_run_push(folder: str | os.PathLike, contents: str = "the model, its card and metrics"):
    """Around the final push of a finished run: a failure says the local outputs are complete and how to
    push them later (the message of the push error already ends with the exact command)."""
    try:
        yield
    except HubPushError as err:
        failure = HubPushError(
            f"The run finished and its outputs in {folder} are complete ({contents}), but publishing them "
            f"failed. {err}",
            repo_id=err.repo_id,
            status_code=err.status_code,
            transient=err.transient,
        )
    else:
        return
    raise failure


def main(argv: list[str] | None = None) -> int:
    """`python -m hf_fairkd.hub push OUTPUT_DIR REPO_ID`: publish a finished output folder in one commit."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hf_fairkd.hub", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="push OUTPUT_DIR to REPO_ID (token: HF_TOKEN or `hf auth login`)")
    push.add_argument("output_dir")
    push.add_argument("repo_id")
    push.add_argument("--revision", default=None)
    push.add_argument("--private", action="store_true", help="make the repo private if it is created")
    args = parser.parse_args(argv)
    try:
        info = push_output_dir(
            args.output_dir, args.repo_id, revision=args.revision, private=args.private or None
        )
    except (HubPushError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Pushed {args.output_dir} to {args.repo_id}: {getattr(info, 'commit_url', info)}")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
