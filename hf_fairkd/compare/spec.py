"""What a comparison compares: `CompareArguments` (the flags beside distill_vit's), the settings of each
objective (``robust_kd:dro_tradeoff=0.25,0.5``: a list of values is a sweep, several settings their product),
and their checks, all before anything trains: an unknown objective or setting names the nearest valid one."""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from dataclasses import dataclass, field

BASELINE_OBJECTIVE = "ce"  # the one-hot baseline: every seed trains one, every student is compared with it
RULES = ("auto", "best_worst_group", "best_worst_class", "best_overall")


@dataclass
class CompareArguments:
    """The comparison: which objectives and settings, which seeds, how the winner is chosen, how workers share."""

    objectives: list[str] = field(
        default_factory=lambda: ["ce", "kd", "robust_kd"],
        metadata={"help": "Student objectives to compare (ce is the one-hot baseline, always trained)."},
    )
    settings: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Per-objective settings OBJECTIVE:NAME=V1,V2 (several values: a sweep; several settings of one "
            "objective: their product), e.g. robust_kd:dro_tradeoff=0.25,0.5 robust_kd:dro_groups=class_x_group. "
            "NAME is one of the objective's flags (its param_names) or a field of its own settings_class. "
            "'none': no settings (drops a config file's)."
        },
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={
            "help": "Seeds: one baseline and one student of every setting per seed; the teacher uses the first."
        },
    )
    choose: str = field(
        default="auto",
        metadata={
            "help": "How the student to publish is chosen: best_worst_group (highest mean worst-group accuracy), "
            "best_worst_class, or best_overall (highest mean accuracy among the settings that hurt no class and no "
            "group). auto: best_worst_group with --group_columns, else best_worst_class.",
            "choices": list(RULES),
        },
    )
    runs_dir: str | None = field(
        default=None, metadata={"help": "One result file per finished run (default: OUTPUT_DIR/runs)."}
    )
    max_runs: int | None = field(
        default=None,
        metadata={"help": "Stop this worker after this many new runs (a budget; reports still written)."},
    )
    wait_seconds: float = field(
        default=10.0, metadata={"help": "Poll interval while another worker trains what the next runs need."}
    )
    rerun_other_code: bool = field(
        default=False,
        metadata={
            "help": "Retrain finished runs written by another code version (default: keep them, listed in the report)."
        },
    )
    view_cache: bool | None = field(
        default=None,
        metadata={
            "help": "Draw every epoch's augmented views once and run the teacher over them once; every baseline and "
            "student trains on those views, no student runs the teacher per step (default: on with --augment)."
        },
    )
    baselines_from: str | None = field(
        default=None,
        metadata={
            "help": "The output folder of another comparison on the same data, student, training flags and views "
            "(e.g. with another teacher): its finished one-hot baselines are reused, not retrained (checked first)."
        },
    )
    stale_claim_hours: float = field(
        default=48.0,
        metadata={
            "help": "A claim of a worker on another host is taken over after this long (same host: when its "
            "process is gone)."
        },
    )


@dataclass(frozen=True)
class Setting:
    """One objective with the settings that distinguish it (sorted by name); the runs of a setting differ
    only by their seed."""

    objective: str
    params: tuple[tuple[str, object], ...] = ()

    @property
    def key(self) -> str:
        """'kd', 'robust_kd/dro_groups=class_x_group,dro_tradeoff=0.5' (part of run keys and file names)."""
        return self.objective + ("/" + self._pairs(",") if self.params else "")

    @property
    def label(self) -> str:
        """'ce (baseline)', 'robust_kd (dro_tradeoff=0.5)': how tables and plots name it."""
        if self.is_baseline:
            return f"{BASELINE_OBJECTIVE} (baseline)"
        return self.objective + (f" ({self._pairs(', ')})" if self.params else "")

    @property
    def is_baseline(self) -> bool:
        return self.objective == BASELINE_OBJECTIVE and not self.params

    def _pairs(self, sep: str) -> str:
        return sep.join(f"{name}={value_text(value)}" for name, value in self.params)

    def to_dict(self) -> dict:
        return {"objective": self.objective, "settings": dict(self.params)}


BASELINE = Setting(BASELINE_OBJECTIVE)


def value_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def nearest(word: str, options) -> str:
    """' (did you mean X?)' for the closest option, or ''."""
    close = difflib.get_close_matches(word, list(options), 1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_setting_specs(specs: list[str]) -> dict[str, dict[str, list[str]]]:
    """``['robust_kd:dro_tradeoff=0.25,0.5', ...]`` -> {objective: {name: [raw values]}}, in the given order."""
    parsed: dict[str, dict[str, list[str]]] = {}
    for spec in specs or []:
        objective, colon, rest = spec.partition(":")
        name, equals, values = rest.partition("=")
        objective, name = objective.strip(), name.strip()
        raw = [v.strip() for v in values.split(",")]
        if not colon or not equals or not objective or not name or not all(raw):
            raise ValueError(
                f"--settings {spec!r}: write OBJECTIVE:NAME=VALUE[,VALUE...], e.g. robust_kd:dro_tradeoff=0.25,0.5."
            )
        if name in parsed.setdefault(objective, {}):
            raise ValueError(
                f"--settings gives {objective}:{name} twice; list every value in one: {objective}:{name}=A,B."
            )
        parsed[objective][name] = raw
    return parsed


def check_objective_names(objectives: list[str]) -> list[str]:
    """The objectives, deduplicated in order, each a registered student objective (else the nearest is named)."""
    from ..objectives import student_objectives, teacher_objectives

    students = student_objectives()
    out = []
    for name in objectives:
        if name in teacher_objectives():
            raise ValueError(
                f"--objectives {name!r} is a teacher objective: the comparison trains its one teacher with "
                f"--teacher_objective {name} (or takes one with --teacher_model_name_or_path). Student objectives: "
                f"{', '.join(students)}."
            )
        if name not in students:
            raise ValueError(
                f"--objectives: no objective named {name!r}{nearest(name, students)}. Student objectives: "
                f"{', '.join(students)}."
            )
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("--objectives: give at least one objective, e.g. --objectives ce kd robust_kd.")
    return out


def _setting_fields(objective_cls) -> tuple[list[str], list[str]]:
    """(the objective's flags, the fields of its own settings_class)."""
    own = getattr(objective_cls, "settings_class", None)
    own_fields = [f.name for f in dataclasses.fields(own) if f.init] if own is not None else []
    return list(objective_cls.param_names), own_fields


def _typed(objective: str, name: str, raw: list[str], own: bool) -> list:
    """The values of one setting typed as the command line would type the flag (own settings stay text: the
    objective's settings class converts and checks them when the arguments are built)."""
    if own:
        return list(raw)
    from transformers import HfArgumentParser

    from ..config import DistillationArguments
    from ..run.argument_files import typed_value

    action = next(a for a in HfArgumentParser(DistillationArguments)._actions if a.dest == name)
    several = action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1)
    if several:
        raise ValueError(f"--settings {objective}:{name} takes a list; sweep single-valued settings only.")
    return [typed_value(action, value, where=f"--settings {objective}:{name}") for value in raw]


def expand_settings(objectives: list[str], specs: list[str]) -> list[Setting]:
    """Every setting to compare, baseline first, then per objective (in the given order) the product of its
    settings' values. Refuses unknown objectives and settings, naming the nearest valid one."""
    from ..objectives import get_objective

    objectives = check_objective_names(objectives)
    if [str(s).lower() for s in specs] == ["none"]:  # a config file's settings turned off on the command line
        specs = []
    parsed = parse_setting_specs(specs)
    for objective in parsed:
        if objective not in objectives:
            raise ValueError(
                f"--settings for {objective!r}, which is not in --objectives {' '.join(objectives)}"
                f"{nearest(objective, objectives)}."
            )
    settings = [BASELINE]
    for objective in objectives:
        given = parsed.get(objective, {})
        flags, own = _setting_fields(get_objective(objective))
        sweeps = []
        for name, raw in given.items():
            if name not in flags and name not in own:
                known = flags + own
                reads = ", ".join(known) if known else "no settings"
                raise ValueError(
                    f"--settings {objective}:{name}: objective {objective!r} has no setting {name!r}"
                    f"{nearest(name, known)}; it reads {reads}."
                )
            sweeps.append([(name, v) for v in _typed(objective, name, raw, own=name in own)])
        for combo in itertools.product(*sweeps):
            setting = Setting(objective, tuple(sorted(combo, key=lambda p: p[0])))
            if setting not in settings:
                settings.append(setting)
    return settings


def run_arguments(args, setting: Setting, seed: int, output_dir: str):
    """The training arguments of one run of ``setting``: the base arguments with its objective, settings, seed
    and folder; never a push of its own (the comparison publishes once, at the end)."""
    from ..objectives import get_objective

    flags, _ = _setting_fields(get_objective(setting.objective))
    changes = {name: value for name, value in setting.params if name in flags}
    own = {name: value for name, value in setting.params if name not in flags}
    if own:
        changes["objective_settings"] = own
    elif "objective_settings" in {f.name for f in dataclasses.fields(args)}:
        changes["objective_settings"] = None  # the base arguments' settings belong to their own objective
    return dataclasses.replace(
        args,
        objective=setting.objective,
        seed=seed,
        output_dir=output_dir,
        push_to_hub=False,
        resume_from_checkpoint=None,
        **changes,
    )


def check_settings(args, settings: list[Setting], seeds: list[int]) -> None:
    """Build every setting's arguments now, so a value its objective refuses (dro_tradeoff=2, dro_groups=group
    without --group_columns) fails before anything trains, named by its setting."""
    if not seeds:
        raise ValueError("--seeds: give at least one seed, e.g. --seeds 0 1 2.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {' '.join(map(str, seeds))}: each seed once.")
    for setting in settings:
        try:
            run_arguments(args, setting, seeds[0], args.output_dir)
        except ValueError as err:
            raise ValueError(f"{setting.label}: {err}") from None


def resolve_rule(rule: str, has_groups: bool) -> str:
    if rule == "auto":
        return "best_worst_group" if has_groups else "best_worst_class"
    if rule == "best_worst_group" and not has_groups:
        raise ValueError(
            "--choose best_worst_group needs groups of the data: pass --group_columns COLUMN, or choose "
            "best_worst_class or best_overall."
        )
    if rule not in RULES:
        raise ValueError(f"--choose {rule!r}{nearest(rule, RULES)}: use one of {', '.join(RULES)}.")
    return rule
