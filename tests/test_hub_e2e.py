"""The recipe pushes a student to a (local) Hub; users load it, read its card and its metrics back."""

import json
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import traceback
import uuid

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from test_recipes import ROOT, TINY, load_recipe
from transformers import AutoModelForImageClassification

import hf_fairkd
from hf_fairkd import DistillationArguments, DistillationTrainer
from hf_fairkd.results import HubPushError

REPO = "test-user/digits-student-e2e"


# What one publish of the recipe holds (the Hub's own initial commit adds only .gitattributes).
RECIPE_FILES = {
    ".eval_results/hf_fairkd.yaml", "README.md", "config.json", "model.safetensors", "per_class_accuracy.png",
    "preprocessor_config.json", "run_config.json", "subgroup_metrics.json", "training_args.json",
}  # fmt: skip
RECORDED: dict = {}  # what the Hub held right after the recipe's run


@pytest.fixture(scope="module")
def pushed(hub_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("push") / "out"
    argv = [*TINY, "--output_dir", str(out), "--objective", "kd", "--push_to_hub", "true", "--save_strategy",
            "steps", "--save_steps", "3", "--hub_model_id", REPO, "--hub_token", hub_server.token]  # fmt: skip
    commit_requests = hub_server.stats["commit"]
    metrics = load_recipe("distill_vit").main(argv)
    # Recorded now: later tests of this module add commits of their own.
    RECORDED.update(
        commits=HfApi().list_repo_commits(REPO), requests=hub_server.stats["commit"] - commit_requests
    )
    return out, metrics


def _files_added_by(repo_id: str, commits) -> set[str]:
    """Files of the newest commit that its parent does not have (read through the client, not the server)."""
    from huggingface_hub.hf_api import RepoFile

    def files(commit) -> set[str]:
        tree = HfApi().list_repo_tree(repo_id, revision=commit.commit_id, recursive=True)
        return {entry.path for entry in tree if isinstance(entry, RepoFile)}

    return files(commits[0]) - files(commits[1])


def test_recipe_publishes_exactly_one_commit_with_every_file(pushed):
    commits = RECORDED["commits"]  # newest first, as the Hub lists them
    assert len(commits) == 2, [c.title for c in commits]  # the Hub's "initial commit" + ONE publish
    assert commits[1].title == "initial commit" and "Model save" not in commits[0].title
    assert RECORDED["requests"] == 1  # no stage (teacher, baseline, checkpoints) sent a commit of its own
    assert _files_added_by(REPO, commits) == RECIPE_FILES


def test_one_commit_holds_weights_card_plot_and_metrics(pushed, hub_server):
    out, _ = pushed
    files = set(hub_server.files(REPO))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "per_class_accuracy.png",
            "subgroup_metrics.json"} <= files  # fmt: skip
    assert not any(
        f.startswith(("teacher/", "baseline/", "checkpoint-")) or f.endswith(".bin") for f in files
    )
    last = hub_server.commits(REPO)[0]
    assert {"model.safetensors", "README.md", "subgroup_metrics.json"} <= set(last.files)
    for name, content in hub_server.files(REPO).items():
        assert hub_server.token.encode() not in content, name


def test_users_load_the_student_and_get_the_same_predictions(pushed):
    out, _ = pushed
    local = AutoModelForImageClassification.from_pretrained(out).eval()
    remote = AutoModelForImageClassification.from_pretrained(REPO).eval()
    pixels = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(remote(pixel_values=pixels).logits, local(pixel_values=pixels).logits)


def test_card_and_metrics_read_back_as_data(pushed):
    out, metrics = pushed
    card = ModelCard.load(REPO)
    assert "knowledge-distillation" in card.data.tags and card.data.library_name == "transformers"
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["worst_class_accuracy"] == float(f"{metrics['student']['worst_class_accuracy']:.4g}")
    # one per-class table row per class: its training count, and its count before the holdout (the shot groups')
    before = metrics["dataset"]["long_tail_counts"]
    for name, count, shot, row in zip(
        metrics["class_names"], metrics["train_counts"], before, metrics["student"]["per_class"]
    ):
        assert f"\n| {name} | {count} | {shot} | {row['support']} |" in card.text
    remote = hf_fairkd.load_subgroup_metrics(REPO)
    assert remote == json.loads((out / "subgroup_metrics.json").read_text())


def test_trainer_push_to_hub_makes_a_new_commit_with_its_own_card(pushed, hub_server, tmp_path):
    from hf_fairkd.data import load_long_tailed, long_tail_info
    from hf_fairkd.run.arguments import ModelArguments
    from hf_fairkd.run.preprocessing import make_image_processor, prepare_splits

    out, _ = pushed
    before = len(hub_server.commits(REPO))
    splits = load_long_tailed("digits")
    info = long_tail_info(splits["train"])
    processor = make_image_processor(ModelArguments(image_size=8))
    prepared = prepare_splits(splits, info, processor)
    args = DistillationArguments(
        output_dir=str(tmp_path / "again"), objective="ce", report_to="none", push_to_hub=True, hub_model_id=REPO,
        hub_token=hub_server.token, remove_unused_columns=False, use_cpu=True,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=AutoModelForImageClassification.from_pretrained(out), args=args, eval_dataset=prepared["test"],
        class_counts=info.train_counts, processing_class=processor,
    )  # fmt: skip
    trainer.push_to_hub(commit_message="second push")
    commits = hub_server.commits(REPO)
    assert len(commits) == before + 1 and commits[0].title == "second push"
    remote = hf_fairkd.load_subgroup_metrics(REPO)
    assert set(remote) >= {"student", "class_names"} and "teacher" not in remote  # the card the trainer made
    assert np.isclose(remote["student"]["accuracy"], trainer.evaluate()["eval_accuracy"])


def test_failed_push_keeps_the_local_folder_and_a_retry_succeeds(pushed, hub_server, tmp_path):
    from test_recipes import tree_hashes

    out, _ = pushed
    args = DistillationArguments(
        output_dir=str(out), objective="ce", report_to="none", hub_model_id=REPO, hub_token="hf_wrongTOKEN999999",
        use_cpu=True,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=AutoModelForImageClassification.from_pretrained(out), args=args, class_counts=[1] * 10
    )
    record = json.loads((out / "subgroup_metrics.json").read_text())
    before_commits = len(hub_server.commits(REPO))
    with pytest.raises(HubPushError) as err:
        trainer.push_to_hub(metrics=record)
    assert "hf_wrongTOKEN999999" not in str(err.value) and REPO in str(err.value)
    hashes = tree_hashes(out)
    for _ in range(3):  # the first try and both retries fail
        hub_server.fail_next_commit(500)
    with pytest.raises(HubPushError, match="intact"):
        trainer.push_to_hub(token=hub_server.token, metrics=record)
    assert tree_hashes(out) == hashes and len(hub_server.commits(REPO)) == before_commits
    trainer.push_to_hub(token=hub_server.token, metrics=record)
    assert HfApi().model_info(REPO).sha == hub_server.commits(REPO)[0].oid


# ------------------------------------------------------------------------------------ publishing once
def _digits():
    from hf_fairkd.data import load_long_tailed, long_tail_info
    from hf_fairkd.run.arguments import ModelArguments
    from hf_fairkd.run.preprocessing import make_image_processor, prepare_splits

    splits = load_long_tailed("digits")
    info = long_tail_info(splits["train"])
    processor = make_image_processor(ModelArguments(image_size=8))
    return prepare_splits(splits, info, processor), info, processor


def _fresh_repo(hub, stem: str) -> str:
    return f"{hub.user}/{stem}-{uuid.uuid4().hex[:8]}"


def _closed_endpoint() -> str:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_trainer_train_save_model_push_to_hub_is_one_commit(hub_server, tmp_path):
    """The stock Trainer pushes a "Model save" commit from save_model() and half-trained weights from each
    checkpoint; here nothing is published until push_to_hub(), which makes exactly one commit."""
    from hf_fairkd.run.models import build_vit

    prepared, info, processor = _digits()
    repo_id = _fresh_repo(hub_server, "trainer-flow")
    args = DistillationArguments(
        output_dir=str(tmp_path / "out"), objective="ce", report_to="none", push_to_hub=True, hub_model_id=repo_id,
        hub_token=hub_server.token, remove_unused_columns=False, use_cpu=True, max_steps=4, save_strategy="steps",
        save_steps=2, per_device_train_batch_size=16, disable_tqdm=True,
    )  # fmt: skip
    student = build_vit(
        info.class_names, hidden_size=16, num_layers=1, num_heads=2, image_size=8, patch_size=4, seed=0
    )
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=prepared["train"], eval_dataset=prepared["test"],
        class_counts=info.train_counts, processing_class=processor,
    )  # fmt: skip
    api = HfApi()
    trainer.train()
    trainer.save_model()
    assert [c.title for c in api.list_repo_commits(repo_id)] == ["initial commit"]  # nothing published yet
    trainer.push_to_hub()
    commits = api.list_repo_commits(repo_id)
    assert len(commits) == 2
    # No run_config.json (the recipe writes it) and no .eval_results/ (they need a Hub dataset id).
    expected = RECIPE_FILES - {"run_config.json", ".eval_results/hf_fairkd.yaml"}
    assert _files_added_by(repo_id, commits) == expected


@pytest.mark.parametrize("recipe", ["distill_vit", "train_teacher"])
@pytest.mark.parametrize("fault", ["unreachable", "wrong_token"])
def test_hub_problems_stop_the_recipe_before_any_training(
    hub_server, tmp_path, monkeypatch, caplog, recipe, fault
):
    from huggingface_hub import constants

    out, repo_id = tmp_path / "out", _fresh_repo(hub_server, f"pre-{fault}")
    token, endpoint = hub_server.token, hub_server.url
    if fault == "unreachable":
        endpoint = _closed_endpoint()
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    else:
        token = "hf_refusedRecipeSecret123456789"
    argv = [*TINY, "--output_dir", str(out), "--push_to_hub", "true", "--hub_model_id", repo_id, "--hub_token",
            token]  # fmt: skip
    with caplog.at_level(logging.DEBUG), pytest.raises(HubPushError) as info:
        load_recipe(recipe).main(argv)
    message = str(info.value)
    assert endpoint in message and repo_id in message and "before any training" in message
    if fault == "unreachable":
        assert "could not be reached" in message and "HF_ENDPOINT" in message and info.value.transient
    else:
        assert "rejected the token (HTTP 401)" in message and "hf auth login" in message
    assert not (out / "teacher").exists() and not list(tmp_path.rglob("*.safetensors"))  # nothing trained
    assert token not in "".join(traceback.format_exception(info.value)) + caplog.text
    assert ("model", repo_id) not in hub_server.repos


@pytest.mark.slow  # the CLI end to end; the preflight error itself: test_hub_push.py::test_preflight_unreachable_hub_names_the_endpoint
def test_recipe_cli_reports_an_unreachable_hub_as_a_one_line_error(tmp_path):
    secret = "hf_cliSecretToken123456789"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": _closed_endpoint(), "HF_TOKEN": secret}
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "distill_vit.py"), *TINY, "--output_dir", str(out), "--push_to_hub",
         "true", "--hub_model_id", "test-user/cli-unreachable"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "\nerror: " in "\n" + result.stderr and "could not be reached" in result.stderr
    assert "Traceback" not in result.stderr and not (out / "teacher").exists()
    assert secret not in result.stdout + result.stderr


def test_failed_final_push_keeps_the_outputs_and_says_how_to_push_them(hub_server, tmp_path, caplog):
    out, repo_id = tmp_path / "out", _fresh_repo(hub_server, "final-fails")
    hub_server.fail_next_commit(403)  # the (only) commit is refused; 403 is not retried
    argv = [*TINY, "--output_dir", str(out), "--objective", "kd", "--push_to_hub", "true", "--hub_model_id", repo_id,
            "--hub_token", hub_server.token]  # fmt: skip
    with caplog.at_level(logging.DEBUG), pytest.raises(HubPushError) as info:
        load_recipe("distill_vit").main(argv)
    message = str(info.value)
    for name in ("model.safetensors", "README.md", "subgroup_metrics.json", "per_class_accuracy.png"):
        assert (out / name).is_file(), name
    assert str(out) in message and repo_id in message and "complete" in message
    assert [c.title for c in HfApi().list_repo_commits(repo_id)] == ["initial commit"]
    command = re.search(r"`(python -m hf_fairkd\.results\.hub push [^`]+)`", message).group(1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_TOKEN": hub_server.token}
    argv = [sys.executable, *shlex.split(command)[1:]]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    commits = HfApi().list_repo_commits(repo_id)
    assert len(commits) == 2 and _files_added_by(repo_id, commits) == RECIPE_FILES
    rendered = "".join(traceback.format_exception(info.value)) + caplog.text + result.stdout + result.stderr
    assert hub_server.token not in rendered


def test_train_teacher_publishes_one_commit_with_a_teacher_card_read_back_as_data(hub_server, tmp_path):
    repo_id = _fresh_repo(hub_server, "teacher")
    out = tmp_path / "teacher"
    argv = [*TINY, "--output_dir", str(out), "--objective", "dro", "--push_to_hub", "true", "--hub_model_id",
            repo_id, "--hub_token", hub_server.token]  # fmt: skip
    requests = hub_server.stats["commit"]
    metrics = load_recipe("train_teacher").main(argv)
    commits = HfApi().list_repo_commits(repo_id)
    assert len(commits) == 2 and hub_server.stats["commit"] - requests == 1  # "initial commit" + ONE publish
    assert _files_added_by(repo_id, commits) == RECIPE_FILES  # the same files as a student's push
    assert b"of the teacher on the test split" in hub_server.files(repo_id)[".eval_results/hf_fairkd.yaml"]
    card = ModelCard.load(repo_id)
    assert "knowledge-distillation-teacher" in card.data.tags
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["accuracy"] == float(f"{metrics['teacher']['accuracy']:.4g}")
    assert hf_fairkd.load_subgroup_metrics(repo_id)["teacher"] == metrics["teacher"]
    for name, content in hub_server.files(repo_id).items():
        assert hub_server.token.encode() not in content, name
