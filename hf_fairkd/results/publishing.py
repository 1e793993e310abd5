"""Saving and publishing for `DistillationTrainer`: arguments as JSON, the subgroup card, one Hub commit.

A mixin so the trainer itself holds only the distillation step. Every method overrides a `Trainer`
method, with the reason beside it; the one private override (`_push_from_checkpoint`) is kept because no
public switch turns checkpoint pushes off while `push_to_hub=True`.
"""

from __future__ import annotations

import logging
import os

from hf_fairkd.results.hub import output_repo_id

logger = logging.getLogger(__name__)

TRAINING_ARGS_JSON = "training_args.json"


class PublishingMixin:
    """Mixed into `DistillationTrainer` ahead of `transformers.Trainer`."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the student (and processor) to ``output_dir``, the arguments as JSON with tokens masked
        instead of a pickle. It never publishes: `push_to_hub()` does, once.

        The Trainer's checkpoints come through here too (`_save_checkpoint` calls
        ``save_model(checkpoint_dir, _internal_call=True)``), so no folder gets the pickle.
        """
        # why: the stock one pushes a "Model save" commit (weights + stock card) whenever args.push_to_hub is set,
        # and its `_save` writes `training_args.bin`, a pickle of the arguments that carries `hub_token` in clear
        # and needs unpickling to read; `TrainingArguments.to_dict` masks every `*_token` field.
        super().save_model(output_dir, _internal_call=True)
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        pickled = os.path.join(output_dir, "training_args.bin")
        if os.path.exists(pickled):
            os.remove(pickled)
        from hf_fairkd.io_utils import atomic_write_json

        atomic_write_json(os.path.join(output_dir, TRAINING_ARGS_JSON), self.args.to_dict())

    def create_model_card(
        self, metrics: dict | None = None, card_kwargs: dict | None = None, **kwargs
    ) -> None:
        """Write the subgroup card, metrics file and plot of ``metrics`` (a run record, e.g. the recipe's; without
        one, the student is evaluated on `eval_dataset`). ``card_kwargs`` go to
        `hf_fairkd.results.save_card_and_metrics` (``model_id`` defaults to ``hub_model_id``). Without a record
        or an eval_dataset, the stock Trainer card is written (with ``kwargs``)."""
        # why: the stock card has no per-class results
        # predict() needs every process, so the record comes before the rank-0 check
        record = metrics if metrics is not None else self._metrics_from_eval_dataset()
        if not self.is_world_process_zero():
            return
        if record is None:
            logger.warning("No subgroup metrics and no eval_dataset: writing the generic Trainer model card.")
            super().create_model_card(**kwargs)
            return
        from hf_fairkd.results.card import save_card_and_metrics

        save_card_and_metrics(
            self.args.output_dir, record, **{"model_id": self.args.hub_model_id, **(card_kwargs or {})}
        )

    def _metrics_from_eval_dataset(self) -> dict | None:
        """The run record of the student alone on `eval_dataset` (not a Trainer method)."""
        if self.eval_dataset is None or isinstance(self.eval_dataset, dict):
            return None
        from hf_fairkd.results.schema import build_run_record, run_settings

        output = self.predict(self.eval_dataset)
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        groups = getattr(self, "groups", None)  # the groups of the data (`trainer_groups.RunGroups`)
        values = groups.values_of(self.eval_dataset) if groups is not None else None
        return build_run_record(
            {"student": logits},
            output.label_ids,
            class_names=[str(self.model.config.id2label[i]) for i in range(self.objective.num_classes)],
            train_counts=self.class_counts.long().tolist(),
            settings=run_settings(self.args),
            groups=values,
            group_train_counts=getattr(self, "group_train_counts", None) if values else None,
        )

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Check the Hub and create the repo (run by the constructor when `push_to_hub=True`)."""
        # why: the stock one lets a raw client error (httpx ConnectError, 401) escape the constructor
        from hf_fairkd.results.hub import preflight

        if not self.is_world_process_zero():
            return
        name = output_repo_id(self.args.hub_model_id, self.args.output_dir)
        token = token if token is not None else self.args.hub_token
        private = self.args.hub_private_repo if private is None else private
        self.hub_model_id = preflight(name, token, private, folder=self.args.output_dir)
        self.push_in_progress = None

    def push_to_hub(
        self,
        commit_message: str | None = None,
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        *,
        metrics: dict | None = None,
        card_kwargs: dict | None = None,
        **kwargs,
    ):
        """Save the student, write the card, metrics file and plot, and upload them in ONE commit.

        ``metrics`` and ``card_kwargs`` are those of `create_model_card` (the recipes pass their run record).
        Failures raise `hf_fairkd.results.HubPushError` naming the repo and the fix; the local folder is kept.
        """
        # why: the stock one uploads the stock card and every leftover (teacher/, baseline/, runs/) as they are
        from hf_fairkd.results.hub import push_output_dir

        repo_id = output_repo_id(self.args.hub_model_id, self.args.output_dir)
        self.save_model(_internal_call=True)
        # on every process: it may evaluate, which needs all of them
        self.create_model_card(metrics=metrics, card_kwargs=card_kwargs, **kwargs)
        if not self.is_world_process_zero():
            return None
        return push_output_dir(
            self.args.output_dir,
            repo_id,
            token=token or self.args.hub_token,
            revision=revision or self.args.hub_revision,
            private=self.args.hub_private_repo if private is None else private,
            **({"commit_message": commit_message} if commit_message else {}),
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """No pushes during training. The stock one uploads a pickle of the arguments (`hub_token` in clear),
        the teacher/ and baseline/ folders and half-trained weights without a card; `push_to_hub` publishes the
        finished output in one commit instead."""
        # why private: `_save_checkpoint` calls it whenever `push_to_hub=True`, and no public argument or hook
        # turns checkpoint pushes off (`hub_strategy` only chooses which checkpoints are pushed)
        if not getattr(self, "_said_no_checkpoint_push", False):
            logger.info("Checkpoints are not pushed to the Hub; the finished student is, in one commit.")
            self._said_no_checkpoint_push = True
