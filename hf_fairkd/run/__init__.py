"""What the recipes (`recipes/distill_vit.py`, `recipes/train_teacher.py`) and the benchmarks share, one
concern a module, so a user can also call them from Python:

- `arguments`: the model / data / run dataclasses, the recipe defaults, parsing of argument files + overrides;
- `checks`: processes, output folder and disk, checked before any work; one-line errors on the command line;
- `preparation`: the long-tailed splits, every image decoded once, the objectives' demands on the data;
- `preprocessing`: the image processor and the transform from images to ``pixel_values``;
- `models`: the one builder of fresh ViTs, fresh models from a config, pretrained classifiers;
- `stages`: training arguments and training of each stage, the cached teacher signal, predictions;
- `distill`: the distillation run (`recipes/distill_vit.py`) as steps: checks, teacher, baseline, student, record.

Results (the record, card, plot and Hub push) are `hf_fairkd.results`'.
"""
