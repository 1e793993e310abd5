"""per_class_accuracy: an evaluate metric wrapping hf_fairkd.metrics.subgroup.subgroup_report.

The maths lives in hf_fairkd (plain numpy); this module only declares the inputs and forwards options.
"""

import datasets
import evaluate

from hf_fairkd.metrics.subgroup import flatten_report, subgroup_report

_DESCRIPTION = """
Per-class accuracy (recall) with exact Clopper-Pearson intervals, balanced accuracy, worst-class accuracy
with a simultaneous (Bonferroni) interval that covers the true worst-class accuracy, worst-k accuracy,
many/medium/few-shot accuracy (when training counts are given: many = count > 100, medium = 20..100
inclusive, few < 20), and fairlearn-style subgroup accuracy per group column, per class x column cell and
per intersection of columns, with exact per-group intervals and a simultaneous worst-group interval.
Classes with no evaluation example get accuracy NaN, are listed in "missing_classes", excluded from the
balanced/worst-class/worst-k numbers, and named in a warning; groups with training rows but no evaluation
row are likewise NaN and listed in "missing_groups".
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids (take the argmax of logits first).
    references (`list` of `int`): true class ids.
    num_classes (`int`, optional): number of classes; default from class_names, else train_counts,
        else max label + 1.
    class_names (`list` of `str`, optional): one name per class id.
    train_counts (`list` of `int`, optional): training examples per class id; enables "shot_groups".
    shot_counts (`list` of `int`, optional): per-class counts that define the shot groups (default:
        train_counts); pass the long-tail counts from before a holdout was carved for the standard groups.
    groups (`dict` of column name -> `list`, optional): one group value per example for each column (None,
        NaN and "" are the group "(missing)"); reported per column ("site"), per class x column cell
        ("class&site", groups "cat&A"), per pair of columns and for all columns together (more than two).
    group_train_counts (`dict`, optional): {report key: {group: training count}}, the format of
        hf_fairkd.groups.count_groupings; fills "train_count" and lists groups without evaluation rows.
    shot_thresholds (`tuple`, default (100, 20)): (many_above, few_below).
    worst_k (`int`, default 3): number of lowest-accuracy classes averaged in "worst_k_accuracy".
    intervals (`bool`, default True): False leaves the intervals out (NaN bounds, "interval_method" "none").
    confidence_level (`float`, default 0.95): coverage of the intervals (per class, and for the worst class).
    flat (`bool`, default False): return flat scalars (hf_fairkd.metrics.flatten_report) instead.

Returns:
    The subgroup report dict (see the metric card), or a flat `dict[str, float]` when flat=True.

Examples:
    >>> from hf_fairkd.metrics import load_metric
    >>> metric = load_metric(keep_in_memory=True)
    >>> results = metric.compute(
    ...     predictions=[0, 1, 1, 2, 2, 0, 2],
    ...     references=[0, 1, 2, 2, 2, 1, 2],
    ...     class_names=["cat", "dog", "fox"],
    ...     train_counts=[500, 50, 5],
    ... )
    >>> round(results["accuracy"], 4)
    0.7143
    >>> [round(row["accuracy"], 4) for row in results["per_class"]]
    [1.0, 0.5, 0.75]
    >>> results["worst_class"], round(results["balanced_accuracy"], 4)
    ('dog', 0.75)
    >>> {shot: group["classes"] for shot, group in results["shot_groups"].items()}
    {'many': ['cat'], 'medium': ['dog'], 'few': ['fox']}
    >>> [round(b, 4) for b in (results["per_class"][0]["ci_low"], results["per_class"][0]["ci_high"])]
    [0.025, 1.0]
    >>> results["interval_method"], results["worst_class_interval_method"]
    ('clopper_pearson', 'bonferroni_clopper_pearson')
    >>> site = metric.compute(
    ...     predictions=[0, 1, 1, 0], references=[0, 1, 0, 0], groups={"site": ["A", "A", "B", "B"]},
    ...     group_train_counts={"site": {"A": 30, "B": 20, "C": 5}},
    ... )["groups"]["site"]
    >>> site["worst_group"], site["by_group"]["B"]["accuracy"], site["missing_groups"]
    ('B', 0.5, ['C'])
    >>> flat = metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], intervals=False, flat=True)
    >>> sorted(flat.items())
    [('accuracy', 0.6666666666666666), ('accuracy_class/0', 0.5), ('accuracy_class/1', 1.0), ('balanced_accuracy', 0.75), ('worst_class_accuracy', 0.5), ('worst_k_accuracy', 0.75)]
"""

_CITATION = """
@article{wang2023robust,
  title={Robust distillation for worst-class performance},
  author={Wang, Serena and Narasimhan, Harikrishna and Zhou, Yichen and Hooker, Sara and Lukasik, Michal and Menon, Aditya Krishna},
  journal={Uncertainty in Artificial Intelligence},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PerClassAccuracy(evaluate.Metric):
    """Per-class, shot-group and subgroup accuracy with exact intervals."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            format="numpy",  # hand numpy arrays to _compute instead of Python lists
            reference_urls=[
                "https://fairlearn.org/main/api_reference/generated/fairlearn.metrics.MetricFrame.html"
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        num_classes=None,
        class_names=None,
        train_counts=None,
        shot_counts=None,
        groups=None,
        group_train_counts=None,
        shot_thresholds=(100, 20),
        worst_k=3,
        intervals=True,
        confidence_level=0.95,
        flat=False,
    ):
        report = subgroup_report(
            predictions,
            references,
            num_classes=num_classes,
            class_names=class_names,
            train_counts=train_counts,
            shot_counts=shot_counts,
            groups=groups,
            group_train_counts=group_train_counts,
            shot_thresholds=shot_thresholds,
            worst_k=worst_k,
            intervals=intervals,
            confidence_level=confidence_level,
        )
        return flatten_report(report) if flat else report
