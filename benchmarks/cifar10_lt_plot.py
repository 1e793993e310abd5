"""The CIFAR-10-LT Pareto plot: overall accuracy against worst-class accuracy (left) and against the mean of the
worst 3 classes (right: informative when several models share a worst class at 0).

Each robust_kd sweep over b (one per teacher with two or more b values) is drawn as a frontier line through its
b values; every other student setting is one point. Means over seeds, with a bar of ± one seed standard
deviation where a setting ran with several seeds. No pyplot: no global matplotlib backend is chosen.
"""

from __future__ import annotations

from pathlib import Path

from cifar10_lt_runs import Study, mean_std

from hf_fairkd.io_utils import atomic_path

MARKERS = {None: "s", "erm": "o", "balanced": "^", "dro": "D"}
LINE_COLOURS = {"erm": "tab:red", "balanced": "tab:purple", "dro": "tab:brown"}
POINT_COLOURS = [0, 1, 2, 3, 4, 5, 16, 17, 18, 19, 12, 13, 14, 15]  # tab20 without red, purple, brown


def _point(study: Study, runs: list[dict], metric: str) -> tuple[float | None, float]:
    mean, std = mean_std(study.values(runs, metric))
    return mean, std or 0.0


def pareto_plot(study: Study, path: Path) -> None:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 5.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    sweeps = {}
    for key in study.settings(objective="robust_kd"):
        if key.b is not None:
            sweeps.setdefault((key.teacher, key.convention), []).append(key)
    sweeps = {k: sorted(v, key=lambda s: s.b) for k, v in sweeps.items() if len(v) > 1}
    on_lines = {key for keys in sweeps.values() for key in keys}
    others = [k for k in study.settings() if k not in on_lines]
    palette = colormaps["tab20"]
    for ax, x_metric, x_label in (
        (axes[0], "worst_class_accuracy", "worst-class test accuracy (%)"),
        (axes[1], "worst_k_accuracy", "mean accuracy of the worst 3 classes (%)"),
    ):
        for (teacher, _), keys in sweeps.items():
            points = [
                (_point(study, study.groups[k], x_metric), _point(study, study.groups[k], "accuracy"))
                for k in keys
            ]
            kept = [(k, x, y) for k, (x, y) in zip(keys, points) if x[0] is not None and y[0] is not None]
            if not kept:
                continue
            colour = LINE_COLOURS.get(teacher, "tab:gray")
            ax.errorbar(
                [x[0] for _, x, _ in kept],
                [y[0] for _, _, y in kept],
                xerr=[x[1] for _, x, _ in kept],
                yerr=[y[1] for _, _, y in kept],
                fmt="o-",
                color=colour,
                capsize=2,
                label=f"{study.label(keys[0]).split(' (')[0]}, b swept",
            )
            for k, x, y in kept:
                ax.annotate(
                    f"b={k.b:g}", (x[0], y[0]), textcoords="offset points", xytext=(4, -10), fontsize=8
                )
        for i, key in enumerate(others):  # a legend entry each: labels would overlap at worst class 0
            (x, xs), (y, ys) = (
                _point(study, study.groups[key], x_metric),
                _point(study, study.groups[key], "accuracy"),
            )
            if x is None or y is None:
                continue
            ax.errorbar(
                [x],
                [y],
                xerr=[xs],
                yerr=[ys],
                fmt=MARKERS.get(key.teacher, "o"),
                color=palette(POINT_COLOURS[i % len(POINT_COLOURS)]),
                markersize=7,
                capsize=2,
                label=study.label(key),
            )
        ax.set_xlabel(x_label)
        ax.set_ylabel("overall test accuracy (%)")
        ax.grid(alpha=0.3)

    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle("CIFAR-10-LT (rho=100): overall vs worst classes (means over seeds, bars ± 1 seed std)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
