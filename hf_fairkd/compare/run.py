"""`compare`: the whole comparison of `recipes/compare_objectives.py` — every check before anything trains, the
plan shared through the output folder, the runs, the reports and the one publication."""

from __future__ import annotations

import logging
from pathlib import Path

from ..io_utils import atomic_write_json
from . import runner, sharing
from .plan import base_config, plan_document, plan_runs
from .report import Comparison
from .spec import check_settings, expand_settings, resolve_rule, run_arguments
from .store import RunStore, code_text, write_plan_once

logger = logging.getLogger("hf_fairkd.compare")
PUBLISHED_FILE = "published.json"


def prepare_comparison(model_args, data_args, args, compare_args):
    """Every check of the comparison, before anything trains: objectives and settings (an unknown name is refused
    naming the nearest), each setting's arguments, the data's demands of every objective, the rule, the view-cache
    hook. Returns (settings, rule, plan, plan document)."""
    from ..run import models, preparation

    settings = expand_settings(compare_args.objectives, compare_args.settings)
    check_settings(args, settings, compare_args.seeds)
    rule = resolve_rule(compare_args.choose, has_groups=bool(args.group_columns))
    if model_args.baseline_model_name_or_path:
        raise ValueError(
            "--baseline_model_name_or_path: a comparison trains one baseline per seed (each student is compared "
            "with its own seed's); drop the flag."
        )
    if compare_args.view_cache is None:  # with augmentation, the views are drawn once and shared by default
        compare_args.view_cache = bool(data_args.augment)
    if compare_args.view_cache and not data_args.augment:
        raise ValueError("--view_cache caches augmented views: it needs --augment.")
    models.check_model_arguments(model_args)
    _, info = preparation.load_data(data_args, args.group_columns, args.max_group_values)
    if not model_args.teacher_model_name_or_path:
        preparation.check_objectives({"--teacher_objective": model_args.teacher_objective}, args, info)
    for setting in settings:
        setting_args = run_arguments(args, setting, compare_args.seeds[0], args.output_dir)
        preparation.check_objectives({"--objectives": setting.objective}, setting_args, info)
    # baselines alone (--objectives ce) without the view cache need no teacher; a student's record reports one
    needs_teacher = compare_args.view_cache or any(not s.is_baseline for s in settings)
    plan = plan_runs(
        settings,
        list(compare_args.seeds),
        train_teacher=needs_teacher and not model_args.teacher_model_name_or_path,
        view_cache=compare_args.view_cache,
    )
    return settings, rule, plan, plan_document(plan, base_config(model_args, data_args, args))


def compare(model_args, data_args, args, run_args, compare_args) -> dict:
    """Run (or continue, or help another worker with) the comparison in ``args.output_dir`` and write its
    reports; with ``--push_to_hub``, publish the chosen student once the plan is complete. Returns
    {"comparison": comparison.json's content, "paths": the report files, "new_runs": runs done here,
    "published": the commit URL or None}."""
    from accelerate.utils import broadcast_object_list

    from ..run import checks

    state = checks.start_run()
    settings, rule, plan, document = prepare_comparison(model_args, data_args, args, compare_args)
    output_dir = Path(args.output_dir)
    refusal, source = [None], None
    if state.is_main_process:
        if args.push_to_hub:  # an unreachable Hub or a refused token fails now, not after the training
            from ..results import preflight
            from ..results.hub import output_repo_id

            preflight(output_repo_id(args.hub_model_id, output_dir), args.hub_token, args.hub_private_repo)
        try:
            if compare_args.baselines_from:  # another comparison's baselines, checked before anything trains
                source = sharing.read_source(compare_args.baselines_from, document)
            write_plan_once(output_dir, document)
        except ValueError as err:
            refusal = [str(err)]
    if broadcast_object_list(refusal)[0]:  # every process stops, not only the one that read the plan
        raise ValueError(refusal[0])
    store = RunStore(
        compare_args.runs_dir or output_dir / "runs",
        digest=document["digest"],
        rerun_other_code=compare_args.rerun_other_code,
        stale_claim_hours=compare_args.stale_claim_hours,
    )
    if state.is_main_process:
        logger.info(
            f"[compare] plan {document['digest']}: {len(plan)} runs ({len(settings)} settings x "
            f"{len(compare_args.seeds)} seeds{', teacher' if plan and plan[0].kind == 'teacher' else ''}); "
            f"{sum(store.done(r.key) for r in plan)} already finished; rule {rule}."
        )
    if source is not None:
        sharing.share_baselines(plan, store, compare_args.baselines_from, source, output_dir / "models")
    ctx = runner.RunContext(
        model_args, data_args, args, output_dir, document["digest"], view_cache=compare_args.view_cache
    )
    new_runs = runner.work(
        plan,
        store,
        lambda run: runner.execute(ctx, run),
        max_runs=compare_args.max_runs,
        wait_seconds=compare_args.wait_seconds,
    )
    state.wait_for_everyone()
    comparison = Comparison(plan, store.finished(plan), document, rule)
    result = {"comparison": comparison.to_json(), "paths": {}, "new_runs": new_runs, "published": None}
    if state.is_main_process:
        result["paths"] = comparison.write(output_dir)
        if comparison.other_code:
            logger.warning(
                "[compare] runs of another code version are in the results (listed in comparison.md): "
                + ", ".join(f"{k} ({c})" for k, c in comparison.other_code)
            )
        logger.info(
            f"[compare] {comparison.choice_line()} Reports: {', '.join(map(str, result['paths'].values()))}"
        )
        if args.push_to_hub:
            result["published"] = publish_once(comparison, store, output_dir, args, data_args)
    state.wait_for_everyone()
    return result


def publish_once(comparison: Comparison, store: RunStore, output_dir: Path, args, data_args) -> str | None:
    """Publish the chosen student when the plan is complete, once per plan and repo, whichever worker finishes
    last; None (with the reason logged) when it is not published now."""
    from ..results.hub import output_repo_id
    from .publish import publish_choice

    if not comparison.complete:
        logger.warning(
            f"[compare] Not published: {len(comparison.missing)} planned runs are missing. Run the same command "
            "again (or wait for the other workers) to finish and publish."
        )
        return None
    repo_id = output_repo_id(args.hub_model_id, output_dir)
    marker = output_dir / PUBLISHED_FILE
    stamp = {
        "repo_id": repo_id,
        "plan": comparison.document["digest"],
        "setting": comparison.choice.summary.setting.key,
    }
    if not store.claim("publish"):
        logger.info("[compare] Another worker is publishing the chosen student.")
        return None
    try:
        if marker.exists():
            import json

            done = json.loads(marker.read_text(encoding="utf-8"))
            if all(done.get(k) == v for k, v in stamp.items()):
                logger.info(f"[compare] Already published to {repo_id}: {done.get('commit_url')}.")
                return done.get("commit_url")
        info = publish_choice(comparison, output_dir, args, data_args)
        url = str(getattr(info, "commit_url", info))
        atomic_write_json(
            marker, {**stamp, "commit_url": url, "code": code_text(comparison.to_json()["code"])}
        )
        logger.info(f"[compare] Published {comparison.choice.summary.setting.label} to {repo_id}: {url}")
        return url
    finally:
        store.release("publish")
