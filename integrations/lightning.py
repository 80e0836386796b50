"""PyTorch Lightning integration: ``Trainer(callbacks=[LoraRLCallback(...)])``.

Lightning has no GRPO trainer of its own: a GRPO-style ``LightningModule`` reports what it sampled
and how it was scored by returning a dict from ``training_step`` (the contract below); the
callback reads it in ``on_train_batch_end``, logs through ``pl_module.log`` (so every Lightning
logger receives the metrics), keeps its state in ``state_dict()`` under ``state_key`` (so
checkpoints resume exactly), reduces across DDP processes, and answers the module's one question
about the KL term: ``callback.kl_beta(beta)``.

The ``training_step`` contract (``G`` prompts, ``K`` generations each, ``N = G·K`` rollouts in
prompt-major order, ``C`` completion positions)::

    return {
        "loss": loss,                                 # as usual
        "rewards": rewards,                           # [G, K] combined reward per rollout (NaN = missing)
        # optional:
        "reward_components": {"accuracy": [G, K], ...},   # per reward function; "rewards" is then optional
        "reward_weights": {"accuracy": 1.0, ...},        # default 1.0 each (combined as TRL does)
        "prompt_ids": [N, P], "prompt_mask": [N, P],     # left-padded prompts       } needed by the
        "completion_ids": [N, C], "completion_mask": [N, C],  # sampled completions  } KL monitor
        "completions": [N texts], "answers": [N answers],
        "token_rewards": [N, C] per-token rewards (with completion_mask),
        "temperature": sampling temperature (default 1.0),
    }

No math lives here: everything is translated into the core's events.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Callback

from ..adapters import summarize_adapter
from ..events import (
    AdapterReady,
    PolicySample,
    RolloutsScored,
    RunStarted,
    SetKLPenalty,
    StepEnded,
    StopTraining,
    TensorCollective,
)
from ..options import PluginOptions

__all__ = ["GRPOOutputError", "LightningCollective", "LoraRLCallback"]

CONTRACT = (
    'training_step must return {"loss": ..., "rewards": [groups, generations]} (plus optional "prompt_ids", '
    '"prompt_mask", "completion_ids", "completion_mask" of shape [groups*generations, length], "completions", '
    '"answers", "reward_components", "reward_weights", "token_rewards", "temperature"); see '
    "lora_rl_plugins.integrations.lightning"
)


#: Progress-bar name -> metric shown there.
PROGRESS_BAR = {"bits": "bandwidth/bits_total", "cap_used": "bandwidth/capacity_used", "kl": "kl_monitor/kl_mean"}


class GRPOOutputError(ValueError):
    """``training_step``'s output does not follow the contract; the message shows the expected shape."""


class LightningCollective(TensorCollective):
    """Cross-process sums, maxima and object gathering through the Lightning strategy."""

    def __init__(self, trainer: Any) -> None:
        strategy = trainer.strategy
        super().__init__(strategy.all_gather, strategy.root_device, trainer.world_size, trainer.global_rank)

    def gather_objects(self, values: list[Any]) -> list[Any]:
        if self.world_size == 1:
            return list(values)
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, list(values))
        return [item for part in gathered for item in part]


def _shape(value: Any) -> tuple[int, ...]:
    if hasattr(value, "shape"):
        return tuple(int(x) for x in value.shape)
    if isinstance(value, (list, tuple)):
        if value and (isinstance(value[0], (list, tuple)) or hasattr(value[0], "shape")):
            widths = {len(row) for row in value}
            if len(widths) > 1:
                raise GRPOOutputError(
                    f"ragged rows: the rows have {sorted(widths)} entries; every prompt needs the same number of "
                    f"generations. {CONTRACT}"
                )
            return (len(value), widths.pop())
        return (len(value),)
    raise GRPOOutputError(f"expected a tensor or a list, got {type(value).__name__}. {CONTRACT}")


def _rows(value: Any) -> list[list[float]]:
    data = value.detach().float().cpu().tolist() if hasattr(value, "detach") else value
    return [[math.nan if x is None else float(x) for x in row] for row in data]


class LoraRLCallback(Callback):
    """Information-bandwidth accounting, KL monitor and adapter checks for a Lightning GRPO module.

    Args:
        model_attribute: the attribute of the LightningModule that holds the PEFT model (the module
            itself when None).
        **options: ``lora_rl_plugins.options.PluginOptions``, as for the TRL callback; with
            ``kl_free=True`` the module should compute no reference log-probs while
            ``kl_beta(0.0) == 0``.
    """

    def __init__(self, *, model_attribute: str | None = "model", **options: Any) -> None:
        self.model_attribute = model_attribute
        self.options = PluginOptions(**options)
        self.kl_free = self.options.kl_free
        self.host = self.options.build_host()
        self._metric_infos = self.host.metric_infos()
        self._started = False
        self._steps_done = 0
        self._penalty_beta: float | None = None

    @classmethod
    def of(cls, trainer: Any) -> LoraRLCallback | None:
        """The ``LoraRLCallback`` among ``trainer.callbacks`` (None if there is none)."""
        return next((cb for cb in getattr(trainer, "callbacks", []) if isinstance(cb, cls)), None)

    # -- the module's question -------------------------------------------------------------
    def kl_beta(self, beta: float = 0.0) -> float:
        """The KL coefficient the module should use now: ``beta``, or the penalty the monitor turned on.

        Compute reference log-probs only when this is > 0 (in KL-free mode it is 0 until a budget
        action turns a penalty on).
        """
        if self.kl_free and beta:
            raise ValueError(f"kl_free=True, but the module uses beta={beta}: set the module's beta to 0.0")
        return self._penalty_beta if self._penalty_beta is not None else beta

    @property
    def state_key(self) -> str:
        return self._generate_state_key(model_attribute=self.model_attribute)

    # -- Lightning hooks -------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        model = self._policy(pl_module)
        self._steps_done = trainer.global_step
        self._start_options = {"world_size": trainer.world_size, "total_steps": trainer.estimated_stepping_batches}
        self.host.call("on_adapter_ready", adapter=AdapterReady(summarize_adapter(model), model))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        report = self._validate(outputs)
        collective = LightningCollective(trainer)
        rewards, names, weights, groups, generations = self._rewards(report)
        if not self._started:
            self._started = True
            total = self._start_options.get("total_steps")
            self.host.call(
                "on_run_start",
                run=RunStarted(
                    framework="lightning",
                    group_size=generations,
                    total_steps=int(total) if total and math.isfinite(total) else None,
                    rollouts_per_step=groups * generations * trainer.world_size,
                    world_size=trainer.world_size,
                    options={"temperature": float(report.get("temperature", 1.0)), "beta": self.kl_beta(0.0)},
                ),
            )
        step = trainer.global_step if trainer.global_step > self._steps_done else self._steps_done + 1
        self._rollouts_scored(report, collective, rewards, names, weights, generations, step)
        if "completion_ids" in report and "prompt_ids" in report and self.host.implements("on_policy_sampled"):
            self._policy_sampled(report, pl_module, collective, step)
        if trainer.global_step > self._steps_done:  # an optimizer step finished with this batch
            self._steps_done = trainer.global_step
            self._step_ended(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.host.call("on_run_end")

    def state_dict(self) -> dict[str, Any]:
        return {"plugins": self.host.state_dict(), "penalty_beta": self._penalty_beta}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.host.load_state_dict(state_dict.get("plugins", {}))
        self._penalty_beta = state_dict.get("penalty_beta")

    # -- translation -----------------------------------------------------------------------
    def _policy(self, pl_module: Any) -> Any:
        return pl_module if self.model_attribute is None else getattr(pl_module, self.model_attribute)

    @staticmethod
    def _validate(outputs: Any) -> Mapping[str, Any]:
        if not isinstance(outputs, Mapping):
            raise GRPOOutputError(f"training_step returned {type(outputs).__name__}. {CONTRACT}")
        if "rewards" not in outputs and "reward_components" not in outputs:
            raise GRPOOutputError(f"training_step's output has no 'rewards' (keys: {sorted(outputs)}). {CONTRACT}")
        return outputs

    @staticmethod
    def _rewards(report: Mapping[str, Any]) -> tuple[list[list[float]], list[str], list[float], int, int]:
        """Rewards as [N][F] rows in prompt-major order, with names and weights."""
        if "reward_components" in report:
            components = dict(report["reward_components"])
            names = list(components)
            shapes = {name: _shape(value) for name, value in components.items()}
            if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
                raise GRPOOutputError(
                    f"reward_components must all be [groups, generations]; got shapes {shapes}. {CONTRACT}"
                )
            groups, generations = next(iter(shapes.values()))
            columns = [[x for row in _rows(components[name]) for x in row] for name in names]
            weights_map = dict(report.get("reward_weights", {}))
            unknown = set(weights_map) - set(names)
            if unknown:
                raise GRPOOutputError(f"reward_weights names {sorted(unknown)} that are not in reward_components")
            weights = [float(weights_map.get(name, 1.0)) for name in names]
            return [list(row) for row in zip(*columns, strict=True)], names, weights, groups, generations
        shape = _shape(report["rewards"])
        if len(shape) != 2:
            raise GRPOOutputError(
                f"'rewards' has shape {shape}; expected [groups, generations] (one row per prompt, one column per "
                f"generation). {CONTRACT}"
            )
        groups, generations = shape
        flat = [[x] for row in _rows(report["rewards"]) for x in row]
        return flat, ["reward"], [1.0], groups, generations

    def _rollouts_scored(
        self,
        report: Mapping[str, Any],
        collective: LightningCollective,
        rewards: list[list[float]],
        names: list[str],
        weights: list[float],
        generations: int,
        step: int,
    ) -> None:
        rollouts = len(rewards)
        for key in ("completions", "answers"):
            if key in report and len(report[key]) != rollouts:
                raise GRPOOutputError(f"'{key}' has {len(report[key])} entries for {rollouts} rollouts. {CONTRACT}")
        token_rewards = None
        if "token_rewards" in report:
            token_rewards = self._token_rewards(report, rollouts)
        batch = RolloutsScored(
            step=step,
            rewards=collective.gather_objects(rewards),
            reward_names=names,
            reward_weights=weights,
            group_size=generations,
            completions=collective.gather_objects(list(report["completions"])) if "completions" in report else None,
            answers=collective.gather_objects(list(report["answers"])) if "answers" in report else None,
            token_rewards=collective.gather_objects(token_rewards) if token_rewards is not None else None,
        )
        self.host.call("on_rollouts_scored", batch=batch)

    @staticmethod
    def _token_rewards(report: Mapping[str, Any], rollouts: int) -> list[list[float]]:
        shape = _shape(report["token_rewards"])
        if len(shape) != 2 or shape[0] != rollouts:
            raise GRPOOutputError(f"'token_rewards' has shape {shape}; expected [{rollouts}, completion length]")
        rows = _rows(report["token_rewards"])
        if "completion_mask" not in report:
            return rows
        masks = _rows(report["completion_mask"])
        return [[r for r, m in zip(row, mask, strict=True) if m] for row, mask in zip(rows, masks, strict=True)]

    def _policy_sampled(self, report: Mapping[str, Any], pl_module: Any, collective: Any, step: int) -> None:
        import torch

        for key in ("prompt_mask", "completion_mask"):
            if key not in report:
                raise GRPOOutputError(
                    f"'{key}' is needed with prompt_ids/completion_ids for the KL monitor. {CONTRACT}"
                )
        prompt_ids, completion_ids = report["prompt_ids"], report["completion_ids"]
        if prompt_ids.shape[0] != completion_ids.shape[0] or completion_ids.shape != report["completion_mask"].shape:
            raise GRPOOutputError(
                f"prompt_ids {tuple(prompt_ids.shape)}, completion_ids {tuple(completion_ids.shape)} and "
                f"completion_mask {tuple(report['completion_mask'].shape)} do not line up. {CONTRACT}"
            )
        sample = PolicySample(
            step=step,
            model=self._policy(pl_module),
            input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
            attention_mask=torch.cat([report["prompt_mask"], report["completion_mask"]], dim=1),
            completion_mask=report["completion_mask"],
            temperature=float(report.get("temperature", 1.0)),
            collective=collective,
        )
        self.host.call("on_policy_sampled", sample=sample)

    def _step_ended(self, trainer: Any, pl_module: Any) -> None:
        total = self._start_options.get("total_steps")
        step = StepEnded(trainer.global_step, int(total) if total and math.isfinite(total) else None)
        for _, actions in self.host.call("on_step_end", step=step):
            for action in actions:
                if isinstance(action, StopTraining):
                    trainer.should_stop = True
                elif isinstance(action, SetKLPenalty):
                    self._penalty_beta = action.beta
        self.host.step_ended()
        metrics = self.host.metrics()
        if metrics:
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True, batch_size=1)
            # the live view: headline numbers in Lightning's progress bar (not sent to loggers twice)
            headline = {short: metrics[name] for short, name in PROGRESS_BAR.items() if name in metrics}
            pl_module.log_dict(headline, prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=1)
