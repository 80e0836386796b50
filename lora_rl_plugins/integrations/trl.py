"""TRL ``GRPOTrainer`` integration: one callback, added with one line.

    trainer = GRPOTrainer(model=..., reward_funcs=..., args=..., peft_config=...)
    trainer.add_callback(LoraRLCallback(trainer))       # the one added line
    trainer.train()

Like TRL's own ``LogCompletionsCallback(trainer)``, the callback takes the trainer because
transformers callbacks never receive it. It sees each generation batch's rewards exactly once by
wrapping the trainer's ``_calculate_rewards`` (which returns every process's rewards, gathered,
in global order: TRL 1.6 to 1.x, checked when the callback is built, see
``lora_rl_plugins.bridge.trl_contract``), and hands its metrics to TRL's own metric store, so they are averaged
like TRL's ``reward`` and reach ``trainer.state.log_history`` and every ``report_to`` backend.
Its state is saved in checkpoints through transformers' ``ExportableState`` (see
``LoraRLCheckpointState``) and restored on resume. The run itself (plugins, run log, decisions, state)
is ``lora_rl_plugins.bridge.session.RunSession``; generation plumbing is ``integrations.trl_generation``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState, PrinterCallback, ProgressCallback

from lora_rl_plugins.bridge.options import PluginOptions, option_documentation
from lora_rl_plugins.bridge.session import RunSession
from lora_rl_plugins.bridge.trl_contract import check_trainer_class, check_trl_grpo_trainer, grpo_settings
from lora_rl_plugins.integrations.trl_generation import filter_groups, install_prompt_sampler
from lora_rl_plugins.kl.kl_free import check_kl_free
from lora_rl_plugins.plugin.collective import TensorCollective
from lora_rl_plugins.plugin.events import RolloutsScored, RunStarted
from lora_rl_plugins.plugin.host import PluginHost
from lora_rl_plugins.plugin.services import BatchFilter, PromptSampler

__all__ = [
    "LoraRLCallback",
    "LoraRLCheckpointState",
    "accelerate_collective",
    "grpo_settings",
    "logs_after_step",
    "publish_metrics",
]


def accelerate_collective(accelerator: Any) -> TensorCollective:
    """Cross-process sums and maxima through the trainer's ``accelerate.Accelerator``."""
    from accelerate.utils import gather_object

    return TensorCollective(
        accelerator.gather, accelerator.device, accelerator.num_processes, accelerator.process_index, gather_object
    )


class LoraRLCheckpointState(TrainerCallback, ExportableState):
    """Carries the plugins' state into ``trainer_state.json`` at every checkpoint.

    A separate, argument-free callback so that transformers can rebuild it on resume when
    ``restore_callback_states_from_checkpoint=True``; ``LoraRLCallback`` restores from it either way.
    """

    def __init__(self) -> None:
        self.plugin_state: dict[str, Any] = {}
        self.session: RunSession | None = None

    def state(self) -> dict:
        if self.session is not None:
            self.plugin_state = self.session.state()
        return {"args": {}, "attributes": {"plugin_state": self.plugin_state}}

    def restore(self, trainer: Any, session: RunSession, state: TrainerState) -> LoraRLCheckpointState:
        """At ``on_train_begin``: restore ``session`` from the plugin state saved in ``state`` (a resumed run) and
        return the holder that now carries it: the one among the trainer's callbacks (transformers rebuilds it on
        resume), or this one, put back when transformers removed it."""
        holder = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, LoraRLCheckpointState)), None)
        if holder is None:
            holder = self
            trainer.add_callback(holder)
        holder.session = session
        saved = (state.stateful_callbacks or {}).get(type(holder).__name__)
        if isinstance(saved, list):
            saved = saved[-1]
        session.restore((saved or {}).get("attributes", {}).get("plugin_state") or {})
        return holder


def publish_metrics(trainer: Any, metrics: Mapping[str, float], averaged: AbstractSet[str] = frozenset()) -> None:
    """Put ``metrics`` into TRL's metric store (``trainer._metrics["train"]``): the ``averaged`` ones (per-step
    metrics) are appended, so TRL averages them over the logging window as it averages its own; the others
    replace the previous value."""
    store = trainer._metrics["train"]
    for name, value in metrics.items():
        if name in averaged:
            store[name].append(value)
        else:
            store[name] = [value]


def logs_after_step(args: TrainingArguments, control: TrainerControl) -> bool:
    """Whether the trainer may log after this step: the plugins' metrics are collected only then.

    transformers' ``DefaultFlowCallback`` (the first callback) has set ``should_log`` and
    ``should_training_stop`` for this step before any later callback's ``on_step_end``; under a logging
    strategy other than "steps" the log comes at an epoch's end, so every step is collected."""
    return args.logging_strategy != "steps" or control.should_log or control.should_training_stop


class LoraRLCallback(TrainerCallback):
    """Information-bandwidth accounting, KL monitor and adapter checks for a TRL ``GRPOTrainer``.

    Args:
        trainer: the ``GRPOTrainer`` to observe.
        live_view: show the plugins' headline numbers (signal bits, capacity used, KL) in the
            progress bar at the logging interval.
        **options: the options below (``lora_rl_plugins.bridge.options.PluginOptions``).

    Raises:
        TypeError: ``trainer`` is not a ``GRPOTrainer`` or a subclass that keeps its advantages (RLOOTrainer and
            the other TRL online trainers are refused with the reason: ``bridge.trl_contract.check_trainer_class``),
            or an option is unknown.
        UnsupportedTRLError: the installed TRL is outside ``SUPPORTED_TRL`` (">=1.6,<2") or its
            ``GRPOTrainer`` lacks an internal the callback relies on (the message lists them).
        ValueError: an option's value is invalid (the message names it); TypeError for a wrong type.
        KLFreeError: ``kl_free=True`` with settings that contradict it.
        NotALoraModelError, VLLMLoRAError: see ``PluginOptions.check_model`` (raised here, not at ``train()``).
    """

    def __init__(self, trainer: Any, *, live_view: bool = True, **options: Any) -> None:
        import trl
        from trl.trainer.grpo_trainer import GRPOTrainer

        check_trainer_class(trainer, (trl.GRPOTrainer, GRPOTrainer))  # trl.GRPOTrainer: Unsloth's patched one too
        check_trl_grpo_trainer(trainer, trl.__version__)
        self.trainer, self.live_view = trainer, live_view
        self.options = PluginOptions(**options)
        self.kl_free = self.options.kl_free
        if self.kl_free:
            peft_config = getattr(trainer.accelerator.unwrap_model(trainer.model), "peft_config", None) or {}
            check_kl_free(
                beta=trainer.beta,
                sync_ref_model=bool(getattr(trainer.args, "sync_ref_model", False)),
                reference_model=getattr(trainer, "ref_model", None),
                reference_adapter="ref" in peft_config,
            )
        self.options.check_model(trainer.accelerator.unwrap_model(trainer.model))  # refusals now, not at train()
        self.session = RunSession(self.options, source="trl")
        self.checkpoint_state = LoraRLCheckpointState()
        self.checkpoint_state.session = self.session
        trainer.add_callback(self.checkpoint_state)
        self._scored: RolloutsScored | None = None
        self._filter: BatchFilter | None = None
        self._generation_started: float | None = None
        self._wrap_reward_calculation(trainer)
        self._wrap_generation(trainer)
        sampler = self.session.service(PromptSampler)
        if sampler is not None:
            install_prompt_sampler(trainer, sampler)

    @property
    def host(self) -> PluginHost:
        """The session's plugin host."""
        return self.session.host

    # -- trainer events -> the session -----------------------------------------------------------
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.checkpoint_state = self.checkpoint_state.restore(self.trainer, self.session, state)
        trainer = self.trainer
        run = RunStarted(
            framework="trl",
            group_size=trainer.num_generations,
            total_steps=state.max_steps or None,
            world_size=trainer.accelerator.num_processes,
            grpo=grpo_settings(trainer),
        )
        self._model = trainer.accelerator.unwrap_model(trainer.model)  # unwrapping costs ~ms: once
        self._collective = accelerate_collective(trainer.accelerator)
        # The engine's wrapper (DDP, FSDP1 root, DeepSpeed engine), for sharded parameters: see lora.sharding.
        self._engine_model = getattr(trainer, "model_wrapped", None)
        self.session.start(
            run,
            self._model,
            engine_model=self._engine_model,
            tokenizer=getattr(trainer, "processing_class", None),
            log_dir=args.output_dir,
            resume_step=state.global_step,
            main_process=state.is_world_process_zero,
        )
        self._filter = self.session.service(BatchFilter)
        if self._filter is not None:
            self._filter.begin()  # refuses settings the filter cannot apply to, before any generation

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        decision = self.session.step_ended(
            state.global_step, state.max_steps or None, collect=logs_after_step(args, control)
        )
        if decision.stop is not None:
            control.should_training_stop = True
        publish_metrics(self.trainer, decision.console, decision.averaged)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: Any = None, **kwargs: Any
    ) -> None:
        """The run log (``lora_rl_metrics.jsonl``: the trainer's logs and the detail metrics), and the live view:
        the session's short postfix in the progress bar or, when the bar is off, a printed line."""
        if logs:
            self.session.log(state.global_step, logs)
        if not self.live_view or not state.is_local_process_zero or "train_runtime" in (logs or {}):
            return
        postfix = self.session.postfix()
        if not postfix:
            return
        callbacks = self.trainer.callback_handler.callbacks
        bar = next((cb.training_bar for cb in callbacks if isinstance(cb, ProgressCallback) and cb.training_bar), None)
        if bar is not None:
            bar.set_postfix_str(postfix)  # refreshed now: the bar shows the values the log line shows
        elif any(isinstance(cb, PrinterCallback) for cb in callbacks):
            print(f"lora-rl step {state.global_step}: {postfix}")

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.session.end()
        # the final plugin state (the per-prompt ledger) reaches trainer_state.json even without checkpoints
        state.stateful_callbacks[type(self.checkpoint_state).__name__] = self.checkpoint_state.state()

    # -- wrapped trainer internals ---------------------------------------------------------------
    def _wrap_reward_calculation(self, trainer: Any) -> None:
        original = trainer._calculate_rewards

        def calculate_rewards(inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Any:
            rewards_per_func = original(inputs, prompts, completions, completion_ids_list)
            if trainer.model.training:  # evaluation rollouts train nothing
                started, self._generation_started = self._generation_started, None
                self._scored = self.session.rollouts_scored(
                    self._collective,
                    step=trainer.state.global_step + 1,
                    rewards=rewards_per_func.float().cpu().tolist(),
                    rewards_gathered=True,  # TRL's _calculate_rewards returns every process's rewards
                    reward_names=list(trainer.reward_func_names),
                    reward_weights=trainer.reward_weights.float().cpu().tolist(),
                    group_size=trainer.num_generations,
                    completions=completions,
                    prompts=prompts,
                    generation_seconds=None if started is None else time.perf_counter() - started,
                )
            return rewards_per_func

        trainer._calculate_rewards = calculate_rewards

    def _wrap_generation(self, trainer: Any) -> None:
        original = trainer._generate_and_score_completions

        def generate(inputs: Any) -> Any:
            self._generation_started = time.perf_counter()
            return original(inputs)

        def generate_and_score_completions(inputs: Any) -> Any:
            if not trainer.model.training:
                return original(inputs)
            beta = self.session.take_kl_beta()
            if beta is not None:  # between generation batches, so every buffered batch has reference log-probs
                trainer.beta = beta
            output = generate(inputs)
            if self._filter is not None:
                output = filter_groups(
                    trainer, self._filter, lambda: generate(inputs), output, lambda: self._scored, self._collective
                )
            self.session.policy_sampled(
                step=trainer.state.global_step + 1,
                model=self._model,
                prompt_ids=output["prompt_ids"],
                prompt_mask=output["prompt_mask"],
                completion_ids=output["completion_ids"],
                completion_mask=output["completion_mask"],
                temperature=trainer.temperature,
                collective=self._collective,
                engine_model=self._engine_model,
            )
            return output

        trainer._generate_and_score_completions = generate_and_score_completions


LoraRLCallback.__doc__ = (
    (LoraRLCallback.__doc__ or "")
    + "    Options:\n"
    + "".join(f"        {doc.name} (default {doc.default}): {doc.doc}.\n" for doc in option_documentation())
)
