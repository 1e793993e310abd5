"""Test-split predictions of a model loaded from a folder, kept for the next run of the same process.

The students of a comparison share one teacher and, per seed, one baseline; each student's record would otherwise
predict the whole test split again with both (in the CIFAR-10-LT rerun about 21 s of a 215 s student run, 10,000
test images through a 48 px teacher). Only trainers that predict a model they do not train are kept (a given
teacher or baseline, `stages.prediction_trainer`), under a key of everything the predictions depend on; anything
that cannot be told apart safely is predicted again.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# a worker needs two at a time (the teacher, the seed's baseline); the logits of a large test split are big
KEPT = 4

_kept: OrderedDict = OrderedDict()


def memo_key(trainer, dataset) -> tuple | None:
    """The model's folder and its weight files (name, size, modification time), the dataset's fingerprint and
    format, the processor, the evaluation batch size, precision and world size; None for a model not loaded
    from a local folder or a dataset without a fingerprint."""
    model = trainer.model
    folder = getattr(getattr(model, "config", None), "_name_or_path", None)
    if not folder or not Path(folder).is_dir():
        return None
    weights = tuple(
        sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns)
            for p in Path(folder).iterdir()
            if p.suffix in WEIGHT_SUFFIXES
        )
    )
    fingerprint = getattr(dataset, "_fingerprint", None)
    if not weights or not fingerprint:
        return None
    processor = trainer.processing_class
    args = trainer.args
    return (
        str(Path(folder).resolve()),
        type(model).__name__,
        weights,
        fingerprint,
        len(dataset),
        dataset.format.get("type"),
        tuple(dataset.format.get("columns") or ()),
        processor.to_json_string() if hasattr(processor, "to_json_string") else repr(processor),
        args.per_device_eval_batch_size,
        bool(args.bf16),
        bool(args.fp16),
        args.world_size,
    )


def predict(trainer, dataset, predict_logits):
    """``predict_logits(trainer, dataset)``, or its kept result for the same key (copies: the caller may change
    them)."""
    key = memo_key(trainer, dataset)
    if key is None:
        return predict_logits(trainer, dataset)
    if key not in _kept:
        _kept[key] = predict_logits(trainer, dataset)
        while len(_kept) > KEPT:
            _kept.popitem(last=False)
    _kept.move_to_end(key)
    logits, labels = _kept[key]
    return logits.copy(), labels.copy()


def clear() -> None:
    _kept.clear()
