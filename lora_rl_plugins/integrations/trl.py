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
``LoraRLCheckpointState``) and restored on resume. No math lives here: events are built by
``lora_rl_plugins.bridge.translate`` and everything else happens in the plugins.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState, PrinterCallback, ProgressCallback

from lora_rl_plugins.bridge.options import PluginOptions, option_documentation
from lora_rl_plugins.bridge.runlog import RunLogWriter, split_detail
from lora_rl_plugins.bridge.translate import policy_sample, rollouts_scored, start_run
from lora_rl_plugins.bridge.trl_contract import check_informative_sampling, check_trl_grpo_trainer
from lora_rl_plugins.kl.kl_free import check_kl_free
from lora_rl_plugins.learning.ledger import prompt_key
from lora_rl_plugins.learning.sampling import InformativeRepeatSampler
from lora_rl_plugins.plugin.collective import TensorCollective
from lora_rl_plugins.plugin.events import RunStarted, StepEnded

__all__ = ["LoraRLCallback", "LoraRLCheckpointState", "accelerate_collective"]

#: The keys of transformers' end-of-training summary log: run totals, not step metrics.
TRAINING_SUMMARY_KEYS = frozenset(
    {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos"}
)


def accelerate_collective(accelerator: Any) -> TensorCollective:
    """Cross-process sums and maxima through the trainer's ``accelerate.Accelerator``."""
    from accelerate.utils import gather_object

    return TensorCollective(
        accelerator.gather, accelerator.device, accelerator.num_processes, accelerator.process_index, gather_object
    )


#: Per-row tensors of ``GRPOTrainer._generate_and_score_completions``' output (TRL 1.16): the side their
#: second dimension is padded on and the padding value (None: the pad token id), or no padding (1-D).
ROW_TENSORS: dict[str, tuple[str, float | None] | None] = {
    "prompt_ids": ("left", None),
    "prompt_mask": ("left", 0),
    "completion_ids": ("right", None),
    "completion_mask": ("right", 0),
    "advantages": None,
    "old_per_token_logps": ("right", 0.0),
    "ref_per_token_logps": ("right", 0.0),
    "sampling_per_token_logps": ("right", 0.0),
    "importance_sampling_ratio": ("right", 1.0),
    "tool_mask": ("right", 1),
}


def merge_generation_rounds(outputs: list[dict[str, Any]], rounds: list[int], pad_token_id: int) -> dict[str, Any]:
    """One output dict whose row i is row i of ``outputs[rounds[i]]`` (each a ``_generate_and_score_completions``
    output of the same inputs), every per-row tensor padded to the widest round on TRL's side for it.
    ``num_items_in_batch`` is left to the caller (a collective).

    Raises:
        ValueError: an output key this merge does not know (multimodal inputs: turn ``sampling="filter"`` off).
    """
    import torch

    unknown = sorted(set(outputs[0]) - set(ROW_TENSORS) - {"num_items_in_batch"})
    if unknown:
        raise ValueError(
            f"sampling='filter' cannot merge TRL's generation output key(s) {', '.join(unknown)} (multimodal or a "
            "newer TRL): turn sampling='filter' off for this run"
        )
    index = torch.tensor(rounds)
    merged: dict[str, Any] = dict(outputs[0])
    for key, padding in ROW_TENSORS.items():
        if key not in outputs[0]:
            continue
        tensors = [out[key] for out in outputs]
        if padding is not None:
            side, value = padding
            width = max(t.size(1) for t in tensors)
            fill = pad_token_id if value is None else value
            padded = []
            for t in tensors:
                extra = torch.full((t.size(0), width - t.size(1)), fill, dtype=t.dtype, device=t.device)
                padded.append(torch.cat([extra, t] if side == "left" else [t, extra], dim=1))
            tensors = padded
        stacked = torch.stack(tensors)  # [rounds, rows, ...]
        rows = torch.arange(stacked.size(1), device=stacked.device)
        merged[key] = stacked[index.to(stacked.device), rows]
    return merged


class LoraRLCheckpointState(TrainerCallback, ExportableState):
    """Carries the plugins' state into ``trainer_state.json`` at every checkpoint.

    A separate, argument-free callback so that transformers can rebuild it on resume when
    ``restore_callback_states_from_checkpoint=True``; ``LoraRLCallback`` restores from it either way.
    """

    def __init__(self) -> None:
        self.plugin_state: dict[str, Any] = {}
        self.owner: LoraRLCallback | None = None

    def state(self) -> dict:
        if self.owner is not None:
            self.plugin_state = self.owner.host.get_state()
        return {"args": {}, "attributes": {"plugin_state": self.plugin_state}}


class LoraRLCallback(TrainerCallback):
    """Information-bandwidth accounting, KL monitor and adapter checks for a TRL ``GRPOTrainer``.

    Args:
        trainer: the ``GRPOTrainer`` to observe.
        live_view: show the plugins' one-line summary (bits, capacity used, KL vs budget) in the
            progress bar at the logging interval.
        **options: the options below (``lora_rl_plugins.bridge.options.PluginOptions``).

    Raises:
        TypeError: ``trainer`` is not a ``GRPOTrainer``, or an option is unknown.
        UnsupportedTRLError: the installed TRL is outside ``SUPPORTED_TRL`` (">=1.6,<2") or its
            ``GRPOTrainer`` lacks an internal the callback relies on (the message lists them).
        ValueError: an option's value is invalid (the message names it); TypeError for a wrong type.
        KLFreeError: ``kl_free=True`` with settings that contradict it.
        NotALoraModelError, VLLMLoRAError: see ``PluginOptions.check_model`` (raised here, not at ``train()``).
    """

    def __init__(self, trainer: Any, *, live_view: bool = True, **options: Any) -> None:
        if not hasattr(trainer, "_calculate_rewards") or not hasattr(trainer, "num_generations"):
            raise TypeError(
                f"LoraRLCallback needs a trl.GRPOTrainer, got {type(trainer).__name__}. "
                "Create the trainer first, then: trainer.add_callback(LoraRLCallback(trainer))."
            )
        import trl

        check_trl_grpo_trainer(trainer, trl.__version__)
        self.trainer = trainer
        self.live_view = live_view
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
        self.host = self.options.build_host()
        self._metric_infos = self.host.describe_metrics()
        self._run_log: RunLogWriter | None = None
        self._detail: dict[str, float] = {}  # detail metrics since the last log: for the run log only
        self.checkpoint_state = LoraRLCheckpointState()
        self.checkpoint_state.owner = self
        trainer.add_callback(self.checkpoint_state)
        self._wrap_reward_calculation(trainer)
        self._wrap_generation(trainer)
        self._generation_started: float | None = None
        if self.options.learning.informative_sampling and self.host.plugin("learning") is not None:
            self._install_informative_sampler(trainer)
        self._filter = self.host.plugin("learning") if self.options.learning.sampling == "filter" else None
        self._scored_rewards: list[list[float]] = []

    # -- trainer events -> hooks ---------------------------------------------------------------
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._restore(state)
        trainer = self.trainer
        run = RunStarted(
            framework="trl",
            group_size=trainer.num_generations,
            total_steps=state.max_steps or None,
            world_size=trainer.accelerator.num_processes,
            options={
                "beta": trainer.beta,
                "temperature": trainer.temperature,
                "use_vllm": bool(getattr(trainer, "use_vllm", False)),
                "generation_batch_size": args.generation_batch_size,
                "steps_per_generation": args.steps_per_generation,
                "num_iterations": trainer.num_iterations,
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "scale_rewards": getattr(trainer, "scale_rewards", None),
                "multi_objective_aggregation": getattr(trainer, "multi_objective_aggregation", None),
                "top_k": args.top_k,
                "top_p": args.top_p,
                "min_p": args.min_p,
                "repetition_penalty": args.repetition_penalty,
                "generation_kwargs": args.generation_kwargs,
                "bf16": args.bf16,
                "fp16": args.fp16,
            },
        )
        self._model = model = trainer.accelerator.unwrap_model(trainer.model)  # unwrapping costs ~ms: once
        self._collective = accelerate_collective(trainer.accelerator)
        # The engine's wrapper (DDP, FSDP1 root, DeepSpeed engine), for sharded parameters: see lora.sharding.
        self._engine_model = getattr(trainer, "model_wrapped", None)
        start_run(self.host, run, model, self._engine_model, tokenizer=getattr(trainer, "processing_class", None))
        if self._filter is not None:
            self._filter.group_filter()  # refuses settings the filter cannot apply to, before any generation
        self._metric_infos = self.host.describe_metrics()
        if self.options.host.run_log and state.is_world_process_zero:
            self._run_log = RunLogWriter(args.output_dir, self._metric_infos, source="trl")
            self._run_log.open(resume_step=state.global_step)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.host.on_step_end(StepEnded(state.global_step, state.max_steps or None))
        if self.host.requests.take_stop() is not None:
            control.should_training_stop = True
        self._publish(self.host.collect_metrics())

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: Any = None, **kwargs: Any
    ) -> None:
        """The live view: the plugins' one-line summary at the logging interval, in the progress bar
        (as its postfix) or, when the bar is off, as a printed line beside the trainer's own log; and
        the run log (``lora_rl_metrics.jsonl``): the trainer's logs and the detail metrics."""
        if self._run_log is not None and logs:
            # TRL folds the metrics of an unlogged last window into its end-of-training summary: keep those
            values = {name: value for name, value in logs.items() if name not in TRAINING_SUMMARY_KEYS}
            self._run_log.write(state.global_step, {**values, **self._detail})
            self._detail = {}
        if not self.live_view or not state.is_local_process_zero or "train_runtime" in (logs or {}):
            return
        summary = self.host.summary_line()
        if not summary:
            return
        callbacks = self.trainer.callback_handler.callbacks
        bar = next((cb.training_bar for cb in callbacks if isinstance(cb, ProgressCallback) and cb.training_bar), None)
        if bar is not None:
            bar.set_postfix_str(summary)  # refreshed now: the bar shows the values the log line shows
        elif any(isinstance(cb, PrinterCallback) for cb in callbacks):
            print(f"lora-rl step {state.global_step}: {summary}")

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.host.on_run_end()
        # the final plugin state (the per-prompt ledger) reaches trainer_state.json even without checkpoints
        state.stateful_callbacks[type(self.checkpoint_state).__name__] = self.checkpoint_state.state()
        if self._run_log is not None:
            self._run_log.close()

    # -- plumbing ------------------------------------------------------------------------------
    def _wrap_reward_calculation(self, trainer: Any) -> None:
        original = trainer._calculate_rewards

        def calculate_rewards(inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Any:
            rewards_per_func = original(inputs, prompts, completions, completion_ids_list)
            if trainer.model.training:  # evaluation rollouts train nothing
                self._scored_rewards = rewards_per_func.float().cpu().tolist()
                self._rollouts_scored(rewards_per_func, completions, prompts)
            return rewards_per_func

        trainer._calculate_rewards = calculate_rewards

    def _wrap_generation(self, trainer: Any) -> None:
        original = trainer._generate_and_score_completions

        def generate_and_score_completions(inputs: Any) -> Any:
            beta = self.host.requests.take_kl_beta() if trainer.model.training else None
            if beta is not None:
                # Between generation batches, so every buffered batch has reference log-probs if beta > 0.
                trainer.beta = beta
            self._generation_started = time.perf_counter()
            output = original(inputs)
            if trainer.model.training and self._filter is not None:
                output = self._filter_groups(original, inputs, output)
            if trainer.model.training:
                self._policy_sampled(output)
            return output

        trainer._generate_and_score_completions = generate_and_score_completions

    def _filter_groups(self, original: Any, inputs: Any, output: dict[str, Any]) -> dict[str, Any]:
        """``sampling="filter"``: while the learning plugin's filter has slots without information and rounds
        left, generate the same inputs again (TRL refills by resampling the dropped prompts), then take each
        local row from the round the core chose for its group. Every process runs the same rounds: the
        decisions come from the gathered rewards."""
        trainer, learning = self.trainer, self._filter
        group_size = trainer.num_generations
        weights = trainer.reward_weights.float().cpu().tolist()
        batch = learning.group_filter()
        batch.offer(learning.zero_information(self._scored_rewards, group_size, weights))
        started = time.perf_counter()
        outputs = [output]
        while batch.needs_refill():
            self._generation_started = time.perf_counter()
            outputs.append(original(inputs))
            batch.offer(learning.zero_information(self._scored_rewards, group_size, weights))
        rows = len(output["advantages"])
        rounds = batch.row_rounds(trainer.accelerator.process_index * rows, rows, group_size)
        if batch.extra_rounds:  # global (not this process's rows): every process makes the same gather
            tokenizer = getattr(trainer, "_tokenizer", None) or trainer.processing_class
            output = merge_generation_rounds(outputs, rounds, tokenizer.pad_token_id)
            loss_mask = output["completion_mask"]
            if "tool_mask" in output:
                loss_mask = loss_mask * output["tool_mask"]
            output["num_items_in_batch"] = trainer.accelerator.gather(loss_mask.sum()).sum()  # as TRL computes it
        learning.filter_done(batch, group_size, time.perf_counter() - started, self._collective)
        return output

    def _policy_sampled(self, output: Mapping[str, Any]) -> None:
        if not self.host.implements("on_policy_sampled"):
            return
        trainer = self.trainer
        sample = policy_sample(
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
        self.host.on_policy_sampled(sample)

    def _rollouts_scored(self, rewards_per_func: Any, completions: list[Any], prompts: list[Any]) -> None:
        trainer = self.trainer
        started, self._generation_started = self._generation_started, None
        batch = rollouts_scored(
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
        self.host.on_rollouts_scored(batch)

    def _install_informative_sampler(self, trainer: Any) -> None:
        """Draw each generation batch's prompts through the learning plugin (informative sampling):
        TRL's ``RepeatSampler`` layout (each prompt ``num_generations`` times, each chunk repeated for
        ``steps_per_generation`` × ``num_iterations``), prompts chosen by the core."""
        check_informative_sampling(trainer)
        learning = self.host.plugin("learning")
        original = trainer._get_train_sampler

        def get_train_sampler(dataset: Any = None) -> Any:
            base = original(dataset)
            data = trainer.train_dataset if dataset is None else dataset
            learning.make_selector(lambda index: prompt_key(data[index]["prompt"]), len(data), trainer.args.seed)
            return InformativeRepeatSampler(base, learning)

        trainer._get_train_sampler = get_train_sampler

    def _publish(self, metrics: Mapping[str, float]) -> None:
        """Put metrics into TRL's metric store: per-step ones are averaged over the logging window."""
        if not self.options.host.console_detail:  # per-module norms, timings: the run log only
            metrics, detail = split_detail(metrics, self._metric_infos)
            self._detail.update(detail)
        store = self.trainer._metrics["train"]
        for name, value in metrics.items():
            info = self._metric_infos.get(name)
            if (info is not None and info.reduce == "mean") or name.startswith("plugins/"):
                store[name].append(value)
            else:
                store[name] = [value]

    def _restore(self, state: TrainerState) -> None:
        holder = next(
            (cb for cb in self.trainer.callback_handler.callbacks if isinstance(cb, LoraRLCheckpointState)),
            None,
        )
        if holder is None:  # transformers removed it while rebuilding callbacks: put ours back
            holder = self.checkpoint_state
            self.trainer.add_callback(holder)
        holder.owner, self.checkpoint_state = self, holder
        saved = (state.stateful_callbacks or {}).get(type(holder).__name__)
        if isinstance(saved, list):
            saved = saved[-1]
        plugin_state = (saved or {}).get("attributes", {}).get("plugin_state")
        if plugin_state:
            self.host.set_state(plugin_state)


LoraRLCallback.__doc__ = (
    (LoraRLCallback.__doc__ or "")
    + "    Options:\n"
    + "".join(f"        {doc.name} (default {doc.default}): {doc.doc}.\n" for doc in option_documentation())
)
