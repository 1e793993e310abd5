"""Errors of Hub calls: what went wrong and how to fix it, in a message that never contains the token.

Every message is scrubbed of the token (and anything shaped like one); callers re-raise the resulting
:class:`HubPushError` outside their ``except`` block, so the client error (which may hold request headers)
is not chained. Nothing here imports the HTTP library by name (httpx2 under huggingface_hub 2.x, httpx
under 1.x): transport errors are recognised by class name.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

__all__ = ["HubPushError", "LOGIN_HINT", "hub_error", "push_command"]

LOGIN_HINT = "run `hf auth login`, or pass --hub_token / set the HF_TOKEN environment variable"
_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{16,}")  # real tokens: hf_ + 34 characters; not "hf_fairkd"
# httpx / httpx2 classes meaning "no usable answer came back" (refused, dropped, timed out, bad framing).
_TRANSPORT_CLASSES = {"TransportError", "NetworkError", "TimeoutException", "ProtocolError", "ProxyError"}
# The command line of hf_fairkd.results.hub (see its main()).
CLI = "python -m hf_fairkd.results.hub"


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
    command = f"{CLI} push {shlex.quote(str(folder))} {shlex.quote(repo_id)}"
    return command + (f" --revision {shlex.quote(revision)}" if revision not in (None, "main") else "")


def _cause(err: BaseException, repo_id: str, token: str | None, attempts: int) -> str:
    """What went wrong and how to fix it, for any failure of a Hub call about ``repo_id``."""
    from huggingface_hub.errors import HFValidationError, LocalTokenNotFoundError, RepositoryNotFoundError

    status = _status(err)
    detail = _scrub(_server_message(err), token)
    if isinstance(err, LocalTokenNotFoundError):
        return f"No Hugging Face token found to push to {repo_id!r}: {LOGIN_HINT}."
    if isinstance(err, HFValidationError) or status in (400, 422):
        return (
            f"The Hub refused the repository name {repo_id!r}: {detail} Use 'namespace/name' with letters, "
            "digits, '-', '_' or '.' (at most 96 characters, no '--' or '..'), e.g. 'your-name/vit-kd-cifar10-lt'."
        )
    if status in (401, 403):
        return (
            f"The Hub at {_endpoint()} rejected the token (HTTP {status}) when pushing to {repo_id!r}: the token "
            f"is invalid, expired or lacks write access to the namespace. Use a token with 'write' permission: "
            f"{LOGIN_HINT}."
        )
    if isinstance(err, RepositoryNotFoundError) or status == 404:
        return (
            f"Repository {repo_id!r} was not found or is not writable with this token (HTTP {status}); check "
            f"the namespace (your user name or an organisation you can write to). {LOGIN_HINT[0].upper()}{LOGIN_HINT[1:]}."
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
    return hub_error(err, repo_id, token, attempts, tail)


def hub_error(err: BaseException, repo_id: str, token: str | None, attempts: int, tail: str) -> HubPushError:
    """A scrubbed HubPushError for ``err``: the cause, the fix, then ``tail`` (what happened to the outputs)."""
    message = _scrub(f"{_cause(err, repo_id, token, attempts)} {tail}", token)
    return HubPushError(message, repo_id=repo_id, status_code=_status(err), transient=_is_transient(err))
