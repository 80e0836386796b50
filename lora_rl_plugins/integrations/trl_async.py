"""TRL ``AsyncGRPOTrainer`` integration (``trl.experimental.async_grpo``, TRL 1.16): one callback.

    trainer = AsyncGRPOTrainer(model=..., reward_funcs=..., args=..., peft_config=...)
    LoraRLAsyncCallback(trainer)   # puts itself ahead of TRL's first weight sync (add_callback is harmless)
    trainer.train()

In this trainer a rollout worker (a child process) generates from a vLLM server, scores, and computes each
rollout's advantage itself; the trainer only sees finished ``RolloutSample``s (``advantage``,
``model_version``, ``group_id``, per-function rewards in ``metrics``) pulled from its rollout queue, and drops
those more than ``max_staleness`` policy versions old. So the callback watches that queue:

* every sample the trainer takes is recorded; the ones it drops as stale (TRL 1.16's
  ``RolloutQueueDataset`` rule: ``trainer.model_version - sample.model_version > args.max_staleness`` when
  taken) were generated and thrown away: counted (``async/stale_dropped``, exact) with their share of the
  samples taken (``async/stale_dropped_frac``, exact);
* at each optimizer step the complete groups trained in it become one ``RolloutsScored`` (the stamped rewards;
  advantage settings ``scale_rewards="group"``, ε = 1e-8, the worker's formula, so the bandwidth plugin's
  zero-information groups are exactly the groups whose stamped advantages are all zero), and their sequences
  one ``PolicySample`` for the KL monitor (measured after the step's update);
* before the first weight sync (this callback's ``on_train_begin`` runs ahead of TRL's, which does the sync):
  when the trainer syncs the adapter to the server (``--enable-lora``), the adapter is checked against the
  server's actual LoRA config (``GET /server_info``) with every rule of
  ``lora_rl_plugins.serving.vllm.validate_vllm_lora``; a refusal raises ``VLLMLoRAError`` before any
  weight sync or training step.

The run itself (plugins, run log ``lora_rl_metrics.jsonl`` in ``output_dir``, the quiet console, state in
checkpoints) is ``lora_rl_plugins.bridge.session.RunSession``, as for ``LoraRLCallback``; no math lives here.
Only one process takes samples (TRL's main process); the callback supports one process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from lora_rl_plugins.bridge.options import PluginOptions
from lora_rl_plugins.bridge.session import RunSession
from lora_rl_plugins.integrations.trl import LoraRLCheckpointState, logs_after_step, publish_metrics
from lora_rl_plugins.plugin.collective import SingleProcess
from lora_rl_plugins.plugin.events import RunStarted
from lora_rl_plugins.plugin.grpo import AdvantageSettings, GRPOSettings, SamplingSettings
from lora_rl_plugins.plugin.host import PluginHost
from lora_rl_plugins.plugin.log import logger

__all__ = ["LoraRLAsyncCallback", "server_lora_serving"]

#: ε of the rollout worker's advantage (r - mean) / (std + ε) (trl/experimental/async_grpo/async_rollout_worker.py).
ASYNC_ADVANTAGE_EPSILON = 1e-8


def server_lora_serving(server_info: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``vllm_serving`` option from a vLLM server's ``/server_info`` (its resolved ``lora_config``);
    None when the server runs without ``--enable-lora``."""
    lora = server_info.get("lora_config")
    if not lora:
        return None
    dtype = lora.get("lora_dtype", "auto")
    if isinstance(dtype, str) and dtype.startswith("torch."):
        dtype = "auto"  # the server reports its resolved dtype ("auto" -> the model's): a value it accepted
    serving = {
        "max_lora_rank": lora["max_lora_rank"],
        "max_loras": lora.get("max_loras", 1),
        "max_cpu_loras": lora.get("max_cpu_loras"),
        "lora_dtype": dtype,
    }
    if lora.get("enable_mixed_moe_lora_format") is not None:
        serving["enable_mixed_moe_lora_format"] = bool(lora["enable_mixed_moe_lora_format"])
    return serving


class _WatchedQueue:
    """The trainer's rollout queue, with every sample taken reported to ``on_take``."""

    def __init__(self, queue: Any, on_take: Any) -> None:
        self._queue, self._on_take = queue, on_take

    def get(self, *args: Any, **kwargs: Any) -> Any:
        sample = self._queue.get(*args, **kwargs)
        self._on_take(sample)
        return sample

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


class LoraRLAsyncCallback(TrainerCallback):
    """Information-bandwidth accounting, staleness, KL monitor and the vLLM adapter check for TRL's
    ``AsyncGRPOTrainer``. Options as ``LoraRLCallback``'s (``lora_rl_plugins.bridge.options``), except
    ``sampling`` (the rollout worker picks the prompts).

    Raises:
        TypeError: ``trainer`` is not an ``AsyncGRPOTrainer`` (no rollout queue), or an option is unknown.
        ValueError: an option's value is invalid, ``sampling`` other than "plain", or more than one process.
        VLLMLoRAError: at ``on_train_begin``, before the first weight sync, when the server would refuse the
            adapter.
    """

    def __init__(self, trainer: Any, **options: Any) -> None:
        if not hasattr(trainer, "rollout_queue") or not hasattr(trainer, "model_version"):
            raise TypeError(
                f"LoraRLAsyncCallback needs a trl.experimental.async_grpo.AsyncGRPOTrainer, got "
                f"{type(trainer).__name__}; for trl.GRPOTrainer use lora_rl_plugins.integrations.trl.LoraRLCallback"
            )
        if trainer.accelerator.num_processes != 1:
            raise ValueError(
                "LoraRLAsyncCallback supports one training process (the samples are taken on the main process "
                f"only); this run has {trainer.accelerator.num_processes}"
            )
        self.trainer = trainer
        self.serving_from_server = None
        if getattr(trainer, "_lora_sync", False) and trainer.vllm_client is not None:
            self.serving_from_server = server_lora_serving(trainer.vllm_client.get_server_info())
            if self.serving_from_server is not None:
                if options.get("vllm_serving") is not None:
                    logger.warning(
                        "lora_rl_plugins: the adapter is checked against the vLLM server's own LoRA config %s, not "
                        "the vllm_serving option",
                        self.serving_from_server,
                    )
                options["vllm_serving"] = self.serving_from_server
        self.options = PluginOptions(**options)
        if self.options.learning.sampling != "plain":
            raise ValueError(
                f"sampling={self.options.learning.sampling!r} cannot apply to AsyncGRPOTrainer: its rollout worker "
                "picks the prompts; use sampling='plain'"
            )
        self.session = RunSession(self.options, source="trl_async")
        self.checkpoint_state = LoraRLCheckpointState()
        self.checkpoint_state.session = self.session
        trainer.add_callback(self.checkpoint_state)
        self.taken = 0
        self.dropped = 0
        self._groups: dict[int, list[Any]] = {}  # group_id -> samples kept (a group may straddle two steps)
        self._step_groups: list[list[Any]] = []
        self._started = False
        self._last_step: int | None = None
        # Run ahead of TRL's _TrainBeginCallback (the first weight sync), so the adapter check comes first.
        callbacks = trainer.callback_handler.callbacks
        first_sync = next((i for i, cb in enumerate(callbacks) if type(cb).__name__ == "_TrainBeginCallback"), None)
        if first_sync is None:
            trainer.add_callback(self)
        else:
            callbacks.insert(first_sync, self)
        trainer.rollout_queue = _WatchedQueue(trainer.rollout_queue, self._take)

    @property
    def host(self) -> PluginHost:
        """The session's plugin host."""
        return self.session.host

    # -- trainer events -> the session -----------------------------------------------------------
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._started:  # also added with trainer.add_callback: it is already in place
            return
        self._started = True
        self.checkpoint_state = self.checkpoint_state.restore(self.trainer, self.session, state)
        run = RunStarted(
            framework="trl_async",
            group_size=args.num_generations,
            total_steps=state.max_steps or None,
            world_size=1,
            grpo=GRPOSettings(
                advantage=AdvantageSettings(scale_rewards="group", epsilon=ASYNC_ADVANTAGE_EPSILON),
                sampling=SamplingSettings(temperature=args.temperature),
                beta=0.0,
                weight_sync="vllm_server",
            ),
        )
        self._model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        self._collective = SingleProcess()
        self.session.start(
            run,
            self._model,
            tokenizer=self.trainer.processing_class,
            log_dir=args.output_dir,
            resume_step=state.global_step,
            main_process=state.is_world_process_zero,
        )

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.global_step == self._last_step:  # also added with trainer.add_callback: once per step
            return
        self._last_step = state.global_step
        groups, self._step_groups = self._step_groups, []
        samples = [sample for group in groups for sample in group]
        if samples:
            self._scored(state.global_step, samples)
            self._sampled(state.global_step, samples)
        decision = self.session.step_ended(
            state.global_step, state.max_steps or None, collect=logs_after_step(args, control)
        )
        if decision.stop is not None:
            control.should_training_stop = True
        stale = {  # the adapter's own counts (exact), published at every step
            "async/stale_dropped": float(self.dropped),
            "async/stale_dropped_frac": self.dropped / self.taken if self.taken else math.nan,
        }
        publish_metrics(self.trainer, {**decision.console, **stale}, decision.averaged)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: Any = None, **kwargs: Any
    ) -> None:
        if logs and self._started:
            self.session.log(state.global_step, logs)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._started:
            self._started = False
            self.session.end()
            # the final plugin state reaches trainer_state.json even without checkpoints
            state.stateful_callbacks[type(self.checkpoint_state).__name__] = self.checkpoint_state.state()

    # -- the rollout queue -> the session's events -----------------------------------------------
    def _take(self, sample: Any) -> None:
        """A sample the trainer took from the queue: dropped as stale (TRL's rule) or kept for training."""
        self.taken += 1
        if self.trainer.model_version - sample.model_version > self.trainer.args.max_staleness:
            self.dropped += 1
            return
        group = self._groups.setdefault(sample.group_id, [])
        group.append(sample)
        if len(group) == self.trainer.args.num_generations:
            self._step_groups.append(self._groups.pop(sample.group_id))

    def _scored(self, step: int, samples: list[Any]) -> None:
        names = [key.removeprefix("rewards/") for key in samples[0].metrics if key.startswith("rewards/")]
        self.session.rollouts_scored(
            self._collective,
            step=step,
            rewards=[[_number(s.metrics.get(f"rewards/{name}")) for name in names] for s in samples],
            rewards_gathered=True,
            reward_names=names,
            reward_weights=[1.0] * len(names),  # the worker sums the functions' rewards (nansum)
            group_size=self.trainer.args.num_generations,
            completions=[_text(s.completion) for s in samples],
            prompts=[s.prompt for s in samples],
        )

    def _sampled(self, step: int, samples: list[Any]) -> None:
        """The step's sequences (each sample's ``input_ids`` split where its completion mask starts), prompts
        left-padded and completions right-padded as TRL pads them, to the session for the KL monitor."""
        if not self.session.host.implements("on_policy_sampled"):
            return  # no plugin measures: nothing padded
        import torch
        from torch.nn.utils.rnn import pad_sequence

        prompts, completions, masks = [], [], []
        for s in samples:
            mask = torch.as_tensor(s.completion_mask, dtype=torch.long)
            first = int(mask.nonzero()[0]) if bool(mask.any()) else len(mask)
            ids = torch.as_tensor(s.input_ids, dtype=torch.long)
            prompts.append(ids[:first])
            completions.append(ids[first:])
            masks.append(mask[first:])
        device = self.trainer.accelerator.device

        def pad(rows: list[Any], fill: int = 0, side: str = "right") -> Any:
            return pad_sequence(rows, batch_first=True, padding_value=fill, padding_side=side).to(device)

        def ones(rows: list[Any]) -> list[Any]:
            return [torch.ones(len(row), dtype=torch.long) for row in rows]

        # The trainer's model attends with TRL's tree attention, which needs its packed-batch arguments: the
        # plugins' plain forward passes (the KL monitor's) run with PyTorch's SDPA attention instead.
        config = self._model.config
        attention_implementation, config._attn_implementation = config._attn_implementation, "sdpa"
        try:
            self.session.policy_sampled(
                step=step,
                model=self._model,
                prompt_ids=pad(prompts, self.trainer.processing_class.pad_token_id, "left"),
                prompt_mask=pad(ones(prompts), side="left"),
                completion_ids=pad(completions, self.trainer.processing_class.pad_token_id),
                completion_mask=pad(masks),
                # the completion's own attention: tool-result tokens inside it are attended to, not trained on
                completion_attention=pad(ones(completions)),
                temperature=self.trainer.args.temperature,
                collective=self._collective,
            )
        finally:
            config._attn_implementation = attention_implementation


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _text(completion: Any) -> Any:
    """A completion as text where it is one assistant message (the worker's chat format), else as given."""
    if isinstance(completion, list) and len(completion) == 1 and isinstance(completion[0], Mapping):
        return completion[0].get("content", completion[0])
    return completion
