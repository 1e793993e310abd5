"""Tiny models and learnable synthetic datasets shared by the trainer tests (fast on 2 CPU cores)."""

from __future__ import annotations

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Sequence, Value
from transformers import BertConfig, BertForSequenceClassification, ViTForImageClassification

from hf_fairkd import DistillationArguments
from hf_fairkd.run.models import build_vit

CLASS_NAMES = ["cat", "dog", "bird"]


def make_vit(num_labels: int = 3, seed: int = 0, hidden: int = 16, names=None) -> ViTForImageClassification:
    names = names or CLASS_NAMES[:num_labels]
    sizes = dict(hidden_size=hidden, num_layers=1, num_heads=2, image_size=8, patch_size=4)
    return build_vit(names, num_channels=1, intermediate_size=2 * hidden, seed=seed, **sizes)


def make_bert(num_labels: int = 3, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
        id2label=dict(enumerate(CLASS_NAMES[:num_labels])),
        label2id={n: i for i, n in enumerate(CLASS_NAMES[:num_labels])},
    )
    return BertForSequenceClassification(config)


def image_dataset(counts=(24, 12, 6), seed: int = 0, noise: float = 0.5) -> Dataset:
    """8x8 one-channel 'images' whose class sets the mean of one quadrant: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    pixels, labels = [], []
    for label, count in enumerate(counts):
        for _ in range(count):
            image = rng.normal(0, noise, size=(1, 8, 8)).astype(np.float32)
            image[0, (label // 2) * 4 : (label // 2) * 4 + 4, (label % 2) * 4 : (label % 2) * 4 + 4] += 2.0
            pixels.append(image)
            labels.append(label)
    order = rng.permutation(len(labels))
    features = Features(
        {
            "pixel_values": Sequence(Sequence(Sequence(Value("float32")))),
            "labels": ClassLabel(names=CLASS_NAMES[: len(counts)]),
        }
    )
    ds = Dataset.from_dict(
        {"pixel_values": [pixels[i] for i in order], "labels": [labels[i] for i in order]}, features=features
    )
    return ds.with_format("torch")


def text_dataset(counts=(16, 8, 8), seed: int = 0) -> Dataset:
    """Token sequences whose class decides a marker token."""
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for label, count in enumerate(counts):
        for _ in range(count):
            seq = rng.integers(5, 40, size=8)
            seq[rng.integers(0, 8)] = 1 + label
            ids.append(seq.tolist())
            labels.append(label)
    ds = Dataset.from_dict({"input_ids": ids, "labels": labels})
    return ds.with_format("torch")


def tiny_args(tmp_path, **overrides) -> DistillationArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=5e-3,
        max_steps=20,
        logging_steps=5,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    defaults.update(overrides)
    return DistillationArguments(**defaults)
