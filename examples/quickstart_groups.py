"""Quick start in Python: distil with a group of the data protected, then read the groups back.

The spurious digits: the ink colour goes with the class in training (95%) but not in the test split, so a model
that leans on the colour fails the minority cells (a red 7, a green 2). robust_kd over class x colour cells
reweights them online (group DRO). Run:  python examples/quickstart_groups.py [--steps 300]
"""

import argparse

from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from hf_fairkd import DistillationArguments, DistillationTrainer
from hf_fairkd.data import load_long_tailed, long_tail_info
from hf_fairkd.groups import read_group_values
from hf_fairkd.metrics import subgroup_report
from hf_fairkd.run.preprocessing import prepare_splits


def vit(info, hidden: int):
    config = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=hidden, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=2 * hidden, num_labels=len(info.class_names))  # fmt: skip
    return ViTForImageClassification(config)


def main(steps: int = 300, output_dir: str = "outputs/quickstart_groups") -> dict:
    splits = load_long_tailed("digits_spurious", group_columns=["colour"])  # train / holdout / test
    info = long_tail_info(splits["train"])  # class and class x colour training counts
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    data = prepare_splits(splits, info, processor)  # images decoded once; a 'colour' column kept per row
    common = dict(max_steps=steps, learning_rate=2e-3, per_device_train_batch_size=32, report_to="none",
                  remove_unused_columns=False, group_columns=["colour"], disable_tqdm=True,
                  dataloader_pin_memory=False)  # fmt: skip
    teacher = vit(info, 64)
    DistillationTrainer(
        teacher, DistillationArguments(f"{output_dir}/teacher", objective="erm", **common), train_dataset=data["train"]
    ).train()
    args = DistillationArguments(output_dir, objective="robust_kd", dro_groups="class_x_group", **common)
    trainer = DistillationTrainer(
        vit(info, 32), args, teacher=teacher, train_dataset=data["train"], holdout_dataset=data["holdout"]
    )
    trainer.train()
    logits = trainer.predict(data["test"]).predictions
    report = subgroup_report(
        logits, splits["test"]["label"], class_names=info.class_names,
        groups=read_group_values(splits["test"], ["colour"]), group_train_counts=info.group_train_counts,
    )  # fmt: skip
    cells = report["groups"]["class&colour"]
    print(f"accuracy {report['accuracy']:.3f}; worst class x colour cell {cells['worst_group']} "
          f"{cells['worst_group_accuracy']:.3f} (95% simultaneous interval {cells['worst_group_accuracy_ci']})")  # fmt: skip
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    main(parser.parse_args().steps)
