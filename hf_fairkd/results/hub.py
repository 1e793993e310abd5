"""Hub I/O: check the Hub before training, push an output folder in one atomic commit, read records back.

A push takes a folder (whatever wrote it) and never modifies it, and never reveals the token: every error
message is scrubbed of it (:mod:`hf_fairkd.results.hub_errors`), and errors are re-raised without the
original exception attached (that may carry request headers). Reading a record back needs only the card's
YAML block (:mod:`hf_fairkd.results.card_block`), never the card renderer or the plot.

Push a finished output folder later (the token comes from HF_TOKEN or `hf auth login`):

    python -m hf_fairkd.results.hub push OUTPUT_DIR user/repo [--revision BRANCH] [--private]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from hf_fairkd.results.hub_errors import (
    CLI,
    LOGIN_HINT,
    HubPushError,
    _endpoint,
    _explain,
    _is_transient,
    _scrub,
    _server_message,
    hub_error,
    push_command,
)
from hf_fairkd.results.schema import CARD_FILE, METRICS_FILE

__all__ = [
    "DEFAULT_IGNORE_PATTERNS",
    "HubPushError",
    "finished_run_push",
    "is_repo_id",
    "load_subgroup_metrics",
    "output_repo_id",
    "preflight",
    "push_command",
    "push_output_dir",
    "recorded_objective",
]

logger = logging.getLogger(__name__)

# Training leftovers that do not belong in the model repo (Trainer checkpoints, TensorBoard runs, temporary
# files of io_utils, and the teacher / baseline models that recipes save next to the student).
DEFAULT_IGNORE_PATTERNS = ["checkpoint-*", "runs/*", "*.tmp", "teacher/*", "baseline/*", ".git/*", ".cache/*"]


def is_repo_id(name: object, *, namespaced: bool = False) -> bool:
    """Whether ``name`` is a valid Hub repo id, by the Hub's own rule (``huggingface_hub.utils.validate_repo_id``:
    letters, digits, '-', '_', '.', at most 96 characters, no '--' or '..'); ``namespaced`` also requires
    the 'owner/name' form. The package's one repo-id check."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(name, str) or not name or (namespaced and name.count("/") != 1):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def model_location_problem(name_or_path: str) -> str | None:
    """What is wrong with a model's local location, in words (None: a folder with a config.json, or a name that can
    only be a Hub id, for the Hub client to judge): no such folder, a file, or a folder without a saved model."""
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            return None
        held = sorted(os.listdir(path))
        shown = ", ".join(held[:8]) + (", ..." if len(held) > 8 else "") if held else "nothing"
        return f"the folder {name_or_path!r} holds no saved model (no config.json; it holds {shown})"
    if os.path.exists(path):
        return f"{name_or_path!r} is a file, not a folder holding a saved model"
    if name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.replace("/", "") or not is_repo_id(
        name_or_path
    ):
        return f"there is no folder {name_or_path!r} (and it is not a Hub id, which reads owner/name)"
    return None


def output_repo_id(hub_model_id: str | None, output_dir: str | os.PathLike) -> str:
    """The repo a run publishes to: ``hub_model_id``, else the output folder's name (as the Trainer does)."""
    return hub_model_id or os.path.basename(os.path.abspath(output_dir))


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
            f"No Hugging Face token found to push to {repo_id!r}: {LOGIN_HINT}.", repo_id=repo_id
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
            f"No Hugging Face token found to push to {repo_id!r} on {endpoint}: {LOGIN_HINT}. {tail}",
            repo_id=repo_id,
        )
    api = HfApi(endpoint=endpoint, token=token, library_name="hf_fairkd")
    try:
        api.whoami()
        return api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    except Exception as err:  # noqa: BLE001 - every failure becomes one clear HubPushError
        failure = hub_error(err, repo_id, token, 1, tail)
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
    """`python -m hf_fairkd.results.hub push OUTPUT_DIR REPO_ID`: publish a finished output folder in one commit."""
    import argparse

    parser = argparse.ArgumentParser(prog=CLI, description=main.__doc__)
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

    from hf_fairkd.results.card_block import CARD_BLOCK_KEY, expand_card_block

    block = ModelCard.load(path).data.get(CARD_BLOCK_KEY)
    if not isinstance(block, dict) or "class_names" not in block:
        raise ValueError(
            f"{where} has neither {METRICS_FILE} nor a README.md card with an '{CARD_BLOCK_KEY}' block; "
            "write them with hf_fairkd.results.save_card_and_metrics and push with hf_fairkd.results.push_output_dir."
        )
    return expand_card_block(block)


def load_subgroup_metrics(
    repo_id_or_path: str | os.PathLike, revision: str | None = None, token: str | None = None
) -> dict[str, Any]:
    """Subgroup metrics of a local output folder (or file) or of a Hub model repo.

    Reads subgroup_metrics.json (NaN stored as None). If it is absent, rebuilds from the README card's
    ``hf_fairkd`` block what the card holds (per-class accuracies, scalars, train counts, settings, and the
    groups' accuracies, intervals and student - baseline rows), marked ``"recovered_from": "model_card"``.
    """
    path = Path(repo_id_or_path)
    if path.exists():
        if path.is_file():
            return _read_json(path) if path.suffix == ".json" else _from_card(path, str(path))
        if (path / METRICS_FILE).is_file():
            return _read_json(path / METRICS_FILE)
        if (path / CARD_FILE).is_file():
            return _from_card(path / CARD_FILE, str(path))
        raise FileNotFoundError(
            f"{path} has neither {METRICS_FILE} nor {CARD_FILE}; point to the recipe's output folder "
            "or write them with hf_fairkd.results.save_card_and_metrics."
        )

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    name = str(repo_id_or_path)
    if not is_repo_id(name):
        raise FileNotFoundError(
            f"{name!r} is neither an existing local path nor a Hub repo id like 'user/model'."
        )
    where = f"Hub repo {name!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        return _read_json(Path(hf_hub_download(name, METRICS_FILE, revision=revision, token=token)))
    except RemoteEntryNotFoundError:
        pass  # older pushes or hand-made repos: fall back to the card
    try:
        card_path = hf_hub_download(name, CARD_FILE, revision=revision, token=token)
    except RemoteEntryNotFoundError:
        raise FileNotFoundError(
            f"{where} has neither {METRICS_FILE} nor {CARD_FILE}; push the recipe's output folder "
            "with hf_fairkd.results.push_output_dir."
        ) from None
    return _from_card(Path(card_path), where)


def recorded_objective(name_or_path: str) -> str | None:
    """The objective the model at ``name_or_path`` (a folder or a Hub repo) was trained with, from its own record
    (``subgroup_metrics.json`` or its card's block, as written for every model trained by hf-fairkd), or the
    ``stage_complete.json`` a recipe writes into its teacher/ and baseline/ stage folders; None when it has none."""
    stage_marker = os.path.join(os.path.expanduser(name_or_path), "stage_complete.json")
    if os.path.isfile(stage_marker):
        try:
            with open(stage_marker, encoding="utf-8") as f:
                return json.load(f).get("objective")
        except (OSError, ValueError, AttributeError):
            pass  # a damaged marker: fall back to the record
    try:
        record = load_subgroup_metrics(name_or_path)
    except Exception as err:  # noqa: BLE001 - a model without a readable record: its objective is not known
        logger.info(
            f"No hf-fairkd record for {name_or_path} ({type(err).__name__}): its objective is not known."
        )
        return None
    return (record.get("settings") or {}).get("objective")


if __name__ == "__main__":
    sys.exit(main())
