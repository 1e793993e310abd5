"""The local Hub answers the unmodified huggingface_hub / transformers clients like the real one."""

import os
import uuid

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants, hf_hub_download
from huggingface_hub.errors import (
    BadRequestError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import _http

# The HTTP library of the client itself: httpx2 with huggingface_hub 2.x, httpx with 1.x.
HTTP = getattr(_http, "httpx2", None) or _http.httpx
CARD = "---\nlicense: mit\ntags:\n- fairness\n---\n# Tiny model\n\nA card for the local Hub tests.\n"
WEIGHTS = bytes(range(256)) * 8 + b"\x00\xff tail"


def _repo_id(hub, stem: str) -> str:
    """A fresh repo per test: the server is shared by the whole session."""
    return f"{hub.user}/{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def api(hub_token) -> HfApi:
    return HfApi(token=hub_token)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "README.md").write_text(CARD)
    (tmp_path / "up" / "weights.bin").write_bytes(WEIGHTS)
    return tmp_path / "up"


def test_client_is_pointed_at_the_local_hub(hub_server):
    assert constants.ENDPOINT == hub_server.url
    assert hub_server.url.startswith("http://127.0.0.1:")
    assert constants.HF_HUB_DISABLE_XET
    assert os.environ.get("HF_TOKEN") is None
    assert constants.HF_HOME == os.environ["HF_HOME"] and "hf_fairkd_tests_hf_home_" in constants.HF_HOME


def test_create_repo_and_exist_ok(hub_server, api):
    repo_id = _repo_id(hub_server, "create")
    url = api.create_repo(repo_id)
    assert url.repo_id == repo_id and url == f"{hub_server.url}/{repo_id}"
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo(repo_id)  # without exist_ok a 409 is an error
    assert info.value.response.status_code == 409
    assert len(hub_server.commits(repo_id)) == 1  # only the Hub's "initial commit" (.gitattributes)
    # A bare name lands in the token owner's namespace, as on the Hub.
    bare = f"bare-{uuid.uuid4().hex[:8]}"
    assert api.create_repo(bare).repo_id == f"{hub_server.user}/{bare}"
    assert api.whoami()["name"] == hub_server.user


def test_upload_folder_is_one_commit_and_downloads_identical_bytes(hub_server, api, folder):
    repo_id = _repo_id(hub_server, "upload")
    api.create_repo(repo_id)
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="add files")
    history = hub_server.commits(repo_id)
    assert len(history) == 2 and history[0].oid == info.oid and history[0].title == "add files"
    assert history[0].files["weights.bin"] == WEIGHTS and history[0].files["README.md"] == CARD.encode()
    assert [c.commit_id for c in api.list_repo_commits(repo_id)] == [c.oid for c in history]

    path = hf_hub_download(repo_id, "weights.bin")
    with open(path, "rb") as fh:
        assert fh.read() == WEIGHTS
    model = api.model_info(repo_id)
    assert model.sha == info.oid
    assert {s.rfilename for s in model.siblings} == {".gitattributes", "README.md", "weights.bin"}
    assert {f.path: f.size for f in api.list_repo_tree(repo_id)}["weights.bin"] == len(WEIGHTS)


def test_second_upload_is_a_child_commit_and_old_revision_stays_readable(hub_server, api, folder):
    repo_id = _repo_id(hub_server, "history")
    api.create_repo(repo_id)
    first = api.upload_folder(repo_id=repo_id, folder_path=folder).oid
    (folder / "weights.bin").write_bytes(b"new weights")
    (folder / "sub").mkdir()
    (folder / "sub" / "extra.txt").write_text("extra")
    second = api.upload_folder(repo_id=repo_id, folder_path=folder).oid
    history = hub_server.commits(repo_id)
    assert second != first and len(history) == 3
    assert history[0].oid == second and history[0].parent == first
    assert set(history[0].files) == {".gitattributes", "README.md", "weights.bin", "sub/extra.txt"}
    with open(hf_hub_download(repo_id, "weights.bin", revision=first), "rb") as fh:
        assert fh.read() == WEIGHTS
    with open(hf_hub_download(repo_id, "weights.bin"), "rb") as fh:
        assert fh.read() == b"new weights"
    assert [f.path for f in api.list_repo_tree(repo_id)] == [
        ".gitattributes",
        "README.md",
        "sub",
        "weights.bin",
    ]
    assert [f.path for f in api.list_repo_tree(repo_id, recursive=True)][2:4] == ["sub", "sub/extra.txt"]
    # Unchanged files: preupload reports their oid, so the client skips the commit entirely.
    api.upload_folder(repo_id=repo_id, folder_path=folder)
    assert len(hub_server.commits(repo_id)) == 3


def test_push_to_hub_then_from_pretrained_gives_identical_logits(hub_server, hub_token, tmp_path):
    from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    model = ViTForImageClassification(config).eval()
    repo_id = _repo_id(hub_server, "vit")
    model.push_to_hub(repo_id, token=hub_token)
    assert {"config.json", "model.safetensors"} <= set(hub_server.files(repo_id))
    assert len(hub_server.commits(repo_id)) == 2

    cache = tmp_path / "cold_cache"
    loaded = AutoModelForImageClassification.from_pretrained(repo_id, cache_dir=cache).eval()
    assert any(cache.iterdir())  # the weights really came through the (empty) cache from the server
    pixels = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits)
    assert type(loaded) is ViTForImageClassification and loaded.config.num_labels == 3


def test_model_card_load_reads_the_uploaded_card(hub_server, api):
    repo_id = _repo_id(hub_server, "card")
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=CARD.encode(), path_in_repo="README.md", repo_id=repo_id)
    card = ModelCard.load(repo_id)
    assert card.data.license == "mit" and card.data.tags == ["fairness"]
    assert "A card for the local Hub tests." in card.text


def test_failed_commit_changes_nothing_and_retry_succeeds(hub_server, api):
    repo_id = _repo_id(hub_server, "fail")
    api.create_repo(repo_id)
    before = [c.oid for c in hub_server.commits(repo_id)]
    hub_server.fail_next_commit(500)
    with pytest.raises(HfHubHTTPError) as info:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert info.value.response.status_code == 500
    assert [c.oid for c in hub_server.commits(repo_id)] == before
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    after = hub_server.commits(repo_id)
    assert len(after) == len(before) + 1 and after[0].parent == before[0] and after[0].files["x.txt"] == b"x"


def test_dropped_connection_raises_and_commits_nothing(hub_server, api):
    repo_id = _repo_id(hub_server, "drop")
    api.create_repo(repo_id)
    before = [c.oid for c in hub_server.commits(repo_id)]
    dropped = hub_server.stats["commit_dropped"]
    hub_server.drop_connection_on_next_commit()
    with pytest.raises(HTTP.TransportError):  # RemoteProtocolError: server disconnected without a response
        api.upload_file(path_or_fileobj=b"y", path_in_repo="y.txt", repo_id=repo_id)
    assert hub_server.stats["commit_dropped"] == dropped + 1
    assert [c.oid for c in hub_server.commits(repo_id)] == before
    api.upload_file(path_or_fileobj=b"y", path_in_repo="y.txt", repo_id=repo_id)
    assert hub_server.files(repo_id)["y.txt"] == b"y" and len(hub_server.commits(repo_id)) == len(before) + 1


def test_wrong_or_missing_token_is_401(hub_server, api):
    repo_id = _repo_id(hub_server, "auth")
    with pytest.raises(HfHubHTTPError) as info:
        HfApi(token="hf_wrong_token").create_repo(repo_id)
    assert info.value.response.status_code == 401 and "Invalid credentials" in str(info.value)
    with pytest.raises(HfHubHTTPError) as info:
        HfApi(token=False).create_repo(repo_id)  # anonymous write
    assert info.value.response.status_code == 401
    assert ("model", repo_id) not in hub_server.repos
    api.create_repo(repo_id)
    with pytest.raises(HfHubHTTPError) as info:
        HfApi(token="hf_wrong_token").upload_file(path_or_fileobj=b"z", path_in_repo="z", repo_id=repo_id)
    assert info.value.response.status_code == 401
    assert len(hub_server.commits(repo_id)) == 1


def test_refused_repo_name_is_a_400_with_the_reason(hub_server, api):
    name = f"refused-{uuid.uuid4().hex[:8]}"
    hub_server.reject_repo_names.add(name)
    with pytest.raises(BadRequestError) as info:
        api.create_repo(f"{hub_server.user}/{name}")
    assert info.value.response.status_code == 400 and "not allowed" in str(info.value)
    assert ("model", f"{hub_server.user}/{name}") not in hub_server.repos


def test_missing_repo_revision_and_file_map_to_the_hub_errors(hub_server, api, tmp_path):
    repo_id = _repo_id(hub_server, "errors")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(repo_id)
    api.create_repo(repo_id)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="no-such-branch", cache_dir=tmp_path)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "missing.json", cache_dir=tmp_path)
    assert api.file_exists(repo_id, ".gitattributes") and not api.file_exists(repo_id, "missing.json")


def test_commit_is_atomic_and_checks_its_parent(hub_server, api):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    repo_id = _repo_id(hub_server, "atomic")
    api.create_repo(repo_id)
    before = hub_server.commits(repo_id)
    ops = [CommitOperationAdd("a.txt", b"a"), CommitOperationDelete("not-there.txt")]
    with pytest.raises(RemoteEntryNotFoundError):
        api.create_commit(repo_id, operations=ops, commit_message="half bad")
    assert hub_server.commits(repo_id) == before and "a.txt" not in hub_server.files(repo_id)
    with pytest.raises(HfHubHTTPError) as info:
        api.create_commit(
            repo_id, [CommitOperationAdd("b.txt", b"b")], commit_message="stale", parent_commit="0" * 40
        )
    assert info.value.response.status_code == 412 and hub_server.commits(repo_id) == before
    ok = api.create_commit(
        repo_id, [CommitOperationAdd("b.txt", b"b")], commit_message="fresh", parent_commit=before[0].oid
    )
    assert hub_server.commits(repo_id)[0].oid == ok.oid and ok.oid != before[0].oid


def test_private_repo_and_branch(hub_server, api, hub_token, tmp_path):
    repo_id = _repo_id(hub_server, "branch")
    api.create_repo(repo_id, private=True)
    api.create_branch(repo_id, branch="exp")
    api.create_branch(repo_id, branch="exp", exist_ok=True)  # 409 accepted
    info = api.upload_file(path_or_fileobj=b"on exp", path_in_repo="e.txt", repo_id=repo_id, revision="exp")
    assert "e.txt" not in hub_server.files(repo_id) and hub_server.files(repo_id, "exp")["e.txt"] == b"on exp"
    assert api.model_info(repo_id, revision="exp").sha == info.oid != api.model_info(repo_id).sha
    path = hf_hub_download(repo_id, "e.txt", revision="exp", token=hub_token, cache_dir=tmp_path)
    with open(path, "rb") as fh:
        assert fh.read() == b"on exp"
    with pytest.raises(RepositoryNotFoundError):  # private: invisible without the token
        hf_hub_download(repo_id, "e.txt", revision="exp", token=False, cache_dir=tmp_path / "anon")
