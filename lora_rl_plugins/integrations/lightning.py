"""PyTorch Lightning integration: ``Trainer(callbacks=[LoraRLCallback(...)])``.

Lightning has no GRPO trainer of its own: a GRPO-style ``LightningModule`` reports what it sampled
and how it was scored by returning a dict from ``training_step`` (the contract is in
``lora_rl_plugins.bridge.grpo_output``); the callback reads it in ``on_train_batch_end``, logs
through ``pl_module.log`` (so every Lightning logger receives the metrics), keeps its state in
``state_dict()`` under ``state_key`` (so checkpoints resume exactly), gathers across DDP processes
through the strategy, and answers the module's one question about the KL term:
``callback.kl_beta(beta)``.

No math or parsing lives here: everything is translated into the core's events.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from lightning.pytorch import Callback

from lora_rl_plugins.bridge.grpo_output import (
    CONTRACT,
    GRPOOutputError,
    GRPOReport,
    grpo_settings,
    parse_grpo_output,
)
from lora_rl_plugins.bridge.options import PluginOptions
from lora_rl_plugins.bridge.session import RunSession
from lora_rl_plugins.learning.ledger import prompt_key
from lora_rl_plugins.plugin.collective import TensorCollective
from lora_rl_plugins.plugin.events import RunStarted
from lora_rl_plugins.plugin.host import PluginHost
from lora_rl_plugins.plugin.services import PromptSampler

__all__ = ["CONTRACT", "GRPOOutputError", "LoraRLCallback", "lightning_collective"]


def lightning_collective(trainer: Any) -> TensorCollective:
    """Cross-process sums, maxima and object gathering through the trainer's Lightning strategy."""
    strategy = trainer.strategy
    return TensorCollective(strategy.all_gather, strategy.root_device, trainer.world_size, trainer.global_rank)


class LoraRLCallback(Callback):
    """Information-bandwidth accounting, KL monitor and adapter checks for a Lightning GRPO module.

    Args:
        model_attribute: the attribute of the LightningModule that holds the PEFT model (the module
            itself when None).
        **options: ``lora_rl_plugins.bridge.options.PluginOptions``, as for the TRL callback; with
            ``kl_free=True`` the module should compute no reference log-probs while
            ``kl_beta(0.0) == 0``.

    Raises:
        TypeError, ValueError: an unknown option or an invalid value (``sampling="filter"``: TRL only).
        GRPOOutputError: ``training_step`` returned something outside the contract.
    """

    def __init__(self, *, model_attribute: str | None = "model", **options: Any) -> None:
        self.model_attribute = model_attribute
        self.options = PluginOptions(**options)
        if self.options.learning.sampling == "filter":
            raise ValueError(
                "sampling='filter' is applied by the TRL integration (it wraps GRPOTrainer's generation); under "
                "Lightning your training_step generates, so filter there (see GRPOModule.filtered in "
                "examples/lightning_grpo.py, --sampling filter) and leave this option 'plain' or 'informative'"
            )
        self.kl_free = self.options.kl_free
        self.session = RunSession(self.options, source="lightning")
        self._steps_done = 0
        self._total_steps: int | None = None

    @property
    def host(self) -> PluginHost:
        """The session's plugin host."""
        return self.session.host

    @classmethod
    def of(cls, trainer: Any) -> LoraRLCallback | None:
        """The ``LoraRLCallback`` among ``trainer.callbacks`` (None if there is none)."""
        return next((cb for cb in getattr(trainer, "callbacks", []) if isinstance(cb, cls)), None)

    # -- the module's question -------------------------------------------------------------
    def kl_beta(self, beta: float = 0.0) -> float:
        """The KL coefficient the module should use now: ``beta``, or the penalty the monitor turned on.

        Compute reference log-probs only when this is > 0 (in KL-free mode it is 0 until a budget
        action turns a penalty on).

        Raises:
            ValueError: ``kl_free=True`` and the module uses ``beta != 0``.
        """
        if self.kl_free and beta:
            raise ValueError(f"kl_free=True, but the module uses beta={beta}: set the module's beta to 0.0")
        penalty = self.session.kl_beta
        return penalty if penalty is not None else beta

    def informative_sampler(self, prompts: Sequence[Any], seed: int = 0) -> Callable[[int], list[int]] | None:
        """With ``informative_sampling=True``: a function count -> the indices into ``prompts`` of the next
        batch, drawn by the learning plugin (prompts that taught nothing on their last visits skipped before
        generation; the same on every process; its position is saved with the callback's state). None when
        informative sampling is off."""
        sampler = self.session.service(PromptSampler)
        if sampler is None:
            return None
        sampler.bind(lambda index: prompt_key(prompts[index]), len(prompts), seed)
        return lambda count: sampler.draw(count)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(model_attribute=self.model_attribute)

    # -- Lightning hooks -------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._steps_done = trainer.global_step
        total = trainer.estimated_stepping_batches
        self._total_steps = int(total) if total and math.isfinite(total) else None
        run = RunStarted(
            framework="lightning",
            total_steps=self._total_steps,
            world_size=trainer.world_size,
            grpo=grpo_settings(pl_module, beta=self.kl_beta(0.0)),
        )
        self.session.start(
            run,
            self._policy(pl_module),
            tokenizer=getattr(pl_module, "tokenizer", None),
            log_dir=self.log_dir(trainer),
            resume_step=trainer.global_step,
            main_process=trainer.is_global_zero,
        )

    @staticmethod
    def log_dir(trainer: Any) -> str:
        """Where the run log goes: the first logger's ``log_dir``, else the trainer's ``default_root_dir``."""
        logger = trainer.logger
        directory = getattr(logger, "log_dir", None) if logger is not None else None
        return str(directory or trainer.default_root_dir)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        report = parse_grpo_output(outputs)
        collective = lightning_collective(trainer)
        step = trainer.global_step if trainer.global_step > self._steps_done else self._steps_done + 1
        self._rollouts_scored(report, collective, step)
        if report.sequences is not None:
            prompt_ids, prompt_mask, completion_ids, completion_mask = report.sequences
            self.session.policy_sampled(
                step=step,
                model=self._policy(pl_module),
                prompt_ids=prompt_ids,
                prompt_mask=prompt_mask,
                completion_ids=completion_ids,
                completion_mask=completion_mask,
                temperature=report.temperature,
                collective=collective,
            )
        if trainer.global_step > self._steps_done:  # an optimizer step finished with this batch
            self._steps_done = trainer.global_step
            self._step_ended(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.session.end()

    def state_dict(self) -> dict[str, Any]:
        return {"plugins": self.session.state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        plugins = dict(state_dict.get("plugins", {}))
        if "penalty_beta" in state_dict and state_dict["penalty_beta"] is not None:  # checkpoints of version 0.1
            plugins.setdefault("_trainer", {"kl_beta": state_dict["penalty_beta"]})
        self.session.restore(plugins)

    # -- translation -----------------------------------------------------------------------
    def _policy(self, pl_module: Any) -> Any:
        return pl_module if self.model_attribute is None else getattr(pl_module, self.model_attribute)

    def _rollouts_scored(self, report: GRPOReport, collective: TensorCollective, step: int) -> None:
        self.session.rollouts_scored(
            collective,
            step=step,
            rewards=report.rewards,
            reward_names=report.reward_names,
            reward_weights=report.reward_weights,
            group_size=report.generations,
            completions=report.completions,
            answers=report.answers,
            token_rewards=report.token_rewards,
            prompts=report.prompts,
            generation_seconds=report.generation_seconds,
        )

    def _step_ended(self, trainer: Any, pl_module: Any) -> None:
        decision = self.session.step_ended(trainer.global_step, self._total_steps)
        if decision.stop is not None:
            trainer.should_stop = True
        self.session.take_kl_beta()  # the module reads the active penalty through kl_beta()
        progress = self.session.progress()
        # the run log: what the module logged (reward, loss, ...; not our progress bar) and ours
        logged = {k: v for k, v in trainer.callback_metrics.items() if k not in progress}
        self.session.log(trainer.global_step, {**logged, **decision.metrics})
        if decision.console:
            pl_module.log_dict(decision.console, on_step=True, on_epoch=False, rank_zero_only=True, batch_size=1)
        if progress:  # the live view: headline numbers in Lightning's progress bar (not sent to loggers twice)
            pl_module.log_dict(progress, prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=1)
