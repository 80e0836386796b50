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

No math lives here: events are built by ``lora_rl_plugins.bridge.translate``; everything else happens in the
plugins. Only one process takes samples (TRL's main process); the callback supports one process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from lora_rl_plugins.bridge.options import PluginOptions
from lora_rl_plugins.bridge.translate import policy_sample, rollouts_scored, start_run
from lora_rl_plugins.plugin.collective import SingleProcess
from lora_rl_plugins.plugin.events import RunStarted, StepEnded
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
        self.host = self.options.build_host()
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

    # -- trainer events -> hooks ---------------------------------------------------------------
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._started:  # also added with trainer.add_callback: it is already in place
            return
        self._started = True
        trainer = self.trainer
        run = RunStarted(
            framework="trl_async",
            group_size=args.num_generations,
            total_steps=state.max_steps or None,
            world_size=1,
            options={
                "beta": 0.0,
                "temperature": args.temperature,
                "use_vllm": True,
                "scale_rewards": "group",
                "advantage_epsilon": ASYNC_ADVANTAGE_EPSILON,
                "max_staleness": args.max_staleness,
                "adapter_sync": bool(getattr(trainer, "_lora_sync", False)),
            },
        )
        self._model = model = trainer.accelerator.unwrap_model(trainer.model)
        self._collective = SingleProcess()
        start_run(self.host, run, model, tokenizer=trainer.processing_class)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.global_step == self._last_step:  # also added with trainer.add_callback: once per step
            return
        self._last_step = state.global_step
        groups, self._step_groups = self._step_groups, []
        samples = [sample for group in groups for sample in group]
        if samples:
            self._scored(state.global_step, samples)
            self._sampled(state.global_step, samples)
        self.host.on_step_end(StepEnded(state.global_step, state.max_steps or None))
        if self.host.requests.take_stop() is not None:
            control.should_training_stop = True
        self._publish(self.host.collect_metrics())

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._started:
            self._started = False
            self.host.on_run_end()

    # -- plumbing ------------------------------------------------------------------------------
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
        batch = rollouts_scored(
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
        self.host.on_rollouts_scored(batch)

    def _sampled(self, step: int, samples: list[Any]) -> None:
        if not self.host.implements("on_policy_sampled"):
            return
        import torch

        pad = self.trainer.processing_class.pad_token_id
        prompts, completions, masks = [], [], []
        for s in samples:
            mask = torch.as_tensor(s.completion_mask)
            first = int(mask.nonzero()[0]) if bool(mask.any()) else len(mask)
            ids = torch.as_tensor(s.input_ids)
            prompts.append(ids[:first])
            completions.append(ids[first:])
            masks.append(mask[first:])
        width_p = max(len(p) for p in prompts)
        width_c = max(len(c) for c in completions)

        def padded(rows: list[Any], width: int, fill: int, left: bool) -> Any:
            out = torch.full((len(rows), width), fill, dtype=torch.long)
            for i, row in enumerate(rows):
                if len(row) and left:
                    out[i, width - len(row) :] = row
                elif len(row):
                    out[i, : len(row)] = row
            return out

        prompt_ids = padded(prompts, width_p, pad, left=True)
        prompt_mask = padded([torch.ones(len(p), dtype=torch.long) for p in prompts], width_p, 0, left=True)
        completion_ids = padded(completions, width_c, pad, left=False)
        completion_mask = padded(masks, width_c, 0, left=False)
        attention = padded([torch.ones(len(c), dtype=torch.long) for c in completions], width_c, 0, left=False)
        device = self.trainer.accelerator.device
        sample = policy_sample(
            step=step,
            model=self._model,
            prompt_ids=prompt_ids.to(device),
            prompt_mask=prompt_mask.to(device),
            completion_ids=completion_ids.to(device),
            completion_mask=completion_mask.to(device),
            temperature=self.trainer.args.temperature,
            collective=self._collective,
        )
        # the completion's own attention: tool-result tokens inside it are attended to, not trained on
        sample = replace(sample, attention_mask=torch.cat([prompt_mask, attention], 1).to(device))
        # The trainer's model attends with TRL's tree attention, which needs its packed-batch arguments: the
        # plugins' plain forward passes (the KL monitor's) run with PyTorch's SDPA attention instead.
        config = self._model.config
        attention_implementation = config._attn_implementation
        config._attn_implementation = "sdpa"
        try:
            self.host.on_policy_sampled(sample)
        finally:
            config._attn_implementation = attention_implementation

    def _publish(self, metrics: Mapping[str, float]) -> None:
        store = self.trainer._metrics["train"]
        metrics = {
            **metrics,
            "async/stale_dropped": float(self.dropped),
            "async/stale_dropped_frac": self.dropped / self.taken if self.taken else math.nan,
        }
        for name, value in metrics.items():
            store[name] = [value]


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _text(completion: Any) -> Any:
    """A completion as text where it is one assistant message (the worker's chat format), else as given."""
    if isinstance(completion, list) and len(completion) == 1 and isinstance(completion[0], Mapping):
        return completion[0].get("content", completion[0])
    return completion
