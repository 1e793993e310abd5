"""push_output_dir against the local Hub: one atomic commit, read-back, fault handling, token hygiene."""

from __future__ import annotations

import hashlib
import logging
import socket
import sys
import traceback
import uuid
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants
from transformers import (
    AutoModelForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from hf_fairkd.metrics import report_to_jsonable
from hf_fairkd.results import HubPushError, load_subgroup_metrics, push_output_dir, save_card_and_metrics
from hf_fairkd.results import hub as hub_lib

try:  # same import dance as conftest.py: `tests` is a namespace package from the repo root
    from tests.test_cards import CORRECT, SUPPORT, make_metrics, table_after
except ImportError:
    from test_cards import CORRECT, SUPPORT, make_metrics, table_after

NAMES = ["cat", "dog", "bird"]
EXPECTED_FILES = {
    ".eval_results/hf_fairkd.yaml",
    "README.md",
    "config.json",
    "model.safetensors",
    "per_class_accuracy.png",
    "preprocessor_config.json",
    "subgroup_metrics.json",
}


def _client_http_module():
    """The HTTP library huggingface_hub itself uses: httpx2 with huggingface_hub 2.x, httpx with 1.x."""
    from huggingface_hub.utils import _http

    return getattr(_http, "httpx2", None) or _http.httpx


def _closed_endpoint() -> str:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _repo_id(hub, stem: str) -> str:
    return f"{hub.user}/{stem}-{uuid.uuid4().hex[:8]}"  # the server is shared by the whole session


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _metrics() -> dict:
    return make_metrics(
        names=NAMES, correct={k: v[:3] for k, v in CORRECT.items()}, train_counts=[300, 40, 8]
    )


@pytest.fixture
def output_dir(tmp_path) -> Path:
    """A recipe-like output folder: tiny ViT + image processor + card/plot/metrics, plus training leftovers."""
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=8,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        id2label=dict(enumerate(NAMES)),
        label2id={n: i for i, n in enumerate(NAMES)},
    )
    out = tmp_path / "out"
    ViTForImageClassification(config).eval().save_pretrained(out)
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(out)
    save_card_and_metrics(out, _metrics(), model_id="test-user/tiny")
    for leftover in (
        "checkpoint-10/model.safetensors",
        "runs/events.out",
        "teacher/config.json",
        "notes.tmp",
    ):
        (out / leftover).parent.mkdir(parents=True, exist_ok=True)
        (out / leftover).write_text("not for the Hub")
    return out


def test_push_is_one_commit_and_reads_back(hub_server, hub_token, output_dir):
    repo_id = _repo_id(hub_server, "kd")
    before = _tree_hashes(output_dir)
    info = push_output_dir(output_dir, repo_id, token=hub_token)
    history = hub_server.commits(repo_id)
    assert len(history) == 2  # the Hub's initial commit + exactly one commit with everything
    assert info.oid == history[0].oid
    remote = hub_server.files(repo_id)
    assert set(remote) - {".gitattributes"} == EXPECTED_FILES  # leftovers are not pushed
    assert all(remote[p] == (output_dir / p).read_bytes() for p in EXPECTED_FILES)
    assert _tree_hashes(output_dir) == before  # the push never touches the local folder

    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    local = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    hub = AutoModelForImageClassification.from_pretrained(repo_id).eval()
    with torch.no_grad():
        torch.testing.assert_close(hub(pixel_values=pixels).logits, local(pixel_values=pixels).logits)
    assert hub.config.id2label == dict(enumerate(NAMES))

    card = ModelCard.load(repo_id)
    rows = table_after(card.text, "### Per class")[1:]
    assert [row[0] for row in rows] == NAMES
    assert [row[5] for row in rows] == [f"{k / SUPPORT:.3f}" for k in CORRECT["student"][:3]]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["worst_class_accuracy"] == pytest.approx(min(CORRECT["student"][:3]) / SUPPORT)
    assert load_subgroup_metrics(repo_id) == report_to_jsonable(_metrics())

    # A second push with changed results is a new commit on top, and readers see the new numbers.
    changed = _metrics()
    changed["settings"]["seed"] = 99
    save_card_and_metrics(output_dir, changed, model_id=repo_id)
    second = push_output_dir(output_dir, repo_id, token=hub_token, commit_message="Re-evaluate")
    history = hub_server.commits(repo_id)
    assert len(history) == 3 and history[0].oid == second.oid and history[0].title == "Re-evaluate"
    assert load_subgroup_metrics(repo_id)["settings"]["seed"] == 99
    assert load_subgroup_metrics(repo_id, revision=info.oid)["settings"]["seed"] == 7  # old revision kept
    # Pushing the same folder again changes nothing, so the client makes no empty commit (safe re-runs).
    assert push_output_dir(output_dir, repo_id, token=hub_token).oid == second.oid
    assert len(hub_server.commits(repo_id)) == 3


def test_metrics_recovered_from_card_when_file_is_absent(hub_server, hub_token, output_dir):
    repo_id = _repo_id(hub_server, "cardonly")
    push_output_dir(output_dir, repo_id, token=hub_token, ignore_patterns=["subgroup_metrics.json", "*.tmp"])
    assert "subgroup_metrics.json" not in hub_server.files(repo_id)
    recovered = load_subgroup_metrics(repo_id)
    assert recovered["recovered_from"] == "model_card" and recovered["class_names"] == NAMES
    accuracies = [row["accuracy"] for row in recovered["student"]["per_class"]]
    assert accuracies == pytest.approx([k / SUPPORT for k in CORRECT["student"][:3]])


def test_repo_without_results_gives_clear_error(hub_server, hub_token):
    repo_id = _repo_id(hub_server, "empty")
    hub_server.seed(repo_id, {"config.json": b"{}"})
    with pytest.raises(FileNotFoundError, match="neither subgroup_metrics.json nor README.md"):
        load_subgroup_metrics(repo_id)


def _assert_failed_push_changed_nothing(hub_server, repo_id, output_dir, before_local, before_head):
    assert _tree_hashes(output_dir) == before_local
    assert hub_server.commits(repo_id)[0].oid == before_head


@pytest.mark.parametrize("fault", ["http_500", "dropped_connection"])
def test_failed_commit_is_reported_and_changes_nothing(hub_server, hub_token, output_dir, fault):
    repo_id = _repo_id(hub_server, fault.replace("_", "-"))
    push_output_dir(output_dir, repo_id, token=hub_token)
    save_card_and_metrics(output_dir, _metrics(), model_id=repo_id)  # new content, so a commit is needed
    before_local, before_head = _tree_hashes(output_dir), hub_server.commits(repo_id)[0].oid
    before_files = hub_server.files(repo_id)
    if fault == "http_500":
        hub_server.fail_next_commit(500)
    else:
        hub_server.drop_connection_on_next_commit()
    with pytest.raises(HubPushError) as info:
        push_output_dir(output_dir, repo_id, token=hub_token, retries=0)
    message = str(info.value)
    assert repo_id in message and str(output_dir) in message and "intact" in message and "re-run" in message
    assert ("HTTP 500" in message) if fault == "http_500" else ("connection error" in message)
    assert info.value.transient and info.value.__cause__ is None
    _assert_failed_push_changed_nothing(hub_server, repo_id, output_dir, before_local, before_head)
    assert hub_server.files(repo_id) == before_files
    # The Hub is back: the same call now succeeds with exactly one more commit.
    push_output_dir(output_dir, repo_id, token=hub_token, retries=0)
    assert hub_server.commits(repo_id)[1].oid == before_head
    assert hub_server.files(repo_id)["README.md"] == (output_dir / "README.md").read_bytes()


@pytest.mark.parametrize("fault", ["http_503", "dropped_connection"])
def test_transient_failures_are_retried(hub_server, hub_token, output_dir, fault):
    repo_id = _repo_id(hub_server, "retry")
    if fault == "http_503":
        hub_server.fail_next_commit(503)
    else:
        hub_server.drop_connection_on_next_commit()
    push_output_dir(output_dir, repo_id, token=hub_token, retries=1, backoff=0.0)
    assert len(hub_server.commits(repo_id)) == 2  # the retried commit landed exactly once
    assert set(hub_server.files(repo_id)) - {".gitattributes"} == EXPECTED_FILES


def test_wrong_token_is_clear_and_never_leaks(hub_server, output_dir, caplog):
    secret = "hf_wrongSecretToken987654321"
    repo_id = _repo_id(hub_server, "badtoken")
    before = _tree_hashes(output_dir)
    with caplog.at_level(logging.DEBUG), pytest.raises(HubPushError) as info:
        push_output_dir(output_dir, repo_id, token=secret)
    err = info.value
    assert "rejected the token" in str(err) and "hf auth login" in str(err) and repo_id in str(err)
    assert err.status_code == 401 and not err.transient
    rendered = "".join(traceback.format_exception(err)) + repr(err) + caplog.text
    assert secret not in rendered and "wrongSecret" not in rendered
    assert err.__cause__ is None and err.__context__ is None  # the raw client error is not chained
    assert all(secret not in p.read_text(errors="ignore") for p in output_dir.rglob("*") if p.is_file())
    assert _tree_hashes(output_dir) == before
    assert ("model", repo_id) not in hub_server.repos  # nothing was created


def test_token_is_scrubbed_from_client_error_text(hub_server, hub_token, output_dir, monkeypatch, caplog):
    """Even when the underlying error echoes the token (e.g. a proxy quoting headers), it never surfaces."""
    from huggingface_hub import HfApi

    def leaky_commit(self, *args, **kwargs):
        raise _client_http_module().ConnectError(
            f"proxy refused: Authorization: Bearer {hub_token} (tunnel closed)"
        )

    monkeypatch.setattr(HfApi, "create_commit", leaky_commit)
    with caplog.at_level(logging.DEBUG), pytest.raises(HubPushError) as info:
        push_output_dir(output_dir, _repo_id(hub_server, "leak"), token=hub_token, retries=2, backoff=0.0)
    rendered = "".join(traceback.format_exception(info.value)) + caplog.text
    assert hub_token not in rendered
    assert "<token>" in str(info.value) and "after 3 attempt(s)" in str(info.value)
    assert caplog.text.count("retrying") == 2 and "<token>" in caplog.text


def test_missing_token_says_how_to_log_in(hub_server, output_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(HubPushError, match="hf auth login.*HF_TOKEN"):
        push_output_dir(output_dir, _repo_id(hub_server, "notoken"))


def test_refused_repo_name_quotes_the_server(hub_server, hub_token, output_dir):
    hub_server.reject_repo_names.add("forbidden-name")
    with pytest.raises(HubPushError) as info:
        push_output_dir(output_dir, f"{hub_server.user}/forbidden-name", token=hub_token)
    message = str(info.value)
    assert "refused the repository name" in message and "this name is not allowed on the Hub" in message
    assert info.value.status_code == 400
    # Names the client itself rejects get the same kind of answer, before any request.
    with pytest.raises(HubPushError, match="refused the repository name 'bad--name'"):
        push_output_dir(output_dir, "bad--name", token=hub_token)


def test_folder_problems_fail_before_any_request(hub_server, hub_token, tmp_path):
    commits = hub_server.stats["commit"]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        push_output_dir(tmp_path / "missing", "test-user/x", token=hub_token)
    (tmp_path / "only-tmp").mkdir()
    (tmp_path / "only-tmp" / "a.tmp").write_text("x")
    with pytest.raises(ValueError, match="Nothing to push"):
        push_output_dir(tmp_path / "only-tmp", "test-user/x", token=hub_token)
    assert hub_server.stats["commit"] == commits


# ------------------------------------------------------------------------------------ preflight
def test_preflight_creates_the_repo_and_accepts_an_existing_one(hub_server, hub_token, caplog):
    repo_id = _repo_id(hub_server, "preflight")
    with caplog.at_level(logging.DEBUG):
        assert hub_lib.preflight(repo_id, hub_token) == repo_id
        assert hub_lib.preflight(repo_id, hub_token) == repo_id  # a second run, or a repo made by hand: fine
    assert [c.title for c in HfApi().list_repo_commits(repo_id)] == ["initial commit"]  # nothing published
    bare = f"bare-{uuid.uuid4().hex[:8]}"
    assert hub_lib.preflight(bare, hub_token) == f"{hub_server.user}/{bare}"
    assert hub_token not in caplog.text


def test_preflight_refused_token_names_the_endpoint_and_never_leaks(hub_server, caplog):
    secret, repo_id = "hf_preflightRefused123456789", _repo_id(hub_server, "preflight-401")
    with caplog.at_level(logging.DEBUG), pytest.raises(HubPushError) as info:
        hub_lib.preflight(repo_id, secret)
    message = str(info.value)
    assert "rejected the token (HTTP 401)" in message and "hf auth login" in message
    assert hub_server.url in message and repo_id in message and "--push_to_hub" in message
    assert info.value.status_code == 401 and not info.value.transient and info.value.__context__ is None
    assert secret not in "".join(traceback.format_exception(info.value)) + caplog.text
    assert ("model", repo_id) not in hub_server.repos


def test_preflight_unreachable_hub_names_the_endpoint(hub_server, hub_token, monkeypatch):
    endpoint = _closed_endpoint()
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    repo_id = _repo_id(hub_server, "preflight-down")
    with pytest.raises(HubPushError) as info:
        hub_lib.preflight(repo_id, hub_token)
    message = str(info.value)
    assert f"The Hub at {endpoint} could not be reached" in message and "HF_ENDPOINT" in message
    assert repo_id in message and info.value.transient and hub_token not in message


def test_preflight_without_token_says_how_to_log_in(hub_server, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(HubPushError, match="No Hugging Face token.*hf auth login"):
        hub_lib.preflight(_repo_id(hub_server, "preflight-notoken"))


# ------------------------------------------------------------------------------------ HTTP library
def _fake_http_library(module: str) -> dict[str, type]:
    """The transport branch of httpx's exception tree, defined under ``module`` (httpx or httpx2)."""
    classes: dict[str, type] = {}

    def make(name: str, base: type) -> type:
        classes[name] = type(name, (base,), {"__module__": f"{module}._exceptions"})
        return classes[name]

    request = make("RequestError", make("HTTPError", Exception))
    transport = make("TransportError", request)
    make("ConnectError", make("NetworkError", transport))
    make("ReadTimeout", make("TimeoutException", transport))
    make("RemoteProtocolError", make("ProtocolError", transport))
    make("DecodingError", request)  # a request error, but not a transport one
    return classes


@pytest.mark.parametrize("library, absent", [("httpx", "httpx2"), ("httpx2", "httpx")])
def test_transport_errors_are_recognised_with_either_http_library(
    hub_server, hub_token, output_dir, monkeypatch, library, absent
):
    """huggingface_hub 1.x raises httpx errors and 2.x httpx2 ones; hub.py must not import either by name."""
    monkeypatch.setitem(sys.modules, absent, None)  # `import <absent>` fails, as where it is not installed
    fake = _fake_http_library(library)
    for name in ("ConnectError", "ReadTimeout", "RemoteProtocolError", "TransportError"):
        assert hub_lib._is_transient(fake[name]("boom")), name
    assert not hub_lib._is_transient(fake["DecodingError"]("bad body"))
    unrelated = type("TransportError", (Exception,), {"__module__": "some_other_library.errors"})
    assert not hub_lib._is_transient(unrelated("not an HTTP transport error"))

    attempts = []

    def refused(self, *args, **kwargs):
        attempts.append(1)
        raise fake["ConnectError"]("[Errno 111] Connection refused")

    monkeypatch.setattr(HfApi, "create_commit", refused)
    with pytest.raises(HubPushError) as info:
        push_output_dir(
            output_dir, _repo_id(hub_server, f"fake-{library}"), token=hub_token, retries=1, backoff=0
        )
    assert len(attempts) == 2 and info.value.transient
    assert "connection error (ConnectError)" in str(info.value) and "after 2 attempt(s)" in str(info.value)
