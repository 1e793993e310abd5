"""The recipe pushes a student to a (local) Hub; users load it, read its card and its metrics back."""

import json

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from test_recipes import TINY, load_recipe
from transformers import AutoModelForImageClassification

import hf_fairkd
from hf_fairkd import DistillationArguments, DistillationTrainer
from hf_fairkd.hub import HubPushError

REPO = "test-user/digits-student-e2e"


@pytest.fixture(scope="module")
def pushed(hub_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("push") / "out"
    argv = [*TINY, "--output_dir", str(out), "--objective", "kd", "--push_to_hub", "true",
            "--hub_model_id", REPO, "--hub_token", hub_server.token]  # fmt: skip
    metrics = load_recipe("distill_vit").main(argv)
    return out, metrics


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
    assert results["worst_class_accuracy"] == pytest.approx(metrics["student"]["worst_class_accuracy"])
    for name, count, row in zip(
        metrics["class_names"], metrics["train_counts"], metrics["student"]["per_class"]
    ):
        assert f"\n| {name} | {count} | {row['support']} |" in card.text  # one per-class table row per class
    remote = hf_fairkd.load_subgroup_metrics(REPO)
    assert remote == json.loads((out / "subgroup_metrics.json").read_text())


def test_trainer_push_to_hub_makes_a_new_commit_with_its_own_card(pushed, hub_server, tmp_path):
    from hf_fairkd import pipeline
    from hf_fairkd.data import load_long_tailed, long_tail_info

    out, _ = pushed
    before = len(hub_server.commits(REPO))
    splits = load_long_tailed("digits")
    info = long_tail_info(splits["train"])
    processor = pipeline.make_image_processor(pipeline.ModelArguments(image_size=8))
    prepared = pipeline.prepare_splits(splits, info, processor)
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
    trainer.subgroup_metrics = json.loads((out / "subgroup_metrics.json").read_text())
    before_commits = len(hub_server.commits(REPO))
    with pytest.raises(HubPushError) as err:
        trainer.push_to_hub()
    assert "hf_wrongTOKEN999999" not in str(err.value) and REPO in str(err.value)
    hashes = tree_hashes(out)
    for _ in range(3):  # the first try and both retries fail
        hub_server.fail_next_commit(500)
    with pytest.raises(HubPushError, match="intact"):
        trainer.push_to_hub(token=hub_server.token)
    assert tree_hashes(out) == hashes and len(hub_server.commits(REPO)) == before_commits
    trainer.push_to_hub(token=hub_server.token)
    assert HfApi().model_info(REPO).sha == hub_server.commits(REPO)[0].oid
