"""Running a comparison's runs with the distillation run's own steps (`hf_fairkd.run.distill`), and the worker
loop that takes them from the shared plan.

Every run is in-process: under ``accelerate launch`` all processes of a worker run the same run at the same
time (the main process claims it and tells the others its key), so each run trains with the process group
the launcher set up, exactly as `recipes/distill_vit.py` does. The teacher is trained once (or given), each
seed's baseline once; a student run is `distill` with that teacher and that baseline given, so neither is
retrained and every student is compared with the same baseline of its seed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..io_utils import atomic_write_json
from .plan import BASELINE_KIND, STUDENT, TEACHER, VIEWS, Run
from .spec import BASELINE, run_arguments
from .store import RunStore, code_version, next_run

logger = logging.getLogger("hf_fairkd.compare")
RUN_FORMAT = 1


@dataclass
class RunContext:
    """What every run of one comparison shares."""

    model_args: object
    data_args: object
    args: object  # the base DistillationArguments (each run replaces objective, settings, seed, folder)
    output_dir: Path
    plan_digest: str
    view_cache: bool = False

    @property
    def models_dir(self) -> Path:
        return self.output_dir / "models"

    @property
    def teacher_path(self) -> str:
        given = self.model_args.teacher_model_name_or_path
        return given or str(self.models_dir / TEACHER / "teacher")

    def baseline_path(self, seed: int) -> str:
        return str(self.models_dir / f"baseline--seed{seed}" / "baseline")

    @property
    def views_path(self) -> str:
        return str(self.models_dir / VIEWS)

    def model_dir(self, run: Run) -> str:
        if run.kind == TEACHER:
            return self.teacher_path
        if run.kind == BASELINE_KIND:
            return self.baseline_path(run.seed)
        if run.kind == VIEWS:
            return self.views_path
        return str(self.models_dir / run.file_name)


def _overwrite():
    from ..run.arguments import RunArguments

    return RunArguments(overwrite_output_dir=True)  # a run's own folder: a crashed attempt is written over


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


# --------------------------------------------------------------------------------------- the view cache
def build_views(ctx: RunContext, run: Run) -> dict:
    """With ``--view_cache`` (the default with ``--augment``): every epoch's augmented view of every training row
    drawn once (view seed: the comparison's first seed, the views run's) and the teacher's logits of each, in ``ctx.views_path``
    (`hf_fairkd.run.view_cache`); every baseline and student then trains on those views, and no student runs
    the teacher per step. Built by the main process; the others wait for it."""
    from accelerate import PartialState

    from ..run import distill
    from ..run.view_cache import build_view_cache, view_cache_info
    from ..teacher import label_permutation

    args = run_arguments(ctx.args, BASELINE, run.seed, str(Path(ctx.views_path).parent / "views-run"))
    model_args = dataclasses.replace(ctx.model_args, **teacher_given(ctx))
    prepared = distill.prepare_distillation(model_args, ctx.data_args, args, _overwrite())
    train, teacher = prepared.prepared["train"], prepared.given_teacher
    if _is_main():
        build_view_cache(
            train,
            teacher,
            ctx.views_path,
            epochs=epochs_needed(args, len(train), PartialState().num_processes),
            view_seed=run.seed,
            batch_size=args.per_device_eval_batch_size,
            label_permutation=label_permutation(prepared.student.config.id2label, teacher.config.id2label),
        )
    PartialState().wait_for_everyone()
    info = view_cache_info(ctx.views_path)
    return {"views": {k: info[k] for k in ("epochs", "view_seed", "num_rows", "kind")}}


def epochs_needed(args, rows: int, processes: int) -> int:
    """Whole epochs a run of ``args`` starts on ``rows`` training rows (``max_steps`` wins, as in the Trainer)."""
    import math

    if args.max_steps and args.max_steps > 0:
        batch = args.per_device_train_batch_size * processes * args.gradient_accumulation_steps
        return math.ceil(args.max_steps / max(1, math.ceil(rows / batch)))
    return math.ceil(args.num_train_epochs)


def view_changes(ctx: RunContext) -> dict:
    """The ModelArguments changes that make a baseline or a student train on the views of `build_views`."""
    return {**teacher_given(ctx), "teacher_view_cache": ctx.views_path}


def teacher_given(ctx: RunContext) -> dict:
    """The ModelArguments changes that hand the comparison's teacher (trained by its teacher run, or given) to a
    later run: its folder, and none of the flags that build a teacher here (they would contradict it)."""
    return {"teacher_model_name_or_path": ctx.teacher_path, "teacher_config_name": None, "teacher_image_size": None}


# --------------------------------------------------------------------------------------- one run
def train_teacher(ctx: RunContext, run: Run) -> dict:
    """The one teacher, trained with the distillation run's teacher stage (its objective, epochs, resolution),
    saved with its processor, card and record (so each student's record names its objective)."""
    from ..data.sources import hub_dataset_ids
    from ..results import run_settings, save_card_and_metrics
    from ..run import distill, models, stages

    folder = Path(ctx.teacher_path).parent
    args = run_arguments(ctx.args, BASELINE, run.seed, str(folder))
    prepared = distill.prepare_distillation(ctx.model_args, ctx.data_args, args, _overwrite())
    _, trainer = distill.obtain_teacher(prepared)
    settings = run_settings(
        trainer.args,
        dataset_name=ctx.data_args.dataset_name,
        teacher_model=models.model_description(ctx.model_args, "teacher"),
    )
    record = stages.record_on_test_split({"teacher": trainer}, prepared.prepared, prepared.info, settings)
    if _is_main():
        (trainer.processing_class or prepared.teacher_processor).save_pretrained(ctx.teacher_path)
        save_card_and_metrics(ctx.teacher_path, record, datasets=hub_dataset_ids(ctx.data_args.dataset_name))
    return record


def train_baseline(ctx: RunContext, run: Run) -> dict:
    """The seed's one-hot baseline (the distillation run's baseline stage), its record beside its folder (where
    a reuse with --baseline_model_name_or_path checks the data against it)."""
    from ..results import run_settings
    from ..results.schema import METRICS_FILE
    from ..run import distill, models, stages

    folder = Path(ctx.baseline_path(run.seed)).parent
    args = run_arguments(ctx.args, BASELINE, run.seed, str(folder))
    # no teacher needed, except to check the views the baseline trains on
    model_args = dataclasses.replace(
        ctx.model_args, **(view_changes(ctx) if ctx.view_cache else {"teacher_model_name_or_path": None})
    )
    prepared = distill.prepare_distillation(model_args, ctx.data_args, args, _overwrite())
    _, trainer = distill.obtain_baseline(prepared)
    settings = run_settings(
        trainer.args,
        dataset_name=ctx.data_args.dataset_name,
        student_model=ctx.model_args.student_model_name_or_path
        or models.model_description(ctx.model_args, "student"),
    )
    record = stages.record_on_test_split({"student": trainer}, prepared.prepared, prepared.info, settings)
    if _is_main():
        (trainer.processing_class or prepared.processor).save_pretrained(ctx.baseline_path(run.seed))
        atomic_write_json(folder / METRICS_FILE, record)
    return record


def train_student(ctx: RunContext, run: Run) -> dict:
    """`distill` with the comparison's teacher and the seed's baseline given: only the student trains."""
    from ..run.distill import distill

    changes = {**teacher_given(ctx), "baseline_model_name_or_path": ctx.baseline_path(run.seed)}
    if ctx.view_cache:
        changes.update(view_changes(ctx))
    model_args = dataclasses.replace(ctx.model_args, **changes)
    args = run_arguments(ctx.args, run.setting, run.seed, ctx.model_dir(run))
    return distill(model_args, ctx.data_args, args, _overwrite())


def _cpu_seconds() -> float:
    t = os.times()  # this process and its waited-for children (data-loader workers)
    return t.user + t.system + t.children_user + t.children_system


def execute(ctx: RunContext, run: Run) -> dict:
    """Train and evaluate one run on every process; the run file's content (the main process writes it)."""
    from accelerate.utils import gather_object

    started, cpu = time.time(), _cpu_seconds()
    if run.kind == TEACHER:
        record = train_teacher(ctx, run)
    elif run.kind == BASELINE_KIND:
        record = train_baseline(ctx, run)
    elif run.kind == VIEWS:
        record = build_views(ctx, run)
    elif run.kind == STUDENT:
        record = train_student(ctx, run)
    else:
        raise ValueError(f"Unknown run kind {run.kind!r}.")
    cpu_all = gather_object([_cpu_seconds() - cpu])  # every process's CPU time, summed
    return {
        "format": RUN_FORMAT,
        **run.describe(),
        "plan_digest": ctx.plan_digest,
        "code": code_version(),
        "model_dir": os.path.relpath(ctx.model_dir(run), ctx.output_dir),
        "wall_seconds": round(time.time() - started, 2),
        "cpu_seconds": round(sum(cpu_all), 2),
        "processes": len(cpu_all),
        "worker": {"pid": os.getpid(), "host": socket.gethostname()},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "record": record,
    }


# --------------------------------------------------------------------------------------- the worker loop
def work(plan: list[Run], store: RunStore, run_one, *, max_runs=None, wait_seconds: float = 10.0) -> int:
    """Take runs from the plan until none is left (or ``max_runs`` new ones): the main process claims the next
    ready run and broadcasts its key; every process runs it; the main process writes its file and releases the
    claim. Waits while another worker trains what the remaining runs need. Returns the runs done here."""
    from accelerate.utils import broadcast_object_list

    by_key = {run.key: run for run in plan}
    main, done = _is_main(), 0
    while max_runs is None or done < max_runs:
        decision = [None, False]
        if main:
            run, left = next_run(plan, store)
            decision = [run.key if run else None, left]
        key, left = broadcast_object_list(decision)
        if key is None:
            if not left:
                break
            time.sleep(wait_seconds)  # another worker holds what the remaining runs need
            continue
        run = by_key[key]
        logger.info(f"[compare] {key}: starting.")
        try:
            result = run_one(run)
            if main:
                store.write(key, result)
        finally:
            if main:
                store.release(key)
        done += 1
        if main:
            logger.info(f"[compare] {key}: done in {result.get('wall_seconds', 0):.0f} s.")
    return done
