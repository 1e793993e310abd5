"""`DistillationArguments`: the training arguments plus every distillation switch, validated up front."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from transformers import TrainingArguments

KD_CONVENTIONS = ("hinton", "mix")
TEACHER_LOGIT_MODES = ("raw", "prior_adjusted", "shift")
TEACHER_DTYPES = ("float32", "float16", "bfloat16")
TEACHER_SHARDINGS = ("auto", "shard", "replicate")
LEVELS = ("class", "instance")
ADA_ALPHA_MAPPINGS = ("linear", "normalized", "threshold")
INSTANCE_ALPHA_MODES = ("prob", "correct")
MARGIN_TARGETS = ("one_hot", "both")
BALANCED_FORMS = ("logit_adjusted", "reweighted", "posthoc")
DRO_BASES = ("prior", "uniform")
DRO_ERROR_WEIGHTINGS = ("label", "teacher")
DRO_GROUPINGS = ("class", "group", "class_x_group")
RELIABILITY_GROUPINGS = ("class", "class_x_group")


def _choice(help_text: str, choices: tuple[str, ...]) -> dict:
    return {"help": help_text, "choices": list(choices)}


@dataclass
class DistillationArguments(TrainingArguments):
    """Arguments for `DistillationTrainer`. Every distillation field is checked in `__post_init__`, before any
    model or data is touched, so a typo costs an error message and not a training run."""

    objective: str = field(
        default="kd",
        metadata={
            "help": "Student (or teacher) objective; see `hf_fairkd.objectives` for the registered names."
        },
    )
    objective_settings: dict | str | None = field(
        default=None,
        metadata={
            "help": "The objective's own settings, declared by its settings_class (the built-in objectives declare "
            "none: their options are the flags here). On the command line key=value pairs separated by commas "
            "(--objective_settings every=5,warmup=2) or a JSON object ('{\"every\": 5}'); in YAML or Python a "
            "mapping. Converted to the declared types and checked before any training (an unknown key names the "
            "nearest declared one). An objective's settings: python -c \"from hf_fairkd.objectives.base import "
            "objective_settings_help as h; print(h('NAME'))\"."
        },
    )
    alpha: float = field(
        default=0.5,
        metadata={"help": "Weight of the teacher in [0, 1] (the maximum weight for `ada_alpha`)."},
    )
    temperature: float = field(
        default=2.0, metadata={"help": "Softmax temperature T applied to the teacher."}
    )
    kd_convention: str = field(
        default="hinton",
        metadata=_choice(
            "'hinton': (1-a) CE(e_y, s) + a T^2 KL(p_t || softmax_T(s)); 'mix': CE((1-a) e_y + a p_t, s) with the "
            "temperature on the teacher only (the form used by Menon et al. and Wang et al.). Logit offsets "
            "(balanced_kd, robust_kd, ada_margin) are on the temperature-1 scale: the Hinton term uses "
            "softmax(s/T + offset). kd_sim's targets carry their own temperature (kd_sim_rho): its Hinton term "
            "uses T=1 and no T^2.",
            KD_CONVENTIONS,
        ),
    )
    teacher_logit_mode: str = field(
        default="raw",
        metadata=_choice(
            "How teacher scores become targets: 'raw' t; 'prior_adjusted' t - tau*log(pi); 'shift' t + a "
            "user vector. Teacher reliability (ada_alpha, ada_margin) is measured on these same adjusted logits.",
            TEACHER_LOGIT_MODES,
        ),
    )
    teacher_logit_tau: float = field(
        default=1.0, metadata={"help": "tau for teacher_logit_mode='prior_adjusted'."}
    )
    teacher_logit_shift: list[float] | None = field(
        default=None, metadata={"help": "One additive value per class for teacher_logit_mode='shift'."}
    )
    teacher_dtype: str = field(
        default="float32",
        metadata=_choice(
            "Precision the frozen teacher runs in (targets are always computed in float32).", TEACHER_DTYPES
        ),
    )
    teacher_sharding: str = field(
        default="auto",
        metadata=_choice(
            "Where the online teacher's weights live under several processes. 'auto': like the student's, i.e. "
            "sharded under FSDP (the student's FSDP version, units and reshard setting) and under DeepSpeed ZeRO-3 "
            "(an engine of its own, as TRL's prepare_deepspeed), one full copy per process otherwise (DDP, "
            "ZeRO-1/2: a ZeRO stage-0 engine, one process); 'shard': sharded (FSDP or ZeRO-3 only, else an "
            "error); 'replicate': one full copy on every process (no wrapper). A sharded teacher's every forward "
            "gathers its weights over the processes. The bytes held are logged at start-up "
            "(`trainer.teacher_source.memory`). A cached teacher is not run at all during training.",
            TEACHER_SHARDINGS,
        ),
    )
    teacher_topk_fill: str = field(
        default="spread",
        metadata=_choice(
            "With a top-k teacher cache, how the m-k missing logits are filled. 'spread': every missing class "
            "gets the logit v with (m-k) exp(v) = the stored mass outside the top k (exact softmax at T=1, then "
            "tempered like any logits; measured within a point of a dense cache at T=1, 2, 4). 'renormalize': "
            "drop the tail, softmax is the top-k distribution renormalised (warns at the temperatures where it "
            "was measured to cost accuracy; see benchmarks/README.md).",
            ("spread", "renormalize"),
        ),
    )
    # ada_alpha (Lukasik et al.)
    ada_alpha_level: str = field(
        default="class", metadata=_choice("Adapt the teacher weight per class or per example.", LEVELS)
    )
    ada_alpha_mapping: str = field(
        default="linear",
        metadata=_choice(
            "Class level: map the teacher's holdout recall r_y to a weight.", ADA_ALPHA_MAPPINGS
        ),
    )
    ada_alpha_threshold: float = field(
        default=0.5, metadata={"help": "r0 for ada_alpha_mapping='threshold': a_y = alpha * 1[r_y >= r0]."}
    )
    ada_alpha_instance_mode: str = field(
        default="prob",
        metadata=_choice(
            "Instance level: 'prob' a(x) = alpha * p_t(y|x) at T=1; 'correct' a(x) = alpha * 1[argmax t(x) = y], "
            "both on the teacher logits after teacher_logit_mode.",
            INSTANCE_ALPHA_MODES,
        ),
    )
    reliability_pseudo_count: float = field(
        default=1.0,
        metadata={
            "help": "Shrink the teacher's per-class holdout recall toward its overall recall by this many virtual "
            "examples, so classes with few holdout examples do not get a recall of exactly 0 or 1."
        },
    )
    # ada_margin (Lukasik et al.)
    margin_level: str = field(
        default="class",
        metadata=_choice(
            "'class': D_yj = g*(u_y - u_j), u = holdout error; 'instance': D_yj(x) = g*(t_j(x) - t_y(x)).",
            LEVELS,
        ),
    )
    margin_scale: float = field(default=1.0, metadata={"help": "g, the scale of the margins."})
    margin_on: str = field(
        default="one_hot",
        metadata=_choice("Apply the margins to the one-hot term only, or to both terms.", MARGIN_TARGETS),
    )
    # balanced (Wang et al.); also the 'balanced' teacher objective
    balanced_form: str = field(
        default="logit_adjusted",
        metadata=_choice(
            "'logit_adjusted': CE(q, s + tau*log(pi)); 'reweighted': CE(q, s) weighted by 1/(m*pi_y); 'posthoc' "
            "(teacher objective 'balanced' only): train with plain CE, then subtract tau*log(pi) from the "
            "classifier bias so the saved model predicts balanced.",
            BALANCED_FORMS,
        ),
    )
    logit_adjustment_tau: float = field(default=1.0, metadata={"help": "tau of the logit adjustment."})
    # robust_kd / dro (Wang et al.)
    dro_tradeoff: float = field(
        default=1.0,
        metadata={
            "help": "b in [0, 1]: class weights w = (1-b)*base + b*lambda (0: base objective, 1: worst class)."
        },
    )
    dro_base: str = field(
        default="prior", metadata=_choice("The base weights the trade-off starts from.", DRO_BASES)
    )
    dro_tau: float = field(default=1.0, metadata={"help": "tau in c_y = w_y / pi_y^tau."})
    dro_step_size: float = field(
        default=0.1, metadata={"help": "eta of the exponentiated-gradient step on lambda."}
    )
    dro_update_every: int = field(
        default=32, metadata={"help": "K: update lambda every K optimisation steps."}
    )
    dro_error_weighting: str = field(
        default="label",
        metadata=_choice(
            "Per-class errors on the holdout from labels, or weighted by the teacher's probabilities (helps classes "
            "with very few holdout examples; robust_kd only: the dro teacher has no teacher).",
            DRO_ERROR_WEIGHTINGS,
        ),
    )
    dro_holdout_batch_size: int = field(
        default=256,
        metadata={"help": "Holdout examples drawn for each lambda update (all of them if fewer)."},
    )
    dro_groups: str = field(
        default="class",
        metadata=_choice(
            "What robust_kd / the dro teacher reweight: 'class' (class-DRO, Wang et al.), 'group' (the groups of "
            "group_columns, their intersection when several: group DRO, Sagawa et al.) or 'class_x_group' (every "
            "class x group cell).",
            DRO_GROUPINGS,
        ),
    )
    dro_group_adjustment: float = field(
        default=0.0,
        metadata={
            "help": "C of group DRO's size adjustment: C / sqrt(n_g) is added to a group's holdout error before each "
            "update (n_g its training count); 0 = off."
        },
    )
    reliability_groups: str = field(
        default="class",
        metadata=_choice(
            "Where ada_alpha / ada_margin (class level) measure the teacher's holdout reliability: per 'class', or "
            "per 'class_x_group' cell (smoothed toward its class by reliability_pseudo_count).",
            RELIABILITY_GROUPINGS,
        ),
    )
    # subgroups that are attributes of the data
    group_columns: list[str] | None = field(
        default=None,
        metadata={
            "help": "Dataset columns whose values are subgroups (site, camera, skin tone ...): evaluated per group "
            "and per class x group cell, and reweighted by dro_groups='group' / 'class_x_group'. The recipes' "
            "embedded digits default to 'stroke'; 'none': no groups."
        },
    )
    max_group_values: int = field(
        default=100,
        metadata={"help": "A group column with more distinct values than this is refused (an id, not a group)."},
    )
    # Tang et al. diagnostics
    label_smoothing_epsilon: float = field(
        default=0.1, metadata={"help": "eps for objective 'label_smoothing'."}
    )
    kd_sim_rho: float = field(
        default=1.0, metadata={"help": "Temperature of the class-similarity targets of objective 'kd_sim'."}
    )

    # evaluation logs
    per_class_eval_metrics: str = field(
        default="auto",
        metadata=_choice(
            "Per-class eval scalars (eval_accuracy_class/<name>) in the Trainer's logs: 'auto' only when the "
            "student has at most per_class_eval_max_classes classes, 'always', or 'never'. The summary scalars "
            "(accuracy, balanced, worst-class, worst-k, many/medium/few, groups) are always logged.",
            ("auto", "always", "never"),
        ),
    )
    per_class_eval_max_classes: int = field(
        default=50,
        metadata={"help": "Largest number of classes for which per_class_eval_metrics='auto' logs them."},
    )

    def __post_init__(self):
        super().__post_init__()
        from .objectives import OBJECTIVES  # imported here: objectives import nothing from config

        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"Unknown objective {self.objective!r}. Registered objectives: {', '.join(sorted(OBJECTIVES))}."
            )
        from .objectives.settings import given_settings

        # typed, of the given keys only (None: none given); the objective fills in its defaults (`self.settings`)
        self.objective_settings = given_settings(
            OBJECTIVES[self.objective], self.objective_settings, reserved=self.__dataclass_fields__
        )
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(
                f"alpha must be in [0, 1], got {self.alpha}. It is the teacher's weight in the loss."
            )
        if not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0, got {self.temperature}. Use 1.0 for the plain softmax."
            )
        if not 0.0 <= self.dro_tradeoff <= 1.0:
            raise ValueError(f"dro_tradeoff must be in [0, 1], got {self.dro_tradeoff}.")
        if self.per_class_eval_max_classes < 0:
            raise ValueError(
                f"per_class_eval_max_classes must be >= 0, got {self.per_class_eval_max_classes}."
            )
        if self.dro_update_every < 1:
            raise ValueError(f"dro_update_every must be >= 1, got {self.dro_update_every}.")
        if self.dro_holdout_batch_size < 1:
            raise ValueError(f"dro_holdout_batch_size must be >= 1, got {self.dro_holdout_batch_size}.")
        if not self.dro_step_size > 0:
            raise ValueError(f"dro_step_size must be > 0, got {self.dro_step_size}.")
        if not 0.0 <= self.label_smoothing_epsilon <= 1.0:
            raise ValueError(
                f"label_smoothing_epsilon must be in [0, 1], got {self.label_smoothing_epsilon}."
            )
        if self.kd_sim_rho <= 0 or self.reliability_pseudo_count < 0:
            raise ValueError("kd_sim_rho must be > 0 and reliability_pseudo_count >= 0.")
        # every field declared with `_choice(...)` is checked against its own choices: one table, the fields
        for spec in dataclasses.fields(DistillationArguments):
            allowed = spec.metadata.get("choices")
            if allowed and spec.name not in TrainingArguments.__dataclass_fields__:
                if getattr(self, spec.name) not in allowed:
                    raise ValueError(
                        f"{spec.name}={getattr(self, spec.name)!r} is not one of {', '.join(allowed)}."
                    )
        if self.dro_group_adjustment < 0:
            raise ValueError(f"dro_group_adjustment must be >= 0 (0 = off), got {self.dro_group_adjustment}.")
        if self.max_group_values < 1:
            raise ValueError(f"max_group_values must be >= 1, got {self.max_group_values}.")
        if self.group_columns is not None:
            if isinstance(self.group_columns, str):
                self.group_columns = [self.group_columns]
            self.group_columns = [c for c in self.group_columns if c.lower() != "none"] or None
        if not self.group_columns:
            needs = [
                f"{flag}={getattr(self, flag)!r}"
                for flag in ("dro_groups", "reliability_groups")
                if getattr(self, flag) in ("group", "class_x_group")
            ]
            if needs:
                raise ValueError(
                    f"{' and '.join(needs)} reweights groups of the data, but no group_columns were given: pass "
                    "--group_columns <column> [<column> ...] (the dataset's attribute columns, e.g. site), or use "
                    "'class'."
                )
        if self.teacher_logit_mode == "shift" and not self.teacher_logit_shift:
            raise ValueError("teacher_logit_mode='shift' needs teacher_logit_shift (one value per class).")
        objective_cls = OBJECTIVES[self.objective]
        if (
            self.dro_error_weighting == "teacher"
            and "dro_error_weighting" in objective_cls.param_names
            and not objective_cls.uses_teacher
        ):
            raise ValueError(
                f"dro_error_weighting='teacher' weights the class-DRO holdout errors by a teacher's probabilities, "
                f"but objective={self.objective!r} trains a teacher and has no teacher to ask (training would stop "
                "at the first lambda update). Use dro_error_weighting='label' with this objective, or "
                "objective='robust_kd' to distil a student with teacher-weighted errors."
            )
        if self.balanced_form == "posthoc" and self.objective != "balanced":
            raise ValueError("balanced_form='posthoc' is a teacher option: use it with objective='balanced'.")
        if self.label_smoothing_factor:
            raise ValueError(
                "label_smoothing_factor is the stock Trainer's option and is ignored by DistillationTrainer; use "
                "objective='label_smoothing' with label_smoothing_epsilon instead."
            )

    def resolved_objective_settings(self) -> dict:
        """Every setting the chosen objective declares (``settings_class``), given or default, for records and resume
        fingerprints; empty for an objective that declares none (every built-in one)."""
        from .objectives import OBJECTIVES
        from .objectives.settings import resolved_settings

        return resolved_settings(OBJECTIVES[self.objective], self.objective_settings)

    def objective_params(self) -> dict:
        """The settings that define the chosen objective, for cards and metrics files (no secrets here)."""
        from .objectives import OBJECTIVES

        names = OBJECTIVES[self.objective].param_names
        return {name: getattr(self, name) for name in names}
